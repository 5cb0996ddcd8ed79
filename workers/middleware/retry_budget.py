"""Dramatiq's Retries, with a time budget for upstream outages."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import dramatiq
import redis
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError
from dramatiq.broker import MessageProxy
from dramatiq.common import compute_backoff, current_millis
from dramatiq.errors import Retry
from dramatiq.middleware import Retries

from shared.errors import TransientError

log = logging.getLogger("pressline.retry_budget")

#: The message option that records when a message first failed (ms since the epoch).
FIRST_FAILED_AT = "first_failed_at"

#: Answers of an AWS endpoint that is overloaded, or that lost its state and is being restored.
_TRANSIENT_AWS_CODES = frozenset(
    {
        "NoSuchBucket",
        "ResourceNotFoundException",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
    }
)


def is_outage(exception: BaseException) -> bool:
    """Is this an upstream that is unavailable for now (worth retrying over minutes), rather than
    a message that cannot succeed?"""
    if isinstance(exception, TransientError | redis.ConnectionError | redis.TimeoutError):
        return True
    if isinstance(exception, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError):
        return True
    if isinstance(exception, ClientError):
        error = exception.response.get("Error", {})
        status = int(exception.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return error.get("Code") in _TRANSIENT_AWS_CODES or status >= 500
    return False


class BudgetedRetries(Retries):
    """Dramatiq's Retries, which also retries an outage for as long as its queue's budget lasts.

    A provider, WordPress or the AWS endpoint that is down for a few minutes would otherwise use
    up ``max_retries`` in seconds and dead-letter jobs that a later attempt would have finished. An
    outage (:func:`is_outage`) is retried while ``max_retries`` allows *or* while less than the
    queue's budget has passed since the message first failed; the delay is the failure's own hint
    (``Retry-After``, a breaker's reset) or exponential backoff with jitter, and never reaches past
    the budget's end. Any other error keeps Dramatiq's rules; ``throws`` still fails at once.

    Parameters:
      budgets_ms(Mapping[str, int]): Each queue's budget in milliseconds (missing queues: none).
      **options: Dramatiq's Retries parameters (max_retries, min_backoff, max_backoff).
    """

    def __init__(self, *, budgets_ms: Mapping[str, int], **options: Any) -> None:
        super().__init__(**options)
        self.budgets_ms = dict(budgets_ms)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or not is_outage(exception) or self._throws(broker, message, exception):
            super().after_process_message(broker, message, result=result, exception=exception)
            return
        now = current_millis()
        first = int(message.options.setdefault(FIRST_FAILED_AT, now))
        left_ms = first + self.budgets_ms.get(message.queue_name, 0) - now
        retries = int(message.options.get("retries", 0))
        actor = broker.get_actor(message.actor_name)
        max_retries = message.options.get("max_retries", actor.options.get("max_retries", self.max_retries))
        if left_ms <= 0 and (max_retries is None or retries >= max_retries):
            super().after_process_message(broker, message, result=result, exception=exception)
            return
        message.options["retries"] = retries + 1
        message.options["requeue_timestamp"] = now
        delay = self._delay(broker, message, exception, retries)
        if left_ms > 0:
            delay = min(delay, left_ms)
        log.info("Retrying message %r in %d ms (an outage: %s).", message.message_id, delay, exception)
        broker.enqueue(message, delay=delay)  # type: ignore[arg-type]  # a proxy, as Retries sends it

    def _throws(self, broker: dramatiq.Broker, message: MessageProxy, exception: BaseException) -> bool:
        throws = message.options.get("throws") or broker.get_actor(message.actor_name).options.get("throws")
        return throws is not None and isinstance(exception, throws)

    def _delay(
        self, broker: dramatiq.Broker, message: MessageProxy, exception: BaseException, retries: int
    ) -> int:
        if isinstance(exception, Retry) and exception.delay is not None:
            return int(exception.delay)
        actor = broker.get_actor(message.actor_name)
        min_backoff = message.options.get("min_backoff", actor.options.get("min_backoff", self.min_backoff))
        max_backoff = message.options.get("max_backoff", actor.options.get("max_backoff", self.max_backoff))
        _, delay = compute_backoff(retries, factor=min_backoff, max_backoff=max_backoff)
        return int(delay)
