"""Finding a job's archived records again: where each landed, and the record itself."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import cast

import redis

from shared.payloads import PayloadStore

from .flusher import location_key
from .record import ArchiveRecord, hour_of


def archive_ref(record: ArchiveRecord) -> str:
    """What a job record keeps of a stage's archive record: its id and time (``<id>@<ms>``)."""
    return f"{record.id}@{record.at_ms}"


def parse_ref(ref: str) -> tuple[str, int]:
    record, _, at_ms = ref.rpartition("@")
    return record, int(at_ms)


@dataclass(frozen=True)
class Location:
    """A record's place in S3 (``line`` counts from 1), or only its id while it waits in the buffer."""

    record_id: str
    uri: str | None = None
    line: int | None = None

    @property
    def archived(self) -> bool:
        return self.uri is not None


class ArchiveReader:
    """Reads the location index and the objects.

    Parameters:
      client(redis.Redis)
      namespace(str): Key prefix.
      payloads(PayloadStore)
    """

    def __init__(self, client: redis.Redis, namespace: str, payloads: PayloadStore) -> None:
        self.client = client
        self.namespace = namespace
        self.payloads = payloads

    def locate(self, tenant: str, refs: list[str]) -> list[Location]:
        """Where each ref's record is (one round trip for them all)."""
        prefix = PayloadStore.tenant_prefix(tenant)
        parsed = [parse_ref(ref) for ref in refs]
        with self.client.pipeline(transaction=False) as pipe:
            for record_id, at_ms in parsed:
                pipe.hget(location_key(self.namespace, prefix, hour_of(at_ms)), record_id)
            found = cast(list[bytes | None], pipe.execute())
        locations = []
        for (record_id, _), value in zip(parsed, found, strict=True):
            if value is None:
                locations.append(Location(record_id))
                continue
            key, _, line = value.decode().partition("\n")
            locations.append(Location(record_id, self.payloads.uri(key), int(line)))
        return locations

    def read(self, location: Location) -> ArchiveRecord | None:
        """The record at ``location``, with a pointer to an oversized one followed; None if unflushed."""
        if location.uri is None or location.line is None:
            return None
        lines = gzip.decompress(self.payloads.get(location.uri)).splitlines()
        record = ArchiveRecord.from_json(lines[location.line - 1])
        if record.id != location.record_id:
            raise ValueError(
                f"{location.uri} line {location.line} holds {record.id}, not {location.record_id}"
            )
        if record.ref:
            return ArchiveRecord.from_json(self.payloads.get(record.ref))
        return record
