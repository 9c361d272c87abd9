"""What passes between the core and a provider plugin's hooks.

Plugins are sans-I/O: they receive these objects, build ``httpx.Request`` objects and read
``httpx.Response`` objects; the core does the network I/O, retries, timeouts and billing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from pydantic import BaseModel

from .. import fastjson
from ..billing.usage import Usage

#: An ASGI application (the simulator of an upstream).
ASGIApp = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """A provider a plugin serves, registered through the ``register_providers`` hook.

    :param name: the provider's name, as used in registry.toml (``[providers.NAME]``).
    :param base_url: the upstream's real base URL, used unless registry.toml overrides it;
        empty for a provider configured only as instances, each with its own ``base_url``.
    :param api_key_env: the environment variable that holds the upstream key by default.
    :param simulator: a factory returning an ASGI app that imitates the upstream, or its
        ``"module:name"`` (imported only when a simulator is started, so a production
        gateway never loads it); called with ``api_key=`` (the key the simulator should
        demand) and, if it takes it, ``settings=`` (the instance's validated settings).
        Sandbox mode and the tests use it.
    :param settings: a pydantic model for the provider's own settings in registry.toml
        (the keys of ``[providers.NAME.settings]``), validated at startup.
    :param stream_format: how the upstream frames a streamed answer, each event then given
        to ``parse_stream_event``: ``"sse"`` (server-sent events: named events, multi-line
        data), ``"ndjson"`` (one JSON document per line) or ``"bytes"`` (each chunk as it
        arrives).
    """

    name: str
    base_url: str
    api_key_env: str
    simulator: Callable[..., ASGIApp] | str | None = None
    settings: type[BaseModel] | None = None
    description: str = ""
    webhook_secret_env: str | None = None  # the secret that signs the upstream's webhooks
    stream_format: Literal["sse", "ndjson", "bytes"] = "sse"
    data_sent: str = ""  # what the upstream receives, for docs/privacy.md ("prompts, ...")


@dataclass(frozen=True, slots=True)
class Upstream:
    """How to reach a provider at runtime: handed to ``build_request``."""

    name: str
    base_url: str
    api_key: str | None
    settings: BaseModel | None = None
    webhook_secret: str | None = None  # checks the upstream's signed webhooks
    _urls: dict[str, tuple[httpx.URL, str]] = field(default_factory=dict, repr=False, compare=False)

    def __repr__(self) -> str:  # never print the key
        return f"Upstream(name={self.name!r}, base_url={self.base_url!r}, api_key=***)"

    def url(self, path: str = "") -> httpx.URL:
        """``base_url + path``, parsed once: an ``httpx.Request`` given a URL object skips
        parsing a string, tens of microseconds per request. For fixed paths (the first
        256 are kept); build paths that carry ids as strings."""
        return self._target(path)[0]

    def _target(self, path: str) -> tuple[httpx.URL, str]:
        """``url(path)`` and its Host header."""
        target = self._urls.get(path)
        if target is None:
            url = httpx.URL(self.base_url + path)
            target = (url, url.netloc.decode("ascii"))
            if len(self._urls) < 256:
                self._urls[path] = target
        return target

    def json_request(
        self, method: str, path: str, body: Any, headers: dict[str, str]
    ) -> httpx.Request:
        """An ``httpx.Request`` to ``url(path)`` with ``body`` as JSON, read and ready.

        The body is compact UTF-8 JSON, as ``httpx.Request(json=...)`` writes it, and the
        request carries the same headers and attributes, but it is put together as
        ``httpx.Request(...).read()`` leaves one, without httpx's per-request URL copy,
        header and body machinery, and encoded with orjson: 3 us, where building it
        through ``httpx.Request`` and ``read()`` took 5.5 on the path every call takes.
        """
        url, host = self._target(path)
        data = fastjson.dumps(body)
        merged = {"host": host, "content-type": "application/json"}
        for name, value in headers.items():  # one of each name, the plugin's winning
            merged[name.lower()] = value
        merged["content-length"] = str(len(data))
        request = httpx.Request.__new__(httpx.Request)
        request.method = method.upper()
        request.url = url  # immutable: shared by every request to this path
        request.headers = httpx.Headers(merged)
        request.extensions = {}
        request.stream = httpx.ByteStream(data)
        request._content = data  # as read() leaves it
        return request


@dataclass(slots=True)
class Output:
    """A normalized upstream answer: the unified body and the usage that pricing needs.

    ``body`` is a JSON-able dict (chat, embeddings, images, transcriptions) or raw bytes
    (speech audio, plain-text transcripts) sent with ``content_type``. ``usage`` is what
    the upstream reported, or None when it reported nothing: the call is then charged its
    estimate. The core checks it before pricing: a usage that is negative, inconsistent or
    more than the request can use makes the answer unreadable (502, free).
    """

    body: dict[str, Any] | bytes
    usage: Usage | None
    content_type: str = "application/json"


@dataclass(slots=True)
class StreamEvent:
    """One event of a streamed answer, normalized.

    ``chunk`` is forwarded to the client (None drops the event); ``usage`` is set on the
    event that reports the final usage, which the core prices and annotates with the cost.
    ``done`` marks the stream's terminal event: the core stops reading there, and a stream
    that ends without one (or, for SSE, without ``data: [DONE]``) was cut short (502,
    free). A ``bytes`` stream is complete at the end of its body.
    """

    chunk: dict[str, Any] | None
    usage: Usage | None = None
    done: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """A safety-policy verdict. ``allow`` or ``deny`` with a category and a reason.

    ``evidence`` is the part of the content that decided (for the audit trail, redacted and
    shortened there; never sent to the client).
    """

    action: Literal["allow", "deny"]
    category: str | None = None
    reason: str = ""
    evidence: str = ""

    @classmethod
    def deny(cls, category: str, reason: str, *, evidence: str = "") -> Verdict:
        return cls("deny", category, reason, evidence)


JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]


@dataclass(slots=True)
class Job:
    """A long-running upstream job (a Replicate prediction), normalized by ``parse_job``.

    :param id: the upstream's id of the job.
    :param status: one of queued, running, succeeded, failed, canceled.
    :param files: on success, one request per output file; the core sends them and copies
        the bytes into its storage before the task succeeds (upstream URLs expire).
    :param text: on success, the output of a text model.
    :param usage: what the job used that the upstream reports (``run_seconds``); the core
        adds what it measures from the files (images, outputs, seconds of video or audio).
    :param error_code, error_message: why it failed, in words fit for the API consumer.
    """

    id: str
    status: JobStatus
    files: list[httpx.Request] = field(default_factory=list)
    text: str | None = None
    usage: Usage = field(default_factory=Usage)
    error_code: str | None = None
    error_message: str | None = None

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "canceled")


@dataclass(frozen=True, slots=True)
class Voice:
    """A voice a provider's speech models speak with, as ``GET /v1/audio/voices`` lists it.

    A request's ``voice`` may name it by ``id`` or by ``name`` (case-insensitive).
    ``models`` lists the upstream model ids that take it (empty: every speech model of the
    provider); ``labels`` are free-form descriptions (accent, gender, use case).
    """

    id: str
    name: str
    models: tuple[str, ...] = ()
    preview_url: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class AudioStream:
    """The head of a streamed audio answer, read before its bytes are relayed.

    ``content_type`` is what the client is told; ``prefix`` goes out before the first byte
    (a container header, e.g. RIFF around raw PCM); ``usage`` is the billable usage, or None
    for the request's estimate (speech priced per character is known up front).

    ``events``: the body is server-sent events, each read by ``parse_stream_event`` into a
    unified speech event (``{"type": "speech.audio.delta", "audio": BASE64}``, then
    ``{"type": "speech.audio.done", "usage": {...}}`` with the event's ``usage`` set and
    ``done``): speech priced per token, whose usage is known at the end. The core writes
    the client the audio's bytes, or the events when it asked for ``stream_format: "sse"``
    (``prefix`` is then unused), and bills the done event's usage.
    """

    content_type: str
    usage: Usage | None = None
    prefix: bytes = b""
    events: bool = False
