"""One worker process's consumer of one queue stream.

A background fetcher does ``XREADGROUP ... COUNT n BLOCK`` on a connection of its own and hands
entries to Dramatiq through a local queue, so ``__next__`` never waits on Redis and an idle
consumer costs one blocking read per ``block_ms``.  The fetcher reads no more than the cap on
un-acked messages allows, so several processes share a backlog.  Dramatiq's worker threads ack
concurrently; acks are gathered and sent as one ``XACK`` per batch.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, cast

import redis
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

from .keys import GROUP

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .broker import RedisStreamsBroker

logger = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes]]

#: How many of its own pending entries a consumer reads per command when it resyncs.
RESYNC_BATCH = 500

#: Set on a message whose after-processing failed (see RedisStreamsBroker.emit_after).
REDELIVER = "pressline_redeliver"


def must_redeliver(message: MessageProxy) -> bool:
    """Was part of this message's after-processing (its retry, its next stage, its job record)
    not written? Then it is given back to the stream rather than acked."""
    return bool(getattr(message, REDELIVER, False))


class ProcessHold:
    """What one process holds of one queue, across the consumers Dramatiq builds for it.

    After a connection error Dramatiq replaces the queue's consumer, while its worker threads go on
    with the messages the old one handed out, and ack them through either.  Both share this: the
    acks wait in one buffer, whichever consumer took them, and the new consumer does not hand out
    again what is still running here.

    Attributes:
      in_flight(set[bytes]): Entries handed to Dramatiq and not yet acked, nacked or requeued.
      acks(list[bytes]): Acks not yet sent, oldest first (sent as one XACK per batch).
      oldest_ack_at(float): When the oldest of them was taken (monotonic seconds).
      lock(threading.Lock): Guards ``acks`` and ``oldest_ack_at``.
    """

    def __init__(self) -> None:
        self.in_flight: set[bytes] = set()
        self.acks: list[bytes] = []
        self.oldest_ack_at = 0.0
        self.lock = threading.Lock()


class StreamMessageProxy(MessageProxy):
    """A message together with the stream entry it came from."""

    def __init__(self, message: Message, entry_id: bytes, redeliveries: int) -> None:
        super().__init__(message)
        self.entry_id = entry_id
        self.redeliveries = redeliveries


class StreamConsumer(Consumer):
    """Consumes one queue for one worker process.

    Parameters:
      broker(RedisStreamsBroker)
      queue_name(str)
      prefetch(int): The cap on messages fetched and not yet acked.
      timeout_ms(int): How long ``__next__`` waits before returning None.
    """

    def __init__(
        self, broker: RedisStreamsBroker, queue_name: str, *, prefetch: int, timeout_ms: int
    ) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.keys = broker.keys(queue_name)
        self.cap = max(1, prefetch)
        # Refill in batches: the fetcher waits until a quarter of the cap is free, so a busy
        # process wakes it (and takes a GIL hand-off) once per batch rather than per ack.
        self.refill_at = max(1, self.cap // 4)
        self.timeout_s = timeout_ms / 1000
        # Fetched entries for __next__; None is a wake-up: "acks are waiting, flush them soon".
        self._ready: queue.SimpleQueue[Entry | None] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._held: set[bytes] = set()  # fetched and not yet acked, nacked or returned
        self._process = broker.hold(queue_name)
        # Read this process's own pending entries before any new one: see _adopt_pending.
        self._resync = True
        self._last_trim = time.monotonic()
        self._running = True
        self._fetch_client = redis.Redis(connection_pool=redis.ConnectionPool(**self._pool_kwargs()))
        self._fetch_client_id: int | None = None
        self._fetcher = threading.Thread(target=self._fetch_loop, name=f"fetch({queue_name})", daemon=True)
        self._fetcher.start()

    def _pool_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.broker.client.connection_pool.connection_kwargs)
        kwargs["connection_class"] = self.broker.client.connection_pool.connection_class
        kwargs["max_connections"] = 1
        # A blocking read must outlast its own BLOCK time (redis-py 8 defaults to a 5 s timeout).
        kwargs["socket_timeout"] = self.broker.block_ms / 1000 + 5.0
        kwargs.pop("orig_socket_timeout", None)
        return kwargs

    # -- fetching ----------------------------------------------------------------------------

    def _fetch_loop(self) -> None:
        backoff = 0.05
        while self._running:
            with self._cond:
                while self._running and self.cap - len(self._held) < self.refill_at:
                    self._cond.wait(0.5)
                if not self._running:
                    return
                want = self.cap - len(self._held)
            try:
                if self._fetch_client_id is None:
                    self._fetch_client_id = int(self._fetch_client.client_id())
                if self._resync:
                    self._adopt_pending()
                    self._resync = False
                reply = self._fetch_client.xreadgroup(
                    GROUP,
                    self.broker.consumer_name,
                    {self.keys.stream: ">"},
                    count=want,
                    block=self.broker.block_ms,
                )
                backoff = 0.05
            except redis.ResponseError as e:
                if "NOGROUP" in str(e):
                    self.broker.ensure_group(self.queue_name)
                    continue
                raise
            except (redis.ConnectionError, redis.TimeoutError) as e:
                self._fetch_client_id = None
                self._resync = True  # the lost reply may have moved entries into our pending list
                if not self._running:
                    return
                logger.warning(
                    "Fetching from %s failed (%s); retrying in %.2fs.", self.queue_name, e, backoff
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            entries = cast(list[Entry], reply[0][1]) if reply else []  # type: ignore[index]
            if not entries:
                continue
            with self._cond:
                self._held.update(entry_id for entry_id, _ in entries)
            for entry in entries:
                self._ready.put(entry)

    def _adopt_pending(self) -> None:
        """Hand out again the entries Redis holds for this process that nobody here works on.

        They are entries a replaced consumer had fetched but not handed out, and entries of a read
        whose reply a dying connection lost.  Left alone, they would stay pending for as long as
        this process's heartbeat lives, since recovery only reclaims the entries of dead consumers.
        """
        start: bytes = b"0"
        while True:
            reply = self._fetch_client.xreadgroup(
                GROUP, self.broker.consumer_name, {self.keys.stream: start}, count=RESYNC_BATCH
            )
            entries = cast(list[tuple[bytes, dict[bytes, bytes] | None]], reply[0][1]) if reply else []  # type: ignore[index]
            adopted: list[Entry] = []
            gone: list[bytes] = []
            with self._cond:
                done = set(self._process.acks)
                for entry_id, fields in entries:
                    if entry_id in self._held or entry_id in self._process.in_flight or entry_id in done:
                        continue
                    if fields:
                        self._held.add(entry_id)
                        adopted.append((entry_id, fields))
                    else:
                        gone.append(entry_id)  # trimmed or deleted: nothing left to run
            if gone:
                self._fetch_client.xack(self.keys.stream, GROUP, *gone)
            if adopted:
                logger.info("Handing out %d pending entries of %s again.", len(adopted), self.queue_name)
            for entry in adopted:
                self._ready.put(entry)
            if len(entries) < RESYNC_BATCH:
                return
            start = entries[-1][0]

    # -- dramatiq.Consumer ---------------------------------------------------------------------

    def __next__(self) -> MessageProxy | None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            self._flush_acks(force=False)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            wait = min(remaining, self.broker.ack_delay_s) if self._process.acks else remaining
            try:
                entry = self._ready.get(timeout=wait)
            except queue.Empty:
                continue
            if entry is None:
                continue
            entry_id, fields = entry
            proxy = self._decode(entry_id, fields)
            if proxy is not None:
                self._process.in_flight.add(entry_id)
                return proxy

    def _decode(self, entry_id: bytes, fields: dict[bytes, bytes]) -> StreamMessageProxy | None:
        payload = fields.get(b"m", b"")
        try:
            message: Message[Any] = Message(**self.broker.encoder.decode(payload))
        except Exception as e:  # a foreign producer wrote something that is not a message
            logger.error("Undecodable entry %r on %s; dead-lettering it.", entry_id, self.queue_name)
            self._release(entry_id)
            self.broker.dead_letter(self.queue_name, entry_id, payload, f"undecodable message: {e}", 0)
            return None
        return StreamMessageProxy(message, entry_id, int(fields.get(b"r", 0)))

    def ack(self, message: MessageProxy) -> None:
        if must_redeliver(message):
            # Its work is not all recorded: run it again rather than lose what it should have led to.
            # Without Redis this raises ConnectionClosed, and Dramatiq tries again until it is back.
            self.requeue([message])
            return
        entry_id = _entry_id(message)
        batch: list[bytes] | None = None
        self._process.in_flight.discard(entry_id)
        with self._cond:
            # Not held here when an earlier consumer of this process handed it out: ack it all the
            # same (XACK of an entry no longer pending is a no-op).
            self._held.discard(entry_id)
            if self.cap - len(self._held) == self.refill_at:
                self._cond.notify()
        acks = self._process
        with acks.lock:
            if not acks.acks:
                acks.oldest_ack_at = time.monotonic()
                self._ready.put(None)  # an idle __next__ then flushes within ack_delay_ms
            acks.acks.append(entry_id)
            if len(acks.acks) >= self.broker.ack_batch:
                batch, acks.acks = acks.acks, []
        if batch:
            self._send_acks(batch)

    def nack(self, message: MessageProxy) -> None:
        entry_id = _entry_id(message)
        exception = getattr(message, "_exception", None)
        error = f"{type(exception).__name__}: {exception}"[:2000] if exception is not None else "failed"
        attempts = self._attempts(message, exception)
        payload = self.broker.encoder.encode(message._message.asdict())
        try:
            self.broker.dead_letter(self.queue_name, entry_id, payload, error, attempts)
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None
        self._process.in_flight.discard(entry_id)
        self._release(entry_id)

    def _attempts(self, message: MessageProxy, exception: BaseException | None) -> int:
        """How many times the message ran.  Dramatiq's Retries counts failed runs in
        ``options["retries"]``, except a failure it does not retry (``throws``), which it leaves out."""
        retries = int(message.options.get("retries", 0))
        try:
            actor = self.broker.get_actor(message.actor_name)
        except Exception:
            return max(1, retries)
        throws = message.options.get("throws") or actor.options.get("throws")
        if exception is not None and throws and isinstance(exception, throws):
            return retries + 1
        return max(1, retries)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        entry_ids = [_entry_id(m) for m in messages]
        with self._cond:
            entry_ids = [e for e in entry_ids if e in self._held or e in self._process.in_flight]
        if not entry_ids:
            return
        try:
            self.broker.return_to_stream(self.queue_name, entry_ids)
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None
        for entry_id in entry_ids:
            self._process.in_flight.discard(entry_id)
            self._release(entry_id)

    def close(self) -> None:
        """Stop fetching, send waiting acks and return everything still held to the stream."""
        self._running = False
        with self._cond:
            self._cond.notify_all()
        if self._fetch_client_id is not None:
            with contextlib.suppress(redis.RedisError):
                self.broker.client.client_unblock(self._fetch_client_id)
        self._fetcher.join(timeout=5)
        try:
            self._flush_acks(force=True)
            with self._cond:
                leftovers = list(self._held)
            if leftovers:
                logger.info(
                    "Returning %d un-acked messages of %s to the stream.", len(leftovers), self.queue_name
                )
                self.broker.return_to_stream(self.queue_name, leftovers)
                with self._cond:
                    self._held.difference_update(leftovers)
        except (ConnectionClosed, redis.ConnectionError, redis.TimeoutError):
            # Redis is unreachable: what this consumer held stays pending under this process's name,
            # and the next consumer of the queue adopts it (_adopt_pending) and sends the acks.
            logger.warning(
                "Closing the consumer of %s without Redis; the next one takes over.", self.queue_name
            )
        finally:
            self._fetch_client.close()

    # -- acks ---------------------------------------------------------------------------------

    def _release(self, entry_id: bytes) -> None:
        with self._cond:
            self._held.discard(entry_id)
            self._cond.notify()

    def _flush_acks(self, *, force: bool) -> None:
        acks = self._process
        with acks.lock:
            if not acks.acks:
                return
            if not force and time.monotonic() - acks.oldest_ack_at < self.broker.ack_delay_s:
                return
            batch, acks.acks = acks.acks, []
        self._send_acks(batch)

    def _send_acks(self, batch: list[bytes]) -> None:
        try:
            self.broker.client.xack(self.keys.stream, GROUP, *batch)
        except redis.ConnectionError as e:
            with self._process.lock:
                self._process.acks[:0] = batch
            raise ConnectionClosed(e) from None
        now = time.monotonic()
        if now - self._last_trim >= self.broker.trim_interval_s:
            self._last_trim = now
            self.broker.trim(self.queue_name)


def _entry_id(message: MessageProxy) -> bytes:
    entry_id = getattr(message, "entry_id", None)
    if entry_id is None:
        raise TypeError("message did not come from a RedisStreamsBroker consumer")
    return cast(bytes, entry_id)
