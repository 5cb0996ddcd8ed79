"""The WordPress pipeline end to end over real connections: the functions' HTTP API (Chalice's local
server), real Redis, moto, real ``dramatiq`` worker processes, the fake LLM provider through the
proxy core, the real local WordPress (the session's ``wordpress`` fixture, its mu-plugin sending
signed webhooks to the API), and a back office receiving the signed outcome webhooks.

Faults come from a real proxy in front of WordPress (``tests/support/fault_proxy.py``) registered as
the site's base URL, so every write really happens in WordPress; WordPress timeouts, backoffs and
the breaker are shortened through the workers' environment.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from infra.redis_server import free_port
from localstack.bootstrap import bootstrap, new_webhook_secret
from localstack.endpoint import Endpoint
from localstack.fake_provider import ROUTING_POLICY, provider_env, running_fake_provider
from shared.auth import TokenStore
from shared.aws import aws_client
from shared.config import Settings
from shared.cost.budget import BudgetGuard, Period
from shared.egress import EgressPolicy, parse_allow_list
from shared.jobs import JobStore
from shared.sites import Site, SiteRegistry
from shared.webhooks import verify
from shared.wordpress import SiteCredentials, store_credentials
from tests.support.api import ensure_bucket, streaming_server
from tests.support.fault_proxy import FaultProxy
from tests.support.wordpress import WordPressFixture
from tests.support.workers import start_workers, stop_workers, worker_children

OUTBOUND_SECRET = new_webhook_secret()
#: WordPress, its fault proxies (a fresh port per test) and the back office all listen on 127.0.0.1,
#: which the egress policy refuses unless allowed: the stack allows that address, any port.
EGRESS_ALLOW = "127.0.0.1"
FRONT_QUEUES = ("ingest", "infer", "post-process", "webhooks")
WP_TIMEOUT_S = 2.5


@dataclass
class Receiver:
    """A back-office endpoint that records every signed event it gets."""

    port: int = 0
    events: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def for_job(self, job_id: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
        with self.lock:
            found = [(h, json.loads(b)) for h, b in self.events]
        return [(h, e) for h, e in found if e["data"].get("job_id") == job_id]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {name.lower(): value for name, value in self.headers.items()}
            verify([OUTBOUND_SECRET], headers, body, now=time.time())  # a forged one -> no 2xx
            with state.lock:
                state.events.append((headers, body))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Stack:
    api: str
    client: redis.Redis
    settings: Settings
    env: dict[str, str]
    scratch: Path
    publisher: Any = None

    def start_publisher(self, **extra: str) -> Any:
        """The publish queue's own worker process (a test may kill it)."""
        self.publisher = start_workers(
            self.settings.broker_url,
            module="workers.app",
            queues=("publish",),
            threads=4,
            log=self.scratch / "publish.log",
            dramatiq_prom_port=str(free_port()),
            dramatiq_prom_db=str(self.scratch / f"prom-publish-{uuid.uuid4().hex[:6]}"),
            **{**self.env, **extra},
        )
        worker_children(self.publisher, 1)
        return self.publisher


@pytest.fixture(scope="module")
def stack(
    redis_server: str,
    aws_endpoint: Endpoint,
    receiver: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    scratch = tmp_path_factory.mktemp("pipeline")
    settings = Settings(
        broker_url=redis_server,
        aws_endpoint_url=aws_endpoint.url,
        egress_allow=parse_allow_list(EGRESS_ALLOW),
    )
    ensure_bucket(settings)
    bootstrap(settings)  # provider keys
    policy = scratch / "routing.json"
    policy.write_text(json.dumps(ROUTING_POLICY))
    with running_fake_provider() as fake:
        env = {
            **provider_env(fake),
            "PRESSLINE_ROUTING_POLICY": str(policy),
            "PRESSLINE_OUTBOUND_WEBHOOK_URLS": receiver.url,
            "PRESSLINE_OUTBOUND_WEBHOOK_SECRET": OUTBOUND_SECRET,
            "PRESSLINE_EGRESS_ALLOW": EGRESS_ALLOW,
            "PRESSLINE_MIN_BACKOFF_MS": "200",
            "PRESSLINE_MAX_BACKOFF_MS": "1500",
            "PRESSLINE_CONSUMER_DEAD_AFTER_MS": "2000",
            "PRESSLINE_API_RATE_LIMIT": "1000/s:1000",
            # WordPress: a create answered after 2.5 s is a timeout; short backoffs and breaker.
            "PRESSLINE_WORDPRESS_TIMEOUT_S": str(WP_TIMEOUT_S),
            "PRESSLINE_WORDPRESS_ATTEMPTS": "2",
            "PRESSLINE_WORDPRESS_BACKOFF_BASE_S": "0.1",
            "PRESSLINE_WORDPRESS_BACKOFF_MAX_S": "0.3",
            "PRESSLINE_WORDPRESS_RATE_PER_S": "0",
            "PRESSLINE_WORDPRESS_BREAKER_FAIL_MAX": "3",
            "PRESSLINE_WORDPRESS_BREAKER_RESET_S": "2",
        }
        front = start_workers(
            redis_server,
            module="workers.app",
            queues=FRONT_QUEUES,
            threads=8,
            log=scratch / "front.log",
            dramatiq_prom_port=str(free_port()),
            dramatiq_prom_db=str(scratch / "prom-front"),
            **env,
        )
        state = Stack("", redis.Redis.from_url(redis_server), settings, env, scratch)
        try:
            worker_children(front, 1)
            state.start_publisher()
            with streaming_server(redis_server, scratch / "api.log", **env) as api:
                state.api = api
                yield state
        finally:
            if state.publisher is not None:
                stop_workers(state.publisher)
            stop_workers(front)


def tenant_tokens(stack: Stack) -> tuple[str, dict[str, str]]:
    """A fresh tenant (tests share one Redis with running workers, so nothing is flushed)."""
    tenant = f"t{uuid.uuid4().hex[:10]}"
    tokens = TokenStore(stack.client, stack.settings.namespace)
    return tenant, {role: tokens.mint(tenant, role)[0] for role in ("reader", "editor", "publisher")}


def submit(stack: Stack, token: str, body: dict[str, Any]) -> tuple[str, httpx.Response]:
    response = httpx.post(
        f"{stack.api}/v1/jobs", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 202, response.text
    return response.json()["job_id"], response


def wait_job(stack: Stack, token: str, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        view: dict[str, Any] = httpx.get(
            f"{stack.api}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).json()
        if view["state"] in ("succeeded", "failed"):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not finish: {view}")
        time.sleep(0.1)


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def outcome(receiver: Receiver, job_id: str) -> tuple[dict[str, str], dict[str, Any]]:
    (event,) = wait_for(lambda: receiver.for_job(job_id), 20, "the outcome webhook")
    return event


# -- without a site: the archive-only run, the run record, cost, trace and outcome events ------------------


def test_an_api_job_without_a_site_runs_every_stage_and_reports_completion(
    stack: Stack, receiver: Receiver
) -> None:
    tenant, tokens = tenant_tokens(stack)
    job_id, accepted = submit(stack, tokens["editor"], {"input": {"title": "Tides", "source": "The moon."}})
    view = wait_job(stack, tokens["reader"], job_id)
    assert view["state"] == "succeeded", view
    assert [(s["name"], s["state"], s["attempts"]) for s in view["stages"]] == [
        ("ingest", "succeeded", 1),
        ("infer", "succeeded", 1),
        ("post_process", "succeeded", 1),
        ("publish", "succeeded", 1),
    ]
    for stage in view["stages"]:
        assert stage["started_at"] <= stage["finished_at"] and stage["duration_ms"] >= stage["run_ms"] >= 0
    assert view["cost"]["pico_usd"] > 0  # the LLM call, charged to the job by the ledger
    assert view["post"] is None and view["site"] is None

    def archived() -> dict[str, Any] | None:
        """The view once every stage's record left the buffer for S3 (flushed every few seconds)."""
        again: dict[str, Any] = httpx.get(
            f"{stack.api}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {tokens['reader']}"}
        ).json()
        return again if all(s["archive"]["object"] for s in again["stages"]) else None

    flushed = wait_for(archived, 30, "the stages' archive records in S3")
    bucket = f"s3://{stack.settings.payload_bucket}/{tenant}/archive/"
    ingest = flushed["stages"][0]["archive"]
    assert flushed["input_ref"] == f"{ingest['object']}#line={ingest['line']}"
    assert flushed["input_ref"].startswith(bucket) and flushed["result_ref"].startswith(bucket)
    assert view["trace_id"] == accepted.headers["X-Trace-Id"]  # one trace from the request to the end
    headers, event = outcome(receiver, job_id)
    assert event["type"] == "run.completed" and headers["webhook-id"].startswith("msg_")
    data = event["data"]
    assert (data["job_id"], data["state"], data["trace_id"]) == (job_id, "succeeded", view["trace_id"])
    assert data["cost"] == view["cost"]
    assert [s["state"] for s in data["stages"]] == ["succeeded"] * 4


def test_a_refused_budget_fails_the_run_for_good_and_reports_it(stack: Stack, receiver: Receiver) -> None:
    tenant, tokens = tenant_tokens(stack)
    BudgetGuard(stack.client, stack.settings.namespace).set_budget(tenant, Period.DAY, hard_pico=1)
    job_id, _ = submit(stack, tokens["editor"], {"input": {"title": "Tides", "source": "The moon."}})
    view = wait_job(stack, tokens["reader"], job_id)
    assert view["state"] == "failed" and "budget" in view["last_error"]
    assert [(s["name"], s["state"]) for s in view["stages"]] == [
        ("ingest", "succeeded"),
        ("infer", "failed"),
        ("post_process", "skipped"),
        ("publish", "skipped"),
    ]
    assert view["stages"][1]["attempts"] == 1  # permanent: no retries
    _, event = outcome(receiver, job_id)
    assert event["type"] == "run.failed" and "budget" in event["data"]["error"]


# -- against the real local WordPress -------------------------------------------------------------------


def add_site(
    stack: Stack,
    wordpress: WordPressFixture,
    tenant: str,
    *,
    role: str = "author",
    publish: bool = False,
    base_url: str | None = None,
) -> str:
    """Register a site of ``tenant`` on the session's WordPress, as the ``role`` user (credentials in
    Secrets Manager); ``base_url``: reach it through a fault proxy."""
    site = f"wp-{uuid.uuid4().hex[:10]}"
    secret_id = f"pressline/sites/{site}/wordpress"
    store_credentials(aws_client("secretsmanager", stack.settings), secret_id, getattr(wordpress, role))
    egress = EgressPolicy.from_settings(stack.settings)
    registry = SiteRegistry(stack.client, stack.settings.namespace, egress)
    registry.register(Site(site, tenant, publish, base_url or wordpress.base_url, secret_id))
    return site


def posts_of_job(wordpress: WordPressFixture, job_id: str) -> list[dict[str, Any]]:
    return wordpress.posts(pressline_external_ref=job_id)


@pytest.fixture
def faults(wordpress: WordPressFixture) -> Iterator[FaultProxy]:
    proxy = FaultProxy(wordpress.base_url).start()
    try:
        yield proxy
    finally:
        proxy.close()


def article(title: str) -> dict[str, str]:
    return {"title": title, "source": "The moon pulls the sea. The Earth turns beneath the bulge."}


def assert_generated_draft(post: dict[str, Any], title: str, job_id: str, trace_id: str) -> None:
    """The post holds the pipeline's article (the fake model's words, sanitised) and its references."""
    assert post["title"]["raw"] == title
    content = post["content"]["raw"]
    assert content.startswith("<p>") and len(content.split()) >= 5 and "<script" not in content
    assert post["meta"]["pressline_external_ref"] == job_id
    assert post["meta"]["pressline_trace_id"] == trace_id


def test_an_api_job_writes_a_draft_with_the_article_and_its_trace(
    stack: Stack, wordpress: WordPressFixture, receiver: Receiver
) -> None:
    tenant, tokens = tenant_tokens(stack)
    site = add_site(stack, wordpress, tenant, publish=True)  # the site may publish; this job did not ask
    title = f"Tides {uuid.uuid4().hex[:6]}"
    job_id, accepted = submit(stack, tokens["editor"], {"site": site, "input": article(title)})
    view = wait_job(stack, tokens["reader"], job_id)
    assert view["state"] == "succeeded", view
    assert [(s["name"], s["state"], s["attempts"]) for s in view["stages"]] == [
        ("ingest", "succeeded", 1),
        ("infer", "succeeded", 1),
        ("post_process", "succeeded", 1),
        ("publish", "succeeded", 1),
    ]
    assert view["cost"]["pico_usd"] > 0 and view["site"] == site
    assert view["trace_id"] == accepted.headers["X-Trace-Id"]
    (post,) = posts_of_job(wordpress, job_id)
    assert view["post"] == {
        "id": post["id"],
        "link": post["link"],
        "status": "draft",
        "publish_refused": False,
    }
    assert post["status"] == "draft"
    assert_generated_draft(post, title, job_id, view["trace_id"])
    _, event = outcome(receiver, job_id)
    assert event["type"] == "run.completed" and event["data"]["post"]["id"] == post["id"]
    assert event["data"]["site"] == site and event["data"]["trace_id"] == view["trace_id"]


def test_an_authors_pending_post_becomes_a_generated_draft_through_the_signed_webhook(
    stack: Stack, wordpress: WordPressFixture
) -> None:
    tenant, tokens = tenant_tokens(stack)
    # What make run does: WordPress's mu-plugin signs with the site's secret and posts to the API.
    with wordpress.hooked_site(stack.settings, stack.client, tenant, stack.api) as site:
        title = f"Neap tides {uuid.uuid4().hex[:6]}"
        asked = wordpress.ask_for_a_draft(title, "<p>Write about neap tides and the moon.</p>")
        (post,) = wait_for(lambda: wordpress.generated_drafts(title, asked), 30, "the generated draft")
        job_id = post["meta"]["pressline_external_ref"]
        assert job_id.startswith("wh")  # the job id derived from the site and the webhook id
        view = wait_job(stack, tokens["reader"], job_id)
        assert view["state"] == "succeeded" and view["site"] == site
        assert [s["state"] for s in view["stages"]] == ["succeeded"] * 4
        (post,) = posts_of_job(wordpress, job_id)
        assert post["status"] == "draft" and view["post"]["id"] == post["id"]
        assert_generated_draft(post, title, job_id, view["trace_id"])
        assert view["cost"]["pico_usd"] > 0


def test_the_publish_gates(stack: Stack, wordpress: WordPressFixture) -> None:
    tenant, tokens = tenant_tokens(stack)
    open_site = add_site(stack, wordpress, tenant, publish=True)
    closed_site = add_site(stack, wordpress, tenant, publish=False)
    contributor_site = add_site(stack, wordpress, tenant, role="contributor", publish=True)

    refused = httpx.post(
        f"{stack.api}/v1/jobs",
        json={"site": open_site, "publish": True, "input": article("No scope")},
        headers={"Authorization": f"Bearer {tokens['editor']}"},
        timeout=10,
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"

    cases = {
        "editor, no publish scope": (tokens["editor"], open_site, False, "draft", False),
        "site gate closed": (tokens["publisher"], closed_site, True, "draft", False),
        "contributor credential": (tokens["publisher"], contributor_site, True, "pending", True),
        "both gates open": (tokens["publisher"], open_site, True, "publish", False),
    }
    jobs = {
        name: submit(stack, token, {"site": site, "publish": publish, "input": article(name)})[0]
        for name, (token, site, publish, _, _) in cases.items()
    }
    for name, (_, _, _, status, publish_refused) in cases.items():
        view = wait_job(stack, tokens["reader"], jobs[name])
        assert view["state"] == "succeeded", (name, view)
        assert (view["post"]["status"], view["post"]["publish_refused"]) == (status, publish_refused), name
        (post,) = posts_of_job(wordpress, jobs[name])
        assert post["status"] == status and post["id"] == view["post"]["id"], name


@pytest.fixture
def elsewhere_on_loopback() -> Iterator[list[str]]:
    """A WordPress-looking server on 127.0.0.2 (loopback, but not the 127.0.0.1 the stack allows);
    yields the paths it was asked for."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        do_POST = do_GET

    server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    seen.append(f"http://127.0.0.2:{server.server_address[1]}")  # seen[0]: its URL
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_site_whose_url_resolves_to_a_refused_address_fails_the_job_and_gets_no_request(
    stack: Stack, receiver: Receiver, elsewhere_on_loopback: list[str]
) -> None:
    """Registration refuses such a base_url; the URL in the site's credentials secret (which
    registration never sees) is refused when the publish stage connects: the job fails for good on
    its first attempt and the Application Password is never sent."""
    url = elsewhere_on_loopback[0]
    tenant, tokens = tenant_tokens(stack)
    egress = EgressPolicy.from_settings(stack.settings)
    registry = SiteRegistry(stack.client, stack.settings.namespace, egress)
    with pytest.raises(ValueError, match=r"refused address: 127\.0\.0\.2 port \d+: refused, loopback"):
        registry.register(Site(f"wp-{uuid.uuid4().hex[:10]}", tenant, False, url))
    site = f"wp-{uuid.uuid4().hex[:10]}"
    secret_id = f"pressline/sites/{site}/wordpress"
    creds = SiteCredentials(url, "author", "abcd efgh ijkl mnop qrst uvwx")
    store_credentials(aws_client("secretsmanager", stack.settings), secret_id, creds)
    registry.register(Site(site, tenant, False, None, secret_id))

    job_id, _ = submit(stack, tokens["editor"], {"site": site, "input": article("Nowhere")})
    view = wait_job(stack, tokens["reader"], job_id)
    assert view["state"] == "failed", view
    assert "the site's URL resolves to a refused address (loopback)" in view["last_error"]
    assert "abcd" not in view["last_error"]
    assert [(s["name"], s["state"]) for s in view["stages"]][3] == ("publish", "failed")
    assert view["stages"][3]["attempts"] == 1  # permanent: not retried
    assert view["post"] is None
    assert elsewhere_on_loopback == [url]  # not one request reached it
    _, event = outcome(receiver, job_id)
    assert event["type"] == "run.failed" and "refused address" in event["data"]["error"]


def test_kill_9_of_the_publish_worker_mid_call_leaves_exactly_one_post(
    stack: Stack, wordpress: WordPressFixture, faults: FaultProxy
) -> None:
    tenant, tokens = tenant_tokens(stack)
    site = add_site(stack, wordpress, tenant, base_url=faults.url)
    faults.delay(6.0, method="POST", path="/wp/v2/posts")  # the create is held: the worker is mid-call
    job_id, _ = submit(stack, tokens["editor"], {"site": site, "input": article("Killed mid-call")})
    wait_for(lambda: faults.requests("POST", "/wp/v2/posts"), 30, "the publish worker's create")
    killed = stack.publisher
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(10)
    assert killed.returncode == -signal.SIGKILL
    record = JobStore(stack.client, stack.settings.namespace, 60).get(job_id)
    assert record is not None and record.stages[3].state.value == "running"  # killed mid-run
    stack.start_publisher()  # its recovery claims the dead consumer's message once its heartbeat expired
    view = wait_job(stack, tokens["reader"], job_id, timeout_s=60)
    assert view["state"] == "succeeded", view
    # The killed run, the redelivery, and one more if the redelivery found the dead run's lease
    # not yet lapsed (it is retried when the lease ends rather than holding a thread until then).
    assert view["stages"][3]["attempts"] >= 2
    posts = posts_of_job(wordpress, job_id)
    assert [p["id"] for p in posts] == [view["post"]["id"]]
    creates = [s for s in faults.requests("POST") if s.path.split("?")[0].endswith("/wp/v2/posts")]
    assert len(creates) == 1  # the redelivery found the killed run's post and updated it


def test_a_create_that_timed_out_but_succeeded_leaves_one_post(
    stack: Stack, wordpress: WordPressFixture, faults: FaultProxy
) -> None:
    tenant, tokens = tenant_tokens(stack)
    site = add_site(stack, wordpress, tenant, base_url=faults.url)
    faults.delay(WP_TIMEOUT_S + 1.5, method="POST", path="/wp/v2/posts")  # done, answered too late
    job_id, _ = submit(stack, tokens["editor"], {"site": site, "input": article("Slow create")})
    view = wait_job(stack, tokens["reader"], job_id)
    assert view["state"] == "succeeded", view
    (post,) = posts_of_job(wordpress, job_id)
    assert view["post"]["id"] == post["id"] and post["status"] == "draft"
    creates = [s for s in faults.requests("POST") if s.path.split("?")[0].endswith("/wp/v2/posts")]
    assert len(creates) == 1 and creates[0].faulted == "delay"
    assert faults.requests("POST", f"/wp/v2/posts/{post['id']}")  # found after the timeout, updated


def test_a_wordpress_answering_503_is_backed_off_breaks_the_circuit_and_the_job_completes(
    stack: Stack, wordpress: WordPressFixture, faults: FaultProxy
) -> None:
    tenant, tokens = tenant_tokens(stack)
    site = add_site(stack, wordpress, tenant, base_url=faults.url)
    outage_s = 5.0
    faults.fail(seconds=outage_s, status=503, retry_after="0.2")
    outage_ends = time.time() + outage_s
    job_id, _ = submit(stack, tokens["editor"], {"site": site, "input": article("Through an outage")})
    store = JobStore(stack.client, stack.settings.namespace, 60)
    errors: set[str] = set()

    def final() -> bool:
        record = store.get(job_id)
        assert record is not None
        if record.stages[3].last_error:
            errors.add(record.stages[3].last_error)
        return record.state.value in ("succeeded", "failed")

    wait_for(final, 40, "the job to finish")
    view = wait_job(stack, tokens["reader"], job_id)
    assert view["state"] == "succeeded", view
    publish = view["stages"][3]
    assert publish["attempts"] >= 2  # retried by the broker, not held in one call
    assert any("breaker_open" in e for e in errors), errors  # the site's breaker opened
    failed = [s for s in faults.requests() if s.faulted == "fail"]
    assert len(failed) >= 3 and all(s.status == 503 for s in failed)
    # the breaker spared WordPress: far fewer requests than back-to-back retries for 5 s would send
    assert len(failed) <= 12, len(failed)
    (post,) = posts_of_job(wordpress, job_id)
    assert view["post"]["id"] == post["id"]
    record = store.get(job_id)
    assert record is not None and record.stages[3].finished_at_ms is not None
    assert record.stages[3].finished_at_ms >= (outage_ends - 0.2) * 1000  # it waited the outage out
