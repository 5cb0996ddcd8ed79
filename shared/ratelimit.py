"""A rate limiter shared by every worker process: one GCRA state per upstream, kept in Redis.

The binding limit of Pressline's workload is an upstream's rate limit (an LLM provider, a
WordPress site), and it applies to the sum of all worker processes' calls.  Each upstream gets
one Redis key, ``<namespace>.ratelimit.<name>``, holding the GCRA "theoretical arrival time"
(TAT) in microseconds.  One Lua script reads the clock with Redis ``TIME`` (so the clocks of the
worker machines do not matter), decides, and advances the TAT atomically: one ``EVALSHA`` per
attempt.  A refused attempt writes nothing and is told how long to wait.  The key expires as
soon as the TAT is in the past, because an expired key and an old TAT mean the same thing.

GCRA in brief: calls are spaced ``T = period_s / limit`` apart; ``burst`` calls may happen at
once (tolerance ``tau = T * (burst - 1)``).  A call at ``now`` is allowed when
``max(TAT, now) - tau <= now``, which then moves TAT to ``max(TAT, now) + T``.  A ``burst`` of
2 or more also absorbs the few milliseconds by which a sleeping caller wakes late, so the
aggregate rate stays at the limit instead of drifting below it.
"""

from __future__ import annotations

import random
import time

import redis
from dramatiq.errors import RateLimitExceeded

from shared.config import RateLimit

__all__ = ["GCRA", "RateLimitTimeout", "RateLimiter"]

#: KEYS[1] the TAT key; ARGV: emission interval T (µs), tolerance tau (µs).
#: Returns 0 when the call is allowed, else the microseconds to wait before the next try.
GCRA = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tau
if allow_at > now then
  return allow_at - now
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
"""


class RateLimitTimeout(RateLimitExceeded):
    """No slot of ``name`` could be had within the caller's timeout.

    A subclass of Dramatiq's :class:`~dramatiq.RateLimitExceeded`, so a worker logs it quietly
    and the Retries middleware schedules the message again with backoff.
    """

    def __init__(self, name: str, wait_s: float, timeout_s: float) -> None:
        super().__init__(
            f"rate limit {name!r}: next slot in {wait_s:.3f}s, beyond the {timeout_s:.3f}s timeout"
        )
        self.name = name
        self.wait_s = wait_s
        self.timeout_s = timeout_s


class RateLimiter:
    """Holds the aggregate call rate of all processes, per upstream name, to a :class:`RateLimit`.

    Parameters:
      client(redis.Redis): The Redis holding the limiter state (usually the broker's).
      namespace(str): Prefix of the keys, as for the broker.
      jitter(float): When waiting, sleep up to this fraction longer than told, so waiters
        spread out instead of all retrying at the same instant.
    """

    def __init__(self, client: redis.Redis, namespace: str, *, jitter: float = 0.1) -> None:
        self.client = client
        self.namespace = namespace
        self.jitter = jitter
        self._script = client.register_script(GCRA)

    def key(self, name: str) -> str:
        return f"{self.namespace}.ratelimit.{name}"

    def try_acquire(self, name: str, limit: RateLimit) -> float:
        """Take a slot of ``name`` if one is free now: 0.0 when taken, else seconds to wait."""
        interval_us = max(1, round(limit.period_s / limit.limit * 1_000_000))
        tau_us = interval_us * (max(1, limit.burst) - 1)
        wait_us = int(self._script(keys=[self.key(name)], args=[interval_us, tau_us]))
        return wait_us / 1_000_000

    def acquire(self, name: str, limit: RateLimit, timeout_s: float) -> None:
        """Wait for a slot of ``name``; raise :class:`RateLimitTimeout` rather than wait past
        ``timeout_s`` (the caller can then retry the job later instead of holding a worker)."""
        deadline = time.monotonic() + timeout_s
        while True:
            wait_s = self.try_acquire(name, limit)
            if wait_s <= 0:
                return
            if time.monotonic() + wait_s > deadline:
                raise RateLimitTimeout(name, wait_s, timeout_s)
            time.sleep(wait_s * (1 + random.uniform(0, self.jitter)))
