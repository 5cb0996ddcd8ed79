"""The canonical form of a chat request: what the cache keys on, whatever API shape it came in.

An OpenAI body and an Anthropic body that ask the same thing of the same routed model produce
the same canonical form, so they share entries (the replay is rebuilt in each client's shape).
Everything that can change the answer is in the form; only what cannot (``stream``,
``stream_options``, ``user``, ``metadata``) is left out.  Unknown fields are kept: a parameter
this module does not know is assumed to change the answer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

#: Fields that never change the answer's content (transport, attribution).
_IGNORED = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "metadata",
        "model",
        "messages",
        "system",
        "prompt",
        "prompt_variables",
    }
)
_OPENAI_SYSTEM_ROLES = ("system", "developer")


@dataclass(frozen=True)
class Turn:
    """One message: its role and its text; ``extra`` holds non-text parts (canonical JSON)."""

    role: str
    text: str
    extra: str = ""


@dataclass(frozen=True)
class CanonicalRequest:
    """Everything answer-changing about one request, after routing.

    Parameters:
      tenant(str)
      target(str): ``provider/model`` the request was routed to (the first of the route's order).
      system(str): The system prompt (OpenAI system/developer messages or Anthropic ``system``).
      turns(tuple[Turn, ...]): The conversation without the system prompt.
      params(str): Sampling parameters, max tokens, stop sequences... as canonical JSON.
      prompt(str): ``name@version`` of the library prompt used, or "".
    """

    tenant: str
    target: str
    system: str
    turns: tuple[Turn, ...]
    params: str
    prompt: str = ""

    def exact_key(self) -> str:
        """SHA-256 over the whole canonical form (the exact layer's key)."""
        return _sha(
            {
                "tenant": self.tenant,
                "target": self.target,
                "system": self.system,
                "turns": [[t.role, t.text, t.extra] for t in self.turns],
                "params": self.params,
                "prompt": self.prompt,
            }
        )

    def scope(self) -> str:
        """SHA-256 over everything a semantic match must share exactly: all but the turns' wording.

        The system prompt is here, not in the embedding: under another system prompt the same
        question is another request (an embedding of the same user text would score 1.0).
        """
        return _sha(
            {
                "tenant": self.tenant,
                "target": self.target,
                "system": self.system,
                "roles": [t.role for t in self.turns],
                "params": self.params,
                "prompt": self.prompt,
            }
        )

    @property
    def text_only(self) -> bool:
        """No images or other non-text parts (those are matched exactly or not at all)."""
        return not any(t.extra for t in self.turns)

    def conversation(self) -> str:
        """The whole conversation as one text, as it is embedded."""
        if len(self.turns) == 1:
            return self.turns[0].text
        return "\n".join(f"{t.role}: {t.text}" for t in self.turns)


def canonicalize(
    body: dict[str, Any], *, tenant: str, target: str, default_max_tokens: int, prompt: str = ""
) -> CanonicalRequest:
    """The canonical form of an OpenAI or Anthropic chat body (already validated by the proxy)."""
    system_parts: list[str] = []
    system = body.get("system")
    if system is not None:
        text, extra = _content(system)
        system_parts.append(text + (f"\n{extra}" if extra else ""))
    turns: list[Turn] = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            turns.append(Turn("?", "", _dumps(message)))
            continue
        role = str(message.get("role", ""))
        text, extra = _content(message.get("content"))
        rest = {k: v for k, v in message.items() if k not in ("role", "content")}
        if rest:
            extra = (extra + "\n" if extra else "") + _dumps(rest)
        if role in _OPENAI_SYSTEM_ROLES and not turns:
            system_parts.append(text + (f"\n{extra}" if extra else ""))
            continue
        turns.append(Turn(role, text, extra))
    return CanonicalRequest(
        tenant=tenant,
        target=target,
        system="\n\n".join(system_parts),
        turns=tuple(turns),
        params=_dumps(_params(body, default_max_tokens)),
        prompt=prompt,
    )


def _params(body: dict[str, Any], default_max_tokens: int) -> dict[str, Any]:
    params = {k: v for k, v in body.items() if k not in _IGNORED}
    max_tokens = params.pop("max_completion_tokens", None) or params.pop("max_tokens", None)
    params.pop("max_tokens", None)
    params["max_tokens"] = max_tokens if isinstance(max_tokens, int) else default_max_tokens
    stop = params.pop("stop", None) or params.pop("stop_sequences", None)
    params.pop("stop_sequences", None)
    if isinstance(stop, str):
        stop = [stop]
    if stop:
        params["stop"] = sorted(str(s) for s in stop)
    if params.get("temperature") is not None:
        params["temperature"] = float(params["temperature"])
    if params.get("top_p") is not None:
        params["top_p"] = float(params["top_p"])
    if params.get("n") == 1:
        params.pop("n")
    if params.get("response_format") == {"type": "text"}:
        params.pop("response_format")
    return params


def _content(content: Any) -> tuple[str, str]:
    """(text, canonical JSON of any non-text parts) of a message content or a system value."""
    if content is None:
        return "", ""
    if isinstance(content, str):
        return content, ""
    if isinstance(content, list):
        texts: list[str] = []
        extras: list[Any] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
                rest = {k: v for k, v in part.items() if k not in ("type", "text", "cache_control")}
                if rest:
                    extras.append(rest)
            else:
                extras.append(part)
        return "\n".join(texts), _dumps(extras) if extras else ""
    return "", _dumps(content)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _sha(value: Any) -> str:
    return hashlib.sha256(_dumps(value).encode()).hexdigest()
