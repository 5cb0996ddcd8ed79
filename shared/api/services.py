"""Everything the API's routes need, built once per process from Settings."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.sdk.trace import TracerProvider

from shared.auth import TokenStore
from shared.aws import aws_client
from shared.claim_check import ClaimCheckEncoder
from shared.config import Settings
from shared.jobs import JobStore
from shared.payloads import PayloadStore
from shared.ratelimit import RateLimiter
from shared.redis_client import redis_client
from shared.request_idempotency import RequestIdempotency
from shared.sites import SiteRegistry
from shared.streams import RedisStreamsBroker
from shared.telemetry.message_tracing import Tracing
from shared.webhooks import ReplayGuard, WebhookSecrets

from .guard import Guard
from .intake import WebhookIntake
from .jobs import JobsApi


@dataclass(frozen=True)
class Services:
    jobs: JobsApi
    webhooks: WebhookIntake
    broker: RedisStreamsBroker

    @classmethod
    def from_settings(cls, settings: Settings, tracer_provider: TracerProvider | None = None) -> Services:
        client = redis_client(settings)
        payloads = PayloadStore(aws_client("s3", settings), settings.payload_bucket)
        # A producer-only broker: the same encoder as the workers (claim-check), and the tracing
        # middleware, so each message carries the request's trace context.
        broker = RedisStreamsBroker(
            client=client,
            namespace=settings.namespace,
            encoder=ClaimCheckEncoder(payloads, settings.claim_check_bytes),
            middleware=[Tracing(tracer_provider)],
        )
        jobs = JobStore(client, settings.namespace, settings.job_ttl_s)
        guard = Guard(
            TokenStore(client, settings.namespace),
            RateLimiter(client, settings.namespace),
            settings.api_rate_limit,
        )
        idempotency = RequestIdempotency(
            client,
            settings.namespace,
            ttl_s=settings.request_idempotency_ttl_s,
            lock_s=settings.request_idempotency_lock_s,
        )
        intake = WebhookIntake(
            broker,
            jobs,
            WebhookSecrets.from_settings(settings, aws_client("secretsmanager", settings)),
            ReplayGuard(client, settings.namespace, ttl_s=2 * settings.webhook_tolerance_s),
            SiteRegistry(client, settings.namespace),
            guard,
            tolerance_s=settings.webhook_tolerance_s,
            max_body_bytes=settings.max_webhook_body_bytes,
        )
        return cls(
            jobs=JobsApi(broker, jobs, guard, idempotency, settings.max_job_body_bytes),
            webhooks=intake,
            broker=broker,
        )
