"""Accounts and keys: hashed at rest, revocable, rotatable, cached for a bounded time."""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import threading
import time
import zlib
from datetime import timedelta
from pathlib import Path

import pytest
import sqlite_utils

from apimodels.errors import AuthenticationError, PermissionDenied
from apimodels.store.accounts import (
    KeyStore,
    create_account,
    create_key,
    key_checksum,
    list_keys,
    revoke_key,
    rotate_key,
    well_formed,
)
from apimodels.store.db import Checkpointer, open_db


@pytest.fixture
def db(tmp_path: Path) -> sqlite_utils.Database:
    return open_db(tmp_path / "test.db")


def test_keys_are_stored_only_as_hashes(db: sqlite_utils.Database) -> None:
    create_account(db, "a@example.com")
    row, key = create_key(db, "a@example.com", "laptop")
    assert re.fullmatch(r"amk_[0-9A-Za-z]{54}", key)  # the documented scanner pattern
    stored = db["api_keys"].get(row["id"])
    assert stored["hash"] == hashlib.sha256(key.encode()).hexdigest()
    dump = "\n".join(db.iterdump())
    assert key not in dump
    assert key[len("amk_") + 8 : -6] not in dump  # the secret part appears nowhere
    assert "hash" not in row and row["hint"] == f"amk_{row['prefix']}…"


def test_a_key_carries_a_checksum_that_tells_it_offline(db: sqlite_utils.Database) -> None:
    create_account(db, "sum@example.com")
    keys = [create_key(db, "sum@example.com")[1] for _ in range(50)]
    assert all(well_formed(k) and key_checksum(k[:-6]) == k[-6:] for k in keys)
    # Any one character changed (a typo, a look-alike) fails the checksum.
    for key in keys:
        i = 4 + secrets.randbelow(len(key) - 4)
        other = "0" if key[i] != "0" else "1"
        assert not well_formed(key[:i] + other + key[i + 1 :])
    assert zlib.crc32(keys[0][:-6].encode()) == int_base62(keys[0][-6:])


def int_base62(text: str) -> int:
    alphabet = string.digits + string.ascii_uppercase + string.ascii_lowercase
    n = 0
    for ch in text:
        n = n * 62 + alphabet.index(ch)
    return n


def test_legacy_keys_keep_working(db: sqlite_utils.Database) -> None:
    """A key made in the old ``sk-am-`` format (54 characters, no checksum) still
    authenticates, and its hint keeps its own prefix."""
    acct = create_account(db, "old@example.com")
    legacy = "sk-am-" + "Lgcy0001" + "s" * 40
    db["api_keys"].insert(
        {
            "id": "key_legacy",
            "account_id": acct["id"],
            "name": "old",
            "prefix": "Lgcy0001",
            "hash": hashlib.sha256(legacy.encode()).hexdigest(),
            "created_at": "2026-01-01T00:00:00+00:00",
        }
    )
    assert KeyStore(db).authenticate(f"Bearer {legacy}").key_id == "key_legacy"
    assert list_keys(db, acct["id"])[0]["hint"] == "sk-am-Lgcy0001…"


def test_authenticate_and_bad_keys(db: sqlite_utils.Database) -> None:
    acct = create_account(db, "b@example.com")
    _, key = create_key(db, acct["id"])
    store = KeyStore(db, cache_seconds=5)
    principal = store.authenticate(f"Bearer {key}")
    assert principal.account_id == acct["id"]
    for header in [
        None,
        "",
        "Bearer",
        f"Basic {key}",
        "Bearer sk-am-nope",
        f"Bearer {key[:-1]}{'y' if key[-1] == 'x' else 'x'}",
    ]:
        with pytest.raises(AuthenticationError) as info:
            store.authenticate(header)
        assert key not in info.value.message
        assert key[-10:] not in info.value.message


def test_revoke_is_seen_after_the_cache_lifetime(db: sqlite_utils.Database) -> None:
    create_account(db, "c@example.com")
    row, key = create_key(db, "c@example.com")
    other_process = KeyStore(db, cache_seconds=0.2)
    other_process.authenticate(f"Bearer {key}")
    revoke_key(db, row["id"])
    other_process.authenticate(f"Bearer {key}")  # still cached: the documented bound
    time.sleep(0.25)
    with pytest.raises(AuthenticationError, match="revoked"):
        other_process.authenticate(f"Bearer {key}")


def test_rotate_keeps_the_old_key_for_the_grace_period(db: sqlite_utils.Database) -> None:
    create_account(db, "d@example.com")
    old_row, old_key = create_key(db, "d@example.com", "ci")
    new_row, new_key, old_after = rotate_key(db, old_row["id"], timedelta(seconds=0.3))
    assert new_row["name"] == "ci" and old_after["replaced_by"] == new_row["id"]
    store = KeyStore(db, cache_seconds=60)
    assert store.authenticate(f"Bearer {old_key}").key_id == old_row["id"]
    assert store.authenticate(f"Bearer {new_key}").key_id == new_row["id"]
    time.sleep(0.35)
    with pytest.raises(AuthenticationError, match="expired"):
        store.authenticate(f"Bearer {old_key}")  # the cache does not outlive the expiry
    assert store.authenticate(f"Bearer {new_key}").key_id == new_row["id"]
    assert [k["id"] for k in list_keys(db, "d@example.com")] == [old_row["id"], new_row["id"]]


def test_suspended_and_closed_accounts(db: sqlite_utils.Database) -> None:
    acct = create_account(db, "e@example.com")
    _, key = create_key(db, acct["id"])
    db.execute(
        "UPDATE accounts SET status = 'suspended', status_reason = 'abuse report' WHERE id = ?",
        [acct["id"]],
    )
    with pytest.raises(PermissionDenied, match="abuse report") as info:
        KeyStore(db).authenticate(f"Bearer {key}")
    assert info.value.code == "account_suspended"
    db.execute("UPDATE accounts SET status = 'closed' WHERE id = ?", [acct["id"]])
    with pytest.raises(AuthenticationError, match="closed"):
        KeyStore(db).authenticate(f"Bearer {key}")


def test_duplicate_and_invalid_email(db: sqlite_utils.Database) -> None:
    create_account(db, "f@example.com")
    with pytest.raises(ValueError, match="already exists"):
        create_account(db, "F@example.com")
    with pytest.raises(ValueError, match="not an email"):
        create_account(db, "nobody")


def test_migrations_apply_once(tmp_path: Path) -> None:
    from apimodels.store.migrations import MIGRATIONS, migrate

    db = open_db(tmp_path / "m.db")
    assert migrate(db) == []  # already applied by open_db
    names = [r["name"] for r in db.query("SELECT name FROM _migrations")]
    assert names == [m.__name__ for m in MIGRATIONS]
    assert {"accounts", "api_keys"} <= set(db.table_names())


def test_closing_the_checkpointer_waits_for_a_checkpoint_in_flight(tmp_path: Path) -> None:
    """Shutdown closed the checkpointer's connection while a worker thread was still
    checkpointing on it: a segfault. Closing now waits, and a late checkpoint is a no-op."""
    open_db(tmp_path / "c.db")
    checkpointer = Checkpointer(str(tmp_path / "c.db"))
    threads = [threading.Thread(target=checkpointer.checkpoint) for _ in range(20)]
    for t in threads:
        t.start()
    checkpointer.close()
    for t in threads:
        t.join()
    checkpointer.checkpoint()  # after close: nothing, no error
    assert checkpointer.conn is None
