"""What the stage actors use, built once per worker process (after the fork) and shared by its
threads or greenlets: the proxy core, the archive, the job and site registries, WordPress clients."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
from prometheus_client import CollectorRegistry

from shared.api.guard import Guard
from shared.api.services import build_proxy
from shared.auth import TokenStore
from shared.aws import aws_client
from shared.config import Settings
from shared.cost.budget import BudgetGuard
from shared.cost.ledger import CostLedger
from shared.egress import EgressPolicy, guarded_client
from shared.jobs import JobStore
from shared.payloads import PayloadStore
from shared.proxy.service import ProxyService
from shared.ratelimit import RateLimiter
from shared.sites import SiteRegistry

from .memo import StageMemo


@dataclass
class PipelineRuntime:
    """Lazily built services for one worker process.

    Parameters:
      settings(Settings)
      client(redis.Redis): The broker's Redis (job records, sites, budgets, WordPress state).
      broker(Any): The worker's broker; the proxy's budget alerts are published on it.
      wordpress_ttl_s(float): How long a site's client (and its credentials) is reused.
    """

    settings: Settings
    client: redis.Redis
    broker: Any = None
    wordpress_ttl_s: float = 60.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _proxy: ProxyService | None = field(default=None, repr=False)
    _payloads: PayloadStore | None = field(default=None, repr=False)
    _http: httpx.Client | None = field(default=None, repr=False)
    _sites: dict[str, tuple[float, Any]] = field(default_factory=dict, repr=False)

    @property
    def jobs(self) -> JobStore:
        return JobStore(self.client, self.settings.namespace, self.settings.job_ttl_s)

    @property
    def infer_memo(self) -> StageMemo:
        """Infer's results per job, kept as long as the job's record."""
        return StageMemo(self.client, self.settings.namespace, "infer", self.settings.job_ttl_s)

    @property
    def sites(self) -> SiteRegistry:
        return SiteRegistry(self.client, self.settings.namespace)

    @property
    def payloads(self) -> PayloadStore:
        with self._lock:
            if self._payloads is None:
                s3 = aws_client("s3", self.settings)
                self._payloads = PayloadStore(s3, self.settings.payload_bucket)
            return self._payloads

    @property
    def proxy(self) -> ProxyService:
        """The proxy core, built like the API's (``build_proxy``) so its behaviour is the same."""
        with self._lock:
            if self._proxy is None:
                settings, client = self.settings, self.client
                guard = Guard(
                    TokenStore(client, settings.namespace),
                    RateLimiter(client, settings.namespace),
                    settings.api_rate_limit,
                )
                ledger = CostLedger.from_settings(settings, client)
                budgets = BudgetGuard.from_settings(settings, client, ledger=ledger)
                # Built after boot, in multiprocess mode: the proxy's counters and histograms land in
                # the worker tree's metric files and its exposition serves them; the registry only
                # keeps them out of this process's default one.
                self._proxy = build_proxy(settings, client, guard, budgets, CollectorRegistry(), self.broker)
            return self._proxy

    def wordpress(self, site: str) -> Any:
        """The site's WordPress client (credentials re-read after ``wordpress_ttl_s``)."""
        from shared.wordpress import WordPressClient

        now = time.monotonic()
        with self._lock:
            cached = self._sites.get(site)
            if cached is not None and cached[0] > now:
                return cached[1]
            if self._http is None:  # every site's connections checked by the egress policy
                policy = EgressPolicy.from_settings(self.settings)
                self._http = guarded_client(policy, limits=httpx.Limits(max_connections=64))
            http = self._http
        client = WordPressClient.for_site(site, self.settings, self.client, http=http)
        with self._lock:
            self._sites[site] = (now + self.wordpress_ttl_s, client)
        return client
