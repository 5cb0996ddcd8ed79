"""Submit a workflow job from the command line and wait for it.

``python -m workers.submit --tenant demo --title "Hello" --source "Some text."`` submits one and
waits for it to finish, printing the job record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from shared.jobs import JobStore, new_job_id
from shared.workflow import submit_workflow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenant", default="demo")
    parser.add_argument("--title", default="Hello from Pressline")
    parser.add_argument("--source", default="Pressline runs short jobs. It retries them. It archives them.")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the job (0: don't)")
    args = parser.parse_args(argv)

    from workers.app import broker, settings

    jobs = JobStore(broker.client, settings.namespace, settings.job_ttl_s)
    document = {"title": args.title, "source": args.source}
    job_id = submit_workflow(broker, jobs, document, job_id=new_job_id(), tenant=args.tenant)
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
