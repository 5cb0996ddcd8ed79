"""A request that names a library prompt: ``"prompt": "name"`` or ``"name@3"``.

The prompt's text becomes the request's system prompt.  ``{{variable}}`` placeholders in it are
filled from the request's ``prompt_variables`` object (strings, numbers or booleans); a missing
variable is a 422, and so is a request that also carries its own system prompt (Anthropic
``system``, OpenAI ``system``/``developer`` messages) — one system prompt, from one place.
``prompt`` and ``prompt_variables`` are removed before the request goes upstream.
"""

from __future__ import annotations

import re
from typing import Any

from shared.api.errors import ApiError

from .store import PromptError, PromptStore, PromptVersion

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def render(
    store: PromptStore, tenant: str, body: dict[str, Any], wire: str
) -> tuple[dict[str, Any], PromptVersion | None]:
    """(the body with the prompt applied, the version used); the body unchanged when none is named."""
    ref = body.get("prompt")
    if ref is None:
        if "prompt_variables" in body:
            raise ApiError(422, "invalid_body", "prompt_variables needs a prompt")
        return body, None
    if not isinstance(ref, str) or not ref:
        raise ApiError(422, "invalid_body", "prompt must be a name or name@version")
    try:
        version = store.resolve(tenant, ref)
    except PromptError as e:
        raise ApiError(
            404 if e.code == "not_found" else 422,
            "prompt_not_found" if e.code == "not_found" else "invalid_body",
            str(e),
        ) from None
    variables = body.get("prompt_variables") or {}
    if not isinstance(variables, dict) or any(
        not isinstance(v, str | int | float | bool) for v in variables.values()
    ):
        raise ApiError(422, "invalid_body", "prompt_variables must map names to strings or numbers")
    messages = body.get("messages") or []
    if body.get("system") or any(
        isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages
    ):
        raise ApiError(
            422, "invalid_body", "a request that names a prompt cannot carry its own system prompt"
        )
    missing = sorted({m for m in _PLACEHOLDER.findall(version.text) if m not in variables})
    if missing:
        raise ApiError(
            422, "invalid_body", f"prompt {version.ref} needs prompt_variables: {', '.join(missing)}"
        )
    text = _PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), version.text)
    out = {k: v for k, v in body.items() if k not in ("prompt", "prompt_variables")}
    if wire == "anthropic":
        out["system"] = text
    else:
        out["messages"] = [{"role": "system", "content": text}, *messages]
    return out, version
