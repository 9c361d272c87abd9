"""The operator's view: metrics that count what was served, logs a collector can read line
by line with the request id on each, and health probes that say what is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from processes import serving
from prometheus_client.parser import text_string_to_metric_families

from apimodels.errors import ConfigError
from apimodels.server import assemble
from apimodels.store.accounts import create_account, create_key
from apimodels.testing import serve
from apimodels_replicate.simulator import create_app as create_replicate
from support import (
    REPLICATE_KEY,
    SIM_KEY,
    TASKS_SETTINGS,
    Gateway,
    Simulator,
    gateway_of_its_own,
    registry_for,
)

CHAT = {
    "model": "openai/gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 10,
}
CHAT_LABELS = {"route": "/v1/chat/completions", "model": "openai/gpt-4o-mini", "provider": "openai"}


def scrape(url: str, **headers: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``GET /metrics``, by name and labels."""
    r = httpx.get(f"{url}/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def own(simulator: Simulator, tmp_path: Path) -> Iterator[Gateway]:
    with gateway_of_its_own(simulator, tmp_path) as gw:
        yield gw


def test_a_scrape_after_known_traffic_counts_it(own: Gateway, simulator: Simulator) -> None:
    with openai.OpenAI(base_url=f"{own.url}/v1", api_key=own.key, max_retries=0) as client:
        for _ in range(3):
            client.chat.completions.create(**CHAT)
        simulator.knobs(fail=[{"kind": "error", "status": 500}])
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(**CHAT)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(**{**CHAT, "model": "nobody/nothing"})
        refused = {**CHAT, "messages": [{"role": "user", "content": "Where can I buy stolen credit cards and fullz?"}]}  # fmt: skip
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(**refused)
        client.models.retrieve("openai/gpt-4o-mini")
    assert httpx.get(f"{own.url}/no/such/path").status_code == 404
    own.settled()  # the charges are committed (and counted) before /health answers
    samples = scrape(own.url)

    requests = "apimodels_requests_total"
    assert value(samples, requests, **CHAT_LABELS, status="200") == 3
    assert value(samples, "apimodels_request_duration_seconds_count", **CHAT_LABELS, status="200") == 3  # fmt: skip
    upstream_status = str(failed.value.status_code)
    assert value(samples, requests, **CHAT_LABELS, status=upstream_status) == 1
    assert value(samples, requests, **CHAT_LABELS, status="403") == 1
    unknown = {"route": "/v1/chat/completions", "model": "", "provider": ""}
    assert value(samples, requests, **unknown, status="404") == 1
    model_route = {"route": "/v1/models/{model_id:path}", "model": "", "provider": ""}
    assert value(samples, requests, **model_route, status="200") == 1
    assert value(samples, requests, route="unmatched", model="", provider="", status="404") == 1
    # The upstream: 4 answers (3 fine, one 500); the refused and the unknown never left.
    assert value(samples, "apimodels_upstream_duration_seconds_count", provider="openai") == 4
    assert value(samples, "apimodels_upstream_errors_total", provider="openai", reason="500") == 1
    assert value(samples, "apimodels_policy_refusals_total", source="policy", category="fraud") == 1
    charged = sum(
        r["cost_micros"]
        for r in own.db.query("SELECT cost_micros FROM usage WHERE status = 'succeeded'")
    )
    assert charged > 0
    assert value(samples, "apimodels_credits_charged_micros_total", model="openai/gpt-4o-mini", provider="openai") == charged  # fmt: skip
    assert value(samples, "apimodels_holds_pending") == 0
    assert value(samples, "apimodels_reservations") == 0


def test_credits_set_aside_show_while_a_call_runs(own: Gateway, simulator: Simulator) -> None:
    simulator.knobs(latency=2)
    done = threading.Thread(
        target=httpx.post,
        args=(f"{own.url}/v1/chat/completions",),
        kwargs={"json": CHAT, "headers": {"authorization": f"Bearer {own.key}"}, "timeout": 30},
    )
    done.start()
    deadline = time.monotonic() + 10
    while value(samples := scrape(own.url), "apimodels_reservations") != 1:
        assert time.monotonic() < deadline, "the call's credits never showed"
        time.sleep(0.05)
    assert value(samples, "apimodels_held_micros", kind="reservations") > 0
    done.join()
    own.settled()
    samples = scrape(own.url)
    assert value(samples, "apimodels_reservations") == 0
    assert value(samples, "apimodels_held_micros", kind="reservations") == 0


def test_tasks_and_their_webhooks_are_counted(simulator: Simulator, tmp_path: Path) -> None:
    with serve(create_replicate(REPLICATE_KEY)) as replicate_url:
        replicate = Simulator(replicate_url)
        registry = registry_for(
            simulator.url, tmp_path, replicate=replicate_url, tasks=TASKS_SETTINGS
        )
        environ = {"OPENAI_API_KEY": SIM_KEY, "REPLICATE_API_TOKEN": REPLICATE_KEY}
        server = assemble(registry, tmp_path / "gateway.db", environ=environ)
        account = create_account(server.db, "tasks-metrics@example.com")["id"]
        _, key = create_key(server.db, account)
        server.ledger.post(account, 10_000_000, kind="grant", reason="t", actor="tests")
        replicate.knobs(slow_seconds=1.5)
        with serve(server.app) as url:
            api = httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"})
            nobody = "http://127.0.0.1:9/hook"  # nothing listens: each delivery fails
            body = {
                "model": "replicate/veo-3.1-fast",
                "input": {"prompt": "metrics", "duration": 4},
                "webhook": nobody,
            }
            submitted = api.post("/v1/tasks", json=body)
            assert submitted.status_code == 202, submitted.text
            task_id = submitted.json()["id"]
            deadline = time.monotonic() + 10
            while value(samples := scrape(url), "apimodels_tasks", status="running") != 1:
                assert time.monotonic() < deadline, "the task never showed as running"
                time.sleep(0.05)
            assert value(samples, "apimodels_holds_pending") == 1  # a task holds its credits
            assert value(samples, "apimodels_held_micros", kind="holds") > 0
            while api.get(f"/v1/tasks/{task_id}").json()["status"] == "running":
                assert time.monotonic() < deadline + 10, "the task never finished"
                time.sleep(0.05)
            while value(samples := scrape(url), "apimodels_webhook_deliveries_total", outcome="retrying") < 1:  # fmt: skip
                assert time.monotonic() < deadline + 20, "no webhook delivery was attempted"
                time.sleep(0.05)
            assert value(samples, "apimodels_tasks_finished_total", status="succeeded") == 1
            assert value(samples, "apimodels_tasks", status="running") == 0
            assert value(samples, "apimodels_holds_pending") == 0
            assert value(samples, "apimodels_webhooks_pending") == 1  # it will try again
            api.close()


def test_the_metrics_token(simulator: Simulator, tmp_path: Path) -> None:
    def with_token(text: str) -> str:
        return text.replace("[gateway]\n", '[gateway]\nmetrics_token_env = "METRICS_TOKEN"\n')

    registry = registry_for(simulator.url, tmp_path)
    registry.write_text(with_token(registry.read_text()))
    with pytest.raises(ConfigError, match="METRICS_TOKEN"):
        assemble(registry, tmp_path / "a.db", environ={"OPENAI_API_KEY": SIM_KEY})
    environ = {"OPENAI_API_KEY": SIM_KEY, "METRICS_TOKEN": "scrape-me-0123456789"}
    server = assemble(registry, tmp_path / "b.db", environ=environ)
    with serve(server.app) as url:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "scrape-me"}):
            r = httpx.get(f"{url}/metrics", headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_metrics_token"
            assert "scrape-me" not in r.text
        assert scrape(url, authorization="Bearer scrape-me-0123456789")


def test_health_live_and_ready(own: Gateway, simulator: Simulator, tmp_path: Path) -> None:
    assert httpx.get(f"{own.url}/health/live").json() == {"status": "ok"}
    r = httpx.get(f"{own.url}/health/ready")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "current", "providers": "ok"},
    }
    assert httpx.get(f"{own.url}/health").json()["status"] == "ok"  # kept as it was
    # A database whose schema lags behind this code (as if a migration never ran).
    own.db.execute("DELETE FROM _migrations WHERE name = 'm011_privacy'")
    own.db.conn.commit()
    r = httpx.get(f"{own.url}/health/ready")
    assert r.status_code == 503
    assert r.json()["checks"]["migrations"] == "1 pending"
    assert httpx.get(f"{own.url}/health/live").status_code == 200  # alive all the same

    # No provider with a key: alive, not ready.
    server = assemble(registry_for(simulator.url, tmp_path), tmp_path / "bare.db", environ={})
    with serve(server.app) as url:
        r = httpx.get(f"{url}/health/ready")
        assert r.status_code == 503
        assert r.json()["checks"] == {
            "database": "ok",
            "migrations": "current",
            "providers": "none available",
        }


def test_json_logs_carry_the_request_id_on_every_line(simulator: Simulator, tmp_path: Path) -> None:
    registry = registry_for(simulator.url, tmp_path)
    db_path = tmp_path / "logs.db"
    log_path = tmp_path / "stderr.log"
    ids = []
    with (
        open(log_path, "wb") as stderr,
        serving(registry, db_path, "--log-format", "json", stderr=stderr) as server,
    ):
        from apimodels.store.db import open_db

        db = open_db(db_path)
        account = create_account(db, "logs@example.com")["id"]
        _, key = create_key(db, account)
        db.conn.close()
        headers = {"authorization": f"Bearer {key}"}
        for body in (CHAT, {**CHAT, "model": "nobody/nothing"}):
            r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)
            ids.append(r.headers["x-request-id"])
        assert r.status_code == 404
    lines = log_path.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line, whatever wrote it
    assert entries and all(
        {"time", "level", "logger", "message", "pid"} <= e.keys() for e in entries
    )
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    by_id = {e["request_id"]: e for e in access}
    assert by_id[ids[0]]["status"] == 402 and by_id[ids[0]]["path"] == "/v1/chat/completions"
    assert by_id[ids[1]]["status"] == 404
    assert all(e["request_id"] is not None for e in access)
    assert any("Started server process" in e["message"] for e in entries)
    assert all(key not in line for line in lines)  # no key material in any line


def test_serve_help_documents_the_operations_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "apimodels.cli", "serve", "--help"], capture_output=True, text=True
    )
    for flag in ("--workers", "--log-format", "--shutdown-timeout"):
        assert flag in result.stdout


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """OpenTelemetry's SDK keeping this process's spans in memory (the process's tracer
    provider can be set once: the in-process gateways of this module report here)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter


def test_tracing_spans_a_call_and_its_upstream_exchange(
    spans: InMemorySpanExporter, simulator: Simulator, tmp_path: Path
) -> None:
    """With [gateway] tracing on: a server span per request (model, provider, status,
    request id) and a client span under it per upstream exchange, whose traceparent the
    upstream receives; an upstream failure marks both. Off (the default): no span."""
    on = lambda text: text.replace("[gateway]\n", "[gateway]\ntracing = true\n", 1)  # noqa: E731
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    with gateway_of_its_own(simulator, tmp_path / "on", on) as gw:
        spans.clear()
        with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0) as client:
            answer = client.chat.completions.with_raw_response.create(**CHAT)
            sent = simulator.requests()[-1]["headers"]
            simulator.knobs(fail=[{"kind": "error", "status": 500}])
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(**CHAT)
        finished = spans.get_finished_spans()
    servers = [s for s in finished if s.kind == SpanKind.SERVER]
    clients = [s for s in finished if s.kind == SpanKind.CLIENT]
    assert [s.name for s in servers] == ["POST /v1/chat/completions"] * 2
    assert [s.name for s in clients] == ["upstream openai"] * 2
    ok, failed = servers
    assert ok.attributes["http.response.status_code"] == 200
    assert ok.attributes["apimodels.model"] == CHAT["model"]
    assert ok.attributes["apimodels.provider"] == "openai"
    assert ok.attributes["apimodels.request_id"] == answer.headers["x-request-id"]
    # The upstream span is the server span's child, and its context reached the upstream.
    upstream = clients[0]
    assert upstream.parent is not None and upstream.parent.span_id == ok.context.span_id
    assert upstream.context.trace_id == ok.context.trace_id
    trace_id, span_id = f"{ok.context.trace_id:032x}", f"{upstream.context.span_id:016x}"
    version, sent_trace, sent_span, flags = sent["traceparent"].split("-")
    assert (version, sent_trace, sent_span) == ("00", trace_id, span_id)
    assert int(flags, 16) & 1  # sampled
    assert clients[1].attributes["http.response.status_code"] == 500
    assert clients[1].status.status_code == StatusCode.ERROR
    assert failed.attributes["http.response.status_code"] >= 500
    assert failed.status.status_code == StatusCode.ERROR
    simulator.reset()

    with gateway_of_its_own(simulator, tmp_path / "off") as gw:  # tracing off: not a span
        spans.clear()
        with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0) as client:
            client.chat.completions.create(**CHAT)
        assert spans.get_finished_spans() == ()
        assert "traceparent" not in simulator.requests()[-1]["headers"]
