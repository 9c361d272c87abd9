"""The default backend: files in a local folder, served by the gateway at ``/v1/files/{key}``.

A URL carries its expiry and an HMAC-SHA256 signature over the key and the expiry,
``/v1/files/{key}?expires={unix seconds}&signature={base64url}``: the signature is the
credential, so no API key is needed to download. Files are written to a temporary file
beside their final name, synced, then renamed: a reader never sees half a file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import math
import os
import stat
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from ..errors import NotFound, PermissionDenied
from .base import (
    Body,
    Listed,
    Storage,
    StoredObject,
    check_key,
    check_ttl,
    chunks,
    content_type_for,
    derive,
)

#: Where the gateway serves local files.
FILES_PATH = "/v1/files/"


class LocalStorage(Storage):
    """Files under ``root``; signed URLs to the gateway's ``/v1/files/`` route.

    ``public_base_url`` (e.g. ``https://api.example.com``) makes URLs absolute; without it
    they are paths on the gateway (``/v1/files/...``).
    """

    def __init__(
        self,
        root: str | Path,
        secret: bytes,
        *,
        url_ttl_seconds: int = 3600,
        max_object_bytes: int = 5 * 1024**3,
        public_base_url: str | None = None,
    ) -> None:
        super().__init__(secret, url_ttl_seconds=url_ttl_seconds, max_object_bytes=max_object_bytes)
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_url = (public_base_url or "").rstrip("/")
        self._url_key = derive(secret, "local url")

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, body: Body, content_type: str) -> StoredObject:
        path = self.path(key)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        # The temporary name starts with '.', which no key can: it is never served.
        fd, tmp = await asyncio.to_thread(tempfile.mkstemp, dir=path.parent, prefix=".put-")
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks(body):
                    size += len(chunk)
                    if size > self.max_object_bytes:
                        raise self.too_large()
                    await asyncio.to_thread(f.write, chunk)
                await asyncio.to_thread(_sync, f)
            await asyncio.to_thread(_rename_durably, tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredObject(key, content_type_for(key), size)

    def url(self, key: str, *, expires_in: int | None = None) -> str:
        ttl = self.url_ttl_seconds if expires_in is None else check_ttl(expires_in)
        return self.signed_url(key, math.ceil(time.time()) + ttl)  # never less than ttl

    def signed_url(self, key: str, expires_at: int) -> str:
        """The URL of ``key`` valid until ``expires_at`` (unix seconds)."""
        check_key(key)
        signature = self._signature(key, str(expires_at))
        return f"{self.base_url}{FILES_PATH}{key}?expires={expires_at}&signature={signature}"

    async def delete(self, key: str) -> None:
        path = self.path(key)
        await asyncio.to_thread(path.unlink, missing_ok=True)
        await asyncio.to_thread(_prune, path.parent, self.root)

    async def scan(self, prefix: str = "") -> AsyncIterator[list[Listed]]:
        # One batch per folder under the prefix: an account's outputs, never the whole tree.
        base = self.path(prefix) if prefix else self.root
        tops = [base] if prefix else await asyncio.to_thread(_folders, base)
        for top in tops:
            found = await asyncio.to_thread(_files, top, self.root)
            if found:
                yield found

    def _signature(self, key: str, expires: str) -> str:
        mac = hmac.new(self._url_key, f"GET\n{key}\n{expires}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()

    async def locate(
        self, key: str, expires: str | None, signature: str | None
    ) -> tuple[Path, os.stat_result]:
        """Check a download's signature and expiry; return the file and its stat.

        Raises ``PermissionDenied`` (403) for a missing, tampered or expired signature, and
        ``NotFound`` (404) for a validly signed key with no file.
        """
        if (
            not expires
            or not signature
            or len(expires) > 12
            or not (expires.isascii() and expires.isdigit())
            or not hmac.compare_digest(self._signature(key, expires).encode(), signature.encode())
        ):
            raise PermissionDenied(
                "This file URL is not valid: its signature does not match.",
                code="invalid_signature",
            )
        if int(expires) < time.time():
            raise PermissionDenied(
                "This file URL has expired; fetch the task again for a fresh URL.",
                code="url_expired",
            )
        try:
            path = self.path(key)
            st = await asyncio.to_thread(os.stat, path)
        except (ValueError, OSError):
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise NotFound("No file is stored under this URL.", code="file_not_found")
        return path, st


def _folders(root: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(root) if e.is_dir() and e.name[0] != "."]
    except FileNotFoundError:
        return []


def _files(top: Path, root: Path) -> list[Listed]:
    """Stored files under ``top`` (a half-written temporary file, named with a '.', is not)."""
    found = []
    for folder, _, names in os.walk(top):
        for name in names:
            if name[0] == ".":
                continue
            path = Path(folder, name)
            try:
                found.append(Listed(path.relative_to(root).as_posix(), path.stat().st_mtime))
            except FileNotFoundError:  # deleted meanwhile
                continue
    return found


def _prune(folder: Path, root: Path) -> None:
    """Remove the folder a delete left empty (a task's), not its account's: another task's
    ``put`` may be creating a folder there at this moment."""
    if folder.parent != root and folder != root:
        with contextlib.suppress(OSError):  # not empty (or gone)
            folder.rmdir()


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _rename_durably(tmp: str, path: Path) -> None:
    # The rename is durable once the folder's entry is synced too; a task reports success after.
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
