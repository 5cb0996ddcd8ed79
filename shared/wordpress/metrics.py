"""The WordPress client's Prometheus metrics, one set per registry (clients share it)."""

from __future__ import annotations

import threading
import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["BREAKER_STATES", "WordPressMetrics", "metrics_for"]

#: Gauge values of ``pressline_wordpress_breaker_state``.
BREAKER_STATES = {"closed": 0.0, "half-open": 1.0, "open": 2.0}
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)


class WordPressMetrics:
    """Requests by outcome, their latency, and each site's breaker state.

    Parameters:
      registry(CollectorRegistry)
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "pressline_wordpress_requests",
            "WordPress REST requests by outcome (ok, client_error, denied, rate_limited, server_error, "
            "timeout, connect_error, breaker_open, throttled).",
            ("site", "method", "outcome"),
            registry=registry,
        )
        self.seconds = Histogram(
            "pressline_wordpress_request_seconds",
            "WordPress REST request latency (requests that got an answer or timed out).",
            ("site", "method"),
            buckets=_BUCKETS,
            registry=registry,
        )
        self.breaker = Gauge(
            "pressline_wordpress_breaker_state",
            "The site's circuit breaker: 0 closed, 1 half-open, 2 open.",
            ("site",),
            registry=registry,
        )


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, WordPressMetrics] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def metrics_for(registry: CollectorRegistry | None = None) -> WordPressMetrics:
    """The metrics in ``registry`` (default: the global one), created on first use."""
    target = REGISTRY if registry is None else registry
    with _lock:
        found = _by_registry.get(target)
        if found is None:
            found = _by_registry[target] = WordPressMetrics(target)
        return found
