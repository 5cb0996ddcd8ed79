"""httpx clients whose every connection goes where the egress policy allows, and only there.

Checking a URL once (at registration) is not enough: its name can resolve to a public address then
and to ``127.0.0.1`` a minute later (DNS rebinding), and a redirect can point anywhere. So the check
lives in the connection itself: :class:`GuardedBackend` is an httpcore network backend that resolves
the host, checks every address with the :class:`~shared.egress.policy.EgressPolicy`, and connects
to a checked *address* — the name is never resolved again by anyone else. httpcore still sends the
original name as the ``Host`` header and as TLS SNI (and verifies the certificate against it), since
those come from the request's URL, not from what ``connect_tcp`` was given.

A refused address raises :class:`~shared.egress.policy.EgressRefused` before a byte is written, so
an ``Authorization`` header (or a signed body) never leaves the process. The clients follow no
redirects by default; a caller that asks for them still has each hop connect through the same check.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from .policy import EgressPolicy, EgressRefused

__all__ = ["DEFAULT_LIMITS", "GuardedBackend", "GuardedTransport", "guarded_client"]

#: httpx's own default pool limits.
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's synchronous backend, connecting only to addresses ``policy`` allows.

    Parameters:
      policy(EgressPolicy): What may be connected to.
      backend(httpcore.NetworkBackend | None): What makes the connections (default: httpcore's own).
    """

    def __init__(self, policy: EgressPolicy, backend: httpcore.NetworkBackend | None = None) -> None:
        self.policy = policy
        self._backend = backend or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """Resolve ``host``, refuse if any address is refused, else connect to the addresses in turn."""
        try:
            addresses = self.policy.addresses(host, port)  # EgressRefused goes up as it is
        except (OSError, UnicodeError) as error:  # as socket.create_connection's failure would be
            raise httpcore.ConnectError(f"{host}: {error}") from None
        deadline = None if timeout is None else time.monotonic() + timeout
        failure: Exception | None = None
        for address in addresses:
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            try:
                return self._backend.connect_tcp(str(address), port, left, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
                if deadline is not None and time.monotonic() >= deadline:
                    break
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        """Never: a Unix socket is this machine's own, whatever the policy allows on the network."""
        raise EgressRefused(path, 0, path, "Unix socket")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport (direct connections, HTTP/1.1) over a pool on :class:`GuardedBackend`.

    Parameters:
      policy(EgressPolicy): What may be connected to.
      limits(httpx.Limits): The pool's limits.
      verify(ssl.SSLContext | bool): TLS verification, as httpx's ``verify``.
    """

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        limits: httpx.Limits = DEFAULT_LIMITS,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        super().__init__(limits=limits, verify=verify)
        self.policy = policy
        # httpx's transport takes no network backend; handle_request() uses the pool set here.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )


def guarded_client(
    policy: EgressPolicy,
    *,
    limits: httpx.Limits | None = None,
    timeout: float | httpx.Timeout = 10.0,
    verify: ssl.SSLContext | bool = True,
) -> httpx.Client:
    """An ``httpx.Client`` for URLs that came from tenants' side: every connection checked by
    ``policy``, no redirects followed, and no proxy or ``.netrc`` taken from the environment (a
    proxy would be the one connecting, out of the check's sight)."""
    transport = GuardedTransport(
        policy,
        limits=limits or DEFAULT_LIMITS,
        verify=verify,
    )
    return httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)
