# -*- test-case-name: tests.test_protocols -*-
"""
Discard (RFC 863): everything received is thrown away; nothing is sent.

When the client shuts down its sending side, the server closes: there is
nothing left to say.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer


@implementer(IHalfCloseableProtocol)
class Discard(Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


def buildFactory(options: Mapping[str, Any]) -> Factory[Discard]:
    if options:
        raise ValueError(f"discard takes no options, got {', '.join(sorted(options))}")
    factory = Factory.forProtocol(Discard)
    factory.noisy = False
    return factory
