"""One attempt against one provider, with every timeout the proxy promises.

A stream is read in the request's own thread: its response is iterated inside a greenlet
(:class:`~shared.proxy.paced.Pacer`) whose network reads wait in slices, so each chunk costs one
wake-up, and a quiet wire still gives the caller a keep-alive every ``keepalive_s`` and an error
at the deadlines — the first token within ``first_token_s`` of the request, each next event within
``idle_s`` of the last, the whole stream within ``total_s``. This needs the client's transport to
be :class:`~shared.proxy.paced.PacedTransport`; over another one the reads simply block, bounded
by the request's read timeout. Closing the stream (a timeout, or a client that went away) closes
the upstream connection.
"""

from __future__ import annotations

import collections
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import greenlet
import httpx

from .paced import Pacer
from .providers.base import RETRYABLE_STATUSES, UpstreamRequest, retry_after_s
from .routing import Timeouts
from .sse import SSEEvent, SSEParser


class UpstreamError(Exception):
    """An attempt failed. ``retryable``: another attempt (or target) may succeed.

    ``kind``: connect | http | first_token_timeout | idle_timeout | total_timeout | protocol.
    The message is safe to show a client: no keys, no upstream bodies beyond their error text.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.body = body


@dataclass(frozen=True)
class KeepAlive:
    """Nothing arrived for a keep-alive interval (the client gets an SSE comment)."""


KEEPALIVE = KeepAlive()
_END = object()


def _http_error(response: httpx.Response) -> UpstreamError:
    try:
        body = response.json()
    except ValueError:
        body = None
    message = _error_text(body) or f"upstream answered {response.status_code}"
    return UpstreamError(
        "http",
        message,
        status=response.status_code,
        retryable=response.status_code in RETRYABLE_STATUSES,
        retry_after_s=retry_after_s(response),
        body=body if isinstance(body, dict) else None,
    )


def _error_text(body: Any) -> str | None:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
    return None


def call(client: httpx.Client, request: UpstreamRequest, timeouts: Timeouts) -> dict[str, Any]:
    """A non-streaming request: the decoded JSON body of a 200, or an UpstreamError."""
    timeout = httpx.Timeout(timeouts.total_s, connect=timeouts.connect_s)
    try:
        response = client.post(request.url, headers=request.headers, json=request.body, timeout=timeout)
    except httpx.ConnectError as e:
        raise UpstreamError(
            "connect", f"cannot connect to the provider ({type(e).__name__})", retryable=True
        ) from None
    except httpx.TimeoutException:
        raise UpstreamError("total_timeout", "the provider did not answer in time", retryable=True) from None
    except httpx.TransportError as e:
        raise UpstreamError(
            "protocol", f"the provider connection failed ({type(e).__name__})", retryable=True
        ) from None
    if response.status_code != 200:
        raise _http_error(response)
    try:
        return dict(response.json())
    except ValueError:
        raise UpstreamError("protocol", "the provider sent a body that is not JSON", retryable=True) from None


class _Deadline(Exception):
    """Raised inside the reader when a deadline has passed (the stream says which)."""


class _Reader(Pacer):
    """Iterates one response, switching to whoever asks for events with each batch read."""

    def __init__(self, stream: UpstreamStream) -> None:
        super().__init__()
        self.stream = stream

    def run(self) -> object:
        stream = self.stream
        for chunk in stream._response.iter_raw():
            events = stream._parser.feed(chunk)
            if events:
                self.parent.switch(events)  # one switch per network read, not per event
        return _END

    def wait_s(self) -> float:
        wait = self.stream._wait_until() - time.monotonic()
        if wait <= 0:
            raise _Deadline
        return min(wait, self.stream.keepalive_s)

    def quiet(self) -> None:
        if time.monotonic() < self.stream._wait_until():
            self.parent.switch(KEEPALIVE)


class UpstreamStream:
    """An open SSE response from a provider.

    Parameters:
      client(httpx.Client): Pooled connections to the provider (on a ``PacedTransport``).
      request(UpstreamRequest)
      timeouts(Timeouts)
      keepalive_s(float): How often to report a quiet stream (:data:`KEEPALIVE`).
    """

    def __init__(
        self, client: httpx.Client, request: UpstreamRequest, timeouts: Timeouts, keepalive_s: float
    ):
        self.timeouts = timeouts
        self.keepalive_s = keepalive_s
        self._pending: collections.deque[SSEEvent] = collections.deque()
        self._started = time.monotonic()
        self._deadline = self._started + timeouts.total_s
        self._got_first = False
        self._last_event_at = self._started  # keep-alives must not restart the idle clock
        self._ended = False
        self._closed = False
        # connect bounds the connection, read the status line and headers; the body's reads are
        # bounded by the deadlines (the reader's slices).
        timeout = httpx.Timeout(min(timeouts.first_token_s, timeouts.total_s), connect=timeouts.connect_s)
        try:
            self._response = client.send(
                client.build_request(
                    "POST", request.url, headers=request.headers, json=request.body, timeout=timeout
                ),
                stream=True,
            )
        except httpx.ConnectError as e:
            raise UpstreamError(
                "connect", f"cannot connect to the provider ({type(e).__name__})", retryable=True
            ) from None
        except httpx.TimeoutException:
            raise UpstreamError(
                "first_token_timeout", "the provider did not answer in time", retryable=True
            ) from None
        except httpx.TransportError as e:
            raise UpstreamError(
                "protocol", f"the provider connection failed ({type(e).__name__})", retryable=True
            ) from None
        if self._response.status_code != 200:
            try:
                self._response.read()
            finally:
                self._response.close()
            raise _http_error(self._response)
        self._parser = SSEParser()
        self._reader = _Reader(self)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started

    def _wait_until(self) -> float:
        """When the event being waited for is late: the first token's, the next chunk's or the end."""
        limit = self.timeouts.idle_s if self._got_first else self.timeouts.first_token_s
        return min(self._last_event_at + limit, self._deadline)

    def next_event(self) -> SSEEvent | KeepAlive | None:
        """The next event, KEEPALIVE after a quiet interval, None at a clean end; or UpstreamError."""
        if self._pending:
            return self._deliver(self._pending.popleft())
        if self._ended:
            return None
        if time.monotonic() >= self._deadline:
            raise self._timed_out()
        asking = greenlet.getcurrent()
        if self._reader.parent is not asking:
            self._reader.parent = asking  # switch back to whoever asks
        try:
            item = self._reader.switch()
        except (_Deadline, httpx.TimeoutException):  # the latter: a read timeout on another transport
            raise self._timed_out() from None
        except (httpx.TransportError, httpx.StreamError):  # the connection was cut
            self.close()
            raise UpstreamError(
                "protocol",
                "the provider closed the stream before it was complete",
                retryable=not self._got_first,
            ) from None
        if item is KEEPALIVE:
            return KEEPALIVE
        if item is _END:
            self._ended = True
            return None
        self._pending.extend(item)
        return self._deliver(self._pending.popleft())

    def _timed_out(self) -> UpstreamError:
        self.close()
        if time.monotonic() >= self._deadline:
            return UpstreamError(
                "total_timeout", "the stream took longer than allowed", retryable=not self._got_first
            )
        if self._got_first:
            kind, limit, what = "idle_timeout", self.timeouts.idle_s, "the next chunk"
        else:
            kind, limit, what = "first_token_timeout", self.timeouts.first_token_s, "the first token"
        return UpstreamError(
            kind,
            f"the provider sent nothing for {limit:g}s while waiting for {what}",
            retryable=not self._got_first,
        )

    def _deliver(self, event: SSEEvent) -> SSEEvent:
        self._got_first = True
        self._last_event_at = time.monotonic()
        return event

    def events(self) -> Iterator[SSEEvent | KeepAlive]:
        while True:
            event = self.next_event()
            if event is None:
                return
            yield event

    def close(self) -> None:
        """Close the upstream connection (a reader waiting in it is unwound first, in its thread)."""
        if not self._closed:
            self._closed = True
            if self._reader:  # started and suspended: end it where it waits, which closes the stream
                with contextlib.suppress(greenlet.error):  # another thread: its collector ends it
                    self._reader.throw(greenlet.GreenletExit)
            self._response.close()


def event_json(event: SSEEvent) -> dict[str, Any] | None:
    """The JSON payload of an event, or None (``[DONE]``, or not JSON)."""
    if event.data == "[DONE]":
        return None
    try:
        value = json.loads(event.data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
