"""The floor of ``bench.jobs_bench``: the four stages' work on Dramatiq's stock ``RedisBroker``.

No Pressline broker and no Pressline middleware: Dramatiq's default middleware only (AgeLimit,
TimeLimit, ShutdownNotifications, Callbacks, Pipelines, Retries), four queues named like
Pressline's, the stages chained with ``dramatiq.pipeline``. Each actor is a thin wrapper making
exactly the calls ``workers/actors.py`` makes (``bench/jobs_driver.py`` ``stage_*``), with the
job's id, tenant and site passed as an argument instead of message options. What this costs per
job is the least the job path can cost on Dramatiq and Redis with this stage code.

Workers: ``dramatiq bench.jobs_floor -Q ingest`` (``dramatiq-gevent`` for ``infer``), with
``BENCH_REDIS_URL`` and Pressline's settings in the environment. Producer:
``python -m bench.jobs_floor submit --jobs N`` speaks the same stdin/stdout exchange as
``jobs_driver.py submit``; a job is done when no queue holds an un-acked message (one ``HLEN``
per queue and delay queue per poll, counted so the bench can subtract them). Actors do not retry
(``max_retries=0``): a failed job shows as a missing post in the fake WordPress.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.jobs_driver import (
    counting,
    counting_client,
    document,
    log,
    say,
    stage_infer,
    stage_ingest,
    stage_post_process,
    stage_publish,
)
from shared.config import Settings
from shared.pipeline.runtime import PipelineRuntime
from shared.redis_client import redis_client

NAMESPACE = "dramatiq"  # the stock broker's default key prefix
QUEUES = ("ingest", "infer", "post-process", "publish")

broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"), namespace=NAMESPACE)
dramatiq.set_broker(broker)

_lock = threading.Lock()
_runtime: list[PipelineRuntime] = []


def runtime() -> PipelineRuntime:
    """This process's services, built on first use (after Dramatiq forked the worker)."""
    with _lock:
        if not _runtime:
            settings = Settings.from_env()
            _runtime.append(PipelineRuntime(settings, redis_client(settings)))
        return _runtime[0]


@dramatiq.actor(queue_name="ingest", max_retries=0)
def ingest(meta: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    return stage_ingest(runtime(), meta, doc)


@dramatiq.actor(queue_name="infer", max_retries=0, time_limit=300_000)
def infer(meta: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    return stage_infer(runtime(), meta, doc)


@dramatiq.actor(queue_name="post-process", max_retries=0)
def post_process(meta: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    return stage_post_process(runtime(), meta, doc)


@dramatiq.actor(queue_name="publish", max_retries=0)
def publish(meta: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    return stage_publish(runtime(), meta, doc)


def submit(args: argparse.Namespace) -> int:
    """Send ``--jobs`` pipelines as fast as ``--threads`` threads can, then poll until every queue
    is empty; ``ready`` -> (``go``) -> ``done``, like ``jobs_driver.py submit``."""
    submit_counts = counting(broker.client)
    poll_client, poll_counts = counting_client(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    poll_client.ping()
    lock = threading.Lock()
    next_index = iter(range(args.jobs))
    errors: list[str] = []
    say("ready")
    if sys.stdin.readline().strip() != "go":
        return 1
    submit_base, poll_base = Counter(submit_counts), Counter(poll_counts)  # from "go" on only
    began_wall = time.time()

    def worker() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            meta = {
                "job_id": f"{args.prefix}-{i}",
                "tenant": args.tenant,
                "site": args.site,
                "publish": False,
            }
            try:
                dramatiq.pipeline(
                    [
                        ingest.message(meta, document(i)),
                        infer.message_with_options(args=(meta,)),
                        post_process.message_with_options(args=(meta,)),
                        publish.message_with_options(args=(meta,)),
                    ],
                    broker=broker,
                ).run()
            except Exception as error:
                with lock:
                    errors.append(f"{i}: {type(error).__name__}: {error}")

    with ThreadPoolExecutor(args.threads) as pool:
        for _ in range(args.threads):
            pool.submit(worker)
    submitted_ms = time.time() * 1000
    log(f"    submitted {args.jobs - len(errors)} jobs in {submitted_ms / 1000 - began_wall:.1f}s")
    keys = [f"{NAMESPACE}:{q}{suffix}.msgs" for q in QUEUES for suffix in ("", ".DQ")]
    deadline = time.monotonic() + args.timeout
    timed_out = False
    while True:
        with poll_client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hlen(key)
            if sum(pipe.execute()) == 0:
                break
        if time.monotonic() > deadline:
            timed_out = True
            break
        time.sleep(args.poll_s)
    final_seen_ms = time.time() * 1000
    say(
        "done",
        began_ms=began_wall * 1000,
        submitted_ms=submitted_ms,
        final_seen_ms=final_seen_ms,
        timed_out=timed_out,
        submitted=args.jobs - len(errors),
        submit_errors=errors[:20],
        submit_error_count=len(errors),
        submit_commands=dict(submit_counts - submit_base),
        poll_commands=dict(poll_counts - poll_base),
    )
    sys.stdin.readline()
    say("records", records={})
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("submit")
    p.add_argument("--jobs", type=int, required=True)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--prefix", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--tenant", required=True)
    p.add_argument("--poll-s", type=float, default=0.02)
    p.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    return submit(args)


if __name__ == "__main__":
    sys.exit(main())
