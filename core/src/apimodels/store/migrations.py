"""Forward-only schema migrations, each applied once and recorded in ``_migrations``.

Add a function ``mNNN_what(db)`` decorated with ``@migration`` at the end; never edit one
that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply pending migrations in order; return the names applied."""
    with db.conn:  # under the write lock: PostgreSQL's IF NOT EXISTS races with itself
        db.conn.execute("BEGIN IMMEDIATE")
        db.execute(
            "CREATE TABLE IF NOT EXISTS _migrations"
            " (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
    done = {row[0] for row in db.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        with db.conn:  # the migration and its record commit together
            db.conn.execute("BEGIN IMMEDIATE")
            # Asked again under the write lock: processes starting together on a new
            # database all saw it pending; the first applies it, the others skip it.
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", [fn.__name__]).fetchone():
                continue
            fn(db)
            db.conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                (fn.__name__, datetime.now(UTC).isoformat()),
            )
        applied.append(fn.__name__)
    return applied


@migration
def m001_accounts_and_keys(db: sqlite_utils.Database) -> None:
    db["accounts"].create(
        {
            "id": str,
            "email": str,
            "status": str,  # active | suspended | closed
            "status_reason": str,
            "created_at": str,
        },
        pk="id",
        not_null={"email", "status", "created_at"},
        defaults={"status": "active"},
    )
    db["accounts"].create_index(["email"], unique=True)
    db["api_keys"].create(
        {
            "id": str,
            "account_id": str,
            "name": str,
            "prefix": str,  # non-secret lookup handle, part of the key itself
            "hash": str,  # sha256 of the whole key; the key is never stored
            "created_at": str,
            "expires_at": str,  # set when rotated: the old key's grace period ends
            "revoked_at": str,
            "replaced_by": str,
        },
        pk="id",
        foreign_keys=[("account_id", "accounts", "id")],
        not_null={"account_id", "prefix", "hash", "created_at"},
    )
    db["api_keys"].create_index(["prefix"], unique=True)
    db["api_keys"].create_index(["account_id"])


@migration
def m002_ledger(db: sqlite_utils.Database) -> None:
    # Running totals, changed only in the same transaction as the entry or hold they sum.
    db["accounts"].add_column("balance_micros", int, not_null_default=0)
    db["accounts"].add_column("held_micros", int, not_null_default=0)
    db["ledger_entries"].create(
        {
            "id": int,
            "account_id": str,
            "kind": str,  # grant | topup | charge | refund | adjustment
            "amount_micros": int,  # signed: credits > 0, debits < 0
            "reason": str,
            "actor": str,
            "idempotency_key": str,  # Stripe event id, order id, ...
            "hold_id": str,  # the request a charge settles (once: see usage.hold_state)
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("account_id", "accounts", "id")],
        not_null={"account_id", "kind", "amount_micros", "created_at"},
    )
    # Partial unique indexes: only rows that have a key pay for the index.
    db.execute(
        "CREATE UNIQUE INDEX idx_entries_idempotency ON ledger_entries (idempotency_key)"
        " WHERE idempotency_key IS NOT NULL"
    )
    db["ledger_entries"].create_index(["account_id"])
    # One row per billable request: its hold while it runs, its usage and cost after.
    # Few indexes on purpose: every index is one more page written per request.
    db["usage"].create(
        {
            "request_id": str,
            "account_id": str,
            "key_id": str,
            "model": str,
            "provider": str,
            "modality": str,
            "stream": int,
            "unit_prices": str,  # JSON: the catalog prices in force for this request
            "hold_micros": int,
            "hold_state": str,  # pending -> captured | released | expired
            "hold_expires_at": str,
            "status": str,  # pending -> succeeded | failed
            "input_tokens": int,
            "cached_input_tokens": int,
            "output_tokens": int,
            "images": int,
            "characters": int,
            "seconds": str,  # decimal string
            "cost_micros": int,
            "error_code": str,
            "latency_ms": float,
            "created_at": str,
            "settled_at": str,
        },
        pk="request_id",
        foreign_keys=[("account_id", "accounts", "id")],
        not_null={"account_id", "hold_micros", "hold_state", "status", "created_at"},
    )
    db["usage"].create_index(["account_id", "created_at"])
    db.execute(
        "CREATE INDEX idx_usage_pending ON usage (hold_expires_at) WHERE hold_state = 'pending'"
    )


@migration
def m003_key_limits(db: sqlite_utils.Database) -> None:
    db["api_keys"].add_column("rpm_limit", int)  # requests per minute
    db["api_keys"].add_column("daily_cap_micros", int)  # USD per UTC day
    db["api_keys"].add_column("total_cap_micros", int)  # USD over the key's life


@migration
def m004_idempotency(db: sqlite_utils.Database) -> None:
    db["idempotency_keys"].create(
        {
            "account_id": str,
            "key": str,
            "request_hash": str,  # method, path and body of the first request
            "state": str,  # in_flight | done
            "status": int,
            "headers": str,  # JSON
            "body": bytes,
            "created_at": str,
        },
        pk=("account_id", "key"),
        not_null={"request_hash", "state", "created_at"},
    )
    db["idempotency_keys"].create_index(["created_at"])


@migration
def m005_tasks(db: sqlite_utils.Database) -> None:
    db["usage"].add_column("outputs", int)
    db["usage"].add_column("run_seconds", str)  # decimal string
    # Signs the account's task webhooks (Standard Webhooks: "whsec_" + base64 secret).
    db["accounts"].add_column("webhook_secret", str)
    db["tasks"].create(
        {
            "id": str,  # also the request id of its usage row, which holds its credits
            "account_id": str,
            "key_id": str,
            "model": str,
            "provider": str,
            "status": str,  # queued -> running -> succeeded | failed | canceled
            "input": str,  # JSON
            "webhook_url": str,
            "upstream_id": str,  # the upstream's job id, once submitted
            "created_at": str,
            "started_at": str,
            "completed_at": str,
            "deadline_at": str,  # past it, the task is canceled (cost 0)
            "output": str,  # JSON: [{key, content_type, bytes}] or {"text": ...}
            "error_code": str,
            "error_message": str,
            "cost_micros": int,
            "next_poll_at": str,
            "polls": int,
            "lease_until": str,  # a worker owns the task until then
            "webhook_state": str,  # pending -> delivered | failed
            "webhook_attempts": int,
            "webhook_next_at": str,
            "webhook_error": str,
        },
        pk="id",
        foreign_keys=[("account_id", "accounts", "id")],
        not_null={"account_id", "model", "provider", "status", "input", "created_at"},
        defaults={"polls": 0, "webhook_attempts": 0},
    )
    db["tasks"].create_index(["account_id", "id"])  # ids are in time order: newest first
    db.execute(
        "CREATE UNIQUE INDEX idx_tasks_upstream ON tasks (provider, upstream_id)"
        " WHERE upstream_id IS NOT NULL"
    )
    db.execute(
        "CREATE INDEX idx_tasks_due ON tasks (next_poll_at) WHERE status IN ('queued', 'running')"
    )
    db.execute(
        "CREATE INDEX idx_tasks_webhooks ON tasks (webhook_next_at) WHERE webhook_state = 'pending'"
    )


@migration
def m006_topups(db: sqlite_utils.Database) -> None:
    # One row per attempt to buy credits; its status changes only by compare-and-set, in the
    # same transaction as the ledger entry that goes with the change.
    db["topup_orders"].create(
        {
            "id": str,  # ord_...
            "account_id": str,
            "method": str,  # card | alipay
            "status": str,  # creating -> open -> processing -> paid | failed | expired
            "amount_usd_micros": int,  # the credits bought
            "currency": str,  # what Stripe charges: usd | cny
            "amount_minor": int,  # ... in its smallest unit (cents, fen)
            "rate": str,  # decimal string, CNY per USD (alipay only)
            "rate_source": str,
            "rate_as_of": str,
            "stripe_session_id": str,
            "stripe_payment_intent": str,
            "checkout_url": str,
            "refunded_usd_micros": int,  # credits removed by refunds and disputes so far
            "refunded_minor": int,  # ... and the money Stripe returned for them
            "error_code": str,
            "created_at": str,
            "updated_at": str,
            "paid_at": str,
        },
        pk="id",
        foreign_keys=[("account_id", "accounts", "id")],
        not_null={"account_id", "method", "status", "amount_usd_micros", "currency", "created_at"},
        defaults={"refunded_usd_micros": 0, "refunded_minor": 0},
    )
    db["topup_orders"].create_index(["account_id", "created_at"])
    db.execute(
        "CREATE UNIQUE INDEX idx_topup_orders_session ON topup_orders (stripe_session_id)"
        " WHERE stripe_session_id IS NOT NULL"
    )
    db.execute(
        "CREATE INDEX idx_topup_orders_intent ON topup_orders (stripe_payment_intent)"
        " WHERE stripe_payment_intent IS NOT NULL"
    )
    # Which ledger entries belong to which order (for receipts and `orders reconcile`).
    db["topup_entries"].create(
        {"entry_id": int, "order_id": str, "stripe_event_id": str, "kind": str},
        pk="entry_id",
        foreign_keys=[("entry_id", "ledger_entries", "id"), ("order_id", "topup_orders", "id")],
        not_null={"order_id", "kind"},
    )
    db["topup_entries"].create_index(["order_id"])
    # Every verified Stripe event handled, once (a replay finds its id here and stops).
    db["stripe_events"].create(
        {
            "id": str,
            "type": str,
            "order_id": str,
            "outcome": str,
            "received_at": str,
            # A refund or dispute of a payment not credited yet (Stripe does not keep the
            # order of its events): kept whole, applied once the order is credited.
            "payment_intent": str,
            "payload": str,
        },
        pk="id",
        not_null={"type", "received_at"},
    )
    db.execute(
        "CREATE INDEX idx_stripe_events_unmatched ON stripe_events (payment_intent)"
        " WHERE outcome = 'unmatched'"
    )


@migration
def m007_policy(db: sqlite_utils.Database) -> None:
    # The audit trail of refused requests (apimodels.policy.audit): never the full content
    # unless [safety] store_full_content is on; the excerpt is redacted.
    db["policy_violations"].create(
        {
            "id": int,
            "created_at": str,
            "account_id": str,
            "key_id": str,
            "request_id": str,
            "model": str,
            "modality": str,
            "category": str,
            "plugin": str,
            "source": str,  # policy | upstream
            "reason": str,
            "excerpt": str,  # redacted, short
            "content_sha256": str,
            "content": str,  # NULL unless store_full_content
            "reviewed_at": str,  # set when an admin lifts a suspension: no longer counted
        },
        pk="id",
        foreign_keys=[("account_id", "accounts", "id")],
        not_null={"created_at", "account_id", "model", "category", "plugin", "content_sha256"},
    )
    db["policy_violations"].create_index(["account_id", "created_at"])


@migration
def m008_storage(db: sqlite_utils.Database) -> None:
    # Server-wide secrets (the storage signing secret), generated once, shared by every process.
    db["server_secrets"].create(
        {"name": str, "value": str, "created_at": str}, pk="name", not_null={"value", "created_at"}
    )


@migration
def m009_reservations(db: sqlite_utils.Database) -> None:
    # Credits one server process sets aside for an account's requests in flight, so that it
    # admits them in memory; counted in accounts.held_micros like a hold. A process renews
    # its rows while it runs; rows of a dead one expire like holds.
    db["reservations"].create(
        {
            "id": str,  # process:account
            "account_id": str,
            "process": str,
            "amount_micros": int,
            "expires_at": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("account_id", "accounts", "id")],
        not_null={"account_id", "process", "amount_micros", "expires_at", "created_at"},
    )
    db["reservations"].create_index(["expires_at"])
    # A request is charged at most once, whoever settles it: enforced by the schema too.
    db.execute(
        "CREATE UNIQUE INDEX idx_entries_hold ON ledger_entries (hold_id) WHERE hold_id IS NOT NULL"
    )


@migration
def m010_audio_input_tokens(db: sqlite_utils.Database) -> None:
    # Audio a model reads as tokens (gpt-4o-transcribe), priced apart from its text tokens.
    db["usage"].add_column("audio_input_tokens", int)


@migration
def m011_privacy(db: sqlite_utils.Database) -> None:
    # Outputs deleted by their owner or by the retention sweep (apimodels.privacy): the task
    # row stays as the billing record, its content goes.
    db["tasks"].add_column("deleted_at", str)  # DELETE /v1/tasks/{id}
    db["tasks"].add_column("output_expired_at", str)  # its output files and content removed
    db["tasks"].add_column("purge_until", str)  # a sweeper's claim while it removes them
    db.execute(
        "CREATE INDEX idx_tasks_outputs_held ON tasks (completed_at)"
        " WHERE output_expired_at IS NULL AND completed_at IS NOT NULL"
    )
    # Deletions a crash left half done, for the sweep to finish.
    db.execute(
        "CREATE INDEX idx_tasks_deleting ON tasks (deleted_at)"
        " WHERE deleted_at IS NOT NULL AND output_expired_at IS NULL"
    )
    db["accounts"].add_column("output_retention_days", int)  # the operator's override
    db["accounts"].add_column("closed_at", str)
    db["accounts"].add_column("outputs_deleted_at", str)  # a closed account's grace ended
    db["accounts"].add_column("pseudonymized_at", str)  # its email and key names replaced


@migration
def m012_stored_responses(db: sqlite_utils.Database) -> None:
    # Responses API answers kept for GET /v1/responses/{id} and previous_response_id
    # (store: true, the API's default): the answer as sent, and the conversation so far in
    # Chat Completions messages, to continue it.
    db["stored_responses"].create(
        {
            "id": str,
            "account_id": str,
            "created_at": str,
            "body": str,  # the Response object, JSON
            "history": str,  # the chat messages up to and including the answer, JSON
        },
        pk="id",
        foreign_keys=[("account_id", "accounts", "id")],
        not_null={"account_id", "created_at", "body", "history"},
    )


@migration
def m013_cache_write_tokens(db: sqlite_utils.Database) -> None:
    # Input written to a provider's prompt cache (Anthropic), priced apart from the rest.
    db["usage"].add_column("cache_write_tokens", int)


@migration
def m014_audio_output_tokens(db: sqlite_utils.Database) -> None:
    # Audio a model writes as tokens (gpt-4o-mini-tts), priced apart from its text input.
    db["usage"].add_column("audio_output_tokens", int)


@migration
def m015_console(db: sqlite_utils.Database) -> None:
    # The Console (apimodels.console): an account holder's password (Argon2id), verified
    # email and low-balance threshold; sessions kept server-side (revocable) under the hash
    # of their cookie; one-time links (verify, reset) under the hash of their token; failed
    # sign-ins, counted per email and per client address to throttle guessing.
    db["accounts"].add_column("password_hash", str)
    db["accounts"].add_column("email_verified_at", str)
    db["accounts"].add_column("low_balance_micros", int)  # None: the server's default
    db["accounts"].add_column("low_balance_mailed_at", str)  # cleared when topped up
    db["console_sessions"].create(
        {
            "id": str,  # sha256 of the cookie's value
            "account_id": str,
            "role": str,  # holder (an operator's sessions later get their own role)
            "created_at": str,
            "last_seen_at": str,
            "expires_at": str,
            "revoked_at": str,
            "user_agent": str,
            "ip": str,
        },
        pk="id",
        foreign_keys=[("account_id", "accounts", "id")],
        not_null={"account_id", "role", "created_at", "expires_at"},
        defaults={"role": "holder"},
    )
    db["console_sessions"].create_index(["account_id"])
    db["console_tokens"].create(
        {
            "id": str,  # sha256 of the token in the link
            "account_id": str,
            "purpose": str,  # verify | reset
            "created_at": str,
            "expires_at": str,
            "used_at": str,
        },
        pk="id",
        foreign_keys=[("account_id", "accounts", "id")],
        not_null={"account_id", "purpose", "created_at", "expires_at"},
    )
    db["console_login_failures"].create(
        {"id": int, "subject": str, "created_at": str},
        pk="id",
        not_null={"subject", "created_at"},
    )
    db["console_login_failures"].create_index(["subject", "created_at"])
    # The dashboard's spend of one account per day and model: rows in (day, model) order in
    # the index, so the sums stream without a sort (about 4x faster over 50,000 rows). An
    # expression index, written as both SQLite and PostgreSQL read it.
    db.execute(
        "CREATE INDEX idx_usage_days ON usage"
        " (account_id, (substr(created_at, 1, 10)), model, cost_micros)"
    )
    # Which version of the Terms and of the Privacy Policy each holder accepted, and when.
    db["console_acceptances"].create(
        {"account_id": str, "document": str, "version": str, "accepted_at": str, "ip": str},
        pk=("account_id", "document", "version"),
        foreign_keys=[("account_id", "accounts", "id")],
        not_null={"accepted_at"},
    )
    # Mail the Console sent on an event (a receipt, a suspension...): one row per (kind, ref),
    # inserted before sending, so that several processes send each mail once.
    db["console_mail_log"].create(
        {"kind": str, "ref": str, "account_id": str, "created_at": str},
        pk=("kind", "ref"),
        not_null={"account_id", "created_at"},
    )
    # What a key starts with ("amk_": checksummed; NULL: a legacy "sk-am-" key), for its hint.
    db["api_keys"].add_column("key_format", str)
    # Last use of a key: the newest usage row of that key.
    db["usage"].create_index(["key_id", "created_at"])


@migration
def m016_admin(db: sqlite_utils.Database) -> None:
    # The operator's side (apimodels.admin): operators (the Console's admin role), the
    # tokens of the admin HTTP API (stored hashed, like API keys), and the audit log of
    # every admin action, appended to and never changed.
    db["admins"].create(
        {"id": str, "email": str, "created_at": str, "created_by": str, "removed_at": str},
        pk="id",
        not_null={"email", "created_at", "created_by"},
    )
    db["admins"].create_index(["email"], unique=True)
    db["admin_tokens"].create(
        {
            "id": str,
            "name": str,
            "scope": str,  # read | write
            "prefix": str,
            "hash": str,
            "created_at": str,
            "created_by": str,
            "revoked_at": str,
        },
        pk="id",
        not_null={"name", "scope", "prefix", "hash", "created_at", "created_by"},
    )
    db["admin_tokens"].create_index(["prefix"], unique=True)
    db["admin_audit"].create(
        {
            "id": int,
            "created_at": str,
            "actor": str,  # admin-token:atk_... or cli:USER
            "action": str,  # accounts.suspend, credits.grant...
            "target": str,  # the account, key, order or task acted on
            "reason": str,
            "before": str,  # JSON, or NULL
            "after": str,  # JSON, or NULL
        },
        pk="id",
        not_null={"created_at", "actor", "action", "target"},
    )
    db["admin_audit"].create_index(["target"])


@migration
def m017_rate_windows(db: sqlite_utils.Database) -> None:
    # A key's requests in one clock minute, shared by every process (apimodels.billing.limits
    # leases slices of them): rpm limits hold across processes and hosts.
    db["rate_windows"].create(
        {"key_id": str, "window_start": str, "taken": int},
        pk=("key_id", "window_start"),
        not_null={"taken"},
    )


@migration
def m018_storage_hosts(db: sqlite_utils.Database) -> None:
    # Hosts keeping outputs in a local folder (apimodels.store.hosts): with PostgreSQL, a
    # second live host refuses to start on the local store.
    db["storage_hosts"].create({"host": str, "seen_at": str}, pk="host", not_null={"seen_at"})


@migration
def m019_spend_leases(db: sqlite_utils.Database) -> None:
    # What each process may still hold and charge for a key under its spending caps
    # (apimodels.billing.limits leases the room left): caps hold across processes and hosts.
    db["spend_leases"].create(
        {"key_id": str, "holder": str, "amount_micros": int, "expires_at": str},
        pk=("key_id", "holder"),
        not_null={"amount_micros", "expires_at"},
    )


@migration
def m020_account_status_changed_at(db: sqlite_utils.Database) -> None:
    # When an account's status last changed: a second suspension for the same reason is a
    # new event, mailed again (apimodels.console.notices).
    db["accounts"].add_column("status_changed_at", str)


@migration
def m021_key_spend(db: sqlite_utils.Database) -> None:
    # What each API key spent per UTC day of its requests, kept by the ledger with the usage
    # rows it sums (apimodels.billing.ledger): a lease under a key's spending caps reads
    # these few rows, not the key's usage (1.8 s for a key with a million calls). Filled
    # from the usage rows so far, as the ledger counts them (its SPENT_BY_ROW, written out:
    # a migration never changes once shipped).
    db["key_spend"].create(
        {"key_id": str, "day": str, "spent_micros": int},
        pk=("key_id", "day"),
        not_null={"spent_micros"},
    )
    db.execute(
        "INSERT INTO key_spend (key_id, day, spent_micros) SELECT key_id,"
        " substr(created_at, 1, 10), SUM(CASE WHEN hold_state = 'pending'"
        " AND request_id LIKE 'task!_%' ESCAPE '!' THEN hold_micros"
        " ELSE COALESCE(cost_micros, 0) END) FROM usage"
        " WHERE key_id IS NOT NULL GROUP BY key_id, substr(created_at, 1, 10)"
    )


@migration
def m022_usage_daily(db: sqlite_utils.Database) -> None:
    # Each account's calls per UTC day, model and provider (the admin overview's figures),
    # kept by the ledger with the usage rows it sums (apimodels.billing.ledger): a month of
    # them is a few thousand rows where the usage rows are millions. Filled from the usage
    # rows so far, as the ledger counts them (written out: a shipped migration never changes).
    counters = (
        "calls",
        "settled",
        "failed",
        "input_tokens",
        "output_tokens",
        "cost_micros",
        "upstream_errors",
    )
    db["usage_daily"].create(
        {"day": str, "account_id": str, "model": str, "provider": str}
        | dict.fromkeys(counters, int),
        pk=("day", "account_id", "model", "provider"),
        not_null=set(counters),
    )
    settled = "SUM(CASE WHEN hold_state != 'pending' THEN {} ELSE 0 END)"
    db.execute(
        f"INSERT INTO usage_daily (day, account_id, model, provider, {', '.join(counters)})"
        " SELECT substr(created_at, 1, 10), account_id, COALESCE(model, ''),"
        " COALESCE(provider, ''), COUNT(*), "
        + ", ".join(
            [
                settled.format("1"),
                "SUM(CASE WHEN status = 'failed' AND hold_state != 'pending' THEN 1 ELSE 0 END)",
                settled.format("COALESCE(input_tokens, 0)"),
                settled.format("COALESCE(output_tokens, 0)"),
                settled.format("COALESCE(cost_micros, 0)"),
                "SUM(CASE WHEN error_code IN ('provider_unavailable', 'upstream_error',"
                " 'upstream_overloaded', 'upstream_timeout') THEN 1 ELSE 0 END)",
            ]
        )
        + " FROM usage GROUP BY substr(created_at, 1, 10), account_id, COALESCE(model, ''),"
        " COALESCE(provider, '')"
    )
