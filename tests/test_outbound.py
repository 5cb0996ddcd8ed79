"""Outbound signed webhooks over real processes: a local HTTP receiver, Redis, dramatiq CLI workers."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from infra.redis_server import free_port
from localstack.bootstrap import ensure_secret, new_webhook_secret
from localstack.endpoint import Endpoint
from shared.api.services import budget_alerts
from shared.aws import aws_client
from shared.config import DEFAULT_CONCURRENCY, QUEUES, ConfigError, Settings
from shared.cost.budget import BudgetGuard, Period
from shared.cost.prices import PriceTable
from shared.egress import EgressPolicy
from shared.errors import PermanentError
from shared.outbound import QUEUE, RetryableDeliveryError, deliver, new_event, publish_event, retry_after_s
from shared.proxy.accounting import CostAccounting
from shared.proxy.routing import Target
from shared.proxy.usage import Reported
from shared.streams import RedisStreamsBroker
from shared.webhooks import verify
from tests.support.workers import start_workers, stop_workers, worker_children

SECRET = new_webhook_secret()
#: The receivers listen on loopback, which the egress policy refuses unless allowed (any port here).
LOOPBACK = "127.0.0.1"
ALLOW_LOOPBACK = EgressPolicy([LOOPBACK])
FAST_RETRIES = {
    "PRESSLINE_OUTBOUND_WEBHOOK_MAX_RETRIES": "2",
    "PRESSLINE_OUTBOUND_WEBHOOK_MIN_BACKOFF_MS": "50",
    "PRESSLINE_OUTBOUND_WEBHOOK_MAX_BACKOFF_MS": "200",
}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A back-office endpoint: ``/ok``, ``/flaky`` (503 twice, ``Retry-After: 1``), ``/bad`` (400),
    ``/slow`` (0.5 s, counting requests in flight), ``/gone`` (410), ``/busy`` (429), ``/moved`` (301)."""

    port: int
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(port=0)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            path = self.path.split("?", 1)[0]
            with state.lock:
                headers = {name.lower(): value for name, value in self.headers.items()}
                state.requests.append(Received(path, headers, body, time.monotonic()))
                seen = sum(1 for r in state.requests if r.path == path)
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                answer: dict[str, str] = {}
                if path == "/flaky" and seen <= 2:
                    status, answer = 503, {"Retry-After": "1"}
                elif path == "/bad":
                    status = 400
                elif path == "/gone":
                    status = 410
                elif path == "/busy":
                    status, answer = 429, {"Retry-After": "2"}
                elif path == "/moved":
                    status, answer = 301, {"Location": "http://127.0.0.1:1/elsewhere"}
                else:
                    if path == "/slow":
                        time.sleep(0.5)
                    status = 200
                self.send_response(status)
                for name, value in answer.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
            finally:
                with state.lock:
                    state.in_flight -= 1

    server = _Server(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def producer(redis_url: str) -> Iterator[RedisStreamsBroker]:
    """A bare broker in the test process that only enqueues (the workers are other processes)."""
    broker = RedisStreamsBroker(url=redis_url, namespace="pressline")
    yield broker
    broker.close()


@pytest.fixture
def workers(redis_url: str, aws_endpoint: Endpoint, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start a real ``dramatiq workers.app -Q webhooks`` with extra env; stopped after the test."""
    started = []

    def start(threads: int = 16, **env: str) -> Any:
        main = start_workers(
            redis_url,
            module="workers.app",
            queues=("webhooks",),
            threads=threads,
            log=tmp_path / "workers.log",
            dramatiq_prom_port=str(free_port()),
            dramatiq_prom_db=str(tmp_path / "prom"),
            **{"PRESSLINE_EGRESS_ALLOW": LOOPBACK, **env},
        )
        started.append(main)
        worker_children(main, 1)
        return main

    yield start
    for main in started:
        stop_workers(main)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def drained(broker: RedisStreamsBroker) -> bool:
    stats = broker.admin.stats(QUEUE)
    return (stats.backlog, stats.pending, stats.delayed) == (0, 0, 0)


def assert_signed(request: Received, secret: str = SECRET) -> dict[str, Any]:
    verify([secret], request.headers, request.body, now=time.time())
    assert request.headers["webhook-id"].startswith("msg_")
    assert request.headers["content-type"] == "application/json"
    event: dict[str, Any] = json.loads(request.body)
    return event


# -- deliver() against the receiver, in this process -------------------------------------------------


def test_deliver_classifies_answers(receiver: Receiver) -> None:
    event = new_event("test.ping", {"n": 1})

    def send(url: str, **options: Any) -> int:
        return deliver(url, event, "msg_1", SECRET, timeout=5, egress=ALLOW_LOOPBACK, **options)

    assert send(receiver.url("/ok")) == 200
    assert assert_signed(receiver.at("/ok")[0]) == event
    for path in ("/bad", "/gone", "/moved"):  # refused, retired, or a redirect we do not follow
        with pytest.raises(PermanentError, match="answered"):
            send(receiver.url(path) + "?token=hush")
    with pytest.raises(RetryableDeliveryError) as busy:
        send(receiver.url("/busy"))
    assert busy.value.delay == 2000  # Retry-After: 2 replaces the backoff
    with pytest.raises(RetryableDeliveryError) as capped:
        send(receiver.url("/busy"), max_retry_after_s=0.5)
    assert capped.value.delay == 500
    with pytest.raises(RetryableDeliveryError) as refused:
        send(f"http://127.0.0.1:{free_port()}/x")
    assert refused.value.delay is None  # Dramatiq's backoff with jitter applies
    for error in (busy.value, refused.value):
        assert SECRET not in str(error) and "hush" not in str(error)


def test_retry_after_forms() -> None:
    assert retry_after_s("7") == 7.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 30) == 30.0
    assert retry_after_s("soon") is None and retry_after_s(None) is None


def test_settings_for_outbound_webhooks() -> None:
    assert "webhooks" in QUEUES and DEFAULT_CONCURRENCY["webhooks"].threads == 16
    settings = Settings.from_env(
        {
            "PRESSLINE_OUTBOUND_WEBHOOK_URLS": " https://a.example/hook , ,http://b.example:8080/x?t=1",
            "PRESSLINE_OUTBOUND_WEBHOOK_SECRET": SECRET,
            "PRESSLINE_QUEUE_CONCURRENCY": "webhooks=2x32",
        }
    )
    assert settings.outbound_webhook_urls == ("https://a.example/hook", "http://b.example:8080/x?t=1")
    assert settings.concurrency["webhooks"].processes == 2
    assert SECRET not in repr(settings)
    assert Settings.from_env({}).outbound_webhook_urls == ()
    assert Settings().outbound_webhook_secret_name == "pressline/outbound-webhook"
    with pytest.raises(ConfigError, match="entry 2") as bad:
        Settings.from_env({"PRESSLINE_OUTBOUND_WEBHOOK_URLS": "https://a.example,ftp://u:pw@b"})
    assert "pw" not in str(bad.value)


def test_publish_without_endpoints_enqueues_nothing(producer: RedisStreamsBroker) -> None:
    assert publish_event(producer, "test.ping", {}, urls=()) is None
    producer.declare_queue(QUEUE)
    assert producer.admin.stats(QUEUE).backlog == 0


# -- through the webhooks queue and a real worker -----------------------------------------------------


def test_delivery_is_signed_retried_on_503_then_accepted_with_one_id(
    producer: RedisStreamsBroker, receiver: Receiver, workers: Callable[..., Any], tmp_path: Path
) -> None:
    """The secret comes from Secrets Manager here (no override), as in a deployment."""
    name = f"pressline-test/{uuid.uuid4().hex[:12]}/outbound-webhook"
    secret = new_webhook_secret()
    ensure_secret(aws_client("secretsmanager", Settings.from_env()), name, secret)
    # Retry-After is capped at the max backoff: leave room for the receiver's 1 s.
    workers(
        PRESSLINE_OUTBOUND_WEBHOOK_SECRET_NAME=name,
        **{**FAST_RETRIES, "PRESSLINE_OUTBOUND_WEBHOOK_MAX_BACKOFF_MS": "5000"},
    )

    msg_id = publish_event(producer, "run.completed", {"job_id": "j1"}, urls=[receiver.url("/flaky")])

    wait_for(lambda: len(receiver.at("/flaky")) >= 3, 30, "two 503s and an acceptance")
    time.sleep(0.3)
    attempts = receiver.at("/flaky")
    assert len(attempts) == 3
    assert {a.headers["webhook-id"] for a in attempts} == {msg_id}
    assert {a.body for a in attempts} == {attempts[0].body}  # the same signed bytes each time
    events = [assert_signed(a, secret) for a in attempts]
    assert events[0]["type"] == "run.completed" and events[0]["data"] == {"job_id": "j1"}
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(attempts)]
    assert min(gaps) >= 0.9, gaps  # Retry-After: 1 honoured over the 50 ms backoff
    wait_for(lambda: producer.admin.stats(QUEUE).pending == 0, 10, "the message to be acked")
    assert producer.admin.stats(QUEUE).dead == 0
    assert secret not in (tmp_path / "workers.log").read_text()


def test_a_400_is_dead_lettered_at_once(
    producer: RedisStreamsBroker, receiver: Receiver, workers: Callable[..., Any]
) -> None:
    workers(PRESSLINE_OUTBOUND_WEBHOOK_SECRET=SECRET, **FAST_RETRIES)
    msg_id = publish_event(producer, "run.failed", {"job_id": "j2"}, urls=[receiver.url("/bad")])

    wait_for(lambda: producer.admin.stats(QUEUE).dead == 1, 20, "the dead letter")
    (dead,) = producer.admin.dead_letters(QUEUE)
    assert dead.attempts == 1 and "PermanentError" in dead.error and "400" in dead.error
    assert dead.message["args"][2] == msg_id
    assert len(receiver.at("/bad")) == 1


def test_an_unreachable_endpoint_is_retried_to_the_limit_then_dead_lettered(
    producer: RedisStreamsBroker, workers: Callable[..., Any], tmp_path: Path
) -> None:
    workers(PRESSLINE_OUTBOUND_WEBHOOK_SECRET=SECRET, **FAST_RETRIES)
    url = f"http://127.0.0.1:{free_port()}/nobody?token=hush"
    publish_event(producer, "run.failed", {"job_id": "j3"}, urls=[url])

    wait_for(lambda: producer.admin.stats(QUEUE).dead == 1, 30, "the dead letter")
    (dead,) = producer.admin.dead_letters(QUEUE)
    assert dead.attempts == 3  # the first attempt and max_retries=2
    assert "RetryableDeliveryError" in dead.error and "no answer" in dead.error
    assert "hush" not in dead.error and SECRET not in dead.error
    assert SECRET not in (tmp_path / "workers.log").read_text()


def test_deliveries_run_concurrently_up_to_the_thread_bound(
    producer: RedisStreamsBroker, receiver: Receiver, workers: Callable[..., Any]
) -> None:
    for i in range(20):
        publish_event(producer, "run.completed", {"job_id": f"j{i}"}, urls=[receiver.url("/slow")])
    workers(threads=16, PRESSLINE_OUTBOUND_WEBHOOK_SECRET=SECRET)

    wait_for(lambda: len(receiver.at("/slow")) == 20, 30, "20 deliveries")
    wait_for(lambda: drained(producer), 10, "every message acked")
    arrivals = [r.at for r in receiver.at("/slow")]
    span = max(arrivals) + 0.5 - min(arrivals)
    assert span < 3.0, span  # two waves of 0.5 s, not 20 x 0.5 s (measured: about 1.0 s)
    assert 12 <= receiver.max_in_flight <= 16, receiver.max_in_flight
    assert len({r.headers["webhook-id"] for r in receiver.at("/slow")}) == 20


def test_a_soft_budget_limit_sends_one_signed_webhook(
    redis_url: str, producer: RedisStreamsBroker, receiver: Receiver, workers: Callable[..., Any]
) -> None:
    env = {
        "PRESSLINE_OUTBOUND_WEBHOOK_URLS": receiver.url("/ok"),
        "PRESSLINE_OUTBOUND_WEBHOOK_SECRET": SECRET,
        "PRESSLINE_EGRESS_ALLOW": LOOPBACK,
    }
    workers(**env)
    settings = Settings.from_env({"DRAMATIQ_BROKER_URL": redis_url, **env})
    registry = CollectorRegistry()
    guard = BudgetGuard(redis.Redis.from_url(redis_url), settings.namespace)
    guard.set_budget("acme", Period.MONTH, soft_pico=1_000)
    accounting = CostAccounting(
        PriceTable.load(), guard, 4096, on_alert=budget_alerts(settings, registry, producer)
    )
    target = Target("openai", "gpt-4o-mini")

    def one_request(request_id: str) -> None:
        reservation = accounting.reserve("acme", [target], "hello", 100)
        accounting.settle(
            reservation,
            request_id=request_id,
            tenant="acme",
            target=target,
            reported=Reported(input_tokens=100, output_tokens=50, complete=True),
            prompt_text="hello",
            job_id=None,
        )

    one_request("r1")
    one_request("r2")  # past the limit again: the alert is once per period

    wait_for(lambda: len(receiver.at("/ok")) >= 1, 30, "the alert webhook")
    wait_for(lambda: drained(producer), 10, "the queue to drain")
    (request,) = receiver.at("/ok")
    event = assert_signed(request)
    assert event["type"] == "budget.soft_limit_reached"
    assert event["data"]["tenant"] == "acme" and event["data"]["period"] == "month"
    assert event["data"]["limit_pico_usd"] == 1_000 and event["data"]["spent_pico_usd"] > 1_000
    labels = {"level": "soft", "period": "month"}
    assert registry.get_sample_value("pressline_budget_alerts_total", labels) == 1.0
