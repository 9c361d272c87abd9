"""Automatic suspension: ``[safety] suspend_after`` refused requests within
``window_minutes`` suspend the account, with the reason recorded on it.

Only unreviewed violations count: lifting a suspension (``apimodels accounts unsuspend``)
marks the account's violations reviewed, so an old burst cannot suspend it again. This
process drops the account's cached keys at once; other processes see the suspension within
``gateway.key_cache_seconds``.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import sqlite_utils

from ..catalog import SafetyConfig
from ..store.accounts import KeyStore, get_account, set_status
from .audit import recent_count

log = logging.getLogger("apimodels")


def suspend_if_over(
    db: sqlite_utils.Database, keys: KeyStore | None, account_id: str, safety: SafetyConfig
) -> bool:
    """Suspend ``account_id`` if its recent violations reach the limit; True if it did."""
    if safety.suspend_after == 0:
        return False
    count = recent_count(db, account_id, timedelta(minutes=safety.window_minutes))
    if count < safety.suspend_after or get_account(db, account_id)["status"] != "active":
        return False
    reason = (
        f"automatically suspended after {count} requests refused by the content policy "
        f"within {safety.window_minutes:g} minutes; contact support"
    )
    set_status(db, account_id, "suspended", reason)
    if keys is not None:
        keys.forget_account(account_id)
    log.warning("account %s suspended: %d policy violations", account_id, count)
    return True
