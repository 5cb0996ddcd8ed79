"""Everything the API's routes need, built once per process from Settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from shared.archive import ArchiveReader
from shared.auth import TokenStore
from shared.aws import aws_client
from shared.cache.factory import build_cache
from shared.claim_check import ClaimCheckEncoder
from shared.config import Settings
from shared.cost.alerts import BudgetAlerts
from shared.cost.budget import BudgetGuard
from shared.cost.ledger import CostLedger
from shared.cost.prices import PriceTable
from shared.jobs import JobStore
from shared.outbound import checked_endpoints, publish_event
from shared.payloads import PayloadStore
from shared.prompts import PromptStore
from shared.proxy.accounting import CostAccounting
from shared.proxy.admission import Admission
from shared.proxy.breakers import Breakers
from shared.proxy.keys import ProviderKeys
from shared.proxy.metrics import ProxyMetrics
from shared.proxy.paced import PacedTransport
from shared.proxy.providers import AnthropicProvider, GroqProvider, OpenAIProvider, Provider
from shared.proxy.routing import Router
from shared.proxy.service import ProxyService, RetryPolicy
from shared.ratelimit import RateLimiter
from shared.redis_client import redis_client
from shared.request_idempotency import RequestIdempotency
from shared.sites import SiteRegistry
from shared.streams import RedisStreamsBroker
from shared.telemetry.message_tracing import Tracing
from shared.webhooks import ReplayGuard, WebhookSecrets

from .costs import CostsApi
from .guard import Guard
from .intake import WebhookIntake
from .jobs import JobsApi
from .prompts import PromptsApi


@dataclass(frozen=True)
class Services:
    jobs: JobsApi
    webhooks: WebhookIntake
    proxy: ProxyService
    costs: CostsApi
    prompts: PromptsApi
    broker: RedisStreamsBroker
    registry: CollectorRegistry
    #: Set when the server is pre-forked: /metrics then sums every process's files.
    metrics_dir: str | None = None

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
        ledger = CostLedger.from_settings(settings, client)
        budgets = BudgetGuard.from_settings(settings, client, ledger=ledger)
        registry = CollectorRegistry()
        proxy = build_proxy(settings, client, guard, budgets, registry, broker)
        return cls(
            jobs=JobsApi(
                broker,
                jobs,
                guard,
                idempotency,
                settings.max_job_body_bytes,
                archive=ArchiveReader(client, settings.namespace, payloads),
            ),
            webhooks=intake,
            proxy=proxy,
            costs=CostsApi(guard, ledger, budgets),
            prompts=PromptsApi(guard, proxy.prompts or PromptStore(client, settings.namespace)),
            broker=broker,
            registry=registry,
            metrics_dir=settings.prometheus_multiproc_dir,
        )


def budget_alerts(
    settings: Settings, registry: CollectorRegistry, broker: RedisStreamsBroker | None
) -> BudgetAlerts:
    """The ``on_alert`` hook: log line, counter, and a signed webhook event to each configured URL
    (checked by the egress policy now: a refused one is a ConfigError at startup)."""
    if broker is None or not settings.outbound_webhook_urls:
        return BudgetAlerts(registry)
    urls = checked_endpoints(settings)
    return BudgetAlerts(registry, lambda kind, data: publish_event(broker, kind, data, urls=urls))


def build_proxy(
    settings: Settings,
    client: redis.Redis,
    guard: Guard,
    budgets: BudgetGuard,
    registry: CollectorRegistry,
    broker: RedisStreamsBroker | None = None,
) -> ProxyService:
    """The inference proxy with its providers, policy, breakers and accounting.

    ``broker`` carries the budget alerts' webhook events (none are sent without it).
    """
    providers: dict[str, Provider] = {
        "openai": OpenAIProvider(settings.openai_base_url),
        "anthropic": AnthropicProvider(settings.anthropic_base_url),
        "groq": GroqProvider(settings.groq_base_url),
    }
    breakers = Breakers(
        client, settings.namespace, settings.breaker_fail_max, settings.breaker_reset_timeout_s
    )
    prices = PriceTable.load(settings.price_table_path)
    keys = ProviderKeys(aws_client("secretsmanager", settings), settings.provider_secret_prefix)
    cache = build_cache(settings, client, budgets.ledger, prices, registry, lambda: keys.get("openai"))
    prompts = PromptStore(client, settings.namespace, on_change=cache.purge_prompt if cache else None)
    return ProxyService(
        guard=guard,
        router=Router(Path(settings.routing_policy)) if settings.routing_policy else Router(),
        providers=providers,
        keys=keys,
        breakers=breakers,
        metrics=ProxyMetrics(registry, breakers.state, tuple(providers)),
        accounting=CostAccounting(
            prices,
            budgets,
            settings.proxy_default_max_tokens,
            on_alert=budget_alerts(settings, registry, broker),
        ),
        # Idle upstream connections are kept 90 s (httpx's default is 5 s): a burst after a quiet
        # spell would otherwise pay a new TCP (and, to a real provider, TLS) handshake per stream.
        http=httpx.Client(
            transport=PacedTransport(
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=100, keepalive_expiry=90)
            )
        ),
        retry=RetryPolicy(
            attempts_per_target=settings.proxy_attempts_per_target,
            base_s=settings.proxy_backoff_base_s,
            max_s=settings.proxy_backoff_max_s,
        ),
        keepalive_s=settings.proxy_keepalive_s,
        max_body_bytes=settings.proxy_max_body_bytes,
        default_max_tokens=settings.proxy_default_max_tokens,
        cache=cache,
        prompts=prompts,
        admission=Admission(settings.proxy_admission_width),
        jobs=budgets.ledger.jobs,
    )
