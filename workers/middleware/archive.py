"""Archive each job message's input and output to S3 under the tenant's prefix."""

from __future__ import annotations

import json
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import current_millis
from dramatiq.middleware import Middleware

from shared.jobs import JobStore
from shared.payloads import PayloadStore


class Archive(Middleware):
    """Writes ``<tenant>/jobs/<job_id>/<actor>-<message_id>.json`` after each run of a job's
    message (success or failure), and points the job record at it.

    Parameters:
      payloads(PayloadStore)
      jobs(JobStore)
    """

    def __init__(self, payloads: PayloadStore, jobs: JobStore) -> None:
        self.payloads = payloads
        self.jobs = jobs

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        job_id = message.options.get("job_id")
        if not job_id:
            return
        tenant = PayloadStore.tenant_prefix(message.options.get("tenant"))
        record = {
            "job_id": job_id,
            "tenant": tenant,
            "actor": message.actor_name,
            "message_id": message.message_id,
            "input": {"args": list(message.args), "kwargs": message.kwargs},
            "output": result,
            "error": None if exception is None else f"{type(exception).__name__}: {exception}",
            "archived_at_ms": current_millis(),
        }
        key = f"{tenant}/jobs/{job_id}/{message.actor_name}-{message.message_id}.json"
        uri = self.payloads.put(key, json.dumps(record, default=str).encode())
        if exception is None:
            self.jobs.set_refs(job_id, output_ref=uri)
