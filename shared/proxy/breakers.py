"""A circuit breaker per provider (pybreaker), its state shared by every process through Redis.

pybreaker's ``call()`` holds a lock for the whole call, which would let one slow stream block
every other request to the same provider.  So the proxy asks :meth:`allows` before an attempt
and reports the outcome after it; pybreaker's state machine (closed, open, half-open) and its
Redis storage do the rest.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import pybreaker
import redis


@dataclass(frozen=True)
class BreakerCheck:
    """A breaker's shared state as one read saw it: whether an attempt may go, and whether a
    success would have anything to reset (pybreaker's lock and Redis writes are skipped if not)."""

    state: str
    failures: int
    allows: bool
    #: While it refuses: seconds until it lets a trial request through (half-open).
    retry_after_s: float | None = None

    @property
    def clean(self) -> bool:
        return self.state == pybreaker.STATE_CLOSED and self.failures == 0


class _Storage(pybreaker.CircuitRedisStorage):
    """pybreaker's Redis storage, plus the read of state, failures and opening time in one round trip."""

    def snapshot(self) -> tuple[str, int, datetime | None]:
        keys = (self._namespace("state"), self._namespace("fail_counter"), self._namespace("opened_at"))
        try:
            state, failures, opened_at = self._redis.mget(keys)
        except redis.RedisError:  # as pybreaker does: the fallback state (closed)
            return self._fallback_circuit_state, 0, None
        return (
            self._fallback_circuit_state
            if state is None
            else state
            if isinstance(state, str)
            else state.decode(),
            int(failures or 0),
            datetime.fromtimestamp(int(opened_at), UTC) if opened_at is not None else None,
        )


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
                storage = _Storage(
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

    def check(self, provider: str) -> BreakerCheck:
        """May an attempt go to this provider now? (An open breaker allows one trial after the timeout.)"""
        storage = self.breaker(provider)._state_storage
        assert isinstance(storage, _Storage)
        state, failures, opened_at = storage.snapshot()
        if state != pybreaker.STATE_OPEN or opened_at is None:
            return BreakerCheck(state, failures, True)
        left_s = self.reset_timeout_s - (datetime.now(UTC) - opened_at).total_seconds()
        return BreakerCheck(state, failures, left_s <= 0, max(0.0, left_s) if left_s > 0 else None)

    def allows(self, provider: str) -> bool:
        return self.check(provider).allows

    def success(self, provider: str, seen: BreakerCheck | None = None) -> None:
        """An attempt succeeded. ``seen``: the check made before it, if it found nothing to reset
        (closed, no failures) this costs nothing; failures counted meanwhile by other processes stay
        counted until the next success."""
        if (seen or self.check(provider)).clean:
            return  # nothing to reset: spare every request pybreaker's lock and its Redis writes
        with contextlib.suppress(pybreaker.CircuitBreakerError):
            self.breaker(provider).call(_succeed)

    def failure(self, provider: str) -> None:
        with contextlib.suppress(_Failed, pybreaker.CircuitBreakerError):
            self.breaker(provider).call(_fail)
