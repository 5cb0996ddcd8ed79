"""Roles, the scopes each grants, and the check a route makes before acting.

A token carries one role; a route asks for one scope. Roles nest, each adding to the one before:

=========  ==========================================================================
role       scopes
=========  ==========================================================================
reader     ``jobs:read``, ``prompts:read``
editor     reader + ``jobs:write``, ``content:draft``, ``proxy:invoke``, ``prompts:write``
publisher  editor + ``content:publish``
admin      publisher + ``tokens:admin``
=========  ==========================================================================

``proxy:invoke`` (LLM calls, which cost money) starts at editor, the first role that creates work;
so does ``prompts:write`` (publishing a prompt version changes what the proxy sends upstream).
``content:publish`` is what separates a publisher from an editor: a job created by a token without
it may only produce drafts. Scopes are derived from the role when a token is used, so changing this
table changes existing tokens too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ROLE_SCOPES",
    "SCOPES",
    "PermissionDeniedError",
    "Principal",
    "Role",
    "Scope",
    "require",
    "scopes_for",
]


class Scope(StrEnum):
    JOBS_READ = "jobs:read"
    JOBS_WRITE = "jobs:write"
    CONTENT_DRAFT = "content:draft"
    CONTENT_PUBLISH = "content:publish"
    PROXY_INVOKE = "proxy:invoke"
    TOKENS_ADMIN = "tokens:admin"
    PROMPTS_READ = "prompts:read"
    PROMPTS_WRITE = "prompts:write"


SCOPES: frozenset[str] = frozenset(Scope)


class Role(StrEnum):
    READER = "reader"
    EDITOR = "editor"
    PUBLISHER = "publisher"
    ADMIN = "admin"


_READER = frozenset({Scope.JOBS_READ, Scope.PROMPTS_READ})
_EDITOR = _READER | {Scope.JOBS_WRITE, Scope.CONTENT_DRAFT, Scope.PROXY_INVOKE, Scope.PROMPTS_WRITE}
_PUBLISHER = _EDITOR | {Scope.CONTENT_PUBLISH}
_ADMIN = _PUBLISHER | {Scope.TOKENS_ADMIN}

ROLE_SCOPES: Mapping[Role, frozenset[str]] = {
    Role.READER: frozenset(_READER),
    Role.EDITOR: frozenset(_EDITOR),
    Role.PUBLISHER: frozenset(_PUBLISHER),
    Role.ADMIN: frozenset(_ADMIN),
}


def scopes_for(role: Role | str) -> frozenset[str]:
    """The scopes ``role`` grants; ValueError for an unknown role."""
    return ROLE_SCOPES[Role(role)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant and token behind a request, and what the token may do."""

    tenant: str
    token_id: str
    role: Role
    scopes: frozenset[str]

    def has(self, scope: Scope | str) -> bool:
        return str(scope) in self.scopes


class PermissionDeniedError(Exception):
    """A valid token without the scope a route needs (answer 403)."""

    def __init__(self, scope: Scope | str) -> None:
        super().__init__(f"token lacks scope {scope}")
        self.scope = str(scope)


def require(principal: Principal, scope: Scope | str) -> None:
    """Return when ``principal`` holds ``scope``; raise :class:`PermissionDeniedError` otherwise."""
    if str(scope) not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")  # a typo in a route must not deny (or allow) silently
    if not principal.has(scope):
        raise PermissionDeniedError(scope)
