"""Ship log lines to Loki without ever making the code that logs wait for it.

``emit`` only formats the record and puts the line in a bounded in-memory queue; a daemon thread
takes lines off in batches and POSTs them to Loki's push API (``/loki/api/v1/push``).  When Loki
is slow or down the queue fills, and then new lines are dropped and counted
(``pressline_log_lines_dropped_total``) rather than blocking a request, a worker thread, or
memory.  Labels are few and bounded (``service``, ``level``); the trace id, job id and the rest
stay in the JSON line, where LogQL's ``| json`` and the Grafana derived field find them.

Why not a library: ``python-logging-loki`` (the usual one) is unmaintained since 2019 and its
default handler does a blocking HTTP request per record on the caller's thread.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx
from prometheus_client import REGISTRY, CollectorRegistry, Counter

__all__ = ["PUSH_PATH", "LokiHandler"]

log = logging.getLogger("pressline.telemetry.loki")

PUSH_PATH = "/loki/api/v1/push"
#: Most lines in one push (Loki's default limit on one request is 4 MiB; lines are short).
BATCH_LINES = 1000
#: A failed push is retried this many times (then its lines are dropped and counted).
PUSH_ATTEMPTS = 3

_metrics_lock = threading.Lock()
_metrics: dict[int, tuple[Counter, Counter]] = {}


def _counters(registry: CollectorRegistry) -> tuple[Counter, Counter]:
    """``(shipped, dropped)`` in ``registry``, created once per registry."""
    with _metrics_lock:
        found = _metrics.get(id(registry))
        if found is None:
            shipped = Counter("pressline_log_lines_shipped", "Log lines pushed to Loki.", registry=registry)
            dropped = Counter(
                "pressline_log_lines_dropped",
                "Log lines not shipped to Loki, by reason (queue_full, push_failed).",
                ("reason",),
                registry=registry,
            )
            found = _metrics[id(registry)] = (shipped, dropped)
        return found


class LokiHandler(logging.Handler):
    """A logging handler pushing formatted lines to Loki from a background thread.

    Parameters:
      url(str): Loki's base URL, e.g. ``http://127.0.0.1:3100``.
      service(str): The ``service`` label of every stream.
      max_queue(int): Lines waiting at most; past that, new lines are dropped and counted.
      flush_interval_s(float): How long a line may wait for the next push.
      timeout_s(float): One push's HTTP timeout.
      registry(CollectorRegistry): Where the shipped/dropped counters live (default: global).
    """

    def __init__(
        self,
        url: str,
        service: str,
        *,
        max_queue: int = 10_000,
        flush_interval_s: float = 1.0,
        timeout_s: float = 5.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__()
        self.push_url = url.rstrip("/") + PUSH_PATH
        self.service = service
        self.flush_interval_s = flush_interval_s
        self.timeout_s = timeout_s
        self.shipped, self.dropped = _counters(registry or REGISTRY)
        self._queue: queue.Queue[tuple[int, str, str]] = queue.Queue(maxsize=max_queue)
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._start_lock = threading.Lock()
        self._closed = False
        atexit.register(self.close)

    # -- the caller's side: never blocks --------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        if threading.current_thread() is self._thread:
            return  # the sender's own HTTP client logging its pushes would feed itself forever
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if self._closed:
            return
        self._ensure_thread()
        try:
            self._queue.put_nowait((time.time_ns(), record.levelname.lower(), line))
        except queue.Full:
            self.dropped.labels("queue_full").inc()
            return
        if self._queue.qsize() >= BATCH_LINES:
            self._wake.set()

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Push what is queued now and wait for it (at exit, in tests); True when all went out."""
        if self._thread is None or not self._thread.is_alive():
            return self._queue.empty()
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        with self._idle:
            while not (self._queue.empty() and self._in_flight == 0):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.05))
                self._wake.set()
        return True

    def close(self) -> None:
        if not self._closed:
            self.drain(timeout_s=self.timeout_s)
            self._closed = True
        super().close()

    def _ensure_thread(self) -> None:
        """Start the sender in this process (again after a fork: threads do not survive one)."""
        if self._pid == os.getpid() and self._thread is not None:
            return
        with self._start_lock:
            if self._pid == os.getpid() and self._thread is not None:
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="pressline-loki", daemon=True)
            self._thread.start()

    # -- the sender thread ----------------------------------------------------------------------

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while True:
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
                while True:
                    batch = self._take()
                    if not batch:
                        break
                    self._push(client, batch)
                    with self._idle:
                        self._in_flight = 0
                        self._idle.notify_all()

    def _take(self) -> list[tuple[int, str, str]]:
        batch: list[tuple[int, str, str]] = []
        with self._idle:
            while len(batch) < BATCH_LINES:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._in_flight = len(batch)
            if not batch:
                self._idle.notify_all()
        return batch

    def _push(self, client: httpx.Client, batch: Sequence[tuple[int, str, str]]) -> None:
        body = json.dumps({"streams": self._streams(batch)}).encode()
        for attempt in range(PUSH_ATTEMPTS):
            try:
                response = client.post(
                    self.push_url, content=body, headers={"Content-Type": "application/json"}
                )
            except httpx.HTTPError:
                pass
            else:
                if response.status_code < 300:
                    self.shipped.inc(len(batch))
                    return
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    break  # Loki refused the lines themselves: another try would be refused too
            time.sleep(min(2.0, 0.2 * 2**attempt))
        self.dropped.labels("push_failed").inc(len(batch))

    def _streams(self, batch: Sequence[tuple[int, str, str]]) -> list[dict[str, Any]]:
        """One stream per level, lines in time order (Loki refuses out-of-order lines in a stream)."""
        by_level: dict[str, list[list[str]]] = {}
        for ts_ns, level, line in sorted(batch, key=lambda item: item[0]):
            by_level.setdefault(level, []).append([str(ts_ns), line])
        return [
            {"stream": {"service": self.service, "level": level}, "values": values}
            for level, values in by_level.items()
        ]
