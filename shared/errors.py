"""Exceptions that carry a decision about retrying."""

from __future__ import annotations


class PermanentError(Exception):
    """A failure that no retry can fix (bad input, a refusal): the message is dead-lettered at once."""


class TransientError(Exception):
    """A failure worth retrying later (an upstream timeout, a 503, a rate limit)."""
