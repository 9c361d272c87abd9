"""A guard against a gross regression of the gateway's speed: its CPU time per request
(billing and the default policy on) over the direct mock upstream's, both measured in the
same run by bench/side_by_side.py --guard (a ratio, so a busy machine moves both). It fails
only past twice the ratio docs/performance.md documents: noise cannot reach that, a
regression that doubles the cost of a call does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The gateway's CPU per request over the direct mock's, as docs/performance.md has it.
DOCUMENTED_RATIO = 6.5


def test_cpu_per_request_has_not_doubled() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "side_by_side.py"), "--guard", "800"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    measured = json.loads(run.stdout.splitlines()[-1])
    assert measured["ratio"] < 2 * DOCUMENTED_RATIO, measured
