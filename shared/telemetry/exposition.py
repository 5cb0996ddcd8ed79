"""The API's ``/metrics`` text, from one process or from every process of a pre-forked server.

In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by ``functions.serve`` when it forks)
counters and histograms live in files that every process writes and any process can sum. Gauges
whose value is read through a callback at scrape time (breaker state, cache size) are not in those
files in any useful form — the files hold a meaningless 0 per process — so they come from the
scraping process's own registry instead, read live from the state they describe.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

__all__ = ["CALLBACK_GAUGES", "ProcessTreeMetrics", "exposition"]

#: Gauges that read shared state through a callback (``set_function``).
CALLBACK_GAUGES = frozenset(
    {"pressline_llm_breaker_state", "pressline_cache_entries", "pressline_wordpress_breaker_state"}
)


class ProcessTreeMetrics(Collector):
    """Every process's counters and histograms (the multiprocess files), and this process's
    :data:`CALLBACK_GAUGES`.

    Parameters:
      path(str): The multiprocess directory.
      live(Iterable[CollectorRegistry]): This process's registries, for the callback gauges.
    """

    def __init__(self, path: str, live: Iterable[CollectorRegistry]) -> None:
        self.files = multiprocess.MultiProcessCollector(None, path=path)
        self.live = tuple(live)

    def collect(self) -> Iterator[Metric]:
        for family in self.files.collect():
            if family.name not in CALLBACK_GAUGES:
                yield family
        for registry in self.live:
            for family in registry.collect():
                if family.name in CALLBACK_GAUGES:
                    yield family


def exposition(*registries: CollectorRegistry, multiprocess_dir: str | None = None) -> bytes:
    """The registries' metrics; with ``multiprocess_dir``, those of every process of the tree."""
    if not multiprocess_dir:
        return b"".join(generate_latest(registry) for registry in registries)
    tree = CollectorRegistry()
    tree.register(ProcessTreeMetrics(multiprocess_dir, registries))
    return generate_latest(tree)
