"""Ingest: validate and normalise a job's input (its archive record keeps it as the job's input).

Input comes from the API (already schema-checked) or a WordPress webhook, so it is checked again
here: a message is a trust boundary of its own (a requeued or hand-written one).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from shared.errors import PermanentError

MAX_TITLE = 200
MAX_SOURCE = 20_000
MAX_HINTS = 1_000

_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


def clean_text(value: str, *, keep_paragraphs: bool) -> str:
    """NFC, no control characters, single spaces; paragraphs kept as one blank line if asked."""
    value = unicodedata.normalize("NFC", value).replace("\r\n", "\n").replace("\r", "\n")
    value = "".join(ch for ch in value if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    if not keep_paragraphs:
        return " ".join(value.split())
    paragraphs = _BLANK_LINES.split(value)
    lines = (" ".join(_SPACES.sub(" ", p).split()) for p in paragraphs)
    return "\n\n".join(line for line in lines if line)


def _field(document: dict[str, Any], name: str, limit: int, *, required: bool, paragraphs: bool) -> str:
    value = document.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise PermanentError(f"{name!r} must be a string")
    value = clean_text(value, keep_paragraphs=paragraphs)
    if required and not value:
        raise PermanentError(f"{name!r} must not be empty")
    if len(value) > limit:
        raise PermanentError(f"{name!r} is longer than {limit} characters")
    return value


def normalise(document: Any) -> dict[str, str]:
    """The job's input as the next stages see it: ``title``, ``source`` and optional ``hints``."""
    if not isinstance(document, dict):
        raise PermanentError("the job input must be a JSON object")
    result = {
        "title": _field(document, "title", MAX_TITLE, required=True, paragraphs=False),
        "source": _field(document, "source", MAX_SOURCE, required=True, paragraphs=True),
    }
    hints = _field(document, "hints", MAX_HINTS, required=False, paragraphs=False)
    if hints:
        result["hints"] = hints
    return result
