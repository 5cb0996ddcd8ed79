"""Each WordPress site's circuit-breaker state, read from Redis at scrape time.

The breaker's state is shared by every worker process through Redis; a gauge kept per process
would export each process's last copy (and, in Dramatiq's multiprocess files, a meaningless 0 per
pid that outlives the process).  So, as for the queue-health gauges, the exposition asks Redis.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.sites import SiteRegistry
from shared.wordpress.breaker import SiteBreakers
from shared.wordpress.metrics import BREAKER_STATES

__all__ = ["NAME", "WordPressBreakerCollector"]

NAME = "pressline_wordpress_breaker_state"


class WordPressBreakerCollector(Collector):
    """``pressline_wordpress_breaker_state{site}`` (0 closed, 1 half-open, 2 open) for every
    registered site, on every scrape.  An open breaker whose reset timeout has passed lets the
    next request through as a trial, so it is reported half-open.

    Parameters:
      client(redis.Redis): Where sites and breaker states live (decode_responses=False).
      namespace(str): Key prefix.
      fail_max(int): As the WordPress clients configure their breakers.
      reset_timeout_s(float): As the WordPress clients configure their breakers.
    """

    def __init__(self, client: redis.Redis, namespace: str, fail_max: int, reset_timeout_s: float) -> None:
        self.sites = SiteRegistry(client, namespace)
        self.breakers = SiteBreakers(client, namespace, fail_max, reset_timeout_s)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # skip the Redis read at registration

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            NAME, "The site's circuit breaker: 0 closed, 1 half-open, 2 open.", labels=["site"]
        )
        try:
            for site in self.sites.all():
                state = self.breakers.state(site.site)
                if state == "open" and self.breakers.allows(site.site):
                    state = "half-open"
                family.add_metric([site.site], BREAKER_STATES.get(state, float("nan")))
        except redis.RedisError:
            return  # absent rather than stale; pressline_queue_health_up says Redis is unreachable
        yield family
