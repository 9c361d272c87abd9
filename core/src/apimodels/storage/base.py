"""The storage interface: where task outputs are copied before a task succeeds.

A backend is one class with four operations: ``put`` an object, a signed expiring ``url``
for it, ``delete`` it, and ``scan`` what is stored (for the retention sweep). Keys come from ``object_key``, which every backend shares:

    {account prefix}/{task id}/{index}.{ext}

The account prefix is an HMAC of the account id under the server's storage secret (32
base32 characters): stable for one account, unrelated between accounts, and meaningless
without the secret, so a key or URL never names its account nor lets anyone guess another
account's keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import mimetypes
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

#: What ``put`` takes: the whole body, or its chunks as they arrive (from an upstream stream).
Body = bytes | AsyncIterator[bytes]

MAX_URL_TTL_SECONDS = 7 * 24 * 3600  # what R2 and S3 allow for presigned URLs

# Segments of letters, digits, '.', '_' and '-' that start with a letter or digit: no '..',
# no hidden files, nothing a filesystem or an object store reads as anything but a name.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,127}){0,7}")
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_EXT = re.compile(r"[a-z0-9]{1,10}")

#: Content types by extension: what ``extension_for`` picks and the local backend serves.
CONTENT_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "flac": "audio/flac",
    "aac": "audio/aac",
    "txt": "text/plain; charset=utf-8",
    "json": "application/json",
    "bin": "application/octet-stream",
}
_EXTENSIONS: dict[str, str] = {
    **{ctype.split(";")[0]: ext for ext, ctype in CONTENT_TYPES.items()},
    "image/jpg": "jpg",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/mp3": "mp3",
    "text/plain": "txt",
}


class StorageError(Exception):
    """An object could not be stored or removed (the store refused or was unreachable).

    The message names what failed, never a credential or a local path.
    """


class ObjectTooLarge(StorageError):
    """The object is larger than ``max_object_bytes``: trying again will not help."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object as stored: its key, the content type it is served with, and its size."""

    key: str
    content_type: str
    bytes: int


@dataclass(frozen=True, slots=True)
class Listed:
    """An object found by ``scan``: its key and when it was written (unix seconds)."""

    key: str
    modified_at: float


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid storage key; raise ``ValueError`` otherwise."""
    if not isinstance(key, str) or len(key) > 512 or not _KEY.fullmatch(key):
        raise ValueError(f"not a valid storage key: {key!r}")
    return key


def extension_for(content_type: str) -> str:
    """The file extension ``object_key`` should get for an output of ``content_type``
    (``bin`` when neither the table above nor the system's MIME types know it)."""
    ctype = content_type.split(";")[0].strip().lower()
    ext = _EXTENSIONS.get(ctype) or (mimetypes.guess_extension(ctype) or ".bin").lstrip(".")
    return ext if _EXT.fullmatch(ext) else "bin"


def content_type_for(key: str) -> str:
    """The content type a key's extension names: the inverse of ``extension_for``."""
    ext = key.rpartition("/")[2].rpartition(".")[2].lower()
    return CONTENT_TYPES.get(ext) or mimetypes.types_map.get(f".{ext}") or CONTENT_TYPES["bin"]


mimetypes.init()  # reads the system's MIME types once, at import, never during a request


def derive(secret: bytes, purpose: str) -> bytes:
    """A sub-key of the storage secret for one purpose, so no two uses share a key."""
    return hmac.new(secret, f"apimodels storage {purpose} v1".encode(), hashlib.sha256).digest()


async def chunks(body: Body) -> AsyncIterator[bytes]:
    """Iterate over a body given whole or in chunks."""
    if isinstance(body, bytes | bytearray | memoryview):
        yield bytes(body)
        return
    async for chunk in body:
        if chunk:
            yield chunk


class Storage(ABC):
    """Where outputs are kept. Subclass it for another backend; ``open_storage`` picks one."""

    def __init__(self, secret: bytes, *, url_ttl_seconds: int, max_object_bytes: int) -> None:
        if len(secret) < 32:
            raise ValueError("the storage secret must be at least 32 bytes")
        self._prefix_key = derive(secret, "key prefix")
        self.url_ttl_seconds = check_ttl(url_ttl_seconds)
        self.max_object_bytes = max_object_bytes

    def object_key(self, account_id: str, task_id: str, index: int, ext: str) -> str:
        """The key of output ``index`` of a task: ``{account prefix}/{task_id}/{index}.{ext}``.

        ``ext`` is an extension without the dot (``extension_for(content_type)`` picks one).
        """
        if not _TASK_ID.fullmatch(task_id):
            raise ValueError(f"not a valid task id for a storage key: {task_id!r}")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"an output index is an int >= 0 (got {index!r})")
        ext = ext.removeprefix(".").lower()
        if not _EXT.fullmatch(ext):
            raise ValueError(f"not a valid file extension: {ext!r}")
        return f"{self.account_prefix(account_id)}/{task_id}/{index}.{ext}"

    def account_prefix(self, account_id: str) -> str:
        """The first segment of every key of ``account_id``'s outputs."""
        digest = hmac.new(self._prefix_key, account_id.encode(), hashlib.sha256).digest()
        return base64.b32encode(digest[:20]).decode().lower()

    def too_large(self) -> ObjectTooLarge:
        return ObjectTooLarge(
            f"the object is larger than storage accepts ({self.max_object_bytes} bytes)"
        )

    @abstractmethod
    async def put(self, key: str, body: Body, content_type: str) -> StoredObject:
        """Store ``body`` under ``key`` (replacing any object there) and return what was stored.

        A chunked body is streamed, never held whole in memory. Raises ``ObjectTooLarge``
        when the body exceeds ``max_object_bytes``, ``StorageError`` when the store fails;
        nothing is left behind then. ``StoredObject.content_type`` is the type downloads get.
        """

    @abstractmethod
    def url(self, key: str, *, expires_in: int | None = None) -> str:
        """A GET URL for ``key`` that works for ``expires_in`` seconds (default: the
        configured ``url_ttl_seconds``; 1 s to 7 days). Computed locally, no I/O."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object at ``key``; no error if there is none."""

    @abstractmethod
    def scan(self, prefix: str = "") -> AsyncIterator[list[Listed]]:
        """Every object whose key starts with ``prefix`` (a whole segment or segments, no
        trailing ``/``; "" for all), in batches: the retention sweep's view of the store."""

    async def aclose(self) -> None:  # noqa: B027  # optional: backends holding resources override it
        """Release what the backend holds (connections); called at server shutdown."""


def check_ttl(seconds: int) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise ValueError(f"a URL lifetime is a whole number of seconds (got {seconds!r})")
    if not 1 <= seconds <= MAX_URL_TTL_SECONDS:
        raise ValueError(f"a URL lifetime is 1 s to 7 days (got {seconds} s)")
    return seconds
