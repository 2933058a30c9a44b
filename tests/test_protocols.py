"""
The built-in classic services, against their RFCs: unit tests on an
in-memory transport, and real sockets against a real server.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from myserver.protocols import chargen, chat, daytime, discard, timeprotocol
from myserver.testing import serve

PRINTABLE = bytes(range(32, 127))


def rfc864Line(index: int, length: int = 72) -> bytes:
    """
    Line C{index} of RFC 864's pattern, written out the slow, obvious way.
    """
    return bytes(PRINTABLE[(index + k) % 95] for k in range(length)) + b"\r\n"


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
    Each service over real sockets: the real service tree on this test's
    reactor, one server per test.
    """

    @inlineCallbacks
    def test_discard(self) -> Any:
        server = serve(self, "discard")
        client = yield server.connect()
        client.send(os.urandom(10 << 20))
        client.halfClose()
        received = yield client.readUntilEOF()
        self.assertEqual(received, b"")
        yield server.waitFor(
            lambda: server.metrics()["myserver_bytes_received_total"] == 10 << 20
        )

    @inlineCallbacks
    def test_daytime(self) -> Any:
        server = serve(self, "daytime")
        client = yield server.connect()
        line = yield client.readUntilEOF()
        self.assertRegex(line, rb"^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n$")

    @inlineCallbacks
    def test_time(self) -> Any:
        server = serve(self, "time")
        client = yield server.connect()
        value = yield client.readUntilEOF()
        self.assertEqual(len(value), 4)
        seconds = struct.unpack("!I", value)[0] - 2208988800
        self.assertLess(abs(seconds - time.time()), 5)

    @inlineCallbacks
    def test_chargenExactAndPacedBySlowReader(self) -> Any:
        """
        RFC-exact lines, and while the reader stops the server queues no
        more than its write-buffer mark for it: chargen is paced by the
        reader, not buffered.
        """
        server = serve(self, "chargen", max_write_buffer="256KiB")
        client = yield server.connect()
        received = yield client.read(74 * 300)
        expected = b"".join(rfc864Line(i) for i in range(300))
        self.assertEqual(received, expected)
        client.transport.pauseProducing()
        [connection] = server.server.registry.connections
        queued = []
        for _ in range(20):
            yield deferLater(reactor, 0.02, lambda: None)
            queued.append(connection.pendingBytes())
        self.assertLessEqual(max(queued), 256 * 1024 + 65536)
        client.transport.resumeProducing()
        more = yield client.read(1 << 20)
        offset = len(received)
        period = b"".join(rfc864Line(i) for i in range(95))
        stream = period * (2 + (offset + len(more)) // len(period))
        self.assertEqual(more, stream[offset : offset + len(more)])

    @inlineCallbacks
    def test_chat(self) -> Any:
        """
        Three members: a line reaches the other two, not its sender; a
        member that stops reading while others flood is dropped, and the
        others keep receiving.
        """
        server = serve(self, "chat")
        alice = yield server.connect()
        bob = yield server.connect()
        slow = yield server.connect()

        def heard(member: Any, line: bytes) -> Any:
            return server.waitFor(
                lambda: line in member.received, timeout=20, what=repr(line)
            )

        for member in (alice, bob, slow):
            yield heard(member, b"* welcome, guest-")
        yield heard(bob, b"* guest-3 joined\r\n")
        alice.send(b"/nick alice\r\n")
        for member in (bob, slow):
            yield heard(member, b"* guest-1 is now alice\r\n")
        alice.send(b"hi there\n")
        for member in (bob, slow):
            yield heard(member, b"alice: hi there\r\n")
        self.assertNotIn(b"alice: hi there", alice.received)
        # Now the slow member reads no more; alice floods; bob reads.
        slow.transport.pauseProducing()
        batch = (b"x" * 1000 + b"\n") * 100
        deadline = reactor.seconds() + 60
        searched = 0
        while bob.received.find(b"could not keep up", searched) < 0:
            self.assertLess(reactor.seconds(), deadline, "never dropped")
            searched = max(0, len(bob.received) - 100)
            alice.send(batch)
            yield deferLater(reactor, 0.005, lambda: None)
        registry = server.server.registry
        yield server.waitFor(
            lambda: len(registry.connections) == 2, what="the slow member dropped"
        )
        slow.transport.resumeProducing()
        yield server.waitFor(lambda: slow.closed, what="the slow member's close")
        alice.send(b"still here\n")
        yield heard(bob, b"alice: still here\r\n")
