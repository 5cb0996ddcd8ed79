"""The exact layer: SHA-256 of the canonical request -> the stored answer, in Redis with a TTL.

Redis expires each entry itself; an expiry index (a sorted set of key -> expiry time) lets the
layer count its live entries and report expirations, and a set per library prompt holds the
keys made under that prompt so publishing a new version can purge them at once.  The purge's
time is kept too: the semantic layer of another process (embedded stores are per process)
refuses entries of that prompt made before it.
"""

from __future__ import annotations

import time
from typing import Any, cast

import redis

from .entry import Completion


class ExactLayer:
    """Parameters:
    client(redis.Redis)
    namespace(str): Key prefix (``{namespace}.cache.*``).
    """

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.ns = namespace
        self.index = f"{namespace}.cache.exact.expiry"

    def key(self, tenant: str, digest: str) -> str:
        return f"{self.ns}.cache.x.{tenant}.{digest}"

    def prompt_set(self, tenant: str, prompt_name: str) -> str:
        return f"{self.ns}.cache.prompt.{tenant}.{prompt_name}"

    def get(self, tenant: str, digest: str) -> Completion | None:
        raw = cast(bytes | None, self.client.get(self.key(tenant, digest)))
        return Completion.from_json(raw) if raw else None

    def put(
        self, tenant: str, digest: str, completion: Completion, ttl_s: float, prompt_name: str = ""
    ) -> None:
        key = self.key(tenant, digest)
        expires = time.time() + ttl_s
        pipe = self.client.pipeline(transaction=True)
        pipe.set(key, completion.to_json(), px=max(1, int(ttl_s * 1000)))
        pipe.zadd(self.index, {key: expires})
        if prompt_name:
            members = self.prompt_set(tenant, prompt_name)
            pipe.sadd(members, key)
            pipe.expire(members, int(ttl_s) + 60, gt=True)
            pipe.expire(members, int(ttl_s) + 60, nx=True)
        pipe.execute()

    def purge_prompt(self, tenant: str, prompt_name: str) -> int:
        """Delete every entry made under ``prompt_name`` (any version); the number deleted."""
        members = self.prompt_set(tenant, prompt_name)
        keys = [
            k.decode() if isinstance(k, bytes) else str(k) for k in cast(Any, self.client.smembers(members))
        ]
        if not keys:
            return 0
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(*keys)
        pipe.zrem(self.index, *keys)
        pipe.delete(members)
        deleted = int(pipe.execute()[0])
        return deleted

    def mark_purged(self, tenant: str, prompt_name: str, at: float, keep_s: float) -> None:
        """Remember when the prompt's entries were purged, for ``keep_s`` (the longest TTL): a
        process whose embedded semantic store missed the purge refuses older entries."""
        self.client.set(f"{self.ns}.cache.purged.{tenant}.{prompt_name}", repr(at), ex=max(1, int(keep_s)))

    def purged_at(self, tenant: str, prompt_name: str) -> float:
        raw = cast(bytes | None, self.client.get(f"{self.ns}.cache.purged.{tenant}.{prompt_name}"))
        return float(raw) if raw else 0.0

    def sweep(self, now: float | None = None) -> int:
        """Drop index entries past their expiry (Redis already dropped the values); how many."""
        return int(cast(Any, self.client.zremrangebyscore(self.index, "-inf", now or time.time())))

    def count(self, now: float | None = None) -> int:
        return int(cast(Any, self.client.zcount(self.index, now or time.time(), "+inf")))
