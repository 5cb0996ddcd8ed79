"""Claim-check: a message too large for the stream is stored in S3 and only a pointer travels.

The stream stays lean (the workload's payloads are usually under 1 KB; the threshold only catches
the odd large one).  The pointer message keeps the routing fields, so queues, dead letters and
metrics work unchanged; workers fetch the body when they decode it.
"""

from __future__ import annotations

from dramatiq.encoder import Encoder, JSONEncoder, MessageData

from .payloads import PayloadStore

POINTER_OPTION = "claim_check"


class ClaimCheckEncoder(Encoder):
    """Encodes messages as JSON, sending bodies over ``threshold_bytes`` through S3.

    Parameters:
      store(PayloadStore): Where large bodies go, under ``<tenant>/claim-checks/``.
      threshold_bytes(int): Encoded size above which a message is claim-checked.
      inner(Encoder): The encoder of the bytes themselves (JSON by default).
    """

    def __init__(self, store: PayloadStore, threshold_bytes: int, inner: Encoder | None = None) -> None:
        self.store = store
        self.threshold_bytes = threshold_bytes
        self.inner = inner or JSONEncoder()

    def encode(self, data: MessageData) -> bytes:
        raw = self.inner.encode(data)
        if len(raw) <= self.threshold_bytes:
            return raw
        tenant = PayloadStore.tenant_prefix(data.get("options", {}).get("tenant"))
        uri = self.store.put(f"{tenant}/claim-checks/{data['message_id']}.json", raw)
        pointer = {k: data[k] for k in ("queue_name", "actor_name", "message_id", "message_timestamp")}
        pointer.update(args=[], kwargs={}, options={POINTER_OPTION: uri})
        return self.inner.encode(pointer)

    def decode(self, data: bytes) -> MessageData:
        message = self.inner.decode(data)
        uri = message.get("options", {}).get(POINTER_OPTION)
        if uri:
            return self.inner.decode(self.store.get(uri))
        return message
