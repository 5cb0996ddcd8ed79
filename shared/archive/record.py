"""One archive record: what a stage run of a job was given and what it returned or raised."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any


def record_id(message_id: str, attempt: int) -> str:
    """The same for every delivery of one attempt, so a redelivered run's record is recognised."""
    return f"{message_id}.{attempt}"


def hour_of(at_ms: int) -> str:
    """The UTC hour a record belongs to (``YYYYMMDDHH``): its index bucket and object prefix."""
    return datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y%m%d%H")


@dataclass(frozen=True)
class ArchiveRecord:
    """A stage run's record, as archived (one JSON line).

    ``input`` is the message's args and kwargs; ``output`` the actor's result (None on failure);
    ``error`` the exception (None on success); ``ref`` the S3 URI holding the whole record when it
    was too large for the buffer (input and output are then None here).
    """

    id: str
    job_id: str
    tenant: str
    stage: str
    message_id: str
    attempt: int
    at_ms: int
    input: Any = None
    output: Any = None
    error: str | None = None
    ref: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), default=str, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> ArchiveRecord:
        data = json.loads(raw)
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})
