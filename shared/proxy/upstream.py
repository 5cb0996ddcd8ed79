"""One attempt against one provider, with every timeout the proxy promises.

The first event of a stream is read in the caller's thread, bounded by ``first_token_s`` (the
socket's read timeout; nothing has gone to the client yet, so there is nothing to keep alive) —
when ``first_token_s >= idle_s``, the usual case; otherwise the thread below reads it too.
From then on the stream is read on a background thread into a queue, so the proxy can wait with
a deadline — each next chunk within ``idle_s``, the whole stream within ``total_s`` — and send
keep-alive comments while it waits. Starting that thread only after the first event keeps its
start-up (a thread hand-off, slow when many requests arrive at once) off the time to first token.
Closing the stream (a timeout, or a client that went away) closes the upstream connection.
"""

from __future__ import annotations

import collections
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

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


class UpstreamStream:
    """An open SSE response from a provider.

    Parameters:
      client(httpx.Client): Pooled connections to the provider.
      request(UpstreamRequest)
      timeouts(Timeouts)
      keepalive_s(float): How often to report a quiet stream (:data:`KEEPALIVE`).
    """

    def __init__(
        self, client: httpx.Client, request: UpstreamRequest, timeouts: Timeouts, keepalive_s: float
    ):
        self.timeouts = timeouts
        self.keepalive_s = keepalive_s
        # Lists of events (one per network read), end, error. SimpleQueue: its hand-over costs a third
        # of queue.Queue's (measured), and there is one per network read.
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: collections.deque[SSEEvent] = collections.deque()
        self._started = time.monotonic()
        self._deadline = self._started + timeouts.total_s
        self._got_first = False
        self._last_event_at = self._started  # keep-alives must not restart the idle clock
        self._closed = False
        # connect bounds the connection; read bounds each socket read: the status line, headers and
        # first event (first_token_s), then every later read, which the deadlines below cut sooner.
        self._first_inline = timeouts.first_token_s >= timeouts.idle_s
        read_s = timeouts.first_token_s if self._first_inline else timeouts.idle_s
        timeout = httpx.Timeout(read_s, connect=timeouts.connect_s)
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
        self._chunks = self._response.iter_raw()
        self._parser = SSEParser()
        self._reader: threading.Thread | None = None

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started

    def _read(self) -> None:
        try:
            for chunk in self._chunks:
                events = self._parser.feed(chunk)
                if events:
                    self._queue.put(events)  # one hand-over per read, not per event
            self._queue.put(_END)
        except Exception as e:  # the connection was cut, or we closed it
            self._queue.put(e)

    def _read_first(self) -> SSEEvent | None:
        """Read in this thread until the first event (None: the stream ended before any)."""
        try:
            for chunk in self._chunks:
                events = self._parser.feed(chunk)
                if events:
                    self._pending.extend(events)
                    return self._pending.popleft()
                if time.monotonic() >= min(self._deadline, self._started + self.timeouts.first_token_s):
                    raise httpx.ReadTimeout("no event yet")  # only comments so far, and time is up
            return None
        except httpx.TimeoutException:
            self.close()
            waited = self.timeouts.first_token_s
            raise UpstreamError(
                "first_token_timeout",
                f"the provider sent nothing for {waited:g}s while waiting for the first token",
                retryable=True,
            ) from None
        except httpx.TransportError:
            self.close()
            raise UpstreamError(
                "protocol", "the provider closed the stream before it was complete", retryable=True
            ) from None

    def next_event(self) -> SSEEvent | KeepAlive | None:
        """The next event, KEEPALIVE after a quiet interval, None at a clean end; or UpstreamError."""
        if self._pending:
            return self._deliver(self._pending.popleft())
        if self._reader is None:
            if self._first_inline and not self._got_first:
                first = self._read_first()
                # The reader thread starts on the next call, once this event has gone out.
                return None if first is None else self._deliver(first)
            # From here the reader thread reads, and this thread waits on its queue with deadlines.
            self._reader = threading.Thread(target=self._read, name="upstream-reader", daemon=True)
            self._reader.start()
        limit, kind = (
            (self.timeouts.idle_s, "idle_timeout")
            if self._got_first
            else (
                self.timeouts.first_token_s,
                "first_token_timeout",
            )
        )
        wait_until = min(self._last_event_at + limit, self._deadline)
        while True:
            now = time.monotonic()
            if now >= wait_until:
                self.close()
                if now >= self._deadline:
                    raise UpstreamError(
                        "total_timeout", "the stream took longer than allowed", retryable=not self._got_first
                    )
                what = "the first token" if kind == "first_token_timeout" else "the next chunk"
                raise UpstreamError(
                    kind,
                    f"the provider sent nothing for {limit:g}s while waiting for {what}",
                    retryable=not self._got_first,
                )
            try:
                item = self._queue.get(timeout=min(wait_until - now, self.keepalive_s))
            except queue.Empty:
                if time.monotonic() < wait_until:
                    return KEEPALIVE
                continue
            if item is _END:
                return None
            if isinstance(item, Exception):
                self.close()
                raise UpstreamError(
                    "protocol",
                    "the provider closed the stream before it was complete",
                    retryable=not self._got_first,
                )
            self._pending.extend(item)
            return self._deliver(self._pending.popleft())

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
        """Close the upstream connection (the reader thread then ends)."""
        if not self._closed:
            self._closed = True
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
