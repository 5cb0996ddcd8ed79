"""Which addresses Pressline may connect to when a URL comes from a tenant's side of the system.

A site's WordPress ``base_url`` (and the URL in its credentials secret) and the outbound webhook
endpoints name hosts Pressline then sends credentials or signed events to. Left unchecked, such a
URL reaches the cloud's metadata service (``169.254.169.254``), the VPC (``10.0.0.5``) or this
machine's own services (``[::1]:6379``). The policy answers one question about an address that a
host name *resolved to* — never about the spelling in the URL, so ``2130706433``, ``0x7f.1`` and
``::ffff:127.0.0.1`` are judged as the ``127.0.0.1`` they are:

* public (globally routable, not multicast): allowed;
* anything else (unspecified, loopback, link-local, multicast, private, reserved, site-local,
  shared/CGNAT, documentation ranges, and IPv6 forms that embed such an IPv4 address): refused,
  unless an allow-list entry (``PRESSLINE_EGRESS_ALLOW``) names it.

Allow-list entries, comma-separated: ``host`` or ``host:port`` (a DNS name: whatever that name
resolves to is allowed, so name only hosts whose DNS you control), ``address`` or ``address:port``
(``127.0.0.1:8088``, ``[::1]:8088``), or a CIDR network, optionally with a port (``10.1.0.0/16``,
``10.1.0.0/16:443``, ``[fd00::/8]:443``). Without a port an entry allows every port.

A host that resolves to several addresses is refused if any one of them is: a name whose records
mix public and private addresses is treated as hostile rather than half-trusted.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from shared.config import Settings

__all__ = [
    "Address",
    "AllowRule",
    "EgressPolicy",
    "EgressRefused",
    "Resolver",
    "format_allow_list",
    "numeric_resolver",
    "parse_allow_list",
    "refusal_reason",
    "system_resolver",
    "url_target",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``(host, port) -> addresses`` as strings; raises ``OSError`` (``socket.gaierror``) when it cannot.
Resolver = Callable[[str, int], Sequence[str]]

#: RFC 6052's well-known NAT64 prefix: on an IPv6-only network DNS64 maps every IPv4 host into it.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: Instance metadata services (AWS, GCP, Azure on IPv4; AWS on IPv6): worth naming in a refusal.
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class EgressRefused(Exception):
    """A connection Pressline will not make: the host resolves to an address the policy refuses.

    The message names the host, the port, the address and why; never a URL's path, query or user
    info (those may carry tokens), and never a credential.

    Parameters:
      host(str): The host name as given (or an address literal).
      port(int): The port the connection was for.
      address(str): The refused address (as resolved).
      reason(str): The address's class: ``loopback``, ``private``, ``link-local``, ...
    """

    def __init__(self, host: str, port: int, address: str, reason: str) -> None:
        shown = host if _same_address(host, address) else f"{host} ({address})"
        super().__init__(f"{shown} port {port}: refused, {reason}")
        self.host = host
        self.port = port
        self.address = address
        self.reason = reason


def _same_address(host: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")) == ipaddress.ip_address(address)
    except ValueError:
        return False


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4, Teredo), and the form's name."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "IPv4-mapped"
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
    if address.sixtofour is not None:
        return address.sixtofour, "6to4"
    if address.teredo is not None:
        return address.teredo[1], "Teredo"
    return None


def refusal_reason(address: Address) -> str | None:
    """Why ``address`` is not a public destination, or None when it is (allow-lists aside)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner, form = embedded
            reason = refusal_reason(inner)
            if reason is not None:
                return f"{reason} in {form} form"
            if form in ("IPv4-mapped", "NAT64"):
                return None  # the connection reaches that public IPv4 address
        if address.is_site_local:
            return "site-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (instance metadata)" if address in _METADATA else "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private (instance metadata)" if address in _METADATA else "private"
    if not address.is_global:
        return "non-global"
    return None


def _plain(address: Address) -> Address:
    """An IPv4-mapped IPv6 address as the IPv4 address it is (for allow-list matching)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _host_key(host: str) -> str:
    """A host name as allow-list entries are compared: lower case, no trailing dot, no brackets."""
    return host.strip("[]").rstrip(".").lower()


def _is_inet_aton(name: str) -> bool:
    """Is ``name`` an IPv4 address in one of C's odd spellings (``2130706433``, ``0x7f.1``)?"""
    try:
        socket.inet_aton(name)
    except OSError:
        return False
    return True


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{entry!r}: the port must be 1 to 65535")
    return int(text)


@dataclass(frozen=True)
class AllowRule:
    """One allow-list entry: a DNS name or a network (an address is a /32 or /128), and a port.

    Parameters:
      name(str | None): A DNS name (lower case, no trailing dot): what it resolves to is allowed.
      network(Network | None): The addresses allowed, whatever name led to them.
      port(int | None): The only port allowed; None: any.
    """

    name: str | None = None
    network: Network | None = None
    port: int | None = None

    @classmethod
    def parse(cls, entry: str) -> AllowRule:
        """``host``, ``host:port``, ``1.2.3.4[:port]``, ``[::1][:port]``, ``10.0.0.0/8[:port]``,
        ``[fd00::/8][:port]`` or a bare IPv6 address or network (no port). ValueError otherwise."""
        text = entry.strip()
        port: int | None = None
        if text.startswith("["):
            body, bracket, rest = text[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"{entry!r}: want [address], [address]:port or [network]:port")
            port = _port(rest[1:], entry) if rest else None
        elif text.count(":") == 1:
            body, _, raw_port = text.partition(":")
            port = _port(raw_port, entry)
        else:
            body = text
        try:
            network = ipaddress.ip_network(body)
        except ValueError as error:
            if "/" in body or ":" in body:
                raise ValueError(f"{entry!r}: not an address or network ({error})") from None
        else:
            return cls(network=network, port=port)
        name = _host_key(body)
        if not _NAME.match(name) or _is_inet_aton(name):
            raise ValueError(f"{entry!r}: not a host name (write addresses as 1.2.3.4 or [::1])")
        return cls(name=name, port=port)

    def matches(self, host: str, address: Address, port: int) -> bool:
        """Does this entry allow connecting to ``address``:``port``, reached through ``host``?"""
        if self.port is not None and port != self.port:
            return False
        if self.network is not None:
            return _plain(address) in self.network
        return self.name == _host_key(host)

    def __str__(self) -> str:
        if self.network is None:
            where = str(self.name)
        elif self.network.num_addresses == 1:
            where = str(self.network.network_address)
        else:
            where = str(self.network)
        if self.port is None:
            return where
        return f"[{where}]:{self.port}" if ":" in where else f"{where}:{self.port}"


def parse_allow_list(raw: str | None) -> tuple[AllowRule, ...]:
    """``PRESSLINE_EGRESS_ALLOW``: comma-separated entries (see :meth:`AllowRule.parse`)."""
    rules: list[AllowRule] = []
    for position, item in enumerate((raw or "").split(","), 1):
        if item.strip():
            try:
                rules.append(AllowRule.parse(item))
            except ValueError as error:
                raise ValueError(f"entry {position}: {error}") from None
    return tuple(rules)


def format_allow_list(rules: Iterable[AllowRule]) -> str:
    """The allow-list back as ``PRESSLINE_EGRESS_ALLOW`` spells it (for a child process's env)."""
    return ",".join(str(rule) for rule in rules)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``getaddrinfo`` gives for ``host`` (IPv4 and IPv6), in its order, once each."""
    found: list[str] = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if family in (socket.AF_INET, socket.AF_INET6) and sockaddr[0] not in found:
            found.append(str(sockaddr[0]))
    return found


def numeric_resolver(host: str, port: int) -> list[str]:
    """Addresses written as numbers (any spelling ``getaddrinfo`` takes); ``gaierror`` for a name.

    For checks that must not wait on DNS (reading configuration).
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    return list(dict.fromkeys(str(sockaddr[0]) for _, _, _, _, sockaddr in infos))


def url_target(url: str) -> tuple[str, int]:
    """The host and port an http(s) URL connects to (ValueError for anything else)."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an http(s) URL with a host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the URL's port is not a number from 0 to 65535") from None
    return parts.hostname, port or _DEFAULT_PORTS[parts.scheme]


class EgressPolicy:
    """Refuses non-public addresses unless an allow-list entry names them.

    Thread-safe (it keeps no state besides its rules). ``resolver`` is replaceable for tests (a
    name that resolves one way at registration and another at connection time).

    Parameters:
      allow(Iterable[AllowRule | str]): The allow-list (entries or their spelling).
      resolver(Resolver): Host name to addresses (default: ``getaddrinfo``).
    """

    def __init__(
        self, allow: Iterable[AllowRule | str] = (), *, resolver: Resolver = system_resolver
    ) -> None:
        self.allow = tuple(rule if isinstance(rule, AllowRule) else AllowRule.parse(rule) for rule in allow)
        self.resolver = resolver

    def __repr__(self) -> str:
        return f"EgressPolicy(allow={format_allow_list(self.allow)!r})"

    @classmethod
    def from_settings(cls, settings: Settings, *, resolver: Resolver = system_resolver) -> EgressPolicy:
        """The policy of ``PRESSLINE_EGRESS_ALLOW`` (``Settings.egress_allow``)."""
        return cls(settings.egress_allow, resolver=resolver)

    def refusal(self, host: str, address: Address, port: int) -> str | None:
        """Why connecting to ``address``:``port`` (resolved from ``host``) is refused, or None."""
        reason = refusal_reason(address)
        if reason is None or any(rule.matches(host, address, port) for rule in self.allow):
            return None
        return reason

    def addresses(self, host: str, port: int) -> list[Address]:
        """Every address ``host`` resolves to, each checked: the ones a connection may use.

        Raises :class:`EgressRefused` if any one is refused, and ``OSError`` (``socket.gaierror``)
        when the host does not resolve.
        """
        found = self.resolver(host, port)
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} has no address")
        checked: list[Address] = []
        for raw in found:
            address = ipaddress.ip_address(raw)
            reason = self.refusal(host, address, port)
            if reason is not None:
                raise EgressRefused(host, port, str(address), reason)
            checked.append(address)
        return checked

    def check_url(self, url: str) -> list[Address]:
        """Resolve ``url``'s host and check every address (registration, startup); as :meth:`addresses`,
        and ValueError when ``url`` is not an http(s) URL."""
        host, port = url_target(url)
        return self.addresses(host, port)

    def numeric(self) -> EgressPolicy:
        """The same rules, resolving only numeric hosts (no DNS): a name raises ``gaierror``."""
        return EgressPolicy(self.allow, resolver=numeric_resolver)
