"""The Chalice functions over HTTP against a real `chalice local`, with a real Redis and moto."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from localstack.endpoint import Endpoint
from shared.auth import TokenStore
from shared.config import Settings
from shared.webhooks import sign
from tests.support.api import (
    Tenant,
    chalice_local,
    ensure_bucket,
    make_tenant,
    new_whsec,
    put_site_secret,
    register_site,
)

INGEST = "{pressline:ingest}.stream"
SITE_SECRET = new_whsec()


@pytest.fixture(scope="module")
def api(redis_server: str, aws_endpoint: Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(broker_url=redis_server, aws_endpoint_url=aws_endpoint.url)
    ensure_bucket(settings)
    put_site_secret(settings, "blog-1", SITE_SECRET)
    log = tmp_path_factory.mktemp("chalice") / "chalice.log"
    with chalice_local(redis_server, log, PRESSLINE_WEBHOOK_SECRET_CACHE_TTL_S="0.5") as url:
        yield url


@pytest.fixture
def settings(redis_url: str, aws_endpoint: Endpoint) -> Settings:
    return Settings(broker_url=redis_url, aws_endpoint_url=aws_endpoint.url)


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def acme(r: redis.Redis, settings: Settings) -> Tenant:
    register_site(r, settings, "blog-1", "acme")
    return make_tenant(r, settings, "acme")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


JOB = {"input": {"title": "Hello", "source": "One. Two. Three."}, "site": "blog-1"}


def post_job(api: str, token: str, body: Any = JOB, **headers: str) -> httpx.Response:
    return httpx.post(f"{api}/v1/jobs", json=body, headers={**auth(token), **headers}, timeout=10)


def error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message", "trace_id"} <= set(body["error"]), body
    text = response.text.lower()
    assert "traceback" not in text and "redis" not in text and "whsec_" not in text
    return body["error"]  # type: ignore[no-any-return]


def ingest_messages(r: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(fields[b"m"]) for _, fields in r.xrange(INGEST)]


# -- jobs ---------------------------------------------------------------------------------------


def test_a_job_is_accepted_enqueued_and_readable(api: str, acme: Tenant, r: redis.Redis) -> None:
    created = post_job(api, acme.editor)
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["state"] == "queued" and created.headers["Location"] == job["status_url"]
    (message,) = ingest_messages(r)
    assert message["actor_name"] == "ingest"
    assert message["options"]["job_id"] == job["job_id"] and message["options"]["tenant"] == "acme"
    assert message["options"]["publish"] is False
    assert message["args"] == [{"title": "Hello", "source": "One. Two. Three."}]

    status = httpx.get(f"{api}{job['status_url']}", headers=auth(acme.reader))
    assert status.status_code == 200
    view = status.json()
    assert (view["job_id"], view["state"], view["attempts"], view["last_error"]) == (
        job["job_id"],
        "queued",
        0,
        None,
    )
    assert view["cost"] == {"usd": "0", "pico_usd": 0}
    assert view["created_at"].endswith("Z")


def test_the_publish_gate_needs_content_publish(api: str, acme: Tenant, r: redis.Redis) -> None:
    refused = post_job(api, acme.editor, {**JOB, "publish": True})
    assert refused.status_code == 403 and error(refused)["code"] == "forbidden"
    assert r.xlen(INGEST) == 0
    allowed = post_job(api, acme.publisher, {**JOB, "publish": True})
    assert allowed.status_code == 202
    (message,) = ingest_messages(r)
    assert message["options"]["publish"] is True


def test_a_token_without_the_scope_gets_403_and_nothing_is_enqueued(
    api: str, acme: Tenant, r: redis.Redis
) -> None:
    response = post_job(api, acme.reader)
    assert response.status_code == 403
    assert "jobs:write" in error(response)["message"]
    assert r.xlen(INGEST) == 0 if r.exists(INGEST) else True
    assert not r.exists(INGEST)


def test_missing_bad_revoked_and_expired_tokens_get_401(
    api: str, acme: Tenant, r: redis.Redis, settings: Settings
) -> None:
    tokens = TokenStore(r, settings.namespace)
    revoked, info = tokens.mint("acme", "editor", name="old")
    tokens.revoke(info.token_id)
    expired, _ = tokens.mint("acme", "editor", name="short", ttl_s=1)
    time.sleep(1.1)
    cases = {
        "missing": {},
        "garbage": auth("pl_nope"),
        "wrong secret": auth(acme.editor[:-4] + "AAAA"),
        "revoked": auth(revoked),
        "expired": auth(expired),
    }
    for name, headers in cases.items():
        response = httpx.post(f"{api}/v1/jobs", json=JOB, headers=headers)
        assert response.status_code == 401, name
        assert error(response)["code"] == "unauthenticated"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert not r.exists(INGEST)


def test_another_tenants_job_is_404(api: str, acme: Tenant, r: redis.Redis, settings: Settings) -> None:
    globex = make_tenant(r, settings, "globex")
    job = post_job(api, acme.editor).json()
    theirs = httpx.get(f"{api}/v1/jobs/{job['job_id']}", headers=auth(globex.reader))
    assert theirs.status_code == 404 and error(theirs)["code"] == "job_not_found"
    missing = httpx.get(f"{api}/v1/jobs/{uuid.uuid4().hex}", headers=auth(acme.reader))
    assert missing.status_code == 404
    bad = httpx.get(f"{api}/v1/jobs/not%20an%20id", headers=auth(acme.reader))
    assert bad.status_code == 400 and error(bad)["code"] == "invalid_job_id"


def test_idempotency_key_replays_refuses_another_body_and_makes_one_job_under_50_parallel_requests(
    api: str, acme: Tenant, r: redis.Redis
) -> None:
    first = post_job(api, acme.editor, **{"Idempotency-Key": "order-1"})
    again = post_job(api, acme.editor, **{"Idempotency-Key": "order-1"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    other = post_job(
        api,
        acme.editor,
        {**JOB, "input": {"title": "Other", "source": "x"}},
        **{"Idempotency-Key": "order-1"},
    )
    assert other.status_code == 422 and error(other)["code"] == "idempotency_key_reused"
    assert r.xlen(INGEST) == 1

    results: list[httpx.Response] = []
    lock = threading.Lock()

    def send() -> None:
        response = post_job(api, acme.editor, **{"Idempotency-Key": "burst-7"})
        with lock:
            results.append(response)

    threads = [threading.Thread(target=send) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 50
    assert {resp.status_code for resp in results} <= {202, 409}
    job_ids = {resp.json()["job_id"] for resp in results if resp.status_code == 202}
    assert len(job_ids) == 1  # every 202 names the same job
    assert r.xlen(INGEST) == 2  # order-1 and burst-7: exactly one job each


def test_bad_input_gets_clear_errors_in_one_shape(api: str, acme: Tenant, r: redis.Redis) -> None:
    url = f"{api}/v1/jobs"
    headers = {**auth(acme.editor), "Content-Type": "application/json"}
    bad_json = httpx.post(url, content=b"{not json", headers=headers)
    assert bad_json.status_code == 400 and error(bad_json)["code"] == "invalid_json"
    wrong_type = httpx.post(url, content=b"a=b", headers={**auth(acme.editor), "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415 and error(wrong_type)["code"] == "unsupported_media_type"
    huge = httpx.post(
        url, content=json.dumps({"input": {"title": "x", "source": "y" * 70_000}}), headers=headers
    )
    assert huge.status_code == 413 and error(huge)["code"] == "payload_too_large"
    unknown = post_job(api, acme.editor, {**JOB, "priority": "high"})
    assert unknown.status_code == 422
    assert {"field": "priority", "problem": "Extra inputs are not permitted"} in error(unknown)["details"]
    missing = post_job(api, acme.editor, {"input": {"title": ""}})
    assert missing.status_code == 422 and len(error(missing)["details"]) == 2
    method = httpx.delete(f"{api}/v1/jobs/abc", headers=auth(acme.editor))
    assert method.status_code == 405 and error(method)["code"] == "method_not_allowed"
    assert not r.exists(INGEST)


def test_the_trace_continues_from_traceparent_and_x_amzn_trace_id(
    api: str, acme: Tenant, r: redis.Redis
) -> None:
    trace_id = uuid.uuid4().hex
    w3c = post_job(api, acme.editor, traceparent=f"00-{trace_id}-{'1' * 16}-01")
    assert w3c.headers["X-Trace-Id"] == trace_id
    assert w3c.headers["traceparent"].startswith(f"00-{trace_id}-")
    carried = ingest_messages(r)[0]["options"]["trace_context"]["traceparent"]
    assert carried.split("-")[1] == trace_id  # the job's messages carry the caller's trace

    xray = post_job(
        api,
        acme.editor,
        **{"X-Amzn-Trace-Id": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"},
    )
    assert xray.headers["X-Trace-Id"] == "5759e988bd862e3fe1be46a994272793"
    fresh = post_job(api, acme.editor)
    assert len(fresh.headers["X-Trace-Id"]) == 32 and fresh.headers["X-Trace-Id"] != trace_id


# -- webhooks -----------------------------------------------------------------------------------


def signed(
    body: bytes, secret: str = SITE_SECRET, *, msg_id: str | None = None, ts: int | None = None
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = int(time.time()) if ts is None else ts
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
        "Content-Type": "application/json",
    }


EVENT = json.dumps(
    {"type": "post.generate_requested", "data": {"post_id": 7, "title": "From WP", "source": "Draft this."}}
).encode()


def hook(api: str, body: bytes, headers: dict[str, str], site: str = "blog-1") -> httpx.Response:
    return httpx.post(f"{api}/v1/webhooks/wordpress/{site}", content=body, headers=headers, timeout=10)


def test_a_signed_webhook_becomes_one_job(api: str, acme: Tenant, r: redis.Redis) -> None:
    headers = signed(EVENT)
    accepted = hook(api, EVENT, headers)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    (message,) = ingest_messages(r)
    assert message["options"]["job_id"] == job_id and message["options"]["wp_post_id"] == 7
    assert message["options"]["tenant"] == "acme" and message["options"]["publish"] is False
    assert httpx.get(f"{api}/v1/jobs/{job_id}", headers=auth(acme.reader)).json()["state"] == "queued"
    replay = hook(api, EVENT, headers)
    assert replay.status_code == 409 and error(replay)["code"] == "replayed_webhook"
    assert r.xlen(INGEST) == 1


def test_forged_stale_and_replayed_webhooks_are_rejected_with_nothing_enqueued(
    api: str, acme: Tenant, r: redis.Redis
) -> None:
    now = int(time.time())
    cases = {
        "tampered body": (EVENT.replace(b"Draft", b"Leak!"), signed(EVENT)),
        "expired timestamp": (EVENT, signed(EVENT, ts=now - 330)),
        "future timestamp": (EVENT, signed(EVENT, ts=now + 330)),
        "wrong secret": (EVENT, signed(EVENT, secret=new_whsec())),
        "no signature": (
            EVENT,
            {"Content-Type": "application/json", "webhook-id": "msg_x", "webhook-timestamp": str(now)},
        ),
    }
    for name, (body, headers) in cases.items():
        response = hook(api, body, headers)
        assert response.status_code == 401, name
        assert error(response)["code"] == "invalid_signature"
    assert not r.exists(INGEST)
    unknown_site = hook(api, EVENT, signed(EVENT), site="nowhere")
    assert unknown_site.status_code in (401, 404)


def test_the_previous_secret_still_verifies_during_rotation(
    api: str, acme: Tenant, r: redis.Redis, settings: Settings
) -> None:
    register_site(r, settings, "blog-2", "acme")
    first, second, third = new_whsec(), new_whsec(), new_whsec()
    put_site_secret(settings, "blog-2", first)
    put_site_secret(settings, "blog-2", second)  # first is now AWSPREVIOUS
    time.sleep(0.6)  # the function's secret cache (0.5 s in this module) expires
    assert hook(api, EVENT, signed(EVENT, secret=second), site="blog-2").status_code == 202
    assert hook(api, EVENT, signed(EVENT, secret=first), site="blog-2").status_code == 202
    put_site_secret(settings, "blog-2", third)  # rotate again: first is now too old
    time.sleep(0.6)
    assert hook(api, EVENT, signed(EVENT, secret=first), site="blog-2").status_code == 401
    assert hook(api, EVENT, signed(EVENT, secret=second), site="blog-2").status_code == 202
    assert r.xlen(INGEST) == 3


def test_other_events_are_acknowledged_and_ignored(api: str, acme: Tenant, r: redis.Redis) -> None:
    body = json.dumps({"type": "post.status_changed", "data": {"post_id": 7, "new_status": "draft"}}).encode()
    response = hook(api, body, signed(body))
    assert response.status_code == 200 and response.json() == {"status": "ignored"}
    assert not r.exists(INGEST)


# -- the document ----------------------------------------------------------------------------------


def test_the_openapi_document_is_served_and_matches_the_checked_in_copy(api: str) -> None:
    served = httpx.get(f"{api}/v1/openapi.json").json()
    checked_in = json.loads((Path(__file__).parents[1] / "functions" / "openapi.json").read_text())
    assert served == checked_in
    assert set(served["paths"]) == {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/webhooks/wordpress/{site}",
        "/v1/prompts",
        "/v1/prompts/{name}",
        "/v1/prompts/{name}/versions",
        "/v1/prompts/{name}/rollback",
    }
