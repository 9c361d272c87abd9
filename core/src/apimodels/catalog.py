"""The catalog: registry.toml, validated with pydantic at startup.

A bad file stops startup with the file, the entry and the reason (``ConfigError``). Prices
are decimal strings (floats are refused: 0.1 is not a price), and a model without a complete
price for its modality is an error, never a free model.
"""

from __future__ import annotations

import tomllib
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .console.config import ConsoleConfig
from .errors import ConfigError
from .schemas import Modality
from .topups.config import TopupsConfig


def _decimal_string(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if not isinstance(value, str):
        raise ValueError(f'write prices as decimal strings, e.g. "0.15" (got {value!r})')
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"not a decimal number: {value!r}") from None
    if not price.is_finite() or price < 0:
        raise ValueError(f"a price must be a finite number >= 0 (got {value!r})")
    return price


Price = Annotated[Decimal, BeforeValidator(_decimal_string)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pricing(_Strict):
    """Unit prices in USD. ``per_image`` is one price or a table keyed by variant
    (for OpenAI images ``"QUALITY/SIZE"``, e.g. ``"hd/1024x1024"``). ``markup`` is a fraction
    added on top of the upstream price (``"0.05"`` = 5 %)."""

    input_per_1m: Price | None = None
    cached_input_per_1m: Price | None = None
    output_per_1m: Price | None = None
    per_image: Price | dict[str, Price] | None = None
    per_1k_chars: Price | None = None
    per_second: Price | None = None  # of audio in (transcription) or of video out
    per_minute: Price | None = None
    per_output: Price | None = None  # per file a task produces (a video, a song)
    per_run_second: Price | None = None  # per second of upstream hardware time
    audio_input_per_1m: Price | None = None  # audio read as tokens (input_per_1m: its text)
    cache_write_per_1m: Price | None = None  # input written to a prompt cache (5-minute)
    audio_output_per_1m: Price | None = None  # speech written as tokens (input_per_1m: its text)
    markup: Price = Decimal(0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly unit prices (decimal strings), as shown in /v1/models."""
        out: dict[str, Any] = {}
        for name, value in self:
            if value is None or (name == "markup" and not value):
                continue
            out[name] = (
                {k: str(v) for k, v in value.items()} if isinstance(value, dict) else str(value)
            )
        return out


#: Which price fields make a price complete, per modality (any one of each group).
REQUIRED_PRICES: dict[Modality, list[tuple[str, ...]]] = {
    Modality.chat: [("input_per_1m",), ("output_per_1m",)],
    Modality.embedding: [("input_per_1m",)],
    Modality.image: [("per_image", "per_run_second")],
    Modality.speech: [("per_1k_chars", "per_run_second", "audio_output_per_1m")],
    Modality.transcription: [("per_minute", "per_second", "per_run_second", "audio_input_per_1m")],
    Modality.video: [("per_second", "per_output", "per_run_second")],
}


class UpstreamKey(_Strict):
    """One more upstream key of a provider (``[[providers.NAME.keys]]``): the environment
    variable that holds it, and its share of the calls."""

    env: str
    weight: Annotated[int, Field(ge=1, le=1000)] = 1


class ProviderConfig(_Strict):
    """``[providers.NAME]``: how the gateway reaches one upstream."""

    package: str = Field(description="the distribution that provides the plugin, for pip/uv")
    enabled: bool = True
    #: The registered provider this one is an instance of, when a plugin serves several
    #: named providers (``kind = "openai-compatible"``, each with its own ``base_url``,
    #: key and models); default: the table's own name.
    kind: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    #: Sent with every request to this upstream (an organization or project header).
    headers: dict[str, str] = Field(default_factory=dict)
    #: More keys (accounts) to spread calls over by weight, besides the provider's own
    #: variable (``api_key_env``, weight 1, used when set). A key the upstream refuses (429,
    #: or 401/403 of the key) rests ``key_cooldown_seconds`` (or its Retry-After).
    keys: list[UpstreamKey] = Field(default_factory=list)
    key_cooldown_seconds: Annotated[float, Field(ge=0, le=86400)] = 60.0
    timeout: Annotated[float, Field(gt=0)] = 120.0
    connect_timeout: Annotated[float, Field(gt=0)] = 5.0
    max_retries: Annotated[int, Field(ge=0, le=10)] = 2
    max_connections: Annotated[int, Field(ge=1)] = 256
    #: The most the gateway reads of one upstream answer (held in memory), or of one line
    #: of a stream: past it the call fails (502 upstream_response_too_large) and is free.
    max_response_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024 * 1024
    webhook_secret_env: str | None = None  # overrides the plugin's default variable name
    settings: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(_Strict):
    """``[models."PROVIDER/NAME"]``: one public model. ``id`` is filled from the table key."""

    id: str = ""
    provider: str
    upstream: str = Field(description="the model id the upstream knows")
    modality: Modality
    pricing: Pricing
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    #: The model's context window: the most input tokens an upstream may report for one
    #: call (without it, no more than the request's own estimate; ``pricing.usage_ceiling``).
    context_tokens: Annotated[int, Field(ge=1)] | None = None
    # The most one task can produce, for its hold (estimate from the maximum, not the
    # typical case): files, seconds of video or audio, seconds of upstream run time.
    max_outputs: Annotated[int, Field(ge=1, le=100)] = 1
    max_output_seconds: Annotated[Decimal, Field(ge=0)] | None = None
    max_run_seconds: Annotated[Decimal, Field(ge=0)] | None = None
    task_timeout_seconds: Annotated[float, Field(gt=0)] | None = None
    #: Its life upstream: from ``deprecated_at`` (or as soon as ``retires_at`` is known) its
    #: calls carry Deprecation and Sunset headers; from ``retires_at`` they answer 410
    #: model_retired without calling upstream. ``replacement``: the model to move to.
    deprecated_at: date | None = None
    retires_at: date | None = None
    #: Other models (ids of this catalog, of the same modality: another provider, or another
    #: upstream id) tried in order when this one's upstream fails in a way another may not
    #: (``gateway.max_attempts``). The call is billed once, at the serving model's price.
    fallbacks: list[str] = Field(default_factory=list)
    replacement: str | None = None
    description: str = ""
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete_price(self) -> ModelConfig:
        for group in REQUIRED_PRICES[self.modality]:
            if all(getattr(self.pricing, name) is None for name in group):
                wanted = " or ".join(f"pricing.{n}" for n in group)
                raise ValueError(f"a {self.modality.value} model needs {wanted}")
        # A hold is sized from the model's maxima: a per-second price needs its bound.
        if self.pricing.per_run_second is not None and self.max_run_seconds is None:
            raise ValueError("a model priced per_run_second needs max_run_seconds (for its hold)")
        if (
            self.modality is Modality.video
            and self.pricing.per_second is not None
            and self.max_output_seconds is None
        ):
            raise ValueError("a video model priced per_second needs max_output_seconds")
        if self.pricing.audio_input_per_1m is not None and self.context_tokens is None:
            raise ValueError("a model priced per audio token needs context_tokens (its bound)")
        if self.deprecated_at and self.retires_at and self.deprecated_at > self.retires_at:
            raise ValueError("deprecated_at comes after retires_at")
        return self


#: An http(s) origin, optionally with a path: no query, no fragment.
BaseURL = Annotated[str, Field(pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$")]


class GatewayConfig(_Strict):
    """``[gateway]``: the gateway's own settings."""

    max_body_bytes: Annotated[int, Field(ge=1024)] = 25 * 1024 * 1024
    key_cache_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0
    key_rotation_grace_hours: Annotated[float, Field(ge=0)] = 24.0
    billing: bool = True  # false: every call is free and unrecorded (internal deployments)
    hold_ttl_seconds: Annotated[float, Field(ge=1)] = 900.0
    # Credits a process set aside for an account's requests go back this long after its
    # last one ended (0: with each answer, at the price of a write before every request).
    reserve_idle_seconds: Annotated[float, Field(ge=0, le=60)] = 1.0
    # An answered call's charge is committed within this time, with those of the calls
    # answered meanwhile (0: at the end of the event-loop iteration that answered it).
    commit_delay_ms: Annotated[float, Field(ge=0, le=1000)] = 25.0
    expiry_sweep_seconds: Annotated[float, Field(gt=0)] = 60.0
    # Where clients and upstreams reach this gateway (https://api.example.com): upstream job
    # webhooks go to {public_url}/webhooks/..., and output URLs in client webhooks start with
    # it. Without it jobs are only polled, and the API makes URLs from each request's host.
    public_url: BaseURL | None = None
    # Fallbacks: the most routes one call tries (its model, then the fallbacks it or its
    # catalog entry names), and no new attempt once this much time has passed.
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    fallback_seconds: Annotated[float, Field(gt=0)] = 60.0
    # GET /metrics answers only a bearer of the token in this variable (unset: anyone).
    metrics_token_env: str | None = None
    # OpenTelemetry spans of each call, gateway and upstream (apimodels.ops.tracing).
    tracing: bool = False


class TasksConfig(_Strict):
    """``[tasks]``: long-running tasks, their worker and the clients' webhooks."""

    poll_interval_seconds: Annotated[float, Field(gt=0)] = 1.0  # first poll of a job
    max_poll_interval_seconds: Annotated[float, Field(gt=0)] = 15.0  # backoff cap
    timeout_seconds: Annotated[float, Field(gt=0)] = 3600.0  # then canceled, cost 0
    lease_seconds: Annotated[float, Field(gt=0)] = 60.0  # a crashed worker's tasks wait this
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 32  # tasks advanced at once
    sync_wait_seconds: Annotated[float, Field(ge=0, le=600)] = 60.0  # sync images via jobs
    allow_private_webhooks: bool = False  # client webhooks to http/private hosts (tests)
    webhook_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    webhook_first_retry_seconds: Annotated[float, Field(gt=0)] = 5.0  # then doubling
    webhook_retry_hours: Annotated[float, Field(gt=0)] = 72.0  # give up after this


class StorageConfig(_Strict):
    """``[storage]``: where task outputs are kept, and for how long their URLs work.

    ``local`` (the default) keeps files under ``path`` (relative to the database's folder) and
    the gateway serves them at ``/v1/files/...`` with signed, expiring URLs. ``s3`` keeps them
    in an S3-compatible bucket (Cloudflare R2, ...) and hands out presigned GET URLs. Secrets
    never live in this file: the ``*_env`` settings name environment variables.
    """

    backend: Literal["local", "s3"] = "local"
    url_ttl_seconds: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] = 3600
    max_object_bytes: Annotated[int, Field(ge=1)] = 5 * 1024**3
    secret_env: str | None = None  # signs local URLs and names keys; default: kept in the database
    # local
    path: str = "outputs"
    # One folder mounted on every host (NFS...): several hosts on PostgreSQL may share it.
    shared_folder: bool = False
    # s3
    endpoint_url: BaseURL | None = None
    bucket: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")] | None = None
    region: str = "auto"
    addressing_style: Literal["path", "virtual"] = "path"
    access_key_id_env: str = "APIMODELS_STORAGE_ACCESS_KEY_ID"
    secret_access_key_env: str = "APIMODELS_STORAGE_SECRET_ACCESS_KEY"
    # Outputs are deleted this many days after their task ended (0: kept until deleted);
    # `apimodels accounts retention` sets an account's own. See docs/privacy.md.
    retention_days: Annotated[int, Field(ge=0)] = 30
    sweep_interval_minutes: Annotated[float, Field(gt=0)] = 60.0  # how often each server sweeps

    @model_validator(mode="after")
    def _s3_complete(self) -> StorageConfig:
        if self.backend == "s3":
            for name in ("endpoint_url", "bucket"):
                if getattr(self, name) is None:
                    raise ValueError(f'backend "s3" needs storage.{name}')
        return self


class PolicyConfig(_Strict):
    """``[policies.NAME]``: one safety policy (see docs/self-hosting.md, "Safety policy")."""

    enabled: bool = True
    fail: Literal["closed", "open"] = "closed"  # when its check cannot be completed
    timeout: Annotated[float, Field(gt=0, le=120)] = 10.0  # seconds, for upstream checks
    settings: dict[str, Any] = Field(default_factory=dict)


class SafetyConfig(_Strict):
    """``[safety]``: the audit trail and automatic suspension."""

    suspend_after: Annotated[int, Field(ge=0)] = 5  # denies in the window; 0: never suspend
    window_minutes: Annotated[float, Field(gt=0)] = 60.0
    excerpt_chars: Annotated[int, Field(ge=0, le=1000)] = 120
    store_full_content: bool = False  # keep the whole content of each deny in the audit
    # Judging text costs the event loop about 0.2 ms per 1,000 characters, before any hold:
    # a request with more user text than this is refused (413) rather than judged.
    max_judged_chars: Annotated[int, Field(ge=1000)] = 2_000_000


class PrivacyConfig(_Strict):
    """``[privacy]``: how long the rest is kept (see docs/privacy.md)."""

    audit_excerpt_days: Annotated[int, Field(ge=1)] = 90  # then excerpts of refusals go
    close_grace_days: Annotated[int, Field(ge=0)] = 30  # a closed account's outputs, then go
    billing_retention_days: Annotated[int, Field(ge=1)] = 3653  # then email and key names go
    stored_response_days: Annotated[int, Field(ge=1)] = 30  # Responses API answers (store)


class Catalog(_Strict):
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    #: Other names clients may send for a model (``"gpt-4o-mini" = "openai/gpt-4o-mini"``):
    #: the same route, the same price.
    aliases: dict[str, str] = Field(default_factory=dict)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    topups: TopupsConfig = Field(default_factory=TopupsConfig)
    policies: dict[str, PolicyConfig] = Field(default_factory=dict)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)

    @model_validator(mode="before")
    @classmethod
    def _ids_from_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            data = dict(data)
            data["models"] = {
                key: ({**value, "id": key} if isinstance(value, dict) else value)
                for key, value in data["models"].items()
            }
        return data

    @model_validator(mode="after")
    def _models_name_known_providers(self) -> Catalog:
        for model_id, model in self.models.items():
            if model.provider not in self.providers:
                raise ValueError(
                    f"model {model_id!r} names provider {model.provider!r}, "
                    "which has no [providers] entry"
                )
            for other in model.fallbacks:
                target = self.models.get(other)
                if target is None or target.modality is not model.modality or other == model_id:
                    raise ValueError(
                        f"model {model_id!r} falls back to {other!r}, which is not another"
                        f" {model.modality.value} model of the catalog"
                    )
            if model.replacement is not None and model.replacement not in self.models:
                raise ValueError(
                    f"model {model_id!r} names replacement {model.replacement!r},"
                    " which the catalog does not list"
                )
        for alias, target in self.aliases.items():
            if alias in self.models:
                raise ValueError(f"alias {alias!r} is already a model's id")
            if target not in self.models:
                raise ValueError(
                    f"alias {alias!r} names {target!r}, which the catalog does not list"
                )
        return self

    def served_models(self) -> dict[str, ModelConfig]:
        """Models whose provider is enabled: the ones the gateway serves."""
        return {i: m for i, m in self.models.items() if self.providers[m.provider].enabled}


def _location(loc: tuple[int | str, ...]) -> str:
    parts = []
    for p in loc:
        text = str(p)
        parts.append(f'"{text}"' if "/" in text or "." in text else text)
    return ".".join(parts) or "(top level)"


def parse_catalog(data: dict[str, Any], source: str = "registry.toml") -> Catalog:
    """Validate catalog data; raise ``ConfigError`` naming the file, the entry and the reason."""
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: invalid catalog"]
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {_location(err['loc'])}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate registry.toml."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: catalog file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_catalog(data, str(path))
