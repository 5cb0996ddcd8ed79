"""A stage's result remembered per job, so a redelivered stage reuses it instead of redoing it.

Infer is the one stage whose effect costs money: a worker that dies after the LLM answered but
before its message was acked gets the message redelivered, and without this the model would be
asked, and the tenant charged, a second time.  The result is kept in Redis under the job id for
as long as the job's record (``PRESSLINE_JOB_TTL_S``); a crash *during* the call (before the
answer is stored) still costs a second call, which at-least-once delivery cannot avoid.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

import redis

log = logging.getLogger("pressline.pipeline.memo")


class StageMemo:
    """One stage's results, one Redis string per job (``<namespace>.memo.<stage>.<job_id>``).

    Parameters:
      client(redis.Redis)
      namespace(str): Key prefix.
      stage(str): Whose results these are (``infer``).
      ttl_s(int): How long a result is kept (the job record's TTL).
    """

    def __init__(self, client: redis.Redis, namespace: str, stage: str, ttl_s: int) -> None:
        self.client = client
        self.prefix = f"{namespace}.memo.{stage}."
        self.ttl_s = ttl_s

    def key(self, job_id: str) -> str:
        return self.prefix + job_id

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's stored result, or None (also for an unreadable one, which is then redone)."""
        raw = cast(bytes | None, self.client.get(self.key(job_id)))
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            log.warning("unreadable stage memo ignored", extra={"job_id": job_id})
            return None
        return value if isinstance(value, dict) else None

    def remember(self, job_id: str, result: dict[str, Any]) -> dict[str, Any]:
        """Store the result unless one is stored already; returns the one kept (the first wins)."""
        stored = self.client.set(
            self.key(job_id), json.dumps(result, ensure_ascii=False), ex=self.ttl_s, nx=True
        )
        if stored:
            return result
        return self.get(job_id) or result
