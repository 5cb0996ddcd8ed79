"""Retries through an outage: an upstream that is down for longer than max_retries lasts is
retried over the queue's time budget; other errors keep Dramatiq's rules (issue 15, point 3)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from botocore.exceptions import ClientError
from dramatiq import Worker
from dramatiq.middleware import Retries

from shared.errors import PermanentError
from shared.pipeline.errors import RetryLater
from shared.streams import RedisStreamsBroker
from workers.middleware.retry_budget import BudgetedRetries, is_outage


@pytest.fixture
def make_broker(redis_url: str) -> Iterator[Callable[[int], RedisStreamsBroker]]:
    """A Streams broker whose Retries (max_retries 2) has a budget for the ``default`` queue."""
    made: list[RedisStreamsBroker] = []

    def make(budget_ms: int) -> RedisStreamsBroker:
        broker = RedisStreamsBroker(url=redis_url, namespace="rb", dead_after_ms=5000, block_ms=200)
        broker.middleware[:] = [m for m in broker.middleware if type(m) is not Retries]
        broker.add_middleware(
            BudgetedRetries(max_retries=2, min_backoff=10, max_backoff=50, budgets_ms={"default": budget_ms})
        )
        dramatiq.set_broker(broker)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def test_an_outage_is_retried_past_max_retries_within_its_budget(make_broker: Any) -> None:
    broker = make_broker(60_000)
    attempts: list[int] = []

    @dramatiq.actor(broker=broker)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) <= 6:  # three times max_retries
            raise RetryLater("the LLM upstream is unavailable", delay_s=0.02)

    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        flaky.send()
        broker.join(flaky.queue_name, timeout=30_000)
    finally:
        worker.stop(timeout=5000)
    assert len(attempts) == 7  # six failures, then the success
    assert broker.admin.stats(flaky.queue_name).dead == 0


@pytest.mark.parametrize(
    ("error", "budget_ms", "runs"),
    [
        (ValueError, 60_000, 3),  # not an outage: max_retries (2) as always
        (RetryLater, 0, 3),  # an outage with no budget left: max_retries too
        (PermanentError, 60_000, 1),  # throws: dead-lettered at once
    ],
)
def test_other_failures_keep_dramatiqs_rules(
    make_broker: Any, error: type[Exception], budget_ms: int, runs: int
) -> None:
    broker = make_broker(budget_ms)
    attempts: list[int] = []

    @dramatiq.actor(broker=broker, throws=(PermanentError,))
    def failing() -> None:
        attempts.append(1)
        raise RetryLater("down", delay_s=0.02) if error is RetryLater else error("no")

    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        failing.send()
        broker.join(failing.queue_name, timeout=30_000)
    finally:
        worker.stop(timeout=5000)
    assert len(attempts) == runs
    dead = broker.client.xrange(broker.keys(failing.queue_name).dead)
    assert len(dead) == 1 and int(dead[0][1][b"attempts"]) == runs


def test_what_counts_as_an_outage() -> None:
    import redis

    def aws(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
        )

    assert is_outage(RetryLater("503"))
    assert is_outage(redis.ConnectionError("gone"))
    assert is_outage(aws("NoSuchBucket", 404))  # the endpoint restarted and is being bootstrapped
    assert is_outage(aws("InternalError", 500))
    assert not is_outage(aws("AccessDenied", 403))
    assert not is_outage(ValueError("bad input"))
