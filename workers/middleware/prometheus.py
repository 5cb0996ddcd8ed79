"""Dramatiq's Prometheus middleware, whose exposition server also serves the queue-health gauges.

The worker metrics (``dramatiq_messages_total`` and friends, multiprocess mode) are Dramatiq's
own, unchanged.  What Dramatiq's server cannot know is the state of the queues in Redis, so our
exposition server adds :class:`~shared.telemetry.queue_health.QueueHealthCollector` for every
queue the worker processes declared.

The server runs in a process the dramatiq CLI forks from its *main* process, which has no broker:
the CLI imports it by the path ``<fork.__module__>:<fork.__name__>``, so it must be this module's
top-level :func:`run_exposition_server`.  It reads Redis's URL and the namespace from
:meth:`Settings.from_env` (the same settings ``workers.app`` builds its broker from), and the
queue names from marker files the worker processes write next to the Prometheus database files.

``prometheus_client`` is imported only at run time, after ``PROMETHEUS_MULTIPROC_DIR`` is set,
as Dramatiq requires; do not import it at the top of this module.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dramatiq
import psutil
import redis
from dramatiq.broker import MessageProxy
from dramatiq.common import current_millis
from dramatiq.logging import get_logger
from dramatiq.middleware import prometheus as dramatiq_prometheus

from shared.config import Settings
from shared.cost.budget import BudgetGuard
from shared.streams.admin import QueueAdmin

if TYPE_CHECKING:  # prometheus_client is imported at run time only (see above)
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector
else:
    Collector = object

__all__ = ["Prometheus", "declared_queues", "job_finished", "reap_dead_processes", "run_exposition_server"]

#: Seconds from enqueue (or ETA, for a delayed message) to an actor starting it.
_START_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

#: Where worker processes record the queues they declared: ``<dir>/<namespace>/<queue_name>``.
QUEUES_DIR = Path(dramatiq_prometheus.DB_PATH) / "pressline-queues"


class Prometheus(dramatiq_prometheus.Prometheus):
    """Dramatiq's :class:`~dramatiq.middleware.prometheus.Prometheus`, plus queue-health gauges
    (``pressline_queue_*``) served by the same exposition server.

    Configure it as Dramatiq's: ``dramatiq_prom_host``, ``dramatiq_prom_port`` and
    ``dramatiq_prom_db`` (read by Dramatiq at import); the gauges come from the Redis and
    namespace of :meth:`Settings.from_env`.
    """

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [run_exposition_server]

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = dramatiq_prometheus.DB_PATH
        values = sys.modules.get("prometheus_client.values")
        if values is not None:  # imported before the variable was set: choose multiprocess mode now
            values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
        super().after_process_boot(broker)
        import prometheus_client as prom

        self.start_delay = prom.Histogram(
            "pressline_message_start_delay_seconds",
            "Enqueue (or ETA, for delayed messages and retries) to an actor starting the message.",
            ["queue_name"],
            buckets=_START_BUCKETS,
            registry=prom.CollectorRegistry(),
        )

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        super().before_process_message(broker, message)
        due_ms = max(int(message.message_timestamp), int(message.options.get("eta") or 0))
        self.start_delay.labels(message.queue_name).observe(max(0, current_millis() - due_ms) / 1000)

    def after_declare_queue(self, broker: dramatiq.Broker, queue_name: str) -> None:
        _record_queues(broker, [queue_name])

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        _record_queues(broker, broker.get_declared_queues())


def _record_queues(broker: dramatiq.Broker, queue_names: Iterable[str]) -> None:
    namespace_dir = QUEUES_DIR / str(getattr(broker, "namespace", Settings.namespace))
    namespace_dir.mkdir(parents=True, exist_ok=True)
    for queue_name in queue_names:
        (namespace_dir / queue_name).touch()


_jobs_finished: Any = None


def job_finished(event_type: str) -> None:
    """Count a job's end (``run.completed`` / ``run.failed``) in ``pressline_jobs_finished_total``.

    Called by the job-state middleware's ``on_finished`` hook, in a worker process after boot (so
    the counter lands in the multiprocess files).  A crash between a job's end and its record
    being written can count it twice; the job record stays the truth.
    """
    global _jobs_finished
    import prometheus_client as prom

    if _jobs_finished is None:
        _jobs_finished = prom.Counter(
            "pressline_jobs_finished",
            "Jobs that ended, by outcome (completed, failed).",
            ["outcome"],
            registry=prom.CollectorRegistry(),
        )
    _jobs_finished.labels(event_type.removeprefix("run.")).inc()


def reap_dead_processes(path: str) -> list[int]:
    """Remove the ``live*`` gauge files of worker processes that no longer run; their pids.

    Dramatiq marks a process dead only on a clean shutdown, so after a ``kill -9`` its in-progress
    gauge (``livesum``) would count its messages forever.  Counters and histograms of dead
    processes stay: their totals must not go down.
    """
    from prometheus_client import multiprocess

    dead: set[int] = set()
    for file in Path(path).glob("gauge_live*_*.db"):
        try:
            pid = int(file.stem.rsplit("_", 1)[1])
        except ValueError:
            continue
        if pid not in dead and not psutil.pid_exists(pid):
            dead.add(pid)
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    return sorted(dead)


class _WorkerMetrics(Collector):
    """The multiprocess files' metrics, less the callback gauges: their files hold a meaningless 0
    per process (the API's /metrics has the proxy's; the WordPress breakers are read from Redis by
    this exposition's own collector)."""

    def __init__(self, path: str) -> None:
        from prometheus_client import multiprocess

        from shared.telemetry.exposition import CALLBACK_GAUGES

        self.path = path
        self.inner = multiprocess.MultiProcessCollector(None, path=path)
        self.skipped = CALLBACK_GAUGES

    def collect(self) -> Iterator[Metric]:
        reap_dead_processes(self.path)
        return (family for family in self.inner.collect() if family.name not in self.skipped)


def declared_queues(namespace: str) -> list[str]:
    """The queues worker processes of ``namespace`` have declared on this machine."""
    try:
        return sorted(path.name for path in (QUEUES_DIR / namespace).iterdir())
    except FileNotFoundError:
        return []


class _ExpositionServer(HTTPServer):
    def __init__(self, address: tuple[str, int], settings: Settings) -> None:
        from shared.telemetry.queue_health import QueueHealthCollector  # imports prometheus_client
        from shared.telemetry.spend import SpendCollector
        from shared.telemetry.wordpress_health import WordPressBreakerCollector

        super().__init__(address, _MetricsHandler)
        client = redis.Redis.from_url(settings.broker_url)
        admin = QueueAdmin(client, settings.namespace)
        self.queue_health = QueueHealthCollector(admin, lambda: declared_queues(settings.namespace))
        self.spend = SpendCollector(client, BudgetGuard.from_settings(settings, client), settings.namespace)
        self.wordpress = WordPressBreakerCollector(
            client,
            settings.namespace,
            settings.wordpress_breaker_fail_max,
            settings.wordpress_breaker_reset_s,
        )


class _MetricsHandler(BaseHTTPRequestHandler):
    server: _ExpositionServer

    def do_GET(self) -> None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = dramatiq_prometheus.DB_PATH
        import prometheus_client as prom

        registry = prom.CollectorRegistry()
        registry.register(_WorkerMetrics(dramatiq_prometheus.DB_PATH))
        registry.register(self.server.queue_health)
        registry.register(self.server.spend)
        registry.register(self.server.wordpress)
        output = prom.generate_latest(registry)
        self.send_response(200)
        self.send_header("content-type", prom.CONTENT_TYPE_LATEST)
        self.end_headers()
        self.wfile.write(output)

    def log_message(self, format: str, *args: object) -> None:
        get_logger(__name__, type(self)).debug(format, *args)


def run_exposition_server(settings: Settings | None = None) -> int:
    """Serve worker metrics and queue health on ``dramatiq_prom_host:dramatiq_prom_port`` until
    interrupted (the body of the CLI's fork process; callable directly, e.g. in tests)."""
    logger = get_logger(__name__, "run_exposition_server")
    address = (dramatiq_prometheus.HTTP_HOST, dramatiq_prometheus.HTTP_PORT)
    httpd = _ExpositionServer(address, settings or Settings.from_env())
    logger.debug("Serving metrics on %s:%d...", *address)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        logger.debug("Stopping exposition server...")
    finally:
        httpd.server_close()
    return 0
