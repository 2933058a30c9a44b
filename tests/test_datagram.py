"""
UDP listeners: off by default, rate-limited per source, exact.
"""

from __future__ import annotations

import socket
import time

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from myserver.datagram import RATE_LIMITED, TOO_MANY_SOURCES, SourceRateLimit
from myserver.endpoints import DatagramEndpoint, parseDatagramEndpoint
from tests.support import ServerProcess, assertNoTraceback, processTest, run

UDP_LOOPBACK = "udp:0:interface=127.0.0.1"


class SourceRateLimitTests(TestCase):
    """
    The token bucket, on a fake clock.
    """

    def test_burstThenRate(self) -> None:
        clock = Clock()
        limit = SourceRateLimit(clock, rate=2, burst=3)
        self.assertEqual(
            [limit.allow("a") for _ in range(4)], [None] * 3 + [RATE_LIMITED]
        )
        self.assertIsNone(limit.allow("b"))
        clock.advance(0.5)
        self.assertIsNone(limit.allow("a"))
        self.assertEqual(limit.allow("a"), RATE_LIMITED)
        clock.advance(10)
        self.assertEqual(
            [limit.allow("a") for _ in range(4)], [None] * 3 + [RATE_LIMITED]
        )

    def test_sourcesBounded(self) -> None:
        """
        The table of sources never grows past its bound: a flood of new
        (forged) sources is refused until old entries have refilled.
        """
        clock = Clock()
        limit = SourceRateLimit(clock, rate=1, burst=2, maxSources=3)
        for source in "abc":
            self.assertIsNone(limit.allow(source))
        self.assertEqual(limit.allow("d"), TOO_MANY_SOURCES)
        clock.advance(2)
        self.assertIsNone(limit.allow("d"))
        self.assertLessEqual(len(limit._buckets), 3)


class DatagramEndpointTests(TestCase):
    """
    The udp: spelling, and the index= a worker's listener adds.
    """

    def test_forms(self) -> None:
        for text, expected in [
            ("udp:7", DatagramEndpoint(7)),
            ("UDP:0:interface=127.0.0.1", DatagramEndpoint(0, "127.0.0.1")),
            ("udp:0:interface=::1", DatagramEndpoint(0, "::1")),
            ("udp:0:interface=\\:\\:1", DatagramEndpoint(0, "::1")),
            ("udp:9:index=2", DatagramEndpoint(9, "", 2)),
            ("udp:0:interface=::1:index=0", DatagramEndpoint(0, "::1", 0)),
        ]:
            self.assertEqual(parseDatagramEndpoint(text), expected, text)

    def test_bad(self) -> None:
        for text in [
            "udp:",
            "udp:x",
            "udp:70000",
            "udp:0:index=x",
            "udp:index=1",
            "udp:0:mode=1",
            "tcp:0",
        ]:
            self.assertRaises(ValueError, parseDatagramEndpoint, text)


def exchange(port: int, payloads: list[bytes], wait: float = 1.0) -> list[bytes | None]:
    """
    Send each datagram and wait for its answer (None: no answer in time).
    """
    answers: list[bytes | None] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        for payload in payloads:
            sock.sendto(payload, ("127.0.0.1", port))
            try:
                answers.append(sock.recvfrom(65535)[0])
            except TimeoutError:
                answers.append(None)
    return answers


@processTest
class DatagramServiceTests(TestCase):
    """
    udp: listeners on a real server.
    """

    def test_echoExact(self) -> None:
        """
        Each datagram comes back unchanged, never larger, to its sender.
        """
        payloads = [b"", b"x", bytes(range(256)), b"y" * 8000]
        with ServerProcess("--listen", UDP_LOOPBACK) as server:
            self.assertEqual(exchange(server.port, payloads), payloads)
            self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)

    def test_rateLimited(self) -> None:
        """
        Past its burst, a source is answered at its rate; the rest is
        dropped, counted and logged once.
        """
        with ServerProcess(
            "--listen", UDP_LOOPBACK, "--datagram-rate", "0.1", "--datagram-burst", "5"
        ) as server:
            answers = exchange(server.port, [b"%d" % i for i in range(12)], wait=0.3)
            self.assertEqual(answers[:5], [b"0", b"1", b"2", b"3", b"4"])
            self.assertEqual(answers[5:], [None] * 7)
            self.assertEqual(server.stop(), 0)
        self.assertEqual(server.output.count("rate_limited"), 1)

    def test_denyApplies(self) -> None:
        with ServerProcess("--listen", UDP_LOOPBACK, "--deny", "127.0.0.1") as server:
            self.assertEqual(exchange(server.port, [b"hello"], wait=0.5), [None])
            self.assertEqual(server.stop(), 0)
        self.assertIn("dropped a datagram from 127.0.0.1: deny", server.output)

    def test_streamOnlyProtocolRefused(self) -> None:
        """
        A protocol with no datagram form cannot be served on udp:.
        """
        result = run("--listen", "chargen=udp:0")
        self.assertEqual(result.returncode, 2)
        result = run("--listen", "udp:notaport")
        self.assertEqual(result.returncode, 2)
        self.assertIn("udp:notaport", result.stderr)


@processTest
class ClassicDatagramTests(TestCase):
    """
    daytime and time over UDP (RFC 867 and 868 define UDP forms).
    """

    def test_daytimeAndTime(self) -> None:
        with ServerProcess(
            "--listen",
            "daytime=udp:0:interface=127.0.0.1",
            "--listen",
            "time=udp:0:interface=127.0.0.1",
            listeners=2,
        ) as server:
            (_, daytimePort), (_, timePort) = server.addresses
            [line] = exchange(daytimePort, [b""])
            assert line is not None
            self.assertRegex(line, rb"^\w{3}, \d\d \w{3} \d{4} [\d:]{8} GMT\r\n$")
            [value] = exchange(timePort, [b"anything"])
            assert value is not None
            self.assertEqual(len(value), 4)
            seconds = int.from_bytes(value, "big") - 2208988800
            self.assertLess(abs(seconds - time.time()), 5)
            self.assertEqual(server.stop(), 0)
