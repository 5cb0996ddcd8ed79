"""Who is calling, may they do this, and are they within their rate."""

from __future__ import annotations

import math

from shared.auth import AuthenticationError, PermissionDeniedError, Principal, Scope, TokenStore, require
from shared.config import RateLimit
from shared.ratelimit import RateLimiter

from .errors import ApiError


class Guard:
    """Authenticates bearer tokens, checks scopes and applies per-tenant rate limits.

    Parameters:
      tokens(TokenStore)
      limiter(RateLimiter)
      rate(RateLimit): Each tenant's request rate.
    """

    def __init__(self, tokens: TokenStore, limiter: RateLimiter, rate: RateLimit) -> None:
        self.tokens = tokens
        self.limiter = limiter
        self.rate = rate

    def principal(self, authorization: str | None, scope: Scope) -> Principal:
        """The caller, with ``scope``, within its tenant's rate; else 401, 403 or 429."""
        token = None
        if authorization and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
        try:
            principal = self.tokens.authenticate(token)
        except AuthenticationError as e:
            message = (
                "a valid API token is required"
                if e.reason in ("missing", "malformed")
                else (
                    f"the API token is {e.reason}"
                    if e.reason in ("expired", "revoked")
                    else "the API token is not valid"
                )
            )
            raise ApiError(
                401, "unauthenticated", message, headers={"WWW-Authenticate": 'Bearer realm="pressline"'}
            ) from None
        try:
            require(principal, scope)
        except PermissionDeniedError:
            raise ApiError(403, "forbidden", f"the API token lacks the {scope.value} scope") from None
        self.within_rate(principal.tenant)
        return principal

    def within_rate(self, tenant: str) -> None:
        wait = self.limiter.try_acquire(f"api.{tenant}", self.rate)
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                "too many requests for this tenant; retry later",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
