"""The answers of the public ``/v1`` routes and their query strings, as pydantic models, for
the OpenAPI document (``apimodels.openapi``). The routes build these bodies themselves (on
the request path, without a model's cost); ``tests/test_openapi_fuzz.py`` holds every
answer of a running server to these models, so the two cannot drift apart unnoticed.

Models of upstream-shaped bodies (a chat completion, an embedding list...) name the fields
the gateway itself reads or adds and let the rest through, as the routes do."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

USD = Field(pattern=r"^-?[0-9]+\.[0-9]{6}$", examples=["0.000135"])


class _Open(BaseModel):
    """An object whose other fields (the provider's) pass through."""

    model_config = ConfigDict(extra="allow")


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors -------------------------------------------------------------------------------


class ErrorObject(_Closed):
    message: str
    type: str = Field(examples=["invalid_request_error"])
    code: str | None = Field(examples=["model_not_found"])
    param: str | None


class ErrorBody(_Closed):
    """OpenAI's error shape, answered by every route but the Messages API's."""

    error: ErrorObject


class AnthropicErrorObject(_Closed):
    type: str = Field(examples=["invalid_request_error"])
    message: str


class AnthropicErrorBody(_Closed):
    """Anthropic's error shape, answered by ``/v1/messages`` and its ``count_tokens``."""

    type: Literal["error"]
    error: AnthropicErrorObject
    request_id: str


# --- models, credits, usage ---------------------------------------------------------------


class ModelObject(_Closed):
    id: str = Field(examples=["openai/gpt-6-luna"])
    object: Literal["model"]
    created: int
    owned_by: str
    provider: str
    modality: Literal["chat", "embedding", "image", "speech", "transcription", "video"]
    pricing: dict[str, Any]
    context_tokens: int | None
    max_output_tokens: int | None
    deprecated_at: str | None
    retires_at: str | None
    replacement: str | None
    description: str | None
    alias_of: str | None = None


class ModelList(_Closed):
    object: Literal["list"]
    data: list[ModelObject]


class Voice(_Open):
    id: str


class VoiceList(_Closed):
    object: Literal["list"]
    data: list[Voice]


class Credits(_Closed):
    object: Literal["credits"]
    currency: Literal["USD"]
    balance: str = USD
    pending_holds: str = USD
    available: str = USD


class Generation(_Closed):
    id: str
    object: Literal["generation"]
    created_at: str
    model: str | None
    provider: str | None
    modality: str | None
    key_id: str | None
    status: str
    stream: bool
    usage: dict[str, int | str]
    unit_prices: dict[str, Any]
    cost: float | None = Field(description="USD, a number written exactly from the decimal")
    hold: str = USD
    error_code: str | None
    latency_ms: float | None


class GenerationList(_Closed):
    object: Literal["list"]
    data: list[Generation]
    has_more: bool


class UsageQuery(_Closed):
    limit: int = Field(default=20, ge=1, le=100)
    starting_after: str | None = Field(default=None, description="The last id of a page")
    since: str | None = Field(
        default=None, min_length=1, description="Unix timestamp or ISO-8601 time, inclusive"
    )
    until: str | None = Field(
        default=None, min_length=1, description="Unix timestamp or ISO-8601 time, exclusive"
    )
    model: str | None = None


# --- tasks and top-ups --------------------------------------------------------------------


class TaskError(_Closed):
    code: str
    message: str


class TaskOutputFile(_Closed):
    url: str
    content_type: str
    bytes: int


class Task(_Closed):
    id: str
    object: Literal["task"]
    model: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    created_at: str
    started_at: str | None
    completed_at: str | None
    input: dict[str, Any] | None
    output: list[TaskOutputFile] | str | None
    error: TaskError | None
    cost: float | None
    webhook: str | None
    output_expired_at: str | None
    deleted: bool


class TaskList(_Closed):
    object: Literal["list"]
    data: list[Task]
    has_more: bool


class TasksQuery(_Closed):
    limit: int = Field(default=20, ge=1, le=100)
    starting_after: str | None = Field(default=None, description="The last id of a page")
    status: Literal["queued", "running", "succeeded", "failed", "canceled"] | None = None


class TopupCreate(_Open):
    """``POST /v1/topups`` (read by ``http.topups``, which also takes ``amount_usd`` as a
    JSON number written in plain digits, and ignores other fields)."""

    amount_usd: str = Field(
        pattern=r"^[0-9]+(\.[0-9]{1,2})?$",
        description="USD in whole cents, within the server's [topups] bounds",
        examples=["20"],
    )
    method: Literal["card", "alipay"] = "card"


class TopupCharged(_Closed):
    currency: str
    amount: str


class TopupRate(_Closed):
    cny_per_usd: str
    source: str | None
    as_of: str | None


class TopupEntry(_Closed):
    id: int
    kind: str
    amount: str = USD
    created_at: str


class Topup(_Closed):
    id: str
    object: Literal["topup"]
    status: str
    method: str
    amount_usd: str = USD
    charged: TopupCharged
    exchange_rate: TopupRate | None
    refunded_usd: str = USD
    checkout_url: str | None
    created_at: str
    paid_at: str | None
    error_code: str | None
    ledger_entries: list[TopupEntry]


class TopupList(_Closed):
    object: Literal["list"]
    data: list[Topup]
    has_more: bool


class PageQuery(_Closed):
    limit: int = Field(default=20, ge=1, le=100)


# --- upstream-shaped answers --------------------------------------------------------------


class Usage(_Open):
    cost: float | None = Field(default=None, description="USD charged for the call")


class ChatCompletion(_Open):
    id: str
    object: str
    model: str
    choices: list[dict[str, Any]]
    usage: Usage


class EmbeddingList(_Open):
    object: str
    data: list[dict[str, Any]]
    usage: Usage


class ImagesResponse(_Open):
    data: list[dict[str, Any]]


class Transcription(_Open):
    """In ``response_format`` json or verbose_json; text, srt and vtt answer plain text."""


class ResponseObject(_Open):
    id: str
    object: Literal["response"]
    status: str
    output: list[dict[str, Any]]


class ResponseDeleted(_Closed):
    """What ``DELETE /v1/responses/{id}`` answers (OpenAI's shape)."""

    id: str
    object: Literal["response"]
    deleted: Literal[True]


class Message(_Open):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    content: list[dict[str, Any]]
    usage: dict[str, Any]


class TokenCount(_Closed):
    input_tokens: int


# --- the service itself -------------------------------------------------------------------


class Health(_Open):
    status: str


class WebhookReceived(_Open):
    """An upstream's or Stripe's event, taken."""
