"""The same Chalice app through Chalice's in-process test client (no HTTP server)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from chalice.test import Client

from functions import app as functions_app
from localstack.endpoint import Endpoint
from shared.config import Settings
from shared.webhooks import sign
from tests.support.api import Tenant, ensure_bucket, make_tenant, new_whsec, put_site_secret, register_site

SECRET = new_whsec()


@pytest.fixture
def client(redis_url: str, aws_endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    monkeypatch.setenv("DRAMATIQ_BROKER_URL", redis_url)
    monkeypatch.setenv("PRESSLINE_API_RATE_LIMIT", "5/s:5")
    settings = Settings.from_env()
    ensure_bucket(settings)
    put_site_secret(settings, "shop", SECRET)
    functions_app.reset_services()
    with Client(functions_app.app) as test_client:
        yield test_client
    functions_app.reset_services()


@pytest.fixture
def tenant(redis_url: str) -> Tenant:
    settings = Settings.from_env()
    r = redis.Redis.from_url(redis_url)
    register_site(r, settings, "shop", "initech")
    return make_tenant(r, settings, "initech")


def post_job(client: Client, token: str) -> dict[str, object]:
    response = client.http.post(
        "/v1/jobs",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        body=json.dumps({"input": {"title": "T", "source": "S."}}),
    )
    return {"status": response.status_code, "body": json.loads(response.body), "headers": response.headers}


def test_jobs_scopes_and_status_through_the_test_client(
    client: Client, tenant: Tenant, redis_url: str
) -> None:
    created = post_job(client, tenant.editor)
    assert created["status"] == 202
    job_id = created["body"]["job_id"]  # type: ignore[index]
    got = client.http.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {tenant.reader}"})
    assert got.status_code == 200 and json.loads(got.body)["state"] == "queued"
    assert post_job(client, tenant.reader)["status"] == 403
    assert post_job(client, "pl_bogus.token")["status"] == 401
    assert redis.Redis.from_url(redis_url).xlen("{pressline:ingest}.stream") == 1


def test_the_per_tenant_rate_limit_answers_429_with_retry_after(client: Client, tenant: Tenant) -> None:
    statuses = [post_job(client, tenant.editor) for _ in range(8)]
    limited = [s for s in statuses if s["status"] == 429]
    assert [s["status"] for s in statuses[:5]] == [202] * 5  # the burst
    assert limited, [s["status"] for s in statuses]
    assert int(limited[0]["headers"]["Retry-After"]) >= 1  # type: ignore[index]
    assert limited[0]["body"]["error"]["code"] == "rate_limited"  # type: ignore[index]


def test_a_signed_webhook_through_the_test_client(client: Client, tenant: Tenant) -> None:
    body = json.dumps({"type": "post.generate_requested", "data": {"title": "A", "source": "B."}}).encode()
    ts = int(time.time())
    headers = {
        "webhook-id": "msg_client_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(SECRET, "msg_client_1", ts, body),
        "Content-Type": "application/json",
    }
    first = client.http.post("/v1/webhooks/wordpress/shop", headers=headers, body=body)
    assert first.status_code == 202
    again = client.http.post("/v1/webhooks/wordpress/shop", headers=headers, body=body)
    assert again.status_code == 409
