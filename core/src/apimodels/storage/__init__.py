"""Output storage: a local folder by default, S3-compatible object storage (Cloudflare R2).

``open_storage`` builds the backend the ``[storage]`` table of registry.toml names. The
interface (``Storage``): ``object_key``, ``put``, ``url``, ``delete``; see ``base``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import sqlite_utils

from ..catalog import StorageConfig
from ..errors import ConfigError
from ..store.db import utcnow
from .base import (
    CONTENT_TYPES,
    MAX_URL_TTL_SECONDS,
    Body,
    Listed,
    ObjectTooLarge,
    Storage,
    StorageError,
    StoredObject,
    check_key,
    content_type_for,
    extension_for,
)
from .local import FILES_PATH, LocalStorage

__all__ = [
    "CONTENT_TYPES",
    "FILES_PATH",
    "MAX_URL_TTL_SECONDS",
    "Body",
    "Listed",
    "LocalStorage",
    "ObjectTooLarge",
    "Storage",
    "StorageError",
    "StoredObject",
    "check_key",
    "content_type_for",
    "extension_for",
    "load_secret",
    "open_storage",
]

_SECRET_NAME = "storage"


def load_secret(
    db: sqlite_utils.Database, config: StorageConfig, environ: Mapping[str, str] | None = None
) -> bytes:
    """The storage secret: from the variable ``secret_env`` names, or else generated once
    and kept in the database (``server_secrets``), so every process and restart shares it."""
    environ = os.environ if environ is None else environ
    if config.secret_env is not None:
        value = environ.get(config.secret_env)
        if value is None:
            raise ConfigError(f"storage.secret_env: the variable {config.secret_env} is not set")
        if len(value) < 32:
            raise ConfigError(
                f"storage.secret_env: {config.secret_env} must hold at least 32 characters"
            )
        return value.encode()
    with db.conn:
        db.conn.execute(
            "INSERT INTO server_secrets (name, value, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO NOTHING",
            (_SECRET_NAME, secrets.token_urlsafe(32), utcnow()),
        )
    row = db.execute("SELECT value FROM server_secrets WHERE name = ?", [_SECRET_NAME]).fetchone()
    return row[0].encode()


def open_storage(
    config: StorageConfig,
    secret: bytes,
    *,
    base_dir: str | Path = ".",
    environ: Mapping[str, str] | None = None,
    public_url: str | None = None,
) -> Storage:
    """The backend ``config`` names. ``base_dir`` anchors a relative local ``path`` (the
    database's folder); ``environ`` holds the S3 credentials; ``public_url`` (the gateway's
    ``[gateway] public_url``) makes local URLs absolute. Raises ``ConfigError``."""
    environ = os.environ if environ is None else environ
    if config.backend == "local":
        try:
            return LocalStorage(
                Path(base_dir) / config.path,
                secret,
                url_ttl_seconds=config.url_ttl_seconds,
                max_object_bytes=config.max_object_bytes,
                public_base_url=public_url,
            )
        except OSError as exc:
            raise ConfigError(
                f"storage.path: cannot create the folder {config.path!r} ({type(exc).__name__})"
            ) from None
    credentials = []
    for field in ("access_key_id_env", "secret_access_key_env"):
        name = getattr(config, field)
        if not environ.get(name):
            raise ConfigError(f"storage.{field}: the variable {name} is not set")
        credentials.append(environ[name])
    try:
        from .s3 import S3Storage
    except ImportError:
        raise ConfigError(
            'storage.backend "s3" needs boto3: install apimodels[s3] (or pip install boto3)'
        ) from None
    assert config.endpoint_url is not None and config.bucket is not None  # checked by the config
    return S3Storage(
        secret,
        endpoint_url=config.endpoint_url,
        bucket=config.bucket,
        access_key_id=credentials[0],
        secret_access_key=credentials[1],
        region=config.region,
        addressing_style=config.addressing_style,
        url_ttl_seconds=config.url_ttl_seconds,
        max_object_bytes=config.max_object_bytes,
    )
