"""The admin API's request and response bodies: the models that validate each request and
shape each answer, and from which ``/openapi.json`` describes them. Money is integer
micro-USD (``*_micros``) in answers, exact; amounts sent are USD decimal strings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- requests ---------------------------------------------------------------------------


class Reason(_In):
    """Why: kept in the audit log (and shown to the account's calls when it suspends)."""

    reason: str = Field(min_length=1, max_length=2000, examples=["chargeback fraud"])


#: An amount typed in USD: digits, an optional fraction and sign (``admin.amounts``).
AMOUNT = r"^[+-]?[0-9]+(\.[0-9]+)?$"


class CreditsPost(_In):
    amount_usd: str = Field(
        pattern=AMOUNT,
        description="USD as a decimal string; a grant is positive, an adjustment non-zero",
        examples=["25.00"],
    )
    reason: str = Field(min_length=1, max_length=2000, examples=["goodwill after outage"])
    idempotency_key: str | None = Field(
        default=None, max_length=200, description="A grant repeated with it changes nothing"
    )


class RefundPost(_In):
    reason: str = Field(min_length=1, max_length=2000, examples=["customer asked"])
    amount_usd: str | None = Field(
        default=None,
        pattern=AMOUNT,
        description="Credits to refund in USD (default: all not refunded yet)",
        examples=["10.00"],
    )
    stripe_reason: Literal["requested_by_customer", "duplicate", "fraudulent"] = (
        "requested_by_customer"
    )


# --- answers ----------------------------------------------------------------------------


class Account(_Out):
    id: str
    email: str
    status: Literal["active", "suspended", "closed"]
    status_reason: str | None
    created_at: str
    closed_at: str | None
    balance_micros: int
    held_micros: int


class Key(_Out):
    id: str
    account_id: str
    name: str | None
    hint: str = Field(description="The key's first characters, never the key")
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    replaced_by: str | None
    rpm_limit: int | None = None
    daily_cap_micros: int | None = None
    total_cap_micros: int | None = None


class UsageRow(_Out):
    request_id: str
    created_at: str
    model: str | None
    provider: str | None
    status: str
    cost_micros: int | None
    error_code: str | None


class Violation(_Out):
    id: int
    created_at: str
    key_id: str | None
    model: str | None
    category: str
    plugin: str | None
    reason: str | None
    excerpt: str | None
    reviewed_at: str | None


class LedgerEntry(_Out):
    id: int
    kind: str
    amount_micros: int
    reason: str | None
    actor: str | None
    created_at: str


class Order(_Out):
    id: str
    account_id: str
    method: str
    status: str
    amount_usd_micros: int
    currency: str
    amount_minor: int
    rate: str | None
    refunded_usd_micros: int
    refunded_minor: int
    error_code: str | None
    created_at: str
    paid_at: str | None = None


class OrderDetail(Order):
    ledger_entries: list[LedgerEntry]


class Refunded(Order):
    stripe_refund_id: str
    refunded_minor_now: int = Field(description="What this refund gave back, in minor units")
    debited_micros: int = Field(
        description="Credits debited here (0 when Stripe's webhook recorded the refund first)"
    )


class AccountDetail(Account):
    keys: list[Key]
    recent_usage: list[UsageRow]
    violations: list[Violation]
    orders: list[Order]


class Closed(Account):
    forfeited_micros: int = Field(description="The balance written off (negative: a debt)")
    tasks_canceled: int
    outputs_deleted_after: str


class Credited(_Out):
    account_id: str
    entry_id: int | None = Field(description="None: the idempotency key was used before")
    kind: Literal["grant", "adjustment"]
    amount_micros: int
    balance_micros: int
    held_micros: int


class AdminTask(_Out):
    id: str
    account_id: str
    key_id: str | None
    model: str
    provider: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    created_at: str
    completed_at: str | None
    cost_micros: int | None
    error_code: str | None


class UsageTotal(_Out):
    key: str | None = Field(description="The account id, model id or UTC date (YYYY-MM-DD)")
    calls: int
    failed: int
    input_tokens: int
    output_tokens: int
    cost_micros: int


class BooksCheck(_Out):
    ok: bool
    checked_at: str
    ledger_problems: list[str]
    order_problems: list[str]


class AuditEntry(_Out):
    id: int
    created_at: str
    actor: str
    action: str
    target: str
    reason: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def page_of(item: type[BaseModel], name: str) -> type[BaseModel]:
    """A list answer: ``{"object": "list", "data": [item...], "has_more": bool}``."""
    from pydantic import create_model

    return create_model(  # type: ignore[call-overload,no-any-return]
        name,
        __base__=_Out,
        object=(Literal["list"], "list"),
        data=(list[item], ...),  # type: ignore[valid-type]
        has_more=(bool, False),
    )


AccountList = page_of(Account, "AccountList")
OrderList = page_of(Order, "OrderList")
AdminTaskList = page_of(AdminTask, "AdminTaskList")
UsageTotals = page_of(UsageTotal, "UsageTotals")
AuditLog = page_of(AuditEntry, "AuditLog")
