"""OpenTelemetry tracing for Pressline: a configured provider and W3C trace-context propagation.

Nothing here sets global state.  :func:`configure_tracing` builds a provider from
:class:`~shared.config.Settings`; the application decides whether to make it the global one
(``opentelemetry.trace.set_tracer_provider(provider)``, once, at start-up) and passes it to the
``Tracing`` middleware explicitly.  Trace context travels in W3C ``traceparent``/``tracestate``
form, so a producer in another language can join a trace by writing those two fields.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from urllib.parse import unquote

from opentelemetry.context import Context
from opentelemetry.sdk.extension.aws.trace import AwsXRayIdGenerator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.version import __version__ as sdk_version
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.config import ConfigError, Settings

__all__ = [
    "configure_tracing",
    "extract_context",
    "inject_context",
    "make_id_generator",
    "make_resource",
    "make_sampler",
]

#: Stateless; W3C Trace Context only (not the global, env-configured propagator).
_PROPAGATOR = TraceContextTextMapPropagator()

#: The path the OTLP/HTTP spec appends to ``OTEL_EXPORTER_OTLP_ENDPOINT`` for traces.
TRACES_PATH = "/v1/traces"


def configure_tracing(settings: Settings) -> TracerProvider:
    """A provider for this process: spans go to the OTLP/HTTP collector at
    ``settings.otel_exporter_otlp_endpoint`` in batches, or nowhere when it is unset (they are
    still created, so logs carry trace ids).  Call ``provider.shutdown()`` at exit to flush.

    The exporter and batch processor still read their own tuning variables
    (``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_*``...), as the OTel spec defines.
    """
    provider = TracerProvider(
        resource=make_resource(settings),
        sampler=make_sampler(settings),
        id_generator=make_id_generator(settings),
    )
    if settings.otel_exporter_otlp_endpoint:
        # Imported here: it pulls in requests and protobuf, which a process without a collector
        # (a function's cold start, a test) should not pay for.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/") + TRACES_PATH
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def make_resource(settings: Settings) -> Resource:
    """The resource from ``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,...``, values percent-encoded) and
    ``OTEL_SERVICE_NAME``, which wins over a ``service.name`` attribute unless left at its default.

    Built from settings rather than ``Resource.create()``, which would read the environment itself.
    """
    attributes: dict[str, str] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": sdk_version,
    }
    for item in settings.otel_resource_attributes.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = unquote(value.strip())
    if "service.name" not in attributes or settings.otel_service_name != Settings.otel_service_name:
        attributes["service.name"] = settings.otel_service_name
    return Resource(attributes)


def make_id_generator(settings: Settings) -> IdGenerator:
    """X-Ray's ids on Lambda (or when ``PRESSLINE_XRAY_TRACE_IDS`` asks), random W3C ids elsewhere.

    X-Ray refuses a trace id whose first 32 bits are not a recent epoch second, so spans exported
    through the ADOT collector to X-Ray need them; they are valid W3C ids all the same.
    """
    return AwsXRayIdGenerator() if settings.xray_trace_ids else RandomIdGenerator()


def make_sampler(settings: Settings) -> Sampler:
    """The sampler named by ``OTEL_TRACES_SAMPLER`` (with ``OTEL_TRACES_SAMPLER_ARG`` as ratio)."""
    name, ratio = settings.otel_traces_sampler, settings.otel_traces_sampler_arg
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "parentbased_always_on": DEFAULT_ON,
        "parentbased_always_off": DEFAULT_OFF,
    }
    if name in samplers:
        return samplers[name]
    if name in ("traceidratio", "parentbased_traceidratio"):
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG must be within [0, 1], got {ratio}")
        return TraceIdRatioBased(ratio) if name == "traceidratio" else ParentBasedTraceIdRatio(ratio)
    raise ConfigError(f"OTEL_TRACES_SAMPLER: unsupported sampler {name!r}")


def inject_context(carrier: MutableMapping[str, str], context: Context | None = None) -> None:
    """Write ``traceparent`` (and ``tracestate``) of ``context`` (default: the current one)."""
    _PROPAGATOR.inject(carrier, context=context)


def extract_context(carrier: Mapping[str, str] | None) -> Context:
    """The context written by :func:`inject_context`; an empty context when there is none."""
    if not carrier:
        return Context()
    return _PROPAGATOR.extract(carrier, context=Context())
