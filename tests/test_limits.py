"""
Connection limits, admission and idle timeouts: the real service tree on
the test's reactor with real source addresses on loopback, the idle sweep
on a fake clock, and one IPv6 case against a server process.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from myserver.admission import Admission
from myserver.testing import MemoryServer, pluginFactory, serve
from tests.support import ServerProcess, processTest


def connectFrom(
    source: str, port: int, host: str = "127.0.0.1", family: int = socket.AF_INET
) -> socket.socket:
    """
    A connection to C{host}:C{port} from the local address C{source}.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect((host, port))
    return sock


def echoedOn(sock: socket.socket, payload: bytes, wait: float) -> bool:
    """
    Send C{payload} and report whether it comes back within C{wait} seconds.
    """
    sock.sendall(payload)
    sock.settimeout(wait)
    received = b""
    try:
        while len(received) < len(payload):
            data = sock.recv(65536)
            if not data:
                return False
            received += data
    except TimeoutError:
        return False
    finally:
        sock.settimeout(10)
    if received != payload:
        raise AssertionError(f"echo mixed up: sent {payload!r}, got {received!r}")
    return True


def closedByServer(sock: socket.socket, wait: float = 10) -> bool:
    """
    Whether the server closes C{sock} (EOF or reset) within C{wait} seconds,
    without having sent anything.
    """
    sock.settimeout(wait)
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    if data:
        raise AssertionError(f"refused connection received {data!r}")
    return True


@inlineCallbacks
def refusedAtOnce(client: Any) -> Any:
    """
    Fail unless the server closes C{client}'s connection without a byte.
    """
    left = yield client.readUntilEOF()
    if left:
        raise AssertionError(f"refused connection received {left!r}")


class AdmissionUnitTests(TestCase):
    """
    L{Admission} decides alone, from addresses.
    """

    def test_denyWins(self) -> None:
        from ipaddress import ip_network

        admission = Admission(
            allow=(ip_network("10.0.0.0/8"),), deny=(ip_network("10.1.0.0/16"),)
        )
        self.assertIsNone(admission.refusal("10.2.3.4"))
        self.assertEqual(admission.refusal("10.1.2.3"), "deny")
        self.assertEqual(admission.refusal("192.0.2.1"), "not_allowed")
        self.assertIsNone(admission.refusal(None))

    def test_ipv4MappedCountsAsIPv4(self) -> None:
        from ipaddress import ip_network

        admission = Admission(deny=(ip_network("192.0.2.0/24"),))
        self.assertEqual(admission.refusal("::ffff:192.0.2.7"), "deny")
        self.assertEqual(
            admission.addressKey("::ffff:192.0.2.7"), admission.addressKey("192.0.2.7")
        )

    def test_prefixGrouping(self) -> None:
        """
        One IPv6 /64 is one address by default; IPv4 addresses are their own.
        """
        admission = Admission(maxPerAddress=1)
        key = admission.addressKey
        self.assertEqual(key("2001:db8::1"), key("2001:db8::ffff:1"))
        self.assertNotEqual(key("2001:db8::1"), key("2001:db8:0:1::1"))
        self.assertNotEqual(key("192.0.2.1"), key("192.0.2.2"))
        wide = Admission(maxPerAddress=1, ipv4Prefix=24, ipv6Prefix=48)
        self.assertEqual(wide.addressKey("192.0.2.1"), wide.addressKey("192.0.2.2"))
        self.assertEqual(
            wide.addressKey("2001:db8::1"), wide.addressKey("2001:db8:0:1::1")
        )
        self.assertEqual(
            Admission(ipv6Prefix=64).addressKey("fe80::1%lo"),
            Admission(ipv6Prefix=64).addressKey("fe80::2"),
        )

    def test_perAddressLimit(self) -> None:
        admission = Admission(maxPerAddress=2)
        admission.openByAddress[admission.addressKey("192.0.2.1")] = 2
        self.assertEqual(admission.refusal("192.0.2.1"), "max_connections_per_ip")
        self.assertIsNone(admission.refusal("192.0.2.2"))


class ReloadRecountTests(TestCase):
    """
    A reload that sets a per-address limit counts the open connections by
    the address each is admitted under.
    """

    def test_proxiedCountedByRealClient(self) -> None:
        """
        Behind a PROXY-protocol listener that is the client the header
        named, not the proxy; a connection whose header has not come yet
        is not counted.
        """
        server = MemoryServer(pluginFactory("echo"), proxied=True)
        named = server.connect()
        named.receive(b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 27015\r\n")
        server.connect()  # Its header is still to come.
        guard = server.guard
        admission = Admission(maxPerAddress=5)
        guard.reconfigure(
            guard.maxWriteBuffer,
            guard.idleTimeout,
            guard.maxConnections,
            admission,
            guard.handshakeTimeout,
        )
        self.assertEqual(
            admission.openByAddress, {admission.addressKey("192.0.2.1"): 1}
        )
        named.halfClose()
        named.read()
        self.assertTrue(named.closed)
        self.assertEqual(admission.openByAddress, {})


class MaxConnectionsTests(TestCase):
    """
    At max_connections the server stops accepting; the rest wait in the
    kernel's backlog and are served as room frees up.
    """

    @inlineCallbacks
    def test_limitHoldsAndNobodyIsLost(self) -> Any:
        """
        Limit 50, 80 clients: exactly 50 are served at once (Twisted accepts
        in batches, so merely pausing the port would overshoot), and the
        other 30 are served, exactly, as 30 of the first leave.
        """
        server = serve(self, "echo", max_connections=50)
        clients = yield gatherResults([server.connect() for _ in range(80)])
        tags = [b"%d." % i for i in range(80)]
        for client, tag in zip(clients, tags, strict=True):
            client.send(tag)

        def served() -> list[int]:
            return [i for i, c in enumerate(clients) if bytes(c.received) == tags[i]]

        yield server.waitFor(lambda: len(served()) >= 50, what="50 echoes")
        # A window in which a 51st would have been served: the gate is shut.
        yield deferLater(reactor, 0.3, lambda: None)
        first = served()
        self.assertEqual(len(first), 50)
        self.assertEqual(len(server.server.registry.connections), 50)
        for i in first[:30]:
            clients[i].close()
        waiting = [i for i in range(80) if i not in first]
        for i in waiting:
            # Each waiting client's bytes sat in the kernel; they come back.
            yield clients[i].expect(tags[i])
            clients[i].send(b"again %d" % i)
            yield clients[i].expect(b"again %d" % i)


class PerAddressTests(TestCase):
    """
    max_connections_per_ip, with real source addresses.
    """

    @inlineCallbacks
    def test_oneAddressLimitedOtherNot(self) -> Any:
        """
        127.0.0.2 gets its 3 connections and its 4th is closed at once,
        unread; 127.0.0.3 is unaffected; a slot freed is usable again.
        """
        server = serve(self, "echo", max_connections_per_ip=3)
        first = yield gatherResults(
            [server.connect(source="127.0.0.2") for _ in range(3)]
        )
        for client in first:
            client.send(b"ok")
            yield client.expect(b"ok")
        extra = yield server.connect(source="127.0.0.2")
        extra.send(b"should not be read")
        yield refusedAtOnce(extra)
        others = yield gatherResults(
            [server.connect(source="127.0.0.3") for _ in range(3)]
        )
        for client in others:
            client.send(b"fine")
            yield client.expect(b"fine")
        first[0].close()
        # The close reaches the server's count asynchronously: wait for it.
        registry = server.server.registry
        yield server.waitFor(lambda: len(registry.connections) == 5, what="5 open")
        again = yield server.connect(source="127.0.0.2")
        again.send(b"in")
        yield again.expect(b"in")
        self.assertEqual(
            server.metrics()[
                'myserver_connections_rejected_total{reason="max_connections_per_ip"}'
            ],
            1,
        )
        self.assertTrue(
            any("refused a connection from 127.0.0.2" in m for m in server.messages())
        )


@processTest
class PerAddressIPv6Tests(TestCase):
    """
    The per-address limit on a tcp6 listener, in a server process (the
    in-process kit listens on IPv4 loopback).
    """

    def test_ipv6(self) -> None:
        """
        The limit applies to IPv6 peers too, by their /64.
        """
        if not socket.has_ipv6:
            self.skipTest("no IPv6")
        server = ServerProcess(
            "--listen", "tcp6:0:interface=\\:\\:1", "--max-connections-per-ip", "2"
        ).start()
        self.addCleanup(server.kill)
        port = server.port
        socks = [
            connectFrom("::1", port, host="::1", family=socket.AF_INET6)
            for _ in range(2)
        ]
        for sock in socks:
            self.assertTrue(echoedOn(sock, b"six", 10))
        extra = connectFrom("::1", port, host="::1", family=socket.AF_INET6)
        self.assertTrue(closedByServer(extra))
        for sock in [*socks, extra]:
            sock.close()
        self.assertEqual(server.stop(), 0)


class AllowDenyTests(TestCase):
    """
    allow and deny networks; deny wins; refusals are counted and logged,
    rate-limited.
    """

    @inlineCallbacks
    def test_denyWinsOverAllow(self) -> Any:
        server = serve(
            self,
            "echo",
            allow=["127.0.0.0/8"],
            deny=["127.0.0.3", "10.0.0.0/8"],
        )
        allowed = yield server.connect(source="127.0.0.2")
        allowed.send(b"hello")
        yield allowed.expect(b"hello")
        for _ in range(20):
            denied = yield server.connect(source="127.0.0.3")
            yield refusedAtOnce(denied)
        self.assertEqual(
            server.metrics()['myserver_connections_rejected_total{reason="deny"}'], 20
        )
        refusals = [
            m
            for m in server.messages()
            if "refused a connection from 127.0.0.3: deny" in m
        ]
        # Twenty refusals, logged once (the rest are counted in the next
        # line that gets through, at most every few seconds).
        self.assertGreaterEqual(len(refusals), 1)
        self.assertLess(len(refusals), 5)

    @inlineCallbacks
    def test_notAllowed(self) -> Any:
        server = serve(self, "echo", allow=["127.0.0.2/32", "::1"])
        inside = yield server.connect(source="127.0.0.2")
        inside.send(b"in")
        yield inside.expect(b"in")
        outsider = yield server.connect(source="127.0.0.4")
        yield refusedAtOnce(outsider)
        self.assertEqual(
            server.metrics()[
                'myserver_connections_rejected_total{reason="not_allowed"}'
            ],
            1,
        )


class IdleTimeoutTests(TestCase):
    """
    idle_timeout closes connections that move no byte either way, on the
    server's clock.
    """

    def test_idleClosedTalkativeKept(self) -> None:
        """
        A silent client is closed; one that keeps talking is not.
        """
        server = MemoryServer(pluginFactory("echo"), idle_timeout=1)
        silent = server.connect()
        talker = server.connect()
        for _ in range(12):
            talker.receive(b"still here")
            self.assertEqual(talker.read(), b"still here")
            server.advance(0.25)
        self.assertTrue(silent.closed)
        self.assertFalse(talker.closed)
        talker.receive(b"and now")
        self.assertEqual(talker.read(), b"and now")
        self.assertEqual(server.guard.idleClosed, 1)

    def test_writeStallCountsAsIdle(self) -> None:
        """
        A client that stops reading while the server holds output for it is
        closed too, freeing the buffer; a reading client is not.
        """
        server = MemoryServer(
            pluginFactory("echo"),
            idle_timeout=1,
            max_write_buffer="64KiB",
            socketBuffer=4096,
        )
        stalled = server.connect()
        stalled.receive(b"x" * 200_000)
        self.assertTrue(stalled.readingPaused)
        self.assertGreater(stalled.pendingBytes, 0)
        for _ in range(12):
            server.advance(0.25)
        self.assertTrue(stalled.closed)
        self.assertEqual(len(server.registry.connections), 0)
        reader = server.connect()
        reader.receive(b"next")
        self.assertEqual(reader.read(), b"next")
