"""Which hosts serve outputs from their local folder, so that several hosts on one
PostgreSQL database never each keep a folder of their own.

A task's output written to host A's folder is not on host B, whose signed URL for it would
answer 404. So with PostgreSQL (the backend of several hosts) and the local folder store,
each host records itself here at startup and again at each expiry sweep; a host finding
another one seen within ``STALE`` refuses to start. A folder shared by every host (NFS,
mounted at the same path) is safe: ``[storage] shared_folder = true`` skips the check.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import ConfigError

#: A host not seen for this long is gone (it renews every expiry sweep, a minute by default).
STALE = timedelta(minutes=10)


def claim_local_storage(db: Any, host: str, now: datetime | None = None) -> None:
    """Record ``host`` as using the local folder store; ConfigError when another live host
    does too."""
    now = now or datetime.now(UTC)
    others = [
        row[0]
        for row in db.execute(
            "SELECT host FROM storage_hosts WHERE host != ? AND seen_at > ?",
            (host, (now - STALE).isoformat(timespec="microseconds")),
        )
    ]
    if others:
        raise ConfigError(
            f"storage: host {others[0]!r} keeps outputs in its own local folder on this"
            ' database; several hosts need a shared store: set [storage] backend = "s3"'
            " (Cloudflare R2...), or shared_folder = true if storage.path is one folder"
            " mounted on every host"
        )
    renew(db, host, now)


def renew(db: Any, host: str, now: datetime | None = None) -> None:
    seen = (now or datetime.now(UTC)).isoformat(timespec="microseconds")
    db.execute(
        "INSERT INTO storage_hosts (host, seen_at) VALUES (?, ?)"
        " ON CONFLICT (host) DO UPDATE SET seen_at = excluded.seen_at",
        (host, seen),
    )
