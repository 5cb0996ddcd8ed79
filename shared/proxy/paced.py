"""Network reads that wait in slices, so one thread can read a stream and notice it going quiet.

A streaming relay wants each chunk sent on the moment it arrives (a blocking read) and, while
nothing arrives, a keep-alive now and then and an error at a deadline. With blocking reads that
takes a second thread and a hand-over per chunk, which on a small VM costs more CPU than relaying
the chunk itself. Instead the response is iterated inside a :class:`Pacer` — a greenlet in the
request's own thread. While a Pacer reads, each network read waits at most :meth:`Pacer.wait_s`;
a slice with nothing in it calls :meth:`Pacer.quiet`, which may switch back to the caller (to send
a keep-alive; the read goes on when the caller switches in again) or raise to end the stream.
Anything raised there goes up through httpcore, which closes the connection, to the caller.

Outside a Pacer, reads are httpcore's own, with httpcore's timeouts.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from typing import Any

import greenlet
import httpcore
import httpx

__all__ = ["LinearPool", "PacedBackend", "PacedNetworkStream", "PacedTransport", "Pacer"]


class Pacer(greenlet.greenlet):
    """A greenlet whose network reads wait in slices it chooses."""

    def wait_s(self) -> float:
        """How long the next read may wait (> 0); raise instead when there is no time left."""
        raise NotImplementedError

    def quiet(self) -> None:
        """A slice went by with nothing to read (switch to the caller, or raise)."""
        raise NotImplementedError


class PacedNetworkStream(httpcore.NetworkStream):
    """A connection's stream whose reads, inside a :class:`Pacer`, wait as that Pacer says.

    Parameters:
      stream(httpcore.NetworkStream): The stream that does the work.
    """

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        pacer = greenlet.getcurrent()
        if not isinstance(pacer, Pacer):
            return self._stream.read(max_bytes, timeout)
        while True:
            try:
                return self._stream.read(max_bytes, pacer.wait_s())
            except httpcore.ReadTimeout:  # the socket is as it was: nothing was read
                pacer.quiet()

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return PacedNetworkStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class PacedBackend(httpcore.NetworkBackend):
    """httpcore's synchronous backend, its streams wrapped in :class:`PacedNetworkStream`."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return PacedNetworkStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return PacedNetworkStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class LinearPool(httpcore.ConnectionPool):
    """httpcore's connection pool, with work per request that does not grow with the pool squared.

    httpcore 1.0 hands out connections in ``_assign_requests_to_connections``, twice per request
    (on send and on close), under the pool's lock. For every idle connection it counts all of them,
    and it asks every connection whether it has expired, one ``poll`` syscall each: with the 50
    warm connections of a 50-stream burst that is 5,000 checks and 100 syscalls per request, all
    holding the GIL. Here a request costs one pass to find an idle connection, whose liveness is
    checked when it is handed out; the full sweep (closed, expired, idle beyond the keep-alive
    limit) runs at most every ``sweep_s``. What a request can get is the same as httpcore's: a
    live connection to its origin, else a new one within ``max_connections``, else it waits.

    Parameters: httpcore.ConnectionPool's, and
      sweep_s(float): The longest an expired idle connection stays in the pool unclosed.
    """

    def __init__(self, *args: Any, sweep_s: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sweep_s = sweep_s
        self._next_sweep = 0.0

    def _assign_requests_to_connections(self) -> list[httpcore.ConnectionInterface]:
        closing: list[httpcore.ConnectionInterface] = []
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_s
            closing = self._sweep()
        for pool_request in self._requests:
            if not pool_request.is_queued():
                continue
            origin = pool_request.request.url.origin
            connection = self._available(origin, closing)
            if connection is None:
                if len(self._connections) >= self._max_connections:
                    idle = next((c for c in self._connections if c.is_idle()), None)
                    if idle is None:
                        continue  # stays queued until a connection is released
                    self._connections.remove(idle)
                    closing.append(idle)
                connection = self.create_connection(origin)
                self._connections.append(connection)
            pool_request.assign_to_connection(connection)
        return closing

    def _available(
        self, origin: httpcore.Origin, closing: list[httpcore.ConnectionInterface]
    ) -> httpcore.ConnectionInterface | None:
        """The first live idle connection to ``origin``; dead ones found on the way go to ``closing``."""
        for connection in list(self._connections):
            if not (connection.can_handle_request(origin) and connection.is_available()):
                continue
            if connection.has_expired():
                self._connections.remove(connection)
                closing.append(connection)
                continue
            return connection
        return None

    def _sweep(self) -> list[httpcore.ConnectionInterface]:
        """Drop closed connections; return the expired ones and the idle ones past the keep-alive limit."""
        kept: list[httpcore.ConnectionInterface] = []
        closing: list[httpcore.ConnectionInterface] = []
        idle = 0
        for connection in self._connections:
            if connection.is_closed():
                continue
            surplus = connection.is_idle() and idle >= self._max_keepalive_connections
            if surplus or connection.has_expired():
                closing.append(connection)
            else:
                idle += connection.is_idle()
                kept.append(connection)
        self._connections = kept
        return closing


class PacedTransport(httpx.HTTPTransport):
    """httpx's transport (direct connections) over a connection pool on :class:`PacedBackend`.

    Parameters:
      limits(httpx.Limits): The pool's limits.
      verify(ssl.SSLContext | bool): TLS verification, as httpx's ``verify``.
    """

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> None:
        super().__init__(limits=limits, verify=verify)
        # httpx's transport takes no network backend, and handle_request() uses the pool set here.
        self._pool = LinearPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PacedBackend(),
        )
