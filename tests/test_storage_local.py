"""The local storage backend, end to end: objects written by the server's storage, fetched
through the real gateway over HTTP with their signed URLs."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from apimodels.catalog import StorageConfig
from apimodels.providers.media import png
from apimodels.storage import LocalStorage, ObjectTooLarge, extension_for, open_storage
from support import Gateway

SECRET = b"s" * 32


@pytest.fixture
def storage(gateway: Gateway) -> LocalStorage:
    assert isinstance(gateway.server.storage, LocalStorage)
    return gateway.server.storage


def put(storage: LocalStorage, key: str, body: bytes, content_type: str) -> None:
    stored = asyncio.run(storage.put(key, body, content_type))
    assert (stored.key, stored.bytes) == (key, len(body))


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def test_put_then_download_through_the_gateway(gateway: Gateway, storage: LocalStorage) -> None:
    image = png(16, 16, 7)
    key = storage.object_key(gateway.account_id, "task_local1", 0, extension_for("image/png"))
    put(storage, key, image, "image/png")
    url = storage.url(key)
    assert url.startswith(f"/v1/files/{key}?expires=")
    r = httpx.get(gateway.url + url)  # no API key: the signature is the credential
    assert r.status_code == 200
    assert r.content == image
    assert r.headers["content-type"] == "image/png"
    assert r.headers["content-length"] == str(len(image))
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == "sandbox; default-src 'none'"
    assert r.headers["cache-control"].startswith("private, max-age=")
    head = httpx.head(gateway.url + url)
    assert (head.status_code, head.headers["content-length"]) == (200, str(len(image)))
    part = httpx.get(gateway.url + url, headers={"range": "bytes=0-7"})  # players seek in video
    assert (part.status_code, part.content) == (206, image[:8])


def test_a_streamed_body_is_written_whole_and_atomically(
    gateway: Gateway, storage: LocalStorage
) -> None:
    parts = [os.urandom(256 * 1024) for _ in range(12)]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            await asyncio.sleep(0)
            yield part

    key = storage.object_key(gateway.account_id, "task_stream", 0, "mp4")
    stored = asyncio.run(storage.put(key, body(), "video/mp4"))
    assert (stored.bytes, stored.content_type) == (3 * 1024 * 1024, "video/mp4")
    r = httpx.get(gateway.url + storage.url(key))
    assert r.status_code == 200 and r.content == b"".join(parts)
    assert r.headers["content-type"] == "video/mp4"
    assert not [p for p in storage.path(key).parent.iterdir() if p.name.startswith(".")]


def test_replacing_and_deleting(gateway: Gateway, storage: LocalStorage) -> None:
    key = storage.object_key(gateway.account_id, "task_del", 0, "txt")
    put(storage, key, b"first", "text/plain")
    put(storage, key, b"second", "text/plain")
    url = gateway.url + storage.url(key)
    assert httpx.get(url).content == b"second"
    asyncio.run(storage.delete(key))
    asyncio.run(storage.delete(key))  # already gone: no error
    r = httpx.get(url)
    assert (r.status_code, error_code(r)) == (404, "file_not_found")


def test_expired_url_is_refused(gateway: Gateway, storage: LocalStorage) -> None:
    key = storage.object_key(gateway.account_id, "task_exp", 0, "png")
    put(storage, key, png(2, 2, 1), "image/png")
    expired = storage.signed_url(key, int(time.time()) - 1)
    r = httpx.get(gateway.url + expired)
    assert r.status_code == 403
    assert r.json()["error"]["type"] == "permission_error"
    assert error_code(r) == "url_expired"
    short = gateway.url + storage.url(key, expires_in=1)
    assert httpx.get(short).status_code == 200
    time.sleep(2.05)  # expires is rounded up to a whole second: 1 to 2 s from now
    assert error_code(httpx.get(short)) == "url_expired"


def test_tampered_urls_are_refused(gateway: Gateway, storage: LocalStorage) -> None:
    key = storage.object_key(gateway.account_id, "task_tamper", 0, "png")
    other = storage.object_key(gateway.account_id, "task_tamper", 1, "png")
    put(storage, key, b"\x89PNG one", "image/png")
    put(storage, other, b"\x89PNG two", "image/png")
    url = storage.url(key)
    query = parse_qs(urlsplit(url).query)
    expires, signature = query["expires"][0], query["signature"][0]
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    attempts = [
        f"/v1/files/{key}?expires={expires}&signature={flipped}",  # signature changed
        f"/v1/files/{key}?expires={int(expires) + 3600}&signature={signature}",  # expiry pushed
        f"/v1/files/{other}?expires={expires}&signature={signature}",  # another key's signature
        f"/v1/files/{key}?expires={expires}",  # no signature
        f"/v1/files/{key}?signature={signature}",  # no expiry
        f"/v1/files/{key}",
        f"/v1/files/{key}?expires=-1&signature={signature}",
    ]
    for attempt in attempts:
        r = httpx.get(gateway.url + attempt)
        assert r.status_code == 403, attempt
        assert error_code(r) == "invalid_signature", attempt
        assert set(r.json()["error"]) == {"message", "type", "code", "param"}
    assert httpx.get(gateway.url + url).content == b"\x89PNG one"


def test_path_traversal_is_impossible(gateway: Gateway, storage: LocalStorage) -> None:
    db_file = Path(str(gateway.server.db.conn.execute("PRAGMA database_list").fetchone()[2]))
    assert db_file.parent == storage.root.parent  # gateway.db sits beside the outputs folder
    expires = str(int(time.time()) + 60)
    for key in ["../gateway.db", "..%2Fgateway.db", "a/../../gateway.db", ".put-x", "/etc/passwd"]:
        # Even a correctly signed traversal (only the server's secret can make one) finds nothing.
        signature = storage._signature(key, expires)
        r = httpx.get(f"{gateway.url}/v1/files/{key}?expires={expires}&signature={signature}")
        assert r.status_code in (403, 404), key
        assert b"SQLite" not in r.content
        with pytest.raises(ValueError):
            storage.url(key)
        with pytest.raises(ValueError):
            asyncio.run(storage.put(key, b"x", "text/plain"))
    raw = httpx.get(f"{gateway.url}/v1/files/%2e%2e/gateway.db?expires={expires}&signature=x")
    assert raw.status_code in (403, 404)


def test_keys_never_show_the_account(gateway: Gateway, storage: LocalStorage) -> None:
    other_account, _ = gateway.new_account("storage-other@example.com")
    mine = storage.object_key(gateway.account_id, "task_1", 0, "png")
    theirs = storage.object_key(other_account, "task_1", 0, "png")
    prefix, task, name = mine.split("/")
    assert (task, name) == ("task_1", "0.png")
    assert len(prefix) == 32 and prefix.isalnum()
    assert gateway.account_id not in mine and gateway.account_id.split("_")[-1] not in mine
    assert theirs.split("/")[0] != prefix
    assert storage.object_key(gateway.account_id, "task_2", 3, ".WAV") == f"{prefix}/task_2/3.wav"
    # The prefix depends on the server's secret: without it, no one can compute it.
    elsewhere = LocalStorage(storage.root, b"another secret, 32 bytes or more!")
    assert elsewhere.object_key(gateway.account_id, "task_1", 0, "png") != mine


@pytest.mark.parametrize(
    ("task_id", "index", "ext"),
    [("../x", 0, "png"), ("", 0, "png"), ("t/1", 0, "png"), ("t", -1, "png"), ("t", 0, "p/ng")],
)
def test_object_key_refuses_bad_parts(
    storage: LocalStorage, task_id: str, index: int, ext: str
) -> None:
    with pytest.raises(ValueError):
        storage.object_key("acct", task_id, index, ext)


def test_an_object_over_the_size_limit_leaves_nothing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out", SECRET, max_object_bytes=1000)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 400

    key = storage.object_key("acct", "task_big", 0, "bin")
    with pytest.raises(ObjectTooLarge, match="larger than storage accepts"):
        asyncio.run(storage.put(key, body(), "application/octet-stream"))
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_url_lifetime_is_bounded(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, SECRET, public_base_url="https://api.example.com/")
    key = storage.object_key("acct", "t", 0, "png")
    assert storage.url(key).startswith(f"https://api.example.com/v1/files/{key}?expires=")
    for bad in (0, -5, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError, match="1 s to 7 days"):
            storage.url(key, expires_in=bad)


@pytest.mark.parametrize(
    ("content_type", "ext", "served"),
    [
        ("image/png", "png", "image/png"),
        ("IMAGE/JPEG; q=1", "jpg", "image/jpeg"),
        ("audio/x-wav", "wav", "audio/wav"),
        ("audio/mpeg", "mp3", "audio/mpeg"),
        ("video/mp4", "mp4", "video/mp4"),
        ("application/pdf", "pdf", "application/pdf"),  # from the system's MIME types
        ("application/x-unknown", "bin", "application/octet-stream"),
    ],
)
def test_the_type_stored_is_the_type_served(
    tmp_path: Path, content_type: str, ext: str, served: str
) -> None:
    storage = LocalStorage(tmp_path, SECRET)
    assert extension_for(content_type) == ext
    key = storage.object_key("acct", "task_types", 0, extension_for(content_type))
    assert asyncio.run(storage.put(key, b"x", content_type)).content_type == served


def test_relative_path_is_under_the_database_folder(tmp_path: Path) -> None:
    storage = open_storage(StorageConfig(path="media/out"), SECRET, base_dir=tmp_path)
    assert isinstance(storage, LocalStorage)
    assert storage.root == (tmp_path / "media" / "out").resolve() and storage.root.is_dir()


def test_the_files_api_is_not_here(gateway: Gateway) -> None:
    """OpenAI's Files API (``client.files.list()``) is not served: 404, not a signature error."""
    for path in ("/v1/files", "/v1/files/"):
        r = httpx.get(gateway.url + path, headers={"authorization": f"Bearer {gateway.key}"})
        assert r.status_code == 404, (path, r.status_code, r.headers)
        assert error_code(r) == "unknown_url", path
