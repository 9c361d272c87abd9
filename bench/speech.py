"""Streamed speech benchmark: what the gateway adds to time to first audio byte and to the
gap between audio chunks, against the ElevenLabs simulator directly.

The simulator sends a speech's audio in 4 KiB chunks ``--gap`` seconds apart. Interleaved
rounds over the two targets (direct, gateway with billing); each reports the median and p90
of the time to first byte, the median inter-chunk gap and the total time; the added time to
first byte is the median of the rounds' differences against direct. The simulator, the
gateway and the client each run in their own process. Numbers on a shared 2-core machine are
ratios, not absolutes.

    uv run python bench/speech.py [--rounds 6] [--per-round 10] [--gap 0.02]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import free_port, funded_key, pct, rss_mb, wait_ready

ROOT = Path(__file__).resolve().parent.parent
TEXT = "A sentence of speech for the benchmark, spoken twice over."  # 4 s: 47 chunks of pcm
REGISTRY = """
[providers.elevenlabs]
package = "apimodels-elevenlabs"
base_url = "{upstream}"
max_retries = 0

[models."elevenlabs/eleven-flash-v2.5"]
provider = "elevenlabs"
upstream = "eleven_flash_v2_5"
modality = "speech"
pricing = {{ per_1k_chars = "0.05" }}
"""


def one(client: httpx.Client, url: str, body: dict, headers: dict) -> tuple[float, float, float]:
    """(time to first byte, median gap between chunks, total) of one streamed speech."""
    t0 = time.perf_counter()
    arrivals = []
    with client.stream("POST", url, json=body, headers=headers) as r:
        assert r.status_code == 200, r.read()
        for _ in r.iter_raw():
            arrivals.append(time.perf_counter() - t0)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return arrivals[0], statistics.median(gaps), arrivals[-1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between audio chunks")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="apimodels-bench-speech-"))
    up_port, gw_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    env = {**os.environ, "ELEVENLABS_API_KEY": "sk-bench"}
    sim = [sys.executable, "-m", "uvicorn", "--factory", "apimodels_elevenlabs.simulator:create_app",
           "--port", str(up_port), "--no-access-log", "--log-level", "warning"]  # fmt: skip
    (tmp / "registry.toml").write_text(REGISTRY.format(upstream=upstream))
    key = funded_key(tmp / "bench.db")
    serve = [sys.executable, "-m", "apimodels.cli", "--registry", str(tmp / "registry.toml"),
             "--db", str(tmp / "bench.db"), "serve", "--port", str(gw_port), "--no-access-log"]  # fmt: skip
    procs = [subprocess.Popen(sim, env=env)]
    procs.append(subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL))
    try:
        wait_ready(f"{upstream}/_sim/knobs")
        wait_ready(f"http://127.0.0.1:{gw_port}/health")
        httpx.post(f"{upstream}/_sim/knobs", json={"stream_delay": args.gap}).raise_for_status()
        targets = {
            "direct": (
                f"{upstream}/v1/text-to-speech/9BWtsMINqrJLrRacOk9x/stream?output_format=pcm_24000",
                {"text": TEXT, "model_id": "eleven_flash_v2_5"},
                {},
            ),
            "gateway": (
                f"http://127.0.0.1:{gw_port}/v1/audio/speech",
                {"model": "elevenlabs/eleven-flash-v2.5", "voice": "Aria", "input": TEXT}
                | {"response_format": "pcm"},
                {"authorization": f"Bearer {key}"},
            ),
        }
        samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in targets}
        added: list[float] = []
        with httpx.Client(timeout=30) as client:
            for url, body, headers in targets.values():  # warm up
                one(client, url, body, headers)
            for _ in range(args.rounds):
                firsts = {}
                for name, (url, body, headers) in targets.items():
                    runs = [one(client, url, body, headers) for _ in range(args.per_round)]
                    samples[name] += runs
                    firsts[name] = statistics.median(r[0] for r in runs)
                added.append(firsts["gateway"] - firsts["direct"])
        print(f"speech streams of {len(TEXT)} characters, chunks {args.gap * 1000:.0f} ms apart")
        for name, runs in samples.items():
            first = [r[0] for r in runs]
            print(
                f"  {name:8} first byte p50 {pct(first, 0.5) * 1000:6.2f} ms"
                f"  p90 {pct(first, 0.9) * 1000:6.2f} ms"
                f"  gap p50 {statistics.median(r[1] for r in runs) * 1000:6.2f} ms"
                f"  total p50 {statistics.median(r[2] for r in runs) * 1000:7.1f} ms"
            )
        print(
            f"  added time to first byte (median of rounds): {statistics.median(added) * 1000:.2f} ms"
        )
        print(f"  gateway RSS: {rss_mb(procs[1].pid):.0f} MB")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
