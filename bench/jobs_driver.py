"""The half of ``bench.jobs_bench`` that runs with the measured tree's own code.

The bench runs this file as ``python -P bench/jobs_driver.py ROLE ...`` with its working directory
and ``PYTHONPATH`` set to the tree being measured (this checkout, or the baseline's worktree), so
``shared``, ``localstack`` and ``workers`` are that tree's while this file is always the current one.
Roles:

* ``setup``: bootstrap the AWS endpoint (bucket, secrets) and register the bench's site: its
  Application Password in Secrets Manager (``shared.wordpress.credentials.store_credentials``,
  under ``PRESSLINE_WORDPRESS_CREDENTIALS_PATTERN``) and the site in the registry with its base URL.
* ``submit``: submit ``--jobs`` jobs with the tree's ``shared.workflow.submit_workflow`` (as fast
  as ``--threads`` threads can, or on a fixed schedule at ``--rate``), then wait until every job
  record is final. It talks to the bench through stdin/stdout (see :func:`submit`). Its own Redis
  commands are counted on the client (:func:`counting_client`): the polling is subtracted by the
  bench, the submission is reported as the API's share.
* ``calibrate``: the actors' own CPU. The calls ``workers/actors.py`` makes for each stage, made
  here in one thread for ``--docs`` documents against the same stack, timed with
  ``time.thread_time()`` (after ``--warmup`` documents that build the clients).

The stage calls are functions here (``stage_*``) so the floor's actors (``bench/jobs_floor.py``)
make exactly the same ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from shared.config import Settings
from shared.jobs import PostRecord
from shared.pipeline import infer as infer_stage
from shared.pipeline import ingest as ingest_stage
from shared.pipeline import post_process as post_process_stage
from shared.pipeline import publish as publish_stage
from shared.pipeline.runtime import PipelineRuntime

#: Lines of the protocol with the bench start with this (anything else on stdout is ignored).
MARK = "@@ "
FINAL = ("succeeded", "failed")
#: Commands whose name is two words in ``INFO commandstats`` (``client|setinfo``).
_CONTAINERS = frozenset(
    {"client", "config", "xinfo", "object", "script", "command", "cluster", "function", "memory", "acl",
     "latency", "module", "pubsub", "slowlog", "xgroup"}
)  # fmt: skip


def say(event: str, **data: Any) -> None:
    print(MARK + json.dumps({"event": event, **data}), flush=True)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- counting Redis commands on the client -----------------------------------------------------------


def command_name(args: tuple[Any, ...] | list[Any]) -> str:
    """The name ``INFO commandstats`` files a command under (``hmget``, ``client|setinfo``)."""
    first = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
    words = first.lower().split()
    if len(words) == 1 and words[0] in _CONTAINERS and len(args) > 1:
        second = args[1].decode() if isinstance(args[1], bytes) else str(args[1])
        words.append(second.lower())
    return "|".join(words[:2])


def counting(client: redis.Redis) -> Counter[str]:
    """Count, by name, every command ``client`` sends from now on (pipelined ones and the
    connection's own set-up commands included); call before its pool has made a connection."""
    counts: Counter[str] = Counter()
    pool = client.connection_pool
    base: Any = pool.connection_class

    class CountingConnection(base):
        def send_command(self, *args: Any, **kwargs: Any) -> None:
            counts[command_name(args)] += 1
            super().send_command(*args, **kwargs)

        def pack_commands(self, commands: Any) -> Any:
            commands = list(commands)
            for command in commands:
                counts[command_name(command)] += 1
            return super().pack_commands(commands)

    pool.connection_class = CountingConnection
    return counts


def counting_client(url: str) -> tuple[redis.Redis, Counter[str]]:
    client = redis.Redis.from_url(url)
    return client, counting(client)


# -- the stage calls of workers/actors.py ------------------------------------------------------------


def stage_ingest(rt: PipelineRuntime, meta: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    normalised = ingest_stage.normalise(document)
    archive_input = getattr(ingest_stage, "archive_input", None)
    if archive_input is not None:  # a tree before the archive's micro-batches: its actor PUT the input
        uri = archive_input(
            rt.payloads, tenant=meta.get("tenant"), job_id=meta["job_id"], site=meta.get("site"),
            document=normalised,
        )  # fmt: skip
        getattr(rt.jobs, "set_refs")(meta["job_id"], input_ref=uri)  # noqa: B009
    return normalised


def stage_infer(rt: PipelineRuntime, meta: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    settings = rt.settings
    return infer_stage.infer(
        rt.proxy, document, tenant=str(meta.get("tenant") or ""), job_id=meta["job_id"],
        model=settings.pipeline_model, max_tokens=settings.pipeline_max_tokens, memo=rt.infer_memo,
    )  # fmt: skip


def stage_post_process(rt: PipelineRuntime, meta: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    article = post_process_stage.render(
        document.get("draft", ""),
        fallback_title=document.get("title", ""),
        min_words=rt.settings.pipeline_min_words,
    )
    return {**article, "model": document.get("model")}


def stage_publish(rt: PipelineRuntime, meta: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    job_id, site_id = meta["job_id"], meta.get("site")
    if not site_id:
        return {"title": document["title"], "html": document["html"], "status": "archived"}
    site = publish_stage.check_site(rt.sites.get(site_id), site_id=site_id, tenant=str(meta.get("tenant")))
    status = publish_stage.wanted_status(job_may_publish=meta.get("publish"), site=site)
    published = publish_stage.publish_article(
        rt.wordpress(site_id), document, job_id=job_id, status=status, trace_id=None
    )
    rt.jobs.set_post(
        job_id, PostRecord(published.post_id, published.link, published.status, published.publish_refused)
    )
    return {
        "post_id": published.post_id,
        "link": published.link,
        "status": published.status,
        "requested_status": published.requested_status,
        "publish_refused": published.publish_refused,
    }


STAGE_CALLS = (
    ("ingest", stage_ingest),
    ("infer", stage_infer),
    ("post_process", stage_post_process),
    ("publish", stage_publish),
)


def document(index: int) -> dict[str, str]:
    """A job's input: well under 1 KB, like Pressline's jobs."""
    return {
        "title": f"Bench article {index}",
        "source": f"Run {index}. The moon pulls the sea. The sea rises twice a day. Tides follow the moon.",
    }


# -- roles -------------------------------------------------------------------------------------------


def setup(args: argparse.Namespace) -> int:
    from localstack.bootstrap import bootstrap
    from shared.aws import aws_client
    from shared.egress import EgressPolicy
    from shared.redis_client import redis_client
    from shared.sites import Site, SiteRegistry
    from shared.wordpress.credentials import SiteCredentials, store_credentials

    settings = Settings.from_env()
    bootstrap(settings)
    secret_id = settings.wordpress_credentials_pattern.replace("{site}", args.site)
    creds = SiteCredentials(args.base_url, args.login, args.password)
    store_credentials(aws_client("secretsmanager", settings), secret_id, creds)
    registry = SiteRegistry(redis_client(settings), settings.namespace, EgressPolicy.from_settings(settings))
    registry.register(
        Site(site=args.site, tenant=args.tenant, base_url=args.base_url, credentials_secret=secret_id)
    )
    import shared

    say("setup", site=args.site, secret=secret_id, shared=str(shared.__file__))
    return 0


def _wait_for_go() -> None:
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"expected 'go' on stdin, got {line!r}")


def submit(args: argparse.Namespace) -> int:
    """Submit, then poll until every record is final. The exchange with the bench, one JSON line
    each way at a time: ``ready`` -> (``go``) -> ``done`` (timings, own commands) -> (``records``)
    -> ``records`` (each job's state and times), so the bench can read Redis's counters between
    ``done`` and the records' reads."""
    import shared
    from shared.aws import aws_client
    from shared.claim_check import ClaimCheckEncoder
    from shared.jobs import JobStore
    from shared.payloads import PayloadStore
    from shared.redis_client import redis_client
    from shared.streams import RedisStreamsBroker
    from shared.telemetry.message_tracing import Tracing
    from shared.workflow import submit_workflow

    settings = Settings.from_env()
    client = redis_client(settings)
    submit_counts = counting(client)
    payloads = PayloadStore(aws_client("s3", settings), settings.payload_bucket)
    # The API's producer broker (shared/api/services.py): the workers' encoder, tracing middleware.
    broker = RedisStreamsBroker(
        client=client,
        namespace=settings.namespace,
        encoder=ClaimCheckEncoder(payloads, settings.claim_check_bytes),
        middleware=[Tracing(None)],
    )
    jobs = JobStore(client, settings.namespace, settings.job_ttl_s)
    poll_client, poll_counts = counting_client(settings.broker_url)
    poll_jobs = JobStore(poll_client, settings.namespace, settings.job_ttl_s)
    client.ping()
    poll_client.ping()
    ids = [f"{args.prefix}-{i}" for i in range(args.jobs)]
    options = {"site": args.site, "publish": False}
    scheduled: dict[str, float] = {}
    sent: dict[str, tuple[float, float]] = {}
    errors: list[str] = []
    lock = threading.Lock()
    next_index = iter(range(args.jobs))
    say("ready", shared=str(shared.__file__))
    _wait_for_go()
    submit_base, poll_base = Counter(submit_counts), Counter(poll_counts)  # from "go" on only
    began_wall = time.time()
    began = time.perf_counter()

    def worker() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            if args.rate > 0:  # open loop: an absolute schedule, a late send does not delay the rest
                due = began + i / args.rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                scheduled[ids[i]] = (began_wall + i / args.rate) * 1000
            at = time.time() * 1000
            try:
                submit_workflow(broker, jobs, document(i), job_id=ids[i], tenant=args.tenant, options=options)
            except Exception as error:
                with lock:
                    errors.append(f"{ids[i]}: {type(error).__name__}: {error}")
                continue
            sent[ids[i]] = (at, time.time() * 1000)

    with ThreadPoolExecutor(args.threads) as pool:
        for _ in range(args.threads):
            pool.submit(worker)
    submitted_ms = time.time() * 1000
    log(f"    submitted {len(sent)} jobs in {(submitted_ms / 1000 - began_wall):.1f}s")
    owner = getattr(poll_jobs, "owner", None)

    def state(job_id: str) -> str | None:
        if owner is not None:
            found = owner(job_id)
            return None if found is None else str(found[1])
        record = poll_jobs.get(job_id)
        return None if record is None else str(record.state)

    pending = [job_id for job_id in ids if job_id in sent]
    index, deadline = 0, time.monotonic() + args.timeout
    last_note = time.monotonic()
    while index < len(pending):
        if state(pending[index]) in FINAL:
            index += 1
            continue
        if time.monotonic() > deadline:
            break
        if time.monotonic() - last_note > 10:
            log(f"    {index}/{len(pending)} jobs final so far")
            last_note = time.monotonic()
        time.sleep(args.poll_s)
    say(
        "done",
        began_ms=began_wall * 1000,
        submitted_ms=submitted_ms,
        final_seen_ms=time.time() * 1000,
        timed_out=index < len(pending),
        submitted=len(sent),
        submit_errors=errors[:20],
        submit_error_count=len(errors),
        submit_commands=dict(submit_counts - submit_base),
        poll_commands=dict(poll_counts - poll_base),
    )
    if sys.stdin.readline().strip() != "records":
        return 0
    records: dict[str, Any] = {}
    for job_id in pending:
        record = poll_jobs.get(job_id)
        if record is None:
            records[job_id] = {"state": "missing"}
            continue
        records[job_id] = {
            "state": str(record.state),
            "created_at_ms": record.created_at_ms,
            "finished_at_ms": record.finished_at_ms,
            "attempts": record.attempts,
            "last_error": (record.last_error or "")[:300] or None,
            "sent_ms": sent[job_id][0],
            "scheduled_ms": scheduled.get(job_id),
            "post_id": record.post.post_id if record.post else None,
        }
    say("records", records=records)
    return 0


def calibrate(args: argparse.Namespace) -> int:
    """Per stage, this thread's CPU for the calls the stage's actor makes (no broker, no middleware),
    and the Redis commands they cost: sent by this client per stage, and as ``INFO commandstats``
    counts them (scripts' inner commands included; the idle workers' few commands too)."""
    import shared
    from shared.jobs import JobStore
    from shared.redis_client import redis_client
    from shared.workflow import STAGES, WORKFLOW

    settings = Settings.from_env()
    client = redis_client(settings)
    sent = counting(client)
    probe = redis.Redis.from_url(settings.broker_url)
    rt = PipelineRuntime(settings, client)
    jobs = JobStore(client, settings.namespace, settings.job_ttl_s)
    run = uuid.uuid4().hex[:8]
    samples: dict[str, list[float]] = {name: [] for name, _ in STAGE_CALLS}
    wall: dict[str, list[float]] = {name: [] for name, _ in STAGE_CALLS}
    commands: Counter[str] = Counter()

    def job(i: int) -> dict[str, Any]:
        return {"job_id": f"calib-{run}-{i}", "tenant": args.tenant, "site": args.site, "publish": False}

    def create(i: int) -> None:  # the API's part, not the actors': outside the measurement
        jobs.create(
            job(i)["job_id"], tenant=args.tenant, kind=WORKFLOW, stages=[s.actor_name for s in STAGES],
            site=args.site,
        )  # fmt: skip

    def one(i: int, measure: bool) -> None:
        value: dict[str, Any] = document(i)
        for name, call in STAGE_CALLS:
            before = sum(sent.values())
            cpu, clock = time.thread_time(), time.perf_counter()
            value = call(rt, job(i), value)
            if measure:
                samples[name].append((time.thread_time() - cpu) * 1000)
                wall[name].append((time.perf_counter() - clock) * 1000)
                commands[name] += sum(sent.values()) - before

    process_began = time.process_time()
    for i in range(args.warmup):  # builds the clients, pools and connections
        create(i)
        one(i, measure=False)
    measured = range(args.warmup, args.warmup + args.docs)
    for i in measured:
        create(i)
    stats_before = probe.info("commandstats")
    measured_began = time.process_time()
    for i in measured:
        one(i, measure=True)
    process_cpu_s = time.process_time() - measured_began
    stats_after = probe.info("commandstats")
    redis_calls = sum(
        int(v["calls"]) - int(stats_before.get(k, {}).get("calls", 0))
        for k, v in stats_after.items()
        if k != "cmdstat_info"
    )
    say(
        "calibration",
        docs=args.docs,
        warmup=args.warmup,
        shared=str(shared.__file__),
        cpu_ms={name: statistics.fmean(v) for name, v in samples.items()},
        cpu_ms_median={name: statistics.median(v) for name, v in samples.items()},
        wall_ms={name: statistics.fmean(v) for name, v in wall.items()},
        commands_sent={name: n / args.docs for name, n in commands.items()},
        redis_calls_per_doc=redis_calls / args.docs,
        # every thread of this process over the measured documents (client threads, if any, included)
        process_cpu_ms_per_doc=process_cpu_s * 1000 / max(1, args.docs),
        warmup_cpu_s=measured_began - process_began,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="role", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--site", required=True)
    s.add_argument("--tenant", required=True)
    s.add_argument("--base-url", required=True)
    s.add_argument("--login", required=True)
    s.add_argument("--password", required=True)
    p = sub.add_parser("submit")
    p.add_argument("--jobs", type=int, required=True)
    p.add_argument(
        "--rate", type=float, default=0.0, help="jobs/s on a fixed schedule (0: as fast as possible)"
    )
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--prefix", required=True, help="job ids are <prefix>-<n>")
    p.add_argument("--site", required=True)
    p.add_argument("--tenant", required=True)
    p.add_argument("--poll-s", type=float, default=0.02)
    p.add_argument("--timeout", type=float, default=900.0)
    c = sub.add_parser("calibrate")
    c.add_argument("--docs", type=int, default=200)
    c.add_argument("--warmup", type=int, default=20)
    c.add_argument("--site", required=True)
    c.add_argument("--tenant", required=True)
    args = parser.parse_args(argv)
    return {"setup": setup, "submit": submit, "calibrate": calibrate}[args.role](args)


if __name__ == "__main__":
    sys.exit(main())
