"""The ``apimodels`` command line: serve, inspect the catalog and plugins, manage accounts
and keys. Every command has ``--help``. Errors print as one clean line (exit 1); set
``APIMODELS_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from .errors import APIError, ConfigError
from .store import accounts as acc

if TYPE_CHECKING:
    import socket

    from .catalog import Catalog
    from .ops.logs import LogFormat

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
    from .store.db import open_db

    if ctx.obj.get("remote") is not None:
        raise click.UsageError(
            f"'{ctx.command_path}' works on the server's database: run it there, without --url "
            "(with --url: accounts suspend/unsuspend/close, credits grant/adjust, keys revoke, "
            "orders refund, ledger check, admin-audit)"
        )
    return open_db(ctx.obj["db"])


def _remote(ctx: click.Context) -> Any:
    """The admin API client of ``--url``, or None to work on the local database."""
    return ctx.obj.get("remote")


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
    help="The SQLite database file, or a postgresql:// URL (env APIMODELS_DB).",
)
@click.option(
    "--url",
    envvar="APIMODELS_URL",
    default=None,
    help="Drive the admin API of the server at this URL instead of the local database "
    "(accounts suspend/unsuspend/close, credits grant/adjust, keys revoke, orders refund, "
    "ledger check, admin-audit). Env APIMODELS_URL.",
)
@click.option(
    "--admin-token",
    envvar="APIMODELS_ADMIN_TOKEN",
    default=None,
    help="The admin token for --url (docs/admin.md). Env APIMODELS_ADMIN_TOKEN.",
)
@click.pass_context
def cli(
    ctx: click.Context, registry: Path, db: str, url: str | None, admin_token: str | None
) -> None:
    """apimodels: one endpoint and one API key for many AI model providers."""
    from .store.db import is_url

    remote = None
    if url is not None:
        if not admin_token:
            raise click.UsageError("--url needs --admin-token (or APIMODELS_ADMIN_TOKEN)")
        from .admin.remote import RemoteAdmin

        remote = RemoteAdmin(url, admin_token)
        ctx.call_on_close(remote.close)
    ctx.obj = {"registry": registry, "db": db if is_url(db) else Path(db), "remote": remote}


def _storage_base(ctx: click.Context) -> Path:
    """What a relative local storage path is relative to (see ``server._storage_base``)."""
    from .store.db import is_url

    db = ctx.obj["db"]
    return Path(ctx.obj["registry"]).parent if is_url(db) else Path(db).parent


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--workers",
    envvar="APIMODELS_WORKERS",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Processes serving the port, each a whole gateway on the same database (about "
    "one per core; see docs/self-hosting.md, 'Workers'). Env APIMODELS_WORKERS.",
)
@click.option(
    "--sandbox",
    is_flag=True,
    help="Serve every provider from its simulator (no upstream keys needed; one worker).",
)
@click.option(
    "--access-log/--no-access-log", default=True, show_default=True, help="Log each request line."
)
@click.option(
    "--log-format",
    envvar="APIMODELS_LOG_FORMAT",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="text for a terminal; json: one object per line, with the request id, for a log "
    "collector. Env APIMODELS_LOG_FORMAT.",
)
@click.option(
    "--shutdown-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="On SIGTERM or Ctrl-C, seconds the calls in flight have to finish (and be billed); "
    "calls still running then are cut, and cost nothing.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    workers: int,
    sandbox: bool,
    access_log: bool,
    log_format: LogFormat,
    shutdown_timeout: float,
) -> None:
    """Run the gateway: one process, or --workers N sharing the port."""
    import contextlib
    import logging.config

    import uvicorn

    from .http.protocol import CorkedHttpToolsProtocol
    from .ops import log_config
    from .ops.memory import tune_for_serving
    from .server import assemble, listen_at

    if sandbox and workers > 1:
        raise click.UsageError(
            "--sandbox serves every provider from simulators that run inside the serving "
            "process, so it takes one worker: leave out --workers."
        )
    url = f"http://{host}:{port}"
    logging_config = log_config(log_format)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "access_log": access_log,
        "log_level": "info",
        "timeout_graceful_shutdown": shutdown_timeout,
        "http": CorkedHttpToolsProtocol,  # one write per small answer
    }
    if logging_config is not None:
        logging.config.dictConfig(logging_config)  # from the first line (uvicorn's: later)
        options["log_config"] = logging_config
    warn = _warner(log_format)
    if workers > 1:
        _serve_workers(ctx, url, host, workers, options, warn)
        return
    server = assemble(ctx.obj["registry"], ctx.obj["db"], sandbox=sandbox)
    for notice in server.gateway.notices:
        warn(notice)
    listen_at(server, url, host)
    key = _sandbox_key(server) if sandbox else None

    def announce() -> None:
        if key is None:
            console.print(f"apimodels listening on {url}/v1", highlight=False)
            return
        curl = (
            f"curl {url}/v1/chat/completions -H 'Authorization: Bearer {key}' "
            "-H 'Content-Type: application/json' "
            '-d \'{"model": "openai/gpt-6-luna", "messages": [{"role": "user", "content": "Hello"}]}\''
        )
        body = (
            "[bold yellow]SANDBOX MODE: every provider is a local simulator. "
            "Outputs are simulated, nothing is sent upstream.[/]\n\n"
            f"URL      {url}/v1\nAPI key  {key}  (demo account, $10 of simulated credit)"
        )
        if "replicate/veo-3.1-fast" in server.gateway.routes:
            body += (
                '\nVideo    POST /v1/tasks {"model": "replicate/veo-3.1-fast", "input": '
                '{"prompt": "waves", "duration": 4}}, then GET /v1/tasks/{id}'
            )
        if server.stripe_simulator is not None:
            body += (
                '\nTop-ups  POST /v1/topups {"amount_usd": "20"} answers a checkout_url: '
                "a simulated Stripe page"
            )
        if server.console is not None:
            body += f"\nConsole  {url}/console/  (its mail: {url}/console/dev/mail)"
        console.print(Panel(body, title="apimodels sandbox", expand=False), highlight=False)
        # Plain lines, so the command can be copied whole from any terminal.
        click.echo(f"Try it:\n{curl}\n")

    server.started_hooks.append(tune_for_serving)
    server.started_hooks.append(announce)
    # Listening before startup: a connection made once the URL is printed waits in the
    # backlog rather than being refused (uvicorn would bind only after startup).
    sock = _listening(host, port)
    running = uvicorn.Server(uvicorn.Config(server.app, **options))
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: Ctrl-C stops it
        running.run(sockets=[sock])
    if not running.started:  # its startup failed (logged): uvicorn.run's exit status
        sys.exit(3)


def _listening(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` and listening."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _sandbox_key(server: Any) -> str:
    from .providers.sandbox import demo_key

    return demo_key(server.db, server.ledger)


def _warner(log_format: LogFormat) -> Callable[[str], None]:
    """How startup warnings are shown: coloured for a terminal, a log line in JSON."""
    if log_format == "json":
        import logging

        return logging.getLogger("apimodels").warning
    return lambda notice: err_console.print(f"[yellow]warning:[/] {notice}", highlight=False)


def _serve_workers(
    ctx: click.Context,
    url: str,
    host: str,
    workers: int,
    options: dict[str, Any],
    warn: Callable[[str], None],
) -> None:
    """Serve with uvicorn's supervisor: ``workers`` processes share the listening socket,
    each assembles its own gateway (``server.worker_app``), and one that dies is replaced.
    The configuration is checked and the database migrated here first, once."""
    import shutil

    import uvicorn

    from .server import WORKER_ENV, assemble

    created = _metrics_folder()
    try:
        checked = assemble(ctx.obj["registry"], ctx.obj["db"])
        for notice in checked.gateway.notices:
            warn(notice)
        checked.db.conn.close()
        del checked
        os.environ[WORKER_ENV] = json.dumps(
            {
                "registry": str(Path(ctx.obj["registry"]).resolve()),
                "db": str(db if isinstance(db := ctx.obj["db"], str) else db.resolve()),
                "url": url,
                "host": host,
            }
        )
        console.print(f"apimodels listening on {url}/v1 ({workers} workers)", highlight=False)
        uvicorn.run("apimodels.server:worker_app", factory=True, workers=workers, **options)
    finally:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)


#: The files prometheus-client's multiprocess mode writes (a previous run's are stale).
_METRIC_FILES = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")


def _metrics_folder() -> str | None:
    """The folder where the workers' metrics meet (prometheus-client's multiprocess mode):
    the one PROMETHEUS_MULTIPROC_DIR names, emptied of a previous run's values, else a new
    temporary one, returned to be removed at exit."""
    import tempfile

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        for pattern in _METRIC_FILES:
            for stale in Path(folder).glob(pattern):
                stale.unlink()
        return None
    created = tempfile.mkdtemp(prefix="apimodels-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = created
    return created


@cli.command()
@click.pass_context
def plugins(ctx: click.Context) -> None:
    """List installed plugins: package, version, the hook-API versions each declares, the
    providers it serves and which the catalog enables. A plugin that could not be loaded is
    listed as failed or incompatible, and the reason printed below the table.

    Install one with a line in plugins.local.txt and `make sync` (see docs/self-hosting.md,
    "Installing a plugin"), or `pip install` into this environment."""
    from . import HOOK_API_VERSION
    from .plugins import InstalledPlugin, load_plugins, pm
    from .providers import default_hooks
    from .providers.runtime import registered_providers

    records = load_plugins()
    providers = registered_providers(pm)
    try:
        catalog = _catalog(ctx)
    except ConfigError:
        catalog = None
    # Each registered provider's enabled providers: itself, or its instances (``kind``).
    enabled: dict[str, list[str]] = {}
    for n, p in sorted(catalog.providers.items()) if catalog else []:
        if p.enabled:
            enabled.setdefault(p.kind or n, []).append(n)
    # Installed plugins (loaded or not), then those the core registers itself.
    rows: list[tuple[str, InstalledPlugin | None]] = [(r.name, r) for r in records]
    listed = {r.name for r in records}
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        if name and plugin is not default_hooks and name not in listed:
            rows.append((name, None))
    table = Table(
        "plugin", "package", "version", "hook API", "status", "providers", "enabled", "hooks",
        title=f"hook API of this apimodels: {HOOK_API_VERSION}",
    )  # fmt: skip
    for name, record in sorted(rows, key=lambda row: row[0]):
        served = sorted(n for n, (_, owner) in providers.items() if pm.get_name(owner) == name)
        plugin = pm.get_plugin(name)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or []) if plugin else []
        status = record.status if record else "loaded"
        table.add_row(
            name,
            (record and record.package) or "-",
            (record and record.version) or "-",
            (record.hook_api or "undeclared") if record else "built in",
            status if status == "loaded" else f"[red]{status}[/]",
            ", ".join(served) or "-",
            ", ".join(i for n in served for i in enabled.get(n, [])) or "-",
            ", ".join(hooks) or "-",
        )
    console.print(table)
    if catalog is not None:
        console.print(_upstream_keys(catalog, providers))
    for record in records:
        if record.error:
            err_console.print(f"[bold red]error:[/] {escape(record.error)}", highlight=False)


def _upstream_keys(catalog: Catalog, registered: dict[str, Any]) -> Table:
    """The enabled providers' key variables, and which are set in this environment (names
    only: a key's value is never shown). A running server logs each key it rests."""
    from .providers.runtime import key_variables

    table = Table("provider", "kind", "base URL", "keys (variable: set?, weight)")
    for name, config in sorted(catalog.providers.items()):
        kind = config.kind or name
        if not config.enabled or kind not in registered:
            continue
        spec = registered[kind][0]
        keys = ", ".join(
            f"{env}: {'set' if os.environ.get(env) else '[red]not set[/]'}, {weight}"
            for env, weight in key_variables(name, config, spec)
        )
        base_url = config.base_url or spec.base_url
        table.add_row(name, kind if kind != name else "-", base_url, keys)
    return table


@cli.command()
@click.pass_context
def policies(ctx: click.Context) -> None:
    """List installed safety policies and how registry.toml's [policies] sets them."""
    from .plugins import load_plugins, pm
    from .policy import registered_policies

    load_plugins()
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
@click.option(
    "--deprecated", is_flag=True, help="Only models with a deprecation or retirement date."
)
@click.option(
    "--check",
    is_flag=True,
    help="Exit 1 if a listed model (served or not) is past its retires_at (for CI or cron).",
)
@click.pass_context
def models(ctx: click.Context, as_json: bool, deprecated: bool, check: bool) -> None:
    """Print the catalog's served models with their prices (USD) and retirement dates."""
    catalog = _catalog(ctx)
    served = sorted(catalog.served_models().values(), key=lambda m: m.id)
    today = datetime.now(UTC).date()
    if check:  # every listed model: a disabled provider's may be enabled tomorrow
        listed = sorted(catalog.models.values(), key=lambda m: m.id)
        retired = [m for m in listed if m.retires_at and m.retires_at <= today]
        for m in retired:
            instead = f"; replace it with {m.replacement}" if m.replacement else ""
            console.print(f"[red]{m.id} retired on {m.retires_at}{instead}[/red]")
        if retired:
            raise SystemExit(1)
        dated = sum(1 for m in listed if m.retires_at)
        console.print(f"no listed model is past its retirement date ({dated} dated)")
        return
    if deprecated:
        served = [m for m in served if m.deprecated_at or m.retires_at]
    if as_json:
        out = [
            {
                "id": m.id,
                "provider": m.provider,
                "upstream": m.upstream,
                "modality": m.modality.value,
                "pricing": m.pricing.as_dict(),
                "deprecated_at": m.deprecated_at and m.deprecated_at.isoformat(),
                "retires_at": m.retires_at and m.retires_at.isoformat(),
                "replacement": m.replacement,
            }
            for m in served
        ]
        click.echo(json.dumps(out, indent=2))
        return
    if deprecated:
        table = Table("model", "deprecated", "retires", "replacement", "status")
        for m in served:
            table.add_row(
                m.id,
                str(m.deprecated_at or "-"),
                str(m.retires_at or "-"),
                m.replacement or "-",
                _lifecycle_status(m.retires_at, today),
            )
        console.print(table)
        return
    table = Table("model", "modality", "upstream", "pricing (USD)", "retires")
    for m in served:
        prices = "; ".join(
            f"{k}: "
            + (", ".join(f"{vk}={vv}" for vk, vv in v.items()) if isinstance(v, dict) else v)
            for k, v in m.pricing.as_dict().items()
        )
        table.add_row(m.id, m.modality.value, m.upstream, prices, str(m.retires_at or ""))
    console.print(table)


def _lifecycle_status(retires: date | None, today: date) -> str:
    if retires is None:
        return "deprecated"
    days = (retires - today).days
    return "retired (410)" if days <= 0 else f"retires in {days} days"


@cli.group()
def plugin() -> None:
    """Write provider plugins."""


@plugin.command("new")
@click.argument("name")
@click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to create the package folder apimodels-NAME.",
)
def plugin_new(name: str, directory: Path) -> None:
    """Create a provider plugin package for NAME: hooks for a toy upstream, its simulator,
    a catalog snippet and tests that run the conformance kit, all passing as made. The package
    depends on this apimodels' minor series and declares its hook-API version."""
    from .scaffold import new_plugin

    try:
        target = new_plugin(name, directory)
    except (ValueError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"created [bold]{target}[/]", highlight=False)
    click.echo(f"next: pip install -e '{target}[test]' && pytest {target}/tests")


@cli.group()
def accounts() -> None:
    """Manage accounts."""


@accounts.command("create")
@click.argument("email")
@click.pass_context
def accounts_create(ctx: click.Context, email: str) -> None:
    """Create an account for EMAIL."""
    db = _db(ctx)
    row = acc.create_account(db, email)
    _audit(db, "accounts.create", row["id"], after=row)
    console.print(f"created account [bold]{row['id']}[/] for {row['email']}", highlight=False)


@accounts.command("webhook-secret")
@click.argument("account")
@click.option("--rotate", is_flag=True, help="Replace the secret (the old one stops working).")
@click.pass_context
def accounts_webhook_secret(ctx: click.Context, account: str, rotate: bool) -> None:
    """Show the secret that signs ACCOUNT's task webhooks (created on first use).

    Deliveries carry webhook-id, webhook-timestamp and webhook-signature headers (the
    Standard Webhooks scheme); docs/api.md shows how to check them."""
    from .tasks.notify import account_webhook_secret

    db = _db(ctx)
    account_id = acc.get_account(db, account)["id"]
    secret = account_webhook_secret(db, account_id, rotate=rotate)
    if rotate:
        _audit(db, "accounts.webhook_secret_rotate", account_id)
    click.echo(secret)


@cli.group()
def tasks() -> None:
    """Look at long-running tasks (POST /v1/tasks)."""


@tasks.command("list")
@click.option("--account", help="Only this account's tasks (id or email).")
@click.option(
    "--status", type=click.Choice(["queued", "running", "succeeded", "failed", "canceled"])
)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.pass_context
def tasks_list(ctx: click.Context, account: str | None, status: str | None, limit: int) -> None:
    """List tasks, newest first."""
    from .billing.ledger import Ledger
    from .billing.money import format_usd
    from .tasks import TaskStore

    db = _db(ctx)
    account_id = acc.get_account(db, account)["id"] if account else None
    rows, _ = TaskStore(db, Ledger(db)).page(account_id, limit=limit, status=status)
    table = Table("id", "account", "model", "status", "created", "cost (USD)", "error")
    for t in rows:
        cost = format_usd(t["cost_micros"]) if t["cost_micros"] is not None else ""
        table.add_row(
            t["id"],
            t["account_id"],
            t["model"],
            t["status"],
            t["created_at"],
            cost,
            t["error_code"] or "",
        )
    console.print(table)


@tasks.command("delete")
@click.argument("task_id")
@click.pass_context
def tasks_delete(ctx: click.Context, task_id: str) -> None:
    """Delete TASK_ID's output files and its input and output text (any account's).

    Its billing record stays. An unfinished task is canceled first (cost 0); its job
    upstream is not told (the API's DELETE, run by the server, cancels it there too)."""
    import asyncio

    from .billing.ledger import Ledger
    from .errors import NotFound
    from .privacy import remove_task_content
    from .storage import load_secret, open_storage
    from .tasks import TaskStore
    from .tasks.store import TERMINAL, Finish

    db = _db(ctx)
    store = TaskStore(db, Ledger(db))
    task = store.load(task_id)
    if task is None:
        raise NotFound(f"No task found with id '{task_id}'.")
    if task["status"] not in TERMINAL:
        store.finish(task_id, Finish("canceled", error_code="deleted", error_message="deleted"))
    task = store.mark_deleted(task["account_id"], task_id)
    _audit(db, "tasks.delete", task_id, after={"status": task["status"], "deleted": True})
    config = _catalog(ctx).storage
    storage = open_storage(config, load_secret(db, config), base_dir=_storage_base(ctx))

    async def remove() -> int:
        try:
            if task["output_expired_at"] is not None:
                return 0
            return (await remove_task_content(store, storage, task, scan=True))[0]
        finally:
            await storage.aclose()

    files = asyncio.run(remove())
    console.print(
        f"deleted {task_id}: {files} output file(s) and its content; its billing record stays",
        highlight=False,
    )


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
    db = _db(ctx)
    row, key = acc.create_key(db, account, name)
    _audit(db, "keys.create", row["id"], after=row)
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
@click.option("--reason", default=None, help="Why (kept in the admin audit log).")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str, reason: str | None) -> None:
    """Revoke KEY_ID now (running servers notice within gateway.key_cache_seconds)."""
    from .admin.keys import revoke_key

    if remote := _remote(ctx):
        row = remote.call(
            "POST", f"/keys/{key_id}/revoke", {"reason": reason or "revoked by an operator"}
        )
    else:
        row = revoke_key(_ops(ctx), _admin(), key_id, reason)
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
    db = _db(ctx)
    new, key, old = acc.rotate_key(db, key_id, timedelta(hours=grace_hours))
    _audit(db, "keys.rotate", key_id, after={"old": old, "new": new})
    _show_new_key(new, key)
    err_console.print(f"old key {old['id']} works until {old['expires_at']}", highlight=False)


def _usd(value: str, *, signed: bool = False) -> int:
    """A USD amount typed by an operator -> micro-USD, exactly (no rounding allowed)."""
    from .admin.amounts import parse_usd

    try:
        return parse_usd(value, signed=signed, param="USD")
    except APIError as exc:
        raise click.BadParameter(exc.message) from None


def _ledger(ctx: click.Context) -> Any:
    from .billing.ledger import Ledger

    return Ledger(_db(ctx))


def _show_balance(ledger: Any, account_id: str) -> None:
    b = ledger.balance(account_id)
    _show_credited(
        {"account_id": account_id, "balance_micros": b.balance_micros, "held_micros": b.held_micros}
    )


def _show_credited(done: dict[str, Any]) -> None:
    """An account's balance, as a credits service function (or the admin API) answered it."""
    from .billing.money import format_usd

    balance, held = done["balance_micros"], done["held_micros"]
    console.print(
        f"{done['account_id']}: balance {format_usd(balance)} USD, pending holds "
        f"{format_usd(held)}, available {format_usd(balance - held)}",
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
    from .admin.credits import post_credits

    if remote := _remote(ctx):
        body = {"amount_usd": usd, "reason": reason, "idempotency_key": idempotency_key}
        done = remote.call("POST", f"/accounts/{account}/grants", body)
    else:
        done = post_credits(
            _ops(ctx), _admin(), account, _usd(usd), kind="grant", reason=reason,
            idempotency_key=idempotency_key,
        )  # fmt: skip
    if done["entry_id"] is None:
        err_console.print(
            "already granted (same idempotency key): nothing changed", highlight=False
        )
    _show_credited(done)


@credits.command("adjust", context_settings={"ignore_unknown_options": True})
@click.argument("account")
@click.argument("usd")
@click.option("--reason", required=True, help="Why (kept on the ledger entry).")
@click.pass_context
def credits_adjust(ctx: click.Context, account: str, usd: str, reason: str) -> None:
    """Add (+USD) or remove (-USD) credits from ACCOUNT to correct a billing error."""
    from .admin.credits import post_credits

    if remote := _remote(ctx):
        body = {"amount_usd": usd, "reason": reason}
        done = remote.call("POST", f"/accounts/{account}/adjustments", body)
    else:
        done = post_credits(
            _ops(ctx), _admin(), account, _usd(usd, signed=True), kind="adjustment",
            reason=reason,
        )  # fmt: skip
    _show_credited(done)


@credits.command("show")
@click.argument("account")
@click.pass_context
def credits_show(ctx: click.Context, account: str) -> None:
    """Show ACCOUNT's balance, pending holds and latest ledger entries."""
    from .billing.money import format_usd

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


def _admin() -> Any:
    """The operator at this command line, as the admin audit log names them."""
    from .admin import Actor

    return Actor(_actor())


def _audit(db: Any, action: str, target: str, **change: Any) -> None:
    """Append a CLI admin action that has no service function of its own to the admin
    audit log (``change``: reason, before, after)."""
    from .admin import audit

    audit.record(db, _admin(), action, target, **change)


def _ops(ctx: click.Context, *, stripe: bool = False) -> Any:
    """The admin service functions' view of this deployment (apimodels.admin); with
    ``stripe``, a Stripe client from [topups] and its secret key's variable."""
    from .admin import Operations
    from .billing.ledger import Ledger
    from .tasks import TaskStore

    db = _db(ctx)
    ledger = Ledger(db)
    try:
        catalog = _catalog(ctx)
    except ConfigError:
        if stripe:
            raise
        catalog = None
    gateway = None
    if stripe and catalog is not None:
        from .http.topups import env_secret
        from .topups.stripe_gateway import StripeGateway

        config = catalog.topups
        gateway = StripeGateway(env_secret(os.environ, config.secret_key_env), config)
    grace = catalog.privacy.close_grace_days if catalog is not None else 0
    return Operations(db, ledger, TaskStore(db, ledger), grace, stripe=gateway)


@cli.group()
def ledger() -> None:
    """Check the credits ledger."""


@ledger.command("check")
@click.pass_context
def ledger_check(ctx: click.Context) -> None:
    """Recompute every balance from the entries and check every hold; exit 1 on any problem.
    With --url, the server's check, orders included (GET /admin/v1/ledger/check)."""
    if remote := _remote(ctx):
        books = remote.call("GET", "/ledger/check")
        problems = books["ledger_problems"] + books["order_problems"]
    else:
        problems = _ledger(ctx).check()
    for p in problems:
        err_console.print(f"[red]problem:[/] {p}", highlight=False)
    if problems:
        sys.exit(1)
    console.print(
        "ledger ok: balances match their entries, every hold settled at most once", highlight=False
    )


@cli.command()
@click.argument("destination", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def backup(ctx: click.Context, destination: Path) -> None:
    """Copy the SQLite database to DESTINATION, consistent, while servers keep running
    (SQLite's online backup). For PostgreSQL, use pg_dump (docs/self-hosting.md)."""
    from .store.db import backup as backup_db

    if isinstance(ctx.obj["db"], str):
        raise click.UsageError("the database is PostgreSQL: back it up with pg_dump")
    if destination.exists():
        raise click.UsageError(f"{destination} exists; back up to a new file")
    pages = backup_db(ctx.obj["db"], destination)
    console.print(f"backed up {ctx.obj['db']} to {destination} ({pages} pages)", highlight=False)


def _show_status(row: dict[str, Any]) -> None:
    console.print(f"{row['id']} is now {row['status']} ({row['status_reason']})", highlight=False)


@accounts.command("suspend")
@click.argument("account")
@click.option("--reason", required=True, help="Shown to the account's API calls.")
@click.pass_context
def accounts_suspend(ctx: click.Context, account: str, reason: str) -> None:
    """Suspend ACCOUNT: every call answers 403 account_suspended; the balance is kept."""
    from .admin.accounts import suspend_account

    if remote := _remote(ctx):
        _show_status(remote.call("POST", f"/accounts/{account}/suspend", {"reason": reason}))
        return
    _show_status(suspend_account(_ops(ctx), _admin(), account, reason))


@accounts.command("unsuspend")
@click.argument("account")
@click.option("--reason", required=True, help="Why the suspension is lifted.")
@click.pass_context
def accounts_unsuspend(ctx: click.Context, account: str, reason: str) -> None:
    """Lift ACCOUNT's suspension; its policy violations so far are marked reviewed."""
    from .admin.accounts import unsuspend_account

    if remote := _remote(ctx):
        _show_status(remote.call("POST", f"/accounts/{account}/unsuspend", {"reason": reason}))
        return
    _show_status(unsuspend_account(_ops(ctx), _admin(), account, reason))


@accounts.command("close")
@click.argument("account")
@click.option("--reason", required=True, help="Why the account is closed.")
@click.option(
    "--export",
    "export_to",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="First write the account's export (JSON) to this file.",
)
@click.pass_context
def accounts_close(ctx: click.Context, account: str, reason: str, export_to: Path | None) -> None:
    """Close ACCOUNT for good (see docs/privacy.md, "Closing an account").

    Unfinished tasks are canceled (cost 0), every key is revoked, and the balance is
    forfeited per the Terms, recorded as a ledger entry: refund paid top-ups first with
    `apimodels orders refund`. Outputs are deleted after [privacy] close_grace_days; the
    email and key names are pseudonymized after billing_retention_days."""
    from .admin.accounts import close_account
    from .billing.money import format_usd

    if remote := _remote(ctx):
        if export_to is not None:
            raise click.UsageError("--export reads the server's files: run it there")
        closed = remote.call("POST", f"/accounts/{account}/close", {"reason": reason})
    else:
        _catalog(ctx)  # its [privacy] grace period is needed: a missing catalog stops here
        ops = _ops(ctx)
        if export_to is not None:
            _write_export(ctx, ops.db, account, export_to)
        closed = close_account(ops, _admin(), account, reason)
    forfeited = closed["forfeited_micros"]
    fate = (
        f"a balance of {format_usd(forfeited)} USD forfeited"
        if forfeited >= 0
        else f"a debt of {format_usd(-forfeited)} USD written off"
    )
    console.print(
        f"{closed['id']} is closed: keys revoked, {closed['tasks_canceled']} unfinished "
        f"task(s) canceled, {fate} (ledger entry); its outputs are deleted after "
        f"{closed['outputs_deleted_after']}",
        highlight=False,
    )
    err_console.print(
        "Running servers refuse its keys within gateway.key_cache_seconds.", style="dim"
    )


def _write_export(ctx: click.Context, db: Any, account: str, path: Path | None) -> None:
    from .billing.ledger import Ledger
    from .privacy import export_account
    from .storage import load_secret, open_storage
    from .tasks import TaskStore

    catalog = _catalog(ctx)
    config = catalog.storage
    store = open_storage(config, load_secret(db, config), base_dir=_storage_base(ctx))
    public_url = str(catalog.gateway.public_url or "")
    data = export_account(db, TaskStore(db, Ledger(db)), store, account, public_url=public_url)
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    if path is None:
        click.echo(text)
    else:
        path.write_text(text + "\n")
        err_console.print(f"export written to {path}", highlight=False)


@accounts.command("export")
@click.argument("account")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write to this file instead of printing.",
)
@click.pass_context
def accounts_export(ctx: click.Context, account: str, output: Path | None) -> None:
    """Print everything kept about ACCOUNT as JSON: the account, keys (never their hashes),
    usage, ledger, tasks, top-up orders, policy violations, and links (valid 7 days) to
    the output files still held."""
    db = _db(ctx)
    _write_export(ctx, db, account, output)
    _audit(db, "accounts.export", acc.get_account(db, account)["id"])


@accounts.command("retention")
@click.argument("account")
@click.argument("days", required=False, type=click.IntRange(min=0))
@click.option("--default", "use_default", is_flag=True, help="Use storage.retention_days again.")
@click.pass_context
def accounts_retention(
    ctx: click.Context, account: str, days: int | None, use_default: bool
) -> None:
    """Keep ACCOUNT's outputs DAYS days after their task ended (0: until deleted)."""
    if (days is None) == (not use_default):
        raise click.UsageError("give DAYS or --default")
    db = _db(ctx)
    before = acc.get_account(db, account)["output_retention_days"]
    row = acc.set_output_retention(db, account, None if use_default else days)
    _audit(
        db, "accounts.retention", row["id"],
        before={"output_retention_days": before},
        after={"output_retention_days": row["output_retention_days"]},
    )  # fmt: skip
    days_set = row["output_retention_days"]
    console.print(
        f"{row['id']}: outputs kept "
        + (
            "as storage.retention_days says"
            if days_set is None
            else ("until deleted" if days_set == 0 else f"{days_set} days")
        ),
        highlight=False,
    )


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
    db = _db(ctx)
    row = acc.set_key_limits(
        db,
        key_id,
        rpm=rpm,
        daily_cap_micros=_usd(daily_usd) if daily_usd else None,
        total_cap_micros=_usd(total_usd) if total_usd else None,
    )
    limits = ("rpm_limit", "daily_cap_micros", "total_cap_micros")
    _audit(db, "keys.limit", key_id, after={k: row[k] for k in limits})
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


@cli.group()
def storage() -> None:
    """Where task outputs are kept (the [storage] table of the catalog)."""


@storage.command("check")
@click.pass_context
def storage_check(ctx: click.Context) -> None:
    """Store, download and delete a test object with the configured storage (local or R2/S3)."""
    import asyncio

    from .storage import StorageError, load_secret, open_storage
    from .storage.check import check

    config = _catalog(ctx).storage
    db = _db(ctx)
    store = open_storage(config, load_secret(db, config), base_dir=_storage_base(ctx))
    try:
        console.print(f"ok: {asyncio.run(check(store))}", highlight=False)
    except StorageError as exc:
        err_console.print(f"[bold red]error:[/] storage check failed: {exc}", highlight=False)
        sys.exit(1)
    finally:
        asyncio.run(store.aclose())


@storage.command("sweep")
@click.option("--dry-run", is_flag=True, help="Count what would be removed; change nothing.")
@click.pass_context
def storage_sweep(ctx: click.Context, dry_run: bool) -> None:
    """Remove what has outlived its retention (docs/privacy.md): task outputs past
    storage.retention_days, closed accounts' outputs, old audit excerpts and idempotent
    answers; pseudonymize closed accounts past the billing retention. Every server does
    this every storage.sweep_interval_minutes; safe to run beside them."""
    import asyncio

    from .billing.ledger import Ledger
    from .http.idempotency import TTL
    from .privacy import Sweeper
    from .storage import load_secret, open_storage
    from .tasks import TaskStore

    catalog = _catalog(ctx)
    db = _db(ctx)
    ledger = Ledger(db)
    config = catalog.storage
    store = open_storage(config, load_secret(db, config), base_dir=_storage_base(ctx))
    sweeper = Sweeper(
        db, ledger, TaskStore(db, ledger), store, config, catalog.privacy, idempotency_ttl=TTL
    )

    async def run() -> Any:
        try:
            return await sweeper.sweep(dry_run=dry_run)
        finally:
            await store.aclose()

    report = asyncio.run(run())
    table = Table("", "would be removed" if dry_run else "removed")
    for name, value in report.as_dict().items():
        if name != "dry_run":
            table.add_row(name.replace("_", " "), str(value))
    console.print(table)


# --- the operator's side: admin tokens, operators, the admin audit log ----------------------


@cli.group("admin-tokens")
def admin_tokens() -> None:
    """Tokens of the admin HTTP API (/admin/v1/, docs/admin.md): shown once, stored hashed."""


@admin_tokens.command("create")
@click.option(
    "--scope",
    type=click.Choice(["read", "write"]),
    required=True,
    help="read: GET only; write: every admin operation.",
)
@click.option("--name", default="", help="A label: who or what uses it.")
@click.pass_context
def admin_tokens_create(ctx: click.Context, scope: str, name: str) -> None:
    """Create an admin token and print it once."""
    from .admin.tokens import create_token

    row, token = create_token(_db(ctx), _admin(), name, scope)
    console.print(f"admin token [bold]{row['id']}[/] ({scope}):", highlight=False)
    click.echo(token)
    err_console.print("Store it now: it is not shown again.", style="dim")


@admin_tokens.command("list")
@click.pass_context
def admin_tokens_list(ctx: click.Context) -> None:
    """List admin tokens (never the tokens themselves)."""
    from .admin.tokens import list_tokens

    table = Table("id", "name", "scope", "hint", "created", "by", "revoked")
    for t in list_tokens(_db(ctx)):
        table.add_row(
            t["id"], t["name"] or "", t["scope"], t["hint"], t["created_at"][:19],
            t["created_by"], (t["revoked_at"] or "")[:19],
        )  # fmt: skip
    console.print(table)


@admin_tokens.command("revoke")
@click.argument("token_id")
@click.option("--reason", default=None, help="Why (kept in the admin audit log).")
@click.pass_context
def admin_tokens_revoke(ctx: click.Context, token_id: str, reason: str | None) -> None:
    """Revoke TOKEN_ID: every server refuses it from its next request."""
    from .admin.tokens import revoke_token

    row = revoke_token(_db(ctx), _admin(), token_id, reason)
    console.print(f"revoked {row['id']} at {row['revoked_at']}", highlight=False)


@cli.group()
def admins() -> None:
    """Operators: the people who run this service (the Console's admin role)."""


@admins.command("create")
@click.argument("email")
@click.pass_context
def admins_create(ctx: click.Context, email: str) -> None:
    """Make EMAIL an operator."""
    from .admin.operators import create_admin

    row = create_admin(_db(ctx), _admin(), email)
    console.print(f"operator [bold]{row['id']}[/]: {row['email']}", highlight=False)


@admins.command("list")
@click.pass_context
def admins_list(ctx: click.Context) -> None:
    """List the operators."""
    from .admin.operators import list_admins

    table = Table("id", "email", "since", "by")
    for a in list_admins(_db(ctx)):
        table.add_row(a["id"], a["email"], a["created_at"][:19], a["created_by"])
    console.print(table)


@admins.command("remove")
@click.argument("operator")
@click.pass_context
def admins_remove(ctx: click.Context, operator: str) -> None:
    """OPERATOR (email or adm_ id) is an operator no more."""
    from .admin.operators import remove_admin

    row = remove_admin(_db(ctx), _admin(), operator)
    console.print(f"removed operator {row['id']}", highlight=False)


@cli.command("admin-audit")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--target", default=None, help="Only actions on this account, key, order...")
@click.option("--action", default=None, help="Only this action (accounts.suspend...).")
@click.option("--actor", default=None, help="Only this actor (admin-token:atk_..., cli:USER).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "jsonl", "csv"]),
    default="table",
    show_default=True,
    help="jsonl or csv to export.",
)
@click.pass_context
def admin_audit(
    ctx: click.Context,
    limit: int,
    target: str | None,
    action: str | None,
    actor: str | None,
    fmt: str,
) -> None:
    """The admin audit log, newest first: who did what, when, why, before and after."""
    from .admin import audit

    if remote := _remote(ctx):
        query = {"target": target, "action": action, "actor": actor}
        rows, before = [], None
        while len(rows) < limit:  # pages of at most 100, newest first
            size = min(100, limit - len(rows))
            page = remote.call(
                "GET", "/audit", params={**query, "limit": size, "before_id": before}
            )
            rows += page["data"]
            if not page["has_more"]:
                break
            before = rows[-1]["id"]
    else:
        rows, _ = audit.entries(_db(ctx), limit=limit, target=target, action=action, actor=actor)
    if fmt != "table":
        click.echo(audit.export(rows, fmt), nl=False)
        return
    table = Table("id", "time", "actor", "action", "target", "reason")
    for r in rows:
        table.add_row(
            str(r["id"]), r["created_at"][:19], r["actor"], r["action"], r["target"],
            escape(r["reason"] or ""),
        )  # fmt: skip
    console.print(table)


# --- top-up orders: review and correct billing errors -------------------------------------


@cli.group()
def orders() -> None:
    """Review top-up orders, refund them and reconcile them with the ledger."""


def _order_row(o: dict[str, Any]) -> list[str]:
    from decimal import Decimal

    from .billing.money import format_usd

    charged = f"{Decimal(o['amount_minor']) / 100:.2f} {o['currency'].upper()}"
    return [
        o["id"],
        o["created_at"][:19],
        o["account_id"],
        o["method"],
        o["status"],
        format_usd(o["amount_usd_micros"]),
        charged,
        o["rate"] or "",
        format_usd(o["refunded_usd_micros"]),
    ]


@orders.command("list")
@click.option("--account", default=None, help="Only this account's orders (id or email).")
@click.option("--status", default=None, help="Only orders in this status (open, paid, failed...).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.pass_context
def orders_list(ctx: click.Context, account: str | None, status: str | None, limit: int) -> None:
    """List top-up orders, newest first."""
    from .topups.orders import list_orders

    db = _db(ctx)
    account_id = acc.get_account(db, account)["id"] if account else None
    table = Table(
        "order", "created", "account", "method", "status", "USD", "charged", "rate", "refunded USD"
    )
    for o in list_orders(db, account_id, status, limit):
        table.add_row(*_order_row(o))
    console.print(table)


@orders.command("show")
@click.argument("order_id")
@click.pass_context
def orders_show(ctx: click.Context, order_id: str) -> None:
    """Show ORDER_ID with its exchange rate and its ledger entries, as JSON."""
    from .http.topups import render_order
    from .topups.orders import get_order, order_entries

    db = _db(ctx)
    order = get_order(db, order_id)
    body = render_order(order, order_entries(db, order_id))
    body.update(account_id=order["account_id"], stripe_session_id=order["stripe_session_id"])
    body["stripe_payment_intent"] = order["stripe_payment_intent"]
    click.echo(json.dumps(body, indent=2))


@orders.command("refund")
@click.argument("order_id")
@click.option("--reason", required=True, help="Why (kept on the ledger entry and in Stripe).")
@click.option(
    "--usd", default=None, help="Credits to refund in USD (default: all not yet refunded)."
)
@click.option(
    "--stripe-reason",
    type=click.Choice(["requested_by_customer", "duplicate", "fraudulent"]),
    default="requested_by_customer",
    show_default=True,
    help="The reason Stripe records.",
)
@click.pass_context
def orders_refund(
    ctx: click.Context, order_id: str, reason: str, usd: str | None, stripe_reason: str
) -> None:
    """Refund a paid top-up through Stripe and remove its credits (the balance may go negative).

    The Stripe refund and the ledger entry are each made once: running the command again
    after a failure, or Stripe's charge.refunded webhook, does not refund or debit twice.
    """
    import asyncio
    from decimal import Decimal

    from .admin.orders import refund_order
    from .billing.money import format_usd

    amount = _usd(usd) if usd is not None else None
    if remote := _remote(ctx):
        body = {"reason": reason, "amount_usd": usd, "stripe_reason": stripe_reason}
        done = remote.call("POST", f"/orders/{order_id}/refund", body)
    else:
        done = asyncio.run(
            refund_order(
                _ops(ctx, stripe=True), _admin(), order_id, reason, amount_micros=amount,
                stripe_reason=stripe_reason,
            )
        )  # fmt: skip
    debited = done["debited_micros"]
    console.print(
        f"refunded {Decimal(done['refunded_minor_now']) / 100:.2f} {done['currency'].upper()} "
        f"({done['stripe_refund_id']}); "
        + (
            f"removed {format_usd(debited)} USD of credits"
            if debited
            else "the credits were already removed (Stripe's webhook came first)"
        ),
        highlight=False,
    )
    if remote := _remote(ctx):
        _show_credited(
            {
                **remote.call("GET", f"/accounts/{done['account_id']}"),
                "account_id": done["account_id"],
            }
        )
    else:
        _show_balance(_ledger(ctx), done["account_id"])


@orders.command("reconcile")
@click.option(
    "--stripe",
    "ask_stripe",
    is_flag=True,
    help="Also ask Stripe about recent unpaid orders (finds lost webhooks).",
)
@click.option(
    "--days",
    default=30,
    show_default=True,
    type=click.IntRange(1, 3650),
    help="With --stripe: how far back to look.",
)
@click.pass_context
def orders_reconcile(ctx: click.Context, ask_stripe: bool, days: int) -> None:
    """Compare every order with its ledger entries; list each mismatch and exit 1 if any."""
    from datetime import UTC, datetime

    from .topups.orders import reconcile, reconcile_with_stripe

    db = _db(ctx)
    problems = reconcile(db)
    if ask_stripe:
        from .http.topups import env_secret
        from .topups.stripe_gateway import StripeGateway

        config = _catalog(ctx).topups
        stripe = StripeGateway(env_secret(os.environ, config.secret_key_env), config)
        since = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="microseconds")
        problems += reconcile_with_stripe(db, stripe.retrieve_session, since)
    for p in problems:
        err_console.print(f"[red]mismatch:[/] {p}", highlight=False)
    if problems:
        sys.exit(1)
    console.print("orders ok: every paid order credited once, refunds recorded", highlight=False)
