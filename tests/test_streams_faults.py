"""The Streams broker when Redis dies under a loaded queue: nothing is stranded, nothing lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker

from shared.streams import RedisStreamsBroker
from shared.streams.keys import GROUP
from tests.support.killable_redis import KillableRedis


@pytest.fixture
def killable(tmp_path: Path) -> Iterator[KillableRedis]:
    server = KillableRedis(tmp_path / "redis")
    yield server
    server.stop()


def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except redis.ConnectionError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"not reached in {timeout_s} s: {what}")


def test_redis_killed_three_times_mid_run_strands_no_message(killable: KillableRedis) -> None:
    """Issue 15, point 2: with the worker's heartbeat alive throughout, every message is still
    processed and acked; none is left pending under the live process's name."""
    broker = RedisStreamsBroker(url=killable.url, namespace="kill", dead_after_ms=60_000, block_ms=300)
    done: set[int] = set()
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, max_retries=0)
    def work(n: int) -> None:
        time.sleep(0.02)
        with lock:
            done.add(n)

    total = 600
    for n in range(total):
        work.send(n)
    worker = Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        for kill in range(1, 4):
            # Killed while the queue is loaded: messages are running, fetched and waiting to be acked.
            wait_for(lambda k=kill: len(done) >= k * total // 5, 60, f"progress before kill {kill}")
            killable.kill_and_restart(down_s=0.5)
        client = redis.Redis.from_url(killable.url)
        stream = broker.keys(work.queue_name).stream

        def drained() -> bool:
            summary = client.xpending(stream, GROUP)
            return (
                len(done) == total
                and summary["pending"] == 0
                and broker.admin.stats(work.queue_name).backlog == 0
            )

        # dead_after is 60 s, so recovery of dead consumers cannot be what frees anything here.
        wait_for(drained, 45, "every message done and nothing pending")
    finally:
        worker.stop(timeout=10_000)
        broker.close()
    assert done == set(range(total))
    assert broker.admin.stats(work.queue_name).dead == 0


class _NextStageFailsOnce(dramatiq.Middleware):
    """Stands for Pipelines (or Retries, or the job record) failing to write after the actor ran:
    the first time, its after-hook raises as it would with Redis unreachable."""

    def __init__(self) -> None:
        self.failed = False

    def after_process_message(self, broker: dramatiq.Broker, message: Any, **kwargs: Any) -> None:
        if not self.failed:
            self.failed = True
            raise redis.ConnectionError("Connection refused")


def test_a_message_whose_after_processing_failed_runs_again_instead_of_being_acked(redis_url: str) -> None:
    """The burn-in's lost jobs: Redis died while a finished message's next stage (or retry) was
    being written; Dramatiq logs the hook's failure and acks, and the job stops with no message
    anywhere. The broker gives such a message back to the stream instead."""
    broker = RedisStreamsBroker(url=redis_url, namespace="redeliver", dead_after_ms=60_000, block_ms=200)
    hook = _NextStageFailsOnce()
    broker.add_middleware(hook)
    runs: list[int] = []

    @dramatiq.actor(broker=broker)
    def step() -> None:
        runs.append(1)

    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        step.send()
        wait_for(lambda: len(runs) >= 2 and broker.admin.stats(step.queue_name).pending == 0, 30, "a rerun")
        broker.join(step.queue_name, timeout=10_000)
    finally:
        worker.stop(timeout=5000)
        broker.close()
    assert hook.failed and len(runs) == 2  # the run whose hook failed, and the redelivery
    stats = broker.admin.stats(step.queue_name)
    assert (stats.backlog, stats.pending, stats.dead) == (0, 0, 0)
