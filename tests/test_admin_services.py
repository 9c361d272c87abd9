"""The admin service functions on their own database (no server): amounts, tokens,
operators, the audit log's export, usage totals."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from apimodels.admin import Actor, Operations, audit
from apimodels.admin.amounts import parse_usd
from apimodels.admin.credits import post_credits
from apimodels.admin.operators import create_admin, list_admins, remove_admin
from apimodels.admin.tokens import authenticate, create_token, revoke_token
from apimodels.admin.usage import usage_totals
from apimodels.billing.ledger import Ledger
from apimodels.errors import APIError, AuthenticationError, InvalidRequest, PermissionDenied
from apimodels.store.accounts import create_account
from apimodels.store.db import open_db
from apimodels.tasks import TaskStore

OPS = Actor("cli:tests")


@pytest.fixture
def ops(tmp_path: Path) -> Operations:
    db = open_db(tmp_path / "admin.db")
    ledger = Ledger(db)
    return Operations(db, ledger, TaskStore(db, ledger), close_grace_days=30)


@pytest.mark.parametrize(
    ("text", "signed", "micros"),
    [("12.5", False, 12_500_000), ("0.000001", False, 1), ("-1.25", True, -1_250_000)],
)
def test_amounts_are_exact(text: str, signed: bool, micros: int) -> None:
    assert parse_usd(text, signed=signed) == micros


@pytest.mark.parametrize(
    ("text", "signed"),
    [("1e3", False), ("0.0000001", False), ("0", True), ("-1", False), (" 1", False),
     ("1_000", False), ("NaN", False), ("", False), ("99999999999", False)],
)  # fmt: skip
def test_amounts_that_are_not_amounts_are_400(text: str, signed: bool) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_usd(text, signed=signed)
    assert refused.value.param == "amount_usd" and refused.value.status == 400


def test_tokens_authenticate_by_scope_and_stop_when_revoked(ops: Operations) -> None:
    row, token = create_token(ops.db, OPS, "ci", "read")
    assert authenticate(ops.db, f"Bearer {token}") == Actor(f"admin-token:{row['id']}", False)
    stored = ops.db.execute("SELECT hash FROM admin_tokens").fetchone()[0]
    assert token not in stored and len(stored) == 64
    revoke_token(ops.db, OPS, row["id"], "rotated")
    with pytest.raises(AuthenticationError) as refused:
        authenticate(ops.db, f"Bearer {token}")
    assert refused.value.code == "revoked_admin_token"
    with pytest.raises(ValueError):
        create_token(ops.db, OPS, "x", "admin")


def test_a_read_only_actor_cannot_write(ops: Operations) -> None:
    account = create_account(ops.db, "ro@example.com")
    with pytest.raises(PermissionDenied):
        post_credits(ops, Actor("t", can_write=False), account["id"], 1, kind="grant", reason="x")
    assert ops.ledger.balance(account["id"]).balance_micros == 0
    assert audit.entries(ops.db)[0] == []


def test_operators_come_and_go(ops: Operations) -> None:
    first = create_admin(ops.db, OPS, " Ops@Example.com ")
    assert first["email"] == "ops@example.com"
    with pytest.raises(ValueError):
        create_admin(ops.db, OPS, "ops@example.com")
    remove_admin(ops.db, OPS, "ops@example.com")
    assert list_admins(ops.db) == []
    again = create_admin(ops.db, OPS, "ops@example.com")  # after removal: a new record
    assert again["id"] != first["id"] and [a["id"] for a in list_admins(ops.db)] == [again["id"]]
    with pytest.raises(APIError):
        remove_admin(ops.db, OPS, "nobody@example.com")


def test_the_audit_log_exports_as_json_lines_and_csv(ops: Operations) -> None:
    account = create_account(ops.db, "audit@example.com")
    post_credits(ops, OPS, account["id"], 2_000_000, kind="grant", reason='a "quoted", reason')
    post_credits(ops, OPS, account["id"], -500_000, kind="adjustment", reason="fix")
    rows, more = audit.entries(ops.db, limit=1)
    assert more and rows[0]["action"] == "credits.adjustment"
    rows, _ = audit.entries(ops.db)
    lines = [json.loads(line) for line in audit.export(rows, "jsonl").splitlines()]
    assert lines == json.loads(json.dumps(rows))
    table = list(csv.DictReader(io.StringIO(audit.export(rows, "csv"))))
    assert [r["action"] for r in table] == ["credits.adjustment", "credits.grant"]
    assert table[1]["reason"] == 'a "quoted", reason'
    assert json.loads(table[1]["after"])["balance_micros"] == 2_000_000
    with pytest.raises(ValueError):
        audit.export(rows, "xml")


def test_usage_totals_group_and_refuse_other_groupings(ops: Operations) -> None:
    assert usage_totals(ops, "day") == []
    with pytest.raises(InvalidRequest):
        usage_totals(ops, "week")
