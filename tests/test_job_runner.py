"""The job runner over real processes: dramatiq CLI workers, a real Redis and the moto server."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.common import current_millis
from dramatiq.message import Message

from localstack.endpoint import Endpoint
from shared.archive import Archiver, ArchiveReader
from shared.aws import aws_client
from shared.config import Settings
from shared.jobs import JobState, JobStore
from shared.payloads import PayloadStore
from shared.streams import RedisStreamsBroker
from tests.support.workers import ROOT, start_workers, stop_workers, worker_children, worker_env
from workers.app import build_broker

QUEUE = "runner-test"


@pytest.fixture
def settings(redis_url: str, aws_endpoint: Endpoint) -> Settings:
    settings = Settings(broker_url=redis_url, aws_endpoint_url=aws_endpoint.url, consumer_dead_after_ms=2000)
    s3 = aws_client("s3", settings)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=settings.payload_bucket)
    return settings


@pytest.fixture
def producer(settings: Settings) -> Iterator[RedisStreamsBroker]:
    """A bare broker in the test process that only enqueues (the workers are other processes)."""
    broker = RedisStreamsBroker(url=settings.broker_url, namespace=settings.namespace)
    broker.declare_queue(QUEUE)
    yield broker
    broker.close()


def send(broker: RedisStreamsBroker, actor_name: str, *args: Any, **options: Any) -> None:
    broker.enqueue(Message(queue_name=QUEUE, actor_name=actor_name, args=args, kwargs={}, options=options))


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def ints(client: redis.Redis, key: str) -> list[int]:
    return [int(x) for x in client.lrange(key, 0, -1)]


def test_kill_9_of_a_worker_mid_run_loses_nothing(
    producer: RedisStreamsBroker, settings: Settings, tmp_path: Path
) -> None:
    client = producer.client
    env = {"PRESSLINE_CONSUMER_DEAD_AFTER_MS": "2000"}
    victim = start_workers(settings.broker_url, threads=8, log=tmp_path / "victim.log", **env)
    survivor = start_workers(settings.broker_url, threads=8, log=tmp_path / "survivor.log", **env)
    try:
        (victim_pid,) = worker_children(victim, 1)
        worker_children(survivor, 1)
        for i in range(2000):
            options = {"idempotency_key": f"kill9-{i}"} if i % 2 == 0 else {}
            send(producer, "record", i, 15, **options)
        wait_for(lambda: client.llen("effects:pid") >= 300, 60, "the run to get going")
        os.kill(victim_pid, signal.SIGKILL)
        wait_for(
            lambda: client.llen("effects:keyed") >= 1000 and len(set(ints(client, "effects:plain"))) >= 1000,
            90,
            "every message to complete",
        )
        keyed, plain = ints(client, "effects:keyed"), ints(client, "effects:plain")
        assert sorted(keyed) == list(range(0, 2000, 2))  # effect exactly once per key
        assert set(plain) == set(range(1, 2000, 2))  # at-least-once: nothing lost
        wait_for(lambda: producer.admin.stats(QUEUE).pending == 0, 10, "nothing left pending")
        stats = producer.admin.stats(QUEUE)
        assert (stats.backlog, stats.dead) == (0, 0)
        assert victim.wait(10) != 0  # dramatiq's main process stops when its worker dies
        assert survivor.poll() is None
        survivor_log = tmp_path / "survivor.log"  # written by another process, maybe not yet flushed
        wait_for(lambda: "Recovered" in survivor_log.read_text(), 30, "the survivor to log the recovery")
    finally:
        stop_workers(survivor)
        stop_workers(victim)


def test_two_worker_processes_split_a_backlog(producer: RedisStreamsBroker, settings: Settings) -> None:
    client = producer.client
    for i in range(600):
        send(producer, "record", i, 10)
    main = start_workers(settings.broker_url, processes=2, threads=4)
    try:
        pids = worker_children(main, 2)
        wait_for(lambda: client.llen("effects:plain") >= 600, 60, "the backlog to drain")
        shares = {pid: ints(client, "effects:pid").count(pid) for pid in pids}
        assert sum(shares.values()) == 600
        assert min(shares.values()) >= 150, shares  # both took a real share of the backlog
    finally:
        assert stop_workers(main) == 0


def test_sigterm_drains_in_flight_work_and_returns_the_rest(
    producer: RedisStreamsBroker, settings: Settings
) -> None:
    client = producer.client
    for i in range(40):
        send(producer, "started_then_record", i, 500)
    main = start_workers(settings.broker_url, threads=4, shutdown_timeout_ms=10_000)
    worker_children(main, 1)
    wait_for(lambda: client.llen("effects:started") >= 4, 30, "work to start")
    assert stop_workers(main, timeout_s=20) == 0  # a graceful exit within the drain timeout
    started, finished = ints(client, "effects:started"), ints(client, "effects:finished")
    assert sorted(started) == sorted(finished)  # everything in flight finished
    stats = producer.admin.stats(QUEUE)
    assert stats.pending == 0  # nothing is stuck with the stopped consumer
    assert stats.backlog == 40 - len(finished)  # the rest went back to the stream
    again = start_workers(settings.broker_url, threads=8)
    try:
        wait_for(lambda: client.llen("effects:finished") >= 40, 30, "the rest to run")
        assert sorted(ints(client, "effects:finished")) == list(range(40))  # each exactly once
    finally:
        stop_workers(again)


def test_gevent_workers_run_hundreds_of_io_bound_messages_at_once(
    producer: RedisStreamsBroker, settings: Settings
) -> None:
    client = producer.client
    for i in range(300):
        send(producer, "started_then_record", i, 1500)
    main = start_workers(settings.broker_url, threads=150, gevent=True)
    try:
        worker_children(main, 1)
        wait_for(lambda: client.llen("effects:started") >= 100, 30, "greenlets to start")
        assert client.llen("effects:finished") < client.llen("effects:started") - 50  # >50 at once
        wait_for(lambda: client.llen("effects:finished") >= 300, 60, "all to finish")
        assert sorted(ints(client, "effects:finished")) == list(range(300))
    finally:
        assert stop_workers(main) == 0


def test_large_payloads_travel_through_s3(settings: Settings) -> None:
    broker = build_broker(settings)
    received: list[tuple[int, str]] = []

    @dramatiq.actor(broker=broker, queue_name="bulky")
    def measure(text: str) -> None:
        received.append((len(text), text[:10]))

    big = "0123456789" * 20_000  # 200 KB, well over the claim-check threshold
    message = measure.send_with_options(args=(big,), tenant="acme")
    (_, fields), *_ = broker.client.xrange(broker.keys("bulky").stream)
    pointer = json.loads(fields[b"m"])
    assert len(fields[b"m"]) < 1024
    assert pointer["options"]["claim_check"] == (
        f"s3://{settings.payload_bucket}/acme/claim-checks/{message.message_id}.json"
    )
    s3 = aws_client("s3", settings)
    stored = s3.get_object(Bucket=settings.payload_bucket, Key=f"acme/claim-checks/{message.message_id}.json")
    assert json.loads(stored["Body"].read())["args"] == [big]
    worker = Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        wait_for(lambda: received == [(200_000, "0123456789")], 15, "the message to arrive whole")
    finally:
        worker.stop()
        broker.close()


def test_job_records_follow_success_retries_and_failure(settings: Settings) -> None:
    broker = build_broker(settings)
    jobs = JobStore(broker.client, settings.namespace, settings.job_ttl_s)
    calls: dict[str, int] = {}

    @dramatiq.actor(broker=broker, queue_name="records", max_retries=2, min_backoff=50, max_backoff=100)
    def step(job: str, fail_times: int) -> str:
        calls[job] = calls.get(job, 0) + 1
        if calls[job] <= fail_times:
            raise RuntimeError(f"attempt {calls[job]} failed")
        return f"{job} done"

    outcomes = {"ok": 0, "flaky": 1, "broken": 99}
    for job, fail_times in outcomes.items():
        jobs.create(job, tenant="acme", kind="step")
        assert jobs.get(job).state is JobState.QUEUED  # type: ignore[union-attr]
        step.send_with_options(args=(job, fail_times), job_id=job, tenant="acme")
    worker = Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        wait_for(lambda: all(jobs.get(j).finished_at_ms for j in outcomes), 20, "jobs to finish")  # type: ignore[union-attr]
    finally:
        worker.stop()
        broker.close()
    ok, flaky, broken = (jobs.get(j) for j in outcomes)
    assert ok and flaky and broken
    assert (ok.state, ok.attempts, ok.last_error) == (JobState.SUCCEEDED, 1, None)
    assert (flaky.state, flaky.attempts, flaky.last_error) == (
        JobState.SUCCEEDED,
        2,
        "RuntimeError: attempt 1 failed",
    )
    assert (broken.state, broken.attempts, broken.last_error) == (
        JobState.FAILED,
        3,
        "RuntimeError: attempt 3 failed",
    )
    # Each run's archive record went to the buffer with its record write; one flush moves them all.
    archiver = Archiver(
        broker.client, settings.namespace, PayloadStore(aws_client("s3", settings), settings.payload_bucket)
    )
    archiver.drain()  # what the workers' own archiver had not flushed yet
    assert broker.client.xlen(archiver.buffer) == 0
    reader = ArchiveReader(broker.client, settings.namespace, archiver.payloads)
    assert ok.output_ref and broken.output_ref is None and broken.input_ref
    (where,) = reader.locate("acme", [ok.output_ref])
    assert where.uri and where.uri.startswith(f"s3://{settings.payload_bucket}/acme/archive/")
    archived = reader.read(where)
    assert archived is not None
    assert (archived.input, archived.output, archived.error) == (
        {"args": ["ok", 0], "kwargs": {}},
        "ok done",
        None,
    )
    (failure,) = reader.locate("acme", [broken.input_ref])
    last_try = reader.read(failure)
    assert last_try is not None and (last_try.attempt, last_try.error) == (
        3,
        "RuntimeError: attempt 3 failed",
    )
    assert ok.created_at_ms <= ok.started_at_ms <= ok.finished_at_ms <= current_millis()  # type: ignore[operator]


def test_a_workflow_runs_through_the_four_stage_queues(settings: Settings, tmp_path: Path) -> None:
    """What `make run` suggests trying: submit a job and watch it finish (infer asks the fake LLM)."""
    from localstack.bootstrap import bootstrap
    from localstack.fake_provider import ROUTING_POLICY, running_fake_provider

    bootstrap(settings)  # the provider keys the proxy core reads
    policy = tmp_path / "routing.json"
    policy.write_text(json.dumps(ROUTING_POLICY))
    with running_fake_provider(in_thread=True) as fake:
        main = start_workers(
            settings.broker_url,
            module="workers.app",
            queues=("ingest", "infer", "post-process", "publish"),
            threads=2,
            log=tmp_path / "workers.log",
            PRESSLINE_OPENAI_BASE_URL=f"{fake}/openai/v1",
            PRESSLINE_GROQ_BASE_URL=f"{fake}/groq/openai/v1",
            PRESSLINE_ROUTING_POLICY=str(policy),
            PRESSLINE_ARCHIVE_FLUSH_S="0.5",
        )
        _submit_and_check(settings, main)


def _submit_and_check(settings: Settings, main: subprocess.Popen[bytes]) -> None:
    try:
        worker_children(main, 1)
        tenant = f"t{uuid.uuid4().hex[:6]}"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "workers.submit",
                "--tenant",
                tenant,
                "--title",
                "Hi",
                "--source",
                "A. B. C. D.",
            ],
            cwd=ROOT,
            env=worker_env(settings.broker_url),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        record = json.loads(done.stdout.split("\n", 1)[1])
        assert (record["state"], record["stage"], record["tenant"]) == ("succeeded", "publish", tenant)
        assert record["cost_pico_usd"] > 0  # the LLM call was charged to the job

        def archived() -> list[dict[str, Any]]:
            """The operator command's reading of the job's archive: a record per stage."""
            shown = subprocess.run(
                [sys.executable, "-m", "shared.archive.cli", "show", record["job_id"], "--records"],
                cwd=ROOT,
                env=worker_env(settings.broker_url),
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            return [json.loads(line) for line in shown.stdout.splitlines()]

        wait_for(lambda: all("buffered" not in r for r in archived()), 30, "the archive's flush")
        records = archived()
        assert [r["stage"] for r in records] == ["ingest", "infer", "post_process", "publish"]
        assert records[0]["input"]["args"] == [{"title": "Hi", "source": "A. B. C. D."}]
        for earlier, later in itertools.pairwise(records):
            assert later["input"]["args"][-1] == earlier["output"]  # each stage's output is the next's input
        assert records[-1]["output"]["status"] == "archived" and records[-1]["error"] is None
    finally:
        stop_workers(main)


def test_the_producers_stage_names_match_the_declared_actors() -> None:
    """The API enqueues by name (shared.workflow); the workers must declare exactly those actors."""
    from shared.workflow import STAGES
    from workers.app import broker

    for stage in STAGES:
        actor = broker.get_actor(stage.actor_name)
        assert actor.queue_name == stage.queue_name
