"""Run the archiver (the buffer's mover to S3) in the background of every worker process."""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import Middleware

from shared.archive import Archiver
from shared.archive.flusher import ArchiverThread


class ArchiveFlushing(Middleware):
    """Starts an :class:`~shared.archive.flusher.ArchiverThread` when a worker boots and stops it at
    shutdown. Every process may run one: the archiver's lock lets one flush at a time, an interval
    apart. What is still buffered at shutdown stays in Redis for the next flush.

    Parameters:
      archiver(Archiver)
    """

    def __init__(self, archiver: Archiver) -> None:
        self.archiver = archiver
        self._thread: ArchiverThread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._thread = ArchiverThread(self.archiver)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
