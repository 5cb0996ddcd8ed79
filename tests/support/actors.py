"""Actors for tests that run real ``dramatiq`` worker processes (``dramatiq tests.support.actors``).

Each actor records what it did in Redis lists the test reads back.
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.middleware import CurrentMessage

from shared.idempotency import IdempotencyStore
from workers.app import broker, settings

QUEUE = "runner-test"
idempotency = IdempotencyStore(broker.client, settings.namespace, settings.idempotency_ttl_s)


@dramatiq.actor(queue_name=QUEUE, max_retries=3, min_backoff=100, max_backoff=500)
def record(i: int, sleep_ms: int = 0) -> None:
    """Sleep, then record ``i`` (exactly once when the message has an idempotency key)."""
    message = CurrentMessage.get_current_message()
    assert message is not None
    if sleep_ms:
        time.sleep(sleep_ms / 1000)
    key = message.options.get("idempotency_key")
    pid = os.getpid()
    if key:
        idempotency.apply_once(key, lambda pipe: pipe.rpush("effects:keyed", i).rpush("effects:pid", pid))
    else:
        broker.client.pipeline(transaction=False).rpush("effects:plain", i).rpush(
            "effects:pid", pid
        ).execute()


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def started_then_record(i: int, sleep_ms: int) -> None:
    """Mark the start, sleep, then mark the end: shows what a shutdown did to in-flight work."""
    broker.client.rpush("effects:started", i)
    time.sleep(sleep_ms / 1000)
    broker.client.rpush("effects:finished", i)
