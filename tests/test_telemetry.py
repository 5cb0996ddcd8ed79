"""Telemetry over a real Redis: trace context through messages, JSON logs, queue-health gauges and
the Prometheus exposition of real dramatiq CLI workers."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.message import Message
from dramatiq.middleware import Retries
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from infra.redis_server import free_port
from shared.config import Settings
from shared.streams import RedisStreamsBroker
from shared.telemetry import extract_context, inject_context
from shared.telemetry.logging import REDACTED, configure_logging
from shared.telemetry.message_tracing import OPTION, Tracing
from shared.telemetry.tracing import configure_tracing

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = configure_tracing(Settings())
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _hex(trace_id: int) -> str:
    return format(trace_id, "032x")


def _run(broker: RedisStreamsBroker, queue_name: str, threads: int = 2) -> None:
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    try:
        broker.join(queue_name, timeout=20_000)
    finally:
        worker.stop()
        broker.close()


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """JSON logging into a buffer for the test; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging(Settings(hmac_webhook_secret="known-webhook-secret-value"), stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


# -- tracing -----------------------------------------------------------------------------------


def test_context_helpers_round_trip() -> None:
    provider, _ = _provider()
    with provider.get_tracer("test").start_as_current_span("parent") as span:
        carrier: dict[str, str] = {}
        inject_context(carrier)
    assert carrier["traceparent"].split("-")[1] == _hex(span.get_span_context().trace_id)
    extracted = trace.get_current_span(extract_context(carrier)).get_span_context()
    assert extracted.trace_id == span.get_span_context().trace_id
    assert extracted.is_remote
    assert not trace.get_current_span(extract_context({})).get_span_context().is_valid


def test_configure_tracing_exports_over_otlp_http_with_the_configured_resource() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[tuple[str, int]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["content-length"])
            self.rfile.read(length)
            received.append((self.path, length))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}/",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,team=core%20jobs",
        "OTEL_SERVICE_NAME": "pressline-workers",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "1.0",
    }
    provider = configure_tracing(Settings.from_env(env))
    try:
        assert provider.resource.attributes["service.name"] == "pressline-workers"
        assert provider.resource.attributes["team"] == "core jobs"
        with provider.get_tracer("test").start_as_current_span("exported"):
            pass
        assert provider.force_flush(10_000)
        assert [path for path, _ in received] == ["/v1/traces"] and received[0][1] > 0
    finally:
        provider.shutdown()
        server.shutdown()


def test_worker_span_is_child_of_producer_span(redis_url: str, log_stream: io.StringIO) -> None:
    provider, exporter = _provider()
    broker = RedisStreamsBroker(url=redis_url, namespace="trace-test", middleware=[Tracing(provider)])
    seen: dict[str, Any] = {}

    def traced(x: int) -> None:
        seen["span"] = trace.get_current_span().get_span_context()
        logging.getLogger("pressline.test").info(
            "calling upstream with Authorization: Bearer abcdefghijklmnop",
            extra={"api_key": "sk-proj-0123456789abcdef", "job": {"x": x, "password": "hunter2"}},
        )

    actor = dramatiq.actor(broker=broker, queue_name="traced")(traced)
    with provider.get_tracer("test").start_as_current_span("request") as parent:
        message = actor.send(7)
    assert set(message.options[OPTION]) >= {"traceparent"}
    _run(broker, "traced")

    spans = {span.name: span for span in exporter.get_finished_spans()}
    send, process = spans["send traced"], spans["process traced"]
    trace_id = parent.get_span_context().trace_id
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert send.context.trace_id == process.context.trace_id == trace_id
    assert send.parent is not None and send.parent.span_id == parent.get_span_context().span_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.attributes is not None and send.attributes is not None
    assert send.attributes["messaging.system"] == "dramatiq"
    assert send.attributes["messaging.destination.name"] == "traced"
    assert send.attributes["messaging.message.id"] == message.message_id
    assert process.attributes["dramatiq.actor_name"] == "traced"
    assert process.status.status_code is StatusCode.UNSET
    # The actor ran inside the consumer span...
    assert seen["span"].span_id == process.context.span_id
    # ...so its log line carries the trace, and no secret.
    text = log_stream.getvalue()
    (line,) = [line for line in _lines(log_stream) if line["logger"] == "pressline.test"]
    assert line["trace_id"] == _hex(trace_id)
    assert line["span_id"] == format(process.context.span_id, "016x")
    assert line["api_key"] == REDACTED and line["job"] == {"x": 7, "password": REDACTED}
    assert "Authorization: " + REDACTED in line["message"]
    for secret in ("sk-proj-0123456789abcdef", "hunter2", "abcdefghijklmnop"):
        assert secret not in text


def test_failure_is_recorded_and_the_retry_stays_in_the_trace(redis_url: str) -> None:
    provider, exporter = _provider()
    middleware = [Retries(max_retries=1, min_backoff=10, max_backoff=20), Tracing(provider)]
    broker = RedisStreamsBroker(url=redis_url, namespace="trace-test", middleware=middleware)
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")

    actor = dramatiq.actor(broker=broker, queue_name="flaky")(flaky)
    with provider.get_tracer("test").start_as_current_span("request") as parent:
        actor.send()
    _run(broker, "flaky")

    assert len(calls) == 2
    spans = exporter.get_finished_spans()
    processes = sorted((s for s in spans if s.name == "process flaky"), key=lambda s: s.start_time or 0)
    sends = [s for s in spans if s.name == "send flaky"]
    assert len(processes) == 2 and len(sends) == 2
    assert {s.context.trace_id for s in [*processes, *sends]} == {parent.get_span_context().trace_id}
    failed, retried = processes
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert retried.status.status_code is StatusCode.UNSET
    assert retried.attributes is not None and retried.attributes["dramatiq.retries"] == 1


def test_failed_enqueue_ends_its_span(redis_url: str) -> None:
    provider, exporter = _provider()
    broker = RedisStreamsBroker(url=redis_url, namespace="trace-test", middleware=[Tracing(provider)])
    broker.declare_queue("q")
    broker.client.set(broker.keys("q").stream, "not a stream")  # XADD now fails: WRONGTYPE
    message: Message[Any] | None = Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    with pytest.raises(Exception, match="WRONGTYPE"):
        broker.enqueue(message)  # type: ignore[arg-type]
    message = None
    (span,) = exporter.get_finished_spans()
    assert span.name == "send q" and span.status.status_code is StatusCode.ERROR


def run_concurrent_scenario(redis_url: str, messages: int = 24, threads: int = 8) -> dict[str, int]:
    """Many messages, each from its own trace, processed by concurrent workers that yield mid-actor:
    every actor must see its own trace.  Also run under gevent in a subprocess."""
    provider, exporter = _provider()
    broker = RedisStreamsBroker(url=redis_url, namespace="trace-concurrent", middleware=[Tracing(provider)])
    matched: dict[int, bool] = {}

    def check(expected: str, i: int) -> None:
        time.sleep(0.05)  # let the other threads (greenlets) run their messages in between
        matched[i] = _hex(trace.get_current_span().get_span_context().trace_id) == expected

    actor = dramatiq.actor(broker=broker, queue_name="concurrent")(check)
    tracer = provider.get_tracer("test")
    for i in range(messages):
        with tracer.start_as_current_span(f"request-{i}") as span:
            actor.send(_hex(span.get_span_context().trace_id), i)
    _run(broker, "concurrent", threads=threads)
    spans: list[ReadableSpan] = list(exporter.get_finished_spans())
    sends = {s.context.span_id: s for s in spans if s.name == "send concurrent"}
    children = [
        s
        for s in spans
        if s.name == "process check"
        and s.parent is not None
        and s.parent.span_id in sends
        and sends[s.parent.span_id].context.trace_id == s.context.trace_id
    ]
    return {"ran": len(matched), "matched": sum(matched.values()), "children": len(children)}


def test_concurrent_worker_threads_keep_their_own_context(redis_url: str) -> None:
    assert run_concurrent_scenario(redis_url) == {"ran": 24, "matched": 24, "children": 24}


def test_concurrent_greenlets_keep_their_own_context(redis_url: str) -> None:
    script = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import json, sys\n"
        "from tests.test_telemetry import run_concurrent_scenario\n"
        "print(json.dumps(run_concurrent_scenario(sys.argv[1], threads=24)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, redis_url], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"ran": 24, "matched": 24, "children": 24}


# -- logging -----------------------------------------------------------------------------------


def test_log_lines_are_json_with_trace_and_without_secrets(log_stream: io.StringIO) -> None:
    provider, _ = _provider()
    log = logging.getLogger("pressline.functions.webhook")
    log.info("outside any span")
    with provider.get_tracer("test").start_as_current_span("webhook") as span:
        log.warning(
            "verifying with %s via %s; password=%s",
            "whsec_abcDEF123456",
            "redis://default:redis-pass@cache:6379/0",
            "p@ss",
            extra={"tenant": "t1", "headers": {"Authorization": "Basic dXNlcjpwYXNz", "X-Api-Key": "k1"}},
        )
        log.info("the configured secret is known-webhook-secret-value")
        try:
            raise ValueError("upstream said: invalid api_key=sk-abcdefghijklmnopqrstu")
        except ValueError:
            log.exception("call failed")

    first, warning, known, error = _lines(log_stream)
    assert set(first) == {"ts", "level", "logger", "message"}
    assert first["level"] == "INFO" and first["logger"] == "pressline.functions.webhook"
    span_context = span.get_span_context()
    for line in (warning, known, error):
        assert line["trace_id"] == _hex(span_context.trace_id)
        assert line["span_id"] == format(span_context.span_id, "016x")
    assert warning["tenant"] == "t1"
    assert warning["headers"] == {"Authorization": REDACTED, "X-Api-Key": REDACTED}
    assert warning["message"] == (
        f"verifying with {REDACTED} via redis://default:{REDACTED}@cache:6379/0; password={REDACTED}"
    )
    assert known["message"] == f"the configured secret is {REDACTED}"
    assert "ValueError" in error["exc_info"]
    text = log_stream.getvalue()
    for secret in ("abcDEF123456", "redis-pass", "p@ss", "dXNlcjpwYXNz", "k1", "known-webhook", "sk-abc"):
        assert secret not in text


def test_innocent_fields_are_kept(log_stream: io.StringIO) -> None:
    logging.getLogger("pressline.infer").info(
        "done: max_tokens=%d tokenizer=%s", 256, "cl100k", extra={"prompt_tokens": 12, "model": "gpt"}
    )
    (line,) = _lines(log_stream)
    assert line["message"] == "done: max_tokens=256 tokenizer=cl100k"
    assert line["prompt_tokens"] == 12 and line["model"] == "gpt"


# -- queue health --------------------------------------------------------------------------------


def test_queue_health_collector_reports_the_truth(redis_url: str) -> None:
    from prometheus_client import CollectorRegistry

    from shared.telemetry.queue_health import QueueHealthCollector

    broker = RedisStreamsBroker(url=redis_url, namespace="health-test", middleware=[])
    actor = dramatiq.actor(broker=broker, actor_name="noop", queue_name="health")(lambda n: None)
    broker.declare_queue("idle")
    for n in range(5):
        actor.send(n)
    actor.send_with_options(args=(99,), delay=60_000)
    registry = CollectorRegistry()
    registry.register(QueueHealthCollector(broker.admin, ["health", "idle"]))

    def gauge(name: str, queue: str = "health") -> float | None:
        return registry.get_sample_value(f"pressline_queue_{name}", {"queue_name": queue})

    time.sleep(0.05)
    assert gauge("backlog") == 5 and gauge("pending") == 0
    assert gauge("delayed") == 1 and gauge("dead_letters") == 0
    assert (gauge("oldest_waiting_age_seconds") or 0) >= 0.05
    assert gauge("oldest_pending_age_seconds") == 0
    assert gauge("backlog", "idle") == 0 and gauge("oldest_waiting_age_seconds", "idle") == 0

    consumer = broker.consume("health", prefetch=2)
    try:
        first, second = next(consumer), next(consumer)
        assert first is not None and second is not None
        assert gauge("backlog") == 3 and gauge("pending") == 2
        consumer.nack(first)  # dead-lettered; the consumer may at once fetch one more
        assert gauge("dead_letters") == 1
        assert (gauge("backlog") or 0) + (gauge("pending") or 0) == 4
        assert (gauge("oldest_pending_age_seconds") or 0) > 0
        assert registry.get_sample_value("pressline_queue_health_up") == 1
    finally:
        consumer.close()
        broker.close()


def test_queue_health_says_so_when_redis_is_unreachable() -> None:
    import redis
    from prometheus_client import CollectorRegistry

    from shared.streams.admin import QueueAdmin
    from shared.telemetry.queue_health import QueueHealthCollector

    admin = QueueAdmin(redis.Redis(port=free_port(), socket_connect_timeout=0.2), "pressline")
    registry = CollectorRegistry()
    registry.register(QueueHealthCollector(admin, ["ingest"]))
    assert registry.get_sample_value("pressline_queue_health_up") == 0
    assert registry.get_sample_value("pressline_queue_backlog", {"queue_name": "ingest"}) is None


# -- Prometheus exposition of real dramatiq CLI workers -----------------------------------------


def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_exposition_serves_dramatiq_metrics_and_queue_health(redis_url: str, tmp_path: Path) -> None:
    from tests.telemetry_actors import QUEUE

    port = free_port()
    env = dict(
        os.environ,
        DRAMATIQ_BROKER_URL=redis_url,
        PRESSLINE_NAMESPACE="prom-test",
        PYTHONPATH=str(ROOT),
        dramatiq_prom_db=str(tmp_path / "prometheus"),
        dramatiq_prom_host="127.0.0.1",
        dramatiq_prom_port=str(port),
    )
    log = tmp_path / "workers.log"
    with open(log, "wb") as out:
        workers = subprocess.Popen(
            [str(BIN / "dramatiq"), "tests.telemetry_actors", "-p", "2", "-t", "2"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    producer = RedisStreamsBroker(url=redis_url, namespace="prom-test", middleware=[])
    producer.declare_queue(QUEUE)

    def send(n: int, delay: int | None = None) -> None:
        message: Message[Any] = Message(queue_name=QUEUE, actor_name="ping", args=(n,), kwargs={}, options={})
        producer.enqueue(message, delay=delay)

    try:
        for n in (1, 2, 3, -1):
            send(n)
        send(4, delay=600_000)
        labels = frozenset({("queue_name", QUEUE), ("actor_name", "ping")})
        queue = frozenset({("queue_name", QUEUE)})
        deadline, samples = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            try:
                samples = _scrape(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                samples = {}
            settled = {"dead_letters": 1, "pending": 0, "backlog": 0}  # acks may lag the actors a little
            if samples.get(("dramatiq_messages_total", labels)) == 4 and all(
                samples.get((f"pressline_queue_{name}", queue)) == value for name, value in settled.items()
            ):
                break
            time.sleep(0.25)
        assert samples.get(("dramatiq_messages_total", labels)) == 4, log.read_text()[-3000:]
        assert samples[("dramatiq_message_errors_total", labels)] == 1
        assert samples[("dramatiq_message_rejects_total", labels)] == 1
        assert samples[("dramatiq_message_duration_milliseconds_count", labels)] == 4
        assert ("dramatiq_messages_inprogress", labels) in samples
        assert samples[("pressline_queue_backlog", queue)] == 0
        assert samples[("pressline_queue_pending", queue)] == 0
        assert samples[("pressline_queue_delayed", queue)] == 1
        assert samples[("pressline_queue_dead_letters", queue)] == 1
        assert ("pressline_queue_oldest_waiting_age_seconds", queue) in samples
        assert ("pressline_queue_oldest_pending_age_seconds", queue) in samples
    finally:
        producer.close()
        workers.send_signal(signal.SIGTERM)  # the CLI stops its workers and its fork
        try:
            code = workers.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(workers.pid, signal.SIGKILL)
            raise
        assert code == 0, log.read_text()[-5000:]


def _wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_gauges_show_messages_stuck_on_a_killed_worker_until_they_are_recovered(
    redis_url: str, tmp_path: Path
) -> None:
    """kill -9 one worker tree mid-message: another tree's exposition keeps reporting the stuck
    messages as pending, with a growing age, until a live consumer recovers them; the restarted
    tree's in-progress gauge does not keep counting the dead process's messages."""
    import redis as redis_lib

    from tests.support.workers import start_workers, stop_workers, worker_children
    from tests.telemetry_actors import HOLD_QUEUE, QUEUE

    client = redis_lib.Redis.from_url(redis_url)
    client.set("hold", 1)
    common = dict(
        PRESSLINE_NAMESPACE="kill-test",
        PRESSLINE_CONSUMER_DEAD_AFTER_MS="3000",
        dramatiq_prom_host="127.0.0.1",
    )
    victim_db, victim_port = tmp_path / "victim-db", free_port()
    observer_port = free_port()

    def victim() -> subprocess.Popen[bytes]:
        return start_workers(
            redis_url, module="tests.telemetry_actors", queues=(HOLD_QUEUE,), processes=1, threads=4,
            log=tmp_path / "victim.log", dramatiq_prom_db=str(victim_db), dramatiq_prom_port=str(victim_port),
            **common,
        )  # fmt: skip

    observer = start_workers(
        redis_url, module="tests.telemetry_actors", queues=(QUEUE,), processes=1, threads=1,
        log=tmp_path / "observer.log", dramatiq_prom_db=str(tmp_path / "observer-db"),
        dramatiq_prom_port=str(observer_port), **common,
    )  # fmt: skip
    first = victim()
    second: subprocess.Popen[bytes] | None = None
    producer = RedisStreamsBroker(url=redis_url, namespace="kill-test", middleware=[])
    producer.declare_queue(HOLD_QUEUE)
    queue = frozenset({("queue_name", HOLD_QUEUE)})
    labels = frozenset({("queue_name", HOLD_QUEUE), ("actor_name", "hold")})
    observed = f"http://127.0.0.1:{observer_port}/metrics"
    victim_url = f"http://127.0.0.1:{victim_port}/metrics"

    def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        try:
            return _scrape(url)
        except OSError:
            return {}

    try:
        for n in range(3):
            producer.enqueue(
                Message(queue_name=HOLD_QUEUE, actor_name="hold", args=(n,), kwargs={}, options={})
            )
        _wait_for(lambda: client.llen("held:started") == 3, 30, "three messages started")
        inprogress = ("dramatiq_messages_inprogress", labels)
        _wait_for(lambda: scrape(victim_url).get(inprogress) == 3, 30, "in-progress 3")
        os.kill(worker_children(first, 1)[0], signal.SIGKILL)
        first.wait(30)  # its main process stops the rest of the tree, exposition included

        samples = scrape(observed)
        assert samples[("pressline_queue_pending", queue)] == 3
        age = samples[("pressline_queue_oldest_pending_age_seconds", queue)]
        time.sleep(1.0)
        samples = scrape(observed)
        assert samples[("pressline_queue_pending", queue)] == 3  # still stuck, still shown
        assert samples[("pressline_queue_oldest_pending_age_seconds", queue)] >= age + 0.9

        client.delete("hold")
        second = victim()  # the same tree restarted: recovers them once the dead consumer's heartbeat expires
        _wait_for(lambda: client.llen("held:done") == 3, 60, "the stuck messages to be recovered and run")
        _wait_for(lambda: scrape(observed).get(("pressline_queue_pending", queue)) == 0, 30, "pending 0")
        assert scrape(observed)[("pressline_queue_oldest_pending_age_seconds", queue)] == 0
        # The killed process never marked itself dead; its in-progress count must not linger.
        _wait_for(lambda: scrape(victim_url).get(inprogress) == 0, 30, "in-progress 0")
    finally:
        producer.close()
        for tree in (second, observer):
            if tree is not None:
                stop_workers(tree)
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)


# -- shipping to Loki --------------------------------------------------------------------------


class _LokiPush:
    """A local receiver of Loki's push API (``POST /loki/api/v1/push``, JSON); ``stall`` holds requests."""

    def __init__(self, stall: bool = False) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.streams: list[dict[str, Any]] = []
        self.release = threading.Event()
        if not stall:
            self.release.set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.release.wait(30)
                ok = self.path == "/loki/api/v1/push" and self.headers["content-type"] == "application/json"
                if ok:
                    outer.streams.extend(body["streams"])
                self.send_response(204 if ok else 400)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_log_lines_reach_loki_with_low_cardinality_labels_and_the_trace_id_in_the_line() -> None:
    from prometheus_client import CollectorRegistry

    from shared.telemetry.logging import JsonFormatter, RedactSecrets, TraceContext
    from shared.telemetry.loki import LokiHandler

    receiver = _LokiPush()
    registry = CollectorRegistry()
    handler = LokiHandler(receiver.url, "pressline-test", flush_interval_s=0.05, registry=registry)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TraceContext())
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger("pressline.test.loki")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    provider, _ = _provider()
    try:
        logged_from_ns = time.time_ns()
        with provider.get_tracer("test").start_as_current_span("job") as span:
            logger.info("stage done", extra={"job_id": "j1", "api_key": "sk-live-123456789012"})
            logger.error("stage failed")
        assert handler.drain(10)
        trace_id = _hex(span.get_span_context().trace_id)
        labels = [stream["stream"] for stream in receiver.streams]
        assert {"service": "pressline-test", "level": "info"} in labels
        assert {"service": "pressline-test", "level": "error"} in labels
        lines = [json.loads(line) for stream in receiver.streams for _, line in stream["values"]]
        assert {line["message"] for line in lines} == {"stage done", "stage failed"}
        assert all(line["trace_id"] == trace_id and len(line["span_id"]) == 16 for line in lines)
        done = next(line for line in lines if line["message"] == "stage done")
        assert done["job_id"] == "j1" and done["api_key"] == REDACTED
        stamps = [int(ts) for stream in receiver.streams for ts, _ in stream["values"]]
        # Nanoseconds, as Loki wants: each stamp lies between the start of logging and now.
        assert all(logged_from_ns - 1_000_000 <= ts <= time.time_ns() for ts in stamps)
        assert registry.get_sample_value("pressline_log_lines_shipped_total") == 2
    finally:
        logger.removeHandler(handler)
        handler.close()
        receiver.close()


def test_a_stalled_loki_never_blocks_logging_and_drops_are_counted() -> None:
    from prometheus_client import CollectorRegistry

    from shared.telemetry.loki import LokiHandler

    receiver = _LokiPush(stall=True)
    registry = CollectorRegistry()
    handler = LokiHandler(
        receiver.url, "pressline-test", max_queue=10, flush_interval_s=0.01, registry=registry
    )
    logger = logging.getLogger("pressline.test.loki.stall")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("first")  # taken by the sender, whose push then hangs on the stalled receiver
        _deadline = time.monotonic() + 5
        while handler._queue.qsize() and time.monotonic() < _deadline:
            time.sleep(0.01)
        for n in range(1000):
            logger.warning("line %d", n)
        # All 1000 lines were logged while the receiver still holds the first push (it answers only
        # on release): logging never waited on Loki.
        assert receiver.streams == [] and not receiver.release.is_set()
        dropped = registry.get_sample_value("pressline_log_lines_dropped_total", {"reason": "queue_full"})
        assert dropped == 990  # the queue holds 10
        receiver.release.set()
        assert handler.drain(10)
        assert registry.get_sample_value("pressline_log_lines_shipped_total") == 11
    finally:
        logger.removeHandler(handler)
        handler.close()
        receiver.close()


def test_configure_logging_ships_to_loki_when_loki_url_is_set(log_stream: io.StringIO) -> None:
    from shared.telemetry.loki import LokiHandler

    receiver = _LokiPush()
    try:
        configure_logging(Settings(loki_url=receiver.url, otel_service_name="pressline-api"), io.StringIO())
        shipping = [h for h in logging.getLogger().handlers if isinstance(h, LokiHandler)]
        assert len(shipping) == 1 and shipping[0].service == "pressline-api"
        logging.getLogger("pressline.test").warning("to both")
        assert shipping[0].drain(10)
        assert [json.loads(v[1])["message"] for s in receiver.streams for v in s["values"]] == ["to both"]
        shipping[0].close()
    finally:
        receiver.close()
