"""The Redis Streams broker with in-process Dramatiq workers, over a real Redis."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.common import current_millis

from shared.errors import PermanentError
from shared.streams import RedisStreamsBroker
from shared.streams.keys import GROUP


@pytest.fixture
def broker(redis_url: str) -> Iterator[RedisStreamsBroker]:
    broker = RedisStreamsBroker(url=redis_url, namespace="t", dead_after_ms=1500, block_ms=1000)
    dramatiq.set_broker(broker)
    yield broker
    broker.close()


@pytest.fixture
def worker(broker: RedisStreamsBroker) -> Iterator[Worker]:
    worker = Worker(broker, worker_threads=4, worker_timeout=100)
    yield worker
    worker.stop(timeout=10_000)


def wait_for(predicate: Any, timeout_s: float = 15.0, interval_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError("condition not met in time")


def test_messages_are_processed_once_and_acked_entries_trimmed(
    broker: RedisStreamsBroker, worker: Worker
) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=broker)
    def add(x: int) -> None:
        with lock:
            seen.append(x)

    worker.start()
    for i in range(500):
        add.send(i)
    broker.join(add.queue_name, timeout=15_000)
    assert sorted(seen) == list(range(500))
    stats = broker.admin.stats(add.queue_name)
    assert (stats.backlog, stats.pending, stats.dead) == (0, 0, 0)
    # Acked entries do not pile up: a busy consumer trims them.
    time.sleep(broker.trim_interval_s)
    add.send(-1)
    broker.join(add.queue_name, timeout=5_000)
    assert broker.client.xlen(broker.keys(add.queue_name).stream) <= 2


def test_poison_message_is_dead_lettered_with_its_error_after_retries(
    broker: RedisStreamsBroker, worker: Worker
) -> None:
    runs: list[int] = []

    @dramatiq.actor(broker=broker, max_retries=2, min_backoff=10, max_backoff=20)
    def poison() -> None:
        runs.append(1)
        raise ValueError("cannot parse this")

    worker.start()
    poison.send()
    wait_for(lambda: broker.admin.stats(poison.queue_name).dead == 1)
    (dead,) = broker.admin.dead_letters(poison.queue_name)
    assert dead.error == "ValueError: cannot parse this"
    assert dead.attempts == 3 == len(runs)
    assert dead.message["actor_name"] == "poison"
    assert dead.failed_at_ms <= current_millis()

    # The earlier attempts' acks are batched (sent within ack_delay_ms), so they may trail the dead letter.
    def settled() -> bool:
        stats = broker.admin.stats(poison.queue_name)
        return (stats.backlog, stats.pending, stats.delayed) == (0, 0, 0)

    wait_for(settled, timeout_s=2.0)


def test_permanent_error_goes_to_the_dead_letters_at_once(broker: RedisStreamsBroker, worker: Worker) -> None:
    runs: list[int] = []

    @dramatiq.actor(broker=broker, max_retries=5, throws=(PermanentError,))
    def refuse() -> None:
        runs.append(1)
        raise PermanentError("title missing")

    worker.start()
    refuse.send()
    wait_for(lambda: broker.admin.stats(refuse.queue_name).dead == 1)
    (dead,) = broker.admin.dead_letters(refuse.queue_name)
    assert (dead.error, dead.attempts, len(runs)) == ("PermanentError: title missing", 1, 1)


def test_dead_letters_can_be_requeued_and_purged(broker: RedisStreamsBroker, worker: Worker) -> None:
    fail = {"on": True}
    done: list[int] = []

    @dramatiq.actor(broker=broker, max_retries=0)
    def flaky(i: int) -> None:
        if fail["on"]:
            raise RuntimeError("upstream down")
        done.append(i)

    worker.start()
    for i in range(3):
        flaky.send(i)
    wait_for(lambda: broker.admin.stats(flaky.queue_name).dead == 3)
    fail["on"] = False
    first = broker.admin.dead_letters(flaky.queue_name)[0]
    assert broker.requeue_dead(flaky.queue_name, [first.entry_id]) == 1
    wait_for(lambda: len(done) == 1)
    assert broker.admin.stats(flaky.queue_name).dead == 2
    assert broker.purge_dead(flaky.queue_name) == 2
    assert broker.admin.stats(flaky.queue_name).dead == 0
    assert done == [first.message["args"][0]]


def test_delayed_messages_never_run_before_their_eta(broker: RedisStreamsBroker, worker: Worker) -> None:
    lateness: dict[int, int] = {}

    @dramatiq.actor(broker=broker)
    def due(i: int, eta_ms: int) -> None:
        lateness[i] = current_millis() - eta_ms

    worker.start()
    delays = [50, 900, 300, 10, 600, 150, 450, 750, 200, 1200]
    for i, delay in enumerate(delays):
        due.send_with_options(args=(i, current_millis() + delay), delay=delay)
    assert broker.admin.stats(due.queue_name).delayed >= 5
    wait_for(lambda: len(lateness) == len(delays), timeout_s=10)
    assert min(lateness.values()) >= 0, lateness
    assert max(lateness.values()) < 500, lateness  # promptly due, not polled late


def test_retry_backoff_goes_through_the_delayed_set(broker: RedisStreamsBroker, worker: Worker) -> None:
    attempts: list[int] = []

    @dramatiq.actor(broker=broker, max_retries=3, min_backoff=300, max_backoff=5000)
    def once_flaky() -> None:
        attempts.append(current_millis())
        if len(attempts) == 1:
            raise RuntimeError("try again")

    worker.start()
    once_flaky.send()
    wait_for(lambda: len(attempts) == 2)
    assert attempts[1] - attempts[0] >= 300  # Dramatiq's backoff with jitter: 300..600 ms


def test_a_foreign_producer_enqueues_with_plain_redis_commands(
    broker: RedisStreamsBroker, worker: Worker, redis_url: str
) -> None:
    """The wire format (docs/wire-format.md): XADD {<namespace>:<queue>}.stream * m <json>."""
    got: list[Any] = []

    @dramatiq.actor(broker=broker, queue_name="polyglot")
    def add(a: int, b: int) -> None:
        got.append(a + b)

    worker.start()
    plain = redis.Redis.from_url(redis_url)
    payload = {
        "queue_name": "polyglot",
        "actor_name": "add",
        "args": [1, 2],
        "kwargs": {},
        "options": {},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": current_millis(),
    }
    plain.execute_command("XADD", "{t:polyglot}.stream", "*", "m", json.dumps(payload))
    wait_for(lambda: got == [3])


def test_undecodable_entries_go_to_the_dead_letters(broker: RedisStreamsBroker, worker: Worker) -> None:
    @dramatiq.actor(broker=broker, queue_name="garbage")
    def noop() -> None:
        pass

    worker.start()
    broker.client.xadd(broker.keys("garbage").stream, {"m": b"not json"})
    wait_for(lambda: broker.admin.stats("garbage").dead == 1)
    assert broker.admin.dead_letters("garbage")[0].error.startswith("undecodable message")


def test_a_consumer_holds_no_more_than_its_cap(broker: RedisStreamsBroker) -> None:
    @dramatiq.actor(broker=broker, queue_name="capped")
    def noop() -> None:
        pass

    for _ in range(50):
        noop.send()
    consumer = broker.consume("capped", prefetch=5, timeout=200)
    try:
        first = next(consumer)
        assert first is not None
        time.sleep(0.3)
        assert broker.admin.stats("capped").pending == 5  # the cap, not the whole backlog
        assert broker.admin.stats("capped").backlog == 45
        consumer.ack(first)
        wait_for(lambda: broker.admin.stats("capped").backlog == 44)
    finally:
        consumer.close()
    # close() acks what was acked and returns what was held: nothing is stuck pending.
    stats = broker.admin.stats("capped")
    assert (stats.pending, stats.backlog) == (0, 49)


def test_trimming_never_drops_unacked_entries(broker: RedisStreamsBroker) -> None:
    @dramatiq.actor(broker=broker, queue_name="trim")
    def noop(i: int) -> None:
        pass

    for i in range(20):
        noop.send(i)
    consumer = broker.consume("trim", prefetch=20, timeout=200)
    try:
        held = [next(consumer) for _ in range(20)]
        for message in held[5:]:
            consumer.ack(message)
        consumer._flush_acks(force=True)
        broker.trim("trim")
        stream = broker.keys("trim").stream
        pending_ids = {p["message_id"] for p in broker.client.xpending_range(stream, GROUP, "-", "+", 100)}
        remaining = {entry_id for entry_id, _ in broker.client.xrange(stream)}
        assert len(pending_ids) == 5
        assert pending_ids <= remaining  # every un-acked entry survived the trim
    finally:
        consumer.close()


def test_an_idle_worker_sends_at_most_one_command_a_second(redis_url: str) -> None:
    broker = RedisStreamsBroker(url=redis_url, namespace="idle")  # production defaults

    @dramatiq.actor(broker=broker, queue_name="idle")
    def noop() -> None:
        pass

    worker = Worker(broker, worker_threads=8)
    worker.start()
    try:
        time.sleep(1.0)  # boot: group creation, first heartbeat, first promotion pass
        before = _total_calls(broker.client)
        time.sleep(10.0)
        calls = _total_calls(broker.client) - before - 1  # the second INFO itself
    finally:
        worker.stop(timeout=10_000)
        broker.close()
    assert calls / 10.0 <= 1.0, f"{calls} commands in 10s"


def _total_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def test_recovery_never_robs_a_live_consumer_and_takes_over_a_dead_ones(redis_url: str) -> None:
    def make() -> RedisStreamsBroker:
        b = RedisStreamsBroker(url=redis_url, namespace="rec", dead_after_ms=600, block_ms=200)
        b.declare_queue("slow")
        return b

    holder, rescuer = make(), make()
    holder.enqueue(dramatiq.Message(queue_name="slow", actor_name="a", args=(), kwargs={}, options={}))
    held = holder.consume("slow", prefetch=1, timeout=2000)
    message = next(held)
    assert message is not None
    # Only now does the rescuer start: its fetcher would otherwise race the holder's for the entry.
    rescue = rescuer.consume("slow", prefetch=1, timeout=300)
    try:
        # The holder works on it for 5x the dead-after time; its heartbeat keeps it alive.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert next(rescue) is None
        assert rescuer.admin.stats("slow").pending == 1
        # The holder dies (its heartbeat goes); the rescuer's recovery gives the message out again.
        holder.close()
        redelivered = None
        deadline = time.monotonic() + 10.0
        while redelivered is None and time.monotonic() < deadline:
            redelivered = next(rescue)
        assert redelivered is not None
        assert redelivered.message_id == message.message_id
        assert redelivered.redeliveries == 1  # type: ignore[attr-defined]
        rescue.ack(redelivered)
    finally:
        rescue.close()
        held.close()
        rescuer.close()
    stats = rescuer.admin.stats("slow")
    assert (stats.pending, stats.backlog) == (0, 0)  # the dead holder's entry was acked when returned
