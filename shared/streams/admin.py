"""Read-only views of queues for operators and metrics: what is waiting, held, delayed, dead."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import redis
from dramatiq.common import current_millis

from .keys import GROUP, QueueKeys

#: A stream entry as redis-py returns it from a client that does not decode responses.
Entry = tuple[bytes, dict[bytes, bytes]]


@dataclass(frozen=True)
class QueueStats:
    """The health of one queue, read straight from Redis.

    ``backlog`` counts messages not yet delivered to any consumer; ``pending`` counts messages
    delivered and not yet acked (including those held by a crashed consumer until recovery).
    """

    queue_name: str
    backlog: int
    pending: int
    delayed: int
    dead: int
    oldest_waiting_age_ms: int
    oldest_pending_age_ms: int


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    message: dict[str, Any]
    error: str
    attempts: int
    failed_at_ms: int


def _entry_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def _next_id(entry_id: bytes | str) -> str:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, seq = text.split("-", 1)
    return f"{ms}-{int(seq) + 1}"


class QueueAdmin:
    """Inspects the queues of one namespace."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def stats(self, queue_name: str) -> QueueStats:
        keys = QueueKeys(self.namespace, queue_name)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.xinfo_groups(keys.stream)
            pipe.xpending(keys.stream, GROUP)
            pipe.zcard(keys.delayed)
            pipe.xlen(keys.dead)
            pipe.xlen(keys.stream)
            groups, pending, delayed, dead, length = pipe.execute(raise_on_error=False)
        if isinstance(groups, Exception):  # no stream yet
            groups = []
        if isinstance(pending, Exception):
            pending = {"pending": 0, "min": None}
        group = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
        now = current_millis()
        backlog, oldest_waiting = 0, 0
        last = group["last-delivered-id"] if group is not None else "0-0"
        waiting = cast(list[Entry], self.client.xrange(keys.stream, min=_next_id(last), max="+", count=1))
        if waiting:
            oldest_waiting = max(0, now - _entry_ms(waiting[0][0]))
            lag = group.get("lag") if group is not None else None
            # Redis' lag can be wrong after a restart (seen: 2,489 on a 39-entry stream); it can
            # never exceed the stream's length, so past that the entries are counted instead.
            if lag is not None and isinstance(length, int) and int(lag) <= length:
                backlog = int(lag)
            else:
                backlog = self._count_after(keys.stream, last)
        oldest_pending = max(0, now - _entry_ms(pending["min"])) if pending.get("min") else 0
        return QueueStats(
            queue_name=queue_name,
            backlog=backlog,
            pending=int(pending["pending"]),
            delayed=int(delayed) if not isinstance(delayed, Exception) else 0,
            dead=int(dead) if not isinstance(dead, Exception) else 0,
            oldest_waiting_age_ms=oldest_waiting,
            oldest_pending_age_ms=oldest_pending,
        )

    def _count_after(self, stream: str, last: bytes | str) -> int:
        count, start = 0, _next_id(last)
        while True:
            batch = cast(list[Entry], self.client.xrange(stream, min=start, max="+", count=1000))
            count += len(batch)
            if len(batch) < 1000:
                return count
            start = _next_id(batch[-1][0])

    def dead_letters(self, queue_name: str, count: int = 100) -> list[DeadLetter]:
        """The most recent dead-lettered messages, newest first."""
        dead = QueueKeys(self.namespace, queue_name).dead
        entries = cast(list[Entry], self.client.xrevrange(dead, count=count))
        result = []
        for entry_id, fields in entries:
            result.append(
                DeadLetter(
                    entry_id=entry_id.decode(),
                    message=_decode_json(fields.get(b"m", b"{}")),
                    error=fields.get(b"error", b"").decode(errors="replace"),
                    attempts=int(fields.get(b"attempts", 0)),
                    failed_at_ms=int(fields.get(b"failed_at", 0)),
                )
            )
        return result


def _decode_json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"undecodable": raw.decode(errors="replace")}
    return value if isinstance(value, dict) else {"value": value}
