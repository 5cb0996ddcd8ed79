"""Keep each job's record in step with its messages: running, retrying, succeeded, failed."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware

from shared.jobs import JobStore

OPTION = "job_id"


class JobState(Middleware):
    """Updates the record of ``options["job_id"]`` as its messages run.

    Add it *before* Dramatiq's Retries: after-hooks run in reverse order, so it then sees
    whether Retries gave up on the message (``message.failed``).  A message that pipes into a
    next stage leaves the job running; the last stage's success finishes it.

    Parameters:
      store(JobStore)
    """

    def __init__(self, store: JobStore) -> None:
        self.store = store

    @property
    def actor_options(self) -> set[str]:
        return {OPTION}

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        job_id = message.options.get(OPTION)
        if job_id:
            self.store.running(
                job_id, stage=message.actor_name, attempt=message.options.get("retries", 0) + 1
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
        if exception is not None:
            error = f"{type(exception).__name__}: {exception}"
            if getattr(message, "failed", False):
                self.store.failed(job_id, error=error)
            else:
                self.store.retrying(job_id, error=error)
        elif not message.options.get("pipe_target"):
            self.store.succeeded(job_id)
