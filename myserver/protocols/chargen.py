# -*- test-case-name: tests.test_protocols -*-
"""
Character generator (RFC 864): an endless stream of 72-character lines.

Line I is 72 consecutive characters of the 95 printable ASCII characters
(space to tilde), starting at character I mod 95, followed by CR LF: the
rotating pattern the RFC describes.  Whatever the client sends is
discarded.

The output is endless, so it is written by a push producer registered with
the transport: when the client reads slower than the server writes, the
transport pauses the producer once its queue passes its high-water mark
(the smaller of 64 KiB and max_write_buffer), and resumes it when the
queue drains.  A slow reader therefore never makes the server buffer more
than that, and a fast one is fed in batches of many lines per write.
"""

from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

PRINTABLE = bytes(range(32, 127))
LINE_LENGTH = 72
# Bytes per write: enough lines to amortise a call, well under 64 KiB.
BATCH = 16 * 1024


def lines(lineLength: int = LINE_LENGTH) -> tuple[bytes, int]:
    """
    One full period of the pattern: the 95 lines, CR LF terminated.

    @return: the bytes, and the length of one line with its CR LF.
    """
    doubled = PRINTABLE * (2 + lineLength // len(PRINTABLE))
    period = b"".join(
        doubled[start : start + lineLength] + b"\r\n" for start in range(len(PRINTABLE))
    )
    return period, lineLength + 2


@implementer(IPushProducer, IHalfCloseableProtocol)
class Chargen(Protocol):
    """
    Writes the pattern for as long as the client reads it.
    """

    def __init__(self, period: bytes) -> None:
        # Twice the period, so that any batch starting anywhere in the first
        # copy is one slice.
        self._pattern = period * (2 + BATCH // len(period))
        self._period = len(period)
        self._offset = 0
        self._paused = False
        self._producing = False

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._producing = True
        self._produce()

    def _produce(self) -> None:
        # Write until the transport pauses us (it calls pauseProducing from
        # inside write once its queue is full).
        while self._producing and not self._paused:
            chunk = self._pattern[self._offset : self._offset + BATCH]
            self._offset = (self._offset + BATCH) % self._period
            self.transport.write(chunk)  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._produce()

    def stopProducing(self) -> None:
        self._producing = False

    def dataReceived(self, data: bytes) -> None:
        pass

    def readConnectionLost(self) -> None:
        # The client is done sending; it may still be reading.  RFC 864:
        # the service runs until the client closes, so keep producing.
        pass

    def writeConnectionLost(self) -> None:
        self._producing = False

    def connectionLost(self, reason: object = None) -> None:
        self._producing = False


class ChargenFactory(Factory):
    noisy = False

    def __init__(self, period: bytes) -> None:
        self.period = period

    def buildProtocol(self, addr: Any) -> Chargen:
        protocol = Chargen(self.period)
        protocol.factory = self
        return protocol


def buildFactory(options: Mapping[str, Any]) -> ChargenFactory:
    """
    Options: C{line_length}, 1 to 1000 characters (default 72).
    """
    unknown = set(options) - {"line_length"}
    if unknown:
        raise ValueError(f"unknown chargen option {sorted(unknown)[0]!r}")
    length = options.get("line_length", LINE_LENGTH)
    if (
        not isinstance(length, int)
        or isinstance(length, bool)
        or not 1 <= length <= 1000
    ):
        raise ValueError(
            f"line_length must be a whole number from 1 to 1000, not {length!r}"
        )
    return ChargenFactory(lines(length)[0])
