"""Accounts and API keys.

A key looks like ``amk_<prefix><secret><checksum>`` (58 characters, base62 after ``amk_``):
an 8-character non-secret prefix (indexed, used to find the row), a 40-character secret and
the CRC32 of everything before it in 6 base62 characters, as GitHub's tokens carry. The
distinct ``amk_`` lets secret scanners find a leaked key, and the checksum lets them (and
this server, before any database read) tell a real key from a look-alike offline; see
docs/console.md, "Key format". Keys made before that format, ``sk-am-<prefix><secret>``
(54 characters), keep working. Only the SHA-256 of the whole key is stored; the comparison
is constant-time. Keys are random and long, so a fast hash is enough: nobody can
brute-force 238 bits.

Rotation makes a new key and lets the old one work for a grace period (registry.toml
``gateway.key_rotation_grace_hours``, 24 h by default), so deployed clients can be switched.
Revocation is immediate in the process that revokes; other processes see it within
``gateway.key_cache_seconds`` (5 s by default), the lifetime of an authenticated key in the
in-memory cache that keeps the database off the request path.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import string
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

from ..errors import AuthenticationError, NotFound, PermissionDenied
from .db import off_loop, utcnow

KEY_PREFIX = "amk_"
LEGACY_KEY_PREFIX = "sk-am-"  # keys made before the checksummed format
_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase  # base62
_PREFIX_LEN = 8
_SECRET_LEN = 40
_CHECKSUM_LEN = 6  # 62**6 > 2**32: a CRC32 always fits
KEY_LEN = len(KEY_PREFIX) + _PREFIX_LEN + _SECRET_LEN + _CHECKSUM_LEN
_LEGACY_KEY_LEN = len(LEGACY_KEY_PREFIX) + _PREFIX_LEN + _SECRET_LEN


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def _base62(n: int, width: int) -> str:
    digits = []
    for _ in range(width):
        n, d = divmod(n, 62)
        digits.append(_ALPHABET[d])
    return "".join(reversed(digits))


def key_checksum(body: str) -> str:
    """The 6 base62 characters that end a key: the CRC32 of the key before them."""
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LEN)


def well_formed(key: str) -> bool:
    """A key of the current format whose checksum holds (no database needed), or one of the
    legacy format (which has no checksum)."""
    if len(key) == KEY_LEN and key.startswith(KEY_PREFIX):
        body = key[:-_CHECKSUM_LEN]
        return body[len(KEY_PREFIX) :].isalnum() and key_checksum(body) == key[-_CHECKSUM_LEN:]
    return len(key) == _LEGACY_KEY_LEN and key.startswith(LEGACY_KEY_PREFIX)


def _key_prefix(key: str) -> str:
    """The lookup prefix of a well-formed key of either format."""
    start = len(KEY_PREFIX) if key.startswith(KEY_PREFIX) else len(LEGACY_KEY_PREFIX)
    return key[start : start + _PREFIX_LEN]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def create_account(db: sqlite_utils.Database, email: str) -> dict[str, Any]:
    email = email.strip().lower()
    if "@" not in email:
        raise ValueError(f"not an email address: {email!r}")
    if db.execute("SELECT 1 FROM accounts WHERE email = ?", [email]).fetchone():
        raise ValueError(f"an account with email {email} already exists")
    row = {"id": "acct_" + _random(16), "email": email, "status": "active", "created_at": utcnow()}
    db["accounts"].insert(row)
    return row


def get_account(db: sqlite_utils.Database, ref: str) -> dict[str, Any]:
    """An account by id or email."""
    rows = list(db.query("SELECT * FROM accounts WHERE id = ? OR email = ?", [ref, ref.lower()]))
    if not rows:
        raise NotFound(f"no account {ref!r}")
    return rows[0]


def create_key(
    db: sqlite_utils.Database, account: str, name: str = ""
) -> tuple[dict[str, Any], str]:
    """Make a key for an account (id or email); return its row and the key, shown once."""
    acct = get_account(db, account)
    if acct["status"] == "closed":
        raise ValueError(f"account {acct['id']} is closed")
    prefix = _random(_PREFIX_LEN)
    body = KEY_PREFIX + prefix + _random(_SECRET_LEN)
    key = body + key_checksum(body)
    row = {
        "id": "key_" + _random(16),
        "account_id": acct["id"],
        "name": name,
        "prefix": prefix,
        "hash": _hash(key),
        "created_at": utcnow(),
        "expires_at": None,
        "revoked_at": None,
        "replaced_by": None,
        "key_format": KEY_PREFIX,
    }
    db["api_keys"].insert(row)
    return _public(row), key


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "hash"}
    out["hint"] = (row.get("key_format") or LEGACY_KEY_PREFIX) + row["prefix"] + "…"
    return out


def list_keys(db: sqlite_utils.Database, account: str) -> list[dict[str, Any]]:
    acct = get_account(db, account)
    rows = db.query("SELECT * FROM api_keys WHERE account_id = ? ORDER BY created_at", [acct["id"]])
    return [_public(r) for r in rows]


def _key_row(db: sqlite_utils.Database, key_id: str) -> dict[str, Any]:
    rows = list(db.query("SELECT * FROM api_keys WHERE id = ?", [key_id]))
    if not rows:
        raise NotFound(f"no key {key_id!r}")
    return rows[0]


def revoke_key(db: sqlite_utils.Database, key_id: str) -> dict[str, Any]:
    row = _key_row(db, key_id)
    if row["revoked_at"] is None:
        db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", [utcnow(), key_id])
    return _public(_key_row(db, key_id))


def rotate_key(
    db: sqlite_utils.Database, key_id: str, grace: timedelta
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """New key with the old one's account and name; the old key expires after ``grace``.

    Returns (new key row, new key, old key row).
    """
    old = _key_row(db, key_id)
    if old["revoked_at"] is not None:
        raise ValueError(f"key {key_id} is revoked; create a new key instead")
    new_row, new_key = create_key(db, old["account_id"], old["name"] or "")
    expires = datetime.now(UTC) + grace
    if old["expires_at"] and datetime.fromisoformat(old["expires_at"]) < expires:
        expires = datetime.fromisoformat(old["expires_at"])  # rotation never extends a key
    db.execute(
        "UPDATE api_keys SET expires_at = ?, replaced_by = ? WHERE id = ?",
        [expires.isoformat(timespec="microseconds"), new_row["id"], key_id],
    )  # autocommit, as every statement outside ``with db.conn:`` (both backends)
    return new_row, new_key, _public(_key_row(db, key_id))


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's optional limits (None: no limit)."""

    rpm: int | None
    daily_cap_micros: int | None
    total_cap_micros: int | None

    @property
    def caps_spending(self) -> bool:
        """A daily or total spending cap is set."""
        return self.daily_cap_micros is not None or self.total_cap_micros is not None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the account and key behind a valid Authorization header."""

    account_id: str
    key_id: str
    account_status: str
    status_reason: str | None
    expires_at: float | None
    checked_at: float
    limits: KeyLimits | None = None


def _bearer(authorization: str | None) -> tuple[str, str, float]:
    """The key of a bearer Authorization header, its digest, and now (401 when absent or
    malformed)."""
    if not authorization:
        raise AuthenticationError(
            "Missing API key: send it as 'Authorization: Bearer <key>'", code="missing_api_key"
        )
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise AuthenticationError("Malformed Authorization header: use 'Bearer <key>'")
    return key, _hash(key), time.time()


class KeyStore:
    """Authenticates bearer keys with a short-lived in-memory cache (see module docstring)."""

    def __init__(self, db: sqlite_utils.Database, cache_seconds: float = 5.0) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self._cache: dict[str, Principal] = {}

    def authenticate(self, authorization: str | None) -> Principal:
        """Who calls with this Authorization header (401 or 403 otherwise): from the cache,
        else from the database, read here (the server uses :meth:`check`)."""
        key, digest, now = _bearer(authorization)
        principal = self._fresh(digest, now) or self._lookup(key, digest, now)
        return self._admitted(principal, digest, now)

    async def check(self, authorization: str | None) -> Principal:
        """:meth:`authenticate` for a request: on a cache miss (once per key per
        ``cache_seconds``, and for every unknown key) PostgreSQL is read on a worker thread,
        so that its round trip never stops the event loop."""
        key, digest, now = _bearer(authorization)
        principal = self._fresh(digest, now)
        if principal is None:
            principal = await off_loop(self.db, self._lookup, key, digest, now)
        return self._admitted(principal, digest, now)

    def _fresh(self, digest: str, now: float) -> Principal | None:
        principal = self._cache.get(digest)
        if principal is None or now - principal.checked_at > self.cache_seconds:
            return None
        return principal

    def _admitted(self, principal: Principal, digest: str, now: float) -> Principal:
        if principal.expires_at is not None and now >= principal.expires_at:
            self._cache.pop(digest, None)
            raise AuthenticationError("This API key has expired", code="expired_api_key")
        if principal.account_status == "suspended":
            raise PermissionDenied(
                f"This account is suspended: {principal.status_reason or 'contact support'}",
                code="account_suspended",
            )
        if principal.account_status != "active":
            raise AuthenticationError("This account is closed", code="account_closed")
        return principal

    def _lookup(self, key: str, digest: str, now: float) -> Principal:
        # Never echo the key (not even in part) in an error.
        invalid = AuthenticationError("Invalid API key")
        if not well_formed(key):  # a typo or a look-alike: no database read
            raise invalid
        prefix = _key_prefix(key)
        row = self.db.execute(
            "SELECT k.id, k.hash, k.expires_at, k.revoked_at, a.id, a.status, a.status_reason,"
            " k.rpm_limit, k.daily_cap_micros, k.total_cap_micros"
            " FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.prefix = ?",
            [prefix],
        ).fetchone()
        if row is None or not hmac.compare_digest(row[1], digest):
            self._cache.pop(digest, None)
            raise invalid
        if row[3] is not None:
            self._cache.pop(digest, None)
            raise AuthenticationError("This API key has been revoked", code="revoked_api_key")
        limits = (
            KeyLimits(row[7], row[8], row[9]) if any(v is not None for v in row[7:10]) else None
        )
        principal = Principal(row[4], row[0], row[5], row[6], _epoch(row[2]), now, limits)
        self._cache[digest] = principal
        return principal

    def forget(self) -> None:
        """Drop the cache (after a revoke in this process)."""
        self._cache.clear()

    def forget_account(self, account_id: str) -> None:
        """Drop one account's cached keys (after its status changed in this process)."""
        self._cache = {d: p for d, p in self._cache.items() if p.account_id != account_id}


# --- status ------------------------------------------------------------------------------

STATUSES = ("active", "suspended", "closed")


def set_status(db: sqlite_utils.Database, account: str, status: str, reason: str) -> dict[str, Any]:
    """Suspend, unsuspend (active) or close an account. Closing revokes every key and is final."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    if not reason:
        raise ValueError("give a --reason")
    acct = get_account(db, account)
    if acct["status"] == "closed":
        raise ValueError(f"account {acct['id']} is closed")
    now = utcnow()
    with db.conn:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "UPDATE accounts SET status = ?, status_reason = ?, status_changed_at = ? WHERE id = ?",
            [status, reason, now, acct["id"]],
        )
        if status == "closed":
            close_op(db.conn, acct["id"], reason, now)
    return get_account(db, acct["id"])


# --- closing and personal data (apimodels.privacy) ------------------------------------------


def close_op(c: sqlite3.Connection, account_id: str, reason: str, now: str) -> bool:
    """Close an open account and revoke its keys, inside the caller's transaction; False if
    it was closed already. ``closed_at`` starts the grace period of its outputs."""
    closed = c.execute(
        "UPDATE accounts SET status = 'closed', status_reason = ?, closed_at = ?"
        " WHERE id = ? AND closed_at IS NULL",
        (reason, now, account_id),
    ).rowcount
    c.execute(
        "UPDATE api_keys SET revoked_at = ? WHERE account_id = ? AND revoked_at IS NULL",
        (now, account_id),
    )
    return closed == 1


def closed_before(db: sqlite_utils.Database, moment: str, step: str) -> list[str]:
    """Accounts closed before ``moment`` that have not had ``step`` yet
    (``outputs_deleted_at`` or ``pseudonymized_at``)."""
    if step not in ("outputs_deleted_at", "pseudonymized_at"):
        raise ValueError(f"unknown step {step!r}")
    return [
        r[0]
        for r in db.execute(
            f"SELECT id FROM accounts WHERE closed_at IS NOT NULL AND closed_at < ?"
            f" AND {step} IS NULL ORDER BY closed_at",
            [moment],
        ).fetchall()
    ]


def outputs_deleted(db: sqlite_utils.Database, account_id: str, now: str) -> None:
    """A closed account's outputs are all gone (its grace period ended)."""
    with db.conn:
        db.execute(
            "UPDATE accounts SET outputs_deleted_at = ? WHERE id = ? AND outputs_deleted_at IS NULL",
            [now, account_id],
        )


def pseudonymize(db: sqlite_utils.Database, account_id: str, now: str) -> bool:
    """Replace what names a closed account's holder: the email becomes
    ``{id}@closed.invalid``, key names and the status reason go, the webhook secret too.
    Ids, amounts and times stay (the billing records). False when already done."""
    with db.conn:
        db.execute("BEGIN IMMEDIATE")
        done = db.execute(
            "UPDATE accounts SET email = id || '@closed.invalid', status_reason = 'closed',"
            " webhook_secret = NULL, pseudonymized_at = ?"
            " WHERE id = ? AND closed_at IS NOT NULL AND pseudonymized_at IS NULL",
            [now, account_id],
        ).rowcount
        db.execute("UPDATE api_keys SET name = '' WHERE account_id = ?", [account_id])
        # The Console's sessions name the holder's browser and address; the password goes.
        db.execute("DELETE FROM console_sessions WHERE account_id = ?", [account_id])
        db.execute("UPDATE accounts SET password_hash = NULL WHERE id = ?", [account_id])
    return done == 1


def set_output_retention(
    db: sqlite_utils.Database, account: str, days: int | None
) -> dict[str, Any]:
    """Keep ACCOUNT's outputs ``days`` days (0: until deleted; None: the server's default)."""
    if days is not None and days < 0:
        raise ValueError("retention is a number of days >= 0")
    acct = get_account(db, account)
    with db.conn:
        db.execute("UPDATE accounts SET output_retention_days = ? WHERE id = ?", [days, acct["id"]])
    return get_account(db, acct["id"])


def set_key_limits(
    db: sqlite_utils.Database,
    key_id: str,
    *,
    rpm: int | None,
    daily_cap_micros: int | None,
    total_cap_micros: int | None,
) -> dict[str, Any]:
    """Set (or, with None, remove) a key's rate limit and spending caps."""
    _key_row(db, key_id)
    db.execute(
        "UPDATE api_keys SET rpm_limit = ?, daily_cap_micros = ?, total_cap_micros = ? WHERE id = ?",
        [rpm, daily_cap_micros, total_cap_micros, key_id],
    )
    return _public(_key_row(db, key_id))


def export_account(db: sqlite_utils.Database, account: str) -> dict[str, Any]:
    """Everything stored about an account, as JSON-able data (never key hashes)."""
    acct = get_account(db, account)
    acct.pop("password_hash", None)  # a credential (the Console's), not data about the holder
    aid = acct["id"]

    def rows(sql: str) -> list[dict[str, Any]]:
        return list(db.query(sql, [aid]))

    return {
        "account": acct,
        "keys": [
            _public(k)
            for k in rows("SELECT * FROM api_keys WHERE account_id = ? ORDER BY created_at")
        ],
        "ledger_entries": rows("SELECT * FROM ledger_entries WHERE account_id = ? ORDER BY id"),
        "usage": rows("SELECT * FROM usage WHERE account_id = ? ORDER BY created_at"),
        "exported_at": utcnow(),
    }
