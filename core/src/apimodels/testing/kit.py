"""The provider conformance kit: one test class that proves a provider plugin correct.

Subclass it in the plugin's tests, name the provider and a catalog that lists its models::

    from apimodels.testing.kit import ProviderConformance

    class TestConformance(ProviderConformance):
        provider = "acme"
        registry = Path(__file__).parents[1] / "catalog.toml"
        inputs = {"acme/voice-1": {"voice": "narrator"}}   # fields a model needs, if any

The kit starts the plugin's simulator (``ProviderSpec.simulator``) and a gateway in sandbox
mode serving only that provider's models, each on its own socket of 127.0.0.1, and checks:

- every catalog model maps, prices and normalizes: a call through the gateway succeeds and
  its body validates against the core's unified response schemas (``apimodels.responses``);
- prices are never negative and never fall when a quantity grows;
- the hold (the estimate) is not below the actual cost for the kit's inputs;
- upstream errors map to the documented statuses (a refused gateway key is a 502, not the
  client's 401; upstream rate limits a 429; upstream failures a 502) and no upstream key
  appears in any error;
- streaming works where the modality streams (chat: chunks, then usage with its cost;
  speech: audio relayed with its cost in ``x-apimodels-cost`` when it is known up front,
  else recorded once the audio ended), in the provider's ``stream_format``;
- speech events (``stream_format: "sse"``): a model either streams them (audio in
  ``speech.audio.delta`` events, then ``speech.audio.done`` with the usage and the cost
  charged) or refuses with a 400 naming ``stream_format``, free;
- embeddings answer both ``encoding_format``s: floats, and the same vector as base64 of
  little-endian float32 (the plugin passes it through or encodes it itself);
- errors the upstream reports with a 2xx status (``errors_in_2xx``: bodies it sends) and
  inside a stream after its first event (``failing_stream``: the raw bytes of one) reach
  the client as errors, cost nothing and never carry the upstream key. The kit serves
  them from a replaying upstream; ``{key}`` in them stands for the upstream key.

Models the upstream runs as jobs (the provider implements ``build_job_request``) are run as
tasks. ``simulator_knobs`` is posted to the simulator's ``/_sim/knobs`` first (to make a
slow simulator quick). Installing ``apimodels[testing]`` also loads apimodels' pytest plugin
(``apimodels.testing.plugin``, a ``pytest11`` entry point) with fixtures for plugin tests.
"""

from __future__ import annotations

import array
import base64
import io
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from ..catalog import Catalog, ModelConfig, TasksConfig, load_catalog
from ..providers import media
from ..providers.dispatch import upstream_error
from ..providers.runtime import sandbox_base_url
from ..providers.types import Usage
from ..responses import RESPONSES, Task
from ..schemas import Modality
from ..server import Server, assemble
from ..store.accounts import create_account, create_key
from . import serve

#: What the kit sends each modality's endpoint, unless ``inputs`` says otherwise.
DEFAULT_INPUTS: dict[Modality, dict[str, Any]] = {
    Modality.chat: {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16},
    Modality.embedding: {"input": "The conformance kit says hello."},
    Modality.image: {"prompt": "a red circle on a white background"},
    Modality.speech: {"input": "Hello from the conformance kit.", "voice": "alloy"},
    Modality.transcription: {},
    Modality.video: {"prompt": "waves at dusk"},
}
#: A job's input when the model's schema asks for text under another name.
_TEXT_FIELDS = ("prompt", "text", "input")
_ENDPOINT = {
    Modality.chat: "chat/completions",
    Modality.embedding: "embeddings",
    Modality.image: "images/generations",
    Modality.speech: "audio/speech",
    Modality.transcription: "audio/transcriptions",
}
#: The statuses an upstream error may become (what docs/plugins.md documents).
ERROR_STATUSES = {
    400: {400, 404, 413, 422},
    401: {502},
    402: {502},  # the upstream wants payment from the gateway's account, not the client's
    403: {403, 502},
    404: {400, 404},
    429: {429, 503},
    500: {502, 503},
    503: {502, 503},
}


@dataclass
class Kit:
    """A running gateway for one provider, with a funded account."""

    url: str
    server: Server
    key: str
    secret: str  # the upstream key the simulator demands: it must never leak
    simulator_url: str

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {self.key}"}, timeout=60
        )


def _only(catalog: Catalog, provider: str) -> Catalog:
    """The catalog with just ``provider`` and its models, and quick task polling."""
    if provider not in catalog.providers:
        raise AssertionError(f"the catalog has no [providers.{provider}]")
    return catalog.model_copy(
        update={
            "providers": {provider: catalog.providers[provider]},
            "models": {k: m for k, m in catalog.models.items() if m.provider == provider},
            "tasks": TasksConfig(
                poll_interval_seconds=0.05,
                max_poll_interval_seconds=0.25,
                lease_seconds=5,
                sync_wait_seconds=30,
                allow_private_webhooks=True,
            ),
        }
    )


@contextmanager
def open_kit(
    provider: str, registry: str | Path, tmp: Path, knobs: dict[str, Any] | None = None
) -> Iterator[Kit]:
    """Serve ``provider``'s simulator and a sandboxed gateway for its models, with a funded
    account; ``knobs`` go to the simulator's ``/_sim/knobs`` first."""
    catalog = _only(load_catalog(registry), provider)
    server = assemble(catalog, tmp / "kit.db", sandbox=True, environ={})
    account = create_account(server.db, f"kit@{provider}.test")
    _, key = create_key(server.db, account["id"], "conformance")
    server.ledger.post(account["id"], 10**9, kind="grant", reason="kit", actor="kit")
    with serve(server.app) as url:
        assert server.simulators is not None
        sim = server.simulators.urls[provider]
        if knobs:
            httpx.post(f"{sim}/_sim/knobs", json=knobs).raise_for_status()
        upstream = server.gateway.providers[provider].upstream
        yield Kit(url, server, key, upstream.api_key or "", sim)


class ProviderConformance:
    """Subclass as ``Test...``; see the module's docstring."""

    provider: ClassVar[str]
    registry: ClassVar[str | Path]
    inputs: ClassVar[dict[str, dict[str, Any]]] = {}
    simulator_knobs: ClassVar[dict[str, Any]] = {}
    task_timeout: ClassVar[float] = 60.0
    #: JSON bodies the upstream answers with HTTP 200 for a failed call (empty: it never does).
    errors_in_2xx: ClassVar[list[bytes]] = []
    #: A streamed answer (raw bytes, in the provider's framing) that fails after its first
    #: event; ``failing_stream_type`` is its content type.
    failing_stream: ClassVar[bytes | None] = None
    failing_stream_type: ClassVar[str] = "text/event-stream"

    # --- the fixture ----------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def kit(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
        tmp = tmp_path_factory.mktemp(f"conformance-{cls.provider}")
        with open_kit(cls.provider, cls.registry, tmp, cls.simulator_knobs) as kit:
            yield kit

    # --- helpers ------------------------------------------------------------------------

    def models(self, kit: Kit) -> list[ModelConfig]:
        """The models a call can reach: not those past their ``retires_at`` (they answer 410;
        ``apimodels models --check`` is what fails for them)."""
        today = datetime.now(UTC).date()
        return [
            r.model
            for r in kit.server.gateway.routes.values()
            if r.model.retires_at is None or r.model.retires_at > today
        ]

    def _input(self, kit: Kit, model: ModelConfig) -> dict[str, Any]:
        route = kit.server.gateway.routes[model.id]
        given = dict(DEFAULT_INPUTS[model.modality])
        if route.jobs and route.input_schema is not None:
            # A job's input follows the model's own schema: put the text where it asks for it.
            props = route.input_schema.get("properties", {})
            text = next((v for v in given.values() if isinstance(v, str)), "Hello.")
            if model.modality is Modality.chat:
                text = "Say hello."
            given = {f: text for f in _TEXT_FIELDS if f in props}
            if "max_tokens" in props:
                given["max_tokens"] = 16
        return {**given, **self.inputs.get(model.id, {})}

    def call(self, kit: Kit, model: ModelConfig) -> tuple[Any, str, bytes]:
        """Run ``model`` once through the gateway; (parsed body or task, request id, raw)."""
        route = kit.server.gateway.routes[model.id]
        body = self._input(kit, model)
        with kit.client() as c:
            if route.jobs or model.modality is Modality.video:
                r = c.post("/v1/tasks", json={"model": model.id, "input": body})
                assert r.status_code == 202, f"{model.id}: {r.status_code} {r.text}"
                task_id = r.json()["id"]
                deadline = time.monotonic() + self.task_timeout
                while True:
                    r = c.get(f"/v1/tasks/{task_id}")
                    task = Task.model_validate(r.json())
                    if task.status not in ("queued", "running"):
                        break
                    assert time.monotonic() < deadline, f"{model.id}: task did not finish"
                    time.sleep(0.05)
                assert task.status == "succeeded", f"{model.id}: {task.error}" + _hint(r.text)
                return task, task_id, r.content
            path = f"/v1/{_ENDPOINT[model.modality]}"
            if model.modality is Modality.transcription:
                audio = media.wav(media.tone(1.0))
                files = {"file": ("kit.wav", io.BytesIO(audio), "audio/wav")}
                r = c.post(path, data={"model": model.id, **body}, files=files)
            else:
                r = c.post(path, json={"model": model.id, **body})
            assert r.status_code == 200, f"{model.id}: {r.status_code} {r.text}" + _hint(r.text)
            request_id = r.headers["x-request-id"]
            if model.modality is Modality.speech:
                assert r.content and r.headers["content-type"].startswith("audio/"), model.id
                return r.content, request_id, r.content
            return RESPONSES[model.modality].model_validate(r.json()), request_id, r.content

    # --- the checks ---------------------------------------------------------------------

    def test_every_model_maps_prices_and_normalizes(self, kit: Kit) -> None:
        assert self.models(kit), f"the catalog lists no {self.provider} model"
        with kit.client() as c:
            for model in self.models(kit):
                _, request_id, raw = self.call(kit, model)
                assert kit.secret.encode() not in raw, f"{model.id}: the upstream key leaked"
                row = c.get(f"/v1/generation/{request_id}").json()
                assert row["status"] == "succeeded", f"{model.id}: {row}"
                assert Decimal(str(row["cost"])) >= 0, f"{model.id}: negative cost"
                assert row["unit_prices"], f"{model.id}: no unit prices recorded"

    def test_the_hold_covers_the_actual_cost(self, kit: Kit) -> None:
        with kit.client() as c:
            for model in self.models(kit):
                _, request_id, _ = self.call(kit, model)
                row = c.get(f"/v1/generation/{request_id}").json()
                assert Decimal(str(row["cost"])) <= Decimal(row["hold"]), (
                    f"{model.id}: charged {row['cost']} on a hold of {row['hold']}: "
                    "estimate_usage must estimate from the maximum"
                )

    def test_prices_are_non_negative_and_grow_with_quantity(self, kit: Kit) -> None:
        for route in kit.server.gateway.routes.values():
            hooks, model = route.provider.hooks, route.model
            table = model.pricing.per_image
            for variant in sorted(table) if isinstance(table, dict) else [None]:
                previous = Decimal(0)
                for n in (0, 1, 2, 10, 1000):
                    usage = Usage(
                        input_tokens=n,
                        # a third read from a prompt cache, a third written to it
                        cached_input_tokens=n // 3,
                        cache_write_tokens=n // 3,
                        output_tokens=n,
                        audio_input_tokens=n,
                        audio_output_tokens=n,
                        images=n,
                        characters=n,
                        outputs=n,
                        seconds=Decimal(n),
                        run_seconds=Decimal(n),
                        variant=variant,
                    )
                    price = hooks.price_usage(model=model, pricing=model.pricing, usage=usage)
                    where = f"{model.id}" + (f" ({variant})" if variant else "")
                    assert price >= 0, f"{where}: negative price for {n} units"
                    assert price >= previous, f"{where}: price falls from {previous} at {n}"
                    previous = price
                assert previous > 0, f"{model.id}: 1000 of everything costs nothing"

    def test_upstream_errors_map_to_documented_statuses(self, kit: Kit) -> None:
        secret = kit.secret
        bodies = [
            {"error": {"message": f"Incorrect API key {secret}", "type": "x", "code": "y"}},
            {"detail": f"token {secret} is not valid", "title": "Unauthenticated"},
            {"detail": {"status": "error", "message": f"key {secret} refused"}},
        ]
        for route in kit.server.gateway.routes.values():
            for status, allowed in ERROR_STATUSES.items():
                for body in bodies:
                    response = httpx.Response(
                        status,
                        json=body,
                        headers={"retry-after": "3"},
                        request=httpx.Request("POST", route.provider.upstream.base_url),
                    )
                    error = upstream_error(route, response)
                    assert error.status in allowed, (
                        f"{route.model.id}: upstream {status} became {error.status}"
                    )
                    shown = json.dumps(error.body()) + json.dumps(error.headers)
                    assert secret not in shown, f"{route.model.id}: the upstream key leaked"

    def test_streaming_where_declared(self, kit: Kit) -> None:
        chats = [
            m
            for m in self.models(kit)
            if m.modality is Modality.chat and not kit.server.gateway.routes[m.id].jobs
        ]
        with kit.client() as c:
            for model in chats:
                body = {
                    "model": model.id,
                    **self._input(kit, model),
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                chunks, usage = 0, None
                with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    assert r.status_code == 200, f"{model.id}: {r.status_code}"
                    assert r.headers["content-type"].startswith("text/event-stream")
                    lines = [line for line in r.iter_lines() if line.startswith("data: ")]
                assert lines and lines[-1] == "data: [DONE]", f"{model.id}: no [DONE]"
                for line in lines[:-1]:
                    event = json.loads(line.removeprefix("data: "))
                    chunks += 1
                    usage = event.get("usage") or usage
                assert chunks > 1, f"{model.id}: not streamed"
                assert usage and Decimal(str(usage["cost"])) >= 0, f"{model.id}: no usage or cost"
            speech = [
                m
                for m in self.models(kit)
                if m.modality is Modality.speech and not kit.server.gateway.routes[m.id].jobs
            ]
            for model in speech:  # audio is relayed as it arrives
                body = {"model": model.id, **self._input(kit, model)}
                with c.stream("POST", "/v1/audio/speech", json=body) as r:
                    assert r.status_code == 200, f"{model.id}: {r.status_code}"
                    assert r.headers["content-type"].startswith("audio/"), model.id
                    audio = b"".join(r.iter_bytes())
                assert audio, f"{model.id}: no audio"
                row = c.get(f"/v1/generation/{r.headers['x-request-id']}").json()
                assert row["status"] == "succeeded" and Decimal(str(row["cost"])) >= 0, model.id
                if "x-apimodels-cost" in r.headers:  # a price known up front is the charge
                    assert Decimal(r.headers["x-apimodels-cost"]) == Decimal(str(row["cost"]))

    def test_speech_events_stream_or_are_refused(self, kit: Kit) -> None:
        models = self._plain_models(kit, Modality.speech)
        if not models:
            pytest.skip("no speech model")
        with kit.client() as c:
            for model in models:
                body = {"model": model.id, **self._input(kit, model), "stream_format": "sse"}
                with c.stream("POST", "/v1/audio/speech", json=body) as r:
                    raw = r.read()
                row = c.get(f"/v1/generation/{r.headers['x-request-id']}").json()
                if r.status_code == 400:  # the model cannot stream events
                    assert r.json()["error"]["param"] == "stream_format", model.id
                    assert Decimal(str(row.get("cost") or 0)) == 0, f"{model.id}: charged"
                    continue
                assert r.status_code == 200, f"{model.id}: {r.status_code} {raw[:200]!r}"
                assert r.headers["content-type"].startswith("text/event-stream"), model.id
                events = [
                    json.loads(line[6:])
                    for line in raw.decode().splitlines()
                    if line.startswith("data: ")
                ]
                audio = b"".join(
                    base64.b64decode(e["audio"])
                    for e in events
                    if e.get("type") == "speech.audio.delta"
                )
                assert audio, f"{model.id}: no audio in the events"
                done = events[-1]
                assert done.get("type") == "speech.audio.done", f"{model.id}: no done event"
                cost = Decimal(str(done["usage"]["cost"]))
                assert cost == Decimal(str(row["cost"])) >= 0, f"{model.id}: {cost} vs {row}"

    # --- errors the upstream reports in 2xx answers ----------------------------------------

    @contextmanager
    def replaying(self, kit: Kit, body: bytes, content_type: str) -> Iterator[str]:
        """Point the provider at an upstream that answers every request with ``body``
        (HTTP 200, ``{key}`` replaced by the upstream key); yields the key."""
        provider = kit.server.gateway.providers[self.provider]
        upstream = provider.upstream
        payload = body.replace(b"{key}", kit.secret.encode())

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            while (await receive()).get("more_body"):
                pass
            headers = [(b"content-type", content_type.encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload})

        with serve(app, lifespan="off") as origin:
            base = sandbox_base_url(upstream.base_url, origin)
            kit.server.gateway.point_at(self.provider, base, kit.secret)
            try:
                yield kit.secret
            finally:
                kit.server.gateway.point_at(self.provider, upstream.base_url, kit.secret)

    def _plain_models(self, kit: Kit, modality: Modality) -> list[ModelConfig]:
        return [
            m
            for m in self.models(kit)
            if m.modality is modality and not kit.server.gateway.routes[m.id].jobs
        ]

    def test_errors_in_2xx_bodies_are_errors_free_and_scrubbed(self, kit: Kit) -> None:
        if not self.errors_in_2xx:
            pytest.skip("the upstream reports no errors with a 2xx status (errors_in_2xx)")
        models = [
            m
            for m in self.models(kit)
            if m.modality in _ENDPOINT
            and m.modality is not Modality.transcription
            and not kit.server.gateway.routes[m.id].jobs
        ]
        with kit.client() as c:
            for body in self.errors_in_2xx:
                with self.replaying(kit, body, "application/json") as secret:
                    for model in models:
                        path = f"/v1/{_ENDPOINT[model.modality]}"
                        r = c.post(path, json={"model": model.id, **self._input(kit, model)})
                        assert r.status_code >= 400, f"{model.id}: a 2xx error body became 200"
                        assert secret not in r.text, f"{model.id}: the upstream key leaked"
                        row = c.get(f"/v1/generation/{r.headers['x-request-id']}").json()
                        assert Decimal(str(row["cost"])) == 0, f"{model.id}: a failure was charged"

    def test_an_error_inside_a_stream_ends_it_free_and_scrubbed(self, kit: Kit) -> None:
        if self.failing_stream is None:
            pytest.skip("no failing_stream given")
        with (
            kit.client() as c,
            self.replaying(kit, self.failing_stream, self.failing_stream_type) as secret,
        ):
            for model in self._plain_models(kit, Modality.chat):
                body = {"model": model.id, **self._input(kit, model), "stream": True}
                with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    text = r.read().decode()
                assert secret not in text, f"{model.id}: the upstream key leaked"
                if r.status_code == 200:  # failed after its first chunk: an error event
                    last = [line for line in text.splitlines() if line.startswith("data: ")][-1]
                    assert "error" in json.loads(last[6:]), f"{model.id}: no error event at the end"
                else:
                    assert r.status_code >= 400, f"{model.id}: {r.status_code}"
                row = c.get(f"/v1/generation/{r.headers['x-request-id']}").json()
                assert Decimal(str(row["cost"])) == 0, f"{model.id}: a failed stream was charged"

    def test_embeddings_in_float_and_base64(self, kit: Kit) -> None:
        models = self._plain_models(kit, Modality.embedding)
        if not models:
            pytest.skip("no embedding model")
        with kit.client() as c:
            for model in models:
                body = {"model": model.id, **self._input(kit, model)}
                floats = c.post("/v1/embeddings", json={**body, "encoding_format": "float"})
                packed = c.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
                assert floats.status_code == packed.status_code == 200, model.id
                vector = floats.json()["data"][0]["embedding"]
                data = packed.json()["data"][0]["embedding"]
                assert isinstance(vector, list) and isinstance(data, str), model.id
                decoded = array.array("f", base64.b64decode(data))
                if sys.byteorder == "big":
                    decoded.byteswap()
                assert len(decoded) == len(vector), f"{model.id}: base64 is another vector"


def _hint(answer: str) -> str:
    """What to fix when the core refused the upstream's usage as more than the estimate."""
    if "upstream_usage_invalid" not in answer:
        return ""
    return (
        " (the usage the plugin read is more than its estimate: estimate_usage must"
        " estimate from the maximum, and parse_response read the upstream's usage)"
    )
