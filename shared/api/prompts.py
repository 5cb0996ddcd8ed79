"""The prompt library's routes: create, list, get, publish a version, roll back.

``prompts:read`` lists and reads; ``prompts:write`` creates, publishes and rolls back (publishing
or rolling back purges the prompt's cached answers at once, see shared.prompts.store).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.auth import Scope
from shared.prompts import Prompt, PromptError, PromptStore, PromptVersion
from shared.prompts.store import MAX_NOTE_CHARS, MAX_TEXT_CHARS

from .errors import ApiError
from .guard import Guard
from .json_reader import read_json
from .responses import ApiResponse

MAX_BODY_BYTES = 128 * 1024

#: The store's rules, as the OpenAPI document states them (the handlers below enforce them).
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptCreate(_Strict):
    """``POST /v1/prompts``: version 1 of a new prompt."""

    name: str = Field(pattern=NAME_PATTERN, description="Lower-case letters, digits, '_', '-', '.'")
    text: str = Field(
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        pattern=r"\S",
        description="The system prompt; {{variable}} placeholders are filled from prompt_variables",
    )
    note: str = Field(default="", max_length=MAX_NOTE_CHARS)


class PromptPublish(_Strict):
    """``POST /v1/prompts/{name}/versions``: the next version, made current."""

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, pattern=r"\S")
    note: str = Field(default="", max_length=MAX_NOTE_CHARS)


class PromptRollback(_Strict):
    """``POST /v1/prompts/{name}/rollback``: make an earlier version current."""

    version: int = Field(ge=1, le=1_000_000)


class PromptSummary(_Strict):
    name: str
    current_version: int
    latest_version: int
    created_at_ms: int
    updated_at_ms: int


class PromptVersionView(_Strict):
    name: str
    version: int
    ref: str = Field(description="name@version, as a proxy request names it")
    text: str
    note: str
    current: bool
    created_at_ms: int


class PromptDetail(PromptSummary):
    versions: list[PromptVersionView]


class PromptList(_Strict):
    prompts: list[PromptSummary]


#: For the OpenAPI document.
MODELS: tuple[type[BaseModel], ...] = (
    PromptCreate,
    PromptPublish,
    PromptRollback,
    PromptSummary,
    PromptVersionView,
    PromptDetail,
    PromptList,
)


class PromptsApi:
    """Parameters:
    guard(Guard)
    store(PromptStore)
    """

    def __init__(self, guard: Guard, store: PromptStore) -> None:
        self.guard = guard
        self.store = store

    def list(self, *, authorization: str | None) -> ApiResponse:
        principal = self.guard.principal(authorization, Scope.PROMPTS_READ)
        prompts = self.store.list(principal.tenant)
        return ApiResponse(200, {"prompts": [_prompt(p) for p in prompts]})

    def get(self, *, authorization: str | None, name: str) -> ApiResponse:
        principal = self.guard.principal(authorization, Scope.PROMPTS_READ)
        prompt = self._prompt(principal.tenant, name)
        versions = self.store.versions(principal.tenant, name)
        return ApiResponse(
            200, {**_prompt(prompt), "versions": [_version(v, prompt.current) for v in versions]}
        )

    def create(
        self, *, authorization: str | None, content_type: str | None, body: bytes | None
    ) -> ApiResponse:
        principal = self.guard.principal(authorization, Scope.PROMPTS_WRITE)
        data = _body(content_type, body, required=("name", "text"))
        try:
            version = self.store.create(principal.tenant, data["name"], data["text"], data.get("note", ""))
        except PromptError as e:
            raise _error(e) from None
        prompt = self.store.get(principal.tenant, version.name)
        assert prompt is not None
        return ApiResponse(201, {**_prompt(prompt), "versions": [_version(version, prompt.current)]})

    def publish(
        self, *, authorization: str | None, name: str, content_type: str | None, body: bytes | None
    ) -> ApiResponse:
        principal = self.guard.principal(authorization, Scope.PROMPTS_WRITE)
        data = _body(content_type, body, required=("text",))
        try:
            version = self.store.publish(principal.tenant, name, data["text"], data.get("note", ""))
        except PromptError as e:
            raise _error(e) from None
        return ApiResponse(201, _version(version, version.version))

    def rollback(
        self, *, authorization: str | None, name: str, content_type: str | None, body: bytes | None
    ) -> ApiResponse:
        principal = self.guard.principal(authorization, Scope.PROMPTS_WRITE)
        data = _body(content_type, body, required=("version",))
        version = data["version"]
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= 1_000_000:
            raise ApiError(422, "invalid_body", "version must be a positive integer")
        try:
            prompt = self.store.rollback(principal.tenant, name, version)
        except PromptError as e:
            raise _error(e) from None
        return ApiResponse(200, _prompt(prompt))

    def _prompt(self, tenant: str, name: str) -> Prompt:
        try:
            prompt = self.store.get(tenant, name)
        except PromptError as e:
            raise _error(e) from None
        if prompt is None:
            raise ApiError(404, "prompt_not_found", "there is no such prompt")
        return prompt


def _body(content_type: str | None, body: bytes | None, required: tuple[str, ...]) -> dict[str, Any]:
    data = read_json(body, content_type, max_bytes=MAX_BODY_BYTES)
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_body", "the body must be a JSON object")
    allowed = {"name", "text", "note", "version"}
    details = [{"field": f, "problem": "missing"} for f in required if f not in data]
    details += [{"field": f, "problem": "unknown"} for f in data if f not in allowed]
    for name in ("name", "text", "note"):
        if name in data and not isinstance(data[name], str):
            details.append({"field": name, "problem": "must be a string"})
    if details:
        raise ApiError(422, "invalid_body", "the body does not match the schema", details=details)
    return data


def _error(e: PromptError) -> ApiError:
    status = {"not_found": 404, "exists": 409}.get(e.code, 422)
    code = {"not_found": "prompt_not_found", "exists": "prompt_exists"}.get(e.code, "invalid_body")
    return ApiError(status, code, str(e))


def _prompt(p: Prompt) -> dict[str, Any]:
    return {
        "name": p.name,
        "current_version": p.current,
        "latest_version": p.latest,
        "created_at_ms": p.created_at_ms,
        "updated_at_ms": p.updated_at_ms,
    }


def _version(v: PromptVersion, current: int) -> dict[str, Any]:
    return {
        "name": v.name,
        "version": v.version,
        "ref": v.ref,
        "text": v.text,
        "note": v.note,
        "current": v.version == current,
        "created_at_ms": v.created_at_ms,
    }
