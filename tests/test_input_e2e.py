"""Bad input through the real server: a clear 400, nothing held, nothing echoed that
should not be, and a client that leaves mid-body is not a server error."""

from __future__ import annotations

import logging
import socket
import time

import httpx
import pytest

from support import Gateway, Simulator


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            '{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
        ),
        (
            "/v1/embeddings",
            '{"model": "openai/text-embedding-3-small", "input": ["ok", "\\udc00 low"]}',
        ),
        (
            "/v1/chat/completions",
            '{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "user": "\\uDBFF"}',
        ),
    ],
)
def test_a_lone_surrogate_is_400_before_any_policy_or_upstream(
    http: httpx.Client, gateway: Gateway, simulator: Simulator, path: str, body: str
) -> None:
    before = simulator.received()
    r = http.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_json" and "surrogate" in error["message"]
    assert simulator.received() == before
    assert gateway.ledger.balance(gateway.account_id).held_micros == 0


def test_a_surrogate_pair_escape_is_an_ordinary_character(http: httpx.Client) -> None:
    body = '{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "\\ud83d\\ude00 hi"}], "max_tokens": 5}'
    r = http.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        (
            "POST",
            "/v1/chat/completions",
            {"model": "KEY", "messages": [{"role": "user", "content": "x"}]},
        ),
        ("GET", "/v1/tasks/KEY", None),
        ("GET", "/v1/generation/KEY", None),
        ("GET", "/v1/models/KEY", None),
        ("POST", "/v1/tasks", {"model": "KEY", "input": {}}),
    ],
)
def test_no_error_echoes_a_key(
    http: httpx.Client, gateway: Gateway, method: str, path: str, body: dict | None
) -> None:
    key = gateway.key
    if body is not None:
        body = {k: (key if v == "KEY" else v) for k, v in body.items()}
    r = http.request(method, path.replace("KEY", key), json=body)
    assert 400 <= r.status_code < 500, r.text
    secret = key[len("amk_") :]
    assert secret[:8] not in r.text and key not in r.text
    assert "amk_***" in r.json()["error"]["message"]


def test_clients_that_leave_mid_body_are_counted_not_logged_as_errors(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    before = httpx.get(f"{gateway.url}/health").json()["counters"]["client_disconnects"]
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {gateway.key}\r\ncontent-type: application/json\r\n"
        "content-length: 100000\r\n\r\n"
    ).encode()
    with caplog.at_level(logging.INFO):
        for _ in range(200):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(head + b'{"model": "openai/gpt-4o-mini", "messages": [')
        # The server notices the last ones a moment after they close.
        for _ in range(100):
            counters = httpx.get(f"{gateway.url}/health").json()["counters"]
            if counters["client_disconnects"] - before >= 200:
                break
            time.sleep(0.02)
    assert counters["client_disconnects"] - before == 200
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]
