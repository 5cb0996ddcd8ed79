"""Every setting Pressline reads from the environment, in one place.

Names follow what operators of this kind of system already use (``DRAMATIQ_BROKER_URL``,
``QDRANT_URL``, ``HMAC_WEBHOOK_SECRET``, the standard ``OTEL_*`` and ``AWS_*`` variables);
Pressline's own knobs are prefixed ``PRESSLINE_``. The README lists each with its default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.egress.policy import AllowRule, EgressPolicy, EgressRefused, parse_allow_list

#: The four workflow stages, then ``webhooks`` (outbound signed webhooks, see shared.outbound).
QUEUES: tuple[str, ...] = ("ingest", "infer", "post-process", "publish", "webhooks")

#: The port of the Redis that ``make run`` starts and owns (when ``DRAMATIQ_BROKER_URL`` is unset).
DEFAULT_LOCAL_REDIS_PORT = 6380


@dataclass(frozen=True)
class QueueConcurrency:
    """How many worker processes and threads (or greenlets) serve one queue."""

    processes: int
    threads: int
    gevent: bool = False


#: Defaults sized for a 2-core machine: CPU-light stages get threads, the I/O-bound
#: ``infer`` stage (LLM calls) runs under gevent with many greenlets.
DEFAULT_CONCURRENCY: dict[str, QueueConcurrency] = {
    "ingest": QueueConcurrency(processes=1, threads=8),
    "infer": QueueConcurrency(processes=1, threads=64, gevent=True),
    "post-process": QueueConcurrency(processes=1, threads=4),
    "publish": QueueConcurrency(processes=1, threads=4),
    # Threads bound the deliveries in flight per process (each waits on a back-office endpoint).
    "webhooks": QueueConcurrency(processes=1, threads=16),
}


@dataclass(frozen=True)
class RateLimit:
    """An aggregate call rate for one upstream: ``limit`` calls per ``period_s`` seconds."""

    limit: int
    period_s: float
    burst: int = 1

    @property
    def per_second(self) -> float:
        return self.limit / self.period_s


class ConfigError(ValueError):
    """Raised when an environment variable holds a value Pressline cannot use."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    raw = (env.get(name) or default).strip().lower()
    if raw not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _route_floats(env: Mapping[str, str], name: str) -> dict[str, float]:
    """``alias=value,alias=value`` (per-route TTLs and thresholds)."""
    result: dict[str, float] = {}
    for item in (env.get(name) or "").split(","):
        if not item.strip():
            continue
        alias, sep, value = item.strip().rpartition("=")
        try:
            if not sep or not alias:
                raise ValueError
            result[alias] = float(value)
        except ValueError:
            raise ConfigError(f"{name}: cannot parse {item.strip()!r} (want alias=number)") from None
    return result


def _site_pattern(env: Mapping[str, str], default: str) -> str:
    raw = env.get("PRESSLINE_WEBHOOK_SITE_SECRET_PATTERN") or default
    if "{site}" not in raw:
        raise ConfigError(f"PRESSLINE_WEBHOOK_SITE_SECRET_PATTERN must contain {{site}}, got {raw!r}")
    return raw


_CONCURRENCY_ITEM = re.compile(r"^(?P<queue>[a-z0-9-]+)=(?P<p>\d+)x(?P<t>\d+)(?P<g>:gevent)?$")


def parse_concurrency(raw: str | None) -> dict[str, QueueConcurrency]:
    """Parse ``ingest=2x8,infer=1x200:gevent`` over the defaults."""
    result = dict(DEFAULT_CONCURRENCY)
    if not raw:
        return result
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        match = _CONCURRENCY_ITEM.match(item)
        if match is None:
            raise ConfigError(f"PRESSLINE_QUEUE_CONCURRENCY: cannot parse {item!r} (want queue=PxT[:gevent])")
        queue = match["queue"]
        if queue not in QUEUES:
            raise ConfigError(f"PRESSLINE_QUEUE_CONCURRENCY: unknown queue {queue!r}")
        processes, threads = int(match["p"]), int(match["t"])
        if processes < 1 or threads < 1:
            raise ConfigError(f"PRESSLINE_QUEUE_CONCURRENCY: {item!r} needs at least 1x1")
        result[queue] = QueueConcurrency(processes, threads, gevent=bool(match["g"]))
    return result


#: How long a queue's message is retried through an upstream outage, from its first failure.
DEFAULT_RETRY_BUDGET_S = 15 * 60


def parse_retry_budgets(raw: str | None) -> dict[str, int]:
    """Parse ``900`` (every queue), ``infer=1800,publish=3600`` (those queues) or both, into seconds
    per queue. Default: 15 minutes for the pipeline's stages, none for ``webhooks``, whose own
    retry limit and backoff (``PRESSLINE_OUTBOUND_WEBHOOK_*``) already span hours."""
    every: int | None = None
    per_queue: dict[str, int] = {}
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        queue, sep, value = item.rpartition("=")
        if not value.isdigit() or (sep and queue not in QUEUES):
            raise ConfigError(
                f"PRESSLINE_RETRY_BUDGET_S: cannot parse {item!r} (want seconds or queue=seconds)"
            )
        if sep:
            per_queue[queue] = int(value)
        else:
            every = int(value)
    defaults = dict.fromkeys(QUEUES, DEFAULT_RETRY_BUDGET_S) | {"webhooks": 0}
    base = defaults if every is None else dict.fromkeys(QUEUES, every)
    return base | per_queue


_RATE_ITEM = re.compile(
    r"^(?P<name>[A-Za-z0-9_.:-]+)=(?P<n>\d+)/(?P<per>\d*\.?\d*)(?P<unit>ms|s|m|h)(?::(?P<b>\d+))?$"
)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate_limits(raw: str | None) -> dict[str, RateLimit]:
    """Parse ``openai=500/m,wordpress=10/s:5`` (name=limit/[n]unit[:burst])."""
    result: dict[str, RateLimit] = {}
    if not raw:
        return result
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        match = _RATE_ITEM.match(item)
        if match is None:
            raise ConfigError(f"PRESSLINE_RATE_LIMITS: cannot parse {item!r} (want name=N/unit[:burst])")
        per = float(match["per"] or 1) * _UNIT_SECONDS[match["unit"]]
        limit = int(match["n"])
        if limit < 1 or per <= 0:
            raise ConfigError(f"PRESSLINE_RATE_LIMITS: {item!r} must allow at least one call per period")
        result[match["name"]] = RateLimit(limit=limit, period_s=per, burst=int(match["b"] or 1))
    return result


def _urls(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list of http(s) URLs; empty entries are ignored."""
    urls = tuple(item.strip() for item in (env.get(name) or "").split(",") if item.strip())
    for position, url in enumerate(urls, 1):
        if not re.match(r"^https?://[^/\s]+", url):
            # The URL may hold a token: name the position, not the value.
            raise ConfigError(f"{name}: entry {position} is not an http(s) URL")
    return urls


def _egress_allow(env: Mapping[str, str]) -> tuple[AllowRule, ...]:
    """``PRESSLINE_EGRESS_ALLOW``: hosts, addresses and networks allowed though not public."""
    try:
        return parse_allow_list(env.get("PRESSLINE_EGRESS_ALLOW"))
    except ValueError as error:
        raise ConfigError(f"PRESSLINE_EGRESS_ALLOW: {error}") from None


def _egress_checked(name: str, urls: tuple[str, ...], allow: tuple[AllowRule, ...]) -> tuple[str, ...]:
    """Refuse URLs whose host is a non-public address literal (in any spelling) the allow-list does
    not name. Names are not resolved here (no DNS while reading settings): the processes that send
    check them at startup and on every connection (shared.egress)."""
    numeric = EgressPolicy(allow).numeric()
    for position, url in enumerate(urls, 1):
        try:
            numeric.check_url(url)
        except OSError:
            continue  # a name
        except (EgressRefused, ValueError) as error:  # names the host (no secret), never path or query
            raise ConfigError(f"{name}: entry {position}: {error} (see PRESSLINE_EGRESS_ALLOW)") from None
    return urls


def _rate(env: Mapping[str, str], name: str, default: RateLimit) -> RateLimit:
    """A single rate such as ``50/s:100`` (limit per period, optional burst)."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        return parse_rate_limits(f"x={raw}")["x"]
    except ConfigError:
        raise ConfigError(f"{name} must look like 50/s or 50/s:100, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    """Pressline's configuration. Build it with :meth:`from_env`; pass it down explicitly."""

    broker_url: str = f"redis://127.0.0.1:{DEFAULT_LOCAL_REDIS_PORT}/0"
    #: True when ``DRAMATIQ_BROKER_URL`` was set: the local stack then uses that Redis and starts none.
    broker_is_external: bool = False
    local_redis_port: int = DEFAULT_LOCAL_REDIS_PORT
    #: The stack's Redis AOF fsync policy: ``always`` (a write is on disk before Redis answers, so a
    #: kill -9 of Redis loses nothing a worker acted on), ``everysec`` (up to a second lost) or ``no``.
    local_redis_fsync: str = "always"
    #: Where the local stack keeps its files (Redis AOF, Prometheus DBs); relative to the project root.
    data_dir: str = ".data"
    namespace: str = "pressline"
    redis_max_connections: int = 64
    redis_pool_timeout_s: float = 20.0
    redis_socket_timeout_s: float = 10.0
    aws_endpoint_url: str | None = "http://127.0.0.1:4566"
    aws_region: str = "us-east-1"
    #: Only whether credentials are configured matters here (boto3 reads them itself); see shared.aws.
    aws_access_key_id: str | None = None
    aws_profile: str | None = None
    payload_bucket: str = "pressline-payloads"
    claim_check_bytes: int = 16 * 1024
    qdrant_url: str | None = None
    #: The shared webhook secret's local override; like ``webhook_secret_name``, read only in the
    #: single-tenant development mode (``webhook_shared_secret_dev``).
    hmac_webhook_secret: str | None = field(default=None, repr=False)
    webhook_secret_name: str = "pressline/webhook-hmac"
    #: Single-tenant development only: a registered site without its own webhook secret accepts the
    #: shared one (``HMAC_WEBHOOK_SECRET``, else ``webhook_secret_name``). Off: such a site refuses
    #: every webhook, since whoever holds a shared secret could start jobs for any tenant's site.
    webhook_shared_secret_dev: bool = False
    #: Secrets Manager name of one WordPress site's webhook secret; ``{site}`` is replaced by the site.
    webhook_site_secret_pattern: str = "pressline/sites/{site}/webhook"
    #: How long a rotated-out webhook secret (``AWSPREVIOUS``) is still accepted by default
    #: (``python -m shared.sites rotate-secret --grace-s`` sets it per rotation).
    webhook_rotation_grace_s: int = 24 * 3600
    #: How long a fetched webhook secret is reused before Secrets Manager is asked again.
    webhook_secret_cache_ttl_s: float = 60.0
    #: Accepted distance between a webhook's timestamp and now, both ways (Standard Webhooks: 5 min).
    webhook_tolerance_s: int = 300
    api_rate_limit: RateLimit = field(default_factory=lambda: RateLimit(limit=50, period_s=1.0, burst=100))
    max_job_body_bytes: int = 64 * 1024
    max_webhook_body_bytes: int = 256 * 1024
    #: Secrets Manager names of the LLM provider keys: ``<prefix>openai`` and so on.
    provider_secret_prefix: str = "pressline/providers/"
    concurrency: dict[str, QueueConcurrency] = field(default_factory=lambda: dict(DEFAULT_CONCURRENCY))
    rate_limits: dict[str, RateLimit] = field(default_factory=dict)
    consumer_dead_after_ms: int = 30_000
    drain_timeout_ms: int = 30_000
    idempotency_ttl_s: int = 24 * 3600
    #: How long the API replays the response stored under an ``Idempotency-Key`` (Stripe: 24 h).
    request_idempotency_ttl_s: int = 24 * 3600
    #: How long an in-flight ``Idempotency-Key`` stays locked, so a crashed handler frees it.
    request_idempotency_lock_s: int = 60
    job_ttl_s: int = 7 * 24 * 3600
    #: The archive's flushes to S3: at most one per interval (seconds), at most this many records.
    archive_flush_s: float = 5.0
    archive_batch: int = 5000
    #: How long a flush holds the archive's lock before another may start (a dead flusher's lock).
    archive_lock_s: float = 15.0
    dead_letter_maxlen: int = 100_000
    max_retries: int = 5
    min_backoff_ms: int = 500
    max_backoff_ms: int = 5 * 60_000
    #: Per queue: how long an upstream outage (LLM provider, WordPress, AWS endpoint, Redis) is
    #: retried, from the message's first failure, before it is dead-lettered (seconds).
    retry_budget_s: dict[str, int] = field(default_factory=lambda: parse_retry_budgets(None))
    openai_base_url: str = "https://api.openai.com/v1"
    anthropic_base_url: str = "https://api.anthropic.com"
    groq_base_url: str = "https://api.groq.com/openai/v1"
    routing_policy: str | None = None
    proxy_keepalive_s: float = 10.0
    proxy_attempts_per_target: int = 3
    proxy_backoff_base_s: float = 0.25
    proxy_backoff_max_s: float = 8.0
    proxy_max_body_bytes: int = 1024 * 1024
    proxy_default_max_tokens: int = 4096
    #: Proxy requests of one process admitted at once (token, limits, budget, routing); 0: no gate.
    proxy_admission_width: int = 2
    breaker_fail_max: int = 5
    breaker_reset_timeout_s: float = 30.0
    metrics_port: int = 9191
    api_port: int = 8000
    #: Processes of the local server (``functions.serve``) sharing its socket; 0: one per CPU.
    serve_workers: int = 0
    #: prometheus_client's multiprocess directory (set by ``functions.serve`` when it forks).
    prometheus_multiproc_dir: str | None = None
    log_level: str = "INFO"
    otel_service_name: str = "pressline"
    otel_exporter_otlp_endpoint: str | None = None
    otel_resource_attributes: str = ""
    otel_traces_sampler: str = "parentbased_always_on"
    otel_traces_sampler_arg: float = 1.0
    #: X-Ray-compatible trace ids (epoch seconds first); on by default on Lambda.
    xray_trace_ids: bool = False
    #: Loki's base URL (``http://host:3100``): log lines are also pushed there, off the request path.
    loki_url: str | None = None
    #: Log lines waiting for Loki in one process; past this, new lines are dropped and counted.
    loki_queue_lines: int = 10_000
    #: How often a process pushes its waiting lines to Loki.
    loki_flush_interval_s: float = 1.0
    #: ``make run`` also starts a local Prometheus (``PRESSLINE_PROMETHEUS=1``; see infra/prometheus.py).
    prometheus_local: bool = False
    prometheus_port: int = 9090
    #: A JSON price table to use instead of the packaged ``shared/cost/prices.json``.
    price_table_path: str | None = None
    #: Cost-ledger entries kept per tenant (the stream is trimmed approximately past this).
    cost_ledger_maxlen: int = 100_000
    #: How long a request's cost record (totals and its attempts) can be looked up.
    cost_request_ttl_s: int = 30 * 24 * 3600
    #: A budget hold expires after this, so a crashed process cannot keep a tenant's budget.
    budget_reservation_ttl_s: float = 900.0
    #: Non-public destinations Pressline may still connect to for sites and outbound webhooks
    #: (``PRESSLINE_EGRESS_ALLOW``: host, host:port, address[:port] or CIDR[:port]; see shared.egress).
    egress_allow: tuple[AllowRule, ...] = ()
    #: Back-office endpoints that receive Pressline's signed events (run outcomes, budget alerts).
    outbound_webhook_urls: tuple[str, ...] = ()
    #: Secrets Manager name of the outbound signing secret (``whsec_...``; see localstack/bootstrap.py).
    outbound_webhook_secret_name: str = "pressline/outbound-webhook"
    #: A literal outbound signing secret used instead of Secrets Manager (local use).
    outbound_webhook_secret: str | None = field(default=None, repr=False)
    #: One delivery attempt's HTTP timeout (connect, read, write, pool).
    outbound_webhook_timeout_s: float = 10.0
    #: Retries after the first attempt before a delivery is dead-lettered (Dramatiq backoff with jitter).
    outbound_webhook_max_retries: int = 8
    outbound_webhook_min_backoff_ms: int = 1000
    #: Also the cap on a receiver's ``Retry-After``.
    outbound_webhook_max_backoff_ms: int = 15 * 60_000
    #: The model alias (routing policy) the pipeline's infer stage asks the proxy for.
    pipeline_model: str = "gpt-4o-mini"
    #: The output cap of the infer stage's LLM call (the budget reserves for it).
    pipeline_max_tokens: int = 1500
    #: An article with fewer words than this is refused by post-process (a permanent failure).
    pipeline_min_words: int = 5
    #: Retries of the publish stage before a job fails: WordPress outages are waited out this long.
    publish_max_retries: int = 20
    #: ``make run`` also brings up the local WordPress (``PRESSLINE_WORDPRESS=1``; see infra/wordpress.py).
    wordpress_local: bool = False
    wordpress_port: int = 8088
    wordpress_db_port: int = 3317
    #: Secrets Manager name of a site's Application Password JSON when its registration names none.
    wordpress_credentials_pattern: str = "pressline/sites/{site}/wordpress"
    #: One WordPress request's timeout, and the attempts (with full-jitter backoff) per client call.
    wordpress_timeout_s: float = 10.0
    wordpress_attempts: int = 4
    wordpress_backoff_base_s: float = 0.5
    #: Also the longest ``Retry-After`` waited out in the call; a longer one fails it as unavailable.
    wordpress_backoff_max_s: float = 8.0
    #: Requests per second to one site, summed over every process (GCRA in Redis), and the burst.
    wordpress_rate_per_s: float = 10.0
    wordpress_rate_burst: int = 10
    #: Consecutive failures (5xx, 429, timeouts) that open a site's breaker, and how long it stays open.
    wordpress_breaker_fail_max: int = 5
    wordpress_breaker_reset_s: float = 30.0
    #: The proxy's response cache (exact layer in Redis, semantic layer in Qdrant); off by default.
    cache_enabled: bool = False
    #: The semantic layer (embeddings + the precise check); off: the exact layer only.
    cache_semantic: bool = True
    cache_ttl_s: float = 3600.0
    #: TTL per route alias, e.g. ``{"gpt-4o-mini": 600}`` (``PRESSLINE_CACHE_ROUTE_TTLS=gpt-4o-mini=600``).
    cache_route_ttl_s: dict[str, float] = field(default_factory=dict)
    #: Cosine similarity a semantic candidate needs before the precise check.
    cache_threshold: float = 0.85
    #: Threshold per route alias; 1 (or more) turns the semantic layer off for that route.
    cache_route_threshold: dict[str, float] = field(default_factory=dict)
    #: Requests with a higher temperature are never cached (both APIs default to 1).
    cache_max_temperature: float = 1.0
    #: Embedded Qdrant's directory (relative to data_dir), or ``:memory:``; unused with QDRANT_URL.
    cache_qdrant_path: str = "qdrant"
    #: ``minilm`` (offline ONNX, the default) or ``provider:<model>:<dim>`` (the OpenAI embeddings API).
    cache_embedder: str = "minilm"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        default = cls()
        endpoint = env.get("AWS_ENDPOINT_URL", default.aws_endpoint_url)
        local_redis_port = _int(env, "PRESSLINE_LOCAL_REDIS_PORT", default.local_redis_port)
        external_broker_url = env.get("DRAMATIQ_BROKER_URL") or None
        egress_allow = _egress_allow(env)
        return cls(
            broker_url=external_broker_url or f"redis://127.0.0.1:{local_redis_port}/0",
            broker_is_external=external_broker_url is not None,
            local_redis_port=local_redis_port,
            local_redis_fsync=_choice(
                env, "PRESSLINE_LOCAL_REDIS_FSYNC", ("always", "everysec", "no"), default.local_redis_fsync
            ),
            data_dir=env.get("PRESSLINE_DATA_DIR") or default.data_dir,
            namespace=env.get("PRESSLINE_NAMESPACE") or default.namespace,
            redis_max_connections=_int(env, "PRESSLINE_REDIS_MAX_CONNECTIONS", default.redis_max_connections),
            redis_pool_timeout_s=_float(env, "PRESSLINE_REDIS_POOL_TIMEOUT_S", default.redis_pool_timeout_s),
            redis_socket_timeout_s=_float(
                env, "PRESSLINE_REDIS_SOCKET_TIMEOUT_S", default.redis_socket_timeout_s
            ),
            aws_endpoint_url=endpoint or None,
            aws_region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or default.aws_region,
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            aws_profile=env.get("AWS_PROFILE") or None,
            payload_bucket=env.get("PRESSLINE_PAYLOAD_BUCKET") or default.payload_bucket,
            claim_check_bytes=_int(env, "PRESSLINE_CLAIM_CHECK_BYTES", default.claim_check_bytes),
            qdrant_url=env.get("QDRANT_URL") or None,
            hmac_webhook_secret=env.get("HMAC_WEBHOOK_SECRET") or None,
            webhook_secret_name=env.get("PRESSLINE_WEBHOOK_SECRET_NAME") or default.webhook_secret_name,
            webhook_shared_secret_dev=_bool(
                env, "PRESSLINE_WEBHOOK_SHARED_SECRET_DEV", default.webhook_shared_secret_dev
            ),
            webhook_site_secret_pattern=_site_pattern(env, default.webhook_site_secret_pattern),
            webhook_rotation_grace_s=_int(
                env, "PRESSLINE_WEBHOOK_ROTATION_GRACE_S", default.webhook_rotation_grace_s
            ),
            webhook_secret_cache_ttl_s=_float(
                env, "PRESSLINE_WEBHOOK_SECRET_CACHE_TTL_S", default.webhook_secret_cache_ttl_s
            ),
            webhook_tolerance_s=_int(env, "PRESSLINE_WEBHOOK_TOLERANCE_S", default.webhook_tolerance_s),
            api_rate_limit=_rate(env, "PRESSLINE_API_RATE_LIMIT", default.api_rate_limit),
            max_job_body_bytes=_int(env, "PRESSLINE_MAX_JOB_BODY_BYTES", default.max_job_body_bytes),
            max_webhook_body_bytes=_int(
                env, "PRESSLINE_MAX_WEBHOOK_BODY_BYTES", default.max_webhook_body_bytes
            ),
            provider_secret_prefix=env.get("PRESSLINE_PROVIDER_SECRET_PREFIX")
            or default.provider_secret_prefix,
            concurrency=parse_concurrency(env.get("PRESSLINE_QUEUE_CONCURRENCY")),
            rate_limits=parse_rate_limits(env.get("PRESSLINE_RATE_LIMITS")),
            consumer_dead_after_ms=_int(
                env, "PRESSLINE_CONSUMER_DEAD_AFTER_MS", default.consumer_dead_after_ms
            ),
            drain_timeout_ms=_int(env, "PRESSLINE_DRAIN_TIMEOUT_MS", default.drain_timeout_ms),
            idempotency_ttl_s=_int(env, "PRESSLINE_IDEMPOTENCY_TTL_S", default.idempotency_ttl_s),
            request_idempotency_ttl_s=_int(
                env, "PRESSLINE_REQUEST_IDEMPOTENCY_TTL_S", default.request_idempotency_ttl_s
            ),
            request_idempotency_lock_s=_int(
                env, "PRESSLINE_REQUEST_IDEMPOTENCY_LOCK_S", default.request_idempotency_lock_s
            ),
            job_ttl_s=_int(env, "PRESSLINE_JOB_TTL_S", default.job_ttl_s),
            archive_flush_s=_float(env, "PRESSLINE_ARCHIVE_FLUSH_S", default.archive_flush_s),
            archive_batch=_int(env, "PRESSLINE_ARCHIVE_BATCH", default.archive_batch),
            archive_lock_s=_float(env, "PRESSLINE_ARCHIVE_LOCK_S", default.archive_lock_s),
            dead_letter_maxlen=_int(env, "PRESSLINE_DEAD_LETTER_MAXLEN", default.dead_letter_maxlen),
            max_retries=_int(env, "PRESSLINE_MAX_RETRIES", default.max_retries),
            min_backoff_ms=_int(env, "PRESSLINE_MIN_BACKOFF_MS", default.min_backoff_ms),
            max_backoff_ms=_int(env, "PRESSLINE_MAX_BACKOFF_MS", default.max_backoff_ms),
            retry_budget_s=parse_retry_budgets(env.get("PRESSLINE_RETRY_BUDGET_S")),
            openai_base_url=env.get("PRESSLINE_OPENAI_BASE_URL") or default.openai_base_url,
            anthropic_base_url=env.get("PRESSLINE_ANTHROPIC_BASE_URL") or default.anthropic_base_url,
            groq_base_url=env.get("PRESSLINE_GROQ_BASE_URL") or default.groq_base_url,
            routing_policy=env.get("PRESSLINE_ROUTING_POLICY") or None,
            proxy_keepalive_s=_float(env, "PRESSLINE_PROXY_KEEPALIVE_S", default.proxy_keepalive_s),
            proxy_attempts_per_target=_int(
                env, "PRESSLINE_PROXY_ATTEMPTS", default.proxy_attempts_per_target
            ),
            proxy_backoff_base_s=_float(env, "PRESSLINE_PROXY_BACKOFF_BASE_S", default.proxy_backoff_base_s),
            proxy_backoff_max_s=_float(env, "PRESSLINE_PROXY_BACKOFF_MAX_S", default.proxy_backoff_max_s),
            proxy_max_body_bytes=_int(env, "PRESSLINE_PROXY_MAX_BODY_BYTES", default.proxy_max_body_bytes),
            proxy_default_max_tokens=_int(
                env, "PRESSLINE_PROXY_DEFAULT_MAX_TOKENS", default.proxy_default_max_tokens
            ),
            proxy_admission_width=_int(env, "PRESSLINE_PROXY_ADMISSION_WIDTH", default.proxy_admission_width),
            breaker_fail_max=_int(env, "PRESSLINE_BREAKER_FAIL_MAX", default.breaker_fail_max),
            breaker_reset_timeout_s=_float(
                env, "PRESSLINE_BREAKER_RESET_TIMEOUT_S", default.breaker_reset_timeout_s
            ),
            metrics_port=_int(env, "PRESSLINE_METRICS_PORT", default.metrics_port),
            api_port=_int(env, "PRESSLINE_API_PORT", default.api_port),
            serve_workers=_int(env, "PRESSLINE_SERVE_WORKERS", default.serve_workers),
            prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
            log_level=(env.get("PRESSLINE_LOG_LEVEL") or default.log_level).upper(),
            otel_service_name=env.get("OTEL_SERVICE_NAME") or default.otel_service_name,
            otel_exporter_otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
            otel_resource_attributes=env.get("OTEL_RESOURCE_ATTRIBUTES") or "",
            otel_traces_sampler=(env.get("OTEL_TRACES_SAMPLER") or default.otel_traces_sampler).lower(),
            otel_traces_sampler_arg=_float(env, "OTEL_TRACES_SAMPLER_ARG", default.otel_traces_sampler_arg),
            xray_trace_ids=_bool(env, "PRESSLINE_XRAY_TRACE_IDS", bool(env.get("AWS_LAMBDA_FUNCTION_NAME"))),
            loki_url=(env.get("LOKI_URL") or "").rstrip("/") or None,
            loki_queue_lines=_int(env, "PRESSLINE_LOKI_QUEUE_LINES", default.loki_queue_lines),
            loki_flush_interval_s=_float(
                env, "PRESSLINE_LOKI_FLUSH_INTERVAL_S", default.loki_flush_interval_s
            ),
            prometheus_local=_bool(env, "PRESSLINE_PROMETHEUS", default.prometheus_local),
            prometheus_port=_int(env, "PRESSLINE_PROMETHEUS_PORT", default.prometheus_port),
            price_table_path=env.get("PRESSLINE_PRICE_TABLE") or None,
            cost_ledger_maxlen=_int(env, "PRESSLINE_COST_LEDGER_MAXLEN", default.cost_ledger_maxlen),
            cost_request_ttl_s=_int(env, "PRESSLINE_COST_REQUEST_TTL_S", default.cost_request_ttl_s),
            budget_reservation_ttl_s=_float(
                env, "PRESSLINE_BUDGET_RESERVATION_TTL_S", default.budget_reservation_ttl_s
            ),
            egress_allow=egress_allow,
            outbound_webhook_urls=_egress_checked(
                "PRESSLINE_OUTBOUND_WEBHOOK_URLS", _urls(env, "PRESSLINE_OUTBOUND_WEBHOOK_URLS"), egress_allow
            ),
            outbound_webhook_secret_name=env.get("PRESSLINE_OUTBOUND_WEBHOOK_SECRET_NAME")
            or default.outbound_webhook_secret_name,
            outbound_webhook_secret=env.get("PRESSLINE_OUTBOUND_WEBHOOK_SECRET") or None,
            outbound_webhook_timeout_s=_float(
                env, "PRESSLINE_OUTBOUND_WEBHOOK_TIMEOUT_S", default.outbound_webhook_timeout_s
            ),
            outbound_webhook_max_retries=_int(
                env, "PRESSLINE_OUTBOUND_WEBHOOK_MAX_RETRIES", default.outbound_webhook_max_retries
            ),
            outbound_webhook_min_backoff_ms=_int(
                env, "PRESSLINE_OUTBOUND_WEBHOOK_MIN_BACKOFF_MS", default.outbound_webhook_min_backoff_ms
            ),
            outbound_webhook_max_backoff_ms=_int(
                env, "PRESSLINE_OUTBOUND_WEBHOOK_MAX_BACKOFF_MS", default.outbound_webhook_max_backoff_ms
            ),
            pipeline_model=env.get("PRESSLINE_PIPELINE_MODEL") or default.pipeline_model,
            pipeline_max_tokens=_int(env, "PRESSLINE_PIPELINE_MAX_TOKENS", default.pipeline_max_tokens),
            pipeline_min_words=_int(env, "PRESSLINE_PIPELINE_MIN_WORDS", default.pipeline_min_words),
            publish_max_retries=_int(env, "PRESSLINE_PUBLISH_MAX_RETRIES", default.publish_max_retries),
            wordpress_local=_bool(env, "PRESSLINE_WORDPRESS", default.wordpress_local),
            wordpress_port=_int(env, "PRESSLINE_WORDPRESS_PORT", default.wordpress_port),
            wordpress_db_port=_int(env, "PRESSLINE_WORDPRESS_DB_PORT", default.wordpress_db_port),
            wordpress_credentials_pattern=env.get("PRESSLINE_WORDPRESS_CREDENTIALS_PATTERN")
            or default.wordpress_credentials_pattern,
            wordpress_timeout_s=_float(env, "PRESSLINE_WORDPRESS_TIMEOUT_S", default.wordpress_timeout_s),
            wordpress_attempts=_int(env, "PRESSLINE_WORDPRESS_ATTEMPTS", default.wordpress_attempts),
            wordpress_backoff_base_s=_float(
                env, "PRESSLINE_WORDPRESS_BACKOFF_BASE_S", default.wordpress_backoff_base_s
            ),
            wordpress_backoff_max_s=_float(
                env, "PRESSLINE_WORDPRESS_BACKOFF_MAX_S", default.wordpress_backoff_max_s
            ),
            wordpress_rate_per_s=_float(env, "PRESSLINE_WORDPRESS_RATE_PER_S", default.wordpress_rate_per_s),
            wordpress_rate_burst=_int(env, "PRESSLINE_WORDPRESS_RATE_BURST", default.wordpress_rate_burst),
            wordpress_breaker_fail_max=_int(
                env, "PRESSLINE_WORDPRESS_BREAKER_FAIL_MAX", default.wordpress_breaker_fail_max
            ),
            wordpress_breaker_reset_s=_float(
                env, "PRESSLINE_WORDPRESS_BREAKER_RESET_S", default.wordpress_breaker_reset_s
            ),
            cache_enabled=_bool(env, "PRESSLINE_CACHE_ENABLED", default.cache_enabled),
            cache_semantic=_bool(env, "PRESSLINE_CACHE_SEMANTIC", default.cache_semantic),
            cache_ttl_s=_float(env, "PRESSLINE_CACHE_TTL_S", default.cache_ttl_s),
            cache_route_ttl_s=_route_floats(env, "PRESSLINE_CACHE_ROUTE_TTLS"),
            cache_threshold=_float(env, "PRESSLINE_CACHE_THRESHOLD", default.cache_threshold),
            cache_route_threshold=_route_floats(env, "PRESSLINE_CACHE_ROUTE_THRESHOLDS"),
            cache_max_temperature=_float(
                env, "PRESSLINE_CACHE_MAX_TEMPERATURE", default.cache_max_temperature
            ),
            cache_qdrant_path=env.get("PRESSLINE_CACHE_QDRANT_PATH") or default.cache_qdrant_path,
            cache_embedder=env.get("PRESSLINE_CACHE_EMBEDDER") or default.cache_embedder,
        )
