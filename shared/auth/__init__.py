"""API authentication and authorization: role-scoped tokens per tenant (see scopes, tokens)."""

from shared.auth.scopes import ROLE_SCOPES, PermissionDeniedError, Principal, Role, Scope, require, scopes_for
from shared.auth.tokens import AuthenticationError, TokenInfo, TokenStore

__all__ = [
    "ROLE_SCOPES",
    "AuthenticationError",
    "PermissionDeniedError",
    "Principal",
    "Role",
    "Scope",
    "TokenInfo",
    "TokenStore",
    "require",
    "scopes_for",
]
