"""Schemathesis over /openapi.json against the real server in sandbox mode: generated
requests to every documented operation (about two thousand, in about 20 s), with a funded
API key and an admin token. No answer may be a server error; each status, content type,
header and body must be what the document says; a request the document calls invalid must
be refused (4xx); a method an operation does not declare answers 405 with Allow. (Schemathesis's positive_data_acceptance is left out: a
request of the right form may still be refused for what it says, e.g. an amount outside
the server's configured bounds.)"""

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
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
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
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    unsupported_method,
]
#: The credentials of the sandbox below, for the auth provider.
CREDENTIALS: dict[str, str] = {}
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
    CREDENTIALS.update(key=key, admin=token)
    with serve(server.app) as url:
        server.stripe_simulator.point_webhooks_at(f"{url}/webhooks/stripe")
        yield {"url": url}


#: The document of a sandboxed server (top-ups and local files on), as it serves it: the
#: first test checks that, so the cases below are generated from the served document.
DOCUMENT = build_document({"topups", "files"})
schema = schemathesis.openapi.from_dict(DOCUMENT)


def authorize(case: Any) -> None:
    """An admin token for /admin/v1, the API key elsewhere (also as x-api-key to the
    Messages API, as Anthropic's clients send it), over whatever credential was generated.
    (Calls without one, or with a wrong one: tests/test_openapi.py walks every route.)"""
    case.headers = case.headers or {}
    secret = CREDENTIALS["admin" if case.path.startswith("/admin/") else "key"]
    case.headers["authorization"] = f"Bearer {secret}"
    if case.path.startswith("/v1/messages"):
        case.headers["x-api-key"] = secret


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
    if isinstance(case.body, dict) and isinstance(case.body.get("webhook"), str):
        # A task's webhook would be resolved and called: no traffic leaves 127.0.0.1. (One
        # of the wrong type stays: it is refused before anything is resolved.)
        del case.body["webhook"]
    authorize(case)
    case.call_and_validate(base_url=sandbox["url"], checks=CHECKS, timeout=30)
