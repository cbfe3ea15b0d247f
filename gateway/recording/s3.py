"""An S3-compatible bucket for finished recordings (AWS S3, MinIO, Ceph, Cloudflare R2…), through boto3.

boto3 is synchronous, so every request runs in a worker thread (`asyncio.to_thread`) and never blocks audio; an
upload is boto3's managed transfer (`upload_file`: multipart above 8 MiB, retried by botocore). Credentials come
from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an instance role): the gateway
never stores or logs them. boto3 is optional (`pip install -e '.[s3]'`); it is only imported when a bucket is
configured. References: boto3 S3 client `upload_file`, `get_object` (with an HTTP `Range`), `head_object`,
`delete_object` (https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/s3.html).
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


class S3Unavailable(RuntimeError):
    """A bucket is configured but boto3 is not installed."""


@dataclass
class S3Object:
    """An object being read: its status (200, or 206 for a range), headers to pass on, and its body's chunks."""

    status: int
    length: int
    content_range: str | None
    chunks: AsyncIterator[bytes]


class S3Bucket:
    def __init__(self, bucket: str, prefix: str = "", endpoint: str = "", region: str = "") -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise S3Unavailable("recording_s3_bucket is set but boto3 is not installed: "
                                "pip install 'telephony-gateway[s3]'") from None
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        # a client is thread-safe; a bounded connect/read timeout keeps a dead endpoint from holding threads
        self._client: Any = boto3.client("s3", endpoint_url=endpoint or None, region_name=region or None,
                                         config=Config(connect_timeout=5, read_timeout=30,
                                                       retries={"max_attempts": 3, "mode": "standard"}))

    def key_for(self, relative: str) -> str:
        return self.prefix + relative

    async def upload(self, path: str, key: str) -> None:
        await asyncio.to_thread(self._client.upload_file, path, self.bucket, key,
                                ExtraArgs={"ContentType": "audio/wav"})

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._client.delete_object, Bucket=self.bucket, Key=key)

    async def open(self, key: str, range_header: str | None) -> S3Object:
        """Read `key`, or the byte range an HTTP `Range` header asks for (S3 answers it the way HTTP does)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if range_header:
            kwargs["Range"] = range_header
        resp = await asyncio.to_thread(self._client.get_object, **kwargs)
        body = resp["Body"]

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await asyncio.to_thread(body.read, 256 * 1024):
                    yield chunk
            finally:
                body.close()

        status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 200)
        return S3Object(status, int(resp.get("ContentLength") or 0), resp.get("ContentRange"), chunks())
