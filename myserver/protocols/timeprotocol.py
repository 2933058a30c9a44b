"""
Time (RFC 868): the current time as a 32-bit unsigned big-endian number of
seconds since 1900-01-01 00:00 UTC, then close.  Over UDP, those 4 bytes
answer each datagram.

The count wraps after 2036-02-07 (RFC 868 has only 32 bits); clients that
know the era, as rdate does, read it modulo 2**32.
"""

import struct
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

# Seconds from 1900-01-01 to 1970-01-01.
EPOCH_1900 = 2208988800


def timeValue(now: float) -> bytes:
    return struct.pack("!I", (int(now) + EPOCH_1900) % 2**32)


class Time(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(timeValue(self.factory.clock()))  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class TimeDatagram(DatagramProtocol):
    noisy = False

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(timeValue(self.clock()), addr)  # type: ignore[union-attr]


class TimeFactory(Factory):
    noisy = False
    protocol = Time

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock


def _clock() -> Callable[[], float]:
    from twisted.internet import reactor

    clock: Callable[[], float] = reactor.seconds
    return clock


def _noOptions(options: Mapping[str, Any]) -> None:
    if options:
        raise ValueError(f"time takes no options, got {', '.join(sorted(options))}")


def buildFactory(options: Mapping[str, Any]) -> TimeFactory:
    _noOptions(options)
    return TimeFactory(_clock())


def buildDatagramProtocol(options: Mapping[str, Any]) -> TimeDatagram:
    _noOptions(options)
    return TimeDatagram(_clock())
