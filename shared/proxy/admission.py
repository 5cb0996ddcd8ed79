"""First come, first served: a burst of requests is admitted a few at a time, in order.

Admitting a proxy request — token, rate limit, budget hold, routing, breaker — is CPU work between
short Redis round trips, and one process runs Python one thread at a time (the GIL). When 25
requests are admitted together they interleave, every Redis reply waits for the GIL behind the
others, and all of them reach their provider at about 25 x the cost of one. Let through a few at a
time, in arrival order, the k-th reaches its provider after about k x that cost: the median
request of a burst starts its stream about twice as soon. Two at a time keeps one request's Redis
wait overlapped with the other's CPU, so throughput stays what the CPU allows. A request leaves the
gate when its upstream call starts: the gate is never held while a provider thinks.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["Admission"]


class Admission:
    """At most ``width`` requests of this process in admission at once (0: no limit).

    Parameters:
      width(int)
    """

    def __init__(self, width: int = 2) -> None:
        self._slots = threading.BoundedSemaphore(width) if width > 0 else None
        self._held = threading.local()

    @contextlib.contextmanager
    def admitting(self) -> Iterator[None]:
        """Wait for a slot; leave it at the end of the block unless :meth:`done` came first."""
        if self._slots is None:
            yield
            return
        self._slots.acquire()
        self._held.slot = True
        try:
            yield
        finally:
            self.done()

    def done(self) -> None:
        """Leave the gate now (the request's upstream call starts); idempotent."""
        if self._slots is not None and getattr(self._held, "slot", False):
            self._held.slot = False
            self._slots.release()
