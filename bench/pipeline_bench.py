"""Whole pipeline runs per second: ``POST /v1/jobs`` -> ingest -> infer -> post-process -> publish ->
a post in the local WordPress, with the fake LLM provider.

Run ``make bench-pipeline`` (or ``.venv/bin/python -m bench.pipeline_bench --help``). The bench starts
its own stack on free ports (``infra.pipeline_stack``: Redis, moto, the fake provider, the workers
with ``infer`` under gevent, the functions' local API) and a local WordPress of its own
(``infra.wordpress``, in ``.data/bench-wordpress``, stopped at the end), registers the site, then:

* submits ``--jobs`` jobs through the HTTP API from ``--conc`` concurrent clients, each noting the
  time it sent its request;
* waits until every job's run record is final, then checks that each job's post exists in
  WordPress (looked up by its external reference, the job id);
* end to end = request sent -> the publish stage finished (the post then exists); per stage: the
  time it ran (``run_ms``) and how long its message waited in the queue before it started.

Runs per second = jobs / (last finish - first request). The site's rate limit
(``PRESSLINE_WORDPRESS_RATE_PER_S``, 10/s in production) is off unless ``--wp-rate`` sets one, so
the figure is the pipeline's and WordPress's own. The table goes to stdout, progress to stderr,
everything to ``bench/results/pipeline-<ts>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from shared.auth import TokenStore
from shared.jobs import JobRecord, JobState, JobStore
from shared.redis_client import redis_client

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
STAGES = ("ingest", "infer", "post_process", "publish")
SITE = "bench-blog"
WP_ROOT = ROOT / ".data" / "bench-wordpress"
TENANT = "bench"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def submit_all(api: str, token: str, jobs: int, conc: int) -> dict[str, float]:
    """Send the jobs; returns job id -> epoch ms when its request was sent."""
    sent: dict[str, float] = {}
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {token}"}

    def one(i: int, client: httpx.Client) -> None:
        body = {
            "site": SITE,
            "input": {
                "title": f"Bench article {i}",
                "source": f"Run {i}. The moon pulls the sea. The sea rises twice a day.",
            },
        }
        at = time.time() * 1000
        response = client.post(f"{api}/v1/jobs", json=body, headers=headers, timeout=30)
        response.raise_for_status()
        with lock:
            sent[response.json()["job_id"]] = at

    with httpx.Client(limits=httpx.Limits(max_connections=conc)) as client, ThreadPoolExecutor(conc) as pool:
        list(pool.map(lambda i: one(i, client), range(jobs)))
    return sent


def wait_final(store: JobStore, job_ids: list[str], timeout_s: float) -> dict[str, JobRecord]:
    deadline = time.monotonic() + timeout_s
    final: dict[str, JobRecord] = {}
    while len(final) < len(job_ids):
        for job_id in job_ids:
            if job_id in final:
                continue
            record = store.get(job_id)
            if record and record.state in (JobState.SUCCEEDED, JobState.FAILED):
                final[job_id] = record
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(final)} of {len(job_ids)} jobs finished in {timeout_s:.0f}s")
        time.sleep(0.2)
    return final


def measure(records: dict[str, JobRecord], sent: dict[str, float]) -> dict[str, Any]:
    e2e = [r.finished_at_ms - sent[j] for j, r in records.items() if r.finished_at_ms]
    stages: dict[str, dict[str, list[float]]] = {name: {"run": [], "wait": []} for name in STAGES}
    for record in records.values():
        previous = record.created_at_ms
        for stage in record.stages:
            if stage.name not in stages or stage.started_at_ms is None:
                continue
            stages[stage.name]["run"].append(stage.run_ms)
            stages[stage.name]["wait"].append(max(0, stage.started_at_ms - previous))
            previous = stage.finished_at_ms or previous
    first = min(sent.values())
    last = max(r.finished_at_ms or 0 for r in records.values())
    return {
        "jobs": len(records),
        "succeeded": sum(r.state is JobState.SUCCEEDED for r in records.values()),
        "wall_s": (last - first) / 1000,
        "runs_per_s": len(records) / ((last - first) / 1000),
        "e2e_ms": {"p50": pct(e2e, 0.5), "p95": pct(e2e, 0.95), "mean": statistics.fmean(e2e)},
        "stages": {
            name: {
                "run_p50_ms": pct(v["run"], 0.5),
                "run_p95_ms": pct(v["run"], 0.95),
                "wait_p50_ms": pct(v["wait"], 0.5),
                "wait_p95_ms": pct(v["wait"], 0.95),
            }
            for name, v in stages.items()
        },
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"pipeline: {result['jobs']} jobs ({result['succeeded']} succeeded, {result['posts_found']} posts "
        f"found in WordPress), {result['conc']} concurrent clients",
        f"runs/s end to end: {result['runs_per_s']:.1f}   (wall {result['wall_s']:.1f} s)",
        "",
        f"{'':<14}{'run p50':>10}{'run p95':>10}{'wait p50':>10}{'wait p95':>10}   (ms)",
    ]
    for name, s in result["stages"].items():
        lines.append(
            f"{name:<14}{s['run_p50_ms']:>10.0f}{s['run_p95_ms']:>10.0f}"
            f"{s['wait_p50_ms']:>10.0f}{s['wait_p95_ms']:>10.0f}"
        )
    e2e = result["e2e_ms"]
    lines.append(f"{'end to end':<14}{e2e['p50']:>10.0f}{e2e['p95']:>10.0f}   (p50, p95: request -> post)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--conc", type=int, default=8, help="concurrent API clients")
    parser.add_argument("--warmup", type=int, default=5, help="untimed jobs first")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--wp-rate", type=float, default=0.0, help="the site's rate limit, requests/s (0: none)"
    )
    args = parser.parse_args(argv)

    from infra import wordpress as wordpress_instance
    from infra.pipeline_stack import pipeline_stack, stack_wordpress
    from shared.wordpress import WordPressClient

    scratch = ROOT / ".data" / "bench-pipeline" / uuid.uuid4().hex[:8]
    log(f"starting the stack in {scratch} ...")
    extra_env = {"PRESSLINE_WORDPRESS_RATE_PER_S": str(args.wp_rate)}
    with pipeline_stack(scratch, extra_env=extra_env) as stack:
        client = redis_client(stack.settings)
        wp = stack_wordpress(stack, WP_ROOT, site=SITE, tenant=TENANT, publish=False)
        log(f"WordPress at {wp.base_url}")
        token, _ = TokenStore(client, stack.settings.namespace).mint(TENANT, "editor", name="bench")
        store = JobStore(client, stack.settings.namespace, stack.settings.job_ttl_s)
        if args.warmup:
            log(f"warm-up: {args.warmup} jobs")
            warm = submit_all(stack.api, token, args.warmup, min(args.conc, args.warmup))
            wait_final(store, list(warm), args.timeout)
        log(f"measuring: {args.jobs} jobs from {args.conc} clients")
        sent = submit_all(stack.api, token, args.jobs, args.conc)
        records = wait_final(store, list(sent), args.timeout)
        wordpress = WordPressClient.for_site(SITE, stack.settings, client)
        found = sum(wordpress.find_by_ref(job_id) is not None for job_id in sent)
        wordpress_instance.down(wp.config, say=log)
        result = {
            **measure(records, sent),
            "posts_found": found,
            "conc": args.conc,
            "wp_rate_per_s": args.wp_rate,
            "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "failed": [r.last_error for r in records.values() if r.state is JobState.FAILED][:5],
        }
    print(table(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"pipeline-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    log(f"wrote {out}")
    return 0 if result["succeeded"] == result["jobs"] == found else 1


if __name__ == "__main__":
    sys.exit(main())
