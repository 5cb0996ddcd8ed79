"""The workflow's stages by name, and how to enqueue one: producers need no worker code.

The API enqueues by queue and actor name; ``workers/actors.py`` declares actors with exactly
these names (a test checks they match).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.message import Message

from shared.jobs import JobStore


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


def submit_workflow(
    broker: dramatiq.Broker,
    jobs: JobStore,
    document: dict[str, Any],
    *,
    job_id: str,
    tenant: str,
    options: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> str:
    """Create the job record, then enqueue ingest -> infer -> post-process -> publish.

    Idempotent on ``job_id``: a job that exists already is not enqueued again.

    ``options`` travel on every stage's message (the site, the publish gate, ...).  With an
    ``idempotency_key`` each stage's effect is applied at most once for it.
    """
    stages = [stage.actor_name for stage in STAGES]
    site = (options or {}).get("site")
    if not jobs.create(job_id, tenant=tenant, kind=WORKFLOW, stages=stages, site=site):
        return job_id  # submitted before (a retried webhook or request): nothing more to do
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
        jobs.delete(job_id)  # no message went out: let the caller's retry start afresh
        raise
    return job_id
