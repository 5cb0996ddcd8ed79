"""Pressline's WordPress REST client: idempotent post writes that survive an overloaded site.

Every post Pressline writes carries an external reference in post meta (``pressline_external_ref``,
registered by Pressline's mu-plugin together with a REST lookup by it). :meth:`upsert_post` holds
a Redis lock per (site, reference), looks the reference up and updates the post it finds, or
creates one. A create whose answer never arrived (a client timeout, a dropped connection, a
gateway's 5xx) may still have happened, so before trying again the client looks the reference up
again: one reference, one post.

Each request goes through, in order: the site's circuit breaker (shared by all processes through
Redis), the site's rate limit (GCRA in Redis, summed over all processes), then HTTP with
Application Password Basic auth, ``traceparent`` and ``X-Pressline-Trace-Id`` headers, in a
``wordpress.request`` span. 429, 5xx, timeouts and connection errors are retried with full-jitter
exponential backoff, or after the site's ``Retry-After`` (a longer one than ``backoff_max_s`` is
not waited out here: the call fails with :class:`SiteUnavailable` and the caller reschedules).
401/403 are :class:`PermissionRefused`, never retried.

Connections go through the egress guard (shared.egress) when the client is built by
:meth:`WordPressClient.for_site`: a site URL that resolves to a loopback, private, link-local or
other non-public address not in ``PRESSLINE_EGRESS_ALLOW`` is refused before anything is sent
(:class:`AddressRefused`, never retried), on every connection, so DNS rebinding does not get
through either; redirects are not followed.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx
import redis
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry

from shared.config import RateLimit, Settings
from shared.egress import EgressPolicy, EgressRefused, guarded_client
from shared.ratelimit import RateLimiter
from shared.telemetry.tracing import inject_context

from .backoff import full_jitter, parse_retry_after
from .breaker import SiteBreakers
from .credentials import SiteCredentials, load_credentials
from .errors import AddressRefused, PermissionRefused, SiteUnavailable, WordPressError
from .lock import RefLock, RefLocked
from .metrics import BREAKER_STATES, metrics_for
from .refs import REF_META, TRACE_META, PostRef

__all__ = ["WordPressClient"]

log = logging.getLogger("pressline.wordpress")
_tracer = trace.get_tracer("pressline.wordpress")

#: Retry-After values above this are treated as this (a site asking for a day is still unavailable).
MAX_RETRY_AFTER_S = 3600.0
_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_TRACE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Transient(WordPressError):
    """A retryable failure of one attempt. ``ambiguous``: the request may have taken effect."""

    def __init__(
        self, message: str, *, kind: str, status: int | None, retry_after_s: float | None, ambiguous: bool
    ) -> None:
        super().__init__(message, kind=kind, status=status, retryable=True, retry_after_s=retry_after_s)
        self.ambiguous = ambiguous


class WordPressClient:
    """One site's REST API, as one Application Password user.

    Thread-safe (and gevent-friendly): it keeps no per-call state; share one per site and process.

    Parameters:
      site(str): Pressline's site id (breaker, rate limit, lock and metric label).
      creds(SiteCredentials)
      http(httpx.Client): The connection pool (may be shared by many sites; not closed here);
        for a tenant's site, a :func:`shared.egress.guarded_client`.
      redis(redis.Redis): Breaker, rate-limit and lock state (decode_responses=False).
      namespace(str): Redis key prefix.
      timeout_s(float): One request's timeout.
      attempts(int): Tries per call, the first included.
      backoff_base_s(float): First backoff ceiling; doubles per attempt (full jitter).
      backoff_max_s(float): Largest backoff, and the longest ``Retry-After`` waited out in a call.
      rate_per_s(float): Requests per second to this site over all processes; 0 turns it off.
      breaker_fail_max(int): Consecutive failures that open the site's breaker.
      breaker_reset_s(float): How long it stays open before a trial request.
      sleep: Waits (``time.sleep``; replaceable in tests).
      registry(CollectorRegistry | None): Where the metrics go (default: the global registry).
      rate_burst(int): Requests allowed at once before the rate applies.
      lock_wait_s(float): How long to wait for another writer of the same reference before the
        job is retried later (when the other's lease ends), freeing this worker thread.
      lease_s(float): The reference lock's lease, renewed while its holder lives: how soon a
        crashed holder's reference is free again.
      tracer(trace.Tracer | None): Where the spans go (default: the global tracer provider's).
    """

    def __init__(
        self,
        site: str,
        creds: SiteCredentials,
        *,
        http: httpx.Client,
        redis: redis.Redis,
        namespace: str,
        timeout_s: float = 10.0,
        attempts: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        rate_per_s: float = 10.0,
        breaker_fail_max: int = 5,
        breaker_reset_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        registry: CollectorRegistry | None = None,
        rate_burst: int = 10,
        lock_wait_s: float = 2.0,
        lease_s: float = 10.0,
        tracer: trace.Tracer | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.site = site
        self.creds = creds
        self.http = http
        self.redis = redis
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.sleep = sleep
        self._auth = httpx.BasicAuth(creds.username, creds.app_password)
        self._rate = (
            RateLimit(limit=1, period_s=1.0 / rate_per_s, burst=max(1, rate_burst))
            if rate_per_s > 0
            else None
        )
        self._limiter = RateLimiter(redis, namespace, jitter=0.1)
        self._breakers = SiteBreakers(redis, namespace, breaker_fail_max, breaker_reset_s)
        self._locks = RefLock(redis, namespace, sleep=sleep)
        self.lease_s = lease_s
        self.lock_wait_s = lock_wait_s
        self._metrics = metrics_for(registry)
        self._tracer = tracer or _tracer
        self._metrics.breaker.labels(site).set_function(self._breaker_value)

    def __repr__(self) -> str:
        creds = self.creds
        return f"WordPressClient(site={self.site!r}, base_url={creds.base_url!r}, user={creds.username!r})"

    @classmethod
    def for_site(
        cls,
        site: str,
        settings: Settings,
        redis: redis.Redis,
        *,
        secrets_client: Any = None,
        http: httpx.Client | None = None,
    ) -> WordPressClient:
        """The client of a registered site: credentials from Secrets Manager, limits from settings.

        The secret is the site's ``credentials_secret`` (else ``PRESSLINE_WORDPRESS_CREDENTIALS_PATTERN``);
        the site's registered ``base_url``, when set, wins over the one in the secret. Without
        ``http``, connections are checked by the settings' egress policy (``PRESSLINE_EGRESS_ALLOW``).
        """
        from shared.aws import aws_client
        from shared.sites import SiteRegistry

        record = SiteRegistry(redis, settings.namespace).get(site)
        secret_id = (record.credentials_secret if record else None) or (
            settings.wordpress_credentials_pattern.replace("{site}", site)
        )
        sm = secrets_client if secrets_client is not None else aws_client("secretsmanager", settings)
        creds = load_credentials(sm, secret_id)
        if record is not None and record.base_url:
            creds = replace(creds, base_url=record.base_url)
        return cls(
            site,
            creds,
            http=http if http is not None else guarded_client(EgressPolicy.from_settings(settings)),
            redis=redis,
            namespace=settings.namespace,
            timeout_s=settings.wordpress_timeout_s,
            attempts=settings.wordpress_attempts,
            backoff_base_s=settings.wordpress_backoff_base_s,
            backoff_max_s=settings.wordpress_backoff_max_s,
            rate_per_s=settings.wordpress_rate_per_s,
            rate_burst=settings.wordpress_rate_burst,
            breaker_fail_max=settings.wordpress_breaker_fail_max,
            breaker_reset_s=settings.wordpress_breaker_reset_s,
        )

    # --- public calls -----------------------------------------------------------------------------

    def upsert_post(
        self,
        *,
        external_ref: str,
        title: str,
        content_html: str,
        status: str = "draft",
        trace_id: str | None = None,
        meta: dict[str, str] | None = None,
    ) -> PostRef:
        """Create or update the one post of ``external_ref``; never two, whatever fails on the way.

        Raises :class:`PermissionRefused` (e.g. a contributor asking for ``publish``),
        :class:`SiteUnavailable` (retry later), or :class:`WordPressError` (a refused post).
        """
        if not external_ref or len(external_ref) > 255:
            raise ValueError("external_ref must be 1 to 255 characters")
        tid = trace_id or _current_trace_id()
        post_meta = dict(meta or {})
        post_meta[REF_META] = external_ref
        if tid:
            post_meta[TRACE_META] = tid
        body = {"title": title, "content": content_html, "status": status, "meta": post_meta}
        try:
            with self._locks.hold(self.site, external_ref, lease_s=self.lease_s, wait_s=self.lock_wait_s):
                return self._upsert_locked(external_ref, body, tid)
        except RefLocked as error:
            raise SiteUnavailable(
                f"post reference busy on site {self.site}", kind="ref_busy", retry_after_s=error.retry_after_s
            ) from error

    def find_by_ref(self, external_ref: str) -> PostRef | None:
        """The post carrying ``external_ref`` (any status but trash), or None."""
        found = self._call(lambda attempt: self._lookup(external_ref, attempt, _current_trace_id()))
        return None if found is None else PostRef.from_post(found, created=False)

    def get_post(self, post_id: int) -> dict[str, Any]:
        """The post in the ``edit`` context (raw content, meta, status)."""
        route = f"/wp/v2/posts/{int(post_id)}"
        result: dict[str, Any] = self._call(
            lambda attempt: self._attempt(
                "GET", route, "/wp/v2/posts/{id}", attempt, params={"context": "edit"}, trace_id=None
            )
        )
        return result

    def close(self) -> None:
        """Close the HTTP pool (only when no other client shares it)."""
        self.http.close()

    # --- the upsert -------------------------------------------------------------------------------

    def _upsert_locked(self, ref: str, body: dict[str, Any], tid: str | None) -> PostRef:
        post_id: int | None = None
        need_lookup = True  # always look first; again after a create whose outcome is unknown
        sent_create = False
        created = False
        last: _Transient | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                if need_lookup:
                    found = self._lookup(ref, attempt, tid)
                    need_lookup = False
                    if found is not None:
                        post_id = int(found["id"])
                        created = sent_create  # our create went through after all
                        if created:
                            log.info(
                                "a timed-out create had succeeded; updating that post",
                                extra={"site": self.site, "post_id": post_id},
                            )
                if post_id is None:
                    sent_create = True
                    post = self._attempt(
                        "POST", "/wp/v2/posts", "/wp/v2/posts", attempt, json=body, trace_id=tid
                    )
                    return PostRef.from_post(post, created=True)
                route = f"/wp/v2/posts/{post_id}"
                post = self._attempt("POST", route, "/wp/v2/posts/{id}", attempt, json=body, trace_id=tid)
                return PostRef.from_post(post, created=created)
            except _Transient as error:
                last = error
                if post_id is None and sent_create and error.ambiguous:
                    need_lookup = True
                if attempt < self.attempts:
                    self._pause(attempt, error)
        assert last is not None
        raise self._exhausted(last)

    def _lookup(self, ref: str, attempt: int, tid: str | None) -> dict[str, Any] | None:
        params = {
            REF_META: ref,
            "status": "any",
            "context": "edit",
            "orderby": "id",
            "order": "asc",
            "per_page": "2",
        }
        posts = self._attempt("GET", "/wp/v2/posts", "/wp/v2/posts", attempt, params=params, trace_id=tid)
        if not isinstance(posts, list):
            raise WordPressError("the post lookup did not answer a list", kind="bad_response")
        if len(posts) > 1:
            log.warning(
                "several posts carry one external reference; using the oldest",
                extra={"site": self.site, "post_ids": [p.get("id") for p in posts]},
            )
        return posts[0] if posts else None

    # --- retries ----------------------------------------------------------------------------------

    def _call(self, once: Callable[[int], Any]) -> Any:
        """``once(attempt)`` until it succeeds, retrying transient failures with backoff."""
        last: _Transient | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                return once(attempt)
            except _Transient as error:
                last = error
                if attempt < self.attempts:
                    self._pause(attempt, error)
        assert last is not None
        raise self._exhausted(last)

    def _pause(self, attempt: int, error: _Transient) -> None:
        if error.retry_after_s is not None:
            if error.retry_after_s > self.backoff_max_s:
                raise SiteUnavailable(
                    f"site {self.site} asks to retry after {error.retry_after_s:.0f}s",
                    kind=error.kind,
                    status=error.status,
                    retry_after_s=min(error.retry_after_s, MAX_RETRY_AFTER_S),
                ) from None
            delay = error.retry_after_s
        else:
            delay = full_jitter(attempt, self.backoff_base_s, self.backoff_max_s)
        log.warning(
            "wordpress request failed; retrying",
            extra={"site": self.site, "kind": error.kind, "status": error.status, "attempt": attempt,
                   "delay_s": round(delay, 3)},
        )  # fmt: skip
        self.sleep(delay)

    def _exhausted(self, last: _Transient) -> SiteUnavailable:
        hint = last.retry_after_s
        if hint is None:
            hint = min(self.backoff_max_s, self.backoff_base_s * 2**self.attempts)
        return SiteUnavailable(
            f"site {self.site}: {last.kind} after {self.attempts} attempts",
            kind=last.kind,
            status=last.status,
            retry_after_s=min(hint, MAX_RETRY_AFTER_S),
        )

    # --- one request ------------------------------------------------------------------------------

    def _throttle(self, method: str) -> None:
        """Wait for the site's rate limit, at most ``timeout_s``; else :class:`SiteUnavailable`."""
        if self._rate is None:
            return
        waited = 0.0
        while True:
            wait = self._limiter.try_acquire(f"wordpress:{self.site}", self._rate)
            if wait <= 0:
                return
            if waited + wait > self.timeout_s:
                self._metrics.requests.labels(self.site, method, "throttled").inc()
                raise SiteUnavailable(
                    f"site {self.site}: rate limit reached", kind="rate_limited", retry_after_s=wait
                )
            self.sleep(wait)
            waited += wait

    def _attempt(
        self,
        method: str,
        path: str,
        route: str,
        attempt: int,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        trace_id: str | None,
    ) -> Any:
        """One request. Returns the JSON body; raises _Transient, PermissionRefused or WordPressError."""
        if not self._breakers.allows(self.site):
            self._metrics.requests.labels(self.site, method, "breaker_open").inc()
            raise SiteUnavailable(
                f"site {self.site}: circuit breaker open",
                kind="breaker_open",
                retry_after_s=max(0.05, self._breakers.retry_after_s(self.site)),
            )
        self._throttle(method)
        attributes: dict[str, str | int] = {
            "wordpress.site": self.site,
            "http.request.method": method,
            "http.route": route,
            "wordpress.attempt": attempt,
        }
        with self._tracer.start_as_current_span(
            "wordpress.request", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            headers = {"Accept": "application/json"}
            inject_context(headers)
            tid = trace_id or _current_trace_id()
            if tid and _TRACE.match(tid):
                headers["X-Pressline-Trace-Id"] = tid
            started = time.perf_counter()
            try:
                response = self.http.request(
                    method,
                    self.creds.rest_root + path,
                    params=params,
                    json=json,
                    headers=headers,
                    auth=self._auth,
                    timeout=self.timeout_s,
                )
            except EgressRefused as error:  # checked on connecting: nothing was sent
                self._metrics.requests.labels(self.site, method, "address_refused").inc()
                span.set_status(Status(StatusCode.ERROR, "address_refused"))
                log.warning(
                    "wordpress request refused: the site's URL resolves to a refused address",
                    extra={"site": self.site, "host": error.host, "reason": error.reason},
                )
                raise AddressRefused(
                    f"site {self.site}: the site's URL resolves to a refused address ({error.reason})",
                    reason=error.reason,
                ) from None
            except httpx.TimeoutException as error:
                # A connect or pool timeout never sent the request; any other may have been processed.
                sent = not isinstance(error, httpx.ConnectTimeout | httpx.PoolTimeout)
                raise self._transport_failure(span, method, route, started, "timeout", sent) from None
            except httpx.TransportError as error:
                sent = not isinstance(error, httpx.ConnectError)
                raise self._transport_failure(span, method, route, started, "connect_error", sent) from None
            self._metrics.seconds.labels(self.site, method).observe(time.perf_counter() - started)
            span.set_attribute("http.response.status_code", response.status_code)
            return self._answer(span, method, route, response)

    def _transport_failure(
        self, span: trace.Span, method: str, route: str, started: float, kind: str, sent: bool
    ) -> _Transient:
        self._metrics.seconds.labels(self.site, method).observe(time.perf_counter() - started)
        self._metrics.requests.labels(self.site, method, kind).inc()
        self._breakers.failure(self.site)
        span.set_status(Status(StatusCode.ERROR, kind))
        return _Transient(
            f"{method} {route} on site {self.site}: {kind}",
            kind=kind,
            status=None,
            retry_after_s=None,
            ambiguous=sent,
        )

    def _answer(self, span: trace.Span, method: str, route: str, response: httpx.Response) -> Any:
        status = response.status_code
        where = f"{method} {route} on site {self.site}"
        if 200 <= status < 300:
            self._metrics.requests.labels(self.site, method, "ok").inc()
            self._breakers.success(self.site)
            try:
                return response.json()
            except ValueError:
                span.set_status(Status(StatusCode.ERROR, "bad_response"))
                raise WordPressError(
                    f"{where}: the answer is not JSON", kind="bad_response", status=status
                ) from None
        code, denied = _error_code(response)
        span.set_status(Status(StatusCode.ERROR, code or str(status)))
        if status == 429 or status >= 500:
            self._metrics.requests.labels(
                self.site, method, "rate_limited" if status == 429 else "server_error"
            ).inc()
            self._breakers.failure(self.site)
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return_kind = "rate_limited" if status == 429 else "unavailable"
            raise _Transient(
                f"{where}: HTTP {status}",
                kind=code or return_kind,
                status=status,
                retry_after_s=retry_after,
                # 429 and 503 refuse a request before doing it; a 500, 502 or 504 may hide a done one.
                ambiguous=status not in (429, 503),
            )
        self._breakers.success(self.site)  # the site answered: it is up
        if status in (401, 403) or denied is not None:
            self._metrics.requests.labels(self.site, method, "denied").inc()
            raise PermissionRefused(
                f"{where}: HTTP {status} {code or ''}".rstrip(),
                kind=code or "forbidden",
                status=denied or status,
            )
        self._metrics.requests.labels(self.site, method, "client_error").inc()
        raise WordPressError(
            f"{where}: HTTP {status} {code or ''}".rstrip(), kind=code or "refused", status=status
        )

    def _breaker_value(self) -> float:
        try:
            return BREAKER_STATES.get(self._breakers.state(self.site), float("nan"))
        except redis.RedisError:
            return float("nan")


def _error_code(response: httpx.Response) -> tuple[str | None, int | None]:
    """WordPress's error code (``rest_cannot_publish``) and, when a parameter was refused for lack of
    rights (``rest_forbidden_status``: WordPress treats a wrong Application Password as anonymous),
    that refusal's code and 401/403 status."""
    try:
        body = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    code = body.get("code")
    code = code if isinstance(code, str) and _CODE.match(code) else None
    details = (body.get("data") or {}).get("details") if isinstance(body.get("data"), dict) else None
    for detail in (details or {}).values() if isinstance(details, dict) else ():
        inner = detail.get("code") if isinstance(detail, dict) else None
        status = (detail.get("data") or {}).get("status") if isinstance(detail, dict) else None
        if isinstance(inner, str) and _CODE.match(inner) and status in (401, 403):
            return inner, int(status)
    return code, None


def _current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
