"""Run the archiver (the buffer's mover to S3) in the background of every worker process."""

from __future__ import annotations

import sys

import dramatiq
from dramatiq.middleware import Middleware

from shared.archive import Archiver
from shared.archive.flusher import ArchiverThread


class ArchiveFlushing(Middleware):
    """Starts an :class:`~shared.archive.flusher.ArchiverThread` when a worker boots and stops it at
    shutdown. Every worker process runs one (under gevent, a flush's compression runs on a native
    thread of gevent's pool, so the greenlets keep running); the archiver's lock lets one flush at
    a time, an interval apart. What is still buffered at shutdown stays in Redis for the next flush.

    Parameters:
      archiver(Archiver)
    """

    def __init__(self, archiver: Archiver) -> None:
        self.archiver = archiver
        self._thread: ArchiverThread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if _under_gevent():  # compressing a batch on the hub would stall every greenlet meanwhile
            from gevent import get_hub

            plain = self.archiver.compress
            self.archiver.compress = lambda body: get_hub().threadpool.apply(plain, (body,))
        self._thread = ArchiverThread(self.archiver)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None


def _under_gevent() -> bool:
    """Whether this process runs its actors as greenlets (``dramatiq-gevent``, the infer queue)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("threading"))
