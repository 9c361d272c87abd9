"""``apimodels storage check``: prove the configured storage works before a task needs it.

Stores a small random object under a key no account can have, downloads it the way a
client would (the presigned URL for S3; the file itself for local storage, whose URLs only
the running gateway serves), compares the bytes, and deletes it.
"""

from __future__ import annotations

import asyncio
import os

import httpx

from .base import Storage, StorageError
from .local import LocalStorage

#: The probe's key: its first segment is not the 32-character prefix of any account.
PROBE_PREFIX = "apimodels-check"


async def check(storage: Storage, *, timeout: float = 30.0) -> str:
    """Round-trip one object; return what was checked, or raise ``StorageError``."""
    body = os.urandom(1024)
    key = f"{PROBE_PREFIX}/{os.urandom(8).hex()}.bin"
    stored = await storage.put(key, body, "application/octet-stream")
    try:
        if isinstance(storage, LocalStorage):
            got = await asyncio.to_thread(storage.path(key).read_bytes)
            where = f"the folder {storage.root}"
        else:
            url = storage.url(key, expires_in=60)
            async with httpx.AsyncClient(timeout=timeout) as client:
                response = await client.get(url)
            if response.status_code != 200:
                raise StorageError(
                    f"the object was stored, but its signed URL answered {response.status_code}"
                )
            got = response.content
            where = f"the bucket at {url.split('?', 1)[0].removesuffix(key)}"
        if got != body or stored.bytes != len(body):
            raise StorageError("the object read back differs from the one stored")
    finally:
        await storage.delete(key)
    return f"stored, read back and deleted a {len(body)}-byte object in {where}"
