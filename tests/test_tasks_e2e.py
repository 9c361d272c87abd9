"""The tasks API end to end: the gateway, the Replicate and OpenAI simulators and a client
webhook receiver, each on its own socket of 127.0.0.1; outputs copied into local storage and
fetched back through their signed URLs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from apimodels import signing
from apimodels.providers import media
from apimodels.server import assemble
from apimodels.store.accounts import create_account, create_key, set_key_limits
from apimodels.tasks.notify import account_webhook_secret
from apimodels.testing import serve
from apimodels_replicate.simulator import create_app as create_replicate
from support import (
    BACKENDS,
    REPLICATE_KEY,
    REPLICATE_SECRET,
    SIM_KEY,
    TASKS_SETTINGS,
    Gateway,
    Simulator,
    database_for,
    registry_for,
    tasks_gateway_of_its_own,
)


@dataclass
class Receiver:
    """A client's webhook endpoint: records every delivery (headers and raw body)."""

    url: str
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200

    def wait(self, task_id: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d in self.deliveries:
                if d["headers"].get("webhook-id") == task_id:
                    return d
            time.sleep(0.02)
        raise AssertionError(f"no webhook for {task_id}")


@pytest.fixture(scope="module")
def replicate() -> Iterator[Simulator]:
    with serve(create_replicate(REPLICATE_KEY, webhook_secret=REPLICATE_SECRET)) as url:
        yield Simulator(url)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    holder: list[Receiver] = []

    async def hook(request: Request) -> Response:
        holder[0].deliveries.append(
            {"headers": dict(request.headers), "body": await request.body()}
        )
        return Response(status_code=holder[0].status)

    with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:
        holder.append(Receiver(url + "/hook"))
        yield holder[0]


@pytest.fixture(scope="module", params=BACKENDS)
def tasks_gateway(
    request: pytest.FixtureRequest,
    simulator: Simulator,
    replicate: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """On SQLite and on PostgreSQL: this module's tests run on both."""
    tmp = tmp_path_factory.mktemp("tasks")
    database = database_for(request, tmp)
    with tasks_gateway_of_its_own(
        simulator, replicate, tmp, "tasks@example.com", database
    ) as gateway:
        yield gateway


@pytest.fixture(autouse=True)
def _replicate_at_rest(request: pytest.FixtureRequest) -> Iterator[None]:
    if "replicate" in request.fixturenames:
        sim: Simulator = request.getfixturevalue("replicate")
        sim.reset()
        yield
        sim.reset()
    else:
        yield


@pytest.fixture
def api(tasks_gateway: Gateway) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {tasks_gateway.key}"}
    with httpx.Client(base_url=tasks_gateway.url, headers=headers, timeout=30) as c:
        yield c


def finished(api: httpx.Client, task_id: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = api.get(f"/v1/tasks/{task_id}").json()
        if task["status"] in ("succeeded", "failed", "canceled"):
            return task
        time.sleep(0.03)
    raise AssertionError(f"task {task_id} did not finish: {task}")


def balance(gw: Gateway, account_id: str | None = None) -> tuple[int, int]:
    b = gw.ledger.balance(account_id or gw.account_id)
    return b.balance_micros, b.held_micros


def charges(gw: Gateway, task_id: str) -> list[int]:
    return [
        r[0]
        for r in gw.db.execute(
            "SELECT amount_micros FROM ledger_entries WHERE hold_id = ?", (task_id,)
        ).fetchall()
    ]


def test_image_task_stores_real_pngs_and_charges_per_image(
    api: httpx.Client, tasks_gateway: Gateway, replicate: Simulator
) -> None:
    before, _ = balance(tasks_gateway)
    r = api.post(
        "/v1/tasks",
        json={
            "model": "replicate/flux-schnell",
            "input": {"prompt": "a lighthouse", "num_outputs": 2},
        },
    )
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["object"] == "task" and created["status"] == "queued"
    assert created["cost"] is None and created["output"] is None
    task = finished(api, created["id"])
    assert task["status"] == "succeeded", task
    assert Decimal(str(task["cost"])) == Decimal("0.006000")
    assert len(task["output"]) == 2
    for item in task["output"]:
        assert item["content_type"] == "image/png"
        body = httpx.get(item["url"]).content  # signed URL: no API key needed
        assert body[:8] == b"\x89PNG\r\n\x1a\n" and len(body) == item["bytes"]
        assert replicate.url not in item["url"]  # served from our storage, not the upstream
    after, held = balance(tasks_gateway)
    assert before - after == 6_000 and held == 0
    assert charges(tasks_gateway, created["id"]) == [-6_000]
    row = api.get(f"/v1/generation/{created['id']}").json()
    assert row["usage"]["images"] == 2 and Decimal(str(row["cost"])) == Decimal("0.006000")


def test_video_task_is_billed_per_second_of_stored_video(
    api: httpx.Client, tasks_gateway: Gateway
) -> None:
    r = api.post(
        "/v1/tasks",
        json={"model": "replicate/veo-3.1-fast", "input": {"prompt": "waves", "duration": 4}},
    )
    assert r.status_code == 202, r.text
    task = finished(api, r.json()["id"])
    assert task["status"] == "succeeded", task
    [video] = task["output"]
    assert video["content_type"] == "video/mp4"
    data = httpx.get(video["url"]).content
    seconds = Decimal(str(media.mp4_duration(data))).quantize(Decimal("0.001"))
    assert seconds > 0
    expected = (seconds * Decimal("0.15")).quantize(Decimal("0.000001"))
    assert Decimal(str(task["cost"])) == expected
    assert charges(tasks_gateway, task["id"]) == [-int(expected * 1_000_000)]


def test_video_models_run_only_as_tasks(api: httpx.Client, tasks_gateway: Gateway) -> None:
    r = api.post("/v1/images/generations", json={"model": "replicate/veo-3.1-fast", "prompt": "x"})
    assert r.status_code == 400
    assert "tasks" in r.json()["error"]["message"]


def test_language_model_task_returns_text(api: httpx.Client, tasks_gateway: Gateway) -> None:
    r = api.post(
        "/v1/tasks",
        json={
            "model": "replicate/llama-3.1-405b-instruct",
            "input": {"prompt": "Say hi", "max_tokens": 20},
        },
    )
    assert r.status_code == 202, r.text
    task = finished(api, r.json()["id"])
    assert task["status"] == "succeeded", task
    assert isinstance(task["output"], str) and task["output"]
    row = api.get(f"/v1/generation/{task['id']}").json()
    assert row["usage"]["output_tokens"] > 0
    assert Decimal(str(row["cost"])) > 0


def test_an_ordinary_model_runs_as_a_task_too(api: httpx.Client, tasks_gateway: Gateway) -> None:
    r = api.post(
        "/v1/tasks",
        json={
            "model": "openai/gpt-4o-mini",
            "input": {"messages": [{"role": "user", "content": "hello"}]},
        },
    )
    assert r.status_code == 202, r.text
    task = finished(api, r.json()["id"])
    assert task["status"] == "succeeded", task
    assert isinstance(task["output"], str) and task["output"]
    assert Decimal(str(task["cost"])) > 0


def test_failing_task_costs_nothing_and_releases_its_hold(
    api: httpx.Client, tasks_gateway: Gateway
) -> None:
    before = balance(tasks_gateway)
    r = api.post(
        "/v1/tasks", json={"model": "replicate/flux-schnell", "input": {"prompt": "[fail] a cat"}}
    )
    task = finished(api, r.json()["id"])
    assert task["status"] == "failed"
    assert task["error"]["code"] == "upstream_failed" and task["cost"] == 0
    assert balance(tasks_gateway) == before
    assert charges(tasks_gateway, task["id"]) == []


def test_nsfw_refusal_maps_to_the_content_policy_code(
    api: httpx.Client, tasks_gateway: Gateway
) -> None:
    r = api.post(
        "/v1/tasks", json={"model": "replicate/flux-schnell", "input": {"prompt": "[nsfw] x"}}
    )
    task = finished(api, r.json()["id"])
    assert task["status"] == "failed"
    assert task["error"]["code"] == "content_policy_violation"
    assert task["cost"] == 0


def test_invalid_input_is_refused_before_anything_is_held(
    api: httpx.Client, tasks_gateway: Gateway, replicate: Simulator
) -> None:
    before = balance(tasks_gateway)
    httpx.delete(f"{replicate.url}/_sim/requests")
    r = api.post(
        "/v1/tasks",
        json={"model": "replicate/flux-schnell", "input": {"prompt": "x", "num_outputs": 9}},
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_input" and error["param"] == "input.num_outputs"
    r = api.post("/v1/tasks", json={"model": "replicate/flux-schnell", "input": {}})
    assert r.status_code == 400 and "prompt" in r.json()["error"]["message"]
    r = api.post("/v1/tasks", json={"model": "nope/nope", "input": {}})
    assert r.status_code == 404
    assert balance(tasks_gateway) == before
    assert replicate.requests() == []  # nothing was sent upstream


def test_cancel_releases_the_hold_and_cancels_upstream(
    api: httpx.Client, tasks_gateway: Gateway, replicate: Simulator
) -> None:
    replicate.knobs(slow_seconds=30)
    before = balance(tasks_gateway)
    task_id = api.post(
        "/v1/tasks", json={"model": "replicate/veo-3.1-fast", "input": {"prompt": "slow"}}
    ).json()["id"]
    deadline = time.monotonic() + 10
    while api.get(f"/v1/tasks/{task_id}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.03)
    assert balance(tasks_gateway)[1] > 0  # held while it runs
    r = api.post(f"/v1/tasks/{task_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert r.json()["cost"] == 0
    assert balance(tasks_gateway) == before
    assert any(
        req["method"] == "POST" and req["path"].endswith("/cancel") for req in replicate.requests()
    )
    again = api.post(f"/v1/tasks/{task_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "canceled"


def test_a_finished_task_cannot_be_canceled(api: httpx.Client, tasks_gateway: Gateway) -> None:
    task_id = api.post(
        "/v1/tasks", json={"model": "replicate/flux-schnell", "input": {"prompt": "done"}}
    ).json()["id"]
    finished(api, task_id)
    r = api.post(f"/v1/tasks/{task_id}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "task_not_cancelable"


def test_duplicate_upstream_webhooks_charge_once(
    api: httpx.Client, tasks_gateway: Gateway, replicate: Simulator
) -> None:
    replicate.knobs(webhook_duplicates=True)
    task_id = api.post(
        "/v1/tasks", json={"model": "replicate/flux-schnell", "input": {"prompt": "twice"}}
    ).json()["id"]
    assert finished(api, task_id)["status"] == "succeeded"
    time.sleep(0.3)  # let the duplicate deliveries land
    (upstream_id,) = tasks_gateway.db.execute(
        "SELECT upstream_id FROM tasks WHERE id = ?", (task_id,)
    ).fetchone()
    deliveries = httpx.get(f"{replicate.url}/_sim/webhooks").json()
    mine = [d for d in deliveries if d["prediction"] == upstream_id]
    assert len(mine) == 2 and all(d["answer"] == 200 for d in mine)
    assert charges(tasks_gateway, task_id) == [-3_000]


def test_upstream_webhook_with_a_bad_signature_is_refused(
    tasks_gateway: Gateway, api: httpx.Client
) -> None:
    task_id = api.post(
        "/v1/tasks", json={"model": "replicate/flux-schnell", "input": {"prompt": "sig"}}
    ).json()["id"]
    body = json.dumps({"id": "fake", "status": "succeeded", "output": []}).encode()
    stamp = int(time.time())
    for headers in (
        {"webhook-id": "msg_1", "webhook-timestamp": str(stamp), "webhook-signature": "v1,AAAA"},
        {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(stamp - 3600),  # a valid signature, too old
            "webhook-signature": signing.sign(REPLICATE_SECRET, "msg_1", stamp - 3600, body),
        },
        {},
    ):
        r = httpx.post(
            f"{tasks_gateway.url}/webhooks/replicate/{task_id}", content=body, headers=headers
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_signature"
    assert finished(api, task_id)["status"] == "succeeded"
    assert charges(tasks_gateway, task_id) == [-3_000]


def test_client_webhook_is_delivered_signed(
    api: httpx.Client, tasks_gateway: Gateway, receiver: Receiver
) -> None:
    task_id = api.post(
        "/v1/tasks",
        json={
            "model": "replicate/flux-schnell",
            "input": {"prompt": "notify me"},
            "webhook": receiver.url,
        },
    ).json()["id"]
    delivery = receiver.wait(task_id)
    headers, body = delivery["headers"], delivery["body"]
    secret = account_webhook_secret(tasks_gateway.db, tasks_gateway.account_id)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    task = json.loads(body)
    assert task["id"] == task_id and task["status"] == "succeeded"
    assert task["output"][0]["url"].startswith(tasks_gateway.url)


def test_webhooks_to_private_addresses_are_refused(
    simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With the default settings (no allow_private_webhooks), nothing is held or queued."""
    tmp = tmp_path_factory.mktemp("ssrf")
    server = assemble(
        registry_for(simulator.url, tmp), tmp / "g.db", environ={"OPENAI_API_KEY": SIM_KEY}
    )
    account = create_account(server.db, "ssrf@example.com")
    _, key = create_key(server.db, account["id"], "k")
    server.ledger.post(account["id"], 10_000_000, kind="grant", reason="t", actor="tests")
    body = {
        "model": "openai/gpt-4o-mini",
        "input": {"messages": [{"role": "user", "content": "x"}]},
    }
    with serve(server.app) as url:
        for hook in (
            "http://example.com/hook",  # not https
            "https://127.0.0.1/hook",
            "https://localhost/hook",
            "https://10.1.2.3/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/hook",
            "https://[::ffff:192.168.0.1]/hook",
            "https://user:pw@example.com/hook",
        ):
            r = httpx.post(
                f"{url}/v1/tasks",
                json={**body, "webhook": hook},
                headers={"authorization": f"Bearer {key}"},
            )
            assert r.status_code == 400, (hook, r.text)
            assert r.json()["error"]["param"] == "webhook"
    assert server.db.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
    assert server.ledger.balance(account["id"]).held_micros == 0


def test_another_accounts_task_is_404(api: httpx.Client, tasks_gateway: Gateway) -> None:
    task_id = api.post(
        "/v1/tasks", json={"model": "replicate/flux-schnell", "input": {"prompt": "mine"}}
    ).json()["id"]
    _, other = tasks_gateway.new_account("other-tasks@example.com", 1_000_000)
    headers = {"authorization": f"Bearer {other}"}
    for method, path in (("GET", f"/v1/tasks/{task_id}"), ("POST", f"/v1/tasks/{task_id}/cancel")):
        r = httpx.request(method, f"{tasks_gateway.url}{path}", headers=headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "task_not_found"
    listed = httpx.get(f"{tasks_gateway.url}/v1/tasks", headers=headers).json()
    assert listed["data"] == []


def test_list_is_newest_first_paginated_and_filtered(
    api: httpx.Client, tasks_gateway: Gateway
) -> None:
    _, key = tasks_gateway.new_account("lister@example.com", 10_000_000)
    with httpx.Client(base_url=tasks_gateway.url, headers={"authorization": f"Bearer {key}"}) as c:
        ids = [
            c.post(
                "/v1/tasks", json={"model": "replicate/flux-schnell", "input": {"prompt": f"n{i}"}}
            ).json()["id"]
            for i in range(3)
        ]
        failed = c.post(
            "/v1/tasks", json={"model": "replicate/flux-schnell", "input": {"prompt": "[fail]"}}
        ).json()["id"]
        for task_id in [*ids, failed]:
            finished(c, task_id)
        page = c.get("/v1/tasks", params={"limit": 2}).json()
        assert [t["id"] for t in page["data"]] == [failed, ids[2]] and page["has_more"]
        rest = c.get("/v1/tasks", params={"limit": 10, "starting_after": ids[2]}).json()
        assert [t["id"] for t in rest["data"]] == [ids[1], ids[0]] and not rest["has_more"]
        only_failed = c.get("/v1/tasks", params={"status": "failed"}).json()
        assert [t["id"] for t in only_failed["data"]] == [failed]
        assert c.get("/v1/tasks", params={"status": "nope"}).status_code == 400
        assert c.get("/v1/tasks", params={"limit": 0}).status_code == 400


def test_sync_images_endpoint_runs_a_replicate_model(
    api: httpx.Client, tasks_gateway: Gateway
) -> None:
    r = api.post(
        "/v1/images/generations",
        json={"model": "replicate/flux-schnell", "prompt": "a red bicycle", "n": 2},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["data"]) == 2 and r.headers["x-apimodels-cost"] == "0.006000"
    assert httpx.get(body["data"][0]["url"]).content[:4] == b"\x89PNG"


def test_sync_images_endpoint_answers_504_naming_the_task_when_slow(
    api: httpx.Client, tasks_gateway: Gateway, replicate: Simulator
) -> None:
    replicate.knobs(slow_seconds=12)  # longer than sync_wait_seconds (10)
    r = api.post(
        "/v1/images/generations", json={"model": "replicate/flux-schnell", "prompt": "slow"}
    )
    assert r.status_code == 504
    message = r.json()["error"]["message"]
    assert "GET /v1/tasks/task_" in message
    task_id = message.split("GET /v1/tasks/")[1].split()[0].rstrip(".")
    assert api.get(f"/v1/tasks/{task_id}").json()["status"] in ("queued", "running")
    api.post(f"/v1/tasks/{task_id}/cancel")


def test_concurrent_tasks_settle_exactly_once(
    api: httpx.Client, tasks_gateway: Gateway, replicate: Simulator
) -> None:
    replicate.knobs(webhook_duplicates=True)
    ids: list[str] = []

    def submit() -> None:
        r = api.post(
            "/v1/tasks", json={"model": "replicate/flux-schnell", "input": {"prompt": "c"}}
        )
        ids.append(r.json()["id"])

    threads = [threading.Thread(target=submit) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for task_id in ids:
        assert finished(api, task_id)["status"] == "succeeded"
    time.sleep(0.3)
    for task_id in ids:
        assert charges(tasks_gateway, task_id) == [-3_000]
    assert tasks_gateway.ledger.check() == []


def test_two_servers_on_one_database_settle_each_task_once(
    simulator: Simulator, replicate: Simulator, tmp_path: Path, database: str | Path
) -> None:
    """Two gateway processes' worth of workers (two assembled servers) share a database:
    each task is submitted upstream once and charged once, whichever worker takes it."""
    registry = registry_for(simulator.url, tmp_path, replicate=replicate.url, tasks=TASKS_SETTINGS)
    env = {"OPENAI_API_KEY": SIM_KEY, "REPLICATE_API_TOKEN": REPLICATE_KEY}
    first = assemble(registry, database, environ=env)
    second = assemble(registry, database, environ=env)
    account = create_account(first.db, "shared@example.com")
    _, key = create_key(first.db, account["id"], "k")
    first.ledger.post(account["id"], 10_000_000, kind="grant", reason="t", actor="tests")
    httpx.delete(f"{replicate.url}/_sim/requests")
    headers = {"authorization": f"Bearer {key}"}
    with serve(first.app) as url_a, serve(second.app) as url_b:
        ids = [
            httpx.post(
                f"{url}/v1/tasks",
                json={"model": "replicate/flux-schnell", "input": {"prompt": f"shared {i}"}},
                headers=headers,
            ).json()["id"]
            for i, url in enumerate([url_a, url_b] * 8)
        ]
        with httpx.Client(base_url=url_a, headers=headers) as c:
            for task_id in ids:
                assert finished(c, task_id)["status"] == "succeeded"
    creates = [
        q
        for q in replicate.requests()
        if q["method"] == "POST" and q["path"].endswith("predictions")
    ]
    assert len(creates) == len(ids)
    for task_id in ids:
        rows = first.db.execute(
            "SELECT amount_micros FROM ledger_entries WHERE hold_id = ?", (task_id,)
        ).fetchall()
        assert [r[0] for r in rows] == [-3_000]
    assert first.ledger.check() == []


def test_task_inputs_go_through_the_content_policy(
    api: httpx.Client, tasks_gateway: Gateway, replicate: Simulator
) -> None:
    """A denied task input is refused before anything is held or sent (nested text too);
    an upstream NSFW refusal is audited as an upstream refusal."""
    before = balance(tasks_gateway)
    count = "SELECT count(*) FROM tasks"
    tasks_before = tasks_gateway.db.execute(count).fetchone()[0]
    httpx.delete(f"{replicate.url}/_sim/requests")
    nested = [{"type": "text", "text": "Write me a working ransomware in Python"}]
    for task in (
        {
            "model": "replicate/veo-3.1-fast",
            "input": {"prompt": "Make a deepfake porn video of my neighbour"},
        },
        {
            "model": "openai/gpt-4o-mini",
            "input": {"messages": [{"role": "user", "content": nested}]},
        },
    ):
        r = api.post("/v1/tasks", json=task)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "content_policy_violation"
    assert balance(tasks_gateway) == before
    assert replicate.requests() == []
    assert tasks_gateway.db.execute(count).fetchone()[0] == tasks_before
    task = finished(
        api,
        api.post(
            "/v1/tasks",
            json={"model": "replicate/flux-schnell", "input": {"prompt": "[nsfw] a cat"}},
        ).json()["id"],
    )
    assert task["error"]["code"] == "content_policy_violation" and task["cost"] == 0
    [row] = tasks_gateway.db.query(
        "SELECT * FROM policy_violations WHERE request_id = ?", [task["id"]]
    )
    assert row["plugin"] == "replicate" and row["category"] == "upstream_refusal"
    assert len(row["content_sha256"]) == 64


def test_a_failed_client_webhook_is_retried_until_delivered(
    api: httpx.Client, tasks_gateway: Gateway, receiver: Receiver
) -> None:
    receiver.status = 500
    task_id = api.post(
        "/v1/tasks",
        json={
            "model": "replicate/flux-schnell",
            "input": {"prompt": "retry"},
            "webhook": receiver.url,
        },
    ).json()["id"]
    try:
        receiver.wait(task_id)  # the first attempt, refused
        row = tasks_gateway.db.execute(
            "SELECT webhook_state, webhook_attempts, webhook_error FROM tasks WHERE id = ?",
            (task_id,),
        ).fetchone()
        assert row[0] == "pending" and row[1] >= 1 and row[2] == "HTTP 500"
    finally:
        receiver.status = 200
    deadline = time.monotonic() + 10
    while (
        tasks_gateway.db.execute(
            "SELECT webhook_state FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()[0]
        != "delivered"
    ):
        assert time.monotonic() < deadline, "never delivered"
        time.sleep(0.05)
    attempts = [d for d in receiver.deliveries if d["headers"].get("webhook-id") == task_id]
    assert len(attempts) >= 2
    assert {json.loads(d["body"])["status"] for d in attempts} == {"succeeded"}


def test_pending_tasks_count_against_a_keys_spending_cap(tasks_gateway: Gateway) -> None:
    """A 4 s video holds $0.60: under a $1.00 cap, a second one while the first runs is 429."""
    account_id, _ = tasks_gateway.new_account("capped@example.com", 10_000_000)
    row, key = create_key(tasks_gateway.db, account_id, "capped")
    set_key_limits(
        tasks_gateway.db, row["id"], rpm=None, daily_cap_micros=None, total_cap_micros=1_000_000
    )
    body = {"model": "replicate/veo-3.1-fast", "input": {"prompt": "cap", "duration": 4}}
    with httpx.Client(base_url=tasks_gateway.url, headers={"authorization": f"Bearer {key}"}) as c:
        first = c.post("/v1/tasks", json=body)
        assert first.status_code == 202, first.text
        second = c.post("/v1/tasks", json=body)
        assert second.status_code == 429 and second.json()["error"]["code"] == "key_total_cap"
        finished(c, first.json()["id"])


def test_a_retried_504_with_its_idempotency_key_does_not_start_a_second_task(
    api: httpx.Client, tasks_gateway: Gateway, replicate: Simulator
) -> None:
    replicate.knobs(slow_seconds=12)  # longer than sync_wait_seconds (10)
    httpx.delete(f"{replicate.url}/_sim/requests")
    body = {"model": "replicate/flux-schnell", "prompt": "slow and retried"}
    headers = {"idempotency-key": "retry-the-slow-image"}
    first = api.post("/v1/images/generations", json=body, headers=headers)
    again = api.post("/v1/images/generations", json=body, headers=headers)
    assert first.status_code == again.status_code == 504
    task_id = first.headers["x-apimodels-task"]
    assert again.headers["x-apimodels-task"] == task_id
    assert again.headers["idempotent-replayed"] == "true"
    creates = [q for q in replicate.requests() if q["method"] == "POST"]
    assert len(creates) == 1
    api.post(f"/v1/tasks/{task_id}/cancel")


def test_a_cancel_during_the_upstream_create_cancels_the_job_it_makes(
    api: httpx.Client, tasks_gateway: Gateway, replicate: Simulator
) -> None:
    before = balance(tasks_gateway)
    replicate.knobs(latency=1.0)  # the create is on its way for a second
    httpx.delete(f"{replicate.url}/_sim/requests")
    task_id = api.post(
        "/v1/tasks", json={"model": "replicate/flux-schnell", "input": {"prompt": "race"}}
    ).json()["id"]
    deadline = time.monotonic() + 10
    while not any(q["method"] == "POST" for q in replicate.requests()):  # the create is out
        assert time.monotonic() < deadline, "the create was never sent"
        time.sleep(0.02)
    assert api.post(f"/v1/tasks/{task_id}/cancel").json()["status"] == "canceled"
    deadline = time.monotonic() + 10
    while not any(q["path"].endswith("/cancel") for q in replicate.requests()):
        assert time.monotonic() < deadline, "the job made after the cancel was never canceled"
        time.sleep(0.05)
    assert balance(tasks_gateway) == before


def test_a_task_past_its_deadline_is_canceled_upstream_and_costs_nothing(
    simulator: Simulator, replicate: Simulator, tmp_path: Path, database: str | Path
) -> None:
    settings = TASKS_SETTINGS + "timeout_seconds = 1\n"
    registry = registry_for(simulator.url, tmp_path, replicate=replicate.url, tasks=settings)
    env = {"OPENAI_API_KEY": SIM_KEY, "REPLICATE_API_TOKEN": REPLICATE_KEY}
    server = assemble(registry, database, environ=env)
    account = create_account(server.db, "deadline@example.com")
    _, key = create_key(server.db, account["id"], "k")
    server.ledger.post(account["id"], 5_000_000, kind="grant", reason="t", actor="tests")
    replicate.knobs(slow_seconds=30)
    httpx.delete(f"{replicate.url}/_sim/requests")
    with (
        serve(server.app) as url,
        httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}) as c,
    ):
        task_id = c.post(
            "/v1/tasks", json={"model": "replicate/flux-schnell", "input": {"prompt": "slow"}}
        ).json()["id"]
        task = finished(c, task_id)
    assert task["status"] == "failed" and task["error"]["code"] == "timeout"
    assert task["cost"] == 0
    assert any(q["path"].endswith("/cancel") for q in replicate.requests())
    b = server.ledger.balance(account["id"])
    assert (b.balance_micros, b.held_micros) == (5_000_000, 0)
