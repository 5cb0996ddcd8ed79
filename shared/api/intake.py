"""POST /v1/webhooks/wordpress/{site}: a signed WordPress event becomes a job, once.

Order matters: the headers (presence, timestamp format and age) are checked before the site is
looked up, and the site in the registry (one Redis HGET) before its secret in Secrets Manager, so a
request that cannot verify, or names a site nobody registered, costs no Secrets Manager call. The
signature is checked over the raw body before anything is parsed or stored; then the event id is
claimed (a replay is refused); only then is the job enqueued, with an id derived from the site and
event id, so the same event can never make two jobs.

An unknown site, a registered site without a secret of its own and a wrong signature all get the
same answer (401 ``invalid_signature``, reason ``bad_signature``), so the route does not tell which
sites exist; the operator sees the difference in the logs and in
``pressline_webhook_verification_failures_total`` by reason.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import dramatiq
from pydantic import ValidationError

from shared.jobs import JobStore
from shared.sites import Site, SiteRegistry
from shared.telemetry.webhook_metrics import webhook_metrics
from shared.webhooks import (
    ReplayGuard,
    SecretsUnavailableError,
    WebhookSecrets,
    WebhookVerificationError,
    check_headers,
    new_secret,
    verify,
)
from shared.workflow import SubmissionInProgressError, submit_workflow

from .errors import ApiError
from .guard import Guard
from .json_reader import read_json
from .models import JobInput, WebhookAccepted, WebhookEvent
from .responses import ApiResponse

log = logging.getLogger(__name__)

#: What a sender is told to wait when Secrets Manager cannot be read (its retry then gets in).
SECRETS_RETRY_AFTER_S = 5

#: The events that start a job; anything else is acknowledged and ignored.
GENERATE = "post.generate_requested"

#: Verified against when a site has no secret, so that answer takes the time a wrong signature does.
_NO_SECRET = (new_secret(),)


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
        self._warned: set[str] = set()  # registered sites without a secret, logged once each
        self._warned_lock = threading.Lock()

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
        now = self.clock()
        try:
            msg_id, _, _ = check_headers(headers, now=now, tolerance_s=self.tolerance_s)
        except WebhookVerificationError as e:
            raise _refused(e.reason, e.reason) from None
        site = self._verify(site_id, headers, raw, now)
        self.guard.within_rate(site.tenant)
        if not self.replay.first_seen(msg_id, scope=site_id) and self.jobs.submitted(
            webhook_job_id(site_id, msg_id)
        ):
            # A replay is refused only once its job is in the queue: a delivery whose API process
            # died after the replay mark but before the enqueue must not lock its retries out.
            raise ApiError(409, "replayed_webhook", "this webhook id was already received")
        try:
            return self._enqueue(site_id, site.tenant, site.publish_allowed, msg_id, raw)
        except ApiError:
            raise  # an authentic but unusable event: a resend would be refused the same way
        except BaseException:
            self.replay.forget(msg_id, scope=site_id)  # nothing was enqueued: let the sender retry
            raise

    def _verify(self, site_id: str, headers: Mapping[str, str], raw: bytes, now: float) -> Site:
        """The site, when it is registered and signed the request; else the one refusal for all cases.

        Only a registered site's secret is looked up: a flood of made-up site names costs one Redis
        HGET each and never a Secrets Manager call (nor a cache slot a real site would lose).
        """
        site = self.sites.get(site_id)  # None for an unknown site, and for a malformed id
        secrets: tuple[str, ...] = ()
        if site is not None:
            try:
                secrets = self.secrets.for_site(site_id)
            except SecretsUnavailableError:
                # A sender treats 401 as final: this is ours to fix, so it must come back later.
                raise ApiError(
                    503,
                    "unavailable",
                    "webhook secrets are unavailable; retry later",
                    headers={"Retry-After": str(SECRETS_RETRY_AFTER_S)},
                ) from None
            if not secrets:
                self._warn_no_secret(site_id)
        try:
            # Without a secret, a throwaway one: the same HMAC work, and it never matches.
            verify(secrets or _NO_SECRET, headers, raw, now=now, tolerance_s=self.tolerance_s)
        except WebhookVerificationError as e:
            raise _refused(e.reason if secrets else _missing(site), "bad_signature") from None
        if site is None or not secrets:
            raise _refused(_missing(site), "bad_signature")
        return site

    def _warn_no_secret(self, site_id: str) -> None:
        """Tell the operator (once per site and process) why a registered site's webhooks fail."""
        with self._warned_lock:
            if site_id in self._warned:
                return
            self._warned.add(site_id)
        log.error(
            "site %s is registered but has no webhook secret of its own (%s): its webhooks are refused; "
            "create one with: python -m shared.sites rotate-secret --site %s",
            site_id,
            self.secrets.site_secret_name(site_id),
            site_id,
        )

    def _enqueue(
        self, site_id: str, tenant: str, site_publishes: bool, msg_id: str, raw: bytes
    ) -> ApiResponse:
        data = read_json(raw, None, max_bytes=self.max_body_bytes)  # bad JSON: 400, as on every route
        try:
            event = WebhookEvent.model_validate(data)
        except ValidationError:
            raise ApiError(422, "invalid_event", "the webhook body is not a WordPress event") from None
        if event.type != GENERATE:
            return ApiResponse(200, WebhookAccepted(status="ignored").model_dump(exclude_none=True))
        data = event.data
        try:
            document = JobInput.model_validate({"title": data.get("title"), "source": data.get("source")})
        except ValidationError:
            raise ApiError(422, "invalid_event", f"{GENERATE} needs data.title and data.source") from None
        job_id = webhook_job_id(site_id, msg_id)
        options: dict[str, Any] = {
            "site": site_id,
            "publish": site_publishes and data.get("publish") is True,
            "wp_post_id": data.get("post_id"),
            "webhook_id": msg_id,
        }
        try:
            submit_workflow(
                self.broker, self.jobs, document.model_dump(), job_id=job_id, tenant=tenant, options=options
            )
        except SubmissionInProgressError as e:  # the same event, being submitted by another delivery
            raise ApiError(
                409,
                "request_in_progress",
                "this webhook is still being processed",
                headers={"Retry-After": str(max(1, round(e.retry_after_s)))},
            ) from None
        status_url = f"/v1/jobs/{job_id}"
        return ApiResponse(
            202, WebhookAccepted(status="accepted", job_id=job_id, status_url=status_url).model_dump()
        )


def webhook_job_id(site_id: str, msg_id: str) -> str:
    """Every delivery of one event makes one job: its id follows from the site and webhook id."""
    return "wh" + hashlib.sha256(f"{site_id}:{msg_id}".encode()).hexdigest()[:30]


def _missing(site: Site | None) -> str:
    return "no_secret" if site is not None else "unknown_site"


def _refused(reason: str, shown: str) -> ApiError:
    """The 401 answered; ``reason`` is counted, ``shown`` (never telling whether a site exists) answered."""
    webhook_metrics().verification_failures.labels(reason).inc()
    return ApiError(
        401, "invalid_signature", "the webhook signature did not verify", details=[{"reason": shown}]
    )
