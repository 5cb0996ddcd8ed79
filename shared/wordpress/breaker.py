"""A circuit breaker per WordPress site, its state in Redis so every worker process shares it.

The proxy's :class:`shared.proxy.breakers.Breakers` (pybreaker's state machine on
``CircuitRedisStorage``, asked before an attempt and told the outcome after it, never holding
pybreaker's lock during a request) is reused as it is, under its own key prefix
``<namespace>.wp.breaker.<site>``, so a site and an LLM provider of the same name never share one.
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from shared.proxy.breakers import Breakers

__all__ = ["SiteBreakers"]


class SiteBreakers:
    """The breakers of all WordPress sites.

    Parameters:
      client(redis.Redis): Where the state lives (decode_responses=False, as pybreaker needs).
      namespace(str): Key prefix.
      fail_max(int): Consecutive failures that open a site's breaker.
      reset_timeout_s(float): How long it stays open before one trial request (half-open).
    """

    def __init__(self, client: redis.Redis, namespace: str, fail_max: int, reset_timeout_s: float) -> None:
        self._breakers = Breakers(client, f"{namespace}.wp", fail_max, reset_timeout_s)
        self.reset_timeout_s = reset_timeout_s

    def state(self, site: str) -> str:
        """closed, open or half-open."""
        return self._breakers.state(site)

    def allows(self, site: str) -> bool:
        return self._breakers.allows(site)

    def retry_after_s(self, site: str) -> float:
        """Seconds until an open breaker lets a trial request through (0 when it would now)."""
        opened_at = self._breakers.breaker(site)._state_storage.opened_at
        if opened_at is None:
            return 0.0
        elapsed = (datetime.now(UTC) - opened_at).total_seconds()
        return max(0.0, self.reset_timeout_s - elapsed)

    def success(self, site: str) -> None:
        self._breakers.success(site)

    def failure(self, site: str) -> None:
        self._breakers.failure(site)
