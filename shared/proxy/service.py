"""The inference proxy: ``/v1/chat/completions`` (OpenAI) and ``/v1/messages`` (Anthropic).

For each request: authenticate (``proxy:invoke``), reserve the worst-case cost against the
tenant's budget (402 before any upstream call), pick targets by the routing policy, then try
them in order — retrying connect errors, 429s and 5xx with full-jitter backoff (or the
provider's ``Retry-After``) only while nothing has reached the client, and skipping providers
whose breaker is open.  A stream is committed to the client with its first event; from then on
events go out as they arrive, keep-alive comments fill long gaps, and a timeout or a cut ends it
with an error event in the client's own protocol.  Cost is settled from the provider's reported
usage, or estimated (and marked so) when the stream ended before it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from shared.api.errors import ApiError
from shared.api.guard import Guard
from shared.api.json_reader import read_json
from shared.api.responses import ApiResponse
from shared.auth import Principal, Role, Scope
from shared.cache import HEADER as CACHE_HEADER
from shared.cache import ResponseCache, header_directives
from shared.jobs import CHARGEABLE, JobStore
from shared.prompts import PromptStore
from shared.prompts import render as render_prompt

from . import translate
from .admission import Admission
from .breakers import Breakers
from .keys import ProviderKeyError, ProviderKeys
from .metrics import ProxyMetrics
from .providers.base import Provider, Wire
from .request_shape import check_fields
from .routing import Router, RoutingError, Target
from .sse import SSEEvent, encode_comment, encode_event
from .upstream import KEEPALIVE, UpstreamError, UpstreamStream, call, event_json
from .usage import Reported, UsageTracker

tracer = trace.get_tracer("pressline.proxy")

#: Upstream event (None at the end) -> the bytes the client gets.
Converter = Callable[[SSEEvent | None], list[bytes]]


class Accounting(Protocol):
    """Budgets and the cost ledger, as the proxy uses them."""

    def reserve(self, tenant: str, targets: list[Target], prompt_text: str, max_tokens: int | None) -> Any:
        """Hold the worst-case cost; raise ApiError(402) when it would pass a hard budget."""

    def settle(
        self,
        reservation: Any,
        *,
        request_id: str,
        tenant: str,
        target: Target,
        reported: Reported,
        prompt_text: str,
        job_id: str | None,
    ) -> int:
        """Record the real cost (estimated when the usage never came) and free the hold."""

    def release(self, reservation: Any) -> None:
        """Free the hold of a request that consumed nothing."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts_per_target: int = 3
    base_s: float = 0.25
    max_s: float = 8.0
    max_retry_after_s: float = 30.0  # a longer Retry-After fails over instead of waiting

    def delay(self, attempt: int, retry_after_s: float | None) -> float | None:
        """Full jitter, or the provider's Retry-After; None: don't wait, fail over."""
        if retry_after_s is not None:
            return retry_after_s if retry_after_s <= self.max_retry_after_s else None
        return random.uniform(0, min(self.max_s, self.base_s * 2**attempt))


@dataclass
class StreamingResult:
    """A committed stream: headers now, then ``chunks`` as they are produced."""

    headers: dict[str, str]
    chunks: Iterator[bytes]


@dataclass(frozen=True)
class ClientRequest:
    wire: Wire
    body: dict[str, Any]
    principal: Principal
    request_id: str
    route_key: str | None
    job_id: str | None
    cache_control: str | None = None
    cache_mode: str | None = None  # the x-pressline-cache request header
    cache_probe: Any = None  # the response cache's state for this request (shared.cache.Probe)

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def wants_usage(self) -> bool:
        """OpenAI clients get the usage chunk only when they ask; Anthropic's events always carry it."""
        if self.wire == "anthropic":
            return True
        return bool((self.body.get("stream_options") or {}).get("include_usage"))


class ProxyService:
    """Serves the two proxy endpoints and the model list.

    Parameters:
      guard(Guard): Token, scope and per-tenant rate limit.
      router(Router): The routing policy.
      providers(dict[str, Provider])
      keys(ProviderKeys): Provider API keys (never sent to clients, logs or traces).
      breakers(Breakers)
      accounting(Accounting)
      http(httpx.Client): Pooled upstream connections.
      retry(RetryPolicy)
      keepalive_s(float): A comment is sent when the upstream is quiet this long.
      max_body_bytes(int)
      default_max_tokens(int): The output cap sent upstream when a request names none.
      metrics(ProxyMetrics): Latency, tokens, cost, retries (optional).
      sleep: Waits between retries (a parameter for tests).
      cache(ResponseCache | None): The response cache (shared.cache); None: no caching.
      prompts(PromptStore | None): The prompt library a request names with ``prompt``.
      admission(Admission | None): Admits a burst of requests a few at a time, in order.
      jobs(JobStore | None): Checks a job id a request names (``x-pressline-job-id``) before it is
        charged; None: such requests are refused.
    """

    def __init__(
        self,
        *,
        guard: Guard,
        router: Router,
        providers: dict[str, Provider],
        keys: ProviderKeys,
        breakers: Breakers,
        accounting: Accounting,
        http: httpx.Client,
        retry: RetryPolicy,
        keepalive_s: float,
        max_body_bytes: int,
        default_max_tokens: int,
        metrics: ProxyMetrics | None = None,
        sleep: Callable[[float], None] = time.sleep,
        cache: ResponseCache | None = None,
        prompts: PromptStore | None = None,
        admission: Admission | None = None,
        jobs: JobStore | None = None,
    ) -> None:
        self.guard = guard
        self.router = router
        self.providers = providers
        self.keys = keys
        self.breakers = breakers
        self.accounting = accounting
        self.http = http
        self.retry = retry
        self.keepalive_s = keepalive_s
        self.max_body_bytes = max_body_bytes
        self.default_max_tokens = default_max_tokens
        self.metrics = metrics
        self.sleep = sleep
        self.cache = cache
        self.prompts = prompts
        self.admission = admission or Admission(0)
        self.jobs = jobs

    # -- the endpoints ----------------------------------------------------------------------------

    def chat_completions(self, **request: Any) -> ApiResponse | StreamingResult:
        return self._handle("openai", **request)

    def messages(self, **request: Any) -> ApiResponse | StreamingResult:
        return self._handle("anthropic", **request)

    def models(self, *, authorization: str | None) -> ApiResponse:
        self.guard.principal(authorization, Scope.PROXY_INVOKE)
        data = [
            {"id": alias, "object": "model", "created": 0, "owned_by": "pressline"}
            for alias in self.router.aliases()
        ]
        return ApiResponse(200, {"object": "list", "data": data})

    def complete(
        self,
        *,
        tenant: str,
        body: dict[str, Any],
        wire: Wire = "openai",
        job_id: str | None = None,
        route_key: str | None = None,
    ) -> dict[str, Any]:
        """One non-streaming completion for a job already authorised (a worker stage).

        The same routing, budgets, breakers, retries and ledger as the HTTP endpoints; the caller
        vouches for ``tenant``. Returns the reply in ``wire``'s shape, or raises ApiError.
        """
        raw = json.dumps({**body, "stream": False}).encode()
        principal = Principal(tenant, "worker", Role.EDITOR, frozenset({str(Scope.PROXY_INVOKE)}))
        request = ClientRequest(
            wire, self._parse(raw, None, wire), principal, uuid.uuid4().hex, route_key, job_id
        )
        result = self._serve(request)
        assert isinstance(result, ApiResponse)
        return dict(result.body)

    # -- one request ------------------------------------------------------------------------------

    def _handle(
        self,
        wire: Wire,
        *,
        authorization: str | None,
        content_type: str | None,
        body: bytes | None,
        route_key: str | None = None,
        job_id: str | None = None,
        cache_control: str | None = None,
        cache_mode: str | None = None,
    ) -> ApiResponse | StreamingResult:
        with self.admission.admitting():  # left when the upstream call starts (_attempt)
            principal = self.guard.principal(authorization, Scope.PROXY_INVOKE)
            if job_id is not None:
                self._check_job(principal.tenant, job_id)
            request = ClientRequest(
                wire, self._parse(body, content_type, wire), principal, uuid.uuid4().hex, route_key, job_id,
                cache_control, cache_mode,
            )  # fmt: skip
            return self._serve(request)

    def _check_job(self, tenant: str, job_id: str) -> None:
        """A job id from a request is charged only when it is the caller's own job and still running:
        another tenant's job, or one that does not exist, gets the same 404, and nothing is created."""
        owner = self.jobs.owner(job_id) if self.jobs is not None else None
        if owner is None or owner[0] != tenant:
            raise ApiError(404, "job_not_found", "x-pressline-job-id names no job of this tenant")
        if owner[1] not in CHARGEABLE:
            raise ApiError(409, "job_finished", f"the job is {owner[1].value}; it can no longer be charged")

    def _serve(self, request: ClientRequest) -> ApiResponse | StreamingResult:
        principal, route_key = request.principal, request.route_key
        prompt_ref = ""
        if self.prompts is not None:  # prompt hook: a library prompt becomes the system prompt
            rendered, version = render_prompt(self.prompts, principal.tenant, request.body, request.wire)
            request = dataclasses.replace(request, body=rendered)
            prompt_ref = version.ref if version is not None else ""
        try:
            route = self.router.route(str(request.body["model"]))
        except RoutingError as e:
            raise ApiError(404, "model_not_found", str(e)) from None
        sticky = principal.tenant if route.sticky == "tenant" else (route_key or request.request_id)
        targets = route.order(sticky)
        if self.cache is not None:  # cache hook: after routing, before the budget hold
            hit, request = self._cache_lookup(request, route.alias, targets[0], prompt_ref)
            if hit is not None:
                return hit
        prompt_text = _prompt_text(request.body)
        max_tokens = request.body.get("max_tokens") or request.body.get("max_completion_tokens")
        reservation = self.accounting.reserve(principal.tenant, targets, prompt_text, max_tokens)
        try:
            result = self._dispatch(request, targets, reservation, prompt_text)
        except BaseException:
            self.accounting.release(reservation)
            raise
        if self.cache is not None:  # cache hook: store a complete JSON reply; label the miss
            if request.cache_probe is not None and isinstance(result, ApiResponse) and result.status == 200:
                self.cache.store_reply(request.cache_probe, request.wire, result.body)
            result.headers[CACHE_HEADER] = "miss" if request.cache_probe is not None else "bypass"
        return result

    def _cache_lookup(
        self, request: ClientRequest, alias: str, target: Target, prompt_ref: str
    ) -> tuple[ApiResponse | StreamingResult | None, ClientRequest]:
        """A cached answer (and the request unchanged), or None and the request with its probe."""
        assert self.cache is not None
        hit, probe = self.cache.lookup(
            tenant=request.principal.tenant, wire=request.wire, body=request.body, route=alias,
            provider=target.provider, model=target.model,
            directives=header_directives(request.cache_control, request.cache_mode),
            prompt=prompt_ref, request_id=request.request_id, job_id=request.job_id,
        )  # fmt: skip
        if hit is not None:
            if hit.chunks is not None:
                return StreamingResult(hit.headers, hit.chunks), request
            return ApiResponse(200, hit.body or {}, hit.headers), request
        return None, dataclasses.replace(request, cache_probe=probe)

    def _parse(self, body: bytes | None, content_type: str | None, wire: Wire) -> dict[str, Any]:
        value = read_json(body, content_type, max_bytes=self.max_body_bytes)
        if not isinstance(value, dict):
            raise ApiError(422, "invalid_body", "the body must be a JSON object")
        if not isinstance(value.get("model"), str) or not value["model"]:
            raise ApiError(
                422, "invalid_body", "model is required", details=[{"field": "model", "problem": "missing"}]
            )
        if not isinstance(value.get("messages"), list) or not value["messages"]:
            raise ApiError(
                422,
                "invalid_body",
                "messages is required",
                details=[{"field": "messages", "problem": "missing"}],
            )
        if wire == "anthropic" and not isinstance(value.get("max_tokens"), int):
            raise ApiError(
                422,
                "invalid_body",
                "max_tokens is required",
                details=[{"field": "max_tokens", "problem": "missing"}],
            )
        check_fields(value)  # the fields the proxy computes with, typed before anything reads them
        return value

    def _dispatch(
        self, request: ClientRequest, targets: list[Target], reservation: Any, prompt_text: str
    ) -> ApiResponse | StreamingResult:
        last: UpstreamError | None = None
        for target in targets:
            check = self.breakers.check(target.provider)
            if not check.allows:
                last = UpstreamError(
                    "breaker_open",
                    f"{target.provider} is failing; its circuit is open",
                    retryable=True,
                    retry_after_s=check.retry_after_s,
                )
                continue
            provider = self.providers[target.provider]
            upstream_body = self._upstream_body(request, provider.wire, target.model)
            for attempt in range(self.retry.attempts_per_target):
                span = tracer.start_span(
                    "llm.attempt",
                    attributes={
                        "llm.provider": target.provider,
                        "llm.model": target.model,
                        "llm.attempt": attempt + 1,
                        "llm.stream": request.stream,
                        "pressline.request_id": request.request_id,
                    },
                )
                try:
                    with trace.use_span(span, end_on_exit=False):
                        result = self._attempt(
                            request, target, provider, upstream_body, reservation, prompt_text, span
                        )
                    self.breakers.success(target.provider, check)
                    return result
                except UpstreamError as e:
                    span.set_attribute("llm.outcome", e.kind)
                    span.set_status(Status(StatusCode.ERROR, e.kind))
                    span.end()
                    if self.metrics is not None:
                        self.metrics.attempts.labels(target.provider, target.model, e.kind).inc()
                        if e.retryable:
                            self.metrics.retries.labels(target.provider, target.model).inc()
                    last = e
                    if not e.retryable:
                        raise self._client_error(e) from None
                    self.breakers.failure(target.provider)
                    check = self.breakers.check(target.provider)
                    if not check.allows:
                        break
                    wait = self.retry.delay(attempt, e.retry_after_s)
                    if wait is None or attempt + 1 == self.retry.attempts_per_target:
                        break
                    self.sleep(wait)
                except ProviderKeyError:
                    span.end()
                    raise ApiError(
                        503, "unavailable", f"the {target.provider} credentials are unavailable"
                    ) from None
        raise self._exhausted(last)

    def _attempt(
        self,
        request: ClientRequest,
        target: Target,
        provider: Provider,
        upstream_body: dict[str, Any],
        reservation: Any,
        prompt_text: str,
        span: Span,
    ) -> ApiResponse | StreamingResult:
        outgoing = provider.request(upstream_body, self.keys.get(provider.name))
        headers = {
            "x-pressline-provider": target.provider,
            "x-pressline-model": target.model,
            "x-pressline-request-id": request.request_id,
        }
        started = time.monotonic()
        self.admission.done()
        if not request.stream:
            reply = call(self.http, outgoing, target.timeouts)
            tracker = UsageTracker(provider.wire)
            if provider.wire == "openai":
                tracker.set_openai_usage(reply.get("usage") or {})
            else:
                tracker.set_anthropic_usage(reply.get("usage") or {})
            cost = self.accounting.settle(
                reservation, request_id=request.request_id, tenant=request.principal.tenant, target=target,
                reported=tracker.reported, prompt_text=prompt_text, job_id=request.job_id,
            )  # fmt: skip
            _record(span, "ok", tracker.reported, cost)
            self._observe(target, "ok", tracker.reported, cost, duration_s=time.monotonic() - started)
            span.end()
            return ApiResponse(200, self._downstream_body(request, provider.wire, reply), headers)
        stream = UpstreamStream(self.http, outgoing, target.timeouts, self.keepalive_s)
        first = self._first_event(stream)  # a failure here is still retryable: nothing was sent
        span.set_attribute("llm.time_to_first_token_ms", round(stream.elapsed_s * 1000, 1))
        if self.metrics is not None:
            self.metrics.time_to_first_token.labels(target.provider, target.model).observe(stream.elapsed_s)
        chunks = self._relay(request, target, provider.wire, stream, first, reservation, prompt_text, span)
        return StreamingResult(
            {**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, chunks
        )

    def _observe(
        self, target: Target, outcome: str, reported: Reported, cost_pico: int, *, duration_s: float
    ) -> None:
        if self.metrics is None:
            return
        m, labels = self.metrics, (target.provider, target.model)
        m.attempts.labels(*labels, outcome).inc()
        m.duration.labels(*labels).observe(duration_s)
        m.tokens.labels(*labels, "input").inc(reported.input_tokens)
        m.tokens.labels(*labels, "output").inc(reported.output_tokens)
        m.tokens.labels(*labels, "cached_input").inc(reported.cached_input_tokens)
        m.cost.labels(*labels).inc(cost_pico / 1e12)
        if not reported.complete:
            m.estimated.labels(*labels).inc()

    def _first_event(self, stream: UpstreamStream) -> SSEEvent:
        while True:
            event = stream.next_event()
            if event is None:
                raise UpstreamError(
                    "protocol", "the provider ended the stream without sending anything", retryable=True
                )
            if event is not KEEPALIVE:
                return event  # type: ignore[return-value]

    # -- the committed stream -----------------------------------------------------------------------

    def _relay(
        self,
        request: ClientRequest,
        target: Target,
        wire: Wire,
        stream: UpstreamStream,
        first: SSEEvent,
        reservation: Any,
        prompt_text: str,
        span: Span,
    ) -> Iterator[bytes]:
        tracker = UsageTracker(wire)
        convert = self._stream_converter(request, wire, target.model)
        context = otel_context.get_current()
        done = False
        cache, probe = self.cache, request.cache_probe  # cache hook: collect the answer to store it
        collector = cache.collector(wire) if cache is not None and probe is not None else None

        def settle(outcome: str) -> None:
            cost = self.accounting.settle(
                reservation, request_id=request.request_id, tenant=request.principal.tenant, target=target,
                reported=tracker.reported, prompt_text=prompt_text, job_id=request.job_id,
            )  # fmt: skip
            _record(span, outcome, tracker.reported, cost)
            self._observe(target, outcome, tracker.reported, cost, duration_s=stream.elapsed_s)
            span.set_attribute("llm.duration_ms", round(stream.elapsed_s * 1000, 1))
            if outcome != "ok":
                span.set_status(Status(StatusCode.ERROR, outcome))
            span.end()

        def chunks() -> Iterator[bytes]:
            nonlocal done
            token = otel_context.attach(context)
            try:
                event: SSEEvent | Any = first
                while True:
                    if event is KEEPALIVE:
                        yield encode_comment("keep-alive")
                    else:
                        tracker.feed(event.event, event.data)
                        if collector is not None:  # cache hook
                            collector.feed(event.event, event.data)
                        for out in convert(event):
                            yield out
                    event = stream.next_event()
                    if event is None:
                        break
                for out in convert(None):
                    yield out
                done = True
                settle("ok")
                if collector is not None and cache is not None:  # cache hook: only a clean end is stored
                    completion = collector.result()
                    if completion is not None:
                        cache.store(probe, completion)
            except UpstreamError as e:
                yield self._error_event(request.wire, e)
                done = True
                settle(e.kind)
            finally:
                stream.close()
                if not done:  # the client went away: the upstream request is cancelled above
                    settle("client_disconnected")
                otel_context.detach(token)

        return chunks()

    # -- formats ------------------------------------------------------------------------------------

    def _upstream_body(self, request: ClientRequest, wire: Wire, model: str) -> dict[str, Any]:
        body = dict(request.body)
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            # The budget reserved for at most this many output tokens, so the provider must stop there.
            body["max_tokens"] = self.default_max_tokens
        if request.wire != wire:
            try:
                if request.wire == "openai":
                    max_tokens = self.default_max_tokens
                    body = translate.openai_to_anthropic_request(body, default_max_tokens=max_tokens)
                else:
                    body = translate.anthropic_to_openai_request(body)
            except translate.TranslationError as e:  # the client's body, not ours: a 400 that says why
                details = [{"field": e.param, "problem": e.message}] if e.param else None
                raise ApiError(400, "invalid_request", e.message, details=details) from None
        body["model"] = model
        return body

    def _downstream_body(self, request: ClientRequest, wire: Wire, reply: dict[str, Any]) -> dict[str, Any]:
        model = str(request.body["model"])
        if request.wire == wire:
            return {**reply, "model": model}
        if request.wire == "openai":
            return translate.anthropic_to_openai_response(reply, model=model)
        return translate.openai_to_anthropic_response(reply, model=model)

    def _stream_converter(self, request: ClientRequest, wire: Wire, model: str) -> Converter:
        """Turns each upstream event (None at the end) into the bytes the client gets.

        Passthrough forwards the provider's bytes and decodes nothing it need not: only a usage
        chunk (to drop it when the client did not ask for usage) or a model name to rewrite.
        """
        alias = str(request.body["model"])
        if request.wire == wire == "openai":
            wants_usage = request.wants_usage
            rename = alias != model

            def openai_passthrough(event: SSEEvent | None) -> list[bytes]:
                if event is None:
                    return []
                raw = event.data
                if raw == "[DONE]":
                    return [encode_event(raw)]
                if not wants_usage and ('"choices":[]' in raw or '"choices": []' in raw):
                    return []  # the usage chunk we asked for on the client's behalf
                if not rename:
                    return [encode_event(raw)]  # forwarded as the provider wrote it
                data = event_json(event) or {}
                data["model"] = alias
                return [encode_event(json.dumps(data, separators=(",", ":")))]

            return openai_passthrough
        if request.wire == wire == "anthropic":

            def anthropic_passthrough(event: SSEEvent | None) -> list[bytes]:
                return [] if event is None else [encode_event(event.data, event=event.event)]

            return anthropic_passthrough
        if request.wire == "openai":
            completion_id = f"chatcmpl-{uuid.uuid4().hex}"
            to_openai = translate.AnthropicToOpenAIStream(alias, completion_id, request.wants_usage)

            def from_anthropic(event: SSEEvent | None) -> list[bytes]:
                if event is None:
                    return [encode_event("[DONE]")]
                data = event_json(event)
                if data is None:
                    return []
                chunks = to_openai.feed(event.event or "", data)
                return [encode_event(json.dumps(c, separators=(",", ":"))) for c in chunks]

            return from_anthropic
        to_anthropic = translate.OpenAIToAnthropicStream(alias, f"msg_{uuid.uuid4().hex}")

        def from_openai(event: SSEEvent | None) -> list[bytes]:
            pairs = to_anthropic.finish() if event is None else to_anthropic.feed(event_json(event) or {})
            return [encode_event(json.dumps(d, separators=(",", ":")), event=name) for name, d in pairs]

        return from_openai

    def _error_event(self, wire: Wire, error: UpstreamError) -> bytes:
        """The end of a stream that failed after it started, in the client's protocol (no [DONE])."""
        kind = "timeout" if "timeout" in error.kind else "upstream_error"
        if wire == "openai":
            return translate.openai_error_event(str(error), kind, error.kind)
        return translate.anthropic_error_event(
            str(error), "api_error" if kind == "upstream_error" else "timeout_error"
        )

    def _client_error(self, error: UpstreamError) -> ApiError:
        """A provider's refusal (4xx) passed to the client without internals."""
        status = error.status or 502
        if status in (401, 403):
            return ApiError(502, "upstream_auth", "the provider refused Pressline's credentials")
        return ApiError(status, "upstream_rejected", str(error))

    def _exhausted(self, last: UpstreamError | None) -> ApiError:
        if last is None:
            return ApiError(503, "unavailable", "no provider is available for this model")
        if "timeout" in last.kind:
            return ApiError(504, "upstream_timeout", str(last))
        if last.status == 429:
            return ApiError(
                429,
                "upstream_rate_limited",
                "every provider for this model is rate limiting",
                headers={"Retry-After": str(max(1, int(last.retry_after_s or 1)))},
            )
        if last.kind == "breaker_open":  # when the breaker lets a trial through: the job retries then
            retry_after = str(max(1, math.ceil(last.retry_after_s or 1)))
            return ApiError(503, "upstream_unavailable", str(last), headers={"Retry-After": retry_after})
        return ApiError(502, "upstream_unavailable", str(last))


def _record(span: Span, outcome: str, reported: Reported, cost_pico: int) -> None:
    span.set_attribute("llm.outcome", outcome)
    span.set_attribute("llm.input_tokens", reported.input_tokens)
    span.set_attribute("llm.output_tokens", reported.output_tokens)
    span.set_attribute("llm.cached_input_tokens", reported.cached_input_tokens)
    span.set_attribute("llm.usage_estimated", not reported.complete)
    span.set_attribute("llm.cost_pico_usd", cost_pico)


def _prompt_text(body: dict[str, Any]) -> str:
    """Everything in the prompt that counts as input, as text (for budget estimates)."""
    parts: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        parts.append(system)
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(block.get("text", "")) for block in content if isinstance(block, dict))
    if body.get("tools"):
        parts.append(json.dumps(body["tools"]))
    return "\n".join(parts)
