"""Telemetry: OpenTelemetry tracing, structured logs and queue-health metrics.

Each piece is configured explicitly from :class:`~shared.config.Settings`; importing sets nothing
global.  See :mod:`.tracing`, :mod:`.logging` and :mod:`.queue_health`.
"""

from .tracing import configure_tracing, extract_context, inject_context

__all__ = ["configure_tracing", "extract_context", "inject_context"]
