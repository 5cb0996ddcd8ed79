"""Builds the response cache from Settings (None when it is disabled)."""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import redis
from prometheus_client import CollectorRegistry

from shared.config import Settings
from shared.cost.ledger import CostLedger
from shared.cost.prices import PriceTable

from .cache import CacheConfig, ResponseCache
from .exact import ExactLayer
from .metrics import CacheMetrics
from .semantic import collection_name
from .vector_index import StoreBusy, VectorIndex

if TYPE_CHECKING:
    from .embedder import Embedder
    from .semantic import SemanticLayer

log = logging.getLogger(__name__)

#: One embedded store per directory per process (Qdrant Edge locks its directory).
_EMBEDDED: dict[str, VectorIndex] = {}
_EMBEDDED_LOCK = threading.Lock()


def build_cache(
    settings: Settings,
    client: redis.Redis,
    ledger: CostLedger,
    prices: PriceTable,
    registry: CollectorRegistry,
    provider_key: Any = None,
) -> ResponseCache | None:
    if not settings.cache_enabled:
        return None
    config = CacheConfig(
        ttl_s=settings.cache_ttl_s,
        route_ttl_s=dict(settings.cache_route_ttl_s),
        threshold=settings.cache_threshold,
        route_threshold=dict(settings.cache_route_threshold),
        max_temperature=settings.cache_max_temperature,
        default_max_tokens=settings.proxy_default_max_tokens,
    )
    embedder: Embedder | None = None
    semantic: SemanticLayer | None = None
    if (
        settings.cache_semantic
        and not settings.qdrant_url
        and importlib.util.find_spec("qdrant_edge") is None
    ):
        # The Lambda artifact ships without the embedded store and the offline model on purpose.
        log.warning(
            "cache: no QDRANT_URL and no embedded Qdrant (qdrant-edge-py) installed; "
            "serving from the exact layer only"
        )
    elif settings.cache_semantic:
        try:
            from .semantic import SemanticLayer  # the Qdrant libraries load only when used

            embedder = build_embedder(settings, provider_key)
            semantic = SemanticLayer(vector_index(settings, embedder.id, embedder.dimension))
        except StoreBusy as e:
            log.warning(
                "cache: %s; this process (%d) serves from the exact layer only "
                "(set QDRANT_URL for a semantic layer shared by all processes)",
                e,
                os.getpid(),
            )
            embedder, semantic = None, None
        except Exception:
            log.exception("cache: the semantic layer is unavailable; serving from the exact layer only")
            embedder, semantic = None, None
    holder: list[ResponseCache] = []
    metrics = CacheMetrics(registry, lambda layer: holder[0].entries(layer) if holder else 0)
    cache = ResponseCache(
        config, ExactLayer(client, settings.namespace), semantic, embedder, ledger, prices, metrics
    )
    holder.append(cache)
    return cache


def build_embedder(settings: Settings, provider_key: Any = None) -> Embedder:
    """``minilm`` (offline) or ``provider:<model>:<dimension>`` (OpenAI-compatible embeddings API)."""
    from .embedder import MiniLMEmbedder, ProviderEmbedder

    choice = settings.cache_embedder
    if choice == "minilm":
        embedder = MiniLMEmbedder()
        embedder.load()  # fail at start, not on the first request
        return embedder
    kind, _, rest = choice.partition(":")
    model, _, dimension = rest.rpartition(":")
    if kind != "provider" or not model or not dimension.isdigit():
        raise ValueError("PRESSLINE_CACHE_EMBEDDER must be minilm or provider:<model>:<dimension>")
    if provider_key is None:
        raise ValueError("the provider embedder needs the provider's key")
    return ProviderEmbedder(settings.openai_base_url, model, provider_key, int(dimension), httpx.Client())


def vector_index(settings: Settings, embedder_id: str, dimension: int) -> VectorIndex:
    """A Qdrant server at ``QDRANT_URL``, else Qdrant Edge in this process under the data dir.

    The collection (the shard directory, embedded) is named for the embedding model and version.
    ``PRESSLINE_CACHE_QDRANT_PATH=:memory:`` puts the embedded store in a temporary directory
    removed at exit.  Raises :class:`StoreBusy` when another process owns the embedded store.
    """
    name = collection_name(embedder_id)
    if settings.qdrant_url:
        from qdrant_client import QdrantClient

        from .server_index import ServerIndex

        return ServerIndex(QdrantClient(url=settings.qdrant_url, timeout=5), name, dimension)
    from .edge_index import EdgeIndex

    if settings.cache_qdrant_path == ":memory:":
        scratch = Path(tempfile.mkdtemp(prefix="pressline-qdrant-"))
        atexit.register(shutil.rmtree, scratch, True)
        base = scratch
    else:
        base = Path(settings.cache_qdrant_path)
        base = base if base.is_absolute() else Path(settings.data_dir) / base
    directory = (base / name).resolve()
    with _EMBEDDED_LOCK:
        if str(directory) not in _EMBEDDED:
            index = EdgeIndex(directory, dimension)
            atexit.register(index.close)
            _EMBEDDED[str(directory)] = index
            log.info("cache: embedded Qdrant at %s is owned by process %d", directory, os.getpid())
        return _EMBEDDED[str(directory)]
