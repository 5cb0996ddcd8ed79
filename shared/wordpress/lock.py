"""One writer per post reference: a Redis lease with a token, renewed while its holder lives.

Two deliveries of one job (a redelivery racing a slow first run) must not both look a reference
up, find nothing and both create a post, nor publish concurrently. The lease is ``SET key token NX
PX lease``; while the block runs, a renewer thread extends it (only while it still holds our token)
every third of the lease, and release deletes it the same way, so a holder whose lease lapsed can
never extend or release the next holder's. A holder that dies stops renewing, and its lease frees
within ``lease_s`` rather than after the longest an upsert could take.

A waiter does not wait out another holder: after ``wait_s`` it gets :class:`RefLocked` with the
time the lease has left, so its job is retried then and its worker thread serves other messages.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

__all__ = ["RefLock", "RefLocked"]

log = logging.getLogger(__name__)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class RefLocked(Exception):
    """Another writer holds the reference; ``retry_after_s``: about when its lease ends."""

    def __init__(self, waited_s: float, retry_after_s: float) -> None:
        super().__init__(f"post reference busy after {waited_s:.1f}s")
        self.waited_s = waited_s
        self.retry_after_s = retry_after_s


class RefLock:
    """Leases on ``<namespace>.wp.lock.<site>.<sha256(ref)>``.

    Parameters:
      client(redis.Redis)
      namespace(str)
      sleep: Waits between tries (``time.sleep``; replaceable).
    """

    def __init__(
        self, client: redis.Redis, namespace: str, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.sleep = sleep
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    def key(self, site: str, ref: str) -> str:
        digest = hashlib.sha256(ref.encode("utf-8")).hexdigest()[:40]
        return f"{self.namespace}.wp.lock.{site}.{digest}"

    @contextmanager
    def hold(self, site: str, ref: str, *, lease_s: float, wait_s: float) -> Iterator[None]:
        """Hold the lease of (site, ref) for the block, renewed meanwhile; :class:`RefLocked`
        after ``wait_s`` of trying."""
        key = self.key(site, ref)
        token = secrets.token_hex(16)
        lease_ms = max(1, int(lease_s * 1000))
        started = time.monotonic()
        delay = 0.01
        while not self.client.set(key, token, nx=True, px=lease_ms):
            waited = time.monotonic() - started
            if waited >= wait_s:
                left_ms = int(self.client.pttl(key))
                raise RefLocked(waited, max(0.1, left_ms / 1000 if left_ms > 0 else 0.1))
            self.sleep(min(delay, max(0.0, wait_s - waited)))
            delay = min(delay * 2, 0.25)
        done = threading.Event()
        renewer = threading.Thread(
            target=self._keep, args=(key, token, lease_ms, done), name=f"lease({site})", daemon=True
        )
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()
            self._release(keys=[key], args=[token])

    def _keep(self, key: str, token: str, lease_ms: int, done: threading.Event) -> None:
        """Extend the lease every third of it until the block ends (or the lease was lost)."""
        while not done.wait(lease_ms / 3000):
            try:
                if not self._renew(keys=[key], args=[token, lease_ms]):
                    log.warning("a post reference lease lapsed before its holder finished")
                    return
            except redis.RedisError:
                continue  # Redis unreachable: try again; the lease lives on until it lapses
