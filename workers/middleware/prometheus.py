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
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import dramatiq
import redis
from dramatiq.logging import get_logger
from dramatiq.middleware import prometheus as dramatiq_prometheus

from shared.config import Settings
from shared.streams.admin import QueueAdmin

__all__ = ["Prometheus", "declared_queues", "run_exposition_server"]

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

    def after_declare_queue(self, broker: dramatiq.Broker, queue_name: str) -> None:
        _record_queues(broker, [queue_name])

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        _record_queues(broker, broker.get_declared_queues())


def _record_queues(broker: dramatiq.Broker, queue_names: Iterable[str]) -> None:
    namespace_dir = QUEUES_DIR / str(getattr(broker, "namespace", Settings.namespace))
    namespace_dir.mkdir(parents=True, exist_ok=True)
    for queue_name in queue_names:
        (namespace_dir / queue_name).touch()


def declared_queues(namespace: str) -> list[str]:
    """The queues worker processes of ``namespace`` have declared on this machine."""
    try:
        return sorted(path.name for path in (QUEUES_DIR / namespace).iterdir())
    except FileNotFoundError:
        return []


class _ExpositionServer(HTTPServer):
    def __init__(self, address: tuple[str, int], settings: Settings) -> None:
        from shared.telemetry.queue_health import QueueHealthCollector  # imports prometheus_client

        super().__init__(address, _MetricsHandler)
        admin = QueueAdmin(redis.Redis.from_url(settings.broker_url), settings.namespace)
        self.queue_health = QueueHealthCollector(admin, lambda: declared_queues(settings.namespace))


class _MetricsHandler(BaseHTTPRequestHandler):
    server: _ExpositionServer

    def do_GET(self) -> None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = dramatiq_prometheus.DB_PATH
        import prometheus_client as prom
        from prometheus_client import multiprocess

        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=dramatiq_prometheus.DB_PATH)
        registry.register(self.server.queue_health)
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
