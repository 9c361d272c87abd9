"""Outputs and personal data end to end: the gateway, the Replicate and OpenAI simulators on
sockets of 127.0.0.1, outputs in local storage. DELETE of a task, the retention sweep with a
clock set forward (several sweepers, a crash in the middle), closing an account, and a
request walked through every store to find where its prompt is kept."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from apimodels.cli import cli
from apimodels.privacy import Sweeper, close_account, export_account
from apimodels.privacy.closing import FORFEITED, SETTLED
from apimodels.privacy.retention import CLAIM_SECONDS
from apimodels.storage import LocalStorage
from apimodels.store.accounts import create_key, set_output_retention
from apimodels.tasks import TaskStore
from apimodels.testing import serve
from apimodels_replicate.simulator import create_app as create_replicate
from support import (
    REPLICATE_KEY,
    REPLICATE_SECRET,
    ROOT,
    Gateway,
    Simulator,
    tasks_gateway_of_its_own,
)

DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def replicate() -> Iterator[Simulator]:
    with serve(create_replicate(REPLICATE_KEY, webhook_secret=REPLICATE_SECRET)) as url:
        yield Simulator(url)


@pytest.fixture(scope="module")
def gw(
    simulator: Simulator, replicate: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("privacy")
    with tasks_gateway_of_its_own(simulator, replicate, tmp, "privacy@example.com") as gateway:
        yield gateway


@pytest.fixture(autouse=True)
def _replicate_at_rest(replicate: Simulator) -> Iterator[None]:
    replicate.reset()
    yield
    replicate.reset()


def client(gw: Gateway, key: str | None = None) -> httpx.Client:
    headers = {"authorization": f"Bearer {key or gw.key}"}
    return httpx.Client(base_url=gw.url, headers=headers, timeout=30)


def finished(api: httpx.Client, task_id: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = api.get(f"/v1/tasks/{task_id}").json()
        if task["status"] in ("succeeded", "failed", "canceled"):
            return task
        time.sleep(0.03)
    raise AssertionError(f"task {task_id} did not finish")


def image_task(api: httpx.Client, prompt: str = "a lighthouse", n: int = 2) -> dict[str, Any]:
    r = api.post(
        "/v1/tasks",
        json={"model": "replicate/flux-schnell", "input": {"prompt": prompt, "num_outputs": n}},
    )
    assert r.status_code == 202, r.text
    task = finished(api, r.json()["id"])
    assert task["status"] == "succeeded", task
    return task


def files_of(gw: Gateway, task_id: str) -> list[Path]:
    storage = gw.server.storage
    assert isinstance(storage, LocalStorage)
    return sorted(storage.root.glob(f"*/{task_id}/*"))


def sweeper(gw: Gateway, storage: Any = None) -> Sweeper:
    catalog = gw.server.gateway.catalog
    return Sweeper(
        gw.db,
        gw.ledger,
        TaskStore(gw.db, gw.ledger),
        storage or gw.server.storage,
        catalog.storage,
        catalog.privacy,
    )


def usage_row(gw: Gateway, request_id: str) -> dict[str, Any]:
    [row] = gw.db.query("SELECT * FROM usage WHERE request_id = ?", [request_id])
    return row


def charges(gw: Gateway, request_id: str) -> list[int]:
    rows = gw.db.execute("SELECT amount_micros FROM ledger_entries WHERE hold_id = ?", [request_id])
    return [r[0] for r in rows.fetchall()]


# --- DELETE /v1/tasks/{id} ------------------------------------------------------------------


def test_delete_removes_the_files_and_content_and_keeps_the_billing_record(gw: Gateway) -> None:
    with client(gw) as api:
        task = image_task(api, "a lighthouse at dusk")
        urls = [item["url"] for item in task["output"]]
        assert all(httpx.get(u).status_code == 200 for u in urls)
        assert len(files_of(gw, task["id"])) == 2
        billed = usage_row(gw, task["id"])
        before = gw.ledger.balance(gw.account_id)

        r = api.delete(f"/v1/tasks/{task['id']}")
        assert r.status_code == 200, r.text
        gone = r.json()
        assert gone["id"] == task["id"] and gone["object"] == "task" and gone["deleted"] is True
        assert gone["input"] is None and gone["output"] is None
        assert gone["status"] == "succeeded" and gone["output_expired_at"] is not None
        assert Decimal(str(gone["cost"])) == Decimal("0.006000") == Decimal(str(task["cost"]))
        assert gone["created_at"] == task["created_at"]
        assert gone["completed_at"] == task["completed_at"]

        for url in urls:  # the old signed URLs: valid signatures, no file
            fetched = httpx.get(url)
            assert fetched.status_code == 404
            assert fetched.json()["error"]["code"] == "file_not_found"
        assert files_of(gw, task["id"]) == []
        row = gw.db.execute(
            "SELECT input, output, error_message FROM tasks WHERE id = ?", [task["id"]]
        ).fetchone()
        assert row == ("null", None, None)
        # The billing record: untouched, and nothing refunded or charged again.
        assert usage_row(gw, task["id"]) == billed
        assert charges(gw, task["id"]) == [-6_000]
        assert gw.ledger.balance(gw.account_id) == before
        receipt = api.get(f"/v1/generation/{task['id']}").json()
        assert receipt["usage"]["images"] == 2 and Decimal(str(receipt["cost"])) == Decimal("0.006")

        assert api.get(f"/v1/tasks/{task['id']}").json() == gone  # the record, shown as deleted
        again = api.delete(f"/v1/tasks/{task['id']}")  # idempotent
        assert again.status_code == 200 and again.json() == gone
    assert gw.ledger.check() == []


def test_another_account_cannot_delete_a_task(gw: Gateway) -> None:
    with client(gw) as api:
        task = image_task(api, "mine", n=1)
    _, other = gw.new_account("thief@example.com", 1_000_000)
    with client(gw, other) as thief:
        for task_id in (task["id"], "task_doesnotexist"):
            r = thief.delete(f"/v1/tasks/{task_id}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "task_not_found"
    assert len(files_of(gw, task["id"])) == 1
    assert httpx.get(task["output"][0]["url"]).status_code == 200
    anonymous = httpx.delete(f"{gw.url}/v1/tasks/{task['id']}")
    assert anonymous.status_code == 401


def test_a_running_task_is_canceled_before_it_is_deleted(gw: Gateway, replicate: Simulator) -> None:
    replicate.knobs(slow_seconds=30)
    before = gw.ledger.balance(gw.account_id)
    with client(gw) as api:
        task_id = api.post(
            "/v1/tasks", json={"model": "replicate/veo-3.1-fast", "input": {"prompt": "slow"}}
        ).json()["id"]
        deadline = time.monotonic() + 10
        while api.get(f"/v1/tasks/{task_id}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.03)
        assert gw.ledger.balance(gw.account_id).held_micros > 0
        r = api.delete(f"/v1/tasks/{task_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "canceled" and body["deleted"] is True and body["cost"] == 0
        assert body["input"] is None
    assert gw.ledger.balance(gw.account_id) == before  # cost nothing, hold released
    assert charges(gw, task_id) == []
    assert usage_row(gw, task_id)["hold_state"] == "released"
    assert any(q["path"].endswith("/cancel") for q in replicate.requests())


# --- retention ------------------------------------------------------------------------------


def test_retention_sweep_with_the_clock_set_forward(gw: Gateway) -> None:
    """Outputs go after storage.retention_days (30 here), or the account's own retention;
    images answered as URLs (no task names them) go too. Billing rows stay."""
    _, short_key = gw.new_account("default-retention@example.com", 1_000_000)
    keeper_id, keeper_key = gw.new_account("keep-forever@example.com", 1_000_000)
    long_id, long_key = gw.new_account("long-retention@example.com", 1_000_000)
    set_output_retention(gw.db, keeper_id, 0)
    set_output_retention(gw.db, long_id, 90)
    tasks = {}
    for name, key in (("short", short_key), ("keeper", keeper_key), ("long", long_key)):
        with client(gw, key) as api:
            tasks[name] = image_task(api, f"retention {name}", n=1)
    with client(gw, short_key) as api:
        image = api.post(
            "/v1/images/generations",
            json={
                "model": "openai/gpt-image-2",
                "prompt": "a stray",
                "size": "1024x1024",
                "quality": "low",
                "response_format": "url",
            },
        )
        assert image.status_code == 200, image.text
        image_url = image.json()["data"][0]["url"]
    assert httpx.get(image_url).status_code == 200
    billed = {name: usage_row(gw, t["id"]) for name, t in tasks.items()}

    now = datetime.now(UTC)
    nothing = asyncio.run(sweeper(gw).sweep(now + 29 * DAY))
    assert nothing.tasks == 0 and nothing.files == 0
    preview = asyncio.run(sweeper(gw).sweep(now + 31 * DAY, dry_run=True))
    assert preview.tasks >= 1 and preview.files >= 2  # the short task's file, the stray image
    assert httpx.get(tasks["short"]["output"][0]["url"]).status_code == 200  # dry: nothing gone

    report = asyncio.run(sweeper(gw).sweep(now + 31 * DAY))
    assert report.tasks >= 1 and report.files >= 2
    short = TaskStore(gw.db, gw.ledger).load(tasks["short"]["id"])
    assert short is not None and short["output_expired_at"] is not None
    assert short["output"] is None and short["input"] == "null" and short["deleted_at"] is None
    assert httpx.get(tasks["short"]["output"][0]["url"]).status_code == 404
    assert httpx.get(image_url).status_code == 404
    for name in ("keeper", "long"):
        assert httpx.get(tasks[name]["output"][0]["url"]).status_code == 200
    with client(gw, short_key) as api:
        shown = api.get(f"/v1/tasks/{tasks['short']['id']}").json()
        assert shown["output"] is None and shown["output_expired_at"] == short["output_expired_at"]
        assert shown["deleted"] is False and Decimal(str(shown["cost"])) == Decimal("0.003")

    asyncio.run(sweeper(gw).sweep(now + 91 * DAY))
    assert httpx.get(tasks["long"]["output"][0]["url"]).status_code == 404
    assert httpx.get(tasks["keeper"]["output"][0]["url"]).status_code == 200  # 0: kept
    for name, t in tasks.items():
        assert usage_row(gw, t["id"]) == billed[name]  # billing records are kept
    again = asyncio.run(sweeper(gw).sweep(now + 91 * DAY))
    assert again.tasks == 0  # idempotent: nothing left to do


class Crash(BaseException):
    """The process dies here (not an error the sweep could catch)."""


class CrashingStorage(LocalStorage):
    """Local storage whose process dies after ``survive`` deletes of one task's files."""

    def __init__(self, real: LocalStorage, task_id: str, survive: int) -> None:
        self.__dict__.update(real.__dict__)
        self.task_id, self.survive = task_id, survive

    async def delete(self, key: str) -> None:
        if f"/{self.task_id}/" in key:
            if self.survive == 0:
                raise Crash
            self.survive -= 1
        await super().delete(key)


def test_a_crash_during_a_sweep_is_finished_by_the_next_one(gw: Gateway) -> None:
    _, key = gw.new_account("crash@example.com", 1_000_000)
    with client(gw, key) as api:
        task = image_task(api, "crash", n=3)
    storage = gw.server.storage
    assert isinstance(storage, LocalStorage)
    later = datetime.now(UTC) + 31 * DAY
    with pytest.raises(Crash):
        asyncio.run(sweeper(gw, CrashingStorage(storage, task["id"], survive=1)).sweep(later))
    # Half done: one file gone, the row still names all three, claimed by the dead sweeper.
    assert len(files_of(gw, task["id"])) == 2
    row = TaskStore(gw.db, gw.ledger).load(task["id"])
    assert row is not None and row["output"] is not None and row["purge_until"] is not None
    assert row["output_expired_at"] is None
    # Another process sweeping meanwhile leaves it to its owner until the claim runs out ...
    asyncio.run(sweeper(gw).sweep(later))
    assert TaskStore(gw.db, gw.ledger).load(task["id"])["output_expired_at"] is None  # type: ignore[index]
    # ... then takes it over and finishes it.
    report = asyncio.run(sweeper(gw).sweep(later + timedelta(seconds=CLAIM_SECONDS + 1)))
    assert report.tasks >= 1
    assert files_of(gw, task["id"]) == []
    row = TaskStore(gw.db, gw.ledger).load(task["id"])
    assert row is not None and row["output"] is None and row["output_expired_at"] is not None
    assert charges(gw, task["id"]) == [-9_000]  # charged once, still


def test_several_sweepers_at_once_remove_each_task_once(gw: Gateway, tmp_path: Path) -> None:
    _, key = gw.new_account("concurrent-sweep@example.com", 1_000_000)
    with client(gw, key) as api:
        ids = [image_task(api, f"sweep {i}", n=1)["id"] for i in range(6)]
    later = datetime.now(UTC) + 31 * DAY
    db_path = gw.db.conn.execute("PRAGMA database_list").fetchone()[2]
    held = "SELECT count(*) FROM tasks WHERE output_expired_at IS NULL AND completed_at IS NOT NULL"
    due = gw.db.execute(held).fetchone()[0]

    async def both() -> list[Any]:
        # Two sweepers, each on its own database connection, as two processes would be.
        from apimodels.billing.ledger import Ledger
        from apimodels.store.db import open_db

        sweepers = []
        for _ in range(2):
            db = open_db(db_path)
            ledger = Ledger(db)
            catalog = gw.server.gateway.catalog
            sweepers.append(
                Sweeper(
                    db,
                    ledger,
                    TaskStore(db, ledger),
                    gw.server.storage,  # type: ignore[arg-type]
                    catalog.storage,
                    catalog.privacy,
                )
            )
        return await asyncio.gather(*(s.sweep(later) for s in sweepers))

    reports = asyncio.run(both())
    store = TaskStore(gw.db, gw.ledger)
    assert all(store.load(i)["output_expired_at"] for i in ids)  # type: ignore[index]
    assert all(files_of(gw, i) == [] for i in ids)
    # Every task removed by exactly one of them (those of other accounts too, kept forever aside).
    kept = gw.db.execute(held).fetchone()[0]
    assert sum(r.tasks for r in reports) == due - kept


def test_a_deletion_a_crash_interrupted_is_finished_by_the_cli_sweep(
    gw: Gateway, tmp_path: Path
) -> None:
    """The API marks a task deleted before removing its files: a crash in between leaves a
    row the next sweep (here the command) finishes, whatever the date."""
    account_id, key = gw.new_account("half-deleted@example.com", 1_000_000)
    with client(gw, key) as api:
        task = image_task(api, "half", n=1)
    TaskStore(gw.db, gw.ledger).mark_deleted(account_id, task["id"])  # ... and the crash
    assert len(files_of(gw, task["id"])) == 1
    db_path = gw.db.conn.execute("PRAGMA database_list").fetchone()[2]
    registry = Path(db_path).parent / "registry.toml"
    args = ["--registry", str(registry), "--db", db_path, "storage", "sweep"]
    dry = CliRunner().invoke(cli, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert re.search(r"tasks\s+│?\s*1\b", dry.output) and "would be removed" in dry.output
    assert len(files_of(gw, task["id"])) == 1
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert files_of(gw, task["id"]) == []
    with client(gw, key) as api:
        shown = api.get(f"/v1/tasks/{task['id']}").json()
    assert shown["deleted"] is True and shown["output"] is None and shown["output_expired_at"]


# --- closing an account ------------------------------------------------------------------------


def test_close_then_export_attempt_then_grace_then_pseudonyms(gw: Gateway, tmp_path: Path) -> None:
    account_id, key = gw.new_account("leaving@example.com", 5_000_000)
    create_key(gw.db, account_id, "laptop")
    with client(gw, key) as api:
        task = image_task(api, "farewell", n=1)
        chat = api.post(
            "/v1/chat/completions",
            json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "bye"}]},
        )
        assert chat.status_code == 200
        kept = api.post("/v1/responses", json={"model": "openai/gpt-4o-mini", "input": "keep"})
        assert kept.status_code == 200
    chat_cost = int(Decimal(chat.headers["x-apimodels-cost"]) * 1_000_000)
    kept_cost = int(Decimal(kept.headers["x-apimodels-cost"]) * 1_000_000)
    balance = gw.ledger.balance(account_id).balance_micros
    assert balance == 5_000_000 - 3_000 - chat_cost - kept_cost

    store = TaskStore(gw.db, gw.ledger)
    storage = gw.server.storage
    assert storage is not None
    exported = export_account(gw.db, store, storage, account_id, public_url=gw.url)
    assert exported["account"]["email"] == "leaving@example.com"
    assert "webhook_secret" not in exported["account"]
    assert {k["name"] for k in exported["keys"]} == {"", "laptop"}
    assert all("hash" not in k for k in exported["keys"])
    assert [u["request_id"] for u in exported["usage"]].count(task["id"]) == 1
    assert sum(e["amount_micros"] for e in exported["ledger_entries"]) == balance
    assert [t["id"] for t in exported["tasks"]] == [task["id"]]
    assert exported["orders"] == [] and exported["policy_violations"] == []
    [stored] = exported["stored_responses"]
    assert stored["id"] == kept.json()["id"] and stored["response"] == kept.json()
    [link] = exported["outputs"]
    assert link["task_id"] == task["id"] and httpx.get(link["url"]).content[:4] == b"\x89PNG"

    closed = close_account(
        gw.db, gw.ledger, store, account_id, "asked to leave", actor="tests", grace_days=30
    )
    assert closed.forfeited_micros == balance
    gw.server.keys.forget()
    assert gw.ledger.balance(account_id).balance_micros == 0
    [entry] = gw.db.query(
        "SELECT * FROM ledger_entries WHERE account_id = ? AND reason = ?", [account_id, FORFEITED]
    )
    assert entry["amount_micros"] == -balance and entry["kind"] == "adjustment"
    with pytest.raises(ValueError, match="is closed"):
        close_account(gw.db, gw.ledger, store, account_id, "again", actor="t", grace_days=30)

    # The holder's own attempts now: every key refused, nothing charged.
    with client(gw, key) as api:
        r = api.get(f"/v1/tasks/{task['id']}")
        assert r.status_code == 401 and r.json()["error"]["code"] in (
            "account_closed",
            "revoked_api_key",
        )
        assert api.delete(f"/v1/tasks/{task['id']}").status_code == 401
    # The operator's export still works during the grace period, links included.
    during = export_account(gw.db, store, storage, account_id, public_url=gw.url)
    assert during["account"]["status"] == "closed" and all(k["revoked_at"] for k in during["keys"])
    assert httpx.get(during["outputs"][0]["url"]).status_code == 200

    now = datetime.now(UTC)
    asyncio.run(sweeper(gw).sweep(now + 29 * DAY))
    assert httpx.get(link["url"]).status_code == 200  # still in its grace period
    assert during["stored_responses"]
    report = asyncio.run(sweeper(gw).sweep(now + 31 * DAY))
    assert report.accounts_emptied >= 1 and report.stored_responses >= 1
    assert httpx.get(link["url"]).status_code == 404
    assert httpx.get(during["outputs"][0]["url"]).status_code == 404
    storage_root = storage.root  # type: ignore[attr-defined]
    assert not list(storage_root.glob(f"{storage.account_prefix(account_id)}/**/*.*"))
    after = export_account(gw.db, store, storage, account_id, public_url=gw.url)
    assert after["outputs"] == [] and after["tasks"][0]["output"] is None
    assert after["stored_responses"] == []
    assert len(after["usage"]) == 3  # billing records kept
    assert gw.ledger.balance(account_id).balance_micros == 0
    assert not list(
        gw.db.query(
            "SELECT 1 FROM ledger_entries WHERE account_id = ? AND reason = ?",
            [account_id, SETTLED],
        )
    )  # nothing moved since closing: no second entry

    asyncio.run(sweeper(gw).sweep(now + 3000 * DAY))
    assert gw.db.execute("SELECT email FROM accounts WHERE id = ?", [account_id]).fetchone()[0] == (
        "leaving@example.com"
    )  # billing records' retention not over yet
    report = asyncio.run(sweeper(gw).sweep(now + 3700 * DAY))
    assert report.accounts_pseudonymized >= 1
    acct = gw.db.execute(
        "SELECT email, status_reason, pseudonymized_at FROM accounts WHERE id = ?", [account_id]
    ).fetchone()
    assert acct[0] == f"{account_id}@closed.invalid" and acct[1] == "closed" and acct[2]
    names = gw.db.execute("SELECT name FROM api_keys WHERE account_id = ?", [account_id])
    assert {r[0] for r in names.fetchall()} == {""}
    assert len(list(gw.db.query("SELECT 1 FROM usage WHERE account_id = ?", [account_id]))) == 3
    assert gw.ledger.check() == []


def test_stored_responses_are_swept_after_their_retention(gw: Gateway) -> None:
    account_id, key = gw.new_account("stored-responses@example.com", 1_000_000)
    with client(gw, key) as api:
        stored = api.post("/v1/responses", json={"model": "openai/gpt-4o-mini", "input": "hi"})
        assert stored.status_code == 200
        response_id = stored.json()["id"]
        assert api.get(f"/v1/responses/{response_id}").status_code == 200
        days = gw.server.gateway.catalog.privacy.stored_response_days
        now = datetime.now(UTC)
        preview = asyncio.run(sweeper(gw).sweep(now + (days + 1) * DAY, dry_run=True))
        assert preview.stored_responses >= 1
        assert api.get(f"/v1/responses/{response_id}").status_code == 200  # a dry run
        asyncio.run(sweeper(gw).sweep(now + (days - 1) * DAY))
        assert api.get(f"/v1/responses/{response_id}").status_code == 200
        report = asyncio.run(sweeper(gw).sweep(now + (days + 1) * DAY))
        assert report.stored_responses >= 1
        gone = api.get(f"/v1/responses/{response_id}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    usage = gw.db.execute("SELECT count(*) FROM usage WHERE account_id = ?", [account_id])
    assert usage.fetchone()[0] == 1  # the billing record stays


def test_a_charge_after_closing_is_settled_to_zero_after_the_grace(gw: Gateway) -> None:
    """A call in flight when the account closed is charged afterwards: the end of the grace
    period writes the difference off, so a closed account ends at exactly zero."""
    account_id, _ = gw.new_account("inflight@example.com", 2_000_000)
    store = TaskStore(gw.db, gw.ledger)
    closed = close_account(gw.db, gw.ledger, store, account_id, "leaving", actor="t", grace_days=30)
    assert closed.forfeited_micros == 2_000_000
    gw.ledger.post(account_id, -1_234, kind="adjustment", reason="late charge", actor="tests")
    asyncio.run(sweeper(gw).sweep(datetime.now(UTC) + 31 * DAY))
    [settled] = gw.db.query(
        "SELECT amount_micros FROM ledger_entries WHERE account_id = ? AND reason = ?",
        [account_id, SETTLED],
    )
    assert settled["amount_micros"] == 1_234
    assert gw.ledger.balance(account_id).balance_micros == 0
    asyncio.run(sweeper(gw).sweep(datetime.now(UTC) + 32 * DAY))  # once only
    assert gw.ledger.balance(account_id).balance_micros == 0
    count = gw.db.execute(
        "SELECT count(*) FROM ledger_entries WHERE account_id = ?", [account_id]
    ).fetchone()[0]
    assert count == 4  # grant, forfeit, late charge, settlement


def test_closing_cancels_unfinished_tasks_free(gw: Gateway, replicate: Simulator) -> None:
    replicate.knobs(slow_seconds=30)
    account_id, key = gw.new_account("closing-busy@example.com", 5_000_000)
    with client(gw, key) as api:
        task_id = api.post(
            "/v1/tasks", json={"model": "replicate/veo-3.1-fast", "input": {"prompt": "long"}}
        ).json()["id"]
    assert gw.ledger.balance(account_id).held_micros > 0
    store = TaskStore(gw.db, gw.ledger)
    closed = close_account(gw.db, gw.ledger, store, account_id, "bye", actor="t", grace_days=30)
    assert closed.tasks_canceled == 1 and closed.forfeited_micros == 5_000_000
    row = store.load(task_id)
    assert row is not None and row["status"] == "canceled" and row["cost_micros"] == 0
    assert gw.ledger.balance(account_id).balance_micros == 0
    assert gw.ledger.balance(account_id).held_micros == 0
    assert charges(gw, task_id) == []


def test_cli_close_exports_first_and_says_what_became_of_the_balance(
    gw: Gateway, tmp_path: Path
) -> None:
    account_id, key = gw.new_account("cli-close@example.com", 1_500_000)
    with client(gw, key) as api:
        task = image_task(api, "cli", n=1)
    db_path = gw.db.conn.execute("PRAGMA database_list").fetchone()[2]
    registry = Path(db_path).parent / "registry.toml"
    base = ["--registry", str(registry), "--db", db_path]
    out = tmp_path / "export.json"
    result = CliRunner().invoke(
        cli,
        [
            *base,
            "accounts",
            "close",
            "cli-close@example.com",
            "--reason",
            "gdpr",
            "--export",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1.497000 USD forfeited" in result.output and "keys revoked" in result.output
    exported = json.loads(out.read_text())
    assert exported["account"]["status"] == "active"  # written before closing
    assert [t["id"] for t in exported["tasks"]] == [task["id"]]
    assert exported["outputs"][0]["url"].startswith(gw.url + "/v1/files/")
    again = CliRunner().invoke(cli, [*base, "accounts", "close", account_id, "--reason", "x"])
    assert again.exit_code == 1 and "is closed" in again.output
    retention = CliRunner().invoke(cli, [*base, "accounts", "retention", account_id, "7"])
    assert retention.exit_code == 0 and "7 days" in retention.output


def test_the_commands_have_help() -> None:
    for command in (
        ["tasks", "delete"],
        ["storage", "sweep"],
        ["accounts", "close"],
        ["accounts", "export"],
        ["accounts", "retention"],
    ):
        result = CliRunner().invoke(cli, [*command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, command


def test_cli_tasks_delete(gw: Gateway) -> None:
    _, key = gw.new_account("cli-delete@example.com", 1_000_000)
    with client(gw, key) as api:
        task = image_task(api, "cli delete", n=2)
    db_path = gw.db.conn.execute("PRAGMA database_list").fetchone()[2]
    registry = Path(db_path).parent / "registry.toml"
    base = ["--registry", str(registry), "--db", db_path]
    result = CliRunner().invoke(cli, [*base, "tasks", "delete", task["id"]])
    assert result.exit_code == 0, result.output
    assert "2 output file(s)" in result.output
    assert files_of(gw, task["id"]) == []
    assert httpx.get(task["output"][0]["url"]).status_code == 404
    missing = CliRunner().invoke(cli, [*base, "tasks", "delete", "task_nope"])
    assert missing.exit_code == 1 and "No task found" in missing.output


# --- where a prompt is kept ---------------------------------------------------------------------


def documented_places() -> set[str]:
    """The ``table.column`` places docs/privacy.md lists under "Where your prompt is kept"."""
    text = (ROOT / "docs" / "privacy.md").read_text()
    section = text.split("## Where your prompt is kept", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`([a-z_]+\.[a-z_]+)`", section))


def prompt_places(gw: Gateway, needle: str) -> set[str]:
    """Every column of every table holding ``needle``, and ``output store`` for any file."""
    found = set()
    db = gw.db  # once: each use of gw.db first waits for the server's pending commits
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        for column in [c.name for c in db[table].columns]:
            hit = db.execute(
                f"SELECT 1 FROM [{table}] WHERE instr(CAST([{column}] AS TEXT), ?) > 0 LIMIT 1",
                [needle],
            ).fetchone()
            if hit:
                found.add(f"{table}.{column}")
    storage = gw.server.storage
    assert isinstance(storage, LocalStorage)
    for path in storage.root.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            found.add("output.store")
    return found


def test_a_prompt_is_kept_only_where_the_privacy_document_says(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A request walked through every store (database tables, output store, logs at INFO,
    which is more than the default) finds its prompt only where docs/privacy.md says; a
    DELETE leaves it nowhere but in what the document says survives (a refusal's audit)."""
    needle = "zebrafinchcanary"
    documented = documented_places()
    assert {"tasks.input", "idempotency_keys.body"} <= documented
    caplog.set_level(logging.INFO)
    account_id, key = gw.new_account("walk@example.com", 10_000_000)
    with client(gw, key) as api:
        chat = api.post(
            "/v1/chat/completions",
            json={
                "model": "openai/gpt-4o-mini",
                "messages": [{"role": "user", "content": f"tell me about the {needle}"}],
            },
            headers={"idempotency-key": "walk-chat"},
        )
        assert chat.status_code == 200
        created = api.post(
            "/v1/tasks",
            json={"model": "replicate/flux-schnell", "input": {"prompt": f"a {needle}"}},
            headers={"idempotency-key": "walk-task"},
        )
        assert created.status_code == 202
        text_task = api.post(
            "/v1/tasks",
            json={
                "model": "openai/gpt-4o-mini",
                "input": {"messages": [{"role": "user", "content": f"the {needle} sings"}]},
            },
        ).json()
        image = finished(api, created.json()["id"])
        text = finished(api, text_task["id"])
        assert image["status"] == text["status"] == "succeeded"
        places = prompt_places(gw, needle)
        assert places <= documented, places - documented
        assert "tasks.input" in places  # the walk did reach the stores
        for record in caplog.records:
            assert needle not in record.getMessage()

        for task_id in (image["id"], text["id"]):
            assert api.delete(f"/v1/tasks/{task_id}").status_code == 200
    left = prompt_places(gw, needle)
    # The chat call's idempotent answer (its reply quotes the prompt) stays its 24 hours;
    # the task's own stored answer went with the task.
    assert left <= {"idempotency_keys.body"}, left
    asyncio.run(sweeper(gw).sweep(datetime.now(UTC) + 2 * DAY))
    assert prompt_places(gw, needle) == set()
    assert all(needle not in r.getMessage() for r in caplog.records)
    assert account_id


def test_the_privacy_documents_say_what_the_plugins_declare() -> None:
    """docs/privacy.md's list of upstreams is generated from the shipped plugins'
    declarations (cog), and the Privacy Policy template renders with the shipped figures."""
    import subprocess
    import sys

    from apimodels.catalog import load_catalog
    from apimodels.plugins import pm
    from apimodels.privacy.policy import render_privacy_policy
    from apimodels.providers.runtime import registered_providers

    declared = {name: spec.data_sent for name, (spec, _) in registered_providers(pm).items()}
    assert {"openai", "replicate", "elevenlabs"} <= set(declared)
    assert all(declared[name] for name in ("openai", "replicate", "elevenlabs"))
    check = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", str(ROOT / "docs" / "privacy.md")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    page = render_privacy_policy(
        load_catalog(ROOT / "registry.toml"),
        declared,
        operator="Example AI Ltd",
        contact="privacy@example.com",
    )
    assert "Example AI Ltd" in page and "privacy@example.com" in page
    assert "for 30 days after the task ended" in page and "10 years" in page
    assert f"**openai**: {declared['openai']}" in page
    assert "$" not in page
