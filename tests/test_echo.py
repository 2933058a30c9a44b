"""
Echo end to end: a real C{twistd -n myserver} process and real sockets on
loopback, checking that every byte comes back exactly, for every size, byte
value, chunking and number of clients, and that clients which misbehave
(reset, hang up at once, send nothing) are dealt with quietly.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import random
import resource
import socket
import subprocess
import unittest
from typing import Any, ClassVar

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from myserver.testing import serve
from tests.support import (
    ServerProcess,
    assertNoTraceback,
    asyncEcho,
    echoOnce,
    processTest,
    requireTool,
)

MiB = 1024 * 1024


def firstDifference(expected: bytes, actual: bytes) -> int | None:
    """
    The offset of the first byte where C{actual} differs from C{expected}
    (the shorter length when one is a prefix of the other), or L{None} when
    they are equal.  Compares 64 KiB blocks first so that 100 MiB is cheap.
    """
    if expected == actual:
        return None
    shorter = min(len(expected), len(actual))
    block = 65536
    start = 0
    while start < shorter:
        end = min(start + block, shorter)
        if expected[start:end] != actual[start:end]:
            for offset in range(start, end):
                if expected[offset] != actual[offset]:
                    return offset
        start = end
    return shorter


def describeMismatch(expected: bytes, actual: bytes) -> str | None:
    """
    One line saying how C{actual} differs from C{expected}, or L{None}.
    """
    offset = firstDifference(expected, actual)
    if offset is None:
        return None
    return (
        f"sent {len(expected)} bytes, got {len(actual)} back; first difference "
        f"at offset {offset}: sent {expected[offset : offset + 16]!r}, "
        f"got {actual[offset : offset + 16]!r}"
    )


def assertSameBytes(testCase: Any, expected: bytes, actual: bytes) -> None:
    """
    Fail C{testCase} unless C{actual == expected}, naming the first
    differing offset rather than printing megabytes of repr.
    """
    mismatch = describeMismatch(expected, actual)
    if mismatch is not None:
        testCase.fail(mismatch)
    testCase.assertTrue(actual == expected)


def assertCleanExit(testCase: Any, server: ServerProcess) -> None:
    """
    Stop C{server} with SIGTERM; it must exit with status 0 having logged no
    traceback and no unhandled error.
    """
    status = server.stop()
    testCase.assertEqual(status, 0, server.output)
    assertNoTraceback(testCase, server.output)


def raiseDescriptorLimit(testCase: TestCase, needed: int) -> None:
    """
    Raise this process's soft RLIMIT_NOFILE to its hard limit when it is
    below C{needed}, restoring it after the test; skip the test when even
    the hard limit is too low.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    testCase.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise unittest.SkipTest(f"RLIMIT_NOFILE hard limit {hard} < {needed}")


@processTest
class SharedServerTestCase(TestCase):
    """
    A test case whose tests share one echo server per class.

    pytest calls C{setUpClass}/C{tearDownClass}; trial does not, so C{setUp}
    also starts the server on first use, and C{tearDown} stops it after the
    class's last test (an C{atexit} hook kills it if only some tests ran).
    Stopping checks for a clean exit with no traceback in the log.
    """

    serverArgs: ClassVar[tuple[str, ...]] = ()
    _server: ClassVar[ServerProcess | None] = None
    _unfinished: ClassVar[set[str]] = set()

    @classmethod
    def startSharedServer(cls) -> ServerProcess:
        server = cls.__dict__.get("_server")
        if server is None:
            server = ServerProcess(*cls.serverArgs).start()
            atexit.register(server.kill)
            cls._server = server
            cls._unfinished = set(unittest.TestLoader().getTestCaseNames(cls))
        return server

    @classmethod
    def stopSharedServer(cls, testCase: Any) -> None:
        server = cls.__dict__.get("_server")
        if server is not None:
            cls._server = None
            assertCleanExit(testCase, server)

    @classmethod
    def setUpClass(cls) -> None:
        cls.startSharedServer()

    @classmethod
    def tearDownClass(cls) -> None:
        # No test instance here: a plain unittest.TestCase does the asserting.
        cls.stopSharedServer(unittest.TestCase())

    def setUp(self) -> None:
        self.server = self.startSharedServer()
        self.port = self.server.port

    def tearDown(self) -> None:
        cls = type(self)
        cls._unfinished.discard(self._testMethodName)
        if not cls._unfinished:
            cls.stopSharedServer(self)


@processTest
class ZeroConfigTests(TestCase):
    """
    With no options at all, myserver serves echo on port 27015 on every IPv4
    interface, as the README promises.
    """

    def test_defaultsListenOnAllInterfacesPort27015(self) -> None:
        """
        C{twistd -n myserver} with no options logs that it listens on
        C{tcp:0.0.0.0:27015}, and a client on 127.0.0.1:27015 gets its bytes
        back.  This is the only test that uses the fixed port.
        """
        server = ServerProcess(loopback=False)
        server.start()
        self.addCleanup(server.kill)
        server.waitForLine(r"listening on tcp:0\.0\.0\.0:27015 ")
        self.assertEqual(server.addresses, [("0.0.0.0", 27015)])
        payload = b"zero config " + os.urandom(1000)
        assertSameBytes(self, payload, echoOnce(27015, payload))
        assertCleanExit(self, server)


class EchoTests(SharedServerTestCase):
    """
    Well-behaved clients of one server get exactly their bytes back.
    """

    def test_netcatReadmeExample(self) -> None:
        """
        The README's example, with the real netcat: C{printf 'this is a
        test' | nc -N 127.0.0.1 PORT} prints exactly C{this is a test}
        (C{-N} half-closes after standard input ends; nc exits on the
        server's EOF).
        """
        nc = requireTool("nc")
        result = subprocess.run(
            f"printf 'this is a test' | {nc} -N 127.0.0.1 {self.port}",
            shell=True,
            capture_output=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"this is a test")

    def assertEchoesSizes(self, *sizes: int) -> None:
        for size in sizes:
            payload = os.urandom(size)
            assertSameBytes(self, payload, echoOnce(self.port, payload))

    def test_smallSizes(self) -> None:
        """
        0, 1, 2 and 1023 bytes come back exactly: nothing is lost at the
        smallest sizes or just under a power of two, and an empty
        conversation ends with EOF.
        """
        self.assertEchoesSizes(0, 1, 2, 1023)

    def test_aroundReadBufferSize(self) -> None:
        """
        65536 and 65537 bytes come back exactly: Twisted reads at most 64 KiB
        at once, so the second needs one more read than the first.
        """
        self.assertEchoesSizes(65536, 65537)

    def test_oneMebibytePlusSeven(self) -> None:
        """
        1 MiB + 7 bytes come back exactly: more than the default
        max_write_buffer (1 MiB), so reading pauses and resumes at least
        once, and the odd tail must not be lost.
        """
        self.assertEchoesSizes(MiB + 7)

    def test_hundredMebibytes(self) -> None:
        """
        100 MiB of random bytes come back exactly and in order: long enough
        for the write buffer to fill and drain many times.
        """
        self.assertEchoesSizes(100 * MiB)

    def test_everyByteValue(self) -> None:
        """
        Every byte value 0..255, repeated to 1 MiB and sent in 255-byte
        chunks (so chunk and pattern boundaries never line up), comes back
        exactly: no byte is treated specially (NUL, CR, LF, 0xFF, ...).
        """
        payload = bytes(range(256)) * 4096
        assertSameBytes(self, payload, echoOnce(self.port, payload, chunkSize=255))

    def test_everyByteValueOneBytePerSend(self) -> None:
        """
        Every byte value, four times over, sent with one C{send()} call per
        byte and Nagle off, comes back exactly: many tiny reads are echoed
        in order.
        """
        payload = bytes(range(256)) * 4
        received = bytearray()
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for index in range(len(payload)):
                sock.sendall(payload[index : index + 1])
            sock.shutdown(socket.SHUT_WR)
            for _ in range(len(payload) + 1):
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        assertSameBytes(self, payload, bytes(received))

    def test_manyConcurrentClients(self) -> None:
        """
        300 clients at once, each sending a random payload of a random size
        up to 256 KiB in random chunks and then half-closing, each get
        exactly their own bytes back: no mixing between connections, nothing
        lost when many are open.
        """
        clients = 300
        raiseDescriptorLimit(self, clients * 2 + 100)
        seed = random.randrange(2**32)
        rng = random.Random(seed)
        payloads = [rng.randbytes(rng.randint(0, 256 * 1024)) for _ in range(clients)]
        chunkings = []
        for payload in payloads:
            chunks: list[int] = []
            while sum(chunks) < len(payload) and len(chunks) < 16:
                chunks.append(rng.randint(1, 32 * 1024))
            chunkings.append(chunks)

        async def everyone() -> list[bytes]:
            clients = [
                asyncEcho(self.port, payload, chunks=chunks)
                for payload, chunks in zip(payloads, chunkings, strict=True)
            ]
            return list(await asyncio.wait_for(asyncio.gather(*clients), 120))

        results = asyncio.run(everyone())
        self.assertEqual(len(results), clients)
        mismatches = [
            f"client {index}: {mismatch}"
            for index, (payload, result) in enumerate(
                zip(payloads, results, strict=True)
            )
            if (mismatch := describeMismatch(payload, result)) is not None
        ]
        self.assertEqual(mismatches, [], f"random seed {seed}")


class MisbehavingClientTests(TestCase):
    """
    Clients that reset, hang up at once or send nothing leave the server
    serving and its log free of failures: the real service tree on this
    test's reactor, whose stop fails if any connection or timer is left.
    """

    def setUp(self) -> None:
        self.server = serve(self, "echo")

    @inlineCallbacks
    def assertQuietAndServing(self) -> Any:
        """
        Every connection closes, none is left in the registry, nothing was
        logged as a failure, and the next client gets an exact echo.
        """
        registry = self.server.server.registry
        yield self.server.waitFor(
            lambda: not registry.connections, what="every connection to close"
        )
        failures = [e for e in self.server.events if "log_failure" in e]
        self.assertEqual(failures, [])
        payload = os.urandom(300_000)
        client = yield self.server.connect()
        client.send(payload)
        client.halfClose()
        echoed = yield client.readUntilEOF()
        assertSameBytes(self, payload, echoed)

    @inlineCallbacks
    def test_resetMidTransfer(self) -> Any:
        """
        Clients that send 1 MiB without reading and then reset (close with
        unread input: the kernel sends RST) while the server may still have
        echo queued for them are cleaned up quietly.
        """
        for _ in range(5):
            client = yield self.server.connect()
            client.send(os.urandom(MiB))
            yield self.server.waitFor(
                lambda c=client: len(c.received) > 0, what="the echo to start"
            )
            client.transport.abortConnection()
        yield self.assertQuietAndServing()

    @inlineCallbacks
    def test_connectAndCloseImmediately(self) -> Any:
        """
        Clients that connect and close at once (every other one with a
        reset) cost the server nothing.
        """
        for index in range(20):
            client = yield self.server.connect()
            if index % 2:
                client.transport.abortConnection()
            else:
                client.close()
        yield self.assertQuietAndServing()

    @inlineCallbacks
    def test_halfCloseWithoutSending(self) -> Any:
        """
        A client that sends nothing and half-closes gets EOF with zero bytes
        (the server closes its side in turn rather than waiting).
        """
        client = yield self.server.connect()
        client.halfClose()
        received = yield client.readUntilEOF()
        self.assertEqual(received, b"")
        yield self.assertQuietAndServing()
