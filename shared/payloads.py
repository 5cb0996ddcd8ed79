"""The S3 payload archive: job inputs and outputs, and claim-checked message bodies.

Objects live under a per-tenant prefix (``<tenant>/...``) so a tenant's data can be listed,
exported or deleted on its own.
"""

from __future__ import annotations

import re
from typing import Any

_TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SHARED_TENANT = "_shared"


class PayloadStore:
    """Puts and gets payloads in one S3 bucket.

    Parameters:
      s3: A boto3 S3 client.
      bucket(str): The payload bucket.
    """

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    @staticmethod
    def tenant_prefix(tenant: str | None) -> str:
        """The key prefix of a tenant; refuses names that could escape their prefix."""
        if not tenant:
            return SHARED_TENANT
        if not _TENANT.match(tenant):
            raise ValueError(f"invalid tenant id {tenant!r}")
        return tenant

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def put(self, key: str, body: bytes, content_type: str = "application/json") -> str:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
        return self.uri(key)

    def get(self, uri_or_key: str) -> bytes:
        key = uri_or_key
        prefix = f"s3://{self.bucket}/"
        if uri_or_key.startswith("s3://"):
            if not uri_or_key.startswith(prefix):
                raise ValueError(f"{uri_or_key!r} is not in bucket {self.bucket!r}")
            key = uri_or_key[len(prefix) :]
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return bytes(body)
