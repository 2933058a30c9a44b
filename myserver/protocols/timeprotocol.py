# -*- test-case-name: tests.test_protocols -*-
"""
Time (RFC 868): the current time as a 32-bit unsigned big-endian number of
seconds since 1900-01-01 00:00 UTC, then close.  Over UDP, those 4 bytes
answer each datagram.

The count wraps after 2036-02-07 (RFC 868 has only 32 bits); clients that
know the era, as rdate does, read it modulo 2**32.
"""

import struct
from collections.abc import Mapping
from typing import Any

from myserver.protocols.announce import (
    AnnounceDatagram,
    AnnounceFactory,
    noOptions,
    reactorClock,
)

# Seconds from 1900-01-01 to 1970-01-01.
EPOCH_1900 = 2208988800


def timeValue(now: float) -> bytes:
    return struct.pack("!I", (int(now) + EPOCH_1900) % 2**32)


def buildFactory(options: Mapping[str, Any]) -> AnnounceFactory:
    noOptions("time", options)
    return AnnounceFactory(timeValue, reactorClock())


def buildDatagramProtocol(options: Mapping[str, Any]) -> AnnounceDatagram:
    noOptions("time", options)
    return AnnounceDatagram(timeValue, reactorClock())
