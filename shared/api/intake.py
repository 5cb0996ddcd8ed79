"""POST /v1/webhooks/wordpress/{site}: a signed WordPress event becomes a job, once.

Order matters: the signature is checked over the raw body before anything is parsed or stored;
then the event id is claimed (a replay is refused); only then is the job enqueued, with an id
derived from the site and event id, so the same event can never make two jobs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import dramatiq
from pydantic import ValidationError

from shared.jobs import JobStore
from shared.sites import SITE_ID, SiteRegistry
from shared.telemetry.webhook_metrics import webhook_metrics
from shared.webhooks import (
    ReplayGuard,
    SecretsUnavailableError,
    WebhookSecrets,
    WebhookVerificationError,
    verify,
)
from shared.workflow import submit_workflow

from .errors import ApiError
from .guard import Guard
from .models import JobInput, WebhookAccepted, WebhookEvent
from .responses import ApiResponse

#: The events that start a job; anything else is acknowledged and ignored.
GENERATE = "post.generate_requested"


class WebhookIntake:
    """Verifies, deduplicates and enqueues WordPress webhooks.

    Parameters:
      broker(dramatiq.Broker)
      jobs(JobStore)
      secrets(WebhookSecrets): Each site's signing secrets (current and previous).
      replay(ReplayGuard): Event ids seen within the tolerance window.
      sites(SiteRegistry): Which tenant a site belongs to and whether it lets jobs publish.
      guard(Guard): The per-tenant rate limit.
      tolerance_s(int): How far a webhook's timestamp may be from now.
      max_body_bytes(int)
      clock: The time now, in seconds (a parameter for tests).
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        jobs: JobStore,
        secrets: WebhookSecrets,
        replay: ReplayGuard,
        sites: SiteRegistry,
        guard: Guard,
        *,
        tolerance_s: int,
        max_body_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.jobs = jobs
        self.secrets = secrets
        self.replay = replay
        self.sites = sites
        self.guard = guard
        self.tolerance_s = tolerance_s
        self.max_body_bytes = max_body_bytes
        self.clock = clock

    def receive(self, site_id: str, headers: Mapping[str, str], body: bytes | None) -> ApiResponse:
        """Counted by outcome (``pressline_webhooks_received_total``) whatever the answer."""
        try:
            response = self._receive(site_id, headers, body)
        except ApiError as e:
            webhook_metrics().received.labels(e.code).inc()
            raise
        webhook_metrics().received.labels(str(response.body.get("status", response.status))).inc()
        return response

    def _receive(self, site_id: str, headers: Mapping[str, str], body: bytes | None) -> ApiResponse:
        raw = body or b""
        if len(raw) > self.max_body_bytes:
            raise ApiError(413, "payload_too_large", f"the body is larger than {self.max_body_bytes} bytes")
        if not SITE_ID.match(site_id):
            raise ApiError(404, "unknown_site", "there is no such site")
        self._verify(site_id, headers, raw)
        site = self.sites.get(site_id)
        if site is None:
            raise ApiError(404, "unknown_site", "there is no such site")
        self.guard.within_rate(site.tenant)
        msg_id = _header(headers, "webhook-id")
        if not self.replay.first_seen(msg_id, scope=site_id):
            raise ApiError(409, "replayed_webhook", "this webhook id was already received")
        try:
            return self._enqueue(site_id, site.tenant, site.publish_allowed, msg_id, raw)
        except ApiError:
            raise  # an authentic but unusable event: a resend would be refused the same way
        except BaseException:
            self.replay.forget(msg_id, scope=site_id)  # nothing was enqueued: let the sender retry
            raise

    def _verify(self, site_id: str, headers: Mapping[str, str], raw: bytes) -> None:
        try:
            secrets = self.secrets.for_site(site_id)
        except SecretsUnavailableError:
            raise ApiError(503, "unavailable", "webhook secrets are unavailable; retry later") from None
        try:
            verify(secrets, headers, raw, now=self.clock(), tolerance_s=self.tolerance_s)
        except WebhookVerificationError as e:
            webhook_metrics().verification_failures.labels(e.reason).inc()
            raise ApiError(
                401,
                "invalid_signature",
                "the webhook signature did not verify",
                details=[{"reason": e.reason}],
            ) from None

    def _enqueue(
        self, site_id: str, tenant: str, site_publishes: bool, msg_id: str, raw: bytes
    ) -> ApiResponse:
        try:
            event = WebhookEvent.model_validate_json(raw)
        except ValidationError:
            raise ApiError(422, "invalid_event", "the webhook body is not a WordPress event") from None
        if event.type != GENERATE:
            return ApiResponse(200, WebhookAccepted(status="ignored").model_dump(exclude_none=True))
        data = event.data
        try:
            document = JobInput.model_validate({"title": data.get("title"), "source": data.get("source")})
        except ValidationError:
            raise ApiError(422, "invalid_event", f"{GENERATE} needs data.title and data.source") from None
        job_id = "wh" + hashlib.sha256(f"{site_id}:{msg_id}".encode()).hexdigest()[:30]
        options: dict[str, Any] = {
            "site": site_id,
            "publish": site_publishes and data.get("publish") is True,
            "wp_post_id": data.get("post_id"),
            "webhook_id": msg_id,
        }
        submit_workflow(
            self.broker, self.jobs, document.model_dump(), job_id=job_id, tenant=tenant, options=options
        )
        status_url = f"/v1/jobs/{job_id}"
        return ApiResponse(
            202, WebhookAccepted(status="accepted", job_id=job_id, status_url=status_url).model_dump()
        )


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return ""
