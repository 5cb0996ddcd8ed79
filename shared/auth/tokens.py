"""API tokens: minted per tenant with one role, stored only as a hash, expirable and revocable.

A token reads ``pl_<token_id>.<secret>``. The id names the Redis record (one ``HGETALL`` per
request); the secret is 32 random bytes (``secrets.token_urlsafe``) and only its SHA-256 is
stored. Plain SHA-256 is the right hash here: slow password hashes (bcrypt, scrypt, argon2) exist
to make guessing low-entropy passwords expensive, and nobody can enumerate 2**256 secrets, so
they would only add tens of milliseconds to every request. A stolen Redis dump therefore yields
no usable token. The stored hash is compared in constant time.

Records outlive their token by :data:`RETENTION_S` so an expired or revoked token is reported as
such (a clearer 401) rather than as unknown; after that the record expires by itself.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import redis
from redis.typing import EncodableT, FieldT

from shared.auth.scopes import Principal, Role, scopes_for

__all__ = [
    "LAST_USED_INTERVAL_S",
    "RETENTION_S",
    "AuthenticationError",
    "TokenInfo",
    "TokenStore",
]

Reason = Literal["missing", "malformed", "unknown", "expired", "revoked"]
REASONS: frozenset[str] = frozenset(get_args(Reason))

#: How long a record is kept after its token expired or was revoked.
RETENTION_S = 30 * 24 * 3600
#: The last-used time is written at most this often per token, to keep a write off most requests.
LAST_USED_INTERVAL_S = 60.0

_TOKEN = re.compile(r"pl_(?P<id>[0-9a-f]{16})\.(?P<secret>[A-Za-z0-9_-]{43})")
TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_MAX_NAME = 200

#: KEYS[1] record; ARGV now, interval. Sets last_used_at unless recent; never recreates a record.
_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_used_at') or '0') or 0
if last > tonumber(ARGV[1]) - tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1])
return 1
"""

#: KEYS[1] record; ARGV now, retention. 1 revoked now, 0 already revoked, -1 no such token.
_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1]) == 0 then return 0 end
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


class AuthenticationError(Exception):
    """No valid token (answer 401). ``reason`` is one of :data:`REASONS`; no token text is kept."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason: Reason = reason


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token: never its plaintext or hash. Times are Unix seconds."""

    token_id: str
    tenant: str
    role: Role
    name: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _time(record: Mapping[str, str], field: str) -> float | None:
    raw = record.get(field)
    return float(raw) if raw else None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


class TokenStore:
    """Mints, authenticates, lists and revokes API tokens kept in Redis.

    Parameters:
      client(redis.Redis)
      namespace(str): Key prefix.
      clock: Wall-clock seconds, replaceable in tests.
      last_used_interval_s(float): Minimum spacing of last-used writes per token.
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        *,
        clock: Callable[[], float] = time.time,
        last_used_interval_s: float = LAST_USED_INTERVAL_S,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.clock = clock
        self.last_used_interval_s = last_used_interval_s
        self._touch = client.register_script(_TOUCH)
        self._revoke = client.register_script(_REVOKE)

    def key(self, token_id: str) -> str:
        return f"{self.namespace}.auth.token.{token_id}"

    def _index(self, tenant: str | None) -> str:
        return f"{self.namespace}.auth.tokens" if tenant is None else f"{self.namespace}.auth.tenant.{tenant}"

    def mint(
        self, tenant: str, role: Role | str, *, name: str = "", ttl_s: float | None = None
    ) -> tuple[str, TokenInfo]:
        """Create a token; return its plaintext (shown once, never stored) and its info."""
        if not TENANT.fullmatch(tenant):
            raise ValueError(f"bad tenant {tenant!r}: letters, digits, '-' and '_', at most 64")
        role = Role(role)
        if len(name) > _MAX_NAME:
            raise ValueError(f"token name longer than {_MAX_NAME} characters")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError("ttl_s must be positive (or None for a token that does not expire)")
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        now = self.clock()
        info = TokenInfo(
            token_id=token_id,
            tenant=tenant,
            role=role,
            name=name,
            created_at=now,
            expires_at=None if ttl_s is None else now + ttl_s,
            revoked_at=None,
            last_used_at=None,
        )
        record: dict[FieldT, EncodableT] = {
            "tenant": tenant,
            "role": role.value,
            "name": name,
            "hash": _hash(secret),
            "created_at": repr(now),
        }
        if info.expires_at is not None:
            record["expires_at"] = repr(info.expires_at)
        key = self.key(token_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=record)
            if ttl_s is not None:
                # Relative, so the callers' clocks and Redis's need not agree.
                pipe.expire(key, math.ceil(ttl_s) + RETENTION_S)
            pipe.sadd(self._index(None), token_id)
            pipe.sadd(self._index(tenant), token_id)
            pipe.execute()
        return f"pl_{token_id}.{secret}", info

    def authenticate(self, plaintext: str | None) -> Principal:
        """The principal behind ``plaintext``; raise :class:`AuthenticationError` when there is none.

        A wrong secret for an existing id is reported as ``unknown``: whether an id exists, is
        expired or revoked is only told to a caller who holds its secret.
        """
        if not plaintext:
            raise AuthenticationError("missing")
        match = _TOKEN.fullmatch(plaintext)
        if match is None:
            raise AuthenticationError("malformed")
        token_id = match["id"]
        record = self._record(token_id)
        presented = _hash(match["secret"]).encode("ascii")
        stored = record.get("hash", "").encode("ascii") if record else b""
        if not record or not hmac.compare_digest(stored, presented):
            raise AuthenticationError("unknown")
        now = self.clock()
        if record.get("revoked_at"):
            raise AuthenticationError("revoked")
        expires_at = _time(record, "expires_at")
        if expires_at is not None and now >= expires_at:
            raise AuthenticationError("expired")
        try:
            role = Role(record["role"])
        except (KeyError, ValueError):
            raise AuthenticationError("unknown") from None
        last_used = _time(record, "last_used_at") or 0.0
        if now - last_used >= self.last_used_interval_s:
            self._touch(keys=[self.key(token_id)], args=[repr(now), repr(self.last_used_interval_s)])
        return Principal(tenant=record["tenant"], token_id=token_id, role=role, scopes=scopes_for(role))

    def revoke(self, token_id: str) -> bool:
        """Revoke a token; True when it was revoked now, False when unknown or already revoked."""
        result = self._revoke(keys=[self.key(token_id)], args=[repr(self.clock()), RETENTION_S])
        return int(result) == 1

    def info(self, token_id: str) -> TokenInfo | None:
        record = self._record(token_id)
        return self._info(token_id, record) if record else None

    def list(self, tenant: str | None = None) -> builtins.list[TokenInfo]:
        """Tokens of one tenant (or all), oldest first; records that expired away are pruned."""
        index = self._index(tenant)
        ids = sorted(_text(raw) for raw in self.client.smembers(index))
        with self.client.pipeline(transaction=False) as pipe:
            for token_id in ids:
                pipe.hgetall(self.key(token_id))
            records = pipe.execute()
        found: builtins.list[TokenInfo] = []
        gone: builtins.list[str] = []
        for token_id, raw in zip(ids, records, strict=True):
            if raw:
                found.append(self._info(token_id, {_text(k): _text(v) for k, v in raw.items()}))
            else:
                gone.append(token_id)
        if gone:
            self.client.srem(index, *gone)
        return sorted(found, key=lambda info: (info.created_at, info.token_id))

    def _record(self, token_id: str) -> dict[str, str]:
        raw = self.client.hgetall(self.key(token_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    @staticmethod
    def _info(token_id: str, record: Mapping[str, str]) -> TokenInfo:
        return TokenInfo(
            token_id=token_id,
            tenant=record.get("tenant", ""),
            role=Role(record.get("role", Role.READER)),
            name=record.get("name", ""),
            created_at=_time(record, "created_at") or 0.0,
            expires_at=_time(record, "expires_at"),
            revoked_at=_time(record, "revoked_at"),
            last_used_at=_time(record, "last_used_at"),
        )
