"""Observability through the real stack: the functions' HTTP server (``functions.serve``), real
``dramatiq`` workers running the ``ingest`` stage, a real OTLP/HTTP receiver decoding
``ExportTraceServiceRequest`` protobufs, and a real Prometheus scraping both and loaded with the
rules, asked every dashboard and rule query."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from dashboards.build import DASHBOARDS
from infra.prometheus import RULES, prometheus_command, wait_ready, write_config
from infra.redis_server import free_port
from localstack.endpoint import Endpoint
from shared.config import Settings
from tests.support.api import ensure_bucket, make_tenant, streaming_server
from tests.support.telemetry_receivers import OtlpReceiver
from tests.support.telemetry_receivers import otlp_receiver as otlp
from tests.support.workers import start_workers, stop_workers


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    with otlp() as receiver:
        yield receiver


def _prometheus(url: str, path: str, **params: str) -> tuple[int, dict[str, Any]]:
    query = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{url}{path}?{query}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _panel_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every Prometheus panel query and every rule expression."""
    queries = [
        (f"{board.title} / {panel.title}", expr)
        for board in DASHBOARDS
        for panel in board.panels
        if panel.kind != "logs"
        for expr, _ in panel.queries
    ]
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            queries.append((f"rule {rule.get('record') or rule.get('alert')}", rule["expr"]))
    return queries


#: Queries that must return data after this test's traffic (the pipeline's own WordPress, cache and
#: outcome series come with the full-pipeline test).
MUST_HAVE_DATA = (
    "max by (queue_name) (pressline_queue_backlog)",
    "max by (queue_name) (pressline_queue_pending)",
    "max by (queue_name) (pressline_queue_oldest_waiting_age_seconds)",
    "max by (queue_name) (pressline_queue_dead_letters)",
    "sum by (queue_name) (rate(dramatiq_messages_total[5m]))",
    "histogram_quantile(0.95, sum by (queue_name, le) "
    "(rate(pressline_message_start_delay_seconds_bucket[5m])))",
    "sum by (reason) (rate(pressline_webhook_verification_failures_total[5m]))",
    "sum by (outcome) (rate(pressline_webhooks_received_total[5m]))",
    "min(pressline_queue_health_up)",
)


@pytest.mark.timeout(240)
def test_one_trace_from_request_through_enqueue_to_worker_and_queries_answer(
    redis_url: str, aws_endpoint: Endpoint, otlp_receiver: OtlpReceiver, tmp_path: Path
) -> None:
    settings = Settings.from_env({"DRAMATIQ_BROKER_URL": redis_url, "AWS_ENDPOINT_URL": aws_endpoint.url})
    ensure_bucket(settings)
    client = redis.Redis.from_url(redis_url)
    tenant = make_tenant(client, settings, "obs")
    telemetry = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "AWS_ENDPOINT_URL": aws_endpoint.url,
    }
    metrics_port = free_port()
    workers = start_workers(
        redis_url,
        module="workers.app",
        queues=("ingest",),
        processes=2,
        threads=2,
        log=tmp_path / "workers.log",
        OTEL_SERVICE_NAME="pressline-workers",
        dramatiq_prom_db=str(tmp_path / "prom-db"),
        dramatiq_prom_host="127.0.0.1",
        dramatiq_prom_port=str(metrics_port),
        **telemetry,
    )
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        with streaming_server(
            redis_url, tmp_path / "api.log", OTEL_SERVICE_NAME="pressline-api", **telemetry
        ) as api:
            api_host = api.removeprefix("http://")
            prom_port = free_port()
            config = write_config(
                tmp_path / "prometheus",
                {"pressline-api": [api_host], "pressline-workers": [f"127.0.0.1:{metrics_port}"]},
                scrape_interval_s=1,
            )
            log = (tmp_path / "prometheus.log").open("wb")
            prometheus = subprocess.Popen(
                prometheus_command(config, tmp_path / "tsdb", prom_port),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            prom_url = f"http://127.0.0.1:{prom_port}"
            wait_ready(prom_url, process=prometheus)

            # An X-Ray caller: its Root becomes the W3C trace id of everything that follows.
            xray_root = "1-" + format(int(time.time()), "08x") + "-" + "ab" * 12
            trace_id = xray_root[2:10] + xray_root[11:]
            response = httpx.post(
                f"{api}/v1/jobs",
                json={"input": {"title": "Traced", "source": "One. Two. Three. Four. Five."}},
                headers={
                    "Authorization": f"Bearer {tenant.editor}",
                    "X-Amzn-Trace-Id": f"Root={xray_root};Parent=53995c3f42cd8ad8;Sampled=1",
                },
                timeout=30,
            )
            assert response.status_code == 202, response.text
            assert response.headers["x-trace-id"] == trace_id
            assert response.headers["traceparent"].split("-")[1] == trace_id
            assert f"Root={xray_root}" in response.headers["x-amzn-trace-id"]

            # A W3C caller with the same id joins the same trace.
            w3c = httpx.get(
                f"{api}/v1/jobs/{response.json()['job_id']}",
                headers={
                    "Authorization": f"Bearer {tenant.reader}",
                    "traceparent": f"00-{trace_id}-1111111111111111-01",
                },
                timeout=30,
            )
            assert w3c.status_code == 200 and w3c.headers["x-trace-id"] == trace_id

            # A forged webhook: counted as received and as a verification failure.
            httpx.post(
                f"{api}/v1/webhooks/wordpress/blog-obs",
                content=b'{"type": "post.generate_requested", "data": {}}',
                headers={
                    "content-type": "application/json",
                    "webhook-id": "msg_1",
                    "webhook-timestamp": str(int(time.time())),
                    "webhook-signature": "v1,AAAA",
                },
                timeout=30,
            )

            # Each process exports its own batches: wait for all four, in whatever order they come.
            expected = {
                ("pressline-api", "POST /v1/jobs"),
                ("pressline-api", "GET /v1/jobs/{job_id}"),
                ("pressline-api", "send ingest"),
                ("pressline-workers", "process ingest"),
            }
            deadline, names = time.monotonic() + 60, set()
            while time.monotonic() < deadline:
                spans = otlp_receiver.trace(trace_id)
                names = {(s.service, s.name) for s in spans}
                if expected <= names:
                    break
                time.sleep(0.2)
            spans = otlp_receiver.trace(trace_id)
            by_id = {s.span_id: s for s in spans}
            assert ("pressline-api", "POST /v1/jobs") in names, (
                names,
                (tmp_path / "workers.log").read_text()[-3000:],
            )
            assert ("pressline-api", "GET /v1/jobs/{job_id}") in names
            assert ("pressline-api", "send ingest") in names
            assert ("pressline-workers", "process ingest") in names
            # The worker's span is the child of the API's producer span: one tree, not just one id.
            process = next(s for s in spans if s.name == "process ingest")
            assert by_id[process.parent_id].name == "send ingest"
            server = next(s for s in spans if s.name == "POST /v1/jobs")
            assert server.parent_id == "53995c3f42cd8ad8"

            # Prometheus: every dashboard and rule query parses; the ones this traffic feeds answer.
            for where, expr in _panel_queries():
                status, body = _prometheus(prom_url, "/api/v1/query", query=expr)
                assert status == 200 and body["status"] == "success", (where, expr, body)
            deadline, empty = time.monotonic() + 60, list(MUST_HAVE_DATA)
            while empty and time.monotonic() < deadline:
                empty = [
                    expr
                    for expr in empty
                    if not _prometheus(prom_url, "/api/v1/query", query=expr)[1]["data"]["result"]
                ]
                time.sleep(1)
            assert not empty, empty
            status, body = _prometheus(prom_url, "/api/v1/rules")
            assert status == 200 and len([r for g in body["data"]["groups"] for r in g["rules"]]) >= 18
            failures = _prometheus(
                prom_url,
                "/api/v1/query",
                query="sum by (reason) (pressline_webhook_verification_failures_total)",
            )[1]["data"]["result"]
            assert failures and failures[0]["metric"]["reason"] and float(failures[0]["value"][1]) >= 1
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(10)
        assert stop_workers(workers) == 0, (tmp_path / "workers.log").read_text()[-3000:]
        shutil.rmtree(tmp_path / "tsdb", ignore_errors=True)
