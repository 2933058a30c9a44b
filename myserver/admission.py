# -*- test-case-name: tests.test_limits -*-
"""
Who may connect: allow and deny networks, and open connections per address.

Decided at accept time from the peer's address alone, before a protocol is
built, so that a refused peer is closed before any of its bytes is read.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from myserver.settings import Network

# Reasons a connection is refused, as counted and logged.
DENIED = "deny"
NOT_ALLOWED = "not_allowed"
PER_IP_LIMIT = "max_connections_per_ip"


def hostOf(address: Any) -> str | None:
    """
    The IP address of a peer, or L{None} for peers that have none (UNIX).
    """
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


def describeAddress(address: Any) -> str:
    """
    A listening or peer address as an endpoint-like string:
    C{tcp:127.0.0.1:27015}, C{tcp6:[::1]:27015}, C{udp:0.0.0.0:7},
    C{unix:/run/x.sock}.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        kind = str(getattr(address, "type", "TCP")).lower()
        if ":" in host:
            return f"{kind}6:[{host}]:{port}"
        return f"{kind}:{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return "unix:" + (name.decode() if isinstance(name, bytes) else str(name))
    return str(address)


class Admission:
    """
    Who may connect: allow and deny networks (deny wins) and the number of
    open connections per client address, where an address is its IPv4 or
    IPv6 prefix of the configured length (one IPv6 host owns a whole /64).
    IPv4-mapped IPv6 peers (on dual-stack listeners) count as IPv4.

    @ivar openByAddress: open connections by address key.
    """

    def __init__(
        self,
        allow: tuple[Network, ...] = (),
        deny: tuple[Network, ...] = (),
        maxPerAddress: int = 0,
        ipv4Prefix: int = 32,
        ipv6Prefix: int = 64,
    ) -> None:
        self.allow = allow
        self.deny = deny
        self.maxPerAddress = maxPerAddress
        self._shift = {4: 32 - ipv4Prefix, 6: 128 - ipv6Prefix}
        self.openByAddress: dict[tuple[int, int], int] = {}
        # Whether any rule applies; when none does, accepting skips
        # admission.  Read per connection; the rules never change once
        # made (a reload makes a new Admission).
        self.active = bool(allow or deny or maxPerAddress)

    @staticmethod
    def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        ip = ipaddress.ip_address(host.partition("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ip

    def addressKey(self, host: str) -> tuple[int, int]:
        """
        The per-address limit's key for C{host}: its prefix.
        """
        ip = self._ip(host)
        return (ip.version, int(ip) >> self._shift[ip.version])

    def refusal(self, host: str | None) -> str | None:
        """
        @return: why a new connection from C{host} is refused, or L{None}.
            Peers without an IP address (UNIX sockets) are always admitted.
        """
        if host is None:
            return None
        ip = self._ip(host)
        if any(ip in network for network in self.deny):
            return DENIED
        if self.allow and not any(ip in network for network in self.allow):
            return NOT_ALLOWED
        if self.maxPerAddress:
            key = (ip.version, int(ip) >> self._shift[ip.version])
            if self.openByAddress.get(key, 0) >= self.maxPerAddress:
                return PER_IP_LIMIT
        return None
