"""A tiny worker app for the Prometheus exposition test: ``dramatiq tests.telemetry_actors``."""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import default_middleware

from shared.config import Settings
from shared.streams import RedisStreamsBroker
from workers.middleware.prometheus import Prometheus

QUEUE = "telemetry-test"

settings = Settings.from_env()
broker = RedisStreamsBroker(
    url=settings.broker_url,
    namespace=settings.namespace,
    middleware=[m() for m in default_middleware] + [Prometheus()],
)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def ping(n: int) -> None:
    if n < 0:
        raise ValueError("negative ping")
