"""HTTP ``Idempotency-Key`` with Stripe's semantics, so a retried API request has one effect.

The first request with a key takes an in-flight lock on it and runs; when it is done its response
is stored and every later request with the same key and the same request (method, path, body)
gets that response replayed. The same key with a different request is a client bug (422); a
duplicate that arrives while the first still runs is told to retry later (409). Keys are scoped
per tenant and kept for ``ttl_s`` (24 h). A handler that fails (5xx) releases the key so the
client's retry runs afresh; a handler that crashes leaves a lock that expires after ``lock_s``.

Each transition is one Lua script on one Redis hash, so concurrent requests cannot both proceed.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis

__all__ = [
    "InFlight",
    "InvalidIdempotencyKeyError",
    "Mismatch",
    "Outcome",
    "Proceed",
    "Replay",
    "RequestIdempotency",
    "fingerprint",
]

MAX_KEY_LENGTH = 255

#: KEYS[1] record; ARGV fingerprint, lock ms. Takes the lock, or says why not.
_BEGIN = """
local rec = redis.call('HMGET', KEYS[1], 'state', 'fp', 'response')
if not rec[1] then
  redis.call('HSET', KEYS[1], 'state', 'in_flight', 'fp', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'proceed'}
end
if rec[2] ~= ARGV[1] then return {'mismatch'} end
if rec[1] == 'in_flight' then return {'in_flight'} end
return {'replay', rec[3]}
"""

#: KEYS[1] record; ARGV fingerprint, response JSON, ttl s. Stores the response unless another
#: request's record is there (a lock that expired and was taken over with another body, or done).
_COMPLETE = """
local rec = redis.call('HMGET', KEYS[1], 'state', 'fp')
if rec[1] and (rec[1] ~= 'in_flight' or rec[2] ~= ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'fp', ARGV[1], 'response', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

#: KEYS[1] record. Drops an in-flight lock; a stored response is never dropped.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'state') == 'in_flight' then return redis.call('DEL', KEYS[1]) end
return 0
"""


class InvalidIdempotencyKeyError(ValueError):
    """The header's value cannot be a key (empty, longer than 255, not printable ASCII): answer 400."""


@dataclass(frozen=True)
class Proceed:
    """The caller owns the key: run the request, then :meth:`~RequestIdempotency.complete` or release."""


@dataclass(frozen=True)
class Replay:
    """The request was done before: answer with this response, do nothing else."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Mismatch:
    """The key was used for a different request: answer 422."""


@dataclass(frozen=True)
class InFlight:
    """The first request with this key is still running: answer 409, the client retries later."""


Outcome = Proceed | Replay | Mismatch | InFlight


def fingerprint(method: str, path: str, body: object) -> str:
    """SHA-256 of the request: ``body`` is raw bytes, or parsed JSON (hashed in canonical form,
    so key order and whitespace do not make two equal requests differ)."""
    if isinstance(body, bytes | bytearray):
        canonical = bytes(body)
    else:
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))  # length-prefixed: no two splits hash alike
        digest.update(part)
    return digest.hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RequestIdempotency:
    """Idempotency-Key records in Redis, one hash per tenant and key.

    Parameters:
      client(redis.Redis)
      namespace(str): Key prefix.
      ttl_s(int): How long a completed response is replayed.
      lock_s(float): How long an in-flight key stays locked without completing.
    """

    def __init__(
        self, client: redis.Redis, namespace: str, *, ttl_s: int = 24 * 3600, lock_s: float = 60
    ) -> None:
        if ttl_s <= 0 or lock_s <= 0:
            raise ValueError("ttl_s and lock_s must be positive")
        self.client = client
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.lock_s = lock_s
        self._begin = client.register_script(_BEGIN)
        self._complete = client.register_script(_COMPLETE)
        self._release = client.register_script(_RELEASE)

    def key(self, tenant: str, idempotency_key: str) -> str:
        """The record's Redis key. The client's key is hashed: fixed length, and no tenant/key split
        of one string can produce another's Redis key."""
        if not tenant:
            raise ValueError("tenant is required")
        if not (
            0 < len(idempotency_key) <= MAX_KEY_LENGTH
            and idempotency_key.isascii()
            and idempotency_key.isprintable()
        ):
            raise InvalidIdempotencyKeyError("Idempotency-Key must be 1-255 printable ASCII characters")
        hashed = hashlib.sha256(idempotency_key.encode("ascii")).hexdigest()
        return f"{self.namespace}.request-idem.{tenant}.{hashed}"

    def begin(self, tenant: str, idempotency_key: str, fingerprint: str) -> Outcome:
        """Claim the key for this request, or say what to answer instead."""
        reply = self._begin(
            keys=[self.key(tenant, idempotency_key)], args=[fingerprint, max(1, int(self.lock_s * 1000))]
        )
        verdict = _text(reply[0])
        if verdict == "proceed":
            return Proceed()
        if verdict == "mismatch":
            return Mismatch()
        if verdict == "in_flight":
            return InFlight()
        stored = json.loads(_text(reply[1]))
        return Replay(
            status=int(stored["status"]),
            headers=dict(stored["headers"]),
            body=base64.b64decode(stored["body"]),
        )

    def complete(
        self,
        tenant: str,
        idempotency_key: str,
        fingerprint: str,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
    ) -> bool:
        """Store the response to replay. False when the key now belongs to a different request."""
        response = json.dumps(
            {"status": status, "headers": dict(headers), "body": base64.b64encode(body).decode("ascii")}
        )
        done = self._complete(
            keys=[self.key(tenant, idempotency_key)], args=[fingerprint, response, self.ttl_s]
        )
        return int(done) == 1

    def release(self, tenant: str, idempotency_key: str) -> bool:
        """Drop an in-flight lock (after a 5xx or an exception) so the client may retry."""
        return int(self._release(keys=[self.key(tenant, idempotency_key)])) == 1
