"""The hook specifications every apimodels plugin implements a part of.

A provider plugin implements ``register_providers`` plus the per-call hooks for its own
models: ``estimate_usage``, ``build_request``, ``parse_response``, ``parse_stream_event`` and
``parse_error``; ``price_usage`` only when the catalog's unit prices are not enough. A
provider whose upstream runs long jobs (predictions, video renders) also implements the job
hooks: ``input_schema``, ``build_job_request``, ``build_job_poll``, ``build_job_cancel``,
``parse_job`` and, if the upstream sends signed webhooks, ``verify_webhook``. A speech
provider may implement ``list_voices`` and ``parse_audio_stream``. A policy
plugin implements ``register_policies`` and ``check_request``. The core resolves model ->
provider -> hook callers once at startup, so a provider's hooks are only ever called for
that provider's models.

Implementations may take fewer arguments than a spec names (pluggy passes what they ask for),
so specs can gain arguments without breaking published plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    import httpx
    from pydantic import BaseModel

    from .catalog import ModelConfig, Pricing
    from .errors import APIError
    from .policy.spec import PolicyCheck, PolicySpec
    from .providers.types import (
        AudioStream,
        Job,
        Output,
        ProviderSpec,
        StreamEvent,
        Upstream,
        Usage,
        Verdict,
        Voice,
    )
    from .schemas import UnifiedRequest

hookspec = HookspecMarker("apimodels")
hookimpl = HookimplMarker("apimodels")


@hookspec
def register_providers(register: Callable[[ProviderSpec], None]) -> None:
    """Register the upstream providers this plugin serves.

    Called once at startup. A provider named here can then be enabled in registry.toml
    under ``[providers.NAME]``.

    :param register: call it with one :class:`apimodels.ProviderSpec` per provider.
    """


@hookspec(firstresult=True)
def estimate_usage(model: ModelConfig, request: UnifiedRequest) -> Usage | None:
    """Estimate the most a request can use, before it is sent, to size the credit hold.

    Estimate from the maximum the request allows (``max_tokens``, the model's
    ``max_output_tokens``, the number of images), not the typical case: a hold that is too
    small lets a balance go negative. The estimate is also the ceiling of what the upstream
    may report: a usage above it (input tokens excepted, which may reach the model's
    ``context_tokens``) is refused as an unreadable answer (502, free).

    :param model: the catalog entry of the requested model.
    :param request: the validated unified request.
    :return: a :class:`apimodels.Usage`.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def build_request(
    model: ModelConfig, request: UnifiedRequest, upstream: Upstream
) -> httpx.Request | None:
    """Map a unified request to the upstream HTTP request. No I/O here.

    :param model: the catalog entry; ``model.upstream`` is the id the upstream knows.
    :param request: the validated unified request.
    :param upstream: the provider's base URL, key and settings; ``upstream.url(path)`` is
        ``base_url + path`` parsed once, cheaper per request than a string URL, and
        ``upstream.json_request(method, path, body, headers)`` builds a JSON request the
        way ``httpx.Request(json=...)`` does at half its cost.
    :return: an ``httpx.Request`` the core will send (with its pooled client, timeouts and
        retries). Raise :class:`apimodels.errors.InvalidRequest` for input the upstream
        cannot take.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def parse_response(
    model: ModelConfig, request: UnifiedRequest, response: httpx.Response
) -> Output | None:
    """Normalize a successful (2xx) upstream response to the unified response.

    An upstream that reports errors in a 2xx body (``{"error": ...}`` with HTTP 200): raise
    the :class:`apimodels.errors.APIError` it means here (``RateLimited``,
    ``UpstreamOverloaded``, ``InvalidRequest``...); the core answers it like a ``parse_error``
    mapping, scrubbed of the provider's key, and the call costs nothing.

    :param model: the catalog entry.
    :param request: the unified request it answers.
    :param response: the upstream response, body already read.
    :return: an :class:`apimodels.Output`: the unified body and the :class:`Usage` the
        upstream reported, as it reported it (the core checks it: negative, inconsistent
        or above the estimate is a 502), or ``usage=None`` when it reported none (the call
        is then charged its estimate). Raise :class:`apimodels.errors.UpstreamError` when
        the body is not what the upstream promises: the call then costs nothing.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def parse_stream_event(
    model: ModelConfig,
    request: UnifiedRequest,
    data: str | bytes,
    event: str | None,
    state: dict[str, Any],
) -> StreamEvent | None:
    """Normalize one event of a streaming upstream response, read in the provider's
    ``stream_format`` (server-sent events by default).

    The chunk to forward is a Chat Completions chunk (``choices[].delta``); the Responses
    and Messages front ends translate it for their clients. Raise an
    :class:`apimodels.errors.APIError` for an error the upstream reports inside the stream:
    before the first chunk it reaches the client as an ordinary HTTP error, after it as the
    stream's last event; either way the call costs nothing and the message is scrubbed of
    the provider's key.

    :param model: the catalog entry.
    :param request: the unified request it answers.
    :param data: the event's payload: an SSE event's ``data`` (its lines joined; OpenAI's
        ``[DONE]`` is handled by the core), one NDJSON line, or a chunk of bytes.
    :param event: the SSE event's name (``event:``), or None.
    :param state: a dict kept for the whole stream, empty at its first event: keep what
        later events need (the message id, the usage so far, open content blocks).
    :return: a :class:`apimodels.StreamEvent`: the chunk to forward (None: nothing), the
        usage when the event reports it (the core prices it and adds the cost to that
        chunk), and ``done=True`` on the terminal event of an upstream that sends no
        ``[DONE]``.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def parse_error(model: ModelConfig, response: httpx.Response) -> APIError | None:
    """Map an upstream error response (status >= 400) to the error the client sees.

    Map honestly: the client's bad input stays a 400, the upstream rejecting the gateway's
    own key is a 502 (not the client's 401), upstream rate limits a 429 with ``Retry-After``,
    "overloaded" a 503 (``UpstreamOverloaded``), upstream 5xx a 502. Never copy an upstream
    key or internal detail into the message (the core also scrubs the provider's key). The
    core ships a generic fallback, so implement this only to read the upstream's own error
    codes. Errors in 2xx answers are raised from ``parse_response`` and
    ``parse_stream_event`` instead; docs/plugins.md lists every error class.

    :param model: the catalog entry.
    :param response: the upstream response, body already read.
    :return: an :class:`apimodels.errors.APIError` (not raised).

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def price_usage(model: ModelConfig, pricing: Pricing, usage: Usage) -> Decimal | None:
    """Price a usage in USD, markup included, before rounding.

    The core's fallback multiplies the quantities by the catalog's unit prices; implement it
    only for tariffs the catalog's units cannot express.

    :param model: the catalog entry.
    :param pricing: the unit prices in force for this request.
    :param usage: the quantities (estimated for the hold, actual after the call).
    :return: a ``Decimal`` amount in USD.

    Stops at the first non-None result.
    """


@hookspec
def check_request(
    model: ModelConfig,
    request: UnifiedRequest | None,
    account_id: str,
    texts: list[str],
    settings: BaseModel | None,
    upstream: Upstream | None,
) -> Verdict | PolicyCheck | None:
    """Judge a request before anything is held or sent upstream.

    Every enabled policy (``[policies.NAME]`` in registry.toml) is asked, each with its own
    settings; any deny wins. A policy is asked through its own plugin's implementations
    only; a plugin that implements this without ``register_policies`` offers one policy,
    named after the plugin, without settings.

    :param model: the catalog entry of the requested model (``model.modality`` scopes rules).
    :param request: the validated unified request, or None for a task's free-form input.
    :param account_id: the calling account.
    :param texts: every piece of user text in the request, extracted once by the core
        (chat messages and content parts, prompts, speech input, nested structured input).
    :param settings: the policy's validated ``[policies.NAME.settings]`` (None without a
        settings model).
    :param upstream: the upstream of the provider the policy's spec names, else None.
    :return: ``Verdict.deny(category, reason)`` with a category of
        ``apimodels.policy.CATEGORIES``, ``Verdict("allow")``, None (no opinion), or a
        :class:`apimodels.policy.PolicyCheck`: an upstream request the core sends, and how
        to read its answer into a verdict.
    """


@hookspec
def register_policies(register: Callable[[PolicySpec], None]) -> None:
    """Register the safety policies this plugin offers.

    Called once at startup. A policy named here is enabled in registry.toml under
    ``[policies.NAME]``; its ``check_request`` is then asked about every request.

    :param register: call it with one :class:`apimodels.policy.PolicySpec` per policy.
    """


@hookspec(firstresult=True)
def input_schema(model: ModelConfig) -> dict[str, Any] | None:
    """The JSON Schema of a model's task input (the ``input`` of ``POST /v1/tasks``).

    Called once per model at startup; every task's input is validated against it before
    anything is held or sent. Models of the built-in modalities without a schema take the
    fields of their unified request (chat takes ``messages``, images take ``prompt``...).

    :param model: the catalog entry.
    :return: a JSON Schema (draft 2020-12) as a dict, or None.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def build_job_request(
    model: ModelConfig,
    input: dict[str, Any],
    upstream: Upstream,
    webhook_url: str | None,
    wait_seconds: int | None,
) -> httpx.Request | None:
    """Start a long-running upstream job for a task. No I/O here.

    Implement it for models the upstream runs as jobs; for the others the core runs a task
    as the model's ordinary call, in the background.

    :param model: the catalog entry.
    :param input: the task's validated input.
    :param upstream: the provider's base URL, key and settings.
    :param webhook_url: where the upstream should send job events (the gateway's
        ``/webhooks/{provider}``), or None: the core then polls.
    :param wait_seconds: ask the upstream to hold the answer up to this long for short jobs
        (Replicate's ``Prefer: wait``), or None.
    :return: the ``httpx.Request`` that creates the job; its answer goes to ``parse_job``.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def build_job_poll(model: ModelConfig, job_id: str, upstream: Upstream) -> httpx.Request | None:
    """The request that reads a job's current state; its answer goes to ``parse_job``.

    :param model: the catalog entry.
    :param job_id: the upstream's id of the job (``Job.id``).
    :param upstream: the provider's base URL, key and settings.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def build_job_cancel(model: ModelConfig, job_id: str, upstream: Upstream) -> httpx.Request | None:
    """The request that cancels a job upstream (a canceled or timed-out task).

    :param model: the catalog entry.
    :param job_id: the upstream's id of the job.
    :param upstream: the provider's base URL, key and settings.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def parse_job(model: ModelConfig, data: dict[str, Any], upstream: Upstream) -> Job | None:
    """Normalize an upstream job, as answered to a create or a poll or sent by a webhook.

    :param model: the catalog entry.
    :param data: the upstream's JSON description of the job.
    :param upstream: the provider's base URL, key and settings (to build the requests that
        download output files, with whatever authorization they need).
    :return: a :class:`apimodels.Job`. Map the upstream's states onto queued,
        running, succeeded, failed and canceled; report failures in words fit for the API
        consumer (never a key or an internal host).

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def verify_webhook(
    headers: Mapping[str, str], body: bytes, upstream: Upstream
) -> dict[str, Any] | None:
    """Check the signature of a webhook the upstream sent to ``/webhooks/{provider}``.

    :param headers: the request's headers (lower-case names).
    :param body: the raw body, exactly as received.
    :param upstream: the provider's settings and ``webhook_secret``.
    :return: the job's JSON (then given to ``parse_job``). Raise
        :class:`apimodels.errors.PermissionDenied` for a bad signature or a stale timestamp:
        the core answers 400 and changes nothing.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def list_voices(upstream: Upstream) -> list[Voice] | None:
    """The voices a provider's speech models take.

    Called once per provider at startup, never per request: answer from the plugin's own
    list and its settings (``upstream.settings``), without I/O. The core serves the union
    of every provider's voices at ``GET /v1/audio/voices`` and refuses a speech request
    whose ``voice`` is none of its provider's (by id or name, case-insensitive) with a 400,
    before anything is held or sent. A provider that lists none leaves voices to its
    upstream.

    :param upstream: the provider's base URL, key and settings.
    :return: a list of :class:`apimodels.Voice`, or None when the provider has no voices.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def parse_audio_stream(
    model: ModelConfig, request: UnifiedRequest, response: httpx.Response
) -> AudioStream | None:
    """Read the head of a successful (2xx) streamed speech response, before its body.

    Speech audio is relayed to the client as the upstream sends it; this hook says what
    the client is told (``content_type``), what goes out before the first upstream byte
    (``prefix``, e.g. a WAV header around raw PCM) and the usage to bill (None: the
    request's estimate). The core's fallback passes the upstream's content type through.

    :param model: the catalog entry.
    :param request: the unified speech request it answers.
    :param response: the upstream response; headers only, the body is not read yet.
    :return: an :class:`apimodels.AudioStream`.

    Stops at the first non-None result.
    """
