"""
Descriptor exhaustion against a real limit: a server that cannot raise its
RLIMIT_NOFILE above 256 is sent 400 clients at once.  It must neither spin
on accept() nor log once per refused client, must keep serving the clients
it already has, and must accept again as soon as descriptors are free.
"""

from __future__ import annotations

import os
import resource
import socket
import time

from twisted.trial.unittest import TestCase

from tests.support import (
    ServerProcess,
    assertNoTraceback,
    echoOnce,
    processTest,
    raiseOwnDescriptorLimit,
    waitUntil,
)

# The server's limit, soft and hard, so raiseDescriptorLimit cannot lift it.
SERVER_LIMIT = 256
CLIENTS = 400
# Clients connected and served before the flood, to show they survive it.
EARLY = 10
# The interval of RateLimitedLog, and how many distinct accept events the
# EMFILE recovery logs (encountered, closed a socket, re-reserving).
RATE_INTERVAL = 5.0
EMFILE_EVENT_KINDS = 3


def limitServerDescriptors() -> None:
    """
    Run in the server's child process before exec: a hard limit of
    C{SERVER_LIMIT} descriptors.
    """
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_LIMIT, SERVER_LIMIT))


def cpuTicks(pid: int) -> int:
    """
    User plus system CPU time of process C{pid}, in clock ticks.
    """
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces and parentheses: split after it.
        fields = stat.read().rpartition(")")[2].split()
    # Fields 14 and 15 of proc(5), counted after pid and comm.
    return int(fields[11]) + int(fields[12])


def isRefused(sock: socket.socket) -> bool | None:
    """
    @return: True if the server closed C{sock} (EOF or reset), False if it
        is connected with nothing to read, None while still connecting.
    """
    try:
        sock.getpeername()
    except OSError:
        return None
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def pingPong(sock: socket.socket, payload: bytes) -> bytes:
    """
    Send C{payload} on a connected blocking socket and read back as many
    bytes.
    """
    sock.sendall(payload)
    received = bytearray()
    while len(received) < len(payload):
        data = sock.recv(len(payload) - len(received))
        if not data:
            break
        received += data
    return bytes(received)


@processTest
class DescriptorExhaustionTests(TestCase):
    """
    A server at its real descriptor limit.
    """

    def setUp(self) -> None:
        raiseOwnDescriptorLimit(self)
        self.server = ServerProcess(preexec=limitServerDescriptors).start()
        self.addCleanup(self.server.kill)
        self.clients: list[socket.socket] = []
        self.addCleanup(self.closeClients)

    def closeClients(self) -> None:
        for sock in self.clients:
            sock.close()
        self.clients.clear()

    def test_exhaustionIsCheapQuietAndRecovers(self) -> None:
        """
        With 400 clients against a limit of 256 descriptors: the server stays
        at the limit using under 20% of one core, logs EMFILE a bounded
        number of times (not once per refused client), refuses the excess,
        still echoes on connections it accepted before the flood, and once
        the clients are gone frees its descriptors and echoes a new client
        exactly.  Its exit is clean.
        """
        server = self.server
        self.assertIn(f"open file limit: {SERVER_LIMIT}", server.output)
        idleDescriptors = server.openDescriptors()

        early = []
        for i in range(EARLY):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            self.clients.append(sock)
            early.append(sock)
            self.assertEqual(pingPong(sock, b"early %d" % i), b"early %d" % i)

        linesBefore = len(server.lines)
        started = time.monotonic()
        flood = []
        for _ in range(CLIENTS - EARLY):
            sock = socket.socket()
            self.clients.append(sock)
            sock.setblocking(False)
            try:
                sock.connect(("127.0.0.1", server.port))
            except BlockingIOError:
                pass
            flood.append(sock)
        waitUntil(
            lambda: server.openDescriptors() >= SERVER_LIMIT,
            10,
            "the server to reach its descriptor limit",
        )

        ticksBefore = cpuTicks(server.pid)
        measuredFrom = time.monotonic()
        time.sleep(3)
        ticks = cpuTicks(server.pid) - ticksBefore
        seconds = time.monotonic() - measuredFrom
        cpuShare = ticks / os.sysconf("SC_CLK_TCK") / seconds
        window = time.monotonic() - started
        logged = [
            line
            for line in server.lines[linesBefore:]
            if "EMFILE" in line or "accepting connections on" in line
        ]
        refused = sum(isRefused(sock) is True for sock in flood)
        print(f"server CPU at the descriptor limit: {cpuShare:.1%} of one core")

        self.assertEqual(server.openDescriptors(), SERVER_LIMIT)
        self.assertLess(cpuShare, 0.20, f"{ticks} ticks in {seconds:.2f}s")
        self.assertTrue(any("EMFILE" in line for line in logged), server.output)
        # Each kind of accept event is logged at most once per interval.
        allowed = EMFILE_EVENT_KINDS * (1 + int(window // RATE_INTERVAL))
        self.assertLessEqual(len(logged), allowed, "".join(logged))
        # Far more clients were turned away than lines were logged.
        self.assertGreater(refused, 2 * len(logged))

        for i, sock in enumerate(early):
            self.assertEqual(pingPong(sock, b"still %d" % i), b"still %d" % i)

        self.closeClients()
        waitUntil(
            lambda: server.openDescriptors() <= idleDescriptors + 2,
            15,
            "the server to close its connections",
        )
        payload = os.urandom(100_000)
        self.assertEqual(echoOnce(server.port, payload, timeout=15), payload)
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)
