"""
Daytime (RFC 867): the current date and time as one line of ASCII, then
close.  Over UDP, one such line answers each datagram.

The RFC leaves the format free; this server sends RFC 822/5322 style in
UTC, e.g. C{Wed, 25 Nov 2026 06:10:36 GMT} followed by CR LF, which
people and programs both read.
"""

from collections.abc import Callable, Mapping
from email.utils import formatdate
from typing import Any

from twisted.internet.protocol import DatagramProtocol, Factory, Protocol


def daytime(now: float) -> bytes:
    return formatdate(now, usegmt=True).encode("ascii") + b"\r\n"


class Daytime(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(daytime(self.factory.clock()))  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class DaytimeDatagram(DatagramProtocol):
    noisy = False

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(daytime(self.clock()), addr)  # type: ignore[union-attr]


class DaytimeFactory(Factory):
    noisy = False
    protocol = Daytime

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock


def _clock() -> Callable[[], float]:
    from twisted.internet import reactor

    clock: Callable[[], float] = reactor.seconds
    return clock


def _noOptions(options: Mapping[str, Any]) -> None:
    if options:
        raise ValueError(f"daytime takes no options, got {', '.join(sorted(options))}")


def buildFactory(options: Mapping[str, Any]) -> DaytimeFactory:
    _noOptions(options)
    return DaytimeFactory(_clock())


def buildDatagramProtocol(options: Mapping[str, Any]) -> DaytimeDatagram:
    _noOptions(options)
    return DaytimeDatagram(_clock())
