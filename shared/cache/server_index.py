"""Vector store on a Qdrant server (``QDRANT_URL``) through ``qdrant-client``: shared by every
process and instance, where the embedded store (:mod:`.edge_index`) belongs to one process."""

from __future__ import annotations

from typing import Any

from qdrant_client import QdrantClient, models

from .vector_index import (
    EXPIRY_FIELD,
    HNSW_EF,
    HNSW_EF_CONSTRUCT,
    HNSW_FULL_SCAN_KB,
    HNSW_M,
    HNSW_PAYLOAD_M,
    KEYWORD_FIELDS,
    Candidate,
)

HNSW = models.HnswConfigDiff(
    m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=HNSW_FULL_SCAN_KB, payload_m=HNSW_PAYLOAD_M
)
SEARCH = models.SearchParams(hnsw_ef=HNSW_EF, exact=False)


def _schema(field: str) -> Any:
    if field == EXPIRY_FIELD:
        return models.PayloadSchemaType.FLOAT
    if field == "tenant":
        return models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
    return models.PayloadSchemaType.KEYWORD


class ServerIndex:
    """Parameters:
    client(QdrantClient): Connected to the server.
    collection(str): Named for the embedding model and version.
    dimension(int): Vector size.
    """

    def __init__(self, client: QdrantClient, collection: str, dimension: int) -> None:
        self.client = client
        self.collection = collection
        self.dimension = dimension
        if not client.collection_exists(collection):
            client.create_collection(
                collection,
                vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE),
                hnsw_config=HNSW,
            )
        indexed = set(client.get_collection(collection).payload_schema or {})
        for field in (*KEYWORD_FIELDS, EXPIRY_FIELD):
            if field not in indexed:
                client.create_payload_index(collection, field, field_schema=_schema(field), wait=True)

    @property
    def name(self) -> str:
        return self.collection

    def upsert(self, points: list[tuple[str, list[float], dict[str, Any]]]) -> None:
        structs = [models.PointStruct(id=pid, vector=v, payload=p) for pid, v, p in points]
        self.client.upsert(self.collection, points=structs, wait=True)

    def search(
        self,
        vector: list[float],
        *,
        match: dict[str, str],
        alive_at: float,
        threshold: float,
        limit: int,
    ) -> list[Candidate]:
        flt = self._filter(match, models.FieldCondition(key=EXPIRY_FIELD, range=models.Range(gt=alive_at)))
        found = self.client.query_points(
            self.collection,
            query=vector,
            query_filter=flt,
            limit=limit,
            score_threshold=threshold,
            search_params=SEARCH,
            with_payload=True,
        ).points
        return [Candidate(float(p.score), dict(p.payload or {})) for p in found]

    def delete(self, match: dict[str, str]) -> int:
        return self._delete(self._filter(match))

    def count(self, alive_at: float) -> int:
        flt = self._filter({}, models.FieldCondition(key=EXPIRY_FIELD, range=models.Range(gt=alive_at)))
        return int(self.client.count(self.collection, count_filter=flt, exact=True).count)

    def sweep(self, now: float) -> int:
        """The server indexes and vacuums on its own; only the expired points are deleted here."""
        return self._delete(
            self._filter({}, models.FieldCondition(key=EXPIRY_FIELD, range=models.Range(lte=now)))
        )

    def close(self) -> None:
        self.client.close()

    def _delete(self, flt: models.Filter) -> int:
        n = int(self.client.count(self.collection, count_filter=flt, exact=True).count)
        if n:
            self.client.delete(self.collection, points_selector=models.FilterSelector(filter=flt), wait=True)
        return n

    @staticmethod
    def _filter(match: dict[str, str], *extra: models.FieldCondition) -> models.Filter:
        conditions: list[Any] = [
            models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in match.items()
        ]
        return models.Filter(must=[*conditions, *extra])
