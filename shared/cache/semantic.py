"""The semantic layer: embeddings of whole conversations, searched within one scope.

A point is one stored answer: the conversation's embedding, and a payload with the scope hash
(tenant, routed model, system prompt, parameters, prompt version, roles — all of which must match
exactly), the turns' texts (for the precise check), the answer and its expiry.  Searches filter
on scope, tenant, model, prompt and expiry through payload indexes (:mod:`.vector_index`).

The collection is named for the embedding model and its version: vectors of two models never
mix, and switching the model starts a fresh collection (the old one is left to be dropped).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from .vector_index import Candidate, VectorIndex

__all__ = ["Candidate", "SemanticLayer", "collection_name"]


def collection_name(embedder_id: str) -> str:
    """``pressline_cache__<model>-<version>``: one collection per embedding model and version."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in embedder_id.lower())
    return f"pressline_cache__{safe}"


class SemanticLayer:
    """Parameters:
    index(VectorIndex): Embedded (Qdrant Edge) or a Qdrant server, named by :func:`collection_name`.
    """

    def __init__(self, index: VectorIndex) -> None:
        self.index = index
        self.collection = index.name

    def search(
        self,
        vector: list[float],
        *,
        tenant: str,
        model: str,
        scope: str,
        prompt: str,
        threshold: float,
        limit: int,
        now: float | None = None,
    ) -> list[Candidate]:
        return self.index.search(
            vector,
            match={"scope": scope, "tenant": tenant, "model": model, "prompt": prompt},
            alive_at=time.time() if now is None else now,
            threshold=threshold,
            limit=limit,
        )

    def upsert(self, point_id: str, vector: list[float], payload: dict[str, Any]) -> None:
        """Store under ``point_id`` (the exact key's hex digest: one point per canonical request)."""
        self.index.upsert([(str(uuid.UUID(point_id[:32])), vector, payload)])

    def purge_prompt(self, tenant: str, prompt_name: str) -> int:
        return self.index.delete({"tenant": tenant, "prompt_name": prompt_name})

    def sweep(self, now: float | None = None) -> int:
        """Delete the expired points; how many there were."""
        return self.index.sweep(time.time() if now is None else now)

    def count(self, now: float | None = None) -> int:
        return self.index.count(time.time() if now is None else now)
