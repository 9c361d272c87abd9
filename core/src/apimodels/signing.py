"""Webhook signatures in the Standard Webhooks scheme (standardwebhooks.com), used both ways:
Replicate signs the job events it sends us, and the gateway signs the task events it sends
its clients (``tasks.notify``).

A delivery carries ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature`` (space-separated ``v1,<base64>`` entries). Each signature is
HMAC-SHA256 over ``"{id}.{timestamp}.{raw body}"`` keyed with the base64-decoded part of the
secret after ``whsec_``. A sender signs with ``sign``; a receiver checks with ``verify``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

PREFIX = "whsec_"
#: How old (or how far in the future) a timestamp may be, in seconds.
TOLERANCE = 300


def new_secret() -> str:
    """A fresh signing secret, ``whsec_`` and 32 random bytes in base64."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header for one delivery (a single ``v1,`` entry)."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = TOLERANCE,
    now: float | None = None,
) -> bool:
    """Whether ``headers`` hold a valid signature of ``body`` with a fresh timestamp. Any
    ``v1`` entry may match (senders list several while they rotate secrets)."""
    webhook_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    if not webhook_id or not (stamp.isascii() and stamp.isdigit()):
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        return False
    try:
        expected = sign(secret, webhook_id, int(stamp), body)
    except ValueError:  # a secret that is not base64
        return False
    return any(
        hmac.compare_digest(entry.encode(), expected.encode())
        for entry in headers.get("webhook-signature", "").split()
    )
