"""The serving process's garbage collector: tuned once, after startup (ops/memory.py)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from apimodels.ops.memory import YOUNG_THRESHOLD, tune_for_serving

class Node:
    pass

tune_for_serving()
assert gc.get_threshold()[0] == YOUNG_THRESHOLD, gc.get_threshold()
assert gc.get_freeze_count() > 0  # startup's objects are out of every collection
# A cycle made after startup is still collected (not frozen, not leaked).
a, b = Node(), Node()
a.other, b.other = b, a
del a, b
print(gc.collect())
"""


def test_serving_freezes_startup_and_still_collects_later_cycles() -> None:
    # In a process of its own: the test suite's own process must keep Python's defaults.
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 2  # the two nodes of the cycle
