"""Continue an inbound trace: W3C ``traceparent`` or AWS ``X-Amzn-Trace-Id`` lead to one trace id."""

from __future__ import annotations

from collections.abc import Mapping

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
