"""
Deliberately broken protocol plugins, for the conformance check's own tests
(put tests/plugins on PYTHONPATH to install them).
"""

from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.plugin import IPlugin
from zope.interface import implementer

from myserver.interfaces import IProtocolPlugin


@implementer(IHalfCloseableProtocol)
class Dropper(Protocol):
    """
    Echoes, but aborts when the client half-closes, dropping what is queued.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.transport.abortConnection()

    def writeConnectionLost(self) -> None:
        pass


class Hoarder(Protocol):
    """
    Keeps everything it receives, without bound.
    """

    def connectionMade(self) -> None:
        self.kept: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.kept.append(data)


@implementer(IPlugin, IProtocolPlugin)
class Broken:
    def __init__(self, name: str, protocol: type[Protocol], description: str) -> None:
        self.name = name
        self.description = f"deliberately broken: {description}"
        self.protocol = protocol

    def buildFactory(self, options: Any) -> Factory:
        if options:
            raise ValueError(f"{self.name} takes no options")
        return Factory.forProtocol(self.protocol)


dropper = Broken("dropper", Dropper, "drops its output on half-close")
hoarder = Broken("hoarder", Hoarder, "keeps all it is sent")
