"""The S3 backend against a real S3-compatible server on 127.0.0.1 (ministack, which checks
SigV4 signatures and presigned URL expiry as S3 and R2 do), through boto3 with exactly the
settings a Cloudflare R2 user gives: endpoint URL, bucket, region ``auto``, keys from the
environment. No AWS configuration or credentials of the machine take part."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from click.testing import CliRunner

from apimodels.catalog import StorageConfig, parse_catalog
from apimodels.cli import cli
from apimodels.errors import ConfigError
from apimodels.providers.media import png
from apimodels.storage import ObjectTooLarge, StorageError, extension_for, open_storage
from apimodels.storage.s3 import PART_BYTES, S3Storage

ACCESS_KEY_ID = "AKIAAPIMODELSTEST001"
SECRET_ACCESS_KEY = "r2-test-secret-0123456789abcdef"
BUCKET = "apimodels-outputs"
SECRET = b"storage-secret-for-the-s3-tests-0123"
CREDENTIALS = {"R2_ACCESS_KEY_ID": ACCESS_KEY_ID, "R2_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """ministack serving S3 on 127.0.0.1, its root keys the test's; yields its endpoint URL."""
    tmp = tmp_path_factory.mktemp("s3")
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp),
        "TMPDIR": str(tmp),
        "BIND_HOST": "127.0.0.1",
        "MINISTACK_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "MINISTACK_REGION": "auto",
        "SERVICES": "s3",
        "PERSIST_STATE": "0",
        "STATE_DIR": str(tmp / "state"),
        "LOG_LEVEL": "WARNING",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    }
    log = (tmp / "ministack.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "ministack.app:app", "--bind", f"127.0.0.1:{port}"],
        env=env,
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the S3 server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def no_aws_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Nothing from the machine's AWS setup (keys, profiles, config files, instance metadata)."""
    empty = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            mp.delenv(name)
        mp.setenv("AWS_CONFIG_FILE", str(empty))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


def r2_config(endpoint: str, **extra: object) -> StorageConfig:
    """What a user writes in registry.toml for R2, with the endpoint pointed at the test server."""
    registry = {
        "storage": {
            "backend": "s3",
            "endpoint_url": endpoint,
            "bucket": BUCKET,
            "region": "auto",
            "access_key_id_env": "R2_ACCESS_KEY_ID",
            "secret_access_key_env": "R2_SECRET_ACCESS_KEY",
            "url_ttl_seconds": 600,
            **extra,
        }
    }
    return parse_catalog(registry).storage


@pytest.fixture(scope="module")
def storage(s3_endpoint: str, no_aws_environment: None) -> Iterator[S3Storage]:
    storage = open_storage(r2_config(s3_endpoint), SECRET, environ=CREDENTIALS)
    assert isinstance(storage, S3Storage)
    storage.client.create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "auto"}
    )
    yield storage
    asyncio.run(storage.aclose())


def test_the_client_is_configured_as_r2_needs(storage: S3Storage, s3_endpoint: str) -> None:
    config = storage.client.meta.config
    assert config.signature_version == "s3v4"
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert storage.client.meta.region_name == "auto"
    assert storage.client.meta.endpoint_url == s3_endpoint


def test_upload_then_presigned_get(storage: S3Storage) -> None:
    image = png(32, 32, 3)
    key = storage.object_key("acct_1", "task_s3", 0, extension_for("image/png"))
    stored = asyncio.run(storage.put(key, image, "image/png"))
    assert (stored.key, stored.content_type, stored.bytes) == (key, "image/png", len(image))
    url = storage.url(key)
    assert url.startswith(f"{storage.client.meta.endpoint_url}/{BUCKET}/{key}?")
    assert "X-Amz-Expires=600" in url and "acct_1" not in url
    r = httpx.get(url)
    assert r.status_code == 200
    assert r.content == image
    assert r.headers["content-type"] == "image/png"


def test_a_large_streamed_upload_goes_in_parts(storage: S3Storage) -> None:
    parts = [os.urandom(1024 * 1024) for _ in range(PART_BYTES // (1024 * 1024) + 4)]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            await asyncio.sleep(0)
            yield part

    key = storage.object_key("acct_1", "task_s3big", 0, "mp4")
    stored = asyncio.run(storage.put(key, body(), "video/mp4"))
    assert stored.bytes == sum(map(len, parts)) > PART_BYTES
    head = storage.client.head_object(Bucket=BUCKET, Key=key)
    assert "-" in head["ETag"]  # a multipart upload's ETag: the body went up in parts
    r = httpx.get(storage.url(key))
    assert r.status_code == 200
    assert r.headers["content-type"] == "video/mp4"
    assert r.content == b"".join(parts)


def test_an_expired_url_fails(storage: S3Storage) -> None:
    key = storage.object_key("acct_1", "task_s3exp", 0, "txt")
    asyncio.run(storage.put(key, b"soon gone", "text/plain"))
    url = storage.url(key, expires_in=2)  # X-Amz-Date is in whole seconds: 1 to 2 s left
    assert httpx.get(url).status_code == 200
    time.sleep(2.05)
    r = httpx.get(url)
    assert r.status_code == 403
    assert b"<Code>AccessDenied</Code>" in r.content and b"expired" in r.content


def test_a_tampered_url_fails(storage: S3Storage) -> None:
    key = storage.object_key("acct_1", "task_s3tamper", 0, "txt")
    other = storage.object_key("acct_2", "task_s3tamper", 0, "txt")
    asyncio.run(storage.put(key, b"mine", "text/plain"))
    asyncio.run(storage.put(other, b"theirs", "text/plain"))
    url = storage.url(key)
    signature = url.rsplit("X-Amz-Signature=", 1)[1]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    for tampered in [
        url.replace(signature, flipped),
        url.replace(key, other),  # another account's object with this URL's signature
        url.replace("X-Amz-Expires=600", "X-Amz-Expires=6000"),
    ]:
        r = httpx.get(tampered)
        assert r.status_code == 403, tampered
        assert b"SignatureDoesNotMatch" in r.content
    assert httpx.get(url).content == b"mine"


def test_delete(storage: S3Storage) -> None:
    key = storage.object_key("acct_1", "task_s3del", 0, "txt")
    asyncio.run(storage.put(key, b"x", "text/plain"))
    asyncio.run(storage.delete(key))
    assert httpx.get(storage.url(key)).status_code == 404


def test_a_url_signed_with_the_wrong_secret_fails(
    storage: S3Storage, s3_endpoint: str, no_aws_environment: None
) -> None:
    key = storage.object_key("acct_1", "task_s3wrong", 0, "txt")
    asyncio.run(storage.put(key, b"x", "text/plain"))
    wrong = open_storage(
        r2_config(s3_endpoint),
        SECRET,
        environ={**CREDENTIALS, "R2_SECRET_ACCESS_KEY": "not-the-secret"},
    )
    r = httpx.get(wrong.url(key))
    assert r.status_code == 403 and b"SignatureDoesNotMatch" in r.content
    asyncio.run(wrong.aclose())


def test_a_refused_upload_is_a_storage_error(s3_endpoint: str, no_aws_environment: None) -> None:
    missing = open_storage(
        r2_config(s3_endpoint, bucket="no-such-bucket"), SECRET, environ=CREDENTIALS
    )
    key = missing.object_key("acct_1", "task_s3missing", 0, "txt")
    with pytest.raises(StorageError, match="refused put_object: NoSuchBucket") as info:
        asyncio.run(missing.put(key, b"x", "text/plain"))
    assert SECRET_ACCESS_KEY not in str(info.value)
    asyncio.run(missing.aclose())


def test_size_limit_and_url_lifetime(s3_endpoint: str, no_aws_environment: None) -> None:
    small = open_storage(r2_config(s3_endpoint, max_object_bytes=10), SECRET, environ=CREDENTIALS)
    key = small.object_key("acct_1", "task_s3small", 0, "bin")
    with pytest.raises(ObjectTooLarge, match="larger than storage accepts"):
        asyncio.run(small.put(key, b"x" * 11, "application/octet-stream"))
    for bad in (0, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError, match="1 s to 7 days"):
            small.url(key, expires_in=bad)
    assert "X-Amz-Expires=604800" in small.url(key, expires_in=7 * 24 * 3600)
    asyncio.run(small.aclose())


def test_missing_credentials_stop_startup(s3_endpoint: str) -> None:
    with pytest.raises(
        ConfigError,
        match=r"storage\.secret_access_key_env: the variable R2_SECRET_ACCESS_KEY is not set",
    ):
        open_storage(r2_config(s3_endpoint), SECRET, environ={"R2_ACCESS_KEY_ID": ACCESS_KEY_ID})


def test_storage_check_command(
    storage: S3Storage, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("check")
    storage_table = f"""
[storage]
backend = "s3"
endpoint_url = "{s3_endpoint}"
bucket = "{BUCKET}"
region = "auto"
access_key_id_env = "R2_ACCESS_KEY_ID"
secret_access_key_env = "R2_SECRET_ACCESS_KEY"
"""
    (tmp / "registry.toml").write_text(storage_table)
    args = ["--registry", str(tmp / "registry.toml"), "--db", str(tmp / "a.db"), "storage", "check"]
    result = CliRunner().invoke(cli, args, env=CREDENTIALS)
    assert result.exit_code == 0, result.output
    assert (
        f"ok: stored, read back and deleted a 1024-byte object in the bucket at {s3_endpoint}/{BUCKET}/"
        in result.output
    )
    listed = storage.client.list_objects_v2(Bucket=BUCKET, Prefix="apimodels-check/")
    assert listed["KeyCount"] == 0
    bad = CliRunner().invoke(cli, args, env={**CREDENTIALS, "R2_SECRET_ACCESS_KEY": "wrong"})
    assert bad.exit_code == 1
    assert (
        "storage check failed: the object was stored, but its signed URL answered 403" in bad.output
    )
    assert "wrong" not in bad.output.replace("storage check", "")
