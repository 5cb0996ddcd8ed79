"""Job records: every job has an id and a readable state that the API can show.

A record is a Redis hash with a TTL.  States move queued -> running -> succeeded, or through
retrying back to running, or to failed (the message is then in its queue's dead-letter stream).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import redis
from dramatiq.common import current_millis

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: Create a record unless one exists.  KEYS: record.  ARGV: ttl_s, field, value, field, value...
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


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
    input_ref: str | None
    output_ref: str | None
    cost_pico_usd: int = 0


def new_job_id() -> str:
    return uuid.uuid4().hex


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

    def key(self, job_id: str) -> str:
        return f"{self.namespace}.job.{job_id}"

    def create(self, job_id: str, *, tenant: str, kind: str, input_ref: str | None = None) -> bool:
        """Create the record; False (and nothing changed) when the job already exists."""
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
        if input_ref:
            fields["input_ref"] = input_ref
        args: list[str | int] = [self.ttl_s]
        for name, value in fields.items():
            args += [name, value]
        return bool(self._create(keys=[self.key(job_id)], args=args))

    def delete(self, job_id: str) -> None:
        self.client.delete(self.key(job_id))

    def add_cost(self, job_id: str, pico_usd: int) -> None:
        """Add to the job's running cost in pico-dollars (10^-12 USD): integer sums stay exact."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hincrby(self.key(job_id), "cost_pico_usd", pico_usd)
            pipe.expire(self.key(job_id), self.ttl_s)
            pipe.execute()

    def running(self, job_id: str, *, stage: str, attempt: int) -> None:
        now = current_millis()
        with self.client.pipeline(transaction=False) as pipe:
            key = self.key(job_id)
            pipe.hset(key, mapping={"state": JobState.RUNNING.value, "stage": stage, "updated_at_ms": now})
            pipe.hsetnx(key, "started_at_ms", now)
            pipe.hincrby(key, "attempts", 1)
            pipe.hsetnx(key, "created_at_ms", now)
            pipe.expire(key, self.ttl_s)
            pipe.execute()
        del attempt  # the counter above counts every run, redeliveries included

    def retrying(self, job_id: str, *, error: str) -> None:
        self._write(job_id, {"state": JobState.RETRYING.value, "last_error": error[:2000]})

    def succeeded(self, job_id: str) -> None:
        self._write(job_id, {"state": JobState.SUCCEEDED.value, "finished_at_ms": current_millis()})

    def failed(self, job_id: str, *, error: str) -> None:
        self._write(
            job_id,
            {"state": JobState.FAILED.value, "last_error": error[:2000], "finished_at_ms": current_millis()},
        )

    def set_refs(self, job_id: str, *, input_ref: str | None = None, output_ref: str | None = None) -> None:
        fields: dict[str, str | int] = {
            k: v for k, v in (("input_ref", input_ref), ("output_ref", output_ref)) if v
        }
        if fields:
            self._write(job_id, fields)

    def get(self, job_id: str) -> JobRecord | None:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.key(job_id)))
        if not raw:
            return None
        f = {k.decode(): v.decode() for k, v in raw.items()}

        def opt_int(name: str) -> int | None:
            return int(f[name]) if f.get(name) else None

        return JobRecord(
            job_id=f.get("job_id", job_id),
            tenant=f.get("tenant", ""),
            kind=f.get("kind", ""),
            state=JobState(f.get("state", JobState.QUEUED.value)),
            attempts=int(f.get("attempts", 0)),
            stage=f.get("stage", ""),
            created_at_ms=int(f.get("created_at_ms", 0)),
            updated_at_ms=int(f.get("updated_at_ms", 0)),
            started_at_ms=opt_int("started_at_ms"),
            finished_at_ms=opt_int("finished_at_ms"),
            last_error=f.get("last_error") or None,
            input_ref=f.get("input_ref") or None,
            output_ref=f.get("output_ref") or None,
            cost_pico_usd=int(f.get("cost_pico_usd", 0)),
        )

    def _write(self, job_id: str, fields: dict[str, str | int]) -> None:
        fields = {**fields, "updated_at_ms": current_millis()}
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(self.key(job_id), mapping=cast(dict[Any, Any], fields))
            pipe.expire(self.key(job_id), self.ttl_s)
            pipe.execute()
