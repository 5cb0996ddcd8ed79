"""Embedded vector store: Qdrant Edge (``qdrant-edge-py``), the Qdrant engine inside this process.

Why not qdrant-client's local mode: it stores points in Python dicts and scores and filters them
point by point in Python, ignoring HNSW parameters and payload indexes — measured on this
machine at 100,000 x 384: 184 ms a search without a filter, 873 ms with the cache's filter.
Qdrant Edge runs the server's segment code (Rust): HNSW graphs, payload indexes, a WAL; a
filtered search of a cache scope at 100,000 entries takes well under a millisecond.

Things to know:

* One shard directory is owned by one process (Qdrant Edge locks its WAL).  A second process
  that opens it gets :class:`StoreBusy`; the factory then runs that process on the exact layer
  only and logs it.  Set ``QDRANT_URL`` for a semantic layer shared by several processes.
* Edge has no background optimizer: new points land in a plain (exact-scored) segment, and
  :meth:`EdgeIndex.sweep` runs the optimizer, which builds HNSW for that tail once it exceeds the
  indexing threshold (~6,600 vectors) and vacuums deleted points.  The build holds the GIL: about
  0.65 ms per new vector on 2 cores (4.5 s for 7,000), once per ~6,600 stored answers; the pass is
  logged with its duration.  Until then the tail is scored exactly, which stays fast.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from .vector_index import (
    EXPIRY_FIELD,
    HNSW_EF,
    HNSW_EF_CONSTRUCT,
    HNSW_FULL_SCAN_KB,
    HNSW_M,
    HNSW_PAYLOAD_M,
    KEYWORD_FIELDS,
    Candidate,
    StoreBusy,
)

log = logging.getLogger(__name__)

#: Build HNSW for the plain tail past this many KB of vectors; keep two segments (the indexed
#: bulk and the tail), each at most ~200 MB of vectors.
INDEXING_THRESHOLD_KB = 10_000
MAX_SEGMENT_KB = 200_000
SEGMENTS = 2


def _schema(field: str) -> Any:
    if field == "tenant":
        return qe.KeywordIndexParams(is_tenant=True)
    return qe.PayloadSchemaType.Keyword


class EdgeIndex:
    """Parameters:
    directory(Path): The shard's directory (created when missing; named for the collection).
    dimension(int): Vector size.
    indexing_threshold_kb(int): Vectors of the plain tail (KB) past which a sweep builds HNSW.
    """

    def __init__(
        self, directory: Path, dimension: int, indexing_threshold_kb: int = INDEXING_THRESHOLD_KB
    ) -> None:
        self.directory = directory
        self.dimension = dimension
        self._lock = threading.Lock()
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(
                m=HNSW_M,
                ef_construct=HNSW_EF_CONSTRUCT,
                full_scan_threshold=HNSW_FULL_SCAN_KB,
                payload_m=HNSW_PAYLOAD_M,
            ),
            optimizers=qe.EdgeOptimizersConfig(
                indexing_threshold=indexing_threshold_kb,
                max_segment_size=MAX_SEGMENT_KB,
                default_segment_number=SEGMENTS,
            ),
        )
        try:
            if (directory / "wal").exists():
                self.shard = qe.EdgeShard.load(str(directory), config)
            else:
                directory.mkdir(parents=True, exist_ok=True)
                self.shard = qe.EdgeShard.create(str(directory), config)
        except Exception as e:
            if "WouldBlock" in str(e):
                raise StoreBusy(f"{directory} is open in another process") from None
            raise
        indexed = set(self.shard.info().payload_schema)
        for field in (*KEYWORD_FIELDS, EXPIRY_FIELD):
            if field not in indexed:
                schema = qe.PayloadSchemaType.Float if field == EXPIRY_FIELD else _schema(field)
                self.shard.update(qe.UpdateOperation.create_field_index(field, schema))

    @property
    def name(self) -> str:
        return self.directory.name

    def upsert(self, points: list[tuple[str, list[float], dict[str, Any]]]) -> None:
        batch = [qe.Point(pid, vector, payload) for pid, vector, payload in points]
        with self._lock:
            self.shard.update(qe.UpdateOperation.upsert_points(batch))

    def search(
        self,
        vector: list[float],
        *,
        match: dict[str, str],
        alive_at: float,
        threshold: float,
        limit: int,
    ) -> list[Candidate]:
        flt = self._filter(match, qe.FieldCondition(EXPIRY_FIELD, range=qe.RangeFloat(gt=alive_at)))
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(vector),
            filter=flt,
            score_threshold=threshold,
            with_payload=True,
            params=qe.SearchParams(hnsw_ef=HNSW_EF),
        )
        with self._lock:
            found = self.shard.query(request)
        return [Candidate(float(p.score), dict(p.payload or {})) for p in found]

    def delete(self, match: dict[str, str]) -> int:
        return self._delete(self._filter(match))

    def count(self, alive_at: float) -> int:
        flt = self._filter({}, qe.FieldCondition(EXPIRY_FIELD, range=qe.RangeFloat(gt=alive_at)))
        with self._lock:
            return int(self.shard.count(qe.CountRequest(exact=True, filter=flt)))

    def sweep(self, now: float) -> int:
        removed = self._delete(
            self._filter({}, qe.FieldCondition(EXPIRY_FIELD, range=qe.RangeFloat(lte=now)))
        )
        self.optimize()
        return removed

    def optimize(self) -> bool:
        """Index the plain tail / vacuum deletions when due (holds the GIL while it builds)."""
        started = time.monotonic()
        with self._lock:
            changed = bool(self.shard.optimize())
            info = self.shard.info() if changed else None
        if info is not None:
            log.info(
                "cache: embedded Qdrant optimized in %.1f s (%d points, %d indexed, %d segments)",
                time.monotonic() - started,
                info.points_count,
                info.indexed_vectors_count,
                info.segments_count,
            )
        return changed

    def info(self) -> qe.ShardInfo:
        """Points, indexed vectors, segments and payload indexes (for tests and the benchmark)."""
        with self._lock:
            return self.shard.info()

    def close(self) -> None:
        with self._lock:
            self.shard.close()

    def _delete(self, flt: qe.Filter) -> int:
        with self._lock:
            n = int(self.shard.count(qe.CountRequest(exact=True, filter=flt)))
            if n:
                self.shard.update(qe.UpdateOperation.delete_points_by_filter(flt))
        return n

    @staticmethod
    def _filter(match: dict[str, str], *extra: Any) -> qe.Filter:
        conditions: list[Any] = [
            qe.FieldCondition(key, match=qe.MatchValue(value)) for key, value in match.items()
        ]
        return qe.Filter(must=[*conditions, *extra])
