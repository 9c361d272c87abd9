"""The policy chain: every enabled policy judges a request before anything is held or sent.

Built once at startup from registry.toml's ``[policies]`` and the installed plugins: for each
enabled policy, its ``check_request`` implementations (only its own plugin's), its validated
settings and the provider it calls, if any. Local verdicts come first; a policy that needs
an upstream call returns a :class:`PolicyCheck`, and those run concurrently only when no
local policy denied. Any deny wins: it is audited, counts toward automatic suspension, and
answers 403 ``content_policy_violation``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy
import sqlite_utils
from pydantic import BaseModel

from ..catalog import Catalog, ModelConfig, PolicyConfig
from ..errors import APIError, ConfigError, PayloadTooLarge, PermissionDenied, ServiceUnavailable
from ..providers.types import Verdict
from ..providers.upstream import send
from ..store.accounts import KeyStore
from . import audit
from .spec import CATEGORIES, UPSTREAM_REFUSAL, PolicyCheck, PolicySpec
from .suspension import suspend_if_over
from .texts import user_texts

if TYPE_CHECKING:
    from ..providers.runtime import Gateway, Provider, Route
    from ..schemas import UnifiedRequest

log = logging.getLogger("apimodels")


@dataclass(frozen=True, slots=True)
class EnabledPolicy:
    """One policy at runtime: its hook functions (with the arguments each asks for)."""

    name: str
    functions: tuple[tuple[Callable[..., Any], tuple[str, ...]], ...]
    settings: BaseModel | None
    provider: Provider | None
    config: PolicyConfig


class _CheckFailed(Exception):
    """A policy could not reach a verdict (its plugin raised, its upstream failed)."""


class Policy:
    """The enabled policies, the audit trail and automatic suspension."""

    def __init__(
        self,
        policies: list[EnabledPolicy],
        catalog: Catalog,
        db: sqlite_utils.Database,
        keys: KeyStore | None = None,
    ) -> None:
        self.policies = policies
        self.safety = catalog.safety
        self.db = db
        self.keys = keys

    async def judge(
        self,
        account_id: str,
        key_id: str | None,
        model: ModelConfig,
        texts: list[str],
        *,
        request: Any = None,
        request_id: str | None = None,
    ) -> None:
        """Ask every enabled policy about ``texts`` (see ``user_texts``); return if all
        allow, else raise: 403 ``content_policy_violation`` on a deny (audited; a deny wins
        over everything), 503 ``policy_unavailable`` when a policy set to fail closed could
        not decide."""
        if sum(map(len, texts)) > self.safety.max_judged_chars:
            raise PayloadTooLarge(
                f"This request has more text than this server checks "
                f"({self.safety.max_judged_chars} characters); send less."
            )
        args: dict[str, Any] = {
            "model": model,
            "request": request,
            "account_id": account_id,
            "texts": texts,
        }
        undecided = False  # a policy that fails closed could not decide
        checks: list[tuple[EnabledPolicy, PolicyCheck]] = []
        for policy in self.policies:
            args["settings"] = policy.settings
            args["upstream"] = policy.provider.upstream if policy.provider else None
            for function, argnames in policy.functions:
                try:
                    result = function(*[args[name] for name in argnames])
                except Exception as exc:
                    undecided |= self._failed(policy, exc)
                    continue
                if isinstance(result, PolicyCheck):
                    checks.append((policy, result))
                else:
                    undecided |= self._apply(
                        policy, result, account_id, key_id, model, texts, request_id
                    )
        if checks and not undecided:  # no upstream call when the answer is already 503
            verdicts = await asyncio.gather(*(self._remote(p, c) for p, c in checks))
            for (policy, _), verdict in zip(checks, verdicts, strict=True):
                if isinstance(verdict, Exception):
                    undecided |= self._failed(policy, verdict)
                else:
                    undecided |= self._apply(
                        policy, verdict, account_id, key_id, model, texts, request_id
                    )
        if undecided:
            raise ServiceUnavailable(
                "The content policy check could not be completed; try again later.",
                code="policy_unavailable",
            )

    def _apply(
        self,
        policy: EnabledPolicy,
        verdict: Verdict | None,
        account_id: str,
        key_id: str | None,
        model: ModelConfig,
        texts: list[str],
        request_id: str | None,
    ) -> bool:
        """Raise on a deny (after auditing it); True if the verdict is unusable and the
        policy fails closed."""
        if verdict is None or verdict.action != "deny":
            return False
        if verdict.category not in CATEGORIES:
            return self._failed(policy, ValueError(f"unknown category {verdict.category!r}"))
        self.refuse(
            audit.Violation(
                account_id,
                key_id,
                model.id,
                model.modality.value,
                verdict.category,
                policy.name,
                "policy",
                verdict.reason,
                texts,
                verdict.evidence,
                request_id,
            )
        )
        raise PermissionDenied(
            f"This request was refused by the content policy ({verdict.category}): "
            f"{verdict.reason}",
            code="content_policy_violation",
            param=verdict.category,
        )

    async def _remote(
        self, policy: EnabledPolicy, check: PolicyCheck
    ) -> Verdict | Exception | None:
        """The verdict of an upstream check, or the exception that prevented one."""
        provider = policy.provider
        try:
            if provider is None or provider.client is None or provider.unavailable:
                raise _CheckFailed("its provider is not available")
            response = await asyncio.wait_for(
                send(provider.client, check.request, provider=provider.name, max_retries=0),
                policy.config.timeout,
            )
            if response.status_code >= 400:
                raise _CheckFailed(f"HTTP {response.status_code}")
            return check.read(response)
        except Exception as exc:  # TimeoutError, UpstreamError, a reader that raised
            return exc

    def _failed(self, policy: EnabledPolicy, exc: Exception) -> bool:
        """Log that a policy could not decide; True if it fails closed (the request is
        then refused with 503), False if it fails open (the request goes on)."""
        mode = policy.config.fail
        # Our own message, else the class only: a message could carry request content or
        # upstream details.
        why = str(exc) if isinstance(exc, _CheckFailed) else type(exc).__name__
        log.warning("policy %s could not decide (%s); failing %s", policy.name, why, mode)
        return mode == "closed"

    def refuse(self, violation: audit.Violation) -> None:
        """Audit a refused request and suspend its account if it is over the limit.

        Never raises: the refusal itself must reach the client (a 403, not a 500) even
        when the database cannot take the record; that failure is logged.
        """
        try:
            audit.record(
                self.db,
                violation,
                excerpt_chars=self.safety.excerpt_chars,
                store_full_content=self.safety.store_full_content,
            )
            suspend_if_over(self.db, self.keys, violation.account_id, self.safety)
        except Exception as exc:
            log.error("recording a policy violation failed: %s", type(exc).__name__)

    def record_refusal(
        self,
        account_id: str,
        key_id: str | None,
        model: ModelConfig,
        texts: list[str],
        *,
        plugin: str,
        reason: str,
        request_id: str | None = None,
    ) -> None:
        """Audit an upstream's own safety refusal (it costs the caller nothing, and counts
        toward suspension). Provider code that learns of a refusal outside the request
        (a failed task, a Replicate NSFW error) calls this."""
        self.refuse(
            audit.Violation(
                account_id,
                key_id,
                model.id,
                model.modality.value,
                UPSTREAM_REFUSAL,
                plugin,
                "upstream",
                reason,
                texts,
                request_id=request_id,
            )
        )

    def upstream_refused(
        self,
        exc: BaseException,
        account_id: str,
        key_id: str | None,
        model: ModelConfig,
        texts: Callable[[], list[str]],
        request_id: str | None = None,
    ) -> None:
        """Record ``exc`` if it is an upstream's content-policy refusal; else do nothing."""
        if isinstance(exc, APIError) and exc.code == "content_policy_violation":
            self.record_refusal(
                account_id,
                key_id,
                model,
                texts(),
                plugin=model.provider,
                reason=exc.message,
                request_id=request_id,
            )


def registered_policies(pm: pluggy.PluginManager) -> dict[str, tuple[PolicySpec, object]]:
    """Every policy the installed plugins offer, with the plugin that owns it. A plugin
    that implements ``check_request`` without registering a policy offers one named after
    the plugin, without settings."""
    found: dict[str, tuple[PolicySpec, object]] = {}
    for impl in pm.hook.register_policies.get_hookimpls():
        specs: list[PolicySpec] = []
        impl.function(*[specs.append for _ in impl.argnames])
        for spec in specs:
            if spec.name in found:
                raise ConfigError(
                    f"policy {spec.name!r} is registered by two plugins: "
                    f"{pm.get_name(found[spec.name][1])} and {impl.plugin_name}"
                )
            found[spec.name] = (spec, impl.plugin)
    owners = {id(owner) for _, owner in found.values()}
    for impl in pm.hook.check_request.get_hookimpls():
        if id(impl.plugin) not in owners:
            found.setdefault(impl.plugin_name, (PolicySpec(impl.plugin_name), impl.plugin))
    return found


def build_policy(
    catalog: Catalog,
    pm: pluggy.PluginManager,
    providers: dict[str, Provider],
    db: sqlite_utils.Database,
    keys: KeyStore | None = None,
    notices: list[str] | None = None,
) -> Policy:
    """Resolve ``[policies]`` against the installed plugins; ConfigError if they don't fit."""
    registered = registered_policies(pm)
    impls = pm.hook.check_request.get_hookimpls()
    enabled: list[EnabledPolicy] = []
    for name, config in catalog.policies.items():
        if not config.enabled:
            continue
        if name not in registered:
            raise ConfigError(
                f"policy {name!r} is enabled in registry.toml but no installed plugin offers "
                f"it (installed: {', '.join(sorted(registered)) or 'none'})"
            )
        spec, owner = registered[name]
        settings = None
        if spec.settings is not None:
            try:
                settings = spec.settings.model_validate(config.settings)
            except Exception as exc:  # pydantic's or the rule file's message names the fault
                raise ConfigError(f"registry.toml: policies.{name}.settings: {exc}") from None
        elif config.settings:
            raise ConfigError(f"registry.toml: policies.{name} takes no settings")
        provider = None
        if spec.provider is not None:
            provider = providers.get(spec.provider)
            if provider is None:
                raise ConfigError(
                    f"policy {name!r} calls provider {spec.provider!r}, which is not enabled"
                )
        functions = tuple(
            (impl.function, tuple(impl.argnames)) for impl in impls if impl.plugin is owner
        )
        enabled.append(EnabledPolicy(name, functions, settings, provider, config))
    if notices is not None:
        notices.extend(
            f"policy {name} is installed but not enabled in registry.toml"
            for name in sorted(set(registered) - set(catalog.policies))
        )
    return Policy(enabled, catalog, db, keys)


async def check_policy(
    gateway: Gateway,
    route: Route,
    request: UnifiedRequest,
    account_id: str,
    key_id: str | None = None,
    request_id: str | None = None,
) -> None:
    """Ask every enabled policy; any deny wins (403 content_policy_violation, audited)."""
    if gateway.policy is not None and gateway.policy.policies:
        await gateway.policy.judge(
            account_id,
            key_id,
            route.model,
            user_texts(request),
            request=request,
            request_id=request_id,
        )
