"""Submit a workflow job: create its record and enqueue the stage pipeline.

``python -m workers.submit --tenant demo --title "Hello" --source "Some text."`` submits one and
waits for it to finish, printing the job record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

import dramatiq

from shared.jobs import JobStore, new_job_id


def submit_workflow(
    jobs: JobStore,
    document: dict[str, Any],
    *,
    tenant: str,
    idempotency_key: str | None = None,
    job_id: str | None = None,
) -> str:
    """Create the job record and enqueue ingest -> infer -> post-process -> publish."""
    from workers.actors import STAGES

    job_id = job_id or new_job_id()
    jobs.create(job_id, tenant=tenant, kind="workflow")
    messages = []
    for index, actor in enumerate(STAGES):
        options: dict[str, Any] = {"job_id": job_id, "tenant": tenant}
        if idempotency_key:
            options["idempotency_key"] = f"{tenant}:{idempotency_key}:{actor.actor_name}"
        args = (document,) if index == 0 else ()
        messages.append(actor.message_with_options(args=args, **options))
    dramatiq.pipeline(messages).run()
    return job_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenant", default="demo")
    parser.add_argument("--title", default="Hello from Pressline")
    parser.add_argument("--source", default="Pressline runs short jobs. It retries them. It archives them.")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the job (0: don't)")
    args = parser.parse_args(argv)

    from workers.app import broker, settings

    jobs = JobStore(broker.client, settings.namespace, settings.job_ttl_s)
    job_id = submit_workflow(jobs, {"title": args.title, "source": args.source}, tenant=args.tenant)
    print(f"job {job_id} queued")
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        record = jobs.get(job_id)
        if record and record.state in ("succeeded", "failed"):
            print(json.dumps(asdict(record), indent=2))
            return 0 if record.state == "succeeded" else 1
        time.sleep(0.1)
    if args.wait:
        print("the job did not finish in time (are the workers running? `make run`)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
