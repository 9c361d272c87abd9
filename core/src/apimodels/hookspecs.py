"""The hook specifications every apimodels plugin implements a part of.

A provider plugin implements ``register_providers`` plus the per-call hooks for its own
models: ``estimate_usage``, ``build_request``, ``parse_response``, ``parse_stream_event`` and
``parse_error``; ``price_usage`` only when the catalog's unit prices are not enough. A policy
plugin implements ``register_policies`` and ``check_request``. The core resolves model ->
provider -> hook callers once at startup, so a provider's hooks are only ever called for that
provider's models.

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
    from pydantic import BaseModel

    from .catalog import ModelConfig, Pricing
    from .errors import APIError
    from .policy.spec import PolicyCheck, PolicySpec
    from .provider import Output, ProviderSpec, StreamEvent, Upstream, Usage, Verdict
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
