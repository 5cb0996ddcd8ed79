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
from collections.abc import Iterable
from typing import Any

import greenlet
import httpcore
import httpx

__all__ = ["PacedBackend", "PacedNetworkStream", "PacedTransport", "Pacer"]


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


class PacedTransport(httpx.HTTPTransport):
    """httpx's transport (direct connections) over a connection pool on :class:`PacedBackend`.

    Parameters:
      limits(httpx.Limits): The pool's limits.
      verify(ssl.SSLContext | bool): TLS verification, as httpx's ``verify``.
    """

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> None:
        super().__init__(limits=limits, verify=verify)
        # httpx's transport takes no network backend, and handle_request() uses the pool set here.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PacedBackend(),
        )
