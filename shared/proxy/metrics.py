"""The proxy's Prometheus metrics, in a registry its owner passes in (served at ``GET /metrics``)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 120)
_BREAKER_STATES = ("closed", "half-open", "open")


class ProxyMetrics:
    """Upstream latency, tokens, cost, retries and breaker state by provider and model.

    Parameters:
      registry(CollectorRegistry)
      breaker_state: Reads a provider's breaker state (closed, half-open, open) at scrape time.
      providers: The providers whose breaker state is exported.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        breaker_state: Callable[[str], str] | None = None,
        providers: tuple[str, ...] = (),
    ) -> None:
        labels = ("provider", "model")
        self.time_to_first_token = Histogram(
            "pressline_llm_time_to_first_token_seconds", "Request start to the first upstream event.",
            labels, buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.duration = Histogram(
            "pressline_llm_request_duration_seconds", "Upstream request or stream, start to end.",
            labels, buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.attempts = Counter(
            "pressline_llm_attempts_total",
            "Upstream attempts by outcome.",
            (*labels, "outcome"),
            registry=registry,
        )
        self.retries = Counter(
            "pressline_llm_retries_total", "Attempts retried or failed over.", labels, registry=registry
        )
        self.tokens = Counter(
            "pressline_llm_tokens_total", "Tokens by kind (input, output, cached_input).", (*labels, "kind"),
            registry=registry,
        )  # fmt: skip
        self.cost = Counter(
            "pressline_llm_cost_usd_total", "Spend in dollars (exact figures are in the ledger).", labels,
            registry=registry,
        )  # fmt: skip
        self.estimated = Counter(
            "pressline_llm_usage_estimated_total", "Requests whose usage had to be estimated.", labels,
            registry=registry,
        )  # fmt: skip
        if breaker_state is not None:
            gauge = Gauge(
                "pressline_llm_breaker_state", "1 for the breaker's current state.", ("provider", "state"),
                registry=registry,
            )  # fmt: skip
            for provider in providers:
                for state in _BREAKER_STATES:
                    gauge.labels(provider, state).set_function(
                        lambda p=provider, s=state: 1.0 if breaker_state(p) == s else 0.0  # type: ignore[misc]
                    )
