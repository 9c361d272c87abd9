"""Fallback benchmark: what a fallback adds when the primary upstream refuses at once.

Two mock upstreams (bench/mock_upstream.py), one answering every call, one refusing every
call with a 503 at once; a gateway with a model on each, the refused one falling back to
the other. In interleaved rounds it measures the latency of a call to the served model
directly and of a call that first tries the refusing one; the difference of the round
medians is what a fallback costs: one more upstream round trip, and the gateway's work of
mapping the error and moving on.

    uv run python bench/fallback.py [--rounds 15] [--per-round 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from overhead import free_port, funded_key, pct, wait_ready  # noqa: E402

REGISTRY = """
[gateway]
reserve_idle_seconds = 1

[providers.up]
package = "apimodels-openai"
kind = "openai"
api_key_env = "OPENAI_API_KEY"
base_url = "{up}/v1"
max_retries = 0

[providers.down]
package = "apimodels-openai"
kind = "openai"
api_key_env = "OPENAI_API_KEY"
base_url = "{down}/v1"
max_retries = 0

[models."up/m"]
provider = "up"
upstream = "gpt-4o-mini"
modality = "chat"
max_output_tokens = 16384
pricing = {{ input_per_1m = "0.15", output_per_1m = "0.60" }}

[models."down/m"]
provider = "down"
upstream = "gpt-4o-mini"
modality = "chat"
max_output_tokens = 16384
fallbacks = ["up/m"]
pricing = {{ input_per_1m = "0.15", output_per_1m = "0.60" }}
"""


def payload(model: str) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=200)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "core" / "src"))

    tmp = Path(tempfile.mkdtemp(prefix="apimodels-bench-"))
    ports = {"up": free_port(), "down": free_port(), "gateway": free_port()}
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "PYTHONHASHSEED": "0"}
    procs = []
    for name, status in (("up", "200"), ("down", "503")):
        mock = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"),
                "mock_upstream:app", "--port", str(ports[name]), "--no-access-log",
                "--log-level", "warning"]  # fmt: skip
        procs.append(subprocess.Popen(mock, env={**env, "MOCK_STATUS": status}))
    origin = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
    (tmp / "registry.toml").write_text(REGISTRY.format(up=origin["up"], down=origin["down"]))
    key = funded_key(tmp / "bench.db")
    serve = [sys.executable, "-m", "apimodels.cli", "--registry", str(tmp / "registry.toml"),
             "--db", str(tmp / "bench.db"), "serve", "--port", str(ports["gateway"]),
             "--no-access-log"]  # fmt: skip
    procs.append(
        subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    )
    url = origin["gateway"] + "/v1/chat/completions"
    headers = {"authorization": f"Bearer {key}"}
    try:
        wait_ready(origin["up"] + "/")
        wait_ready(origin["down"] + "/")
        wait_ready(origin["gateway"] + "/health")
        samples: dict[str, list[float]] = {"up/m": [], "down/m": []}
        diffs = []
        with httpx.Client(timeout=10) as client:
            for _ in range(20):
                for model in samples:
                    client.post(url, json=payload(model), headers=headers)
            for _ in range(args.rounds):
                medians = {}
                for model in samples:
                    times = []
                    for _ in range(args.per_round):
                        t0 = time.perf_counter()
                        r = client.post(url, json=payload(model), headers=headers)
                        times.append(time.perf_counter() - t0)
                        assert r.status_code == 200, r.text
                        assert r.headers["x-apimodels-route"] == "up/m"
                    samples[model] += times
                    medians[model] = statistics.median(times)
                diffs.append(medians["down/m"] - medians["up/m"])
        print(f"fallback: {args.rounds} interleaved rounds x {args.per_round} calls per model")
        for model, times in samples.items():
            what = "served at once" if model == "up/m" else "refused at once, then served"
            print(f"  {model:7} ({what:28}) p50 {pct(times, 0.5) * 1000:.3f}"
                  f"  p99 {pct(times, 0.99) * 1000:.3f} ms")  # fmt: skip
        print(f"  a fallback adds: median {statistics.median(diffs) * 1000:.3f} ms")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()


if __name__ == "__main__":
    main()
