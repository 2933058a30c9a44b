"""
The built-in classic services, against their RFCs: unit tests on an
in-memory transport, and real sockets against a real server.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from myserver.protocols import chargen, chat, daytime, discard, timeprotocol
from tests.support import ServerProcess, assertNoTraceback, echoOnce

PRINTABLE = bytes(range(32, 127))


def rfc864Line(index: int, length: int = 72) -> bytes:
    """
    Line C{index} of RFC 864's pattern, written out the slow, obvious way.
    """
    return bytes(PRINTABLE[(index + k) % 95] for k in range(length)) + b"\r\n"


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def readAll(sock: socket.socket) -> bytes:
    received = b""
    while data := sock.recv(65536):
        received += data
    return received


class PausingTransport(StringTransport):
    """
    A StringTransport that, like a real one, pauses its streaming producer
    once more than C{highWater} bytes are waiting.
    """

    highWater = 64 * 1024

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(self.value()) > self.highWater:
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()
        return data


class UnitTests(TestCase):
    def test_chargenPattern(self) -> None:
        """
        The first lines, over several periods and refills, match RFC 864
        exactly, and each refill stops at the transport's mark.
        """
        protocol = chargen.buildFactory({}).buildProtocol(None)
        transport = PausingTransport()
        protocol.makeConnection(transport)
        self.assertIs(transport.producer, protocol)
        received = b""
        for _ in range(3):
            self.assertLessEqual(len(transport.value()), transport.highWater + 16384)
            received += transport.drain()
        lines = len(received) // 74
        self.assertGreater(lines, 95 * 2)
        self.assertEqual(
            received[: lines * 74], b"".join(rfc864Line(i) for i in range(lines))
        )

    def test_chargenLineLength(self) -> None:
        protocol = chargen.buildFactory({"line_length": 10}).buildProtocol(None)
        transport = PausingTransport()
        protocol.makeConnection(transport)
        self.assertTrue(
            transport.value().startswith(rfc864Line(0, 10) + rfc864Line(1, 10))
        )
        protocol.stopProducing()

    def test_chargenOptions(self) -> None:
        for bad in ({"line_length": 0}, {"line_length": "72"}, {"colour": 1}):
            self.assertRaises(ValueError, chargen.buildFactory, bad)

    def test_timeValue(self) -> None:
        self.assertEqual(timeprotocol.timeValue(0), struct.pack("!I", 2208988800))
        # After 2036 the 32-bit count wraps, as RFC 868 implies.
        self.assertEqual(timeprotocol.timeValue(2**32 - 2208988800 + 5), b"\0\0\0\x05")

    def test_daytimeFormat(self) -> None:
        self.assertEqual(daytime.daytime(0), b"Thu, 01 Jan 1970 00:00:00 GMT\r\n")

    def test_discardTakesNoOptions(self) -> None:
        self.assertRaises(ValueError, discard.buildFactory, {"x": 1})

    def test_chatRoom(self) -> None:
        room = chat.buildFactory({})
        members = []
        for _ in range(3):
            member = room.buildProtocol(None)
            transport = StringTransport()
            member.makeConnection(transport)
            members.append((member, transport))
        (a, ta), (b, tb), (c, tc) = members
        for t in (ta, tb, tc):
            t.clear()
        a.dataReceived(b"hello all\r\n")
        self.assertEqual(ta.value(), b"")
        self.assertEqual(tb.value(), b"guest-1: hello all\r\n")
        self.assertEqual(tc.value(), b"guest-1: hello all\r\n")
        b.dataReceived(b"/nick guest-1\n/nick bob\n/nick b@d\n")
        self.assertIn(b"* guest-1 is taken", tb.value())
        self.assertIn(b"* guest-2 is now bob", tc.value())
        self.assertIn(b"* a name is", tb.value())
        # A member the transport says is behind is dropped on the next line.
        c.pauseProducing()
        a.dataReceived(b"anyone?\n")
        self.assertTrue(tc.disconnecting or tc.disconnected)
        self.assertEqual(room.names(), {b"guest-1", b"bob"})
        self.assertIn(b"* guest-3 could not keep up", tb.value())

    def test_chatOptions(self) -> None:
        self.assertRaises(ValueError, chat.buildFactory, {"max_line": 1})
        self.assertEqual(chat.buildFactory({"max_line": 64}).maxLine, 64)


class ServiceTests(TestCase):
    """
    Each service over real sockets, all from one server.
    """

    def setUp(self) -> None:
        listen = []
        for name in ("chargen", "discard", "daytime", "time", "chat"):
            listen += ["--listen", f"{name}=tcp:0:interface=127.0.0.1"]
        self.server = ServerProcess(*listen).start()
        self.addCleanup(self.server.kill)
        ports = [port for _, port in self.server.addresses]
        self.chargen, self.discard, self.daytime, self.time, self.chat = ports
        # Cleanups run last-in first-out: this check, then the kill above.
        self.addCleanup(self.checkCleanStop)

    def checkCleanStop(self) -> None:
        self.assertEqual(self.server.stop(), 0)
        assertNoTraceback(self, self.server.output)

    def test_discard(self) -> None:
        self.assertEqual(echoOnce(self.discard, os.urandom(10 << 20)), b"")

    def test_daytime(self) -> None:
        with connect(self.daytime) as sock:
            line = readAll(sock)
        self.assertRegex(line, rb"^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n$")

    def test_time(self) -> None:
        with connect(self.time) as sock:
            value = readAll(sock)
        self.assertEqual(len(value), 4)
        seconds = struct.unpack("!I", value)[0] - 2208988800
        self.assertLess(abs(seconds - time.time()), 5)

    def test_chargenExactAndPacedBySlowReader(self) -> None:
        """
        RFC-exact lines, and a reader that stops for 2 s does not make the
        server buffer: its memory grows by no more than a few MiB.
        """
        with connect(self.chargen) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            received = b""
            while len(received) < 74 * 300:
                received += sock.recv(65536)
            expected = b"".join(rfc864Line(i) for i in range(300))
            self.assertEqual(received[: len(expected)], expected)
            before = self.server.rss()
            time.sleep(2)
            during = self.server.rss()
            offset = len(received)
            more = b""
            while len(more) < 1 << 20:
                more += sock.recv(65536)
        self.assertLess(during - before, 8 << 20)
        period = b"".join(rfc864Line(i) for i in range(95))
        stream = period * (2 + (offset + len(more)) // len(period))
        self.assertEqual(more, stream[offset : offset + len(more)])

    def test_chat(self) -> None:
        """
        Three members: a line reaches the other two, not its sender; a
        member that stops reading while others flood is dropped, and the
        others keep receiving.
        """
        members = [connect(self.chat) for _ in range(2)]
        # The member that will stop reading: a small receive window, set
        # before connecting so that it holds from the handshake on.
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(10)
        slow.connect(("127.0.0.1", self.chat))
        members.append(slow)
        files = [m.makefile("rb") for m in members]
        for f in files:
            self.assertTrue(f.readline().startswith(b"* welcome, guest-"))
        self.assertEqual(files[1].readline(), b"* guest-3 joined\r\n")
        members[0].sendall(b"/nick alice\r\n")
        for f in files[1:]:
            self.assertEqual(f.readline(), b"* guest-1 is now alice\r\n")
        members[0].sendall(b"hi there\n")
        for f in files[1:]:
            self.assertEqual(f.readline(), b"alice: hi there\r\n")
        # Now the slow member reads no more; alice floods; the other reads.
        dropped = threading.Event()
        stillHere = threading.Event()

        def reader() -> None:
            for line in iter(files[1].readline, b""):
                if b"could not keep up" in line:
                    dropped.set()
                if line == b"alice: still here\r\n":
                    stillHere.set()
                    return

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        batch = (b"x" * 1000 + b"\n") * 100
        deadline = time.monotonic() + 60
        while not dropped.is_set() and time.monotonic() < deadline:
            members[0].sendall(batch)
        self.assertTrue(dropped.wait(10), "the slow member was never dropped")
        members[0].sendall(b"still here\n")
        self.assertTrue(stillHere.wait(20), "the others stopped receiving")
        for m in members:
            m.close()
