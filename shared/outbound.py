"""Outbound webhooks: Pressline's events, signed the Standard Webhooks way, to back-office endpoints.

The caller's path only enqueues (:func:`publish_event`: one message per configured URL on the
``webhooks`` queue); the ``deliver_webhook`` actor (workers/notify.py) makes the HTTP call with
:func:`deliver`. Dramatiq's Retries middleware retries a :class:`RetryableDeliveryError` with
exponential backoff and jitter (a receiver's ``Retry-After`` replaces the backoff, capped); a
:class:`~shared.errors.PermanentError` or an exhausted retry budget dead-letters the message,
from where an operator can requeue it (``python -m workers.dead_letters requeue webhooks``).

The ``webhook-id`` is chosen once per event and kept across retries and requeues, so a receiver
deduplicates on it; ``webhook-timestamp`` is each attempt's own (receivers reject stale ones).
The signing secret never enters a message, a log line or an error: the worker reads it itself.

Endpoints go through the egress guard (shared.egress): an IP literal that is not public is refused
when the settings are read, a name that resolves to such an address when a process starts
(:func:`checked_endpoints`), and every connection is checked on the address it goes to (the
worker's client is a guarded one), so a refused endpoint is dead-lettered with a clear error and
the signed body never leaves. Redirects are not followed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError
from dramatiq import Broker
from dramatiq.errors import Retry
from dramatiq.message import Message

from shared.config import ConfigError, Settings
from shared.egress import EgressPolicy, EgressRefused, guarded_client
from shared.errors import PermanentError, TransientError
from shared.webhooks import sign

__all__ = [
    "ACTOR",
    "QUEUE",
    "OutboundSecret",
    "RetryableDeliveryError",
    "checked_endpoints",
    "deliver",
    "new_event",
    "publish_event",
    "redact_url",
    "stable_msg_id",
]

log = logging.getLogger("pressline.outbound")

QUEUE = "webhooks"
ACTOR = "deliver_webhook"
USER_AGENT = "Pressline-Webhooks/1"


class RetryableDeliveryError(TransientError, Retry):
    """The receiver may accept it later (no answer, a timeout, 429, 5xx).

    A Dramatiq ``Retry``: the worker does not log it as a crash, and ``delay`` (ms, from
    ``Retry-After``) replaces the computed backoff when set.
    """

    def __init__(self, message: str, delay_ms: int | None = None) -> None:
        Retry.__init__(self, message, delay=delay_ms)


def redact_url(url: str) -> str:
    """Scheme, host and path only: query strings and user info often carry tokens."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def new_event(event_type: str, data: Mapping[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
    """The Standard Webhooks payload shape: ``type``, ``timestamp`` (ISO 8601, UTC), ``data``."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")
    return {"type": event_type, "timestamp": stamp.replace("+00:00", "Z"), "data": dict(data)}


def new_msg_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def stable_msg_id(*parts: str) -> str:
    """A ``webhook-id`` derived from what identifies the event (a job and its outcome)."""
    return "msg_" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def body_of(event: Mapping[str, Any]) -> bytes:
    """The exact bytes signed and sent; the same on every attempt."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def deliver(
    url: str,
    event: Mapping[str, Any],
    msg_id: str,
    secret: str,
    *,
    timeout: float,
    client: httpx.Client | None = None,
    max_retry_after_s: float = 15 * 60,
    egress: EgressPolicy | None = None,
) -> int:
    """POST one signed event to ``url``; returns the 2xx status.

    Raises RetryableDeliveryError on connection errors, timeouts, 429 and 5xx (with ``Retry-After``
    as the delay, capped at ``max_retry_after_s``) and PermanentError on any other answer: a 4xx
    means the receiver refuses this message (410 Gone: the endpoint is retired), and a 3xx is not
    followed, since a redirect could send the signed body somewhere unintended. An endpoint that
    resolves to an address the egress policy refuses is a PermanentError, nothing sent.

    ``client`` should be a :func:`shared.egress.guarded_client`; without one, a guarded client of
    ``egress`` (default: public addresses only) is made for this call.
    """
    body = body_of(event)
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }
    where = redact_url(url)
    try:
        if client is None:
            with guarded_client(egress or EgressPolicy(), timeout=timeout) as own:
                response = own.post(url, content=body, headers=headers, timeout=timeout)
        else:
            response = client.post(url, content=body, headers=headers, timeout=timeout)
    except EgressRefused as e:
        raise PermanentError(f"{where}: the endpoint resolves to a refused address ({e.reason})") from None
    except httpx.TimeoutException as e:
        raise RetryableDeliveryError(f"{where}: timed out ({type(e).__name__})") from None
    except httpx.TransportError as e:
        raise RetryableDeliveryError(f"{where}: no answer ({type(e).__name__})") from None
    status = response.status_code
    if 200 <= status < 300:
        return status
    if status == 429 or status >= 500:
        hint = retry_after_s(response.headers.get("retry-after"))
        delay_ms = None if hint is None else int(min(hint, max_retry_after_s) * 1000)
        raise RetryableDeliveryError(f"{where}: answered {status}", delay_ms)
    raise PermanentError(f"{where}: answered {status}")


def checked_endpoints(settings: Settings, egress: EgressPolicy | None = None) -> tuple[str, ...]:
    """``PRESSLINE_OUTBOUND_WEBHOOK_URLS``, each host resolved and checked at startup.

    ConfigError names the entry (its position and host, never its path or query) when it resolves
    to a refused address. A name that does not resolve now is kept with a warning: every delivery
    checks again on connecting.
    """
    policy = egress or EgressPolicy.from_settings(settings)
    for position, url in enumerate(settings.outbound_webhook_urls, 1):
        try:
            policy.check_url(url)
        except EgressRefused as error:
            raise ConfigError(
                f"PRESSLINE_OUTBOUND_WEBHOOK_URLS: entry {position}: {error} (see PRESSLINE_EGRESS_ALLOW)"
            ) from None
        except (OSError, ValueError) as error:
            log.warning(
                "outbound webhook endpoint cannot be checked now; each delivery checks it",
                extra={"endpoint": redact_url(url), "error": type(error).__name__},
            )
    return settings.outbound_webhook_urls


class OutboundSecret:
    """The outbound signing secret: the local override, else Secrets Manager (cached ``ttl_s``).

    Thread-safe; when Secrets Manager fails, the last value is kept. No secret at all raises a
    RetryableDeliveryError, so deliveries wait (and dead-letter) rather than go out unsigned.
    """

    def __init__(
        self,
        client: BaseClient | None,
        name: str,
        *,
        override: str | None = None,
        ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.name = name
        self._override = override
        self.ttl_s = ttl_s
        self._clock = clock
        self._value: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OutboundSecret(name={self.name!r}, override={'set' if self._override else 'unset'})"

    def get(self) -> str:
        if self._override:
            return self._override
        with self._lock:
            if self._value is not None and self._expires > self._clock():
                return self._value
            try:
                self._value = self._fetch()
            except RetryableDeliveryError:
                if self._value is None:
                    raise
                log.warning("outbound webhook secret fetch failed; keeping the cached value")
            self._expires = self._clock() + self.ttl_s
            return self._value

    def _fetch(self) -> str:
        if self.client is None:
            raise RetryableDeliveryError("no outbound webhook secret is configured")
        try:
            response = self.client.get_secret_value(SecretId=self.name)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            raise RetryableDeliveryError(f"outbound webhook secret {self.name}: {code}") from None
        except BotoCoreError as error:
            kind = type(error).__name__
            raise RetryableDeliveryError(f"outbound webhook secret {self.name}: {kind}") from None
        value = response.get("SecretString")
        if not isinstance(value, str) or not value.strip():
            raise RetryableDeliveryError(f"outbound webhook secret {self.name} is empty")
        return value.strip()


def publish_event(
    broker: Broker,
    event_type: str,
    data: Mapping[str, Any],
    *,
    urls: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
    msg_id: str | None = None,
) -> str | None:
    """Enqueue the event's delivery to each URL (``Settings.outbound_webhook_urls`` by default).

    No HTTP here: the caller only writes to Redis. Returns the event's ``webhook-id``, or None when
    no endpoint is configured. Each message carries an idempotency key, so a delivery that
    succeeded is not repeated when its message is redelivered after a worker crash.

    ``msg_id`` (default: a new one) lets a caller that may publish the same event twice (a job's
    outcome, after a crash) give both the same ``webhook-id``: the second delivery is then skipped
    by the worker, or else deduplicated by the receiver.
    """
    targets = tuple(Settings.from_env().outbound_webhook_urls if urls is None else urls)
    if not targets:
        return None
    event = new_event(event_type, data)
    msg_id = msg_id or new_msg_id()
    broker.declare_queue(QUEUE)
    for index, url in enumerate(targets):
        message: Message[Any] = Message(
            queue_name=QUEUE,
            actor_name=ACTOR,
            args=(url, event, msg_id),
            kwargs={},
            options={"idempotency_key": f"webhook:{msg_id}:{index}", **(options or {})},
        )
        broker.enqueue(message)
    log.info(
        "webhook event enqueued",
        extra={"event_type": event_type, "webhook_id": msg_id, "endpoints": len(targets)},
    )
    return msg_id
