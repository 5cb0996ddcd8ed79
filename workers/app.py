"""The worker application: the broker, its middleware and the stage actors.

Run a stage's workers with Dramatiq's own CLI, e.g. ``dramatiq workers.app -Q ingest -p 2 -t 8``
(``dramatiq-gevent`` for the I/O-bound ``infer`` queue); ``make run`` starts one per queue with the
concurrency of ``PRESSLINE_QUEUE_CONCURRENCY``.
"""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from shared.archive import ArchiveBuffer, Archiver
from shared.aws import aws_client
from shared.claim_check import ClaimCheckEncoder
from shared.config import Settings
from shared.idempotency import IdempotencyStore
from shared.jobs import JobStore
from shared.outbound import checked_endpoints
from shared.payloads import PayloadStore
from shared.pipeline.events import emit_outcome
from shared.redis_client import redis_client
from shared.streams import RedisStreamsBroker
from shared.telemetry.logging import configure_logging
from shared.telemetry.message_tracing import Tracing
from shared.telemetry.tracing import configure_tracing

from .middleware.archive import ArchiveFlushing
from .middleware.idempotency import Idempotency
from .middleware.job_state import JobState, OnFinished
from .middleware.prometheus import Prometheus, job_finished
from .middleware.retry_budget import BudgetedRetries


def build_middleware(
    settings: Settings,
    client: redis.Redis,
    payloads: PayloadStore,
    tracer_provider: TracerProvider | None = None,
) -> list[Middleware]:
    """Dramatiq's standard middleware plus Pressline's, in an order that matters.

    Before-hooks run top to bottom and after-hooks bottom to top: metrics and the trace span wrap
    everything, idempotency skips a finished message before any work, and the job record (with
    the run's archive record, in one round trip) sees Retries' verdict; the job record is written
    before Pipelines sends the next stage.
    """
    jobs = JobStore(client, settings.namespace, settings.job_ttl_s)
    return [
        Prometheus(),
        Tracing(tracer_provider),
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        CurrentMessage(),
        Idempotency(IdempotencyStore(client, settings.namespace, settings.idempotency_ttl_s)),
        ArchiveFlushing(
            Archiver(
                client,
                settings.namespace,
                payloads,
                batch=settings.archive_batch,
                interval_s=settings.archive_flush_s,
                lock_s=settings.archive_lock_s,
                index_ttl_s=settings.job_ttl_s,
            )
        ),
        Callbacks(),
        Pipelines(),
        # After Pipelines: a stage is recorded done before its next stage is enqueued (and can
        # finish the job); before Retries: it sees whether Retries gave up on the message.
        JobState(
            jobs,
            on_finished=outcome_events(settings, jobs),
            archive=ArchiveBuffer(settings.namespace, payloads),
        ),
        BudgetedRetries(
            max_retries=settings.max_retries,
            min_backoff=settings.min_backoff_ms,
            max_backoff=settings.max_backoff_ms,
            budgets_ms={queue: seconds * 1000 for queue, seconds in settings.retry_budget_s.items()},
        ),
    ]


def outcome_events(settings: Settings, jobs: JobStore) -> OnFinished:
    """A job's ``run.completed`` / ``run.failed`` event to the outbound webhook endpoints (each
    checked by the egress policy now: a refused one stops the worker at startup, ConfigError)."""
    urls = checked_endpoints(settings)

    def on_finished(broker: dramatiq.Broker, job_id: str, kind: str) -> str | None:
        job_finished(kind)  # pressline_jobs_finished_total{outcome}
        return emit_outcome(broker, jobs, job_id, kind, urls)

    return on_finished


def build_broker(settings: Settings, tracer_provider: TracerProvider | None = None) -> RedisStreamsBroker:
    """A Streams broker with claim-checked payloads and the full middleware stack."""
    client = redis_client(settings)
    payloads = PayloadStore(aws_client("s3", settings), settings.payload_bucket)
    return RedisStreamsBroker(
        client=client,
        namespace=settings.namespace,
        encoder=ClaimCheckEncoder(payloads, settings.claim_check_bytes),
        middleware=build_middleware(settings, client, payloads, tracer_provider),
        dead_after_ms=settings.consumer_dead_after_ms,
        dead_letter_maxlen=settings.dead_letter_maxlen,
    )


settings = Settings.from_env()
configure_logging(settings)
tracer_provider = configure_tracing(settings)
trace.set_tracer_provider(tracer_provider)  # so spans of shared code (clients, caches) join the job's
broker = build_broker(settings, tracer_provider)
dramatiq.set_broker(broker)

from . import actors, notify  # noqa: E402,F401  (declare the stage and webhook actors on this broker)
