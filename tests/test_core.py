"""
The core's owners, in memory and on loopback: the accept gate decides when
ports accept, and the accept loop survives whatever goes wrong while it
builds a connection.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from myserver.accepting import AcceptGate, IAcceptingPort
from myserver.policy import ACCEPT_ERROR, PROTOCOL_ERROR, Guard
from myserver.protocols.echo import buildFactory
from myserver.registry import ConnectionRegistry
from myserver.service import ListenerService, ServerService
from myserver.settings import Listener
from myserver.tap import Options, makeService
from myserver.testing import MemoryServer
from myserver.transport import GuardedServer
from tests.support import echoOnce

# The clients run in threads: the server runs in this test's reactor, so a
# blocking client here would stall it.
PAYLOAD = bytes(range(256)) * 64


@implementer(IAcceptingPort)
class RecordingPort:
    """
    A port that remembers whether it was last told to accept.
    """

    accepting = True

    def pauseAccepting(self) -> None:
        self.accepting = False

    def resumeAccepting(self) -> None:
        self.accepting = True


class Listening:
    """
    What the gate reads of a listener: its cap and its open connections.
    """

    def __init__(self, maxConnections: int = 0) -> None:
        self.maxConnections = maxConnections
        self.connections: set[object] = set()


class AcceptGateTests(TestCase):
    """
    L{AcceptGate} alone, with recording ports: one object decides, from the
    server's room and each listener's.
    """

    def setUp(self) -> None:
        self.registry = ConnectionRegistry()
        self.gate = AcceptGate(self.registry, 3)

    def listener(self, maxConnections: int = 0) -> tuple[Listening, RecordingPort]:
        listener, port = Listening(maxConnections), RecordingPort()
        self.gate.portStarted(listener, port)  # type: ignore[arg-type]
        return listener, port

    def open(self, listener: Listening) -> object:
        connection = object()
        listener.connections.add(connection)
        self.registry.connections.add(connection)
        self.gate.opened(listener)  # type: ignore[arg-type]
        return connection

    def close(self, listener: Listening, connection: object) -> None:
        listener.connections.discard(connection)
        self.registry.connections.discard(connection)
        self.gate.closed(listener)  # type: ignore[arg-type]

    def test_serverLimitPausesEveryPort(self) -> None:
        first, firstPort = self.listener()
        second, secondPort = self.listener()
        opened = [self.open(first), self.open(first)]
        self.assertEqual((firstPort.accepting, secondPort.accepting), (True, True))
        self.assertEqual(self.gate.room(second), 1)  # type: ignore[arg-type]
        opened.append(self.open(second))
        self.assertEqual((firstPort.accepting, secondPort.accepting), (False, False))
        self.close(first, opened[0])
        self.assertEqual((firstPort.accepting, secondPort.accepting), (True, True))

    def test_listenerLimitPausesItsPortsOnly(self) -> None:
        capped, cappedPort = self.listener(maxConnections=1)
        other, otherPort = self.listener()
        connection = self.open(capped)
        self.assertEqual((cappedPort.accepting, otherPort.accepting), (False, True))
        self.assertEqual(self.gate.room(capped), 0)  # type: ignore[arg-type]
        self.assertEqual(self.gate.room(other), 2)  # type: ignore[arg-type]
        self.close(capped, connection)
        self.assertTrue(cappedPort.accepting)

    def test_reconsiderAfterNewLimits(self) -> None:
        """
        A reload that lowers or raises the limits takes effect on every
        port at once.
        """
        listener, port = self.listener()
        self.open(listener)
        self.open(listener)
        self.gate.maxConnections = 2
        self.gate.reconsider()
        self.assertFalse(port.accepting)
        self.gate.maxConnections = 10
        self.gate.reconsider()
        self.assertTrue(port.accepting)

    def test_stoppedPortForgotten(self) -> None:
        listener, port = self.listener()
        self.gate.portStopped(listener, port)  # type: ignore[arg-type]
        self.gate.maxConnections = 0
        self.gate.reconsider()
        self.assertTrue(port.accepting)


class TransportFailsOnce(GuardedServer):
    """
    A transport whose first construction raises, as a bug in it would.
    """

    failed = False

    def __init__(self, *args: Any) -> None:
        if not TransportFailsOnce.failed:
            TransportFailsOnce.failed = True
            raise RuntimeError("transport construction went wrong")
        super().__init__(*args)


class FactoryFailsOnce(Factory):
    protocol = Protocol
    failed = False

    def __init__(self) -> None:
        self.echo = buildFactory({})

    def buildProtocol(self, addr: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise RuntimeError("buildProtocol went wrong")
        return self.echo.buildProtocol(addr)


class AcceptLoopTests(TestCase):
    """
    The accept loop of a real guarded port on loopback: whatever raises
    while one connection is built, that connection is closed, the error is
    logged and counted, and the port serves the next client.
    """

    @inlineCallbacks
    def serve(self, factory: Any) -> Any:
        registry = ConnectionRegistry()
        gate = AcceptGate(registry, 100)
        self.guard = Guard(registry, gate, reactor, protocolName="test")
        server = ServerService(registry, gate, 5.0, reactor, [self.guard])
        self.listener = ListenerService(
            Listener("tcp:0:interface=127.0.0.1", "test"), factory, self.guard, reactor
        )
        self.listener.setServiceParent(server)
        server.startService()
        self.addCleanup(server.stopService)
        assert self.listener.port is not None
        verifyObject(IAcceptingPort, self.listener.port)
        yield None
        return self.listener.port.getHost().port

    def connect(self, port: int) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def test_factoryRaises(self) -> Any:
        port = yield self.serve(FactoryFailsOnce())
        first = self.connect(port)
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(first.recv(10), b"")
        echoed = yield deferToThread(echoOnce, port, PAYLOAD)
        self.assertEqual(echoed, PAYLOAD)
        self.assertEqual(self.guard.rejected.get(PROTOCOL_ERROR), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_transportConstructorRaises(self) -> Any:
        TransportFailsOnce.failed = False
        port = yield self.serve(buildFactory({}))
        listening: Any = self.listener.port
        listening.transport = TransportFailsOnce
        first = self.connect(port)
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(first.recv(10), b"")
        self.assertTrue(listening.connected)
        echoed = yield deferToThread(echoOnce, port, PAYLOAD)
        self.assertEqual(echoed, PAYLOAD)
        self.assertEqual(self.guard.rejected.get(ACCEPT_ERROR), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ServiceTreeTests(TestCase):
    """
    C{makeService} on a C{MemoryReactor}: the tree it builds, and a SIGHUP
    reconfiguration applied to it, without a socket.
    """

    def build(self, *args: str, environ: dict[str, str] | None = None) -> Any:
        options = Options()
        options.environ = environ or {}
        options.parseOptions(list(args))
        self.options = options
        reactor = MemoryReactorClock()
        root = makeService(options, reactor)
        [server] = [s for s in root if isinstance(s, ServerService)]
        return root, server

    def test_tree(self) -> None:
        root, server = self.build(
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--listen",
            "chargen=unix:/nonexistent/x.sock",
            "--admin",
            "tcp:0:interface=127.0.0.1",
        )
        listeners = [s for s in server if isinstance(s, ListenerService)]
        self.assertEqual(
            [(s.listener.protocol, s.listener.endpoint) for s in listeners],
            [
                ("echo", "tcp:0:interface=127.0.0.1"),
                ("chargen", "unix:/nonexistent/x.sock"),
            ],
        )
        self.assertEqual(
            [type(s).__name__ for s in root], ["AdminService", "ServerService"]
        )
        self.assertEqual(len(server.guards), 2)
        self.assertIs(server.guards[0].gate, server.gate)

    def test_reloadAppliesLimits(self) -> None:
        _, server = self.build("--idle-timeout", "30")
        self.options.environ = {
            "MYSERVER_MAX_CONNECTIONS": "5",
            "MYSERVER_MAX_WRITE_BUFFER": "64KiB",
        }
        server.reload()
        self.assertEqual(server.gate.maxConnections, 5)
        self.assertEqual(server.guards[0].maxWriteBuffer, 64 * 1024)
        self.assertEqual(server.guards[0].idleTimeout, 30.0)

    def test_reloadRefusesBadConfiguration(self) -> None:
        _, server = self.build()
        self.options.environ = {"MYSERVER_MAX_CONNECTIONS": "many"}
        server.reload()
        self.assertEqual(server.gate.maxConnections, 10000)
        self.assertEqual(len(self.flushLoggedErrors()), 0)


class DrainTests(TestCase):
    """
    The drain on a fake clock: open connections get shutdown_timeout, then
    are aborted.
    """

    def test_deadline(self) -> None:
        memory = MemoryServer(buildFactory({}))
        memory.server.shutdownTimeout = 5.0
        connection = memory.connect()
        stopped = memory.server.stopService()
        self.assertNoResult(stopped)
        memory.advance(4.9)
        self.assertNoResult(stopped)
        self.assertFalse(connection.closed)
        memory.advance(0.1)
        self.successResultOf(stopped)
        self.assertTrue(connection.closed)
        self.assertEqual(memory.registry.results, {"aborted": 1})

    def test_finishesEarly(self) -> None:
        memory = MemoryServer(buildFactory({}))
        memory.server.shutdownTimeout = 5.0
        connection = memory.connect()
        stopped = memory.server.stopService()
        connection.receive(b"last words")
        connection.halfClose()
        self.assertEqual(connection.read(), b"last words")
        self.successResultOf(stopped)
        self.assertEqual(memory.registry.results, {"closed": 1})


class ReplyThenClose(Protocol):
    """
    Reads nothing: waits a moment (the client's bytes arrive and stay
    unread in the kernel), writes a reply and closes, from a timer or, with
    C{inConnectionMade}, at once as daytime does.
    """

    inConnectionMade = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        if self.inConnectionMade:
            self.reply()
        else:
            reactor.callLater(0.2, self.reply)  # type: ignore[attr-defined]

    def reply(self) -> None:
        assert self.transport is not None
        self.transport.write(b"reply")
        self.transport.loseConnection()


class ReplyInConnectionMade(ReplyThenClose):
    inConnectionMade = True


def sendAndWatchClose(port: int, unread: bytes) -> tuple[bytes, str]:
    """
    Connect, send C{unread}, read until the server's close.

    @return: what arrived, and how the connection ended (C{eof}, C{reset}).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        if unread:
            client.sendall(unread)
        received = b""
        while True:
            try:
                data = client.recv(65536)
            except ConnectionResetError:
                return received, "reset"
            if not data:
                return received, "eof"
            received += data


class CloseSemanticsTests(TestCase):
    """
    The guarded transport's cheaper close (no write-readiness detour, no
    C{shutdown} after the peer's EOF) ends a connection on the wire as
    Twisted's own transport does: a client whose bytes the protocol never
    read gets what the protocol wrote, then the same close.
    """

    serve = AcceptLoopTests.serve
    connect = AcceptLoopTests.connect

    @inlineCallbacks
    def compareWithTwisted(self, protocol: type[Protocol], unread: bytes) -> Any:
        ours = yield self.serve(Factory.forProtocol(protocol))
        plain = reactor.listenTCP(  # type: ignore[attr-defined]
            0, Factory.forProtocol(protocol), interface="127.0.0.1"
        )
        self.addCleanup(plain.stopListening)
        fromTwisted = yield deferToThread(
            sendAndWatchClose, plain.getHost().port, unread
        )
        fromOurs = yield deferToThread(sendAndWatchClose, ours, unread)
        self.assertEqual(fromOurs, fromTwisted)
        return fromOurs

    @inlineCallbacks
    def test_unreadInputFromTimer(self) -> Any:
        """
        Closed from a timer, with the client's bytes unread.
        """
        received, how = yield self.compareWithTwisted(ReplyThenClose, b"x" * 1000)
        self.assertEqual(received, b"reply")
        self.assertEqual(how, "eof")

    @inlineCallbacks
    def test_unreadInputInConnectionMade(self) -> Any:
        """
        Closed from connectionMade (the shortcut that skips the reactor
        turn).
        """
        received, _ = yield self.compareWithTwisted(ReplyInConnectionMade, b"")
        self.assertEqual(received, b"reply")

    @inlineCallbacks
    def test_closedInConnectionMadeClosesAtOnce(self) -> Any:
        """
        A protocol that writes and closes in connectionMade is closed before
        the accept loop returns: no write-readiness registration, no
        reactor turn.
        """
        yield self.serve(Factory.forProtocol(ReplyInConnectionMade))
        client = self.connect(self.listener.port.getHost().port)  # type: ignore[union-attr]
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(client.recv(100), b"reply")
        self.assertEqual(client.recv(100), b"")
        self.assertEqual(len(self.guard.connections), 0)
        self.assertEqual(self.guard.registry.results, {"closed": 1})

    @inlineCallbacks
    def test_echoClosesWithFin(self) -> Any:
        """
        After the peer's EOF the echo closes with a plain FIN (close
        without shutdown): every byte, then EOF, as from Twisted.
        """
        port = yield self.serve(buildFactory({}))
        echoed = yield deferToThread(echoOnce, port, PAYLOAD)
        self.assertEqual(echoed, PAYLOAD)
