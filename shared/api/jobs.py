"""POST /v1/jobs and GET /v1/jobs/{id}: enqueue a workflow job, read its record."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import dramatiq

from shared.archive import ArchiveReader, Location
from shared.auth import Principal, Scope
from shared.jobs import JobRecord, JobStore, StageRecord, derived_job_id, new_job_id, valid_job_id
from shared.request_idempotency import (
    InFlight,
    InvalidIdempotencyKeyError,
    Mismatch,
    Replay,
    RequestIdempotency,
    fingerprint,
)
from shared.sites import SiteRegistry
from shared.workflow import SubmissionInProgressError, submit_workflow

from .errors import ApiError
from .guard import Guard
from .models import ArchiveView, JobAccepted, JobCost, JobRequest, JobView, PostView, StageView
from .parsing import parse_body
from .responses import ApiResponse

JOBS_PATH = "/v1/jobs"


class JobsApi:
    """Job submission and status, scoped to the caller's tenant.

    Parameters:
      broker(dramatiq.Broker): Where workflow messages are enqueued.
      jobs(JobStore)
      guard(Guard)
      idempotency(RequestIdempotency): ``Idempotency-Key`` handling (Stripe's semantics).
      max_body_bytes(int)
      sites(SiteRegistry): Which tenant owns a site (default: the registry in the jobs' Redis).
      archive(ArchiveReader): Where the stages' archive records are (none: not shown).
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        jobs: JobStore,
        guard: Guard,
        idempotency: RequestIdempotency,
        max_body_bytes: int,
        sites: SiteRegistry | None = None,
        archive: ArchiveReader | None = None,
    ) -> None:
        self.broker = broker
        self.jobs = jobs
        self.guard = guard
        self.idempotency = idempotency
        self.max_body_bytes = max_body_bytes
        self.sites = sites or SiteRegistry(jobs.client, jobs.namespace)
        self.archive = archive

    def create(
        self,
        *,
        authorization: str | None,
        content_type: str | None,
        idempotency_key: str | None,
        body: bytes | None,
    ) -> ApiResponse:
        principal = self.guard.principal(authorization, Scope.JOBS_WRITE)
        request = parse_body(body, content_type, JobRequest, max_bytes=self.max_body_bytes)
        if not principal.has(Scope.CONTENT_DRAFT):
            raise ApiError(403, "forbidden", "creating content needs the content:draft scope")
        if request.publish and not principal.has(Scope.CONTENT_PUBLISH):
            raise ApiError(403, "forbidden", "publishing needs the content:publish scope")
        if request.site is not None:
            site = self.sites.get(request.site)
            if site is None or site.tenant != principal.tenant:  # another tenant's site is not named
                raise ApiError(
                    422,
                    "unknown_site",
                    "there is no such site",
                    details=[{"field": "site", "problem": "not registered"}],
                )
        if idempotency_key is None:
            return self._submit(principal, request, new_job_id())
        return self._submit_once(principal, request, idempotency_key)

    def _submit_once(self, principal: Principal, request: JobRequest, key: str) -> ApiResponse:
        """Stripe's semantics: same key and body replay the first answer; another body is refused."""
        print_ = fingerprint("POST", JOBS_PATH, request.model_dump(mode="json"))
        try:
            outcome = self.idempotency.begin(principal.tenant, key, print_)
        except InvalidIdempotencyKeyError:
            raise ApiError(
                400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable characters"
            ) from None
        if isinstance(outcome, Replay):
            return ApiResponse(
                outcome.status, json.loads(outcome.body), {**outcome.headers, "Idempotent-Replayed": "true"}
            )
        if isinstance(outcome, Mismatch):
            raise ApiError(
                422, "idempotency_key_reused", "this Idempotency-Key was used with another request"
            )
        if isinstance(outcome, InFlight):
            raise ApiError(409, "request_in_progress", "a request with this Idempotency-Key is still running")
        # The job id follows from the request, so a retry after this handler's crash (once the key's
        # lock expires) finds the job it created, and enqueues it if the crash came first.
        job_id = derived_job_id("ik", principal.tenant, key, print_)
        try:
            response = self._submit(principal, request, job_id)
        except BaseException:
            self.idempotency.release(principal.tenant, key)
            raise
        self.idempotency.complete(
            principal.tenant,
            key,
            print_,
            response.status,
            response.headers,
            json.dumps(response.body).encode(),
        )
        return response

    def _submit(self, principal: Principal, request: JobRequest, job_id: str) -> ApiResponse:
        options = {
            "site": request.site,
            # The draft/publish gate travels with the job: the publish stage re-checks it.
            "publish": request.publish and principal.has(Scope.CONTENT_PUBLISH),
            "metadata": request.metadata,
        }
        try:
            submit_workflow(
                self.broker,
                self.jobs,
                request.input.model_dump(exclude_none=True),
                job_id=job_id,
                tenant=principal.tenant,
                options=options,
                lease_s=self.idempotency.lock_s,
            )
        except SubmissionInProgressError as e:
            raise ApiError(
                409,
                "request_in_progress",
                "a request with this Idempotency-Key is still running",
                headers={"Retry-After": str(max(1, round(e.retry_after_s)))},
            ) from None
        status_url = f"{JOBS_PATH}/{job_id}"
        accepted = JobAccepted(job_id=job_id, state="queued", status_url=status_url)
        return ApiResponse(202, accepted.model_dump(), {"Location": status_url})

    def get(self, *, authorization: str | None, job_id: str) -> ApiResponse:
        principal = self.guard.principal(authorization, Scope.JOBS_READ)
        if not valid_job_id(job_id):
            raise ApiError(400, "invalid_job_id", "a job id is 1-64 letters, digits, '-' or '_'")
        record = self.jobs.get(job_id)
        if record is None or record.tenant != principal.tenant:
            raise ApiError(404, "job_not_found", "there is no such job")
        return ApiResponse(200, view(record, self._locations(record)).model_dump())

    def _locations(self, record: JobRecord) -> dict[str, Location]:
        """Each archive ref of the record, located (one round trip)."""
        refs = sorted({stage.archive for stage in record.stages if stage.archive})
        if self.archive is None or not refs:
            return {}
        return dict(zip(refs, self.archive.locate(record.tenant, refs), strict=True))


def view(record: JobRecord, archive: dict[str, Location] | None = None) -> JobView:
    """The record as the API shows it; ``archive``: its refs' locations, when they were looked up."""
    located = archive or {}
    return JobView(
        job_id=record.job_id,
        kind=record.kind,
        state=record.state.value,
        stage=record.stage,
        attempts=record.attempts,
        created_at=_iso(record.created_at_ms),
        updated_at=_iso(record.updated_at_ms),
        started_at=_iso(record.started_at_ms) if record.started_at_ms else None,
        finished_at=_iso(record.finished_at_ms) if record.finished_at_ms else None,
        last_error=record.last_error,
        input_ref=_uri(located.get(record.input_ref or "")),
        result_ref=_uri(located.get(record.output_ref or "")),
        cost=JobCost(usd=usd(record.cost_pico_usd), pico_usd=record.cost_pico_usd),
        site=record.site,
        trace_id=record.trace_id,
        stages=[stage_view(stage, located.get(stage.archive or "")) for stage in record.stages],
        post=None
        if record.post is None
        else PostView(
            id=record.post.post_id,
            link=record.post.link,
            status=record.post.status,
            publish_refused=record.post.publish_refused,
        ),
    )


def _uri(location: Location | None) -> str | None:
    if location is None or not location.archived:
        return None
    return f"{location.uri}#line={location.line}"


def stage_view(stage: StageRecord, location: Location | None = None) -> StageView:
    started, finished = stage.started_at_ms, stage.finished_at_ms
    return StageView(
        name=stage.name,
        state=stage.state.value,
        attempts=stage.attempts,
        started_at=_iso(started) if started else None,
        finished_at=_iso(finished) if finished else None,
        duration_ms=finished - started if started and finished else None,
        run_ms=stage.run_ms,
        last_error=stage.last_error,
        archive=None
        if location is None
        else ArchiveView(record_id=location.record_id, object=location.uri, line=location.line),
    )


def usd(pico_usd: int) -> str:
    """Exact decimal dollars of an amount in pico-dollars: 37500 -> "0.0000000375", 0 -> "0"."""
    text = format(Decimal(pico_usd).scaleb(-12), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
