"""The local WordPress bootstrap, Pressline's mu-plugin and the WordPress client, against a real
WordPress (Debian's package, MariaDB, php -S), a real Redis and moto's server.

Faults (503s, answers that arrive after the client gave up) come from a real proxy in front of
WordPress (tests/support/fault_proxy.py), so every write really happens in WordPress.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from infra import wordpress as wp
from localstack.bootstrap import new_webhook_secret
from localstack.endpoint import Endpoint
from shared.config import Settings
from shared.sites import SiteRegistry
from shared.webhooks import WebhookSecrets, verify
from shared.wordpress import (
    PermissionRefused,
    SiteCredentials,
    SiteUnavailable,
    WordPressClient,
    load_credentials,
)
from tests.support.fault_proxy import FaultProxy
from tests.support.wordpress import WordPressFixture

NS = "wptest"


class Sleeps:
    """A real ``sleep`` that remembers how long it was asked to wait."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        time.sleep(seconds)


def make_client(
    creds: SiteCredentials,
    redis_url: str,
    *,
    site: str | None = None,
    base_url: str | None = None,
    **kwargs: Any,
) -> WordPressClient:
    options: dict[str, Any] = {
        "timeout_s": 10.0,
        "attempts": 4,
        "backoff_base_s": 0.05,
        "backoff_max_s": 2.0,
        "rate_per_s": 0,
        "registry": CollectorRegistry(),
    }
    options.update(kwargs)
    if base_url is not None:
        creds = replace(creds, base_url=base_url)
    return WordPressClient(
        site or f"s{uuid.uuid4().hex[:8]}",
        creds,
        http=httpx.Client(),
        redis=redis.Redis.from_url(redis_url),
        namespace=NS,
        **options,
    )


def posts_with_ref(wordpress: WordPressFixture, ref: str) -> list[dict[str, Any]]:
    """What WordPress itself holds for ``ref``, asked as the administrator, bypassing the client."""
    response = httpx.get(
        f"{wordpress.base_url}/wp-json/wp/v2/posts",
        params={"pressline_external_ref": ref, "status": "any", "context": "edit", "per_page": 100},
        auth=(wordpress.admin.username, wordpress.admin.app_password),
        timeout=10,
    )
    response.raise_for_status()
    posts: list[dict[str, Any]] = response.json()
    return posts


@pytest.fixture
def proxy(wordpress: WordPressFixture) -> Iterator[FaultProxy]:
    fault = FaultProxy(wordpress.base_url).start()
    try:
        yield fault
    finally:
        fault.close()


def ref() -> str:
    return f"job-{uuid.uuid4().hex}"


# --- bootstrap ----------------------------------------------------------------------------------


def test_bootstrap_is_idempotent_and_reissues_only_its_own_passwords(wordpress: WordPressFixture) -> None:
    config = replace(wordpress.config, app_name="idempotence-test")
    first = wp.up(config, say=lambda _: None)
    second = wp.up(config, say=lambda _: None)
    assert first.base_url == second.base_url == wordpress.base_url
    assert first.processes == second.processes == ()  # already running: nothing restarted

    def me(creds: SiteCredentials) -> int:
        url = f"{wordpress.base_url}/wp-json/wp/v2/users/me"
        return httpx.get(url, auth=(creds.username, creds.app_password), timeout=10).status_code

    assert first.admin.app_password != second.admin.app_password
    assert me(second.admin) == me(second.contributor) == 200
    assert me(first.admin) == 401  # re-issued: the old one is gone
    assert me(wordpress.admin) == 200  # another name's password is untouched

    users = httpx.get(
        f"{wordpress.base_url}/wp-json/wp/v2/users",
        params={"context": "edit", "per_page": 100},
        auth=(second.admin.username, second.admin.app_password),
        timeout=10,
    ).json()
    assert sorted((u["username"], tuple(u["roles"])) for u in users) == [
        ("admin", ("administrator",)),
        ("author", ("author",)),
        ("contributor", ("contributor",)),
    ]
    state = wp.status(config)
    assert state["php"] and state["mariadb"] and state["config_linked"]
    assert os.stat(config.path("credentials.json")).st_mode & 0o777 == 0o600
    assert second.admin.app_password not in repr(second)


def test_instances_get_distinct_config_names(tmp_path: Any, wordpress: WordPressFixture) -> None:
    other = wp.WordPressConfig(root=tmp_path / "other")
    assert other.instance != wordpress.config.instance
    assert wordpress.config.config_link.is_symlink()


# --- the client ---------------------------------------------------------------------------------


def test_upsert_creates_then_updates_the_same_post(wordpress: WordPressFixture, redis_url: str) -> None:
    client = make_client(wordpress.author, redis_url)
    key = ref()
    first = client.upsert_post(external_ref=key, title="First", content_html="<p>one</p>")
    second = client.upsert_post(external_ref=key, title="Second", content_html="<p>two</p>")
    assert first.created and not second.created
    assert first.id == second.id and second.status == "draft"
    found = client.find_by_ref(key)
    assert found is not None and found.id == first.id
    post = client.get_post(first.id)
    assert post["title"]["raw"] == "Second" and "two" in post["content"]["raw"]
    assert post["meta"]["pressline_external_ref"] == key
    assert len(posts_with_ref(wordpress, key)) == 1
    assert client.find_by_ref(ref()) is None


def test_trace_id_reaches_wordpress_in_meta_and_headers(
    wordpress: WordPressFixture, redis_url: str, proxy: FaultProxy
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    registry = CollectorRegistry()
    client = make_client(
        wordpress.admin, redis_url, site="traced", base_url=proxy.url, tracer=tracer, registry=registry
    )
    with tracer.start_as_current_span("job") as job:
        trace_id = format(job.get_span_context().trace_id, "032x")
        post = client.upsert_post(external_ref=ref(), title="Traced", content_html="<p>x</p>")
    assert client.get_post(post.id)["meta"]["pressline_trace_id"] == trace_id

    create = proxy.requests("POST", "/wp/v2/posts")[0]
    assert create.headers["x-pressline-trace-id"] == trace_id
    assert create.headers["traceparent"].split("-")[1] == trace_id
    assert create.response_headers["x-pressline-trace-id"] == trace_id  # echoed by the mu-plugin
    assert "authorization" in create.headers  # Basic auth with the Application Password

    spans = [s for s in exporter.get_finished_spans() if s.name == "wordpress.request"]
    assert [(s.attributes or {}).get("http.route") for s in spans][:2] == ["/wp/v2/posts", "/wp/v2/posts"]
    first = spans[0].attributes or {}
    assert first["wordpress.site"] == "traced" and first["http.response.status_code"] == 200
    assert first["wordpress.attempt"] == 1
    assert all(s.context.trace_id == job.get_span_context().trace_id for s in spans[:2])
    ok = registry.get_sample_value(
        "pressline_wordpress_requests_total", {"site": "traced", "method": "POST", "outcome": "ok"}
    )
    assert ok == 1.0
    assert registry.get_sample_value(
        "pressline_wordpress_request_seconds_count", {"site": "traced", "method": "GET"}
    )
    assert registry.get_sample_value("pressline_wordpress_breaker_state", {"site": "traced"}) == 0.0


def test_contributor_drafts_but_may_not_publish(wordpress: WordPressFixture, redis_url: str) -> None:
    client = make_client(wordpress.contributor, redis_url)
    key = ref()
    draft = client.upsert_post(external_ref=key, title="Draft", content_html="<p>d</p>")
    assert draft.created and draft.status == "draft"
    with pytest.raises(PermissionRefused) as refused:
        client.upsert_post(external_ref=key, title="Draft", content_html="<p>d</p>", status="publish")
    assert refused.value.status == 403 and refused.value.kind == "rest_cannot_publish"
    assert not refused.value.retryable
    assert wordpress.contributor.app_password not in str(refused.value)
    posts = posts_with_ref(wordpress, key)
    assert [(p["id"], p["status"]) for p in posts] == [(draft.id, "draft")]

    pending = client.upsert_post(external_ref=key, title="Draft", content_html="<p>d</p>", status="pending")
    assert pending.id == draft.id and pending.status == "pending"

    with pytest.raises(PermissionRefused) as publish_new:
        client.upsert_post(external_ref=ref(), title="New", content_html="<p>n</p>", status="publish")
    assert publish_new.value.status == 403


def test_bad_credentials_are_refused_without_leaking_them(
    wordpress: WordPressFixture, redis_url: str
) -> None:
    wrong = SiteCredentials(wordpress.base_url, "author", "abcd efgh ijkl mnop qrst uvwx")
    client = make_client(wrong, redis_url)
    with pytest.raises(PermissionRefused) as refused:
        client.upsert_post(external_ref=ref(), title="x", content_html="x")
    assert refused.value.status == 401
    assert "abcd" not in str(refused.value) and "abcd" not in repr(wrong) and "abcd" not in repr(client)


def test_a_create_that_timed_out_but_succeeded_leaves_one_post(
    wordpress: WordPressFixture, redis_url: str, proxy: FaultProxy
) -> None:
    client = make_client(wordpress.author, redis_url, base_url=proxy.url, timeout_s=1.0)
    key = ref()
    proxy.delay(2.0, method="POST", path="/wp/v2/posts")  # the create happens, its answer comes too late
    post = client.upsert_post(external_ref=key, title="Slow", content_html="<p>slow</p>")
    assert post.created
    assert [p["id"] for p in posts_with_ref(wordpress, key)] == [post.id]
    creates = [s for s in proxy.requests("POST") if s.path.split("?")[0].endswith("/wp/v2/posts")]
    assert len(creates) == 1 and creates[0].faulted == "delay"
    # after the timeout: a lookup found the post, which was then updated rather than created again
    assert proxy.requests("POST", f"/wp/v2/posts/{post.id}")


def test_503s_back_off_open_the_breaker_and_the_write_completes_after_recovery(
    wordpress: WordPressFixture, redis_url: str, proxy: FaultProxy
) -> None:
    registry = CollectorRegistry()
    sleeps = Sleeps()
    client = make_client(
        wordpress.author,
        redis_url,
        site="flaky",
        base_url=proxy.url,
        breaker_fail_max=3,
        breaker_reset_s=2.0,  # pybreaker keeps opened_at in whole seconds: leave room for that
        registry=registry,
        sleep=sleeps,
    )
    key = ref()
    proxy.fail(seconds=2.5, status=503, retry_after="0.2")
    with pytest.raises(SiteUnavailable) as unavailable:
        client.upsert_post(external_ref=key, title="Flaky", content_html="<p>f</p>")
    assert unavailable.value.kind == "breaker_open" and unavailable.value.retryable
    assert unavailable.value.retry_after_s is not None and 0 < unavailable.value.retry_after_s <= 2.0
    assert sleeps.calls[:2] == [0.2, 0.2]  # the site's Retry-After, honoured
    assert len(proxy.requests()) == 3  # the breaker stopped the 4th attempt before it left
    assert registry.get_sample_value("pressline_wordpress_breaker_state", {"site": "flaky"}) == 2.0

    # What a job does: wait as told, try again, until WordPress is back.
    deadline = time.monotonic() + 20
    while True:
        try:
            post = client.upsert_post(external_ref=key, title="Flaky", content_html="<p>f</p>")
            break
        except SiteUnavailable as error:
            assert time.monotonic() < deadline, "never recovered"
            time.sleep(error.retry_after_s or 0.1)
    assert post.created
    assert [p["id"] for p in posts_with_ref(wordpress, key)] == [post.id]
    assert registry.get_sample_value("pressline_wordpress_breaker_state", {"site": "flaky"}) == 0.0
    counts = {
        outcome: registry.get_sample_value(
            "pressline_wordpress_requests_total", {"site": "flaky", "method": "GET", "outcome": outcome}
        )
        for outcome in ("server_error", "breaker_open", "ok")
    }
    assert counts["server_error"] and counts["server_error"] >= 3
    assert counts["breaker_open"] and counts["ok"]


def test_retry_after_beyond_the_cap_fails_fast_and_full_jitter_otherwise(
    wordpress: WordPressFixture, redis_url: str, proxy: FaultProxy
) -> None:
    sleeps = Sleeps()
    client = make_client(wordpress.author, redis_url, base_url=proxy.url, sleep=sleeps, backoff_max_s=2.0)
    proxy.fail(count=1, status=429, retry_after="30")
    with pytest.raises(SiteUnavailable) as later:
        client.find_by_ref(ref())
    assert later.value.retry_after_s == 30.0 and later.value.status == 429 and sleeps.calls == []

    proxy.fail(count=2, status=502, retry_after=None)
    assert client.find_by_ref(ref()) is None
    assert len(sleeps.calls) == 2
    assert 0 <= sleeps.calls[0] <= 0.05 and 0 <= sleeps.calls[1] <= 0.1  # full jitter under 2^n x base


def test_concurrent_upserts_of_one_ref_make_one_post(wordpress: WordPressFixture, redis_url: str) -> None:
    key = ref()
    results: list[Any] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def deliver(n: int) -> None:
        client = make_client(wordpress.author, redis_url, site="busy")  # one client per "process"
        start.wait()
        try:
            results.append(client.upsert_post(external_ref=key, title=f"v{n}", content_html=f"<p>{n}</p>"))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len({r.id for r in results}) == 1 and sum(r.created for r in results) == 1
    assert len(posts_with_ref(wordpress, key)) == 1


def test_rate_limit_spaces_requests_across_clients(wordpress: WordPressFixture, redis_url: str) -> None:
    sleeps = Sleeps()
    a = make_client(wordpress.author, redis_url, site="limited", rate_per_s=10, rate_burst=1, sleep=sleeps)
    b = make_client(wordpress.author, redis_url, site="limited", rate_per_s=10, rate_burst=1, sleep=sleeps)
    started = time.monotonic()
    for client in (a, b, a, b, a):
        client.find_by_ref(ref())
    assert time.monotonic() - started >= 0.38  # 5 requests at 10/s: 4 intervals of 0.1 s
    assert sleeps.calls

    tight = make_client(
        wordpress.author, redis_url, site="limited", rate_per_s=0.1, rate_burst=1, timeout_s=0.5
    )
    tight.find_by_ref(ref())
    with pytest.raises(SiteUnavailable) as limited:
        tight.find_by_ref(ref())
    assert limited.value.kind == "rate_limited" and (limited.value.retry_after_s or 0) > 1


# --- sites, Secrets Manager -----------------------------------------------------------------------


def test_register_site_stores_credentials_and_for_site_uses_them(
    wordpress: WordPressFixture, redis_url: str, aws_endpoint: Endpoint
) -> None:
    # The session's WordPress is loopback: allowed explicitly, as make run allows its own.
    settings = replace(
        Settings.from_env(), broker_url=redis_url, namespace=NS, egress_allow=wordpress.egress_allow
    )
    client = redis.Redis.from_url(redis_url)
    try:
        site = wp.register_site(
            settings,
            client,
            site="wp-reg",
            tenant="acme",
            publish=True,
            config=wordpress.config,
            say=lambda _: None,
        )
        record = SiteRegistry(client, NS).get("wp-reg")
        assert record is not None and record.tenant == "acme" and record.publish_allowed
        assert record.base_url == wordpress.base_url
        assert record.credentials_secret == "pressline/sites/wp-reg/wordpress"
        from shared.aws import aws_client

        sm = aws_client("secretsmanager", settings)
        stored = load_credentials(sm, record.credentials_secret)
        assert stored == site.author
        # the mu-plugin signs with the secret Pressline's WebhookSecrets reads for the site
        secrets = WebhookSecrets.from_settings(settings, sm).for_site("wp-reg")
        config_text = wordpress.config.path("config.php").read_text()
        assert secrets and secrets[0] in config_text
        assert "/v1/webhooks/wordpress/wp-reg" in config_text

        wp_client = WordPressClient.for_site("wp-reg", settings, client, secrets_client=sm)
        key = ref()
        post = wp_client.upsert_post(external_ref=key, title="Via the registry", content_html="<p>r</p>")
        assert wp_client.find_by_ref(key) == replace(post, created=False)
    finally:
        wordpress.set_webhook(None, None)


# --- the mu-plugin's webhooks ---------------------------------------------------------------------


class Receiver:
    """A webhook endpoint that records what it gets and answers 202."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.arrived:
                    receiver.events.append((dict(self.headers.items()), body))
                    receiver.arrived.notify_all()
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/webhooks/wordpress/test"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[tuple[dict[str, str], bytes]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.events) >= count, timeout_s)
            return list(self.events)


def test_mu_plugin_sends_signed_events(wordpress: WordPressFixture, redis_url: str) -> None:
    receiver = Receiver()
    secret = new_webhook_secret()
    wordpress.set_webhook(receiver.url, secret)
    try:
        # An author asks for a generated draft: a pending post with content and no Pressline ref.
        response = httpx.post(
            f"{wordpress.base_url}/wp-json/wp/v2/posts",
            json={"title": "Tides", "content": "<p>Write about <b>tides</b>.</p>", "status": "pending"},
            auth=(wordpress.author.username, wordpress.author.app_password),
            timeout=15,
        )
        assert response.status_code == 201
        post_id = response.json()["id"]
        events = receiver.wait_for(2)
        assert len(events) == 2
        bodies = []
        for headers, body in events:
            verify([secret], headers, body, now=time.time())  # raises unless signed with the secret
            assert headers["webhook-signature"].startswith("v1,")
            bodies.append(json.loads(body))
        changed, generate = bodies
        assert changed["type"] == "post.status_changed"
        assert changed["data"]["post_id"] == post_id and changed["data"]["new_status"] == "pending"
        assert changed["data"]["old_status"] == "new"
        assert generate["type"] == "post.generate_requested"
        assert generate["data"] == {
            "post_id": post_id,
            "title": "Tides",
            "source": "Write about tides.",
            "publish": False,
        }
        assert events[0][0]["webhook-id"] != events[1][0]["webhook-id"]

        # Pressline's own posts carry a ref: a status change only, with the ref and the trace id.
        client = make_client(wordpress.author, redis_url)
        key = ref()
        client.upsert_post(
            external_ref=key, title="Generated", content_html="<p>g</p>", status="pending", trace_id="t" * 32
        )
        events = receiver.wait_for(3)
        assert len(events) == 3
        third = json.loads(events[2][1])
        assert third["type"] == "post.status_changed"
        assert third["data"]["external_ref"] == key and third["data"]["trace_id"] == "t" * 32
        with pytest.raises(Exception, match="bad_signature"):
            verify([new_webhook_secret()], events[2][0], events[2][1], now=time.time())
    finally:
        wordpress.set_webhook(None, None)
        receiver.server.shutdown()


# --- small pieces ---------------------------------------------------------------------------------


def test_sites_registered_before_base_url_existed_still_load(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.hset(f"{NS}.sites", "old", json.dumps({"site": "old", "tenant": "acme", "publish_allowed": True}))
    site = SiteRegistry(client, NS).get("old")
    assert (
        site is not None
        and site.publish_allowed
        and site.base_url is None
        and site.credentials_secret is None
    )
    with pytest.raises(ValueError):
        SiteRegistry(client, NS).register(replace(site, base_url="http://user:pw@blog.example"))


def test_retry_after_and_credentials_parsing() -> None:
    from shared.wordpress.backoff import parse_retry_after

    assert parse_retry_after("2.5") == 2.5 and parse_retry_after("-3") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    creds = SiteCredentials("http://blog.example/", "bot", "secret pass word")
    assert creds.base_url == "http://blog.example" and "secret" not in repr(creds)
    assert SiteCredentials.from_json(creds.to_json()) == creds
    with pytest.raises(ValueError):
        SiteCredentials("http://bot:pw@blog.example", "bot", "x")
