"""A Dramatiq broker on Redis Streams with consumer groups.

One stream per queue, read with ``XREADGROUP ... BLOCK`` by one consumer per worker process;
messages are acked after the actor finishes (at-least-once).  Delayed messages wait in a sorted
set per queue until a scheduler moves them onto the stream; failed messages go to a dead-letter
stream per queue.  The wire format is documented in ``docs/wire-format.md``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Any

import dramatiq
import redis
from dramatiq.common import current_millis
from dramatiq.encoder import Encoder
from dramatiq.errors import ConnectionClosed, QueueJoinTimeout
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from . import scripts
from .admin import QueueAdmin
from .consumer import REDELIVER, ProcessHold, StreamConsumer
from .keys import GROUP, QueueKeys, notify_channel
from .maintenance import Maintenance


class RedisStreamsBroker(dramatiq.Broker):
    """A broker whose queues are Redis streams.

    Parameters:
      url(str): A Redis URL; ignored when ``client`` is given.
      client(redis.Redis): A client to use instead of one built from ``url``.
      middleware(list[Middleware]): As for :class:`dramatiq.Broker`.
      namespace(str): Prefix of every key, so several apps can share one Redis.
      encoder(Encoder): How messages are turned into bytes (default: Dramatiq's global encoder).
      block_ms(int): How long one ``XREADGROUP`` blocks when the queue is empty.
      ack_batch(int): Acks are sent in one ``XACK`` once this many are waiting...
      ack_delay_ms(int): ...or once the oldest waiting ack is this old.
      dead_after_ms(int): A consumer whose heartbeat is this old is dead; its un-acked
        messages go back to the stream.
      trim_interval_ms(int): How often a busy consumer trims acked entries from its stream.
      dead_letter_maxlen(int): Approximate cap on each dead-letter stream.
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        client: redis.Redis | None = None,
        middleware: list[Middleware] | None = None,
        namespace: str = "pressline",
        encoder: Encoder | None = None,
        block_ms: int = 5_000,
        ack_batch: int = 64,
        ack_delay_ms: int = 20,
        dead_after_ms: int = 30_000,
        trim_interval_ms: int = 1_000,
        dead_letter_maxlen: int = 100_000,
    ) -> None:
        super().__init__(middleware=middleware)
        self.client: redis.Redis = client or redis.Redis.from_url(url or "redis://127.0.0.1:6379/0")
        self.namespace = namespace
        self.encoder: Encoder = encoder or dramatiq.get_encoder()
        self.block_ms = block_ms
        self.ack_batch = ack_batch
        self.ack_delay_s = ack_delay_ms / 1000
        self.dead_after_ms = dead_after_ms
        self.trim_interval_s = trim_interval_ms / 1000
        self.dead_letter_maxlen = dead_letter_maxlen
        self.queues: set[str] = set()
        self.admin = QueueAdmin(self.client, namespace)
        self.scripts = {
            name: self.client.register_script(getattr(scripts, name))
            for name in ("PROMOTE", "RETURN_TO_STREAM", "DEAD_LETTER", "TRIM", "REQUEUE_DEAD")
        }
        self._consumer_name: str | None = None
        self._holds: dict[str, ProcessHold] = {}
        self._maintenance: Maintenance | None = None
        self._lock = threading.Lock()

    # -- identity -------------------------------------------------------------------------

    @property
    def consumer_name(self) -> str:
        """This process's name in every consumer group (unique per process and broker)."""
        if self._consumer_name is None or not self._consumer_name.startswith(self._name_prefix()):
            self._consumer_name = f"{self._name_prefix()}{uuid.uuid4().hex[:8]}"
        return self._consumer_name

    @staticmethod
    def _name_prefix() -> str:
        return f"{socket.gethostname()}-{os.getpid()}-"

    def hold(self, queue_name: str) -> ProcessHold:
        """What this process holds of the queue, shared by the consumers Dramatiq builds for it."""
        with self._lock:
            return self._holds.setdefault(queue_name, ProcessHold())

    def keys(self, queue_name: str) -> QueueKeys:
        return QueueKeys(self.namespace, queue_name)

    # -- dramatiq.Broker --------------------------------------------------------------------

    def declare_queue(self, queue_name: str) -> None:
        if queue_name in self.queues:
            return
        self.emit_before("declare_queue", queue_name)
        self.queues.add(queue_name)
        self.emit_after("declare_queue", queue_name)

    def ensure_group(self, queue_name: str) -> None:
        """Create the queue's stream and consumer group if missing.

        Called when a consumer starts, not on declaration (which happens at import time).  The
        group reads from the start of the stream, so messages added before it existed are kept.
        """
        try:
            self.client.xgroup_create(self.keys(queue_name).stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """As Dramatiq's (a failing hook is logged and the others still run), except that a message
        whose after-processing failed — its retry, its next stage or its job record could not be
        written because Redis was unreachable — is marked for redelivery: the consumer
        then gives it back to the stream instead of acking it, so its work is done again rather
        than its job left unfinished with no message anywhere."""
        for middleware in reversed(self.middleware):
            try:
                getattr(middleware, f"after_{signal}")(self, *args, **kwargs)
            except Exception as error:
                self.logger.critical(
                    "Unexpected failure in after_%s of %r.", signal, middleware, exc_info=True
                )
                unwritten = isinstance(error, redis.ConnectionError | redis.TimeoutError | ConnectionClosed)
                if unwritten and signal in ("process_message", "skip_message") and args:
                    setattr(args[0], REDELIVER, True)

    def get_declared_queues(self) -> set[str]:
        return self.queues.copy()

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        """Add a message to its queue's stream, or to the delayed set when ``delay`` (ms) is given."""
        if message.queue_name not in self.queues:
            raise dramatiq.errors.QueueNotFound(message.queue_name)
        if "eta" in message.options:
            # Dramatiq's worker holds messages with an eta in memory; ours arrive when due.
            message = message.copy(options={k: v for k, v in message.options.items() if k != "eta"})
        self.emit_before("enqueue", message, delay)
        data = self.encoder.encode(message.asdict())
        keys = self.keys(message.queue_name)
        if delay is None or delay <= 0:
            self.client.xadd(keys.stream, {"m": data})
        else:
            eta = current_millis() + int(delay)
            with self.client.pipeline(transaction=False) as pipe:
                pipe.zadd(keys.delayed, {data: eta})
                pipe.publish(notify_channel(self.namespace), f"{message.queue_name} {eta}")
                pipe.execute()
        self.emit_after("enqueue", message, delay)
        return message

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> StreamConsumer:
        if queue_name not in self.queues:
            raise dramatiq.errors.QueueNotFound(queue_name)
        self.ensure_group(queue_name)
        self._start_maintenance().watch(queue_name)
        return StreamConsumer(self, queue_name, prefetch=prefetch, timeout_ms=timeout)

    def _start_maintenance(self) -> Maintenance:
        with self._lock:
            if self._maintenance is None or not self._maintenance.is_alive():
                self._maintenance = Maintenance(self)
                self._maintenance.start()
            return self._maintenance

    def close(self) -> None:
        with self._lock:
            if self._maintenance is not None:
                self._maintenance.stop()
                self._maintenance = None

    def flush(self, queue_name: str) -> None:
        keys = self.keys(queue_name)
        self.client.delete(keys.stream, keys.delayed)
        self.ensure_group(queue_name)

    def flush_all(self) -> None:
        for queue_name in self.queues:
            self.flush(queue_name)

    def join(self, queue_name: str, *, interval: int = 50, timeout: int | None = None) -> None:
        """Wait until the queue has nothing waiting, delayed or un-acked (for tests)."""
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        while True:
            stats = self.admin.stats(queue_name)
            if stats.backlog == 0 and stats.pending == 0 and stats.delayed == 0:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise QueueJoinTimeout(queue_name)
            time.sleep(interval / 1000)

    # -- used by the consumer and the maintenance thread ---------------------------------

    def promote_due(self, queue_name: str, limit: int = 500) -> tuple[int, int | None]:
        """Move due delayed messages onto the stream; returns (moved, next ETA or None)."""
        keys = self.keys(queue_name)
        moved, next_eta = self.scripts["PROMOTE"](
            keys=[keys.delayed, keys.stream], args=[current_millis(), limit]
        )
        return int(moved), (int(float(next_eta)) if next_eta else None)

    def return_to_stream(self, queue_name: str, entry_ids: list[Any], *, min_idle_ms: int = 0) -> int:
        """Give held entries back to the stream as new entries (redelivery count + 1)."""
        if not entry_ids:
            return 0
        stream = self.keys(queue_name).stream
        moved = 0
        for start in range(0, len(entry_ids), 200):
            chunk = entry_ids[start : start + 200]
            moved += int(
                self.scripts["RETURN_TO_STREAM"](
                    keys=[stream], args=[GROUP, self.consumer_name, min_idle_ms, *chunk]
                )
            )
        return moved

    def dead_letter(self, queue_name: str, entry_id: Any, payload: bytes, error: str, attempts: int) -> None:
        keys = self.keys(queue_name)
        self.scripts["DEAD_LETTER"](
            keys=[keys.stream, keys.dead],
            args=[GROUP, entry_id, payload, error, attempts, current_millis(), self.dead_letter_maxlen],
        )

    def trim(self, queue_name: str) -> int:
        return int(self.scripts["TRIM"](keys=[self.keys(queue_name).stream], args=[GROUP]))

    def requeue_dead(self, queue_name: str, entry_ids: list[str] | None = None) -> int:
        """Operator action: move dead-lettered messages back onto the queue (all when no ids)."""
        keys = self.keys(queue_name)
        return int(self.scripts["REQUEUE_DEAD"](keys=[keys.stream, keys.dead], args=list(entry_ids or [])))

    def purge_dead(self, queue_name: str, entry_ids: list[str] | None = None) -> int:
        """Operator action: drop dead-lettered messages (all when no ids)."""
        dead = self.keys(queue_name).dead
        if entry_ids:
            return int(self.client.xdel(dead, *entry_ids))
        count = int(self.client.xlen(dead))
        self.client.delete(dead)
        return count
