# -*- test-case-name: tests.test_protocols -*-
"""
Services that answer with one message about the present moment and close:
daytime (RFC 867) and time (RFC 868), over TCP and UDP.
"""

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

Render = Callable[[float], bytes]


class Announce(Protocol):
    """
    Sends the factory's message for now, then closes.
    """

    factory: "AnnounceFactory"

    def connectionMade(self) -> None:
        self.transport.write(self.factory.render(self.factory.clock()))  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class AnnounceFactory(Factory):
    noisy = False
    protocol = Announce  # type: ignore[assignment]

    def __init__(self, render: Render, clock: Callable[[], float]) -> None:
        self.render = render
        self.clock = clock


class AnnounceDatagram(DatagramProtocol):
    """
    Answers each datagram with the message for now.
    """

    noisy = False

    def __init__(self, render: Render, clock: Callable[[], float]) -> None:
        self.render = render
        self.clock = clock

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(self.render(self.clock()), addr)  # type: ignore[union-attr]


def reactorClock() -> Callable[[], float]:
    from twisted.internet import reactor

    clock: Callable[[], float] = reactor.seconds
    return clock


def noOptions(name: str, options: Mapping[str, Any]) -> None:
    if options:
        raise ValueError(f"{name} takes no options, got {', '.join(sorted(options))}")
