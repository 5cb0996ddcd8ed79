"""The broker's background duties in a worker process, on one thread.

* Heartbeat: a key with a TTL that says this process's consumer is alive.
* Delayed messages: move due ones onto their streams.  It sleeps until the next known ETA and is
  woken early by a pub/sub notice whenever any process adds a delayed message.
* Recovery: un-acked messages of consumers whose heartbeat has expired go back to the stream.
  A live consumer is never robbed, however long its actor runs.

Idle, this costs a fraction of a Redis command per second.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from typing import TYPE_CHECKING

import redis
from dramatiq.common import current_millis

from .keys import GROUP, heartbeat_key, notify_channel

if TYPE_CHECKING:
    from .broker import RedisStreamsBroker

logger = logging.getLogger(__name__)

#: Even without notices, look at every delayed set this often (covers missed pub/sub notices).
RESYNC_INTERVAL_S = 30.0


class Maintenance(threading.Thread):
    """Heartbeat, delayed-message promotion and dead-consumer recovery for one broker."""

    def __init__(self, broker: RedisStreamsBroker) -> None:
        super().__init__(name="stream-maintenance", daemon=True)
        self.broker = broker
        self.queues: set[str] = set()
        self._next_due: dict[str, float] = {}  # queue -> earliest known ETA (ms)
        self._running = True
        self._wake = threading.Event()
        dead_after_s = broker.dead_after_ms / 1000
        self.heartbeat_interval_s = dead_after_s / 3
        self.recovery_interval_s = dead_after_s / 2
        self._pubsub: redis.client.PubSub | None = None

    def watch(self, queue_name: str) -> None:
        """Look after this queue from now on."""
        if queue_name not in self.queues:
            self.queues.add(queue_name)
            self._next_due[queue_name] = 0.0
            self._wake.set()

    def stop(self) -> None:
        self._running = False
        self._wake.set()
        with contextlib.suppress(redis.RedisError):
            self.broker.client.delete(heartbeat_key(self.broker.namespace, self.broker.consumer_name))
        self.join(timeout=5)

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        now = time.monotonic()
        next_heartbeat = now
        next_recovery = now + random.uniform(0, self.recovery_interval_s)
        next_resync = now + RESYNC_INTERVAL_S
        while self._running:
            try:
                now = time.monotonic()
                if now >= next_heartbeat:
                    self._heartbeat()
                    next_heartbeat = now + self.heartbeat_interval_s
                if now >= next_resync:
                    for queue_name in self.queues:
                        self._next_due[queue_name] = 0.0
                    next_resync = now + RESYNC_INTERVAL_S
                self._promote_due()
                if now >= next_recovery:
                    self._recover()
                    next_recovery = now + self.recovery_interval_s * random.uniform(0.8, 1.2)
                wake_at = min(next_heartbeat, next_recovery, next_resync, self._next_promotion_at())
                self._sleep(max(0.0, wake_at - time.monotonic()))
            except redis.RedisError as e:
                logger.warning("Broker maintenance failed (%s); retrying in 1s.", e)
                self._close_pubsub()
                time.sleep(1.0)
        self._close_pubsub()

    def _next_promotion_at(self) -> float:
        """The monotonic time at which the earliest known delayed message is due."""
        if not self._next_due:
            return float("inf")
        earliest_ms = min(self._next_due.values())
        return time.monotonic() + max(0.0, (earliest_ms - current_millis()) / 1000)

    def _sleep(self, seconds: float) -> None:
        """Wait for the timeout, a delayed-message notice, or a local wake-up."""
        if self._wake.is_set():
            self._wake.clear()
            return
        pubsub = self._ensure_pubsub()
        deadline = time.monotonic() + seconds
        while self._running:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._wake.is_set():
                self._wake.clear()
                return
            # Wake at least once a second to notice stop() and watch() promptly (no Redis traffic).
            notice = pubsub.get_message(ignore_subscribe_messages=True, timeout=min(remaining, 1.0))
            if notice and notice.get("type") == "message":
                self._note(notice["data"])
                return

    def _note(self, data: bytes) -> None:
        try:
            queue_name, eta = data.decode().rsplit(" ", 1)
        except ValueError:
            return
        if queue_name in self._next_due:
            self._next_due[queue_name] = min(self._next_due[queue_name], float(eta))

    def _ensure_pubsub(self) -> redis.client.PubSub:
        if self._pubsub is None:
            pubsub = self.broker.client.pubsub()
            pubsub.subscribe(notify_channel(self.broker.namespace))
            self._pubsub = pubsub
        return self._pubsub

    def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                self._pubsub.close()
            self._pubsub = None

    # -- duties --------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        key = heartbeat_key(self.broker.namespace, self.broker.consumer_name)
        self.broker.client.set(key, current_millis(), px=self.broker.dead_after_ms)

    def _promote_due(self) -> None:
        now = current_millis()
        for queue_name in list(self.queues):
            while self._next_due.get(queue_name, float("inf")) <= now:
                moved, next_eta = self.broker.promote_due(queue_name)
                self._next_due[queue_name] = float(next_eta) if next_eta is not None else float("inf")
                if moved:
                    logger.debug("Moved %d delayed messages onto %s.", moved, queue_name)
                now = current_millis()

    def _recover(self) -> None:
        """Return the un-acked messages of dead consumers to their streams."""
        client = self.broker.client
        me = self.broker.consumer_name
        for queue_name in list(self.queues):
            stream = self.broker.keys(queue_name).stream
            try:
                consumers = client.xinfo_consumers(stream, GROUP)
            except redis.ResponseError:
                continue  # no stream or group yet
            others = [c for c in consumers if _str(c["name"]) != me]
            if not others:
                continue
            with client.pipeline(transaction=False) as pipe:
                for c in others:
                    pipe.exists(heartbeat_key(self.broker.namespace, _str(c["name"])))
                alive = pipe.execute()
            for c, is_alive in zip(others, alive, strict=True):
                if is_alive:
                    continue
                name = _str(c["name"])
                if int(c["pending"]) == 0:
                    if int(c["idle"]) > self.broker.dead_after_ms:
                        client.xgroup_delconsumer(stream, GROUP, name)
                    continue
                self._recover_consumer(queue_name, stream, name)

    def _recover_consumer(self, queue_name: str, stream: str, name: str) -> None:
        client = self.broker.client
        total = 0
        while True:
            pending = client.xpending_range(
                stream, GROUP, min="-", max="+", count=200, consumername=name, idle=self.broker.dead_after_ms
            )
            if not pending:
                break
            ids = [p["message_id"] for p in pending]
            total += self.broker.return_to_stream(queue_name, ids, min_idle_ms=self.broker.dead_after_ms)
            if len(pending) < 200:
                break
        if total:
            logger.warning("Recovered %d messages of dead consumer %s on %s.", total, name, queue_name)


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
