"""Webhook secrets per site, and a webhook route that tells nothing about which sites exist.

Over HTTP against a real ``chalice local`` (a test Redis; moto, reached through a recording proxy so
each Secrets Manager call the API makes is counted), with ``python -m shared.sites`` run as the
operator runs it. No assertion depends on how long anything takes: a grace period ends by its tag
(as if the time had passed) or by an injected clock, and the API's secret cache is off (TTL 0).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis
from botocore.client import BaseClient

from localstack.endpoint import Endpoint
from shared.api.errors import ApiError
from shared.api.intake import WebhookIntake
from shared.aws import aws_client
from shared.config import Settings
from shared.sites import Site, SiteRegistry
from shared.webhooks import (
    PREVIOUS_VALID_UNTIL_TAG,
    ROTATED_FROM_TAG,
    ROTATED_TO_TAG,
    WebhookSecrets,
    create_site_secret,
    rotate_site_secret,
    sign,
)
from tests.support.api import chalice_local, ensure_bucket, new_whsec, register_site
from tests.support.fault_proxy import FaultProxy
from tests.support.workers import worker_env

ROOT = Path(__file__).resolve().parents[1]
PREFIX = f"pressline-test/{uuid.uuid4().hex[:12]}"
PATTERN = f"{PREFIX}/sites/{{site}}/webhook"
#: The shared secret, both ways it can be configured; the API is given both, the dev mode stays off.
GLOBAL_NAME = f"{PREFIX}/webhook-hmac"
GLOBAL_STORED = new_whsec()
GLOBAL_OVERRIDE = new_whsec()
INGEST = "{pressline:ingest}.stream"
EVENT = json.dumps(
    {"type": "post.generate_requested", "data": {"post_id": 7, "title": "From WP", "source": "Draft this."}}
).encode()


def secret_name(site: str) -> str:
    return PATTERN.replace("{site}", site)


def unique(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:10]}"


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sm_direct(aws_endpoint: Endpoint) -> Iterator[BaseClient]:
    """Secrets Manager as the operator sees it; everything under this module's prefix goes at the end."""
    client = aws_client("secretsmanager", Settings(aws_endpoint_url=aws_endpoint.url))
    yield client
    pages = client.get_paginator("list_secrets").paginate(Filters=[{"Key": "name", "Values": [PREFIX]}])
    for page in pages:
        for entry in page["SecretList"]:
            client.delete_secret(SecretId=entry["ARN"], ForceDeleteWithoutRecovery=True)


@pytest.fixture(scope="module")
def moto_proxy(aws_endpoint: Endpoint) -> Iterator[FaultProxy]:
    """The API's way to moto: every request it makes is recorded (nothing is faulted)."""
    proxy = FaultProxy(aws_endpoint.url).start()
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def api(
    redis_server: str,
    aws_endpoint: Endpoint,
    moto_proxy: FaultProxy,
    sm_direct: BaseClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    ensure_bucket(Settings(broker_url=redis_server, aws_endpoint_url=aws_endpoint.url))
    sm_direct.create_secret(Name=GLOBAL_NAME, SecretString=GLOBAL_STORED)
    log = tmp_path_factory.mktemp("chalice") / "chalice.log"
    with chalice_local(
        redis_server,
        log,
        AWS_ENDPOINT_URL=moto_proxy.url,
        PRESSLINE_WEBHOOK_SITE_SECRET_PATTERN=PATTERN,
        PRESSLINE_WEBHOOK_SECRET_NAME=GLOBAL_NAME,
        HMAC_WEBHOOK_SECRET=GLOBAL_OVERRIDE,
        PRESSLINE_WEBHOOK_SECRET_CACHE_TTL_S="0",  # every request reads Secrets Manager: no waiting
    ) as url:
        yield url


@pytest.fixture
def settings(redis_url: str, aws_endpoint: Endpoint) -> Settings:
    return Settings(
        broker_url=redis_url, aws_endpoint_url=aws_endpoint.url, webhook_site_secret_pattern=PATTERN
    )


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


Cli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def sites_cli(redis_url: str, aws_endpoint: Endpoint) -> Cli:
    """``python -m shared.sites ...`` as an operator runs it, against the test Redis and moto."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = worker_env(
            redis_url, AWS_ENDPOINT_URL=aws_endpoint.url, PRESSLINE_WEBHOOK_SITE_SECRET_PATTERN=PATTERN
        )
        return subprocess.run(
            [sys.executable, "-m", "shared.sites", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def register(sites_cli: Cli, site: str, tenant: str, *extra: str) -> str:
    """Register a site with the CLI; its new secret, the one line it printed on stdout."""
    done = sites_cli("register", "--site", site, "--tenant", tenant, *extra)
    assert done.returncode == 0, done.stderr
    (secret,) = done.stdout.splitlines()
    return secret


def stored(sm: BaseClient, site: str) -> str:
    return str(sm.get_secret_value(SecretId=secret_name(site))["SecretString"])


def signed(secret: str, body: bytes = EVENT, msg_id: str | None = None) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = int(time.time())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
        "Content-Type": "application/json",
    }


def post(api: str, site: str, headers: dict[str, str], body: bytes = EVENT) -> httpx.Response:
    return httpx.post(f"{api}/v1/webhooks/wordpress/{site}", content=body, headers=headers, timeout=10)


def hook(api: str, site: str, secret: str) -> httpx.Response:
    return post(api, site, signed(secret))


def refusal(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == "invalid_signature", body
    assert "whsec_" not in response.text
    return cast(dict[str, Any], body["error"])


def secrets_manager_calls(proxy: FaultProxy, since: int) -> list[tuple[str, str]]:
    """(operation, secret) of each Secrets Manager call the API made after the ``since``-th request."""
    calls = []
    for seen in proxy.requests()[since:]:
        target = seen.headers.get("x-amz-target", "")
        if target.startswith("secretsmanager."):
            calls.append((target.removeprefix("secretsmanager."), json.loads(seen.body)["SecretId"]))
    return calls


# -- (a) the shared secret signs for nobody's site ---------------------------------------------------


def test_the_shared_secret_signs_for_no_tenants_site(
    api: str, r: redis.Redis, settings: Settings, sites_cli: Cli
) -> None:
    legacy = unique("legacy")  # registered before sites had secrets: none of its own
    register_site(r, settings, legacy, "victim", publish=True)
    own = unique("own")
    own_secret = register(sites_cli, own, "victim", "--publish")
    for site in (legacy, own):
        for shared in (GLOBAL_STORED, GLOBAL_OVERRIDE):
            msg_id = f"msg_{uuid.uuid4().hex}"
            answer = post(api, site, signed(shared, msg_id=msg_id))
            assert refusal(answer)["details"] == [{"reason": "bad_signature"}], site
            job_id = "wh" + hashlib.sha256(f"{site}:{msg_id}".encode()).hexdigest()[:30]
            assert r.keys(f"*{job_id}*") == []  # no job record, no message
    assert not r.exists(INGEST)
    # The API does accept webhooks: the site's own secret gets through.
    assert hook(api, own, own_secret).status_code == 202
    assert r.xlen(INGEST) == 1


# -- (b) register -------------------------------------------------------------------------------------


def test_register_creates_a_secret_shows_it_once_and_it_verifies(
    api: str, r: redis.Redis, settings: Settings, sites_cli: Cli, sm_direct: BaseClient
) -> None:
    site = unique("blog")
    done = sites_cli("register", "--site", site, "--tenant", "acme")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1  # the secret, alone, once
    secret = lines[0]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert secret not in done.stderr and "only this once" in done.stderr
    assert stored(sm_direct, site) == secret
    assert hook(api, site, secret).status_code == 202

    # Registering again changes the site but keeps its secret, and does not show it.
    again = sites_cli("register", "--site", site, "--tenant", "acme", "--publish")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "" and secret not in again.stderr and "kept" in again.stderr
    assert stored(sm_direct, site) == secret
    registry = SiteRegistry(r, settings.namespace)
    assert registry.get(site) == Site(site=site, tenant="acme", publish_allowed=True)
    assert hook(api, site, secret).status_code == 202

    # Another tenant does not get the site (nor its secret) by registering it.
    taken = sites_cli("register", "--site", site, "--tenant", "globex")
    assert taken.returncode == 2 and taken.stdout == "" and "--move" in taken.stderr
    assert registry.get(site).tenant == "acme"  # type: ignore[union-attr]
    assert stored(sm_direct, site) == secret

    # --move does, with a new secret at once: the previous tenant's sender is cut off.
    moved = sites_cli("register", "--site", site, "--tenant", "globex", "--move")
    assert moved.returncode == 0, moved.stderr
    (new,) = moved.stdout.splitlines()
    assert new != secret and stored(sm_direct, site) == new
    assert refusal(hook(api, site, secret))["details"] == [{"reason": "bad_signature"}]
    assert hook(api, site, new).status_code == 202
    messages = cast(list[tuple[bytes, dict[bytes, bytes]]], r.xrange(INGEST))
    tenants = [json.loads(fields[b"m"])["options"]["tenant"] for _, fields in messages]
    assert tenants == ["acme", "acme", "globex"]


# -- (c) rotation --------------------------------------------------------------------------------------


def test_rotate_secret_keeps_the_old_one_for_the_grace_then_refuses_it(
    api: str, r: redis.Redis, sites_cli: Cli, sm_direct: BaseClient
) -> None:
    site = unique("rot")
    first = register(sites_cli, site, "acme")
    assert hook(api, site, first).status_code == 202

    rotated = sites_cli("rotate-secret", "--site", site, "--grace-s", "3600")
    assert rotated.returncode == 0, rotated.stderr
    (second,) = rotated.stdout.splitlines()
    assert second not in (first, "") and second not in rotated.stderr and "(3600 s)" in rotated.stderr
    assert stored(sm_direct, site) == second
    assert hook(api, site, second).status_code == 202
    assert hook(api, site, first).status_code == 202  # within the grace

    # The grace is over (its tag says so, as it would once the hour had passed).
    sm_direct.tag_resource(SecretId=secret_name(site), Tags=[{"Key": PREVIOUS_VALID_UNTIL_TAG, "Value": "1"}])
    assert refusal(hook(api, site, first))["details"] == [{"reason": "bad_signature"}]
    assert hook(api, site, second).status_code == 202

    # No grace at all: the old secret is refused from the start.
    third = sites_cli("rotate-secret", "--site", site, "--grace-s", "0").stdout.strip()
    assert third.startswith("whsec_") and third != second
    refusal(hook(api, site, second))
    assert hook(api, site, third).status_code == 202
    assert r.xlen(INGEST) == 5

    unknown = sites_cli("rotate-secret", "--site", unique("nobody"))
    assert unknown.returncode == 2 and unknown.stdout == ""
    negative = sites_cli("rotate-secret", "--site", site, "--grace-s", "-1")
    assert negative.returncode == 2 and stored(sm_direct, site) == third


# -- (d) one answer for every site ----------------------------------------------------------------------


def test_unknown_and_known_sites_get_byte_identical_refusals(
    api: str, r: redis.Redis, settings: Settings, sites_cli: Cli
) -> None:
    known = unique("known")
    secret = register(sites_cli, known, "acme")
    without_secret = unique("nosecret")
    register_site(r, settings, without_secret, "acme")
    sites = [known, without_secret, unique("nobody"), "not.a.site"]

    def missing_signature(secret: str) -> dict[str, str]:
        return {k: v for k, v in signed(secret).items() if k != "webhook-signature"}

    for make in (signed, missing_signature):
        answers = [post(api, site, make(new_whsec())) for site in sites]
        bodies = set()
        for answer in answers:
            trace_id = refusal(answer)["trace_id"]
            assert trace_id and answer.headers["X-Trace-Id"] == trace_id
            bodies.add(answer.content.replace(trace_id.encode(), b"<trace>"))
        assert len(bodies) == 1, bodies  # byte for byte, the trace id aside
        assert len({tuple(sorted(answer.headers.keys())) for answer in answers}) == 1
    assert not r.exists(INGEST)
    assert hook(api, known, secret).status_code == 202  # the refusals were about the signature


# -- (e) what a refusal costs -------------------------------------------------------------------------------


def test_unreadable_secrets_answer_a_retryable_503_not_a_final_401(
    api: str, sites_cli: Cli, moto_proxy: FaultProxy
) -> None:
    """Issue 15, point 6: Secrets Manager failing is the service's fault, and the sender is told to
    retry (a 401 would make it give up); once it answers again, the same webhook gets in."""
    site = unique("sm-down")
    secret = register(sites_cli, site, unique("tenant"))
    headers = signed(secret)
    with moto_proxy.failing(status=500, retry_after=None):
        down = post(api, site, headers)
    assert down.status_code == 503 and down.json()["error"]["code"] == "unavailable"
    assert down.headers["retry-after"] == "5" and "whsec_" not in down.text
    assert post(api, site, headers).status_code == 202  # the retry: not refused as a replay


def test_bad_headers_and_unknown_sites_cost_no_secrets_manager_call(
    api: str, sites_cli: Cli, moto_proxy: FaultProxy
) -> None:
    known = unique("known")
    secret = register(sites_cli, known, "acme")
    start = len(moto_proxy.requests())
    now = int(time.time())
    good = signed(secret)
    garbled: list[dict[str, str]] = [
        {"Content-Type": "application/json"},
        {**good, "webhook-signature": ""},
        {**good, "webhook-timestamp": "soon"},
        {**good, "webhook-timestamp": str(now - 3600)},
        {**good, "webhook-timestamp": str(now + 3600)},
    ]
    for site in (known, unique("ghost")):
        for headers in garbled:
            refusal(post(api, site, headers))
    assert secrets_manager_calls(moto_proxy, start) == []

    ghosts = [unique("ghost") for _ in range(10)]
    for ghost in ghosts * 3:  # a flood of made-up sites, each named three times
        assert refusal(post(api, ghost, signed(new_whsec())))["details"] == [{"reason": "bad_signature"}]
    per_site = Counter(secret for _, secret in secrets_manager_calls(moto_proxy, start))
    assert all(per_site[secret_name(ghost)] <= 1 for ghost in ghosts)
    assert sum(per_site.values()) == 0  # in fact none: a site is looked up only once registered

    # The count is real: a registered site's webhook is looked up.
    assert hook(api, known, secret).status_code == 202
    calls = secrets_manager_calls(moto_proxy, start)
    assert calls and {secret for _, secret in calls} == {secret_name(known)}


# -- in process: grace, caching, order --------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def count_calls(client: BaseClient) -> list[str]:
    """Every Secrets Manager operation ``client`` makes from now on."""
    calls: list[str] = []
    client.meta.events.register(
        "before-call.secrets-manager", lambda model, **_: calls.append(str(model.name))
    )
    return calls


def test_the_grace_ends_at_its_time_even_while_cached(sm_direct: BaseClient) -> None:
    site = unique("unit")
    first = create_site_secret(sm_direct, secret_name(site))
    assert first is not None and create_site_secret(sm_direct, secret_name(site)) is None
    rotated_at = 2_000_000_000.0
    second, valid_until = rotate_site_secret(sm_direct, secret_name(site), grace_s=100, now=rotated_at)
    assert valid_until == rotated_at + 100
    wall = Clock(rotated_at + 99)
    secrets = WebhookSecrets(sm_direct, name_pattern=PATTERN, ttl_s=3600, clock=Clock(0), wall_clock=wall)
    calls = count_calls(sm_direct)

    assert secrets.for_site(site) == (second, first)
    assert calls == ["GetSecretValue", "GetSecretValue", "DescribeSecret"]
    wall.now = rotated_at + 100
    assert secrets.for_site(site) == (second,)  # refused from then on, cached or not
    assert len(calls) == 3
    secrets.invalidate(site)
    assert secrets.for_site(site) == (second,)
    assert repr(secrets).count("whsec_") == 0


def test_a_rotation_made_elsewhere_gets_the_default_grace_from_the_new_versions_creation(
    sm_direct: BaseClient,
) -> None:
    site = unique("unit")
    name = secret_name(site)
    rotate_site_secret(sm_direct, name, grace_s=0, now=time.time())  # creates it
    ours, _ = rotate_site_secret(sm_direct, name, grace_s=0, now=time.time())
    theirs = new_whsec()
    sm_direct.put_secret_value(SecretId=name, SecretString=theirs)  # the tag now names an older version
    created = sm_direct.get_secret_value(SecretId=name)["CreatedDate"].timestamp()
    wall = Clock(created + 49)
    secrets = WebhookSecrets(sm_direct, name_pattern=PATTERN, ttl_s=0, default_grace_s=50, wall_clock=wall)
    assert secrets.for_site(site) == (theirs, ours)  # the stale tag (grace 0) does not apply
    wall.now = created + 50
    assert secrets.for_site(site) == (theirs,)


def test_while_a_rotation_is_half_written_no_previous_version_is_accepted(sm_direct: BaseClient) -> None:
    site = unique("unit")
    name = secret_name(site)
    first = create_site_secret(sm_direct, name)
    second, _ = rotate_site_secret(sm_direct, name, grace_s=3600, now=time.time())
    secrets = WebhookSecrets(sm_direct, name_pattern=PATTERN, ttl_s=0)
    assert secrets.for_site(site) == (second, first)
    # What the next rotation writes before its value: tags naming the current version as rotated from.
    current = sm_direct.get_secret_value(SecretId=name)["VersionId"]
    tags = {
        ROTATED_TO_TAG: str(uuid.uuid4()),
        ROTATED_FROM_TAG: current,
        PREVIOUS_VALID_UNTIL_TAG: "9999999999",
    }
    sm_direct.tag_resource(SecretId=name, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    assert secrets.for_site(site) == (second,)


def test_a_site_without_a_secret_is_looked_up_once_per_ttl(sm_direct: BaseClient) -> None:
    clock = Clock(0)
    secrets = WebhookSecrets(sm_direct, name_pattern=PATTERN, ttl_s=60, clock=clock)
    calls = count_calls(sm_direct)
    for _ in range(5):
        assert secrets.for_site("registered-without-one") == ()
    assert calls == ["GetSecretValue"]
    clock.now = 61
    assert secrets.for_site("registered-without-one") == ()
    assert len(calls) == 2


class CountingRegistry:
    def __init__(self, *sites: Site) -> None:
        self.sites = {site.site: site for site in sites}
        self.asked: list[str] = []

    def get(self, site: str) -> Site | None:
        self.asked.append(site)
        return self.sites.get(site)


class CountingSecrets:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def for_site(self, site: str) -> tuple[str, ...]:
        self.asked.append(site)
        return ()

    def site_secret_name(self, site: str) -> str:
        return secret_name(site)


def test_intake_checks_headers_then_the_registry_then_secrets(caplog: pytest.LogCaptureFixture) -> None:
    now = 1_700_000_000
    registry = CountingRegistry(Site(site="blog", tenant="acme"))
    secrets = CountingSecrets()
    intake = WebhookIntake(
        *cast(Any, (None, None, secrets, None, registry, None)),
        tolerance_s=300,
        max_body_bytes=4096,
        clock=lambda: now,
    )

    def refused(site: str, headers: dict[str, str]) -> tuple[int, str, str, Any]:
        with pytest.raises(ApiError) as caught:
            intake.receive(site, headers, EVENT)
        error = caught.value
        return error.status, error.code, error.message, error.details

    stale = {"webhook-id": "msg_1", "webhook-timestamp": str(now - 301), "webhook-signature": "v1,AAAA"}
    for site in ("blog", "nobody"):
        assert refused(site, {})[3] == [{"reason": "missing_headers"}]
        assert refused(site, stale)[3] == [{"reason": "timestamp_too_old"}]
    assert registry.asked == [] and secrets.asked == []

    wrong = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(new_whsec(), "msg_2", now, EVENT),
    }
    with caplog.at_level(logging.ERROR, logger="shared.api.intake"):
        unknown = refused("nobody", wrong)
        without_secret = refused("blog", wrong)
        assert refused("blog", wrong) == without_secret
    assert (
        unknown
        == without_secret
        == (401, "invalid_signature", "the webhook signature did not verify", [{"reason": "bad_signature"}])
    )
    assert registry.asked == ["nobody", "blog", "blog"]
    assert secrets.asked == ["blog", "blog"]  # never for the unknown site
    warnings = [
        record.getMessage() for record in caplog.records if "no webhook secret" in record.getMessage()
    ]
    assert len(warnings) == 1 and "rotate-secret --site blog" in warnings[0]
