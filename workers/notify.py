"""The ``deliver_webhook`` actor: one signed POST per message, on its own ``webhooks`` queue.

A queue of its own so a slow or dead back office never holds a workflow stage's threads; its
threads (``PRESSLINE_QUEUE_CONCURRENCY``, default 1x16) bound the deliveries in flight per process.
Retry budget and backoff are the ``PRESSLINE_OUTBOUND_WEBHOOK_*`` settings, not the stages' ones.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
import httpx

from shared.aws import aws_client
from shared.config import Settings
from shared.egress import EgressPolicy, guarded_client
from shared.errors import PermanentError
from shared.outbound import ACTOR, QUEUE, OutboundSecret, deliver
from shared.telemetry.webhook_metrics import webhook_metrics

settings = Settings.from_env()

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _client_and_secret() -> tuple[httpx.Client, OutboundSecret]:
    """Built on first use in each worker process (after fork) and shared by its threads."""
    with _lock:
        if not _state:
            threads = settings.concurrency[QUEUE].threads
            # Every connection checked by the egress policy (PRESSLINE_EGRESS_ALLOW); no redirects.
            _state["client"] = guarded_client(
                EgressPolicy.from_settings(settings),
                timeout=settings.outbound_webhook_timeout_s,
                limits=httpx.Limits(max_connections=threads, max_keepalive_connections=threads),
            )
            _state["secret"] = OutboundSecret(
                None if settings.outbound_webhook_secret else aws_client("secretsmanager", settings),
                settings.outbound_webhook_secret_name,
                override=settings.outbound_webhook_secret,
                ttl_s=settings.webhook_secret_cache_ttl_s,
            )
        return _state["client"], _state["secret"]


@dramatiq.actor(
    actor_name=ACTOR,
    queue_name=QUEUE,
    throws=(PermanentError,),
    max_retries=settings.outbound_webhook_max_retries,
    min_backoff=settings.outbound_webhook_min_backoff_ms,
    max_backoff=settings.outbound_webhook_max_backoff_ms,
    time_limit=int(settings.outbound_webhook_timeout_s * 1000) + 30_000,
)
def deliver_webhook(url: str, event: dict[str, Any], msg_id: str) -> None:
    """Deliver one event to one endpoint (the same ``msg_id`` on every attempt)."""
    client, secret = _client_and_secret()
    metrics, outcome, started = webhook_metrics(), "retry", time.monotonic()
    try:
        deliver(
            url,
            event,
            msg_id,
            secret.get(),
            timeout=settings.outbound_webhook_timeout_s,
            client=client,
            max_retry_after_s=settings.outbound_webhook_max_backoff_ms / 1000,
        )
        outcome = "delivered"
    except PermanentError:
        outcome = "rejected"
        raise
    finally:  # delivery health: pressline_outbound_webhook_deliveries_total{event_type,outcome}
        metrics.delivery_seconds.observe(time.monotonic() - started)
        metrics.deliveries.labels(str(event.get("type", "unknown")), outcome).inc()
