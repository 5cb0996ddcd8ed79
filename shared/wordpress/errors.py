"""What can go wrong talking to a WordPress site, as the caller needs to act on it.

``retryable`` tells a caller whether the same call can succeed later (then ``retry_after_s`` says
when, if anything knows); ``kind`` is a short machine-readable reason (a WordPress error code such
as ``rest_cannot_publish``, or one of Pressline's: ``timeout``, ``breaker_open``, ...). Messages
never contain a credential, an auth header or a response body.
"""

from __future__ import annotations

__all__ = ["AddressRefused", "PermissionRefused", "SiteUnavailable", "WordPressError"]


class WordPressError(Exception):
    """A WordPress call failed.

    Parameters:
      message(str): What happened, without secrets.
      kind(str): Machine-readable reason.
      status(int | None): The HTTP status, when WordPress answered.
      retryable(bool): Whether the same call may succeed later.
      retry_after_s(float | None): When to try again, if known.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        status: int | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class PermissionRefused(WordPressError):
    """401 or 403: bad credentials, or a role that may not do this (a contributor publishing).

    Never retryable: the same call with the same credentials is refused again.
    """

    def __init__(self, message: str, *, kind: str, status: int | None) -> None:
        super().__init__(message, kind=kind, status=status, retryable=False)


class SiteUnavailable(WordPressError):
    """The site cannot be reached now: breaker open, rate limited, or retries exhausted.

    Always retryable; ``retry_after_s`` is set.
    """

    def __init__(self, message: str, *, kind: str, retry_after_s: float, status: int | None = None) -> None:
        super().__init__(message, kind=kind, status=status, retryable=True, retry_after_s=retry_after_s)


class AddressRefused(WordPressError):
    """The site's URL resolves to an address the egress policy refuses (loopback, private,
    link-local, ...; see shared.egress): nothing was sent, credentials included.

    Never retryable: the URL must change, or ``PRESSLINE_EGRESS_ALLOW`` must name the address.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, kind="address_refused", retryable=False)
        self.reason = reason
