"""
L{myserver.testing}: the kit behaves like the server, because it is the
server's own policy and transport.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from myserver.policy import PROTOCOL_ERROR
from myserver.testing import MemoryServer, connect, connectPlugin, serve, startServer
from tests.support import processTest


class NaiveEcho(Protocol):
    """
    The textbook echo: no half-close support of its own.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Fails(Protocol):
    def dataReceived(self, data: bytes) -> None:
        raise ValueError("bad input")


class MemoryKitTests(TestCase):
    def test_echoPlugin(self) -> None:
        connection = connectPlugin("echo")
        connection.receive(b"hello")
        self.assertEqual(connection.read(), b"hello")
        connection.halfClose()
        self.assertTrue(connection.closed)

    def test_halfCloseSafety(self) -> None:
        """
        A protocol without half-close support still has all it wrote
        delivered after the client's EOF, then the connection closes.
        """
        connection = connect(Factory.forProtocol(NaiveEcho), socketBuffer=1000)
        payload = bytes(range(256)) * 40
        connection.receive(payload)
        connection.halfClose()
        self.assertFalse(connection.closed)
        self.assertEqual(connection.read(), payload)
        self.assertTrue(connection.closed)

    def test_writeBufferMarkPausesReading(self) -> None:
        """
        A client that does not read: above max_write_buffer the server stops
        reading from it; once it reads, everything arrives in order.
        """
        connection = connectPlugin("echo", max_write_buffer="16KiB", socketBuffer=4096)
        payload = bytes(range(256)) * 1024
        connection.receive(payload)
        self.assertTrue(connection.readingPaused)
        self.assertLessEqual(connection.pendingBytes, 16 * 1024 + 65536)
        received = connection.read()
        self.assertFalse(connection.readingPaused)
        self.assertEqual(received, payload)

    def test_idleSweepOnTheClock(self) -> None:
        server = MemoryServer(Factory.forProtocol(NaiveEcho), idle_timeout="10s")
        quiet, busy = server.connect(), server.connect()
        for _ in range(4):
            busy.receive(b"tick")
            busy.advance(3.5)
        self.assertTrue(quiet.closed)
        self.assertFalse(busy.closed)
        self.assertEqual(server.guard.idleClosed, 1)
        self.assertEqual(busy.read(), b"tick" * 4)

    def test_protocolErrorIsolated(self) -> None:
        server = MemoryServer(Factory.forProtocol(Fails))
        failing, other = server.connect(), server.connect()
        failing.receive(b"x")
        self.assertTrue(failing.closed)
        self.assertFalse(other.closed)
        self.assertEqual(server.guard.rejected, {PROTOCOL_ERROR: 1})
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_reset(self) -> None:
        connection = connectPlugin("echo")
        connection.reset()
        self.assertTrue(connection.closed)
        self.assertEqual(connection.server.registry.results, {"lost": 1})


class InProcessTests(TestCase):
    """
    L{serve}: the real service tree on this test's reactor.
    """

    @inlineCallbacks
    def test_echoHalfCloseAndMetrics(self) -> Any:
        server = serve(self, "echo", max_write_buffer="64KiB")
        self.assertGreater(server.port, 0)
        client = yield server.connect()
        payload = bytes(range(256)) * 1000
        client.send(payload)
        client.halfClose()
        echoed = yield client.readUntilEOF()
        self.assertEqual(echoed, payload)
        yield deferLater(reactor, 0.05, lambda: None)
        metrics = server.metrics()
        self.assertEqual(metrics["myserver_connections_open"], 0)
        self.assertEqual(metrics["myserver_bytes_received_total"], len(payload))
        self.assertTrue(any("echo listening on" in m for m in server.messages()))

    @inlineCallbacks
    def test_expectAndRefusal(self) -> Any:
        server = serve(self, "echo", deny=["127.0.0.0/8"])
        client = yield server.connect()
        yield self.assertFailure(client.read(1), EOFError)
        self.assertEqual(
            server.metrics()['myserver_connections_rejected_total{reason="deny"}'], 1
        )

    @inlineCallbacks
    def test_leakedConnectionFails(self) -> Any:
        """
        A connection the test opened itself and left open fails the stop.
        """
        server = startServer("echo")
        leaked = socket.create_connection(("127.0.0.1", server.port))
        self.addCleanup(leaked.close)
        client = yield server.connect()
        client.send(b"x")
        yield client.expect(b"x")
        yield self.assertFailure(server.stop(), AssertionError)

    def test_badSettingExits(self) -> None:
        error = self.assertRaises(
            SystemExit, startServer, "echo", max_write_buffer="lots"
        )
        self.assertEqual(error.code, 2)


FIXTURE_TEST = """
import pytest_twisted


@pytest_twisted.inlineCallbacks
def test_fixtureServesTheRealServer(myserver_server):
    server = myserver_server("echo", idle_timeout=30)
    client = yield server.connect()
    client.send(b"hello ")
    yield client.expect(b"hello ")
    client.send(b"world")
    client.halfClose()
    rest = yield client.readUntilEOF()
    assert rest == b"world"
    assert server.metrics()["myserver_connections_open"] == 0


LEAKED = []


@pytest_twisted.inlineCallbacks
def test_leakFailsTheTest(myserver_server):
    import socket

    server = myserver_server("echo")
    LEAKED.append(socket.create_connection(("127.0.0.1", server.port)))
    yield server.connect()
"""


@processTest
class PytestFixtureTests(TestCase):
    """
    The C{myserver_server} fixture, found through the C{pytest11} entry
    point of the installed package, in a pytest run of its own (pytest
    functions and trial test cases cannot share one reactor run).
    """

    def test_fixture(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "test_kit.py"), "w") as f:
            f.write(FIXTURE_TEST)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "test_kit.py",
            ],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertIn("2 passed, 1 error", result.stdout, result.stdout + result.stderr)
        self.assertIn("connections left open at the end of the test", result.stdout)
