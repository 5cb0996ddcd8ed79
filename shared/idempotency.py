"""Idempotency keys: an effect is applied at most once per key, even when a message is redelivered.

Delivery is at-least-once, so a message can run again after a crash.  A key's record says the
effect is done; a redelivered message whose key is done is skipped.  An effect kept in Redis is
applied in the same transaction as the record (``apply_once``), so it happens exactly once.  An
effect elsewhere (a WordPress post) must be idempotent itself, since a crash can fall between the
effect and the record.  Records expire after ``ttl_s``.
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from redis.client import Pipeline


class IdempotencyStore:
    """Records of applied effects, one Redis key per idempotency key.

    Parameters:
      client(redis.Redis)
      namespace(str): Key prefix.
      ttl_s(int): How long a record is kept (the window in which a duplicate is recognised).
    """

    def __init__(self, client: redis.Redis, namespace: str, ttl_s: int) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl_s = ttl_s

    def key(self, idempotency_key: str) -> str:
        return f"{self.namespace}.idem.{idempotency_key}"

    def is_done(self, idempotency_key: str) -> bool:
        return bool(self.client.exists(self.key(idempotency_key)))

    def mark_done(self, idempotency_key: str, outcome: str = "done") -> bool:
        """Record the key as done; False when it already was."""
        return bool(self.client.set(self.key(idempotency_key), outcome, nx=True, ex=self.ttl_s))

    def apply_once(self, idempotency_key: str, effect: Callable[[Pipeline], None]) -> bool:
        """Queue ``effect``'s Redis commands on a transaction with the record; run it unless done.

        Returns True when the effect was applied now, False when it had been applied before.
        """
        key = self.key(idempotency_key)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if pipe.exists(key):
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    effect(pipe)
                    pipe.set(key, "done", ex=self.ttl_s)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue
