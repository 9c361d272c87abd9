"""The ``apimodels`` command line: serve, inspect the catalog and plugins, manage accounts
and keys. Every command has ``--help``. Errors print as one clean line (exit 1); set
``APIMODELS_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from . import accounts as acc
from .errors import APIError, ConfigError

# Piped output is not cut to 80 columns: ids and keys must survive `| grep`.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


class _Group(click.Group):
    """Turns expected errors into a clean message instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, ValueError, APIError) as exc:
            if os.environ.get("APIMODELS_DEBUG"):
                raise
            message = exc.message if isinstance(exc, APIError) else str(exc)
            err_console.print(f"[bold red]error:[/] {message}", highlight=False)
            sys.exit(1)


def _db(ctx: click.Context) -> Any:
    from .db import open_db

    return open_db(ctx.obj["db"])


def _catalog(ctx: click.Context) -> Any:
    from .catalog import load_catalog

    return load_catalog(ctx.obj["registry"])


@click.group(cls=_Group)
@click.version_option(package_name="apimodels")
@click.option(
    "--registry",
    envvar="APIMODELS_REGISTRY",
    default="registry.toml",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The catalog file (env APIMODELS_REGISTRY).",
)
@click.option(
    "--db",
    envvar="APIMODELS_DB",
    default="apimodels.db",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The SQLite database (env APIMODELS_DB).",
)
@click.pass_context
def cli(ctx: click.Context, registry: Path, db: Path) -> None:
    """apimodels: one endpoint and one API key for many AI model providers."""
    ctx.obj = {"registry": registry, "db": db}


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--sandbox",
    is_flag=True,
    help="Serve every provider from its simulator (no upstream keys needed).",
)
@click.option(
    "--access-log/--no-access-log", default=True, show_default=True, help="Log each request line."
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, sandbox: bool, access_log: bool) -> None:
    """Run the gateway."""
    import uvicorn

    from .sandbox import demo_key
    from .server import assemble

    server = assemble(ctx.obj["registry"], ctx.obj["db"], sandbox=sandbox)
    for notice in server.gateway.notices:
        err_console.print(f"[yellow]warning:[/] {notice}", highlight=False)
    url = f"http://{host}:{port}"
    key = demo_key(server.db, server.ledger) if sandbox else None

    def announce() -> None:
        if key is None:
            console.print(f"apimodels listening on {url}/v1", highlight=False)
            return
        curl = (
            f"curl {url}/v1/chat/completions -H 'Authorization: Bearer {key}' "
            "-H 'Content-Type: application/json' "
            '-d \'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}\''
        )
        body = (
            "[bold yellow]SANDBOX MODE: every provider is a local simulator. "
            "Outputs are simulated, nothing is sent upstream.[/]\n\n"
            f"URL      {url}/v1\nAPI key  {key}  (demo account, $10 of simulated credit)"
        )
        console.print(Panel(body, title="apimodels sandbox", expand=False), highlight=False)
        # Plain lines, so the command can be copied whole from any terminal.
        click.echo(f"Try it:\n{curl}\n")

    server.started_hooks.append(announce)
    uvicorn.run(server.app, host=host, port=port, access_log=access_log, log_level="info")


@cli.command()
@click.pass_context
def plugins(ctx: click.Context) -> None:
    """List installed plugins, the providers they serve and whether the catalog enables them."""
    from .plugins import get_plugins, pm
    from .runtime import registered_providers

    providers = registered_providers(pm)
    try:
        catalog = _catalog(ctx)
        enabled = {n for n, p in catalog.providers.items() if p.enabled}
    except ConfigError:
        enabled = set()
    table = Table("plugin", "package", "version", "providers", "enabled", "hooks")
    for p in get_plugins():
        served = sorted(n for n, (_, owner) in providers.items() if pm.get_name(owner) == p["name"])
        on = ", ".join(n for n in served if n in enabled) or "-"
        table.add_row(
            p["name"],
            p.get("package", "-"),
            p.get("version", "-"),
            ", ".join(served) or "-",
            on,
            ", ".join(p["hooks"]),
        )
    console.print(table)


@cli.command()
@click.pass_context
def policies(ctx: click.Context) -> None:
    """List installed safety policies and how registry.toml's [policies] sets them."""
    from .plugins import pm
    from .policy import registered_policies

    try:
        configured = _catalog(ctx).policies
    except ConfigError:
        configured = {}
    table = Table("policy", "plugin", "calls provider", "enabled", "fail", "timeout (s)")
    for name, (spec, owner) in sorted(registered_policies(pm).items()):
        row = [name, pm.get_name(owner) or "-", spec.provider or "-"]
        config = configured.get(name)
        if config is None or not config.enabled:
            table.add_row(*row, "no", "-", "-")
        else:
            timeout = f"{config.timeout:g}" if spec.provider else "-"
            table.add_row(*row, "yes", config.fail, timeout)
    console.print(table)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """Print the catalog's served models with their prices (USD)."""
    catalog = _catalog(ctx)
    served = catalog.served_models()
    if as_json:
        out = [
            {
                "id": m.id,
                "provider": m.provider,
                "upstream": m.upstream,
                "modality": m.modality.value,
                "pricing": m.pricing.as_dict(),
            }
            for m in served.values()
        ]
        click.echo(json.dumps(out, indent=2))
        return
    table = Table("model", "modality", "upstream", "pricing (USD)")
    for m in sorted(served.values(), key=lambda m: m.id):
        prices = "; ".join(
            f"{k}: "
            + (", ".join(f"{vk}={vv}" for vk, vv in v.items()) if isinstance(v, dict) else v)
            for k, v in m.pricing.as_dict().items()
        )
        table.add_row(m.id, m.modality.value, m.upstream, prices)
    console.print(table)


@cli.group()
def accounts() -> None:
    """Manage accounts."""


@accounts.command("create")
@click.argument("email")
@click.pass_context
def accounts_create(ctx: click.Context, email: str) -> None:
    """Create an account for EMAIL."""
    row = acc.create_account(_db(ctx), email)
    console.print(f"created account [bold]{row['id']}[/] for {row['email']}", highlight=False)


@cli.group()
def keys() -> None:
    """Manage API keys (shown once, stored hashed)."""


def _show_new_key(row: dict[str, Any], key: str) -> None:
    console.print(f"key [bold]{row['id']}[/] for account {row['account_id']}:", highlight=False)
    click.echo(key)
    err_console.print("Store it now: it is not shown again.", style="dim")


@keys.command("create")
@click.argument("account")
@click.option("--name", default="", help="A label for the key.")
@click.pass_context
def keys_create(ctx: click.Context, account: str, name: str) -> None:
    """Create a key for ACCOUNT (id or email) and print it once."""
    row, key = acc.create_key(_db(ctx), account, name)
    _show_new_key(row, key)


@keys.command("list")
@click.argument("account")
@click.pass_context
def keys_list(ctx: click.Context, account: str) -> None:
    """List the keys of ACCOUNT (never the keys themselves)."""
    table = Table("id", "name", "hint", "created", "expires", "revoked")
    for k in acc.list_keys(_db(ctx), account):
        table.add_row(
            k["id"],
            k["name"] or "",
            k["hint"],
            k["created_at"][:19],
            (k["expires_at"] or "")[:19],
            (k["revoked_at"] or "")[:19],
        )
    console.print(table)


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke KEY_ID now (running servers notice within gateway.key_cache_seconds)."""
    row = acc.revoke_key(_db(ctx), key_id)
    console.print(f"revoked {row['id']} at {row['revoked_at']}", highlight=False)


@keys.command("rotate")
@click.argument("key_id")
@click.option(
    "--grace-hours",
    type=float,
    default=None,
    help="How long the old key keeps working (default: gateway.key_rotation_grace_hours, 24).",
)
@click.pass_context
def keys_rotate(ctx: click.Context, key_id: str, grace_hours: float | None) -> None:
    """Replace KEY_ID with a new key; the old one expires after a grace period."""
    if grace_hours is None:
        try:
            grace_hours = _catalog(ctx).gateway.key_rotation_grace_hours
        except ConfigError:
            grace_hours = 24.0
    new, key, old = acc.rotate_key(_db(ctx), key_id, timedelta(hours=grace_hours))
    _show_new_key(new, key)
    err_console.print(f"old key {old['id']} works until {old['expires_at']}", highlight=False)


def _usd(value: str, *, signed: bool = False) -> int:
    """A USD amount typed by an operator -> micro-USD, exactly (no rounding allowed)."""
    from decimal import Decimal, InvalidOperation

    from .money import MICROS_PER_USD

    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"not an amount: {value!r}") from None
    micros = amount * MICROS_PER_USD
    if not amount.is_finite() or micros != micros.to_integral_value():
        raise click.BadParameter(f"{value} is not a whole number of micro-dollars")
    if not signed and amount <= 0:
        raise click.BadParameter("the amount must be positive")
    if amount == 0:
        raise click.BadParameter("the amount must not be zero")
    return int(micros)


def _ledger(ctx: click.Context) -> Any:
    from .ledger import Ledger

    return Ledger(_db(ctx))


def _show_balance(ledger: Any, account_id: str) -> None:
    from .money import format_usd

    b = ledger.balance(account_id)
    console.print(
        f"{account_id}: balance {format_usd(b.balance_micros)} USD, pending holds "
        f"{format_usd(b.held_micros)}, available {format_usd(b.available_micros)}",
        highlight=False,
    )


@cli.group()
def credits() -> None:
    """Grant, adjust and show USD credits."""


@credits.command("grant")
@click.argument("account")
@click.argument("usd")
@click.option("--reason", required=True, help="Why (kept on the ledger entry).")
@click.option("--idempotency-key", default=None, help="Makes a repeated grant a no-op.")
@click.pass_context
def credits_grant(
    ctx: click.Context, account: str, usd: str, reason: str, idempotency_key: str | None
) -> None:
    """Grant USD credits to ACCOUNT (id or email)."""
    ledger = _ledger(ctx)
    acct = acc.get_account(ledger.db, account)
    entry = ledger.post(
        acct["id"],
        _usd(usd),
        kind="grant",
        reason=reason,
        actor=_actor(),
        idempotency_key=idempotency_key,
    )
    if entry is None:
        err_console.print(
            "already granted (same idempotency key): nothing changed", highlight=False
        )
    _show_balance(ledger, acct["id"])


@credits.command("adjust", context_settings={"ignore_unknown_options": True})
@click.argument("account")
@click.argument("usd")
@click.option("--reason", required=True, help="Why (kept on the ledger entry).")
@click.pass_context
def credits_adjust(ctx: click.Context, account: str, usd: str, reason: str) -> None:
    """Add (+USD) or remove (-USD) credits from ACCOUNT to correct a billing error."""
    ledger = _ledger(ctx)
    acct = acc.get_account(ledger.db, account)
    ledger.post(
        acct["id"], _usd(usd, signed=True), kind="adjustment", reason=reason, actor=_actor()
    )
    _show_balance(ledger, acct["id"])


@credits.command("show")
@click.argument("account")
@click.pass_context
def credits_show(ctx: click.Context, account: str) -> None:
    """Show ACCOUNT's balance, pending holds and latest ledger entries."""
    from .money import format_usd

    ledger = _ledger(ctx)
    acct = acc.get_account(ledger.db, account)
    _show_balance(ledger, acct["id"])
    table = Table("entry", "time", "kind", "amount (USD)", "reason", "actor")
    for e in ledger.db.query(
        "SELECT * FROM ledger_entries WHERE account_id = ? ORDER BY id DESC LIMIT 20", [acct["id"]]
    ):
        table.add_row(
            str(e["id"]),
            e["created_at"][:19],
            e["kind"],
            format_usd(e["amount_micros"]),
            e["reason"],
            e["actor"] or "",
        )
    console.print(table)


def _actor() -> str:
    return os.environ.get("APIMODELS_ACTOR") or f"cli:{os.environ.get('USER', 'unknown')}"


@cli.group()
def ledger() -> None:
    """Check the credits ledger."""


@ledger.command("check")
@click.pass_context
def ledger_check(ctx: click.Context) -> None:
    """Recompute every balance from the entries and check every hold; exit 1 on any problem."""
    problems = _ledger(ctx).check()
    for p in problems:
        err_console.print(f"[red]problem:[/] {p}", highlight=False)
    if problems:
        sys.exit(1)
    console.print(
        "ledger ok: balances match their entries, every hold settled at most once", highlight=False
    )


def _set_status(ctx: click.Context, account: str, status: str, reason: str) -> None:
    row = acc.set_status(_db(ctx), account, status, reason)
    console.print(f"{row['id']} is now {row['status']} ({row['status_reason']})", highlight=False)


@accounts.command("suspend")
@click.argument("account")
@click.option("--reason", required=True, help="Shown to the account's API calls.")
@click.pass_context
def accounts_suspend(ctx: click.Context, account: str, reason: str) -> None:
    """Suspend ACCOUNT: every call answers 403 account_suspended; the balance is kept."""
    _set_status(ctx, account, "suspended", reason)


@accounts.command("unsuspend")
@click.argument("account")
@click.option("--reason", required=True, help="Why the suspension is lifted.")
@click.pass_context
def accounts_unsuspend(ctx: click.Context, account: str, reason: str) -> None:
    """Lift ACCOUNT's suspension; its policy violations so far are marked reviewed."""
    from .policy.audit import mark_reviewed

    db = _db(ctx)
    _set_status(ctx, account, "active", reason)
    mark_reviewed(db, acc.get_account(db, account)["id"])


@accounts.command("close")
@click.argument("account")
@click.option("--reason", required=True, help="Why the account is closed.")
@click.pass_context
def accounts_close(ctx: click.Context, account: str, reason: str) -> None:
    """Close ACCOUNT for good: all keys revoked, no more calls (export its data first)."""
    _set_status(ctx, account, "closed", reason)


@accounts.command("export")
@click.argument("account")
@click.pass_context
def accounts_export(ctx: click.Context, account: str) -> None:
    """Print everything stored about ACCOUNT as JSON (keys without their hashes)."""
    click.echo(json.dumps(acc.export_account(_db(ctx), account), indent=2))


@keys.command("limit")
@click.argument("key_id")
@click.option("--rpm", type=click.IntRange(min=1), default=None, help="Requests per minute.")
@click.option("--daily-usd", default=None, help="Spending cap per UTC day, in USD.")
@click.option("--total-usd", default=None, help="Spending cap over the key's life, in USD.")
@click.option("--clear", is_flag=True, help="Remove every limit of the key.")
@click.pass_context
def keys_limit(
    ctx: click.Context,
    key_id: str,
    rpm: int | None,
    daily_usd: str | None,
    total_usd: str | None,
    clear: bool,
) -> None:
    """Set KEY_ID's rate limit and spending caps (over a limit: 429 with Retry-After)."""
    if clear and (rpm or daily_usd or total_usd):
        raise click.UsageError("--clear takes no other option")
    if not clear and not (rpm or daily_usd or total_usd):
        raise click.UsageError("give --rpm, --daily-usd, --total-usd or --clear")
    row = acc.set_key_limits(
        _db(ctx),
        key_id,
        rpm=rpm,
        daily_cap_micros=_usd(daily_usd) if daily_usd else None,
        total_cap_micros=_usd(total_usd) if total_usd else None,
    )
    console.print(
        f"{row['id']}: rpm {row['rpm_limit'] or '-'}, daily cap {daily_usd or '-'} USD, total cap {total_usd or '-'} USD",
        highlight=False,
    )
    err_console.print("Running servers apply it within gateway.key_cache_seconds.", style="dim")


@accounts.command("violations")
@click.argument("account")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def accounts_violations(ctx: click.Context, account: str, limit: int, as_json: bool) -> None:
    """List ACCOUNT's requests refused by the content policy, newest first (redacted)."""
    from .policy.audit import list_violations

    db = _db(ctx)
    rows = list_violations(db, acc.get_account(db, account)["id"], limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    table = Table("time", "key", "model", "category", "plugin", "reason", "excerpt", "sha256")
    for v in rows:
        table.add_row(
            v["created_at"][:19] + ("" if v["reviewed_at"] is None else " (reviewed)"),
            v["key_id"] or "-",
            v["model"],
            v["category"],
            v["plugin"],
            escape(v["reason"] or ""),
            escape(v["excerpt"]),
            v["content_sha256"][:12],
        )
    console.print(table)


if __name__ == "__main__":
    cli()
