"""The proxy's response cache: an exact layer in Redis and a precise semantic layer in Qdrant."""

from .bypass import Directives, bypass_reason, header_directives
from .cache import HEADER, SIMILARITY_HEADER, CacheConfig, Hit, Probe, ResponseCache
from .entry import Completion, StreamCollector
from .precision import Verdict, compare, compare_turns
from .request import CanonicalRequest, canonicalize

__all__ = [
    "HEADER",
    "SIMILARITY_HEADER",
    "CacheConfig",
    "CanonicalRequest",
    "Completion",
    "Directives",
    "Hit",
    "Probe",
    "ResponseCache",
    "StreamCollector",
    "Verdict",
    "bypass_reason",
    "canonicalize",
    "compare",
    "compare_turns",
    "header_directives",
]
