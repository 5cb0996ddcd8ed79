"""The four stage actors of a Pressline workflow, one queue each.

A workflow is a Dramatiq pipeline ingest -> infer -> post-process -> publish; each stage's result
is the next stage's last argument.  Until the inference proxy and the WordPress client are wired
in, ``infer`` writes an extractive draft (the lead sentences of the source) and ``publish``
records the finished post in the job archive.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any, TypeVar

import dramatiq

from shared.errors import PermanentError

F = TypeVar("F", bound=Callable[..., Any])

MAX_TITLE = 200
MAX_SOURCE = 20_000
DRAFT_SENTENCES = 3


def stage(queue_name: str, **options: Any) -> Callable[[F], F]:
    """Declare a stage actor: its own queue, and PermanentError dead-letters without retries."""

    def decorate(fn: F) -> F:
        return dramatiq.actor(queue_name=queue_name, throws=(PermanentError,), **options)(fn)  # type: ignore[return-value]

    return decorate


def _text(document: dict[str, Any], field: str, limit: int) -> str:
    value = document.get(field)
    if not isinstance(value, str) or not value.strip():
        raise PermanentError(f"{field!r} must be a non-empty string")
    value = re.sub(r"\s+", " ", value).strip()
    if len(value) > limit:
        raise PermanentError(f"{field!r} is longer than {limit} characters")
    return value


@stage("ingest")
def ingest(document: dict[str, Any]) -> dict[str, Any]:
    """Validate and normalise the input document."""
    return {"title": _text(document, "title", MAX_TITLE), "source": _text(document, "source", MAX_SOURCE)}


@stage("infer", time_limit=120_000)
def infer(document: dict[str, Any]) -> dict[str, Any]:
    """Write the draft body."""
    sentences = re.split(r"(?<=[.!?])\s+", document["source"])
    return {**document, "draft": " ".join(sentences[:DRAFT_SENTENCES])}


@stage("post-process")
def post_process(document: dict[str, Any]) -> dict[str, Any]:
    """Turn the draft into safe HTML and check the required fields."""
    draft = document.get("draft", "").strip()
    if not draft:
        raise PermanentError("the draft is empty")
    return {**document, "html": f"<p>{html.escape(draft)}</p>"}


@stage("publish")
def publish(document: dict[str, Any]) -> dict[str, Any]:
    """Publish the post (until the WordPress client lands: the archive keeps it)."""
    return {"title": document["title"], "html": document["html"], "status": "archived"}
