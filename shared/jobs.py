"""Job records: every job has an id and a readable state that the API can show.

A record is a Redis hash with a TTL.  States move queued -> running -> succeeded, or through
retrying back to running, or to failed (the message is then in its queue's dead-letter stream).

The same hash is the job's *run record*: each stage's state, first start, finish, attempts and
time spent running (``s.<stage>.<field>``), the trace id, the WordPress post it produced, and
markers of the outcome events already sent.  One hash, so a read is one ``HGETALL``.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import redis
from dramatiq.common import current_millis
from redis.client import Pipeline

#: More commands for a record write's round trip (e.g. the stage's archive record).
Also = Callable[[Pipeline], None]

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: Create a record unless one exists.  KEYS: record.  ARGV: ttl_s, field, value, field, value...
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

#: Claim a job's submission.  KEYS: record.  ARGV: ttl_s, now ms, lease deadline ms, field, value...
#: A record being submitted carries ``submit_lease_ms`` until its first message is enqueued.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'submit_lease_ms', ARGV[3], unpack(ARGV, 4))
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return 'created'
end
local lease = redis.call('HGET', KEYS[1], 'submit_lease_ms')
if not lease then return 'enqueued' end
if tonumber(lease) > tonumber(ARGV[2]) then return 'in_progress' end
redis.call('HSET', KEYS[1], 'submit_lease_ms', ARGV[3])
return 'resumed'
"""


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


#: The states in which a job may still be charged for work done on its behalf.
CHARGEABLE: frozenset[JobState] = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.RETRYING})


class Submission(StrEnum):
    """What a submitter of a job id must do (:meth:`JobStore.claim_submission`)."""

    #: A new record: enqueue the job's first message, then :meth:`JobStore.mark_enqueued`.
    CREATED = "created"
    #: A submitter died between creating the record and confirming its enqueue: enqueue it again
    #: (the message may then run twice; the stages' effects are idempotent).
    RESUMED = "resumed"
    #: Submitted before: nothing to do.
    ENQUEUED = "enqueued"
    #: Another submitter holds the lease now: answer "retry later".
    IN_PROGRESS = "in_progress"


class StageState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # never ran: an earlier stage failed


@dataclass(frozen=True)
class StageRecord:
    """One stage of a job: its state, first start, finish, attempts and time spent running."""

    name: str
    state: StageState
    attempts: int
    started_at_ms: int | None
    finished_at_ms: int | None
    run_ms: int
    last_error: str | None
    archive: str | None = None  # the archive ref of its last run (``<record id>@<ms>``)


@dataclass(frozen=True)
class PostRecord:
    """The WordPress post a job wrote; ``publish_refused``: it asked to publish and was refused."""

    post_id: int
    link: str
    status: str
    publish_refused: bool = False


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    tenant: str
    kind: str
    state: JobState
    attempts: int
    stage: str
    created_at_ms: int
    updated_at_ms: int
    started_at_ms: int | None
    finished_at_ms: int | None
    last_error: str | None
    input_ref: str | None  # the archive ref of the first stage's run (the job's input)
    output_ref: str | None  # the archive ref of the last stage that succeeded (its output)
    cost_pico_usd: int = 0
    site: str | None = None
    trace_id: str | None = None
    stages: tuple[StageRecord, ...] = ()
    post: PostRecord | None = None


def new_job_id() -> str:
    return uuid.uuid4().hex


def derived_job_id(prefix: str, *parts: str) -> str:
    """A job id that the same request always maps to, so its retries find the job it created."""
    digest = hashlib.sha256()
    for part in parts:
        encoded = part.encode()
        digest.update(len(encoded).to_bytes(8, "big"))  # length-prefixed: no two splits hash alike
        digest.update(encoded)
    return prefix + digest.hexdigest()[:30]


def valid_job_id(job_id: str) -> bool:
    return bool(_JOB_ID.match(job_id))


class JobStore:
    """Reads and writes job records.

    Parameters:
      client(redis.Redis)
      namespace(str): Key prefix.
      ttl_s(int): How long a record is kept after its last change.
    """

    def __init__(self, client: redis.Redis, namespace: str, ttl_s: int) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl_s = ttl_s
        self._create = client.register_script(_CREATE)
        self._claim = client.register_script(_CLAIM)

    def key(self, job_id: str) -> str:
        return f"{self.namespace}.job.{job_id}"

    def create(
        self,
        job_id: str,
        *,
        tenant: str,
        kind: str,
        stages: Sequence[str] = (),
        site: str | None = None,
    ) -> bool:
        """Create the record; False (and nothing changed) when the job already exists.

        ``stages`` names the job's stages in order, so the record lists them all (``queued``)
        before any has run.
        """
        args: list[str | int] = [self.ttl_s]
        for name, value in self._new_fields(job_id, tenant, kind, stages, site).items():
            args += [name, value]
        return bool(self._create(keys=[self.key(job_id)], args=args))

    def claim_submission(
        self,
        job_id: str,
        *,
        tenant: str,
        kind: str,
        stages: Sequence[str] = (),
        site: str | None = None,
        lease_s: float,
    ) -> Submission:
        """Create the record under a submission lease, or say what became of an earlier submission.

        A submitter that dies after creating the record but before its message is enqueued would
        leave a job ``queued`` forever; the lease lets a retry of the same request (same job id)
        take the submission over once ``lease_s`` has passed. One script, one round trip.
        """
        now = current_millis()
        args: list[str | int] = [self.ttl_s, now, now + max(1, int(lease_s * 1000))]
        for name, value in self._new_fields(job_id, tenant, kind, stages, site).items():
            args += [name, value]
        verdict = self._claim(keys=[self.key(job_id)], args=args)
        return Submission(verdict.decode() if isinstance(verdict, bytes) else verdict)

    def submitted(self, job_id: str) -> bool:
        """Whether the job exists and its first message was enqueued (one HMGET)."""
        found = self.client.hmget(self.key(job_id), ["job_id", "submit_lease_ms"])
        job, lease = cast(list[bytes | None], found)
        return job is not None and lease is None

    def mark_enqueued(self, job_id: str) -> None:
        """The job's first message is in its queue: no later submission enqueues it again."""
        self.client.hdel(self.key(job_id), "submit_lease_ms")

    def release_submission(self, job_id: str) -> None:
        """A submission that failed to enqueue: let the next one take over without waiting."""
        self.client.hset(self.key(job_id), "submit_lease_ms", 0)

    @staticmethod
    def _new_fields(
        job_id: str,
        tenant: str,
        kind: str,
        stages: Sequence[str],
        site: str | None,
    ) -> dict[str, str | int]:
        now = current_millis()
        fields: dict[str, str | int] = {
            "job_id": job_id,
            "tenant": tenant,
            "kind": kind,
            "state": JobState.QUEUED.value,
            "attempts": 0,
            "stage": "",
            "created_at_ms": now,
            "updated_at_ms": now,
        }
        if stages:
            fields["stages"] = ",".join(stages)
        if site:
            fields["site"] = site
        return fields

    def owner(self, job_id: str) -> tuple[str, JobState] | None:
        """The job's tenant and state (one HMGET), or None when there is no such job."""
        if not valid_job_id(job_id):
            return None
        tenant, state = cast(list[bytes | None], self.client.hmget(self.key(job_id), ["tenant", "state"]))
        if tenant is None or state is None:
            return None
        return tenant.decode(), JobState(state.decode())

    def delete(self, job_id: str) -> None:
        self.client.delete(self.key(job_id))

    def add_cost(self, job_id: str, pico_usd: int) -> None:
        """Add to the job's running cost in pico-dollars (10^-12 USD): integer sums stay exact."""
        self.client.hincrby(self.key(job_id), "cost_pico_usd", pico_usd)

    def running(self, job_id: str, *, stage: str, attempt: int, trace_id: str | None = None) -> None:
        """A stage's message starts: one HSET. ``attempt`` is Dramatiq's count (retries + 1); a
        redelivery after a crash runs the same attempt again and is not counted apart."""
        now = current_millis()
        fields: dict[str, str | int] = {
            "state": JobState.RUNNING.value,
            "stage": stage,
            "updated_at_ms": now,
            _f(stage, "state"): StageState.RUNNING.value,
            _f(stage, "attempts"): attempt,
        }
        if attempt == 1:
            fields[_f(stage, "started_at_ms")] = now
            if trace_id:
                fields[_f(stage, "trace_id")] = trace_id
        self.client.hset(self.key(job_id), mapping=cast(dict[Any, Any], fields))

    def stage_succeeded(
        self,
        job_id: str,
        *,
        stage: str,
        run_ms: int = 0,
        last: bool = False,
        archive: str | None = None,
        also: Also | None = None,
    ) -> None:
        """A stage finished; ``last``: it was the job's last stage, so the job succeeded too.

        ``archive`` is the stage's archive ref; ``also`` queues more commands (the archive record)
        on the same round trip.
        """
        now = current_millis()
        fields: dict[str, str | int] = {
            _f(stage, "state"): StageState.SUCCEEDED.value,
            _f(stage, "finished_at_ms"): now,
            _f(stage, "run_ms"): run_ms,
        }
        if archive:
            fields[_f(stage, "archive")] = archive
        if last:
            fields.update(state=JobState.SUCCEEDED.value, finished_at_ms=now)
        self._write(job_id, fields, also=also)

    def retrying(
        self,
        job_id: str,
        *,
        error: str,
        stage: str | None = None,
        run_ms: int = 0,
        archive: str | None = None,
        also: Also | None = None,
    ) -> None:
        fields: dict[str, str | int] = {"state": JobState.RETRYING.value, "last_error": error[:2000]}
        incr = _failed_run(fields, stage, StageState.RETRYING, error, run_ms, archive)
        self._write(job_id, fields, incr=incr, also=also)

    def succeeded(self, job_id: str) -> None:
        self._write(job_id, {"state": JobState.SUCCEEDED.value, "finished_at_ms": current_millis()})

    def failed(
        self,
        job_id: str,
        *,
        error: str,
        stage: str | None = None,
        run_ms: int = 0,
        archive: str | None = None,
        also: Also | None = None,
    ) -> None:
        """The job failed (in ``stage``); the stages that never ran read as skipped."""
        now = current_millis()
        fields: dict[str, str | int] = {
            "state": JobState.FAILED.value,
            "last_error": error[:2000],
            "finished_at_ms": now,
        }
        incr = _failed_run(fields, stage, StageState.FAILED, error, run_ms, archive)
        if stage:
            fields[_f(stage, "finished_at_ms")] = now
        self._write(job_id, fields, incr=incr, also=also)

    def set_post(self, job_id: str, post: PostRecord) -> None:
        """Record the WordPress post the job wrote (the same post on every retry)."""
        self._write(
            job_id,
            {
                "post_id": post.post_id,
                "post_link": post.link,
                "post_status": post.status,
                "publish_refused": int(post.publish_refused),
            },
        )

    def event_sent(self, job_id: str, event_type: str) -> bool:
        """Whether the outcome event ``event_type`` of the job was already enqueued."""
        return bool(self.client.hexists(self.key(job_id), f"event.{event_type}"))

    def mark_event_sent(self, job_id: str, event_type: str, webhook_id: str) -> None:
        self._write(job_id, {f"event.{event_type}": webhook_id})

    def get(self, job_id: str) -> JobRecord | None:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.key(job_id)))
        if not raw:
            return None
        f = {k.decode(): v.decode() for k, v in raw.items()}

        def opt_int(name: str) -> int | None:
            return int(f[name]) if f.get(name) else None

        post = None
        if f.get("post_id"):
            post = PostRecord(
                post_id=int(f["post_id"]),
                link=f.get("post_link", ""),
                status=f.get("post_status", ""),
                publish_refused=f.get("publish_refused") == "1",
            )
        state = JobState(f.get("state", JobState.QUEUED.value))
        stages = _stages(f, failed=state is JobState.FAILED)
        # Job-wide figures are read off the stages, so the hot path writes each stage's fields only.
        starts = [s.started_at_ms for s in stages if s.started_at_ms]
        archived = [s.archive for s in stages if s.archive]
        succeeded = [s.archive for s in stages if s.archive and s.state is StageState.SUCCEEDED]
        traces = [f[_f(s.name, "trace_id")] for s in stages if f.get(_f(s.name, "trace_id"))]
        return JobRecord(
            job_id=f.get("job_id", job_id),
            tenant=f.get("tenant", ""),
            kind=f.get("kind", ""),
            state=state,
            attempts=sum(s.attempts for s in stages) or int(f.get("attempts", 0)),
            stage=f.get("stage", ""),
            created_at_ms=int(f.get("created_at_ms", 0)),
            updated_at_ms=int(f.get("updated_at_ms", 0)),
            started_at_ms=opt_int("started_at_ms") or (min(starts) if starts else None),
            finished_at_ms=opt_int("finished_at_ms"),
            last_error=f.get("last_error") or None,
            input_ref=archived[0] if archived else None,
            output_ref=succeeded[-1] if succeeded else None,
            cost_pico_usd=int(f.get("cost_pico_usd", 0)),
            site=f.get("site") or None,
            trace_id=f.get("trace_id") or (traces[0] if traces else None),
            stages=stages,
            post=post,
        )

    def _write(
        self,
        job_id: str,
        fields: dict[str, str | int],
        *,
        incr: dict[str, int] | None = None,
        also: Also | None = None,
    ) -> None:
        """One round trip: the HSET (the TTL was set at creation), counters, and ``also``'s commands."""
        fields = {**fields, "updated_at_ms": current_millis()}
        key = self.key(job_id)
        if not incr and also is None:
            self.client.hset(key, mapping=cast(dict[Any, Any], fields))
            return
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=cast(dict[Any, Any], fields))
            for name, amount in (incr or {}).items():
                pipe.hincrby(key, name, amount)
            if also is not None:
                also(pipe)
            pipe.execute()


def _failed_run(
    fields: dict[str, str | int],
    stage: str | None,
    state: StageState,
    error: str,
    run_ms: int,
    archive: str | None,
) -> dict[str, int]:
    """Add a failed run's stage fields to ``fields``; the counters it adds to (its time)."""
    if not stage:
        return {}
    fields[_f(stage, "state")] = state.value
    fields[_f(stage, "error")] = error[:2000]
    if archive:
        fields[_f(stage, "archive")] = archive
    return {_f(stage, "failed_run_ms"): run_ms} if run_ms else {}


def _f(stage: str, name: str) -> str:
    """The hash field of one stage's ``name`` (stage names never contain '.')."""
    return f"s.{stage}.{name}"


def _stages(f: dict[str, str], *, failed: bool) -> tuple[StageRecord, ...]:
    """The declared stages in order, then any other stage that ran, by first start. A failed job's
    stages that never ran are skipped."""
    declared = [name for name in f.get("stages", "").split(",") if name]
    seen = {key.split(".")[1] for key in f if key.startswith("s.") and key.count(".") >= 2}
    extra = sorted(seen - set(declared), key=lambda n: int(f.get(_f(n, "started_at_ms")) or 0))
    records = []
    for name in (*declared, *extra):

        def opt_int(field: str, name: str = name) -> int | None:
            value = f.get(_f(name, field))
            return int(value) if value else None

        state = StageState(f.get(_f(name, "state"), StageState.QUEUED.value))
        records.append(
            StageRecord(
                name=name,
                state=StageState.SKIPPED if failed and state is StageState.QUEUED else state,
                attempts=int(f.get(_f(name, "attempts"), 0)),
                started_at_ms=opt_int("started_at_ms"),
                finished_at_ms=opt_int("finished_at_ms"),
                run_ms=int(f.get(_f(name, "run_ms"), 0)) + int(f.get(_f(name, "failed_run_ms"), 0)),
                last_error=f.get(_f(name, "error")) or None,
                archive=f.get(_f(name, "archive")) or None,
            )
        )
    return tuple(records)
