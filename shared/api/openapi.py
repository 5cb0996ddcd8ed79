"""The API's OpenAPI 3.1 document, built from the request and response models.

``functions/openapi.json`` is a checked-in copy (``python -m shared.api.openapi > functions/openapi.json``);
a test keeps the two equal.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel

from .models import ErrorBody, JobAccepted, JobRequest, JobView, WebhookAccepted
from .prompts import MODELS as PROMPT_MODELS
from .prompts import NAME_PATTERN

_MODELS: tuple[type[BaseModel], ...] = (
    JobRequest,
    JobAccepted,
    JobView,
    WebhookAccepted,
    ErrorBody,
    *PROMPT_MODELS,
)


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in _MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "Bad request (bad JSON, a bad id or key)",
        401: "Missing, invalid, expired or revoked token; or a webhook that does not verify",
        403: "The token lacks the scope",
        404: "Not found (or another tenant's)",
        409: "Conflict (a request with the same Idempotency-Key in flight, a replayed webhook)",
        413: "Body too large",
        415: "Not application/json",
        422: "Body does not match the schema, or an Idempotency-Key reused with another body",
        429: "Rate limited (see Retry-After)",
        503: "Temporarily unavailable",
    }
    return {str(s): {"description": reasons[s], "content": _json("ErrorBody")} for s in statuses}


def _prompt_paths(bearer: list[dict[str, list[str]]]) -> dict[str, Any]:
    """The prompt library: ``prompts:read`` to list and read, ``prompts:write`` to change."""
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": NAME_PATTERN},
    }

    def write(op: str, body: str, status: str, result: str, summary: str) -> dict[str, Any]:
        return {
            "operationId": op,
            "summary": summary,
            "security": bearer,
            "requestBody": {"required": True, "content": _json(body)},
            "responses": {
                status: {"description": summary, "content": _json(result)},
                **_errors(400, 401, 403, 404, 409, 413, 415, 422, 429, 503),
            },
        }

    publish = write(
        "publishPromptVersion", "PromptPublish", "201", "PromptVersionView",
        "Publish the next version and make it current (purges the prompt's cached answers)",
    )  # fmt: skip
    rollback = write(
        "rollbackPrompt", "PromptRollback", "200", "PromptSummary",
        "Make an earlier version current (purges the prompt's cached answers)",
    )  # fmt: skip
    return {
        "/v1/prompts": {
            "get": {
                "operationId": "listPrompts",
                "security": bearer,
                "responses": {
                    "200": {"description": "The tenant's prompts", "content": _json("PromptList")},
                    **_errors(400, 401, 403, 429, 503),
                },
            },
            "post": write(
                "createPrompt", "PromptCreate", "201", "PromptDetail", "Create a prompt (version 1)"
            ),
        },
        "/v1/prompts/{name}": {
            "get": {
                "operationId": "getPrompt",
                "security": bearer,
                "parameters": [name],
                "responses": {
                    "200": {"description": "The prompt and its versions", "content": _json("PromptDetail")},
                    **_errors(400, 401, 403, 404, 422, 429, 503),
                },
            }
        },
        "/v1/prompts/{name}/versions": {"post": {**publish, "parameters": [name]}},
        "/v1/prompts/{name}/rollback": {"post": {**rollback, "parameters": [name]}},
    }


def document() -> dict[str, Any]:
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Pressline API",
            "version": "1.0.0",
            "description": "Jobs, their status, signed WordPress webhooks, and the prompt library.",
        },
        "paths": {
            "/v1/jobs": {
                "post": {
                    "operationId": "createJob",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        }
                    ],
                    "requestBody": {"required": True, "content": _json("JobRequest")},
                    "responses": {
                        "202": {"description": "Accepted", "content": _json("JobAccepted")},
                        **_errors(400, 401, 403, 409, 413, 415, 422, 429, 503),
                    },
                }
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "security": bearer,
                    "parameters": [
                        {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {"description": "The job", "content": _json("JobView")},
                        **_errors(400, 401, 403, 404, 429, 503),
                    },
                }
            },
            "/v1/webhooks/wordpress/{site}": {
                "post": {
                    "operationId": "wordpressWebhook",
                    "description": "Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature.",
                    "parameters": [
                        {"name": "site", "in": "path", "required": True, "schema": {"type": "string"}},
                        *(
                            {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
                            for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
                        ),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "responses": {
                        "200": {"description": "Ignored event", "content": _json("WebhookAccepted")},
                        "202": {"description": "Job enqueued", "content": _json("WebhookAccepted")},
                        **_errors(401, 404, 409, 413, 415, 422, 429, 503),
                    },
                }
            },
            **_prompt_paths(bearer),
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


if __name__ == "__main__":
    json.dump(document(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
