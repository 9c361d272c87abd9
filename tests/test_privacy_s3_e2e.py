"""Deleting and sweeping outputs kept in an S3-compatible bucket (ministack on 127.0.0.1,
as tests/test_storage_s3.py runs it): the gateway serves tasks over real sockets, stores
their outputs in the bucket, and the old presigned URLs fail once the objects are gone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from test_privacy_e2e import finished, image_task, sweeper
from test_storage_s3 import (  # noqa: F401  (fixtures)
    ACCESS_KEY_ID,
    BUCKET,
    SECRET_ACCESS_KEY,
    no_aws_environment,
    s3_endpoint,
)

from apimodels.server import assemble
from apimodels.storage.s3 import S3Storage
from apimodels.store.accounts import create_account, create_key
from apimodels.testing import serve
from apimodels_replicate.simulator import create_app as create_replicate
from support import REPLICATE_KEY, SIM_KEY, TASKS_SETTINGS, Gateway, Simulator, registry_for


@pytest.fixture(scope="module")
def replicate() -> Iterator[Simulator]:
    with serve(create_replicate(REPLICATE_KEY)) as url:
        yield Simulator(url)


@pytest.fixture(scope="module")
def s3_gateway(
    simulator: Simulator,
    replicate: Simulator,
    s3_endpoint: str,  # noqa: F811
    no_aws_environment: None,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    tmp: Path = tmp_path_factory.mktemp("privacy-s3")
    bucket = f"{BUCKET}-privacy"
    storage = (
        "[storage]\n"
        'backend = "s3"\n'
        f'endpoint_url = "{s3_endpoint}"\n'
        f'bucket = "{bucket}"\n'
        'region = "auto"\n'
        'access_key_id_env = "R2_ACCESS_KEY_ID"\n'
        'secret_access_key_env = "R2_SECRET_ACCESS_KEY"\n'
    )
    registry = registry_for(simulator.url, tmp, replicate=replicate.url, tasks=TASKS_SETTINGS)
    text = registry.read_text()
    start = text.index("[storage]\n")
    end = text.index("\n[", start + 1)
    registry.write_text(text[:start] + storage + text[end:])
    server = assemble(
        registry,
        tmp / "gateway.db",
        environ={
            "OPENAI_API_KEY": SIM_KEY,
            "REPLICATE_API_TOKEN": REPLICATE_KEY,
            "R2_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "R2_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        },
    )
    assert isinstance(server.storage, S3Storage)
    server.storage.client.create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "auto"}
    )
    account = create_account(server.db, "s3-privacy@example.com")
    _, key = create_key(server.db, account["id"], "s3")
    server.ledger.post(account["id"], 10_000_000, kind="grant", reason="t", actor="tests")
    with serve(server.app) as url:
        yield Gateway(url, server, key, account["id"])


def keys_of(gw: Gateway, task_id: str) -> list[str]:
    storage = gw.server.storage
    assert isinstance(storage, S3Storage)
    page = storage.client.list_objects_v2(Bucket=storage.bucket)
    return [o["Key"] for o in page.get("Contents", []) if f"/{task_id}/" in o["Key"]]


def test_delete_removes_the_objects_from_the_bucket(s3_gateway: Gateway) -> None:
    headers = {"authorization": f"Bearer {s3_gateway.key}"}
    with httpx.Client(base_url=s3_gateway.url, headers=headers, timeout=30) as api:
        task = image_task(api, "a bucket of light", n=2)
        urls = [item["url"] for item in task["output"]]
        assert all(u.startswith("http://127.0.0.1") and "X-Amz-Signature" in u for u in urls)
        assert all(httpx.get(u).content[:4] == b"\x89PNG" for u in urls)
        assert len(keys_of(s3_gateway, task["id"])) == 2
        r = api.delete(f"/v1/tasks/{task['id']}")
        assert r.status_code == 200 and r.json()["deleted"] is True, r.text
        assert r.json()["output"] is None
    assert keys_of(s3_gateway, task["id"]) == []
    for url in urls:  # the presigned URLs are still validly signed: the bucket has nothing
        assert httpx.get(url).status_code == 404
    [cost] = s3_gateway.db.execute(
        "SELECT cost_micros FROM usage WHERE request_id = ?", [task["id"]]
    ).fetchone()
    assert cost == 6_000


def test_the_sweep_lists_and_empties_the_bucket_with_the_clock_forward(
    s3_gateway: Gateway,
) -> None:
    headers = {"authorization": f"Bearer {s3_gateway.key}"}
    with httpx.Client(base_url=s3_gateway.url, headers=headers, timeout=30) as api:
        task = image_task(api, "swept from the bucket", n=1)
        assert finished(api, task["id"])["status"] == "succeeded"
    storage = s3_gateway.server.storage
    assert isinstance(storage, S3Storage)
    # A file no task names (what an image answered as a URL leaves), under the account.
    stray = f"{storage.account_prefix(s3_gateway.account_id)}/req_stray/0.png"
    asyncio.run(storage.put(stray, b"\x89PNG stray", "image/png"))
    now = datetime.now(UTC)
    assert asyncio.run(sweeper(s3_gateway).sweep(now + timedelta(days=29))).files == 0
    report = asyncio.run(sweeper(s3_gateway).sweep(now + timedelta(days=31)))
    assert report.tasks >= 1 and report.files >= 2
    assert keys_of(s3_gateway, task["id"]) == []
    assert httpx.get(task["output"][0]["url"]).status_code == 404
    page = storage.client.list_objects_v2(Bucket=storage.bucket)
    assert [o["Key"] for o in page.get("Contents", [])] == []
