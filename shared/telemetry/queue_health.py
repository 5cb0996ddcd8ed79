"""Queue-health gauges for Prometheus, read from Redis at scrape time.

Counters kept by workers cannot tell how many messages wait in a stream, are held by a crashed
consumer, or sit in the dead-letter stream; Redis can.  Each scrape asks
:meth:`QueueAdmin.stats` for every queue, so the numbers are the truth at that moment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.streams.admin import QueueAdmin, QueueStats

__all__ = ["GAUGES", "UP", "QueueHealthCollector"]

#: 0 when Redis could not be read at the last scrape (the other gauges are then absent).
UP = "pressline_queue_health_up"

#: name -> (help, how to read it from QueueStats)
GAUGES: dict[str, tuple[str, Callable[[QueueStats], float]]] = {
    "pressline_queue_backlog": (
        "Messages in the queue stream not yet delivered to any consumer.",
        lambda s: s.backlog,
    ),
    "pressline_queue_pending": (
        "Messages delivered to a consumer and not yet acked (held by crashed consumers included).",
        lambda s: s.pending,
    ),
    "pressline_queue_delayed": (
        "Messages waiting for their ETA (delays and retry backoff).",
        lambda s: s.delayed,
    ),
    "pressline_queue_dead_letters": (
        "Messages in the queue's dead-letter stream.",
        lambda s: s.dead,
    ),
    "pressline_queue_oldest_waiting_age_seconds": (
        "Age of the oldest message not yet delivered (0 when none waits).",
        lambda s: s.oldest_waiting_age_ms / 1000,
    ),
    "pressline_queue_oldest_pending_age_seconds": (
        "Age of the oldest delivered, un-acked message (0 when none is pending).",
        lambda s: s.oldest_pending_age_ms / 1000,
    ),
}


class QueueHealthCollector(Collector):
    """Yields the :data:`GAUGES` for each queue, labelled ``queue_name``, and :data:`UP`, on
    every scrape.

    Parameters:
      admin(QueueAdmin): Reads the queues' state from Redis.
      queues(Iterable[str] | Callable[[], Iterable[str]]): The queue names, or a function
        returning them at scrape time (for queues declared after start-up).
    """

    def __init__(self, admin: QueueAdmin, queues: Iterable[str] | Callable[[], Iterable[str]]) -> None:
        self.admin = admin
        self.queues: Callable[[], Iterable[str]] = queues if callable(queues) else _fixed(sorted(set(queues)))

    def describe(self) -> Iterator[Metric]:
        """The metric names, without touching Redis (``registry.register`` calls this)."""
        for name, (documentation, _) in GAUGES.items():
            yield GaugeMetricFamily(name, documentation, labels=["queue_name"])
        yield GaugeMetricFamily(UP, "")

    def collect(self) -> Iterator[Metric]:
        families = {
            name: (GaugeMetricFamily(name, documentation, labels=["queue_name"]), read)
            for name, (documentation, read) in GAUGES.items()
        }
        up = GaugeMetricFamily(UP, "1 when the last scrape could read every queue from Redis, else 0.")
        try:
            stats = [self.admin.stats(queue_name) for queue_name in self.queues()]
        except redis.RedisError:
            up.add_metric([], 0)  # no numbers rather than stale or made-up ones
            yield up
            return
        for family, read in families.values():
            for queue_stats in stats:
                family.add_metric([queue_stats.queue_name], read(queue_stats))
            yield family
        up.add_metric([], 1)
        yield up


def _fixed(queues: list[str]) -> Callable[[], Iterable[str]]:
    return lambda: queues
