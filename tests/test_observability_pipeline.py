"""Observability of the whole pipeline over real connections: the functions' HTTP server
(``functions.serve``), real ``dramatiq`` worker trees for the four stage queues and the outbound
webhooks, the fake LLM provider through the proxy core, the real local WordPress, real Redis and
moto; spans exported over OTLP/HTTP to a receiver decoding protobuf, log lines pushed to a
Loki-protocol receiver (no real Loki exists for this machine: see tests/support/telemetry_receivers.py)
and queried back, and a real Prometheus with the rules scraping the API and every worker tree.

1. One trace id from the API request (and from WordPress's signed webhook) through the enqueue,
   every stage, the provider attempt and the WordPress call, in the log lines of the API and the
   workers, and in the post's ``pressline_trace_id`` meta.
2. After a workload that also fails on purpose (a permanently failing job, a provider outage that
   makes a stage retry, Loki refusing lines, a forged webhook), every dashboard panel's query
   returns data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from dashboards.build import DASHBOARDS
from infra.prometheus import prometheus_command, wait_ready, write_config
from infra.redis_server import free_port
from localstack.bootstrap import bootstrap, new_webhook_secret
from localstack.endpoint import Endpoint
from localstack.fake_provider import ROUTING_POLICY, provider_env, running_fake_provider, set_fake_state
from shared.auth import TokenStore
from shared.aws import aws_client
from shared.config import Settings
from shared.cost.budget import BudgetGuard, Period
from shared.egress import EgressPolicy, parse_allow_list
from shared.jobs import JobStore
from shared.sites import Site, SiteRegistry
from shared.wordpress import store_credentials
from tests.support.api import ensure_bucket, streaming_server
from tests.support.telemetry_receivers import LokiReceiver, OtlpReceiver, Span, loki_receiver, otlp_receiver
from tests.support.wordpress import WordPressFixture
from tests.support.workers import start_workers, stop_workers, worker_children

API_SERVICE = "pressline-api"
WORKER_SERVICE = "pressline-workers"
STAGES = (("ingest", "ingest"), ("infer", "infer"), ("post-process", "post_process"), ("publish", "publish"))


@dataclass
class Stack:
    api: str
    prometheus: str
    fake: str
    client: redis.Redis
    settings: Settings
    otlp: OtlpReceiver
    loki: LokiReceiver
    scratch: Path


@pytest.fixture(scope="module")
def stack(
    redis_server: str, aws_endpoint: Endpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    scratch = tmp_path_factory.mktemp("observability")
    # WordPress and the back office listen on loopback, refused unless allowed: allowed, any port.
    settings = Settings(
        broker_url=redis_server, aws_endpoint_url=aws_endpoint.url, egress_allow=parse_allow_list("127.0.0.1")
    )
    ensure_bucket(settings)
    bootstrap(settings)  # provider keys
    policy = scratch / "routing.json"
    policy.write_text(json.dumps(ROUTING_POLICY))
    with (
        otlp_receiver() as otlp,
        loki_receiver() as loki,
        running_fake_provider() as fake,
        _outbound_sink() as sink,
    ):
        env = {
            "AWS_ENDPOINT_URL": aws_endpoint.url,
            **provider_env(fake),
            "PRESSLINE_ROUTING_POLICY": str(policy),
            "PRESSLINE_PROXY_ATTEMPTS": "1",
            "PRESSLINE_OUTBOUND_WEBHOOK_URLS": sink,
            "PRESSLINE_EGRESS_ALLOW": "127.0.0.1",
            "PRESSLINE_OUTBOUND_WEBHOOK_SECRET": new_webhook_secret(),
            "PRESSLINE_MIN_BACKOFF_MS": "200",
            "PRESSLINE_MAX_BACKOFF_MS": "1000",
            "PRESSLINE_CONSUMER_DEAD_AFTER_MS": "2000",
            "PRESSLINE_API_RATE_LIMIT": "1000/s:1000",
            "PRESSLINE_WORDPRESS_RATE_PER_S": "0",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "LOKI_URL": loki.url,
            "PRESSLINE_LOKI_FLUSH_INTERVAL_S": "0.2",
        }
        trees = {
            "front": ("ingest", "infer", "post-process", "webhooks"),
            "publish": ("publish",),
        }
        workers, targets = [], []
        prometheus: subprocess.Popen[bytes] | None = None
        try:
            for name, queues in trees.items():
                port = free_port()
                targets.append(f"127.0.0.1:{port}")
                workers.append(
                    start_workers(
                        redis_server,
                        module="workers.app",
                        queues=queues,
                        threads=4,
                        log=scratch / f"{name}.log",
                        OTEL_SERVICE_NAME=WORKER_SERVICE,
                        dramatiq_prom_host="127.0.0.1",
                        dramatiq_prom_port=str(port),
                        dramatiq_prom_db=str(scratch / f"prom-{name}"),
                        **env,
                    )
                )
            for tree in workers:
                worker_children(tree, 1)
            with streaming_server(
                redis_server,
                scratch / "api.log",
                OTEL_SERVICE_NAME=API_SERVICE,
                PRESSLINE_CACHE_ENABLED="1",
                PRESSLINE_CACHE_SEMANTIC="0",  # the exact layer; the semantic one has its own tests
                PRESSLINE_DATA_DIR=str(scratch),
                **env,
            ) as api:
                prom_port = free_port()
                config = write_config(
                    scratch / "prometheus",
                    {"pressline-api": [api.removeprefix("http://")], "pressline-workers": targets},
                    scrape_interval_s=1,
                )
                log = (scratch / "prometheus.log").open("wb")
                prometheus = subprocess.Popen(
                    prometheus_command(config, scratch / "tsdb", prom_port),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                prom_url = f"http://127.0.0.1:{prom_port}"
                wait_ready(prom_url, process=prometheus)
                yield Stack(
                    api, prom_url, fake, redis.Redis.from_url(redis_server), settings, otlp, loki, scratch
                )
        finally:
            if prometheus is not None:
                prometheus.terminate()
                prometheus.wait(10)
            codes = [stop_workers(tree) for tree in workers]
            shutil.rmtree(scratch / "tsdb", ignore_errors=True)
            assert codes == [0] * len(workers), _tail(scratch / "front.log") + _tail(scratch / "publish.log")


@contextmanager
def _outbound_sink() -> Iterator[str]:
    """A back office accepting every outbound webhook (their delivery health is what is measured)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks"
    finally:
        server.shutdown()
        server.server_close()


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# -- helpers -------------------------------------------------------------------------------------


def tenant_tokens(stack: Stack) -> tuple[str, dict[str, str]]:
    tenant = f"o{uuid.uuid4().hex[:10]}"
    tokens = TokenStore(stack.client, stack.settings.namespace)
    return tenant, {role: tokens.mint(tenant, role)[0] for role in ("reader", "editor", "publisher")}


def add_site(stack: Stack, wordpress: WordPressFixture, tenant: str) -> str:
    site = f"wp-{uuid.uuid4().hex[:10]}"
    secret_id = f"pressline/sites/{site}/wordpress"
    store_credentials(aws_client("secretsmanager", stack.settings), secret_id, wordpress.author)
    SiteRegistry(stack.client, stack.settings.namespace, EgressPolicy.from_settings(stack.settings)).register(
        Site(site, tenant, False, wordpress.base_url, secret_id)
    )
    return site


def submit(stack: Stack, token: str, body: dict[str, Any]) -> httpx.Response:
    response = httpx.post(
        f"{stack.api}/v1/jobs", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert response.status_code == 202, response.text
    return response


def wait_job(stack: Stack, token: str, job_id: str, timeout_s: float = 40) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        view: dict[str, Any] = httpx.get(
            f"{stack.api}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).json()
        if view.get("state") in ("succeeded", "failed"):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not finish: {view}\n{_tail(stack.scratch / 'front.log')}")
        time.sleep(0.1)


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def article(title: str) -> dict[str, str]:
    return {"title": title, "source": "The moon pulls the sea. The Earth turns beneath the bulge."}


def ask(stack: Stack, token: str, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "temperature": 0}
    return httpx.post(
        f"{stack.api}/v1/chat/completions",
        json={**body, **extra},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def loki_lines(stack: Stack, service: str, needle: str) -> list[dict[str, Any]]:
    """Lines of ``service`` containing ``needle``, asked of the receiver with LogQL."""
    query = urllib.parse.urlencode({"query": f'{{service="{service}"}} |= "{needle}"'})
    body = httpx.get(f"{stack.loki.url}/loki/api/v1/query_range?{query}", timeout=10).json()
    return [json.loads(line) for stream in body["data"]["result"] for _, line in stream["values"]]


def assert_one_trace_tree(spans: list[Span], trace_id: str, root: str, site_call: bool = True) -> None:
    """Every stage's CONSUMER span is the child of its PRODUCER span, the provider attempt runs
    under infer's span and the WordPress call under publish's, all rooted at ``root``."""
    by_id = {s.span_id: s for s in spans}
    names = {(s.service, s.name) for s in spans}

    def ancestors(span: Span) -> list[str]:
        chain = []
        while span.parent_id in by_id:
            span = by_id[span.parent_id]
            chain.append(span.name)
        return chain

    assert (API_SERVICE, root) in names, sorted(names)
    assert (API_SERVICE, "send ingest") in names, sorted(names)
    for queue, actor in STAGES:
        process = [s for s in spans if s.name == f"process {actor}" and s.service == WORKER_SERVICE]
        assert process, (actor, sorted(names))
        assert by_id[process[0].parent_id].name == f"send {queue}", (actor, ancestors(process[0]))
        assert ancestors(process[0])[-1] == root, ancestors(process[0])
    attempt = next(s for s in spans if s.name == "llm.attempt")
    assert attempt.service == WORKER_SERVICE and "process infer" in ancestors(attempt), ancestors(attempt)
    if site_call:
        calls = [s for s in spans if s.name == "wordpress.request"]
        assert calls and all("process publish" in ancestors(c) for c in calls), [ancestors(c) for c in calls]
    assert all(s.trace_id == trace_id for s in spans)


def wait_spans(stack: Stack, trace_id: str, wanted: set[str]) -> list[Span]:
    def found() -> list[Span] | None:
        spans = stack.otlp.trace(trace_id)
        return spans if wanted <= {s.name for s in spans} else None

    try:
        spans: list[Span] = wait_for(found, 30, f"spans {sorted(wanted)}")
    except AssertionError:
        raise AssertionError(sorted({s.name for s in stack.otlp.trace(trace_id)})) from None
    return spans


WANTED_SPANS = {"send ingest", "llm.attempt", "wordpress.request"} | {f"process {a}" for _, a in STAGES}


# -- 1. one trace id: spans, logs, post meta -------------------------------------------------------


def test_one_trace_id_from_the_request_to_the_post_in_spans_logs_and_post_meta(
    stack: Stack, wordpress: WordPressFixture
) -> None:
    tenant, tokens = tenant_tokens(stack)
    site = add_site(stack, wordpress, tenant)
    accepted = submit(
        stack, tokens["editor"], {"site": site, "input": article(f"Traced {uuid.uuid4().hex[:6]}")}
    )
    trace_id, job_id = accepted.headers["X-Trace-Id"], accepted.json()["job_id"]
    view = wait_job(stack, tokens["reader"], job_id)
    assert view["state"] == "succeeded", view
    assert view["trace_id"] == trace_id

    # The post carries the trace id (read back through WordPress's REST API).
    (post,) = wordpress.posts(pressline_external_ref=job_id)
    assert post["id"] == view["post"]["id"]
    assert post["meta"]["pressline_trace_id"] == trace_id

    # The spans: one tree from the request to the WordPress call, exported over OTLP/HTTP.
    spans = wait_spans(stack, trace_id, WANTED_SPANS | {"POST /v1/jobs"})
    assert_one_trace_tree(spans, trace_id, "POST /v1/jobs")
    wp_call = next(s for s in spans if s.name == "wordpress.request")
    assert wp_call.attributes.get("http.response.status_code") in (200, 201)

    # The log lines, shipped by the Loki handler of the API and of both worker trees.
    api_lines = wait_for(lambda: loki_lines(stack, API_SERVICE, trace_id), 15, "the API's lines")
    assert any(line["message"] == "POST /v1/jobs 202" for line in api_lines), api_lines
    assert all(line["trace_id"] == trace_id and len(line["span_id"]) == 16 for line in api_lines)

    def every_stage_logged() -> list[dict[str, Any]] | None:
        lines = loki_lines(stack, WORKER_SERVICE, trace_id)
        return lines if {a for _, a in STAGES} <= {line.get("actor") for line in lines} else None

    worker_lines = wait_for(every_stage_logged, 15, "a line from every stage")
    assert all(line["trace_id"] == trace_id for line in worker_lines)
    # Each line was written under a span of the trace (a later span, e.g. a retried stage's, may
    # still be on its way from the exporter's batch).
    logged_under = {line["span_id"] for line in worker_lines}
    wait_for(
        lambda: logged_under <= {s.span_id for s in stack.otlp.trace(trace_id)} or None,
        15,
        "the spans the worker lines were written under",
    )


def test_a_signed_wordpress_webhook_starts_the_trace_its_post_carries(
    stack: Stack, wordpress: WordPressFixture
) -> None:
    tenant, tokens = tenant_tokens(stack)
    with wordpress.hooked_site(stack.settings, stack.client, tenant, stack.api):
        title = f"Spring tides {uuid.uuid4().hex[:6]}"
        asked = wordpress.ask_for_a_draft(title, "<p>Write about spring tides.</p>")

        try:
            (post,) = wait_for(lambda: wordpress.generated_drafts(title, asked), 40, "the generated draft")
        except AssertionError:
            php = wordpress.config.path("php.log").read_text(errors="replace").splitlines()
            api = (stack.scratch / "api.log").read_text(errors="replace").splitlines()
            raise AssertionError(
                [line for line in php if "pressline" in line][-10:]
                + [line for line in api if "webhook" in line][-10:]
            ) from None
        view = wait_job(stack, tokens["reader"], post["meta"]["pressline_external_ref"])
        assert view["state"] == "succeeded", view
        trace_id = post["meta"]["pressline_trace_id"]
        assert trace_id == view["trace_id"]
        root = "POST /v1/webhooks/wordpress/{site}"
        spans = wait_spans(stack, trace_id, WANTED_SPANS | {root})
        assert_one_trace_tree(spans, trace_id, root)
        lines = wait_for(lambda: loki_lines(stack, API_SERVICE, trace_id), 15, "the webhook's line")
        assert any(line["message"] == f"{root} 202" for line in lines), lines


# -- 2. every dashboard panel answers ---------------------------------------------------------------


def _prometheus(url: str, query: str) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=10) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{query}: {error.read()!r}") from None
    assert body["status"] == "success", (query, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


#: The counter (and its label selector) inside ``rate(...[5m])`` / ``increase(...[1h])``.
COUNTER_IN_RATE = re.compile(r"(?:rate|increase)\((\w+)(\{[^}]*\})?\[")


def panel_queries() -> list[tuple[str, str]]:
    return [
        (f"{board.title} / {panel.title}", expr)
        for board in DASHBOARDS
        for panel in board.panels
        if panel.kind != "logs"
        for expr, _ in panel.queries
    ]


def test_after_a_workload_with_failures_every_dashboard_panel_has_data(
    stack: Stack, wordpress: WordPressFixture
) -> None:
    tenant, tokens = tenant_tokens(stack)
    editor = tokens["editor"]
    guard = BudgetGuard(stack.client, stack.settings.namespace)
    guard.set_budget(tenant, Period.DAY, soft_pico=1)  # any spend crosses it: a budget alert

    # Loki refuses lines for a moment: the handler drops and counts them, never blocking.
    stack.loki.refuse = True
    httpx.get(
        f"{stack.api}/v1/jobs/nope", headers={"Authorization": f"Bearer {tokens['reader']}"}, timeout=10
    )
    wait_for(lambda: stack.loki.refused, 10, "a refused push")
    stack.loki.refuse = False

    # A forged webhook: received, and a verification failure.
    forged = httpx.post(
        f"{stack.api}/v1/webhooks/wordpress/blog-obs",
        content=b'{"type": "post.generate_requested", "data": {}}',
        headers={
            "content-type": "application/json",
            "webhook-id": "msg_forged",
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": "v1,AAAA",
        },
        timeout=30,
    )
    assert forged.status_code >= 400

    # The cache: a prompt's answer misses, hits exactly, then is purged by a new version.
    auth = {"Authorization": f"Bearer {editor}"}
    name = f"obs-{uuid.uuid4().hex[:6]}"
    created = httpx.post(
        f"{stack.api}/v1/prompts",
        json={"name": name, "text": "You write {{tone}} intros."},
        headers=auth,
        timeout=30,
    )
    assert created.status_code == 201, created.text
    prompt = {"prompt": name, "prompt_variables": {"tone": "warm"}}
    assert ask(stack, editor, "Introduce backups", **prompt).headers["x-pressline-cache"] == "miss"
    assert ask(stack, editor, "Introduce backups", **prompt).headers["x-pressline-cache"] == "hit-exact"
    published = httpx.post(
        f"{stack.api}/v1/prompts/{name}/versions",
        json={"text": "You write {{tone}}, short intros."},
        headers=auth,
        timeout=30,
    )
    assert published.status_code == 201, published.text

    # A stream whose upstream reports no usage: time to first token, and usage estimated.
    set_fake_state(stack.fake, scenario={"openai": "no_usage"})
    try:
        with httpx.stream(
            "POST",
            f"{stack.api}/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": f"Stream {uuid.uuid4().hex}"}],
            },
            headers=auth,
            timeout=30,
        ) as streamed:
            assert streamed.status_code == 200
            assert "[DONE]" in "".join(streamed.iter_text())
    finally:
        set_fake_state(stack.fake, scenario={"openai": None})

    # A provider outage: the API's call fails over, a job's infer stage is retried by the broker.
    site = add_site(stack, wordpress, tenant)
    set_fake_state(stack.fake, down={"openai": 503, "groq": 503})
    store = JobStore(stack.client, stack.settings.namespace, 60)
    try:
        ask(stack, editor, f"During the outage {uuid.uuid4().hex}")
        retried = submit(stack, editor, {"site": site, "input": article("Through an outage")}).json()[
            "job_id"
        ]

        def infer_failed_once() -> bool:
            record = store.get(retried)
            return record is not None and bool(record.stages[1].last_error)

        wait_for(infer_failed_once, 30, "the infer stage to fail once")
    finally:
        set_fake_state(stack.fake, down={"openai": None, "groq": None})
    view = wait_job(stack, tokens["reader"], retried, timeout_s=60)
    assert view["state"] == "succeeded" and view["stages"][1]["attempts"] >= 2, view

    # A job that fails for good (its tenant's budget refuses the LLM call): a dead letter.
    broke, broke_tokens = tenant_tokens(stack)
    guard.set_budget(broke, Period.DAY, hard_pico=1)
    doomed = submit(stack, broke_tokens["editor"], {"input": article("Refused")}).json()["job_id"]
    assert wait_job(stack, broke_tokens["reader"], doomed)["state"] == "failed"

    # Every panel query returns data from the scraped processes.
    empty = [(where, expr) for where, expr in panel_queries()]
    deadline = time.monotonic() + 45
    while empty and time.monotonic() < deadline:
        empty = [(where, expr) for where, expr in empty if not _prometheus(stack.prometheus, expr)]
        time.sleep(1)
    assert not empty, empty
    # ...and the traffic really moved every counter behind a rate() or increase() (a rate is 0
    # when a counter's first scraped sample already holds its whole count).
    counters = sorted({m[0] + m[1] for _, expr in panel_queries() for m in COUNTER_IN_RATE.findall(expr)})
    unmoved = [
        c
        for c in counters
        if not any(float(r["value"][1]) > 0 for r in _prometheus(stack.prometheus, f"sum({c})"))
    ]
    assert not unmoved, unmoved

    # The breaker gauge is one honest series per site, read from Redis (no per-process copies).
    breakers = _prometheus(stack.prometheus, f'pressline_wordpress_breaker_state{{site="{site}"}}')
    assert {r["metric"].get("pid") for r in breakers} == {None}
    assert {r["value"][1] for r in breakers} == {"0"}
    up = _prometheus(stack.prometheus, "up")
    assert len(up) == 3 and all(r["value"][1] == "1" for r in up), up
    # The infer stage's own provider calls are exported by the worker trees (multiprocess files),
    # not only the API's: the provider panels see the pipeline's LLM traffic too.
    from_workers = _prometheus(stack.prometheus, 'sum(pressline_llm_attempts_total{job="pressline-workers"})')
    assert from_workers and float(from_workers[0]["value"][1]) > 0, from_workers
