"""How long to wait before the next try: full-jitter exponential backoff, or the server's word."""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

__all__ = ["full_jitter", "parse_retry_after"]


def full_jitter(attempt: int, base_s: float, max_s: float, rand: random.Random | None = None) -> float:
    """A uniform wait in ``[0, min(max_s, base_s * 2**(attempt-1))]`` (AWS's "full jitter").

    Clients that failed together spread out instead of retrying in lockstep.
    """
    ceiling = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    return (rand or random).uniform(0.0, ceiling)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
