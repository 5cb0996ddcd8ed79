"""boto3 clients pointed at the configured AWS endpoint (the local emulator by default)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import boto3
from botocore.client import BaseClient

from shared.config import Settings

#: moto and LocalStack accept any credentials; LocalStack maps this key id to its default account.
LOCAL_CREDENTIALS = ("test", "test")

_LOCAL_HOSTNAMES = frozenset({"localhost", "localhost.localstack.cloud"})


def is_local_endpoint(url: str | None) -> bool:
    """True for an emulator on this machine, where dummy credentials are safe to send."""
    if not url:
        return False
    host = urlsplit(url).hostname or ""
    if host in _LOCAL_HOSTNAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def uses_local_credentials(settings: Settings) -> bool:
    """True when no credentials are configured and the endpoint is local: then the dummy ones apply."""
    configured = settings.aws_access_key_id is not None or settings.aws_profile is not None
    return not configured and is_local_endpoint(settings.aws_endpoint_url)


def aws_client(service: str, settings: Settings) -> BaseClient:
    """A boto3 client for ``service`` at ``settings.aws_endpoint_url`` in ``settings.aws_region``.

    Against a local emulator with no credentials configured, boto3 would fail with
    ``NoCredentialsError``, so dummy ones are passed to this client only (the process environment
    is left alone). Configured credentials are always left to boto3's own lookup, so a profile or a
    session token keeps working.
    """
    key_id: str | None = None
    secret: str | None = None
    if uses_local_credentials(settings):
        key_id, secret = LOCAL_CREDENTIALS
    client: BaseClient = boto3.client(
        service,
        endpoint_url=settings.aws_endpoint_url,
        region_name=settings.aws_region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )
    return client
