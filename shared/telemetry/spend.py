"""Spend, tokens and budget use by tenant, read from the cost ledger at scrape time.

The proxy's counters (``pressline_llm_cost_usd_total``) are per process and carry no tenant; the
ledger's per-tenant day and month sums in Redis are exact and shared by every process, so the
numbers an operator sees here are the ones the budget guard enforces.  Tenants are found with
``SCAN`` over the ledger's month keys, at most once per ``rescan_s``, so a scrape does not walk the
keyspace every time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.cost.budget import BudgetGuard
from shared.cost.ledger import CostKeys, Period, period_id

__all__ = ["SpendCollector"]

_PICO = 1e12


class SpendCollector(Collector):
    """``pressline_tenant_spend_usd{tenant,period,provider,model}``,
    ``pressline_tenant_tokens{tenant,period,kind}``, ``pressline_budget_limit_usd{tenant,period,level}``
    and ``pressline_budget_used_ratio{tenant,period}`` (spend over the hard limit, else the soft one),
    for the current UTC day and month.

    Parameters:
      client(redis.Redis)
      budgets(BudgetGuard): Reads limits, and the ledger's totals through ``budgets.ledger``.
      namespace(str)
      rescan_s(float): How long the list of tenants is reused.
    """

    def __init__(
        self, client: redis.Redis, budgets: BudgetGuard, namespace: str, rescan_s: float = 60.0
    ) -> None:
        self.client = client
        self.budgets = budgets
        self.keys = CostKeys(namespace)
        self.rescan_s = rescan_s
        self._lock = threading.Lock()
        self._tenants: list[str] = []
        self._scanned_at = float("-inf")

    def tenants(self) -> list[str]:
        """Tenants with spend this month (or limits), from a cached SCAN."""
        with self._lock:
            if time.monotonic() - self._scanned_at < self.rescan_s:
                return self._tenants
            found: set[str] = set()
            month = period_id(Period.MONTH)
            for pattern, index in (
                (self.keys.counters("*", Period.MONTH, month), -3),
                (self.keys.limits("*"), -2),
            ):
                for key in self.client.scan_iter(match=pattern, count=1000):
                    text = key.decode() if isinstance(key, bytes) else str(key)
                    found.add(text.split(".")[index])
            self._tenants = sorted(found)
            self._scanned_at = time.monotonic()
            return self._tenants

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names depend on nothing; skip the Redis read at registration

    def collect(self) -> Iterator[Metric]:
        spend = GaugeMetricFamily(
            "pressline_tenant_spend_usd",
            "Spend of the current UTC day or month by tenant, provider and model (exact ledger sums).",
            labels=["tenant", "period", "provider", "model"],
        )
        tokens = GaugeMetricFamily(
            "pressline_tenant_tokens",
            "Tokens of the current UTC day or month by tenant and kind.",
            labels=["tenant", "period", "kind"],
        )
        limits = GaugeMetricFamily(
            "pressline_budget_limit_usd",
            "Budget limits by tenant, period and level.",
            labels=["tenant", "period", "level"],
        )
        used = GaugeMetricFamily(
            "pressline_budget_used_ratio",
            "Spend over the budget (the hard limit, else the soft one) for the current period.",
            labels=["tenant", "period"],
        )
        try:
            for tenant in self.tenants():
                configured = self.budgets.budgets(tenant)
                for period in Period:
                    totals = self.budgets.ledger.totals(tenant, period)
                    for name, pico in sorted(totals.by_model.items()):
                        provider, _, model = name.partition("/")
                        spend.add_metric([tenant, period.value, provider, model], pico / _PICO)
                    for kind in ("input", "output", "cached_input"):
                        tokens.add_metric([tenant, period.value, kind], getattr(totals, f"{kind}_tokens"))
                    limit = configured.get(period)
                    if limit is None:
                        continue
                    for level, value in (("hard", limit.hard_pico), ("soft", limit.soft_pico)):
                        if value is not None:
                            limits.add_metric([tenant, period.value, level], value / _PICO)
                    base = limit.hard_pico if limit.hard_pico is not None else limit.soft_pico
                    if base:
                        used.add_metric([tenant, period.value], totals.cost_pico / base)
        except redis.RedisError:
            return  # absent rather than stale; pressline_queue_health_up says Redis is unreachable
        yield from (spend, tokens, limits, used)
