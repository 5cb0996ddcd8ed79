"""Counters of webhooks in and out: receipts by outcome, verification failures by reason, and
outbound delivery attempts by outcome with their latency.

Process-wide (the default registry, created on first use): the API's ``/metrics`` serves it, and
in a worker process after boot the counters land in Dramatiq's multiprocess files.  Labels are
bounded: outcomes and reasons are fixed sets, and neither sites nor URLs are labels.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

__all__ = ["WebhookMetrics", "webhook_metrics"]

_DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class WebhookMetrics:
    received: Counter
    verification_failures: Counter
    deliveries: Counter
    delivery_seconds: Histogram


_lock = threading.Lock()
_metrics: WebhookMetrics | None = None


def webhook_metrics() -> WebhookMetrics:
    """The process's webhook metrics (created once, in the default registry)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = WebhookMetrics(
                received=Counter(
                    "pressline_webhooks_received",
                    "Inbound webhooks by outcome: accepted, ignored, or the error code answered "
                    "(invalid_signature, replayed_webhook, unknown_site, invalid_event, ...).",
                    ("outcome",),
                ),
                verification_failures=Counter(
                    "pressline_webhook_verification_failures",
                    "Inbound webhooks whose signature did not verify, by reason.",
                    ("reason",),
                ),
                deliveries=Counter(
                    "pressline_outbound_webhook_deliveries",
                    "Outbound webhook delivery attempts by event type and outcome "
                    "(delivered, retry, rejected).",
                    ("event_type", "outcome"),
                ),
                delivery_seconds=Histogram(
                    "pressline_outbound_webhook_delivery_seconds",
                    "One outbound delivery attempt, request to answer or error.",
                    buckets=_DELIVERY_BUCKETS,
                ),
            )
        return _metrics
