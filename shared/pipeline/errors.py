"""The pipeline's retry decision: a :class:`RetryLater` is retried by Dramatiq's Retries after a
delay the failure itself suggests (``Retry-After``, a breaker's reset), or its own backoff."""

from __future__ import annotations

from dramatiq.errors import Retry

from shared.errors import TransientError

#: The longest delay a failure may ask for; a longer hint is capped (Retries keeps counting).
MAX_DELAY_MS = 5 * 60_000


class RetryLater(TransientError, Retry):
    """Try the stage again later: an upstream is unavailable, rate limited or overloaded.

    A Dramatiq ``Retry`` (the worker logs no traceback for it) whose ``delay`` (ms), when set,
    replaces the exponential backoff; ``None`` keeps Dramatiq's backoff with jitter.
    """

    def __init__(self, message: str, *, delay_s: float | None = None) -> None:
        delay = None if delay_s is None else min(MAX_DELAY_MS, max(1, int(delay_s * 1000)))
        Retry.__init__(self, message, delay=delay)
