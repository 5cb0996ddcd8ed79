"""The workflow's stages by name, and how to enqueue one: producers need no worker code.

The API enqueues by queue and actor name; ``workers/actors.py`` declares actors with exactly
these names (a test checks they match).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.message import Message

from shared.jobs import JobStore, Submission


@dataclass(frozen=True)
class Stage:
    queue_name: str
    actor_name: str


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "ingest"),
    Stage("infer", "infer"),
    Stage("post-process", "post_process"),
    Stage("publish", "publish"),
)

WORKFLOW = "wordpress_post"

#: How long a submitter owns a job's submission before a retry of the same request may take it over
#: (the default of ``PRESSLINE_REQUEST_IDEMPOTENCY_LOCK_S``, which owns the same request's key).
SUBMIT_LEASE_S = 60.0


class SubmissionInProgressError(Exception):
    """Another request is submitting this same job right now: the caller should retry later."""

    def __init__(self, job_id: str, retry_after_s: float) -> None:
        super().__init__(f"job {job_id} is being submitted by another request")
        self.job_id = job_id
        self.retry_after_s = retry_after_s


def submit_workflow(
    broker: dramatiq.Broker,
    jobs: JobStore,
    document: dict[str, Any],
    *,
    job_id: str,
    tenant: str,
    options: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    lease_s: float = SUBMIT_LEASE_S,
) -> str:
    """Create the job record, then enqueue ingest -> infer -> post-process -> publish.

    Idempotent on ``job_id``, and safe against the submitter's death: a job whose enqueue was
    confirmed is not enqueued again; one whose submitter died before confirming it is enqueued
    by the next submission of the same id once ``lease_s`` has passed. While another submission
    holds the lease, raises :class:`SubmissionInProgressError`.

    ``options`` travel on every stage's message (the site, the publish gate, ...).  With an
    ``idempotency_key`` each stage's effect is applied at most once for it.
    """
    stages = [stage.actor_name for stage in STAGES]
    site = (options or {}).get("site")
    claim = jobs.claim_submission(
        job_id, tenant=tenant, kind=WORKFLOW, stages=stages, site=site, lease_s=lease_s
    )
    if claim is Submission.ENQUEUED:
        return job_id  # submitted before (a retried webhook or request): nothing more to do
    if claim is Submission.IN_PROGRESS:
        raise SubmissionInProgressError(job_id, retry_after_s=lease_s)
    messages: list[Message[Any]] = []
    for index, stage in enumerate(STAGES):
        stage_options: dict[str, Any] = {**(options or {}), "job_id": job_id, "tenant": tenant}
        if idempotency_key:
            stage_options["idempotency_key"] = f"{tenant}:{idempotency_key}:{stage.actor_name}"
        broker.declare_queue(stage.queue_name)
        messages.append(
            Message(
                queue_name=stage.queue_name,
                actor_name=stage.actor_name,
                args=(document,) if index == 0 else (),
                kwargs={},
                options=stage_options,
            )
        )
    try:
        dramatiq.pipeline(messages, broker=broker).run()
    except Exception:
        if claim is Submission.CREATED:
            jobs.delete(job_id)  # no message went out: let the caller's retry start afresh
        else:
            jobs.release_submission(job_id)  # the record may be a running job's: keep it
        raise
    jobs.mark_enqueued(job_id)
    return job_id
