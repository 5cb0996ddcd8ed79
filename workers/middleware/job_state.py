"""Keep each job's run record in step with its messages (running, retrying, succeeded, failed), and
archive each run's input and output in the same round trip."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import current_millis
from dramatiq.middleware import Middleware
from opentelemetry import trace

from shared.archive import ArchiveBuffer, ArchiveRecord, archive_ref, record_id
from shared.jobs import Also, JobStore

OPTION = "job_id"
COMPLETED = "run.completed"
FAILED = "run.failed"

log = logging.getLogger("pressline.job_state")

#: Called once a job's outcome is known: (broker, job id, ``run.completed`` | ``run.failed``).
OnFinished = Callable[[dramatiq.Broker, str, str], Any]


class JobState(Middleware):
    """Updates the record of ``options["job_id"]`` as its messages run.

    Add it *before* Dramatiq's Retries: after-hooks run in reverse order, so it then sees
    whether Retries gave up on the message (``message.failed``).  A message that pipes into a
    next stage leaves the job running; the last stage's success finishes it.  Each stage's state,
    attempts and time spent running are recorded too, and the trace id of the job's first run.
    Add it after the Tracing middleware, so the message's span is current in ``before``.

    Each write is one round trip: the start is one HSET; the end is one HSET plus, with an
    ``archive``, the run's archive record (input, output or error) added to the archive buffer,
    which the job record then points at.

    Parameters:
      store(JobStore)
      on_finished(OnFinished): Told when a job succeeded or failed for good (its outcome event);
        its errors are logged, never raised into the worker.
      archive(ArchiveBuffer): Where each run's archive record goes (none: not archived).
    """

    def __init__(
        self, store: JobStore, on_finished: OnFinished | None = None, archive: ArchiveBuffer | None = None
    ) -> None:
        self.store = store
        self.on_finished = on_finished
        self.archive = archive
        self._started: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    @property
    def actor_options(self) -> set[str]:
        return {OPTION}

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        job_id = message.options.get(OPTION)
        if not job_id:
            return
        attempt = message.options.get("retries", 0) + 1
        with self._lock:
            self._started[message.message_id] = (time.monotonic(), attempt)
        context = trace.get_current_span().get_span_context()
        self.store.running(
            job_id,
            stage=message.actor_name,
            attempt=attempt,
            trace_id=format(context.trace_id, "032x") if context.is_valid else None,
        )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        job_id = message.options.get(OPTION)
        if not job_id:
            return
        with self._lock:
            started = self._started.pop(message.message_id, None)
        # Retries has already counted a failure into options["retries"]: the attempt is the start's.
        began, attempt = started or (time.monotonic(), message.options.get("retries", 0) + 1)
        run_ms = int((time.monotonic() - began) * 1000)
        stage = message.actor_name
        error = None if exception is None else f"{type(exception).__name__}: {exception}"
        ref, also = self._archived(message, job_id, attempt, result, error)
        if error is not None:
            if getattr(message, "failed", False):
                self.store.failed(job_id, error=error, stage=stage, run_ms=run_ms, archive=ref, also=also)
                self._finished(broker, job_id, FAILED)
            else:
                self.store.retrying(job_id, error=error, stage=stage, run_ms=run_ms, archive=ref, also=also)
            return
        last = not message.options.get("pipe_target")
        self.store.stage_succeeded(job_id, stage=stage, run_ms=run_ms, last=last, archive=ref, also=also)
        if last:
            self._finished(broker, job_id, COMPLETED)

    def _archived(
        self, message: MessageProxy, job_id: str, attempt: int, result: Any, error: str | None
    ) -> tuple[str | None, Also | None]:
        """The run's archive record, as (the job record's ref to it, the command that buffers it)."""
        if self.archive is None:
            return None, None
        buffer = self.archive
        record = ArchiveRecord(
            id=record_id(message.message_id, attempt),
            job_id=job_id,
            tenant=str(message.options.get("tenant") or ""),
            stage=message.actor_name,
            message_id=message.message_id,
            attempt=attempt,
            at_ms=current_millis(),
            input={"args": list(message.args), "kwargs": dict(message.kwargs)},
            output=result if error is None else None,
            error=error,
        )
        return archive_ref(record), lambda pipe: buffer.add(pipe, record)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        with self._lock:
            self._started.pop(message.message_id, None)

    def _finished(self, broker: dramatiq.Broker, job_id: str, outcome: str) -> None:
        if self.on_finished is None:
            return
        try:
            self.on_finished(broker, job_id, outcome)
        except Exception:
            log.exception("the job's outcome event could not be enqueued", extra={"job_id": job_id})
