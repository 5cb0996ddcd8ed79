"""Run the Chalice app under a real ``chalice local``, and set up what its requests need."""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from infra.local_api import local_api
from shared.auth import TokenStore
from shared.aws import aws_client
from shared.config import Settings
from shared.sites import Site, SiteRegistry
from tests.support.workers import worker_env


def site_secret_name(site: str) -> str:
    return f"pressline/sites/{site}/webhook"


def new_whsec() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def put_site_secret(settings: Settings, site: str, secret: str) -> None:
    """Create the site's webhook secret, or rotate it (the old value becomes AWSPREVIOUS)."""
    sm = aws_client("secretsmanager", settings)
    try:
        sm.create_secret(Name=site_secret_name(site), SecretString=secret)
    except sm.exceptions.ResourceExistsException:
        sm.put_secret_value(SecretId=site_secret_name(site), SecretString=secret)


def ensure_bucket(settings: Settings) -> None:
    s3 = aws_client("s3", settings)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=settings.payload_bucket)


@dataclass
class Tenant:
    """A tenant with a token per role."""

    name: str
    reader: str
    editor: str
    publisher: str


def make_tenant(client: redis.Redis, settings: Settings, name: str) -> Tenant:
    tokens = TokenStore(client, settings.namespace)
    minted = {
        role: tokens.mint(name, role, name=f"test-{role}")[0] for role in ("reader", "editor", "publisher")
    }
    return Tenant(name, minted["reader"], minted["editor"], minted["publisher"])


def register_site(
    client: redis.Redis, settings: Settings, site: str, tenant: str, publish: bool = False
) -> None:
    SiteRegistry(client, settings.namespace).register(Site(site=site, tenant=tenant, publish_allowed=publish))


@contextlib.contextmanager
def chalice_local(redis_url: str, log: Path, **env: str) -> Iterator[str]:
    """The stock ``chalice local`` CLI, in ``functions/``."""
    with local_api(worker_env(redis_url, **env), log, module=None) as api:
        yield api.url


@contextlib.contextmanager
def streaming_server(redis_url: str, log: Path, **env: str) -> Iterator[str]:
    """``python -m functions.serve``: Chalice's local server with server-sent events streamed."""
    with local_api(worker_env(redis_url, **env), log) as api:
        yield api.url
