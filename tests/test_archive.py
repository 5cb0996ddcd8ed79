"""The job archive in micro-batches: records buffered with their job-record write, flushed as one
gzip JSON Lines object per tenant per flush, found again by the location index; and, over real
processes, a flusher killed half-way and a Redis restart lose no record."""

from __future__ import annotations

import gzip
import json
import os
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from localstack.bootstrap import bootstrap
from localstack.endpoint import Endpoint
from localstack.fake_provider import ROUTING_POLICY, running_fake_provider
from shared.archive import ArchiveBuffer, Archiver, ArchiveReader, ArchiveRecord, archive_ref
from shared.aws import aws_client
from shared.config import Settings
from shared.jobs import JobState, JobStore, new_job_id
from shared.payloads import PayloadStore
from shared.streams import RedisStreamsBroker
from shared.workflow import submit_workflow
from tests.support.api import ensure_bucket
from tests.support.fault_proxy import FaultProxy
from tests.support.killable_redis import KillableRedis
from tests.support.workers import start_workers, stop_workers, worker_children

STAGES = ("ingest", "infer", "post_process", "publish")
#: Tenants of their own per run: the bucket (the session's moto) outlives a test.
ACME, GLOBEX, INITECH = (f"{name}-{uuid.uuid4().hex[:6]}" for name in ("acme", "globex", "initech"))


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except redis.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not reached in {timeout_s} s: {what}")


@pytest.fixture
def settings(redis_url: str, aws_endpoint: Endpoint) -> Settings:
    s = Settings(
        broker_url=redis_url, aws_endpoint_url=aws_endpoint.url, namespace=f"a{uuid.uuid4().hex[:6]}"
    )
    ensure_bucket(s)
    return s


@pytest.fixture
def payloads(settings: Settings) -> PayloadStore:
    return PayloadStore(aws_client("s3", settings), settings.payload_bucket)


def record(tenant: str, n: int, **fields: Any) -> ArchiveRecord:
    return ArchiveRecord(
        id=f"m{n}.1",
        job_id=f"j{n}",
        tenant=tenant,
        stage="ingest",
        message_id=f"m{n}",
        attempt=1,
        at_ms=int(time.time() * 1000),
        input={"args": [{"n": n}], "kwargs": {}},
        output={"ok": n},
        **fields,
    )


def buffered(client: redis.Redis, buffer: ArchiveBuffer, records: list[ArchiveRecord]) -> None:
    with client.pipeline(transaction=False) as pipe:
        for r in records:
            buffer.add(pipe, r)
        pipe.execute()


def archived_lines(settings: Settings, tenant: str) -> list[dict[str, Any]]:
    """Every line of every archive object of the tenant."""
    s3 = aws_client("s3", settings)
    listed = s3.list_objects_v2(Bucket=settings.payload_bucket, Prefix=f"{tenant}/archive/")
    lines = []
    for entry in listed.get("Contents", []):
        if not entry["Key"].endswith(".jsonl.gz"):
            continue
        body = s3.get_object(Bucket=settings.payload_bucket, Key=entry["Key"])["Body"].read()
        lines += [json.loads(line) for line in gzip.decompress(body).splitlines()]
    return lines


def test_a_flush_writes_one_object_per_tenant_and_the_index_finds_each_record(
    settings: Settings, payloads: PayloadStore
) -> None:
    client = redis.Redis.from_url(settings.broker_url)
    buffer = ArchiveBuffer(settings.namespace, payloads, max_inline_bytes=2048)
    acme = [record(ACME, n) for n in range(5)]
    globex = [record(GLOBEX, n) for n in range(5, 8)]
    big = record(ACME, 99, error="x" * 10)
    big = ArchiveRecord(**{**big.__dict__, "output": {"text": "y" * 5000}})  # over the inline limit
    buffered(client, buffer, [*acme, *globex, big])

    archiver = Archiver(client, settings.namespace, payloads, interval_s=60)
    first = archiver.flush()
    assert first is not None and (first.records, first.objects, first.full) == (9, 2, False)
    assert archiver.flush() is None  # the next one waits its interval
    assert client.xlen(buffer.key) == 0
    lines = archived_lines(settings, ACME)
    assert [line["id"] for line in lines] == [r.id for r in [*acme, big]]
    assert lines[-1]["ref"] and lines[-1]["output"] is None  # the big one is a pointer to its own object
    assert [line["id"] for line in archived_lines(settings, GLOBEX)] == [r.id for r in globex]

    reader = ArchiveReader(client, settings.namespace, payloads)
    refs = [archive_ref(r) for r in [acme[3], big, globex[0]]]
    found = reader.locate(ACME, refs[:2]) + reader.locate(GLOBEX, refs[2:])
    assert [f.line for f in found] == [4, 6, 1]
    assert reader.read(found[0]) == acme[3]
    assert reader.read(found[1]) == big  # the pointer followed
    assert reader.read(found[2]) == globex[0]
    unflushed = record(ACME, 7)
    assert not reader.locate(ACME, [archive_ref(unflushed)])[0].archived


class DiesBeforeRelease(redis.Redis):
    """A client whose pipelines fail: the flush's last step (index and XDEL) never reaches Redis,
    as when the flusher dies, or Redis does, right after the PUT."""

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)

        def execute(raise_on_error: bool = True) -> list[Any]:
            raise redis.ConnectionError("gone")

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe


def test_a_flush_that_dies_after_its_put_is_redone_under_the_same_key(
    settings: Settings, payloads: PayloadStore
) -> None:
    client = redis.Redis.from_url(settings.broker_url)
    buffer = ArchiveBuffer(settings.namespace, payloads)
    buffered(client, buffer, [record(INITECH, n) for n in range(10)])
    dying = Archiver(DiesBeforeRelease.from_url(settings.broker_url), settings.namespace, payloads, batch=4)
    with pytest.raises(redis.ConnectionError):
        dying.flush()
    assert client.xlen(buffer.key) == 10  # nothing left the buffer
    client.delete(dying.lock)  # (a dead flusher's lock expires)
    Archiver(client, settings.namespace, payloads, batch=4).drain()
    ids = [line["id"] for line in archived_lines(settings, INITECH)]
    assert sorted(ids) == sorted(f"m{n}.1" for n in range(10))  # the first batch rewritten, not added
    keys = aws_client("s3", settings).list_objects_v2(
        Bucket=settings.payload_bucket, Prefix=f"{INITECH}/archive/"
    )
    assert len(keys["Contents"]) == 3  # 4 + 4 + 2


@pytest.fixture
def killable(tmp_path: Path) -> Iterator[KillableRedis]:
    server = KillableRedis(tmp_path / "redis")
    yield server
    server.stop()


def test_a_flusher_killed_mid_flush_and_a_redis_restart_lose_no_archive_record(
    killable: KillableRedis, aws_endpoint: Endpoint, tmp_path: Path
) -> None:
    """Two worker trees run real jobs; the archive's S3 endpoint holds back the answer to one PUT
    (the object is written), and the process waiting on it is killed with SIGKILL; later Redis
    is killed and restarted. Every stage of every job still has its record in S3."""
    settings = Settings(broker_url=killable.url, aws_endpoint_url=aws_endpoint.url, namespace="arch")
    ensure_bucket(settings)
    bootstrap(settings)  # the provider keys the proxy core reads
    s3_proxy = FaultProxy(aws_endpoint.url).start()
    policy = tmp_path / "routing.json"
    policy.write_text(json.dumps(ROUTING_POLICY))
    tenant = "archtest"
    trees = []
    with running_fake_provider(in_thread=True) as fake:
        env = {
            "PRESSLINE_NAMESPACE": settings.namespace,
            "AWS_ENDPOINT_URL": s3_proxy.url,
            "PRESSLINE_OPENAI_BASE_URL": f"{fake}/openai/v1",
            "PRESSLINE_GROQ_BASE_URL": f"{fake}/groq/openai/v1",
            "PRESSLINE_ROUTING_POLICY": str(policy),
            "PRESSLINE_ARCHIVE_FLUSH_S": "0.3",
            "PRESSLINE_ARCHIVE_LOCK_S": "2",
            "PRESSLINE_CONSUMER_DEAD_AFTER_MS": "3000",
        }
        for name in ("a", "b"):
            trees.append(
                start_workers(
                    killable.url,
                    module="workers.app",
                    queues=("ingest", "infer", "post-process", "publish"),
                    threads=2,
                    log=tmp_path / f"workers-{name}.log",
                    **env,
                )
            )
        producer = RedisStreamsBroker(url=killable.url, namespace=settings.namespace)
        jobs = JobStore(producer.client, settings.namespace, settings.job_ttl_s)
        job_ids: list[str] = []

        def submit(n: int) -> None:
            for _ in range(n):
                job_id = new_job_id()
                doc = {"title": "Archive", "source": "One. Two. Three."}
                submit_workflow(producer, jobs, doc, job_id=job_id, tenant=tenant)
                job_ids.append(job_id)

        try:
            for tree in trees:
                worker_children(tree, 1)
            held = s3_proxy.delay(120, count=1, method="PUT", path="/archive/")
            submit(20)
            wait_for(lambda: held.hits == 1, 60, "a flush's PUT to reach S3")
            holder = wait_for(
                lambda: producer.client.get(f"{{{settings.namespace}:archive}}.flush-lock"), 10, "lock"
            )
            pid = int(holder.decode().split(":")[0])
            os.kill(pid, signal.SIGKILL)  # mid-flush: its object is written, its records not yet released

            submit(20)
            wait_for(lambda: len(archived_lines(settings, tenant)) > 0, 60, "a later flush")
            killable.kill_and_restart(down_s=1.0)
            submit(20)

            def finished() -> bool:
                states = [jobs.get(j) for j in job_ids]
                return all(r is not None and r.state is JobState.SUCCEEDED for r in states)

            wait_for(finished, 180, "every job to succeed")
            wait_for(
                lambda: producer.client.xlen(f"{{{settings.namespace}:archive}}.buffer") == 0,
                60,
                "the buffer",
            )
        finally:
            for tree in trees:
                stop_workers(tree)
            s3_proxy.close()
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in archived_lines(settings, tenant):
        by_id[line["id"]].append(line)
    identity = ("job_id", "tenant", "stage", "message_id", "attempt", "input")
    for copies in by_id.values():  # twice under one id: a flush redone, or a redelivered run's record
        assert all({k: c[k] for k in identity} == {k: copies[0][k] for k in identity} for c in copies)
    stages_of: dict[str, set[str]] = defaultdict(set)
    for copies in by_id.values():
        if copies[0]["error"] is None:
            stages_of[copies[0]["job_id"]].add(copies[0]["stage"])
    assert {job: stages_of[job] for job in job_ids} == {job: set(STAGES) for job in job_ids}
