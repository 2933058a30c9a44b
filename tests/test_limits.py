"""
Connection limits, admission and idle timeouts, against a real server
process and real source addresses on loopback.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time

from twisted.trial.unittest import TestCase

from myserver.admission import Admission
from tests.support import ServerProcess, assertNoTraceback, echoOnce


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


def echoedWithin(clients: list[socket.socket], wait: float) -> list[int]:
    """
    Indexes of the clients that got their C{b"INDEX."} tag back within
    C{wait} seconds in all.
    """
    received = {i: b"" for i in range(len(clients))}
    deadline = time.monotonic() + wait
    with selectors.DefaultSelector() as selector:
        for i, sock in enumerate(clients):
            selector.register(sock, selectors.EVENT_READ, i)
        while (remaining := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(remaining):
                i = key.data
                data = clients[i].recv(100)
                received[i] += data
                if not data or received[i] == b"%d." % i:
                    selector.unregister(clients[i])
    return [i for i, data in received.items() if data == b"%d." % i]


def receiveExactly(sock: socket.socket, size: int, wait: float = 10) -> bytes:
    sock.settimeout(wait)
    received = b""
    while len(received) < size:
        data = sock.recv(size - len(received))
        if not data:
            break
        received += data
    return received


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


class MaxConnectionsTests(TestCase):
    """
    At max_connections the server stops accepting; the rest wait in the
    kernel's backlog and are served as room frees up.
    """

    def test_limitHoldsAndNobodyIsLost(self) -> None:
        """
        Limit 50, 80 clients: exactly 50 are served at once (Twisted accepts
        in batches, so merely pausing the port would overshoot), and the
        other 30 are served, exactly, as 30 of the first leave.
        """
        server = ServerProcess("--max-connections", "50").start()
        self.addCleanup(server.kill)
        clients = [
            socket.create_connection(("127.0.0.1", server.port), timeout=10)
            for _ in range(80)
        ]
        self.addCleanup(lambda: [c.close() for c in clients])
        for i, sock in enumerate(clients):
            sock.sendall(b"%d." % i)
        served = echoedWithin(clients, 2.0)
        self.assertEqual(len(served), 50)
        waiting = [c for i, c in enumerate(clients) if i not in served]
        for i in served[:30]:
            clients[i].close()
        for i, sock in enumerate(waiting):
            # Each waiting client's bytes sat in the kernel; they come back.
            expected = b"%d." % clients.index(sock)
            self.assertEqual(receiveExactly(sock, len(expected)), expected)
            self.assertTrue(echoedOn(sock, b"again %d" % i, 10))
        for sock in clients:
            sock.close()
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)


class PerAddressTests(TestCase):
    """
    max_connections_per_ip, with real source addresses.
    """

    def test_oneAddressLimitedOtherNot(self) -> None:
        """
        127.0.0.2 gets its 3 connections and its 4th is closed at once,
        unread; 127.0.0.3 is unaffected; a slot freed is usable again.
        """
        server = ServerProcess("--max-connections-per-ip", "3").start()
        self.addCleanup(server.kill)
        first = [connectFrom("127.0.0.2", server.port) for _ in range(3)]
        for sock in first:
            self.assertTrue(echoedOn(sock, b"ok", 10))
        extra = connectFrom("127.0.0.2", server.port)
        try:
            extra.sendall(b"should not be read")
        except OSError:
            pass
        self.assertTrue(closedByServer(extra))
        others = [connectFrom("127.0.0.3", server.port) for _ in range(3)]
        for sock in others:
            self.assertTrue(echoedOn(sock, b"fine", 10))
        first[0].close()
        # The close reaches the server asynchronously: wait for it.
        self.assertEqual(server.waitForSockets(1 + 5), 1 + 5)
        again = connectFrom("127.0.0.2", server.port)
        self.assertTrue(echoedOn(again, b"in", 10))
        for sock in [*first, extra, *others, again]:
            sock.close()
        self.assertEqual(server.stop(), 0)
        self.assertIn("refused a connection from 127.0.0.2", server.output)
        assertNoTraceback(self, server.output)

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

    def test_denyWinsOverAllow(self) -> None:
        server = ServerProcess(
            "--allow", "127.0.0.0/8", "--deny", "127.0.0.3", "--deny", "10.0.0.0/8"
        ).start()
        self.addCleanup(server.kill)
        allowed = connectFrom("127.0.0.2", server.port)
        self.assertTrue(echoedOn(allowed, b"hello", 10))
        allowed.close()
        for _ in range(20):
            denied = connectFrom("127.0.0.3", server.port)
            self.assertTrue(closedByServer(denied))
            denied.close()
        self.assertEqual(server.stop(), 0)
        refusals = [
            line
            for line in server.lines
            if "refused a connection from 127.0.0.3: deny" in line
        ]
        # Twenty refusals, logged once (the rest are counted in the next
        # line that gets through, at most every few seconds).
        self.assertGreaterEqual(len(refusals), 1)
        self.assertLess(len(refusals), 5)

    def test_notAllowed(self) -> None:
        server = ServerProcess("--allow", "127.0.0.2/32,::1").start()
        self.addCleanup(server.kill)
        self.assertTrue(echoedOn(connectFrom("127.0.0.2", server.port), b"in", 10))
        outsider = connectFrom("127.0.0.4", server.port)
        self.assertTrue(closedByServer(outsider))
        self.assertEqual(server.stop(), 0)
        self.assertIn("not_allowed", server.output)


class IdleTimeoutTests(TestCase):
    """
    idle_timeout closes connections that move no byte either way.
    """

    def test_idleClosedTalkativeKept(self) -> None:
        """
        A silent client is closed; one that keeps talking is not.
        """
        server = ServerProcess("--idle-timeout", "1").start()
        self.addCleanup(server.kill)
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        talker = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        stop = time.monotonic() + 3
        while time.monotonic() < stop:
            self.assertTrue(echoedOn(talker, b"still here", 10))
            time.sleep(0.25)
        self.assertTrue(closedByServer(silent, 10))
        self.assertTrue(echoedOn(talker, b"and now", 10))
        talker.close()
        silent.close()
        self.assertEqual(server.stop(), 0)

    def test_writeStallCountsAsIdle(self) -> None:
        """
        A client that stops reading while the server holds output for it is
        closed too, freeing the buffer.
        """
        server = ServerProcess("--idle-timeout", "1", "--max-write-buffer", "64KiB")
        server.start()
        self.addCleanup(server.kill)
        baseline = server.openSockets()
        stalled = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sent = [0]

        def flood() -> None:
            chunk = b"x" * 65536
            stalled.settimeout(30)
            try:
                for _ in range(512):
                    sent[0] += stalled.send(chunk)
            except OSError:
                pass

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        sender.join(30)
        self.assertFalse(sender.is_alive())
        # The server gave up on it: far less than 32 MiB got in.
        self.assertLess(sent[0], 512 * 65536)
        self.assertEqual(server.waitForSockets(baseline), baseline)
        stalled.close()
        self.assertEqual(echoOnce(server.port, b"next"), b"next")
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)
