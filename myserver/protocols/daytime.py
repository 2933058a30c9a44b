# -*- test-case-name: tests.test_protocols -*-
"""
Daytime (RFC 867): the current date and time as one line of ASCII, then
close.  Over UDP, one such line answers each datagram.

The RFC leaves the format free; this server sends RFC 822/5322 style in
UTC, e.g. C{Wed, 25 Nov 2026 06:10:36 GMT} followed by CR LF, which people
and programs both read.
"""

from collections.abc import Mapping
from email.utils import formatdate
from typing import Any

from myserver.protocols.announce import (
    AnnounceDatagram,
    AnnounceFactory,
    noOptions,
    reactorClock,
)


def daytime(now: float) -> bytes:
    return formatdate(now, usegmt=True).encode("ascii") + b"\r\n"


def buildFactory(options: Mapping[str, Any]) -> AnnounceFactory:
    noOptions("daytime", options)
    return AnnounceFactory(daytime, reactorClock())


def buildDatagramProtocol(options: Mapping[str, Any]) -> AnnounceDatagram:
    noOptions("daytime", options)
    return AnnounceDatagram(daytime, reactorClock())
