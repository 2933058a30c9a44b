# -*- test-case-name: tests.test_config,tests.test_datagram -*-
"""
Endpoint strings: checking a listener's before anything listens, and
myserver's own C{udp:} spelling.

L{myserver.config.load} is handed a checker made here by whoever holds the
reactor (the twistd plugin, a reload, a test), so that the configuration
itself imports no reactor.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.internet.endpoints import serverFromString


def parseDatagramEndpoint(endpoint: str) -> tuple[int, str]:
    """
    myserver's own UDP listener spelling, C{udp:PORT[:interface=ADDR]}:
    Twisted's endpoint strings have no datagram server form.

    @return: the port and the interface address (C{""} for all IPv4).
    @raise ValueError: if C{endpoint} is not of that form.
    """
    kind, _, rest = endpoint.partition(":")
    parts = rest.split(":", 1) if rest else []
    if kind.lower() != "udp" or not parts or not parts[0].isdecimal():
        raise ValueError("expected udp:PORT or udp:PORT:interface=ADDRESS")
    port = int(parts[0])
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    interface = ""
    if len(parts) == 2:
        key, equals, address = parts[1].replace("\\:", ":").partition("=")
        if key != "interface" or not equals:
            raise ValueError(f"unknown UDP option {parts[1]!r} (expected interface=)")
        ipaddress.ip_address(address)
        interface = address
    return port, interface


def endpointChecker(reactor: Any) -> Callable[[str], None]:
    """
    A checker that parses an endpoint string exactly as the server will,
    on C{reactor}, without listening.

    @return: a callable raising L{ValueError} with one line for an endpoint
        string that does not parse.
    """

    def checkEndpoint(endpoint: str) -> None:
        if endpoint.split(":", 1)[0].lower() == "udp":
            parseDatagramEndpoint(endpoint)
            return
        try:
            serverFromString(reactor, endpoint)
        except Exception as e:
            raise ValueError(" ".join(str(e).split()) or type(e).__name__) from None

    return checkEndpoint
