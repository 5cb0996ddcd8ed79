"""The one interface the semantic layer needs from a vector store, and the settings both share.

Two backends implement it: Qdrant Edge in this process (:mod:`.edge_index`, the default) and a
Qdrant server through ``qdrant-client`` (:mod:`.server_index`, with ``QDRANT_URL``).  Both get the
same HNSW parameters and the same payload indexes, set explicitly, so a filter on the fields the
cache searches by never scans payloads point by point.

Filters are deliberately narrow: equality on keyword fields (``match``) and one expiry bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

#: HNSW graph: 16 links per node, a 100-wide build beam (recall ~0.99 on 384-d MiniLM vectors).
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
#: Below this many KB of matching vectors a filtered search scores the matches exactly (through
#: the payload index) instead of walking the graph: ~6,600 MiniLM vectors.  A cache scope (tenant,
#: model, system prompt, parameters, prompt version) is far smaller, so it is answered that way.
HNSW_FULL_SCAN_KB = 10_000
#: No per-value subgraphs: they tripled the build time (143 s vs 51 s for 100,000 vectors on 2
#: cores) and buy nothing when every search is narrowed by a selective payload index first.
HNSW_PAYLOAD_M = 0
#: Search beam.
HNSW_EF = 64

#: Keyword fields with a payload index (tenant first: it is the multitenancy key), and the float
#: field expiry is checked on.
KEYWORD_FIELDS = ("tenant", "model", "scope", "prompt", "prompt_name")
EXPIRY_FIELD = "expires_at"


class StoreBusy(RuntimeError):
    """Another process owns the embedded store's directory."""


@dataclass(frozen=True)
class Candidate:
    """A stored answer whose conversation is near the request's."""

    score: float
    payload: dict[str, Any]


class VectorIndex(Protocol):
    """A collection of points: a vector, and a payload holding at least the indexed fields."""

    @property
    def name(self) -> str:
        """The collection (named for the embedding model and version)."""

    def upsert(self, points: list[tuple[str, list[float], dict[str, Any]]]) -> None:
        """Insert or replace ``(uuid, vector, payload)`` points; durable when it returns."""

    def search(
        self,
        vector: list[float],
        *,
        match: dict[str, str],
        alive_at: float,
        threshold: float,
        limit: int,
    ) -> list[Candidate]:
        """Nearest points (cosine >= ``threshold``) whose fields equal ``match`` and that expire
        after ``alive_at``, best first."""

    def delete(self, match: dict[str, str]) -> int:
        """Delete the points whose fields equal ``match``; how many."""

    def count(self, alive_at: float) -> int:
        """Points that expire after ``alive_at``."""

    def sweep(self, now: float) -> int:
        """Delete the points expired at ``now`` (and do the store's upkeep); how many were deleted."""

    def close(self) -> None:
        """Release the store (flushes an embedded one)."""
