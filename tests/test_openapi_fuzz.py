"""Schemathesis over /openapi.json against the real server in sandbox mode: a few hundred
generated requests to every documented operation, with a funded API key and an admin
token. Each answer must not be a server error, and its status, content type and body must
be what the document says."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from click.testing import CliRunner
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from apimodels.cli import cli
from apimodels.openapi import build_document
from apimodels.server import assemble
from apimodels.store.accounts import create_account, create_key
from apimodels.store.db import database_path
from apimodels.testing import serve
from support import ROOT

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: Cases per operation (about 50 operations): a few hundred in all, well under 2 minutes.
EXAMPLES = 6


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    server = assemble(ROOT / "registry.toml", tmp / "fuzz.db", sandbox=True, environ={})
    account = create_account(server.db, "fuzz@example.com")
    _, key = create_key(server.db, account["id"], "fuzz")
    server.ledger.post(account["id"], 10**9, kind="grant", reason="fuzz", actor="tests")
    made = CliRunner().invoke(
        cli,
        ["--db", database_path(server.db), "admin-tokens", "create", "--scope", "write"],
    )
    token = re.search(r"sk-adm-\w+", made.output).group(0)  # type: ignore[union-attr]
    with serve(server.app) as url:
        server.stripe_simulator.point_webhooks_at(f"{url}/webhooks/stripe")
        yield {"url": url, "key": key, "admin": token}


#: The document of a sandboxed server (top-ups and local files on), as it serves it: the
#: first test checks that, so the cases below are generated from the served document.
DOCUMENT = build_document({"topups", "files"})
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_the_fuzzed_document_is_the_served_one(sandbox: dict[str, str]) -> None:
    assert httpx.get(f"{sandbox['url']}/openapi.json").json() == DOCUMENT


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_answer_is_as_documented(case: Any, sandbox: dict[str, str]) -> None:
    if isinstance(case.body, dict):
        # A task's webhook would be resolved and called: no traffic leaves 127.0.0.1.
        case.body.pop("webhook", None)
    credential = sandbox["admin"] if case.path.startswith("/admin/") else sandbox["key"]
    case.call_and_validate(
        base_url=sandbox["url"],
        headers={"authorization": f"Bearer {credential}"},
        checks=CHECKS,
        timeout=30,
    )
