"""One writer per post reference: a Redis lock with a token and an expiry, released safely.

Two deliveries of one job (a redelivery racing a slow first run) must not both look a reference
up, find nothing and both create a post, nor publish concurrently. The lock is ``SET key token NX
PX ttl``; release deletes the key only while it still holds our token (a script), so a holder
whose lock expired can never release the next holder's. The expiry bounds how long a crashed
holder blocks the reference.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

__all__ = ["RefLock", "RefLocked"]

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RefLocked(Exception):
    """Another writer held the reference for longer than we were willing to wait."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(f"post reference busy after {waited_s:.1f}s")
        self.waited_s = waited_s


class RefLock:
    """Locks on ``<namespace>.wp.lock.<site>.<sha256(ref)>``.

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

    def key(self, site: str, ref: str) -> str:
        digest = hashlib.sha256(ref.encode("utf-8")).hexdigest()[:40]
        return f"{self.namespace}.wp.lock.{site}.{digest}"

    @contextmanager
    def hold(self, site: str, ref: str, *, ttl_s: float, wait_s: float) -> Iterator[None]:
        """Hold the lock of (site, ref) for the block; :class:`RefLocked` after ``wait_s``."""
        key = self.key(site, ref)
        token = secrets.token_hex(16)
        started = time.monotonic()
        delay = 0.01
        while not self.client.set(key, token, nx=True, px=max(1, int(ttl_s * 1000))):
            waited = time.monotonic() - started
            if waited >= wait_s:
                raise RefLocked(waited)
            self.sleep(min(delay, max(0.0, wait_s - waited)))
            delay = min(delay * 2, 0.25)
        try:
            yield
        finally:
            self._release(keys=[key], args=[token])
