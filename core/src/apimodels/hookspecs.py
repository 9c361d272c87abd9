"""The hook specifications every apimodels plugin implements a part of.

A provider plugin implements ``register_providers`` plus the per-call hooks for its own
models: ``estimate_usage``, ``build_request``, ``parse_response``, ``parse_stream_event`` and
``parse_error``; ``price_usage`` only when the catalog's unit prices are not enough. A policy
plugin implements ``check_request``. The core resolves model -> provider -> hook callers
once at startup, so a provider's hooks are only ever called for that provider's models.

Implementations may take fewer arguments than a spec names (pluggy passes what they ask for),
so specs can gain arguments without breaking published plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    import httpx

    from .catalog import ModelConfig, Pricing
    from .errors import APIError
    from .provider import (
        AudioStream,
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
    small lets a balance go negative.

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
    :param upstream: the provider's base URL, key and settings.
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

    :param model: the catalog entry.
    :param request: the unified request it answers.
    :param response: the upstream response, body already read.
    :return: an :class:`apimodels.Output`: the unified body and the :class:`Usage` that
        pricing needs. Raise :class:`apimodels.errors.UpstreamError` when the body is not
        what the upstream promises: the call then costs nothing.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def parse_stream_event(
    model: ModelConfig, request: UnifiedRequest, data: str
) -> StreamEvent | None:
    """Normalize one server-sent event of a streaming upstream response.

    :param model: the catalog entry.
    :param request: the unified request it answers.
    :param data: the event's ``data:`` payload (``[DONE]`` is handled by the core).
    :return: a :class:`apimodels.StreamEvent`: the chunk to forward, and the usage when the
        event reports it (the core prices it and adds the cost to that chunk).

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def parse_error(model: ModelConfig, response: httpx.Response) -> APIError | None:
    """Map an upstream error response (status >= 400) to the error the client sees.

    Map honestly: the client's bad input stays a 400, the upstream rejecting the gateway's
    own key is a 502 (not the client's 401), upstream rate limits a 429 with ``Retry-After``,
    upstream 5xx a 502. Never copy an upstream key or internal detail into the message.
    The core ships a generic fallback, so implement this only to read the upstream's own
    error codes.

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
def check_request(model: ModelConfig, request: UnifiedRequest, account_id: str) -> Verdict | None:
    """Judge a request before anything is held or sent upstream.

    Every policy plugin is asked; any deny wins.

    :param model: the catalog entry of the requested model.
    :param request: the validated unified request (all user content is in it).
    :param account_id: the calling account.
    :return: ``Verdict.deny(category, reason)``, ``Verdict("allow")`` or None (no opinion).
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
