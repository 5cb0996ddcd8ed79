"""OpenTelemetry trace context carried through messages: a producer span per send, and the
worker's span as its child."""

from __future__ import annotations

import logging
import time
import weakref
from contextvars import ContextVar, Token
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from shared.telemetry.tracing import extract_context, inject_context

log = logging.getLogger("pressline.worker")

#: The message option holding the W3C carrier (``{"traceparent": ..., "tracestate": ...}``).
OPTION = "trace_context"


class Tracing(Middleware):
    """Starts a PRODUCER span ``send <queue>`` for every enqueue and writes its context into
    ``message.options["trace_context"]``; starts a CONSUMER span ``process <actor>`` as its child
    around the actor and makes it current in the worker thread, so the actor's own spans and
    log lines join the trace.

    A send's parent is the current span, or else the context the message already carries (a
    retry or requeue), so redeliveries stay in the job's trace.  Worker-side state lives in a
    ``ContextVar``, which is per thread and per greenlet, so this works under dramatiq-gevent.

    Add it early in the middleware list: its ``before_process_message`` then runs before other
    middleware's work (which joins the span) and its after-hooks run last.

    Parameters:
      tracer_provider(TracerProvider): Where spans go; the global provider when omitted.
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        # Producer spans between before_enqueue and after_enqueue, keyed by id(message): the same
        # object is passed to both hooks, and an id is not reused while the object lives.
        self._sending: dict[int, tuple[Span, weakref.finalize]] = {}
        self._processing: ContextVar[tuple[Span, Token[Context], MessageProxy, float] | None] = ContextVar(
            "pressline_tracing_processing", default=None
        )

    # -- producer ------------------------------------------------------------------------------

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None) -> None:
        parent = None
        if not trace.get_current_span().get_span_context().is_valid:
            parent = extract_context(message.options.get(OPTION))
        attributes = _attributes(message, "send")
        if delay:
            attributes["dramatiq.delay_ms"] = int(delay)
        span = self.tracer.start_span(
            f"send {message.queue_name}", context=parent, kind=SpanKind.PRODUCER, attributes=attributes
        )
        carrier: dict[str, str] = {}
        inject_context(carrier, trace.set_span_in_context(span))
        message.options[OPTION] = carrier
        # Our broker emits no after_enqueue when the write fails: end the span when the message
        # is dropped instead, so a failed send is recorded rather than leaked.
        key = id(message)
        finalizer = weakref.finalize(message, _abandon, self._sending, key, span)
        self._sending[key] = (span, finalizer)

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None) -> None:
        entry = self._sending.pop(id(message), None)
        if entry is not None:
            span, finalizer = entry
            finalizer.detach()
            span.end()

    # -- consumer ------------------------------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._finish()  # a previous message's after-hook did not run: end its span, never leak it
        parent = extract_context(message.options.get(OPTION))
        attributes = _attributes(message, "process")
        redeliveries = getattr(message, "redeliveries", None)
        if redeliveries is not None:
            attributes["dramatiq.redeliveries"] = int(redeliveries)
        span = self.tracer.start_span(
            f"process {message.actor_name}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        self._processing.set((span, token, message, time.perf_counter()))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._finish(exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._finish(skipped=True)

    def _finish(self, exception: BaseException | None = None, *, skipped: bool = False) -> None:
        state = self._processing.get()
        if state is None:
            return
        self._processing.set(None)
        span, token, message, started = state
        if exception is not None:
            span.record_exception(exception)
            span.set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}"))
        if skipped:
            span.set_attribute("dramatiq.skipped", True)
        # One line per message, still under its span: a job's lines from every stage share its
        # trace id.  The outcome only; the exception itself is logged by Dramatiq.
        outcome = "skipped" if skipped else "failed" if exception is not None else "done"
        log.info(
            "message %s",
            outcome,
            extra={
                "actor": message.actor_name,
                "queue": message.queue_name,
                "message_id": message.message_id,
                "job_id": message.options.get("job_id"),
                "retries": int(message.options.get("retries", 0)),
                "outcome": outcome,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        span.end()
        otel_context.detach(token)


def _attributes(message: dramatiq.Message | MessageProxy, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": "dramatiq",
        "messaging.operation.type": operation,
        "messaging.destination.name": message.queue_name,
        "messaging.message.id": message.message_id,
        "dramatiq.actor_name": message.actor_name,
        "dramatiq.retries": int(message.options.get("retries", 0)),
    }


def _abandon(sending: dict[int, tuple[Span, weakref.finalize]], key: int, span: Span) -> None:
    entry = sending.get(key)
    if entry is not None and entry[0] is span:
        del sending[key]
    span.set_status(Status(StatusCode.ERROR, "enqueue failed"))
    span.end()
