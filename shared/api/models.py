"""Request and response bodies of the API. Unknown fields are refused, not ignored.

These models are also the source of the OpenAPI document (``functions/openapi.py``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SiteId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
Text = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]
#: Metadata travels with every stage's message and into the job record: keys and values are
#: bounded in length, and their number by ``JobRequest.metadata``.
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=256)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobInput(Strict):
    title: Annotated[Text, StringConstraints(max_length=200)]
    source: Annotated[Text, StringConstraints(max_length=20_000)]
    hints: Annotated[Text, StringConstraints(max_length=1_000)] | None = Field(
        default=None, description="Notes for the writer: audience, tone, length, angle"
    )


class JobRequest(Strict):
    """A workflow job: write a post about ``input`` for ``site``; a draft unless ``publish``."""

    workflow: Literal["wordpress_post"] = "wordpress_post"
    site: SiteId | None = None
    input: JobInput
    publish: bool = False
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=20, description="Up to 20 keys of 1-64 characters, values up to 256"
    )


class JobAccepted(Strict):
    job_id: str
    state: str
    status_url: str


class JobCost(Strict):
    usd: str = Field(description="Spend so far, exact decimal dollars")
    pico_usd: int = Field(description="Spend so far in 10^-12 USD (exact integer)")


class ArchiveView(Strict):
    record_id: str = Field(description="The stage run's archive record (the same for every copy of it)")
    object: str | None = Field(description="The gzip JSON Lines object holding it; null while buffered")
    line: int | None = Field(description="Its line in the object, from 1")


class StageView(Strict):
    name: str
    state: Literal["queued", "running", "retrying", "succeeded", "failed", "skipped"]
    attempts: int
    started_at: str | None = Field(description="The first attempt's start")
    finished_at: str | None
    duration_ms: int | None = Field(description="From the first start to the finish, waits included")
    run_ms: int = Field(description="Time spent running, over all attempts")
    last_error: str | None
    archive: ArchiveView | None = Field(
        default=None, description="Where its last run's input and output are archived"
    )


class PostView(Strict):
    id: int = Field(description="The WordPress post id")
    link: str
    status: str = Field(description="The post's WordPress status (draft, pending, publish, ...)")
    publish_refused: bool = Field(description="Publishing was asked for but the credential may not")


class JobView(Strict):
    job_id: str
    kind: str
    state: Literal["queued", "running", "retrying", "succeeded", "failed"]
    stage: str
    attempts: int
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    last_error: str | None
    input_ref: str | None = Field(description="The archived input (``s3://...#line=N``); null while buffered")
    result_ref: str | None = Field(description="The archived output of the last stage that succeeded")
    cost: JobCost
    site: str | None = None
    trace_id: str | None = Field(default=None, description="The OpenTelemetry trace of the run (hex)")
    stages: list[StageView] = Field(default_factory=list)
    post: PostView | None = None


class WebhookEvent(BaseModel):
    """A WordPress event (Pressline's mu-plugin sends these; extra fields are kept)."""

    model_config = ConfigDict(extra="allow")

    type: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    data: dict[str, Any] = Field(default_factory=dict)


class WebhookAccepted(Strict):
    status: Literal["accepted", "ignored"]
    job_id: str | None = None
    status_url: str | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None
    trace_id: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
