"""The prompt library: named prompts with numbered versions, per tenant, in Redis (with AOF).

A prompt has versions 1, 2, 3, ... (never renumbered, never deleted) and one *current* version.
Publishing adds a version and makes it current; rolling back makes an earlier version current.
Each change is one Lua script, so two publishers never get the same number and the current
version always exists.  ``on_change`` is called after publish and rollback (the response cache
purges the prompt's entries there).

Keys: ``{ns}.prompts.{tenant}.{name}`` (hash: current, latest, created_at, updated_at),
``{ns}.prompts.{tenant}.{name}.versions`` (hash: version -> JSON), ``{ns}.prompts.{tenant}``
(sorted set of names by creation time).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
MAX_TEXT_CHARS = 100_000
MAX_NOTE_CHARS = 500

#: KEYS: meta, versions, index. ARGV: name, text/note JSON, now_ms, create-only flag.
_PUBLISH = """
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if ARGV[4] == '0' and redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
local v = redis.call('HINCRBY', KEYS[1], 'latest', 1)
redis.call('HSET', KEYS[2], tostring(v), ARGV[2])
redis.call('HSET', KEYS[1], 'current', v, 'updated_at', ARGV[3])
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[3])
redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[1])
return v
"""

#: KEYS: meta, versions. ARGV: version, now_ms.
_ROLLBACK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return -3 end
local previous = redis.call('HGET', KEYS[1], 'current')
redis.call('HSET', KEYS[1], 'current', ARGV[1], 'updated_at', ARGV[2])
return tonumber(previous)
"""


class PromptError(ValueError):
    """A bad name, text or version; ``code`` says which (``invalid``, ``not_found``, ``exists``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PromptVersion:
    name: str
    version: int
    text: str
    note: str
    created_at_ms: int

    @property
    def ref(self) -> str:
        """``name@version``: what the cache keys on."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Prompt:
    name: str
    current: int
    latest: int
    created_at_ms: int
    updated_at_ms: int


class PromptStore:
    """Parameters:
    client(redis.Redis): The durable Redis (AOF), like the cost ledger's.
    namespace(str)
    on_change: Called with (tenant, name) after a publish or rollback changed the current version.
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        on_change: Callable[[str, str], object] | None = None,
    ) -> None:
        self.client = client
        self.ns = namespace
        self.on_change = on_change
        self._publish = client.register_script(_PUBLISH)
        self._rollback = client.register_script(_ROLLBACK)

    def _keys(self, tenant: str, name: str) -> tuple[str, str, str]:
        meta = f"{self.ns}.prompts.{tenant}.{name}"
        return meta, f"{meta}.versions", f"{self.ns}.prompts.{tenant}"

    # -- writing ----------------------------------------------------------------------------------

    def create(self, tenant: str, name: str, text: str, note: str = "") -> PromptVersion:
        """A new prompt at version 1; PromptError('exists') when the name is taken."""
        return self._write(tenant, name, text, note, create=True)

    def publish(self, tenant: str, name: str, text: str, note: str = "") -> PromptVersion:
        """A new version of an existing prompt, made current."""
        return self._write(tenant, name, text, note, create=False)

    def rollback(self, tenant: str, name: str, version: int) -> Prompt:
        """Make an earlier (or any existing) version current again."""
        _check_name(name)
        meta, versions, _ = self._keys(tenant, name)
        result = int(cast(Any, self._rollback(keys=[meta, versions], args=[version, _now_ms()])))
        if result == -2:
            raise PromptError("not_found", f"there is no prompt named {name!r}")
        if result == -3:
            raise PromptError("not_found", f"prompt {name!r} has no version {version}")
        self._changed(tenant, name)
        prompt = self.get(tenant, name)
        assert prompt is not None
        return prompt

    def _write(self, tenant: str, name: str, text: str, note: str, *, create: bool) -> PromptVersion:
        _check_name(name)
        if not isinstance(text, str) or not text.strip():
            raise PromptError("invalid", "text must be a non-empty string")
        if len(text) > MAX_TEXT_CHARS:
            raise PromptError("invalid", f"text is longer than {MAX_TEXT_CHARS} characters")
        if len(note) > MAX_NOTE_CHARS:
            raise PromptError("invalid", f"note is longer than {MAX_NOTE_CHARS} characters")
        now = _now_ms()
        meta, versions, index = self._keys(tenant, name)
        record = json.dumps({"text": text, "note": note, "created_at_ms": now}, ensure_ascii=False)
        version = int(
            cast(
                Any,
                self._publish(keys=[meta, versions, index], args=[name, record, now, "1" if create else "0"]),
            )
        )
        if version == -1:
            raise PromptError("exists", f"a prompt named {name!r} already exists; publish a new version")
        if version == -2:
            raise PromptError("not_found", f"there is no prompt named {name!r}")
        if not create:
            self._changed(tenant, name)
        return PromptVersion(name, version, text, note, now)

    def _changed(self, tenant: str, name: str) -> None:
        if self.on_change is not None:
            self.on_change(tenant, name)

    # -- reading ----------------------------------------------------------------------------------

    def get(self, tenant: str, name: str) -> Prompt | None:
        _check_name(name)
        raw = cast(dict[bytes, bytes], self.client.hgetall(self._keys(tenant, name)[0]))
        if not raw:
            return None
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return Prompt(name, int(f["current"]), int(f["latest"]), int(f["created_at"]), int(f["updated_at"]))

    def version(self, tenant: str, name: str, version: int | None = None) -> PromptVersion | None:
        """One version (the current one when ``version`` is None)."""
        prompt = self.get(tenant, name)
        if prompt is None:
            return None
        number = prompt.current if version is None else version
        raw = cast(bytes | None, self.client.hget(self._keys(tenant, name)[1], str(number)))
        if raw is None:
            return None
        record = json.loads(raw)
        return PromptVersion(
            name, number, record["text"], record.get("note", ""), int(record["created_at_ms"])
        )

    def versions(self, tenant: str, name: str) -> list[PromptVersion]:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self._keys(tenant, name)[1]))
        out = []
        for number, value in raw.items():
            record = json.loads(value)
            out.append(
                PromptVersion(
                    name, int(number), record["text"], record.get("note", ""), int(record["created_at_ms"])
                )
            )
        return sorted(out, key=lambda v: v.version)

    def list(self, tenant: str, *, offset: int = 0, limit: int = 100) -> list[Prompt]:
        names = cast(list[bytes], self.client.zrange(self._keys(tenant, "x")[2], offset, offset + limit - 1))
        prompts = [self.get(tenant, n.decode()) for n in names]
        return [p for p in prompts if p is not None]

    def resolve(self, tenant: str, ref: str) -> PromptVersion:
        """``name`` (the current version) or ``name@3``; PromptError when there is no such version."""
        name, sep, number = ref.partition("@")
        version: int | None = None
        if sep:
            if not number.isdigit() or int(number) < 1:
                raise PromptError("invalid", f"bad prompt reference {ref!r}: use name or name@version")
            version = int(number)
        found = self.version(tenant, name, version)
        if found is None:
            raise PromptError("not_found", f"there is no prompt {ref!r}")
        return found


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise PromptError(
            "invalid", "a prompt name is 1-64 characters: lower-case letters, digits, '_', '-', '.'"
        )


def _now_ms() -> int:
    return int(time.time() * 1000)
