"""The benchmark's actors, declared identically on whichever broker ``BENCH_BROKER`` names.

Both the ``dramatiq bench.actors`` workers and the producer import this module, so the two
brokers run exactly the same actors with Dramatiq's default middleware.  Environment:

* ``BENCH_BROKER``: ``streams`` (ours) or ``stock`` (``dramatiq.brokers.redis.RedisBroker``);
* ``BENCH_REDIS_URL``: the Redis the bench started;
* ``BENCH_NAMESPACE``: key prefix (default ``bench``);
* ``BENCH_OUT_DIR``: where worker processes leave their ready marker and latency samples.

Measurement never touches Redis: readiness and latencies go to files in ``BENCH_OUT_DIR``, so
``INFO commandstats`` only counts what the broker itself does.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from shared.streams import RedisStreamsBroker

QUEUE = "bench"

#: Enqueue-to-start delays (seconds) seen by this process; written to a file at shutdown.
latencies: list[float] = []
#: Wall-clock time this process last finished a message: tells "processed" apart from "acked".
last_finished = 0.0


def make_broker(kind: str, url: str, namespace: str) -> dramatiq.Broker:
    """Either broker, with Dramatiq's default middleware (``middleware=None``)."""
    if kind == "streams":
        return RedisStreamsBroker(url=url, namespace=namespace)
    if kind == "stock":
        return RedisBroker(url=url, namespace=namespace)
    raise ValueError(f"BENCH_BROKER must be 'streams' or 'stock', not {kind!r}")


class BenchFiles(Middleware):
    """Tells the bench, through files, that a worker process is up and what latencies it saw."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        (self.out_dir / f"ready-{os.getpid()}").touch()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        (self.out_dir / f"finished-{os.getpid()}").write_text(repr(last_finished))
        if latencies:
            (self.out_dir / f"latency-{os.getpid()}.json").write_text(json.dumps(latencies))


broker = make_broker(
    os.environ.get("BENCH_BROKER", "streams"),
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6399/0"),
    os.environ.get("BENCH_NAMESPACE", "bench"),
)
if out_dir := os.environ.get("BENCH_OUT_DIR"):
    broker.add_middleware(BenchFiles(Path(out_dir)))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE)
def noop() -> None:
    """Does nothing: measures the broker's and Dramatiq's own cost per message."""
    _finished()


@dramatiq.actor(queue_name=QUEUE)
def cpu_2ms() -> None:
    """Burns 2 ms of this thread's CPU (not sleep), like a small CPU-bound job holding the GIL."""
    end = time.thread_time() + 0.002
    while time.thread_time() < end:
        pass
    _finished()


@dramatiq.actor(queue_name=QUEUE)
def stamped(sent_at: float) -> None:
    """A no-op that records how long after ``send`` (wall clock) it started."""
    latencies.append(time.time() - sent_at)
    _finished()


def _finished() -> None:
    global last_finished
    last_finished = time.time()
