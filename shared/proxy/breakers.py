"""A circuit breaker per provider (pybreaker), its state shared by every process through Redis.

pybreaker's ``call()`` holds a lock for the whole call, which would let one slow stream block
every other request to the same provider.  So the proxy asks :meth:`allows` before an attempt
and reports the outcome after it; pybreaker's state machine (closed, open, half-open) and its
Redis storage do the rest.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime

import pybreaker
import redis


class _Failed(Exception):
    """Stands for a failed attempt when it is reported to the breaker."""


def _fail() -> None:
    raise _Failed


def _succeed() -> None:
    return None


class Breakers:
    """The breakers of all providers.

    Parameters:
      client(redis.Redis): Where the state lives (shared by all processes).
      namespace(str): Key prefix.
      fail_max(int): Consecutive failures that open a breaker.
      reset_timeout_s(float): How long it stays open before one trial request (half-open).
    """

    def __init__(self, client: redis.Redis, namespace: str, fail_max: int, reset_timeout_s: float) -> None:
        self.client = client
        self.namespace = namespace
        self.fail_max = fail_max
        self.reset_timeout_s = reset_timeout_s
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}
        self._lock = threading.Lock()

    def breaker(self, provider: str) -> pybreaker.CircuitBreaker:
        with self._lock:
            if provider not in self._breakers:
                storage = pybreaker.CircuitRedisStorage(
                    pybreaker.STATE_CLOSED, self.client, namespace=f"{self.namespace}.breaker.{provider}"
                )
                self._breakers[provider] = pybreaker.CircuitBreaker(
                    fail_max=self.fail_max,
                    reset_timeout=self.reset_timeout_s,
                    state_storage=storage,
                    name=provider,
                )
            return self._breakers[provider]

    def state(self, provider: str) -> str:
        """closed, open or half-open."""
        return str(self.breaker(provider).current_state)

    def allows(self, provider: str) -> bool:
        """May an attempt go to this provider now? (An open breaker allows one trial after the timeout.)"""
        breaker = self.breaker(provider)
        if breaker.current_state != pybreaker.STATE_OPEN:
            return True
        opened_at = breaker._state_storage.opened_at
        if opened_at is None:
            return True
        return (datetime.now(UTC) - opened_at).total_seconds() >= self.reset_timeout_s

    def success(self, provider: str) -> None:
        breaker = self.breaker(provider)
        if breaker.current_state == pybreaker.STATE_CLOSED and breaker.fail_counter == 0:
            return  # nothing to reset: spare every request pybreaker's lock and its Redis writes
        with contextlib.suppress(pybreaker.CircuitBreakerError):
            breaker.call(_succeed)

    def failure(self, provider: str) -> None:
        with contextlib.suppress(_Failed, pybreaker.CircuitBreakerError):
            self.breaker(provider).call(_fail)
