"""Assembling the gateway at startup: catalog + installed plugins -> providers and routes.

Everything a request needs is resolved here once: the route of each public model id, its
provider's connection pool and upstream settings, and the provider's own hook callers (pluggy
subset callers holding only that provider's plugin and the core fallbacks). A request then
costs one dict lookup to dispatch, however many plugins are installed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import operator
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pluggy

from .. import hookspecs
from ..billing.pricing import priced_quantities
from ..catalog import Catalog, ModelConfig, ProviderConfig
from ..errors import ConfigError, ModelRetired, ServiceUnavailable
from . import default_hooks
from .keys import KeyPool, PooledKey
from .types import ProviderSpec, Upstream
from .upstream import UpstreamClient

if TYPE_CHECKING:
    from ..policy import Policy

log = logging.getLogger("apimodels")

#: Hooks each provider answers for its own models.
PROVIDER_HOOKS = (
    "estimate_usage",
    "build_request",
    "parse_response",
    "parse_stream_event",
    "parse_error",
    "price_usage",
    "input_schema",
    "build_job_request",
    "build_job_poll",
    "build_job_cancel",
    "parse_job",
    "verify_webhook",
    "list_voices",
    "parse_audio_stream",
)


def trace_hook_calls(manager: pluggy.PluginManager) -> None:
    """Print every hook call of ``manager`` and its result to stderr."""

    def before(hook_name: str, hook_impls: Any, kwargs: dict[str, Any]) -> None:
        print(f"[apimodels] {hook_name}({', '.join(kwargs)})", file=sys.stderr)

    def after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: dict[str, Any]) -> None:
        print(f"[apimodels] {hook_name} -> {outcome.get_result()!r}", file=sys.stderr)

    manager.add_hookcall_monitoring(before, after)


def first_result(caller: pluggy.HookCaller) -> Any:
    """A ``firstresult`` hook as a plain function over its implementations, called in
    pluggy's order with the same answer, without pluggy's per-call bookkeeping: about 3 us
    a call, and every request makes five. A hook with a wrapper keeps its pluggy caller."""
    impls = caller.get_hookimpls()
    spec = caller.spec
    if (
        spec is None
        or not spec.opts.get("firstresult")
        or spec.kwargdefaults  # pluggy fills these in
        or any(impl.hookwrapper or impl.wrapper or impl.kwargnames for impl in impls)
    ):
        return caller
    order = [(impl.function, _arguments(impl.argnames)) for impl in reversed(impls)]

    def call(**kwargs: Any) -> Any:
        for function, arguments in order:
            try:
                args = arguments(kwargs)
            except KeyError as exc:
                raise pluggy.HookCallError(f"hook call must provide argument {exc}") from exc
            result = function(*args)
            if result is not None:
                return result
        return None

    call.__name__ = caller.name
    return call


def _arguments(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """The values of ``names`` in a call's keyword arguments, in order (in C, for two or
    more: a list comprehension cost as much as the rest of the call)."""
    if len(names) >= 2:
        return operator.itemgetter(*names)
    return lambda kwargs: tuple(kwargs[name] for name in names)


class ProviderHooks:
    """The hook callers of one provider, resolved once (attribute per hook).

    A private plugin manager holding only the provider's own plugin and the core fallbacks:
    calls never filter through other plugins, and a plugin registered later cannot answer
    for this provider's models. Its set of implementations is fixed, so each ``firstresult``
    hook becomes a plain function (:func:`first_result`), unless calls are being traced:
    add or remove a plugin with :meth:`register` and :meth:`unregister`, which resolve them
    again (registering on ``plugin_manager`` directly would not be seen).
    """

    def __init__(self, pm: pluggy.PluginManager, owner: object) -> None:
        own = pluggy.PluginManager(pm.project_name)
        own.add_hookspecs(hookspecs)
        own.register(owner, name=pm.get_name(owner))
        own.register(default_hooks, name="apimodels.providers.default_hooks")
        self.traced = bool(os.environ.get("APIMODELS_TRACE_PLUGINS"))
        if self.traced:
            trace_hook_calls(own)
        self.plugin_manager = own
        self._resolve()

    def _resolve(self) -> None:
        for name in PROVIDER_HOOKS:
            caller = getattr(self.plugin_manager.hook, name)
            setattr(self, name, caller if self.traced else first_result(caller))

    def register(self, plugin: object, name: str) -> None:
        """Add a plugin to this provider's hooks at runtime (tests and tools do)."""
        self.plugin_manager.register(plugin, name=name)
        self._resolve()

    def unregister(self, plugin: object) -> None:
        self.plugin_manager.unregister(plugin)
        self._resolve()

    estimate_usage: Any
    build_request: Any
    parse_response: Any
    parse_stream_event: Any
    parse_error: Any
    price_usage: Any
    input_schema: Any
    build_job_request: Any
    build_job_poll: Any
    build_job_cancel: Any
    parse_job: Any
    verify_webhook: Any

    @property
    def runs_jobs(self) -> bool:
        """Whether the provider's upstream runs long jobs (it implements the job hooks)."""
        return bool(self.plugin_manager.hook.build_job_request.get_hookimpls())

    list_voices: Any
    parse_audio_stream: Any


@dataclass
class Provider:
    """A provider at runtime."""

    name: str
    spec: ProviderSpec
    config: ProviderConfig
    hooks: ProviderHooks
    upstream: Upstream
    client: UpstreamClient | None = None
    unavailable: str | None = None  # why its models answer 503, if they do
    keys: KeyPool | None = None  # several upstream keys (None: just ``upstream``'s)

    def ensure_available(self) -> None:
        if self.unavailable:
            raise ServiceUnavailable(self.unavailable)

    def secrets(self) -> list[str]:
        """Every upstream key of the provider (never to be shown to anyone)."""
        if self.keys is not None:
            return self.keys.secrets()
        return [self.upstream.api_key] if self.upstream.api_key else []


class Lifecycle:
    """A deprecated or retiring model's dates, resolved once: the headers its calls carry
    (RFC 9745 ``Deprecation``, RFC 8594 ``Sunset``, a ``Link`` to the replacement) and the
    moment it answers 410 instead."""

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        deprecated, retires = model.deprecated_at, model.retires_at
        self.deprecated_from = _epoch(deprecated) if deprecated else float("-inf")
        self.retired_from = _epoch(retires) if retires else float("inf")
        headers = []
        if deprecated:
            headers.append((b"deprecation", f"@{int(self.deprecated_from)}".encode()))
        if retires:  # an HTTP-date, whatever the process's locale
            sunset = datetime.fromtimestamp(self.retired_from, UTC)
            headers.append((b"sunset", format_datetime(sunset, usegmt=True).encode()))
        if model.replacement:
            link = f'</v1/models/{model.replacement}>; rel="successor-version"'
            headers.append((b"link", link.encode()))
        self.headers = headers

    def at(self, now: float) -> list[tuple[bytes, bytes]]:
        """The headers of a call made at ``now``; 410 once the model is retired."""
        if now >= self.retired_from:
            model = self.model
            instead = f"; use '{model.replacement}' instead" if model.replacement else ""
            raise ModelRetired(
                f"The model '{model.id}' was retired on {model.retires_at}{instead}.",
                param="model",
            )
        return self.headers if now >= self.deprecated_from else []

    def notice(self, today: date) -> str | None:
        """A startup warning when the model retires within 14 days, or has retired."""
        model, retires = self.model, self.model.retires_at
        if retires is None or (retires - today).days > 14:
            return None
        instead = f" (replacement: {model.replacement})" if model.replacement else ""
        if retires <= today:
            return f"model {model.id} retired on {retires}: it answers 410{instead}"
        return f"model {model.id} retires on {retires}, in {(retires - today).days} days{instead}"


def _epoch(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


@dataclass(frozen=True, slots=True)
class Route:
    model: ModelConfig
    provider: Provider
    prices_json: str  # the unit prices in force, as stored on each usage row
    jobs: bool = False  # the upstream runs this model as long jobs (tasks, polled)
    input_schema: dict[str, Any] | None = None  # of task inputs, from the plugin
    #: What each usage row of the route records of it: model, provider, modality, prices.
    billed_as: tuple[str, str, str, str] = field(init=False)
    #: Its dates when deprecated or retiring (None: nothing to check per request).
    lifecycle: Lifecycle | None = field(init=False)
    #: The usage quantities its price charges (``pricing.usage_ceiling`` checks those).
    priced: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        model = self.model
        billed_as = (model.id, model.provider, model.modality.value, self.prices_json)
        object.__setattr__(self, "billed_as", billed_as)
        dated = model.deprecated_at or model.retires_at
        object.__setattr__(self, "lifecycle", Lifecycle(model) if dated else None)
        object.__setattr__(self, "priced", priced_quantities(model.pricing))


@dataclass
class Gateway:
    catalog: Catalog
    providers: dict[str, Provider]
    routes: dict[str, Route]
    pm: pluggy.PluginManager
    sandbox: bool = False
    #: The catalog's aliases of served models, each to its model's route.
    aliases: dict[str, Route] = field(default_factory=dict)
    #: Each model's fallback routes, in order (only models that have some).
    fallbacks: dict[str, tuple[Route, ...]] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    policy: Policy | None = None  # the enabled safety policies (set by server.assemble)

    async def open(self) -> None:
        for provider in self.providers.values():
            if provider.client is None:
                provider.client = UpstreamClient(provider.config)

    async def aclose(self) -> None:
        for provider in self.providers.values():
            if provider.client is not None:
                await provider.client.aclose()
                provider.client = None

    def route(self, model: str) -> Route | None:
        """The route of a model id or alias (an id first: the usual case, one lookup)."""
        return self.routes.get(model) or self.aliases.get(model)

    def point_at(self, name: str, base_url: str, api_key: str) -> None:
        """Send a provider's traffic to ``base_url`` with ``api_key`` (sandbox simulators)."""
        p = self.providers[name]
        p.upstream = Upstream(
            name, base_url.rstrip("/"), api_key, p.upstream.settings, p.upstream.webhook_secret
        )
        p.keys = None  # a simulator takes its one key
        p.unavailable = None

    def take_webhook_secret(self, name: str, secret: str) -> None:
        """Check ``name``'s webhooks with ``secret`` (a sandbox simulator's own)."""
        p = self.providers[name]
        p.upstream = dataclasses.replace(p.upstream, webhook_secret=secret)


def registered_providers(pm: pluggy.PluginManager) -> dict[str, tuple[ProviderSpec, object]]:
    """Every provider the installed plugins register, with the plugin that owns it."""
    found: dict[str, tuple[ProviderSpec, object]] = {}
    for impl in pm.hook.register_providers.get_hookimpls():
        specs: list[ProviderSpec] = []
        impl.function(*[specs.append for _ in impl.argnames])
        for spec in specs:
            if spec.name in found:
                raise ConfigError(
                    f"provider {spec.name!r} is registered by two plugins: "
                    f"{pm.get_name(found[spec.name][1])} and {impl.plugin_name}"
                )
            found[spec.name] = (spec, impl.plugin)
    return found


def instance_key_env(name: str) -> str:
    """The key variable of an instance that names none (``[providers.my-groq]`` reads
    ``MY_GROQ_API_KEY``): its own, never its kind's, so two instances of one plugin never
    send one server's key to the other."""
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper() + "_API_KEY"


def key_variables(name: str, config: ProviderConfig, spec: ProviderSpec) -> list[tuple[str, int]]:
    """The variables that may hold a provider's keys, with their weights: its own (used
    when set; an instance's is never its kind's), then those ``keys`` lists."""
    own = _own_key_env(name, config, spec)
    return [(own, 1), *((k.env, k.weight) for k in config.keys)]


def _own_key_env(name: str, config: ProviderConfig, spec: ProviderSpec) -> str:
    if config.api_key_env:
        return config.api_key_env
    return spec.api_key_env if (config.kind or name) == name else instance_key_env(name)


def sandbox_base_url(base_url: str, origin: str) -> str:
    """The simulator's URL for a provider: its real base URL's path on a local origin."""
    return origin.rstrip("/") + urlsplit(base_url).path.rstrip("/")


def build_gateway(
    catalog: Catalog,
    pm: pluggy.PluginManager,
    *,
    sandbox: bool = False,
    environ: dict[str, str] | None = None,
) -> Gateway:
    """Resolve the catalog against the installed plugins; raise ConfigError if they don't fit."""
    env = os.environ if environ is None else environ
    registered = registered_providers(pm)
    providers: dict[str, Provider] = {}
    notices: list[str] = []
    for name, config in catalog.providers.items():
        if not config.enabled:
            continue
        kind = config.kind or name
        if kind not in registered:
            raise ConfigError(
                f"provider {name!r} is enabled in the catalog but no installed plugin provides "
                f"{kind!r}: install it with `pip install {config.package}` (or `uv pip install "
                f"{config.package}`), or set enabled = false"
            )
        spec, owner = registered[kind]
        if not (config.base_url or spec.base_url):
            raise ConfigError(f"registry.toml: providers.{name}: set base_url")
        settings = None
        if spec.settings is not None:
            try:
                settings = spec.settings.model_validate(config.settings)
            except Exception as exc:  # pydantic's message names the field
                raise ConfigError(f"registry.toml: providers.{name}.settings: {exc}") from None
        secret_env = config.webhook_secret_env or spec.webhook_secret_env
        webhook_secret = env.get(secret_env) if secret_env else None
        base_url = (config.base_url or spec.base_url).rstrip("/")
        keys = []
        for i, (key_env, weight) in enumerate(key_variables(name, config, spec)):
            if env.get(key_env):
                upstream = Upstream(name, base_url, env[key_env], settings, webhook_secret)
                keys.append(PooledKey(upstream, key_env, weight))
            elif i > 0:  # a listed key
                notices.append(f"provider {name}: {key_env} is not set; that key is left out")
        unavailable = None
        if not keys:
            key_env = _own_key_env(name, config, spec)
            upstream = Upstream(name, base_url, None, settings, webhook_secret)
            if not sandbox:
                unavailable = (
                    f"provider {name} is not configured on this server "
                    f"(its key {key_env} is not set)"
                )
                notices.append(f"provider {name}: {key_env} is not set; its models will answer 503")
        else:
            upstream = keys[0].upstream
        providers[name] = Provider(
            name,
            spec,
            config,
            ProviderHooks(pm, owner),
            upstream,
            unavailable=unavailable,
            keys=KeyPool(keys, config.key_cooldown_seconds) if len(keys) > 1 else None,
        )
    routes = {}
    for model_id, model in catalog.served_models().items():
        hooks = providers[model.provider].hooks
        routes[model_id] = Route(
            model,
            providers[model.provider],
            json.dumps(model.pricing.as_dict(), separators=(",", ":")),
            jobs=hooks.runs_jobs,
            input_schema=hooks.input_schema(model=model),
        )
    today = datetime.now(UTC).date()
    for route in routes.values():
        if route.lifecycle is not None and (notice := route.lifecycle.notice(today)):
            notices.append(notice)
    aliases = {a: routes[m] for a, m in catalog.aliases.items() if m in routes}
    fallbacks = {}
    for model_id, route in routes.items():
        served = tuple(routes[f] for f in route.model.fallbacks if f in routes)
        if served:
            fallbacks[model_id] = served
    return Gateway(
        catalog,
        providers,
        routes,
        pm,
        sandbox=sandbox,
        notices=notices,
        aliases=aliases,
        fallbacks=fallbacks,
    )
