"""The archive's buffer: a Redis stream that a stage's record joins in its job-record round trip."""

from __future__ import annotations

from redis.client import Pipeline

from shared.payloads import PayloadStore

from .record import ArchiveRecord

#: A record larger than this goes to S3 on its own and the buffer holds a pointer (rare by design:
#: payloads are under 1 KB; the claim-check threshold is the same idea for messages).
MAX_INLINE_BYTES = 16 * 1024


def buffer_key(namespace: str) -> str:
    """One stream; its hash tag keeps the buffer and the archiver's lock in one cluster slot."""
    return f"{{{namespace}:archive}}.buffer"


class ArchiveBuffer:
    """Queues archive records on a caller's pipeline, so they cost no round trip of their own.

    Parameters:
      namespace(str): Key prefix.
      payloads(PayloadStore): Where an oversized record goes whole.
      max_inline_bytes(int)
    """

    def __init__(
        self, namespace: str, payloads: PayloadStore, *, max_inline_bytes: int = MAX_INLINE_BYTES
    ) -> None:
        self.key = buffer_key(namespace)
        self.payloads = payloads
        self.max_inline_bytes = max_inline_bytes

    def add(self, pipe: Pipeline, record: ArchiveRecord) -> None:
        """XADD the record (one command on ``pipe``); an oversized one is PUT to S3 first."""
        raw = record.to_json()
        if len(raw) > self.max_inline_bytes:
            tenant = PayloadStore.tenant_prefix(record.tenant)
            uri = self.payloads.put(f"{tenant}/archive/records/{record.id}.json", raw)
            stub = ArchiveRecord(
                id=record.id,
                job_id=record.job_id,
                tenant=record.tenant,
                stage=record.stage,
                message_id=record.message_id,
                attempt=record.attempt,
                at_ms=record.at_ms,
                error=record.error[:2000] if record.error else None,
                ref=uri,
            )
            raw = stub.to_json()
        # The routing fields travel beside the record, so the archiver never parses JSON.
        pipe.xadd(self.key, {"i": record.id, "t": record.tenant, "a": record.at_ms, "r": raw})
