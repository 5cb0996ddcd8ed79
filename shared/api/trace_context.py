"""Continue an inbound trace: W3C ``traceparent`` or AWS ``X-Amzn-Trace-Id`` lead to one trace id,
and answer with both, so a W3C client and an X-Ray client each find the trace in their own header."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.aws import AwsXRayPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_W3C = TraceContextTextMapPropagator()
_XRAY = AwsXRayPropagator()


def inbound_context(headers: Mapping[str, str]) -> Context:
    """The caller's trace context; ``traceparent`` wins when both are sent."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if "traceparent" in lowered:
        return _W3C.extract(lowered)
    if "x-amzn-trace-id" in lowered:
        return _XRAY.extract({"X-Amzn-Trace-Id": lowered["x-amzn-trace-id"]})
    return Context()


def outbound_headers(span: trace.Span) -> dict[str, str]:
    """``traceparent`` and ``X-Amzn-Trace-Id`` of ``span`` (the same trace id, written both ways)."""
    headers: dict[str, str] = {}
    context = trace.set_span_in_context(span)
    _W3C.inject(headers, context=context)
    _XRAY.inject(headers, context=context)
    return headers
