"""Run the Chalice app under a real ``chalice local``, and set up what its requests need."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from infra.redis_server import free_port, stop_process
from shared.auth import TokenStore
from shared.aws import aws_client
from shared.config import Settings
from shared.sites import Site, SiteRegistry
from tests.support.workers import BIN, ROOT, worker_env


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
def _serving(command: list[str], cwd: Path, redis_url: str, log: Path, env: dict[str, str]) -> Iterator[str]:
    """Run an HTTP server of the functions on a free port (``{port}`` in ``command``); yield its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [part.format(port=port) for part in command],
        cwd=cwd,
        env=worker_env(redis_url, **env),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{command[0]} exited: {log.read_text()[-2000:]}")
            try:
                httpx.get(f"{url}/v1/openapi.json", timeout=1.0)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        stop_process(proc)  # type: ignore[arg-type]


def chalice_local(redis_url: str, log: Path, **env: str) -> contextlib.AbstractContextManager[str]:
    """The stock ``chalice local`` CLI, in ``functions/``."""
    command = [str(BIN / "chalice"), "local", "--host", "127.0.0.1", "--port", "{port}", "--no-autoreload"]
    return _serving(command, ROOT / "functions", redis_url, log, env)


def streaming_server(redis_url: str, log: Path, **env: str) -> contextlib.AbstractContextManager[str]:
    """``python -m functions.serve``: Chalice's local server with server-sent events streamed."""
    command = [str(BIN / "python"), "-m", "functions.serve", "--host", "127.0.0.1", "--port", "{port}"]
    return _serving(command, ROOT, redis_url, log, env)
