"""S3-compatible object storage (Cloudflare R2, MinIO, AWS S3) through boto3.

boto3 is synchronous: every call that does I/O runs in a worker thread, never on the event
loop. Presigned GET URLs are computed locally. The client is configured as R2 needs it:
SigV4, and checksums only where an operation requires them (boto3 1.36+ otherwise sends
CRC32 headers that R2 has rejected). A body given in chunks is spooled to a temporary file
(in memory up to 8 MiB) and uploaded in 8 MiB parts, never held whole in memory.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from typing import Any

from .base import Body, Listed, Storage, StorageError, StoredObject, check_key, check_ttl, chunks

PART_BYTES = 8 * 1024 * 1024


class S3Storage(Storage):
    """Objects in one bucket of an S3-compatible store; presigned GET URLs."""

    def __init__(
        self,
        secret: bytes,
        *,
        endpoint_url: str,
        bucket: str,
        access_key_id: str,
        secret_access_key: str,
        region: str = "auto",
        addressing_style: str = "path",
        url_ttl_seconds: int = 3600,
        max_object_bytes: int = 5 * 1024**3,
    ) -> None:
        super().__init__(secret, url_ttl_seconds=url_ttl_seconds, max_object_bytes=max_object_bytes)
        # Imported once, at startup: only deployments that store in S3 need boto3.
        import boto3.session
        from boto3.exceptions import Boto3Error
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        self._client_error = ClientError
        self._other_errors = (Boto3Error, BotoCoreError, OSError)

        self.bucket = bucket
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(
                signature_version="s3v4",
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": addressing_style},
                retries={"mode": "standard", "max_attempts": 3},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=16,
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES, max_concurrency=4
        )

    async def put(self, key: str, body: Body, content_type: str) -> StoredObject:
        check_key(key)
        if isinstance(body, bytes | bytearray | memoryview):
            if len(body) > self.max_object_bytes:
                raise self.too_large()
            await self._call(
                self.client.put_object,
                Bucket=self.bucket,
                Key=key,
                Body=bytes(body),
                ContentType=content_type,
            )
            return StoredObject(key, content_type, len(body))
        with tempfile.SpooledTemporaryFile(max_size=PART_BYTES) as spool:
            size = 0
            async for chunk in chunks(body):
                size += len(chunk)
                if size > self.max_object_bytes:
                    raise self.too_large()
                await asyncio.to_thread(spool.write, chunk)
            spool.seek(0)
            await self._call(
                self.client.upload_fileobj,
                spool,
                self.bucket,
                key,
                ExtraArgs={"ContentType": content_type},
                Config=self._transfer,
            )
        return StoredObject(key, content_type, size)

    def url(self, key: str, *, expires_in: int | None = None) -> str:
        ttl = self.url_ttl_seconds if expires_in is None else check_ttl(expires_in)
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": check_key(key)}, ExpiresIn=ttl
        )

    async def delete(self, key: str) -> None:
        await self._call(self.client.delete_object, Bucket=self.bucket, Key=check_key(key))

    async def scan(self, prefix: str = "") -> AsyncIterator[list[Listed]]:
        # ListObjectsV2 answers up to 1,000 keys a page: one batch per page.
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": f"{prefix}/" if prefix else ""}
            if token:
                args["ContinuationToken"] = token
            page = await self._call(self.client.list_objects_v2, **args)
            batch = [
                Listed(o["Key"], o["LastModified"].timestamp()) for o in page.get("Contents", [])
            ]
            if batch:
                yield batch
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def aclose(self) -> None:
        self.client.close()

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except self._client_error as exc:
            code = exc.response.get("Error", {}).get("Code", "unknown")
            raise StorageError(f"object storage refused {fn.__name__}: {code}") from None
        except self._other_errors as exc:
            raise StorageError(
                f"object storage failed in {fn.__name__}: {type(exc).__name__}"
            ) from None
