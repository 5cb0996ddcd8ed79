"""A tiny worker app for the Prometheus exposition test: ``dramatiq tests.telemetry_actors``."""

from __future__ import annotations

import time

import dramatiq
from dramatiq.middleware import default_middleware

from shared.config import Settings
from shared.streams import RedisStreamsBroker
from workers.middleware.prometheus import Prometheus

QUEUE = "telemetry-test"
HOLD_QUEUE = "telemetry-hold"

settings = Settings.from_env()
broker = RedisStreamsBroker(
    url=settings.broker_url,
    namespace=settings.namespace,
    middleware=[m() for m in default_middleware] + [Prometheus()],
    dead_after_ms=settings.consumer_dead_after_ms,
)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def ping(n: int) -> None:
    if n < 0:
        raise ValueError("negative ping")


@dramatiq.actor(queue_name=HOLD_QUEUE, max_retries=0)
def hold(n: int) -> None:
    """Start, then wait while the key ``hold`` exists (a worker the test can kill mid-message)."""
    broker.client.rpush("held:started", n)
    while broker.client.exists("hold"):
        time.sleep(0.05)
    broker.client.rpush("held:done", n)
