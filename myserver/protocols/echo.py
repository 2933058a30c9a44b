# -*- test-case-name: tests.test_echo,tests.test_guard -*-
"""
Echo (RFC 862): every byte received is sent back, in order; over UDP, each
datagram is sent back to its source, unchanged (never larger).

The protocol is the textbook one plus L{IHalfCloseableProtocol}: when the
client shuts down its sending side, whatever is still queued is delivered
before the server closes.  A protocol without that interface would be torn
down at once by a bare Twisted transport, losing the tail of the echo.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from zope.interface import implementer


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """
    Send back every byte received; close once the peer has finished sending
    and every byte has been written.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        """
        The peer will send nothing more: finish writing, then close.
        """
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        """
        Echo never shuts down its own sending side first; nothing to do.
        """


def buildFactory(options: Mapping[str, Any]) -> Factory[Echo]:
    """
    Echo takes no options.
    """
    if options:
        raise ValueError(f"echo takes no options, got {', '.join(sorted(options))}")
    factory = Factory.forProtocol(Echo)
    factory.noisy = False
    return factory


class EchoDatagram(DatagramProtocol):
    """
    UDP echo: each datagram goes back to where it came from, as it was.
    """

    noisy = False

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(datagram, addr)  # type: ignore[union-attr]


def buildDatagramProtocol(options: Mapping[str, Any]) -> EchoDatagram:
    if options:
        raise ValueError(f"echo takes no options, got {', '.join(sorted(options))}")
    return EchoDatagram()
