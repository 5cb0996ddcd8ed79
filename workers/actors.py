"""The four stage actors of a Pressline workflow, one queue each.

A workflow is a Dramatiq pipeline ingest -> infer -> post-process -> publish; each stage's result
is the next stage's last argument.  The actors are thin: they read the message's options (job,
tenant, site, publish gate) and call the stage's module in ``shared/pipeline/``.  A
``PermanentError`` dead-letters at once; a ``RetryLater`` (an unavailable LLM or WordPress) is
retried by Dramatiq's Retries after the delay it names, or with exponential backoff and jitter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import dramatiq
from dramatiq.middleware import CurrentMessage
from opentelemetry import trace

from shared.config import Settings
from shared.errors import PermanentError
from shared.jobs import PostRecord
from shared.pipeline import infer as infer_stage
from shared.pipeline import ingest as ingest_stage
from shared.pipeline import post_process as post_process_stage
from shared.pipeline import publish as publish_stage
from shared.pipeline.runtime import PipelineRuntime

F = TypeVar("F", bound=Callable[..., Any])

settings = Settings.from_env()

_lock = threading.Lock()
_runtime: list[PipelineRuntime] = []


def runtime() -> PipelineRuntime:
    """This process's services, built on first use (after Dramatiq forked the worker)."""
    with _lock:
        if not _runtime:
            broker = dramatiq.get_broker()
            _runtime.append(PipelineRuntime(settings, broker.client, broker))  # type: ignore[attr-defined]
        return _runtime[0]


def options() -> dict[str, Any]:
    message = CurrentMessage.get_current_message()
    if message is None or not message.options.get("job_id"):
        raise PermanentError("a stage message must carry a job_id")
    return message.options


def trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def stage(queue_name: str, **actor_options: Any) -> Callable[[F], F]:
    """Declare a stage actor: its own queue, and PermanentError dead-letters without retries."""

    def decorate(fn: F) -> F:
        return dramatiq.actor(queue_name=queue_name, throws=(PermanentError,), **actor_options)(fn)  # type: ignore[return-value]

    return decorate


@stage("ingest")
def ingest(document: dict[str, Any]) -> dict[str, Any]:
    """Validate and normalise the input (its archive record is the job's input)."""
    options()
    return ingest_stage.normalise(document)


@stage("infer", time_limit=300_000)
def infer(document: dict[str, Any]) -> dict[str, Any]:
    """Write the article with the LLM, through the proxy core (cost charged to the job, once)."""
    opts = options()
    rt = runtime()
    return infer_stage.infer(
        rt.proxy,
        document,
        tenant=str(opts.get("tenant") or ""),
        job_id=opts["job_id"],
        model=settings.pipeline_model,
        max_tokens=settings.pipeline_max_tokens,
        memo=rt.infer_memo,
    )


@stage("post-process")
def post_process(document: dict[str, Any]) -> dict[str, Any]:
    """Turn the draft into a title and safe HTML, and check it."""
    article = post_process_stage.render(
        document.get("draft", ""),
        fallback_title=document.get("title", ""),
        min_words=settings.pipeline_min_words,
    )
    return {**article, "model": document.get("model")}


@stage("publish", max_retries=settings.publish_max_retries)
def publish(document: dict[str, Any]) -> dict[str, Any]:
    """Write the job's one WordPress post (a draft unless both gates allow publishing).

    A job without a site keeps the article in the archive only.
    """
    opts = options()
    job_id, site_id = opts["job_id"], opts.get("site")
    if not site_id:
        return {"title": document["title"], "html": document["html"], "status": "archived"}
    rt = runtime()
    site = publish_stage.check_site(rt.sites.get(site_id), site_id=site_id, tenant=str(opts.get("tenant")))
    status = publish_stage.wanted_status(job_may_publish=opts.get("publish"), site=site)
    published = publish_stage.publish_article(
        rt.wordpress(site_id), document, job_id=job_id, status=status, trace_id=trace_id()
    )
    rt.jobs.set_post(
        job_id,
        PostRecord(published.post_id, published.link, published.status, published.publish_refused),
    )
    return {
        "post_id": published.post_id,
        "link": published.link,
        "status": published.status,
        "requested_status": published.requested_status,
        "publish_refused": published.publish_refused,
    }
