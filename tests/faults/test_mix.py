"""A randomized concurrent mix against ONE account, over real sockets: the money adds up.

Each run draws ~200 operations from ``random.Random(seed)`` and runs them 16 at a time
against one account with four keys: chat, streams (some left by the client after a chunk
or three), speech, embeddings, chat tasks through ``/v1/tasks`` (some canceled), about a
third of them with an upstream fault (``FAULTS``, tagged into the request so the fake
upstream applies it to that request alone); a third of the way in, one key is revoked. One
seed starts the account with a few cents, so that calls are refused (402) under
concurrency and the balance's floor matters. After every run:

- every answer is the one its fault calls for (never a 500); a revoked key gets 401 once
  ``key_cache_seconds`` (0.2 s here) have passed, the other keys never;
- the balance never went below zero (no refunds here, and the fake's default usage stays
  within each hold, so no overrun either) and the ledger finds no floor broken;
- balance drop == the sum of the account's usage rows' ``cost_micros`` == what the client
  was told (``x-apimodels-cost``; a stream's last usage chunk; a task's ``cost``; 0 for a
  failure), request by request; a stream the client left, or one that reported no usage,
  is read back from ``/v1/generation/{id}`` and is never more than its hold;
- nothing is held once every task has ended; ``apimodels ledger check`` exits 0.

Run it:     .tools/bin/uv run --no-sync pytest -q tests/faults/test_mix.py
Soak:       .tools/bin/uv run --no-sync pytest -q tests/faults/test_mix.py --soak -s
            (20x the operations per run, 12 seeds; ``-s`` prints each run's figures)
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from faults.harness import estimate, gateway_for, micros, rows, settled
from faults.upstream import WAV, FakeUpstream, Fault

from apimodels.providers import dispatch
from apimodels.providers.types import Usage
from apimodels.store.accounts import create_account, create_key, revoke_key
from support import Gateway

SEEDS, SMALL_SEEDS = [11, 12, 13], {13}  # SMALL_SEEDS: the account starts nearly empty
OPERATIONS, CONCURRENCY, SOAK_FACTOR = 200, 16, 20
KEYS, REVOKED = 4, 1  # keys of the account; the one revoked a third of the way in
KEY_CACHE_SECONDS = 0.2
MIB = 1 << 20

FAULTS: dict[str, Fault] = {
    "status_500": Fault(status=500),
    "status_429": Fault(status=429),
    "reset": Fault(reset=True),
    "hang": Fault(hang=True),
    "drip": Fault(drip=0.02),
    "slow": Fault(drip=0.1),
    "malformed": Fault(malformed=True),
    "cut": Fault(cut=True),
    "big": Fault(big=2 * MIB),
    "bad_usage": Fault(usage={"prompt_tokens": -1_000_000_000, "completion_tokens": 5}),
    "no_usage": Fault(no_usage=True),
}
_BEFORE = {"status_500": "502", "status_429": "429", "reset": "502", "hang": "504"}
_WHOLE = _BEFORE | dict.fromkeys(["malformed", "cut", "big", "bad_usage"], "502")
_STREAM = _BEFORE | dict.fromkeys(["malformed", "cut", "big", "bad_usage"], "200-error")
#: What each kind of operation answers, by fault (None: no fault), unless refused first.
EXPECTED: dict[str, dict[str | None, str]] = {
    "chat": _WHOLE | dict.fromkeys([None, "drip", "slow", "no_usage"], "200"),
    "embed": _WHOLE | dict.fromkeys([None, "drip", "slow", "no_usage"], "200"),
    "stream": _STREAM | dict.fromkeys([None, "drip", "slow", "no_usage"], "200"),
    "speech": _BEFORE | dict.fromkeys([None, "drip", "slow"], "200") | {"cut": "200-cut"},
    "task": dict.fromkeys(_WHOLE, "task-failed")
    | dict.fromkeys([None, "drip", "slow", "no_usage"], "task-succeeded"),
}
KINDS = ["chat"] * 5 + ["stream"] * 4 + ["embed"] * 3 + ["speech"] * 2 + ["task"] * 3
FAULTS_OF = {
    "chat": [f for f in FAULTS if f != "slow"],
    "stream": [f for f in FAULTS if f != "slow"],
    "embed": [f for f in FAULTS if f not in ("big", "slow")],
    "speech": ["status_500", "status_429", "reset", "hang", "drip", "cut"],
    "task": [f for f in FAULTS if f != "slow"],
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames:
        soak = metafunc.config.getoption("--soak")
        seeds = [s + 100 * i for i in range(4) for s in SEEDS] if soak else SEEDS
        metafunc.parametrize("seed", seeds)


@dataclass(frozen=True)
class Op:
    index: int
    kind: str
    key: int
    fault: str | None
    leave_after: int | None = None  # streams: chunks read before the client hangs up
    cancel_after: float | None = None  # tasks: seconds before the client cancels

    def body(self) -> dict[str, Any]:
        tag = f" [fault:{self.fault}]" if self.fault else ""
        text = f"Operation {self.index}, please answer.{tag}"
        messages = [{"role": "user", "content": text}]
        if self.kind == "embed":
            return {"model": "openai/text-embedding-3-large", "input": text + " words" * 80}
        if self.kind == "speech":
            return {"model": "openai/tts-1-hd", "input": text * 40, "voice": "alloy"}
        if self.kind == "task":
            return {"model": "openai/gpt-4o", "input": {"messages": messages, "max_tokens": 100}}
        body = {"model": "openai/gpt-4o", "messages": messages, "max_tokens": 100}
        if self.kind == "stream":
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return body

    @property
    def path(self) -> str:
        paths = {"embed": "/v1/embeddings", "speech": "/v1/audio/speech", "task": "/v1/tasks"}
        return paths.get(self.kind, "/v1/chat/completions")


@dataclass
class Outcome:
    op: Op
    started: float
    result: str  # "200", "502", "200-error", "200-cut", "left", "task-succeeded", ...
    request_id: str | None = None
    cost: int | None = 0  # what the client was told it cost; None: not told
    code: str | None = None
    chunks: int = 0
    answered: float = 0.0  # when its status came back (its key was checked before that)

    def __post_init__(self) -> None:
        self.answered = time.monotonic()


def draw(rng: random.Random, n: int) -> list[Op]:
    ops = []
    for i in range(n):
        kind = rng.choice(KINDS)
        fault = rng.choice(FAULTS_OF[kind]) if rng.random() < 0.3 else None
        leave = rng.randint(1, 3) if kind == "stream" and rng.random() < 0.3 else None
        cancel = None
        if kind == "task" and rng.random() < 0.4:
            cancel = rng.uniform(0, 0.15)
            fault = "slow" if fault is None and rng.random() < 0.5 else fault
        ops.append(Op(i, kind, rng.randrange(KEYS), fault, leave, cancel))
    return ops


class Mix:
    """Runs the operations of one seed against one account."""

    def __init__(self, gw: Gateway, account_id: str, keys: list[tuple[str, str]]) -> None:
        self.gw, self.account_id, self.keys = gw, account_id, keys
        self.revoked_at: float | None = None

    def auth(self, key: int) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[key][1]}"}

    async def run(self, ops: list[Op], revoke_at: int) -> list[Outcome]:
        slots = asyncio.Semaphore(CONCURRENCY)
        limits = httpx.Limits(max_connections=2 * CONCURRENCY)
        async with httpx.AsyncClient(base_url=self.gw.url, timeout=30, limits=limits) as client:

            async def one(op: Op) -> Outcome:
                async with slots:
                    if op.index == revoke_at:
                        revoke_key(self.gw.db, self.keys[REVOKED][0])
                        self.revoked_at = time.monotonic()
                    return await self.perform(client, op)

            return await asyncio.gather(*(one(op) for op in ops))

    async def perform(self, client: httpx.AsyncClient, op: Op) -> Outcome:
        started = time.monotonic()
        if op.kind == "task":
            return await self.task(client, op, started)
        async with client.stream("POST", op.path, json=op.body(), headers=self.auth(op.key)) as r:
            out = Outcome(op, started, str(r.status_code), r.headers.get("x-request-id"))
            if r.status_code != 200:
                out.code = json.loads(await r.aread())["error"]["code"]
                return out
            if op.kind == "stream":
                return await self.stream(r, out)
            out.cost = micros(r.headers["x-apimodels-cost"])
            try:
                body = await r.aread()
            except httpx.RemoteProtocolError:  # cut midway: the client knows it is incomplete
                out.result, out.cost = "200-cut", 0
                return out
        if op.kind == "speech":
            assert body == WAV
        else:
            assert micros(json.loads(body)["usage"]["cost"]) == out.cost
        return out

    async def stream(self, r: httpx.Response, out: Outcome) -> Outcome:
        out.cost = None  # until a usage chunk tells it (none: read back afterwards)
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return out
            event = json.loads(line[6:])
            if "error" in event:
                out.result, out.code, out.cost = "200-error", event["error"]["code"], 0
                return out
            if event.get("usage"):
                out.cost = micros(event["usage"]["cost"])
            out.chunks += 1
            if out.op.leave_after is not None and out.chunks >= out.op.leave_after:
                out.result, out.cost = "left", None
                return out  # leaving the block hangs up
        out.result = "200-truncated"  # never expected: a stream ends in [DONE] or an error
        return out

    async def task(self, client: httpx.AsyncClient, op: Op, started: float) -> Outcome:
        r = await client.post("/v1/tasks", json=op.body(), headers=self.auth(op.key))
        if r.status_code != 202:
            return Outcome(
                op,
                started,
                str(r.status_code),
                r.headers.get("x-request-id"),
                0,
                r.json()["error"]["code"],
            )
        task_id = r.json()["id"]
        if op.cancel_after is not None:
            await asyncio.sleep(op.cancel_after)
            cancel = await client.post(f"/v1/tasks/{task_id}/cancel", headers=self.auth(0))
            assert cancel.status_code in (200, 409), cancel.text
        deadline = time.monotonic() + 15
        while (task := (await client.get(f"/v1/tasks/{task_id}", headers=self.auth(0))).json())[
            "status"
        ] in ("queued", "running"):
            assert time.monotonic() < deadline, task
            await asyncio.sleep(0.03)
        code = (task.get("error") or {}).get("code")
        return Outcome(op, started, f"task-{task['status']}", task_id, micros(task["cost"]), code)


@pytest.fixture(scope="module")
def mix_gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Path]]:
    tmp = tmp_path_factory.mktemp("mix")
    openai = {"timeout": "1", "max_response_bytes": str(MIB)}
    gateway = {"key_cache_seconds": str(KEY_CACHE_SECONDS)}
    with gateway_for(upstream, tmp, credits_micros=0, openai=openai, gateway=gateway) as gw:
        yield gw, tmp


def test_random_mix(
    mix_gateway: tuple[Gateway, Path],
    upstream: FakeUpstream,
    request: pytest.FixtureRequest,
    seed: int,
) -> None:
    gw, tmp = mix_gateway
    soak = request.config.getoption("--soak")
    n = OPERATIONS * (SOAK_FACTOR if soak else 1)
    small = seed % 100 in SMALL_SEEDS
    # 6,000 micro-USD: about 70 chat calls' worth (so ~100 operations in, it runs dry)
    credits = 6_000 * n // OPERATIONS if small else 100_000_000
    upstream.tags.update(FAULTS)
    account_id = create_account(gw.db, f"mix-{seed}@example.com")["id"]
    keys = [
        (row["id"], key)
        for row, key in (create_key(gw.db, account_id, f"k{i}") for i in range(KEYS))
    ]
    gw.ledger.post(account_id, credits, kind="grant", reason="mix", actor="tests")
    ops = draw(random.Random(seed), n)
    mix = Mix(gw, account_id, keys)
    began = time.monotonic()
    outcomes = asyncio.run(mix.run(ops, revoke_at=n // 3))
    elapsed = time.monotonic() - began
    balance, held = settled(gw, account_id, timeout=15)
    results = Counter(o.result for o in outcomes)
    faults = Counter(r.tag for r in upstream.log if r.tag is not None)
    print(
        f"\nseed {seed}: {n} operations in {elapsed:.1f} s, {sum(faults.values())} faults reached"
        f" the upstream ({upstream.received} requests), results {dict(sorted(results.items()))}"
    )

    # Every answer is the one its fault calls for; refusals only where they may happen.
    assert mix.revoked_at is not None
    revoked_for_sure = mix.revoked_at + KEY_CACHE_SECONDS + 0.05
    for o in outcomes:
        expected = {EXPECTED[o.op.kind][o.op.fault], "402"}
        if o.op.kind == "stream" and o.op.leave_after is not None:
            expected.add("left")
        if o.op.kind == "task" and o.op.cancel_after is not None:
            expected.add("task-canceled")
        if o.op.key == REVOKED and o.answered >= mix.revoked_at:
            expected.add("401")
        if o.op.key == REVOKED and o.started >= revoked_for_sure:
            expected = {"401"}
        assert o.result in expected, (o, expected)
        if o.op.kind == "stream" and o.result == "200":  # told its cost, unless no usage came
            assert (o.cost is None) == (o.op.fault == "no_usage"), o
        if o.result == "401":
            assert o.code == "revoked_api_key"
    assert results["401"] > 0
    assert (results["402"] > 0) == small  # a small account runs dry; a large one never

    # The money: told == recorded == taken, request by request.
    charged = {r["request_id"]: r for r in rows(gw, account_id)}
    told = {o.request_id: o for o in outcomes if o.request_id}
    assert set(charged) <= set(told)  # no row for a request nobody made
    costs = 0
    for request_id, o in told.items():
        r = charged.get(request_id)
        if o.result in ("401", "402"):
            assert r is None  # refused before anything was held
            continue
        assert r is not None, o
        assert r["hold_state"] in ("captured", "released"), r
        if o.cost is None:  # a stream left by its client, or one without usage: read back
            _, hold = estimate(gw, "/v1/chat/completions", o.op.body())
            assert 0 <= r["cost_micros"] <= hold, (o, r)
            if o.result == "200":  # complete, no usage: its input estimate and the chunks
                guess, _ = estimate(gw, "/v1/chat/completions", o.op.body())
                route = gw.server.gateway.routes["openai/gpt-4o"]
                delivered = Usage(input_tokens=guess.input_tokens, output_tokens=o.chunks)
                assert r["cost_micros"] == min(dispatch.price(route, delivered), hold)
            generation = httpx.get(
                f"{gw.url}/v1/generation/{request_id}", headers=mix.auth(0)
            ).json()
            assert micros(generation["cost"]) == r["cost_micros"]
        else:
            assert r["cost_micros"] == o.cost, (o, r)
            assert (r["status"] == "succeeded") == (o.result in ("200", "task-succeeded")), (o, r)
        costs += r["cost_micros"]
    assert credits - balance == costs == sum(r["cost_micros"] for r in charged.values())
    assert held == 0
    overruns = [r for r in charged.values() if r["cost_micros"] > r["hold_micros"]]
    assert overruns == []  # the fake's default usage stays within every hold

    # The floor: never below zero, entry by entry; the ledger and its command agree.
    running = 0
    for (amount,) in gw.db.execute(
        "SELECT amount_micros FROM ledger_entries WHERE account_id = ? ORDER BY id", [account_id]
    ).fetchall():
        running += amount
        assert running >= 0
    assert running == balance >= 0
    assert gw.ledger.check() == []
    cli = Path(sys.executable).with_name("apimodels")
    check = subprocess.run(
        [
            str(cli),
            "--registry",
            str(tmp / "registry.toml"),
            "--db",
            str(tmp / "gateway.db"),
            "ledger",
            "check",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0 and "ledger ok" in check.stdout, check.stdout + check.stderr
