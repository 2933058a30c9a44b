"""
Echo in upper case: an example myserver protocol.

A plain Twisted protocol.  It knows nothing of limits, timeouts, metrics or
shutdown: myserver applies those to every connection it serves.
"""

from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer


@implementer(IHalfCloseableProtocol)
class Upper(Protocol):
    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def connectionMade(self) -> None:
        self.transport.write(self.prefix)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data.upper())

    def readConnectionLost(self) -> None:
        # The client has sent everything: finish writing, then close.
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


def buildFactory(options: Mapping[str, Any]) -> Factory:
    unknown = set(options) - {"prefix"}
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r} (expected prefix)")
    prefix = options.get("prefix", "")
    if not isinstance(prefix, str):
        raise ValueError("prefix must be a string")
    return UpperFactory(prefix.encode())


class UpperFactory(Factory):
    """
    One per listener; builds an L{Upper} for each connection.
    """

    noisy = False

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def buildProtocol(self, addr: Any) -> Upper:
        return Upper(self.prefix)
