"""A run's outcome as a signed outbound webhook: ``run.completed`` or ``run.failed``, once per job.

Sent from the job-state middleware when the last stage succeeds or a stage fails for good.  Once
per job: the record remembers each event type it enqueued, and the ``webhook-id`` is derived from
the job and the event type, so if a crash comes between the enqueue and that mark, the repeat
carries the same id, its delivery is skipped by the worker's idempotency key (or deduplicated by
the receiver), and nobody sees the outcome twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from dramatiq import Broker

from shared.cost.prices import format_usd
from shared.jobs import JobRecord, JobStore
from shared.outbound import publish_event, stable_msg_id

log = logging.getLogger("pressline.pipeline.events")

RUN_COMPLETED = "run.completed"
RUN_FAILED = "run.failed"


def run_data(record: JobRecord) -> dict[str, Any]:
    """The event's ``data``: who, where, what it cost, how each stage went, and the trace."""
    post = record.post
    return {
        "job_id": record.job_id,
        "tenant": record.tenant,
        "site": record.site,
        "state": record.state.value,
        "post": None
        if post is None
        else {
            "id": post.post_id,
            "link": post.link,
            "status": post.status,
            "publish_refused": post.publish_refused,
        },
        "cost": {"usd": format_usd(record.cost_pico_usd), "pico_usd": record.cost_pico_usd},
        "stages": [
            {"name": s.name, "state": s.state.value, "attempts": s.attempts, "run_ms": s.run_ms}
            for s in record.stages
        ],
        "error": record.last_error if record.state.value == "failed" else None,
        "trace_id": record.trace_id,
    }


def emit_outcome(
    broker: Broker, jobs: JobStore, job_id: str, event_type: str, urls: Sequence[str]
) -> str | None:
    """Enqueue the job's outcome event to ``urls`` unless already done; its ``webhook-id`` or None."""
    if not urls or jobs.event_sent(job_id, event_type):
        return None
    record = jobs.get(job_id)
    if record is None:
        return None
    msg_id = stable_msg_id(job_id, event_type)
    publish_event(broker, event_type, run_data(record), urls=urls, msg_id=msg_id)
    jobs.mark_event_sent(job_id, event_type, msg_id)
    log.info("run outcome event enqueued", extra={"job_id": job_id, "event_type": event_type})
    return msg_id
