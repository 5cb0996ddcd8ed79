"""An API process killed in the middle of accepting a job: the client's retry with the same
Idempotency-Key makes exactly one job, which runs, whichever step the crash came before.

The real server (``python -m functions.serve``) talks to the real Redis through a TCP gate that
stops its traffic at one exact command; the test then kills the server's process group with
SIGKILL, so Redis keeps precisely what a crash there leaves. A new server takes the retry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from infra.local_api import local_api
from localstack.endpoint import Endpoint
from shared.api.intake import webhook_job_id
from shared.config import Settings
from shared.jobs import _CLAIM, JobStore, Submission
from shared.request_idempotency import _COMPLETE
from shared.webhooks import sign
from tests.support.api import Tenant, ensure_bucket, make_tenant, new_whsec, put_site_secret, register_site
from tests.support.tcp_gate import TcpGate
from tests.support.workers import worker_env

INGEST = "{pressline:ingest}.stream"
JOB = {"input": {"title": "Crash", "source": "One. Two."}}
LOCK_S = "1"  # the in-flight lock (and the submission lease) a crashed request leaves


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def settings(redis_url: str, aws_endpoint: Endpoint) -> Settings:
    s = Settings(broker_url=redis_url, aws_endpoint_url=aws_endpoint.url)
    ensure_bucket(s)
    return s


@pytest.fixture
def tenant(r: redis.Redis, settings: Settings) -> Tenant:
    return make_tenant(r, settings, "acme")


@contextmanager
def api_server(redis_url: str, log: Path) -> Iterator[tuple[str, int]]:
    """The API on ``redis_url``; yields its URL and its process group (to kill)."""
    env = worker_env(redis_url, PRESSLINE_REQUEST_IDEMPOTENCY_LOCK_S=LOCK_S)
    with local_api(env, log) as api:
        yield api.url, api.process.pid


def post(url: str, token: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/jobs",
        json=JOB,
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
        timeout=10,
    )


def crash_at(url: str, pgid: int, gate: TcpGate, pattern: bytes, token: str, key: str) -> None:
    """Send the request, stop the server's Redis traffic at ``pattern``, then kill -9 the server."""
    gate.hold_at(pattern)
    answers: list[Any] = []
    sender = threading.Thread(target=lambda: answers.append(_try_post(url, token, key)), daemon=True)
    sender.start()
    assert gate.held.wait(30), f"the server never sent {pattern!r}"
    os.killpg(pgid, signal.SIGKILL)
    sender.join(30)
    assert answers and isinstance(answers[0], httpx.HTTPError), answers  # no answer ever came


def _try_post(url: str, token: str, key: str) -> httpx.Response | httpx.HTTPError:
    try:
        return post(url, token, key)
    except httpx.HTTPError as e:
        return e


def retry_until_accepted(url: str, token: str, key: str) -> httpx.Response:
    """The client's retries: 409 while the crashed request's lock lives, then the answer."""
    deadline = time.monotonic() + 60
    while True:
        response = post(url, token, key)
        if response.status_code != 409 or time.monotonic() > deadline:
            return response
        assert response.headers.get("Retry-After"), response.headers
        time.sleep(0.2)


def messages_of(r: redis.Redis, job_id: str) -> int:
    return sum(json.loads(fields[b"m"])["options"]["job_id"] == job_id for _, fields in r.xrange(INGEST))


def job_ids(r: redis.Redis) -> set[str]:
    return {key.decode().rsplit(".job.", 1)[1] for key in r.scan_iter("*.job.*")}


def test_a_request_killed_mid_submission_is_retried_into_exactly_one_running_job(
    redis_url: str, r: redis.Redis, tenant: Tenant, tmp_path: Path
) -> None:
    port = urlsplit(redis_url).port
    assert port is not None
    gate = TcpGate(port)
    gated_url = f"redis://127.0.0.1:{gate.port}/0"
    log = tmp_path / "api.log"
    try:
        # 1. Killed after the job record was created, before its first message was enqueued.
        with api_server(gated_url, log) as (url, pgid):
            crash_at(url, pgid, gate, b"XADD", tenant.editor, "order-before-enqueue")
        (stranded,) = job_ids(r)
        assert messages_of(r, stranded) == 0
        assert r.hget(JobStore(r, "pressline", 60).key(stranded), "state") == b"queued"

        # 2. The retry (on a new server) enqueues that same job, once. Then a second request is
        #    killed after its job was enqueued, before its answer was stored for replay.
        gate.pass_all()
        with api_server(gated_url, log) as (url, pgid):
            retried = retry_until_accepted(url, tenant.editor, "order-before-enqueue")
            assert retried.status_code == 202, retried.text
            assert retried.json()["job_id"] == stranded
            assert messages_of(r, stranded) == 1
            complete_sha = hashlib.sha1(_COMPLETE.encode()).hexdigest().encode()
            crash_at(url, pgid, gate, complete_sha, tenant.editor, "order-after-enqueue")
        (enqueued,) = job_ids(r) - {stranded}
        assert messages_of(r, enqueued) == 1

        # 3. Its retry answers with the job already made, and enqueues nothing more.
        with api_server(redis_url, log) as (url, _):
            again = retry_until_accepted(url, tenant.editor, "order-after-enqueue")
            assert again.status_code == 202, again.text
            assert again.json()["job_id"] == enqueued
            replay = post(url, tenant.editor, "order-after-enqueue")
            assert replay.headers.get("Idempotent-Replayed") == "true"
        assert job_ids(r) == {stranded, enqueued}
        assert messages_of(r, stranded) == messages_of(r, enqueued) == 1
        assert r.xlen(INGEST) == 2
    finally:
        gate.close()


def test_a_submission_lease_decides_who_enqueues(r: redis.Redis) -> None:
    """The claim's four answers, against a real Redis (the states the test above crashes into)."""
    jobs = JobStore(r, "pressline", 600)

    def claim(lease_s: float) -> Submission:
        return jobs.claim_submission("j1", tenant="acme", kind="k", stages=("a", "b"), lease_s=lease_s)

    assert claim(60) is Submission.CREATED
    assert claim(60) is Submission.IN_PROGRESS  # its submitter is alive (within the lease)
    r.hset(jobs.key("j1"), "submit_lease_ms", 1)  # ... and then died
    assert claim(60) is Submission.RESUMED
    assert claim(60) is Submission.IN_PROGRESS  # the taker holds a fresh lease
    jobs.release_submission("j1")  # the taker's enqueue failed
    assert claim(60) is Submission.RESUMED
    jobs.mark_enqueued("j1")
    assert claim(60) is Submission.ENQUEUED
    record = jobs.get("j1")
    assert record is not None and record.tenant == "acme" and [s.name for s in record.stages] == ["a", "b"]
    assert not r.hexists(jobs.key("j1"), "submit_lease_ms")


def test_a_webhook_whose_api_died_before_its_job_existed_is_taken_on_its_next_delivery(
    redis_url: str, r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    """The first delivery is marked seen, then its API process dies before the job's record is
    created: the sender's retry (same webhook id) must make the job, not get "replayed"."""
    site, secret, msg_id = "crash-blog", new_whsec(), "msg_crash_1"
    register_site(r, settings, site, "acme")
    put_site_secret(settings, site, secret)
    body = json.dumps({"type": "post.generate_requested", "data": {"title": "T", "source": "S."}}).encode()

    def deliver(url: str) -> httpx.Response:
        now = int(time.time())
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(now),
            "webhook-signature": sign(secret, msg_id, now, body),
            "content-type": "application/json",
        }
        return httpx.post(f"{url}/v1/webhooks/wordpress/{site}", content=body, headers=headers, timeout=10)

    port = urlsplit(redis_url).port
    assert port is not None
    gate = TcpGate(port)
    log = tmp_path / "api.log"
    try:
        with api_server(f"redis://127.0.0.1:{gate.port}/0", log) as (url, pgid):
            gate.hold_at(hashlib.sha1(_CLAIM.encode()).hexdigest().encode())
            sender = threading.Thread(target=lambda: _try_deliver(deliver, url), daemon=True)
            sender.start()
            assert gate.held.wait(30), "the server never tried to create the job"
            os.killpg(pgid, signal.SIGKILL)
            sender.join(30)
        job_id = webhook_job_id(site, msg_id)
        assert not r.exists(JobStore(r, "pressline", 60).key(job_id))
        with api_server(redis_url, log) as (url, _):
            retried = deliver(url)
            assert retried.status_code == 202, retried.text
            assert retried.json()["job_id"] == job_id and messages_of(r, job_id) == 1
            replayed = deliver(url)
            assert replayed.status_code == 409 and replayed.json()["error"]["code"] == "replayed_webhook"
        assert messages_of(r, job_id) == 1
    finally:
        gate.close()


def _try_deliver(deliver: Any, url: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        deliver(url)
