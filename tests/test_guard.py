"""
The guarded transport and the drain, in process: real sockets on loopback,
driven by the test's own reactor through Deferreds, plus fast unit tests of
the echo protocol on L{StringTransport}.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from myserver.accepting import AcceptGate
from myserver.policy import Guard
from myserver.ports import GuardingReactor
from myserver.protocols.echo import Echo, buildFactory
from myserver.registry import ConnectionRegistry
from myserver.service import ListenerService, ServerService
from myserver.settings import Listener
from myserver.testing import MemoryServer
from myserver.transport import GuardedServer

LOOPBACK = "tcp:0:interface=127.0.0.1"


class EchoUnitTests(TestCase):
    """
    The echo protocol alone, on an in-memory transport.
    """

    def test_echoesEveryByte(self) -> None:
        transport = StringTransport()
        echo = Echo()
        echo.makeConnection(transport)
        for chunk in (b"a", bytes(range(256)), b"", b"z" * 70000):
            echo.dataReceived(chunk)
        self.assertEqual(transport.value(), b"a" + bytes(range(256)) + b"z" * 70000)

    def test_halfCloseFinishesThenCloses(self) -> None:
        """
        Echo provides IHalfCloseableProtocol, and on the peer's EOF asks the
        transport to close after flushing (loseConnection, not abort).
        """
        transport = StringTransport()
        echo = Echo()
        echo.makeConnection(transport)
        self.assertTrue(IHalfCloseableProtocol.providedBy(echo))
        echo.readConnectionLost()
        self.assertTrue(transport.disconnecting)

    def test_refusesOptions(self) -> None:
        self.assertRaises(ValueError, buildFactory, {"colour": "blue"})
        self.assertIsInstance(buildFactory({}).buildProtocol(None), Echo)


class NaiveEcho(Protocol):
    """
    The textbook echo, without IHalfCloseableProtocol.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Client(Protocol):
    """
    Sends a payload, optionally half-closes, collects the reply until the
    server closes.  Can start with reading paused, as a client that does not
    read would.
    """

    def __init__(
        self, payload: bytes, halfClose: bool = True, readPaused: bool = False
    ) -> None:
        self.payload = payload
        self.halfClose = halfClose
        self.readPaused = readPaused
        self.received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.readPaused:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        self.transport.write(self.payload)
        if self.halfClose:
            self.transport.loseWriteConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(b"".join(self.received))


class ServingTestCase(TestCase):
    """
    Serves a factory on a guarded loopback listener in this process.
    """

    maxWriteBuffer = 64 * 1024

    @inlineCallbacks
    def serve(
        self, factory: Factory, noDelay: bool = True, endpoint: str = LOOPBACK
    ) -> Any:
        self.registry = ConnectionRegistry()
        self.gate = AcceptGate(self.registry, 10000)
        self.guard = Guard(
            self.registry,
            self.gate,
            reactor,
            protocolName="test",
            maxWriteBuffer=self.maxWriteBuffer,
            noDelay=noDelay,
        )
        self.server = ServerService(self.registry, self.gate, 30.0, reactor)
        self.listener = ListenerService(
            Listener(endpoint, "test"), factory, self.guard, reactor
        )
        self.listener.setServiceParent(self.server)
        self.server.startService()
        self.addCleanup(self.stopServer)
        assert self.listener.port is not None
        self.port = getattr(self.listener.port.getHost(), "port", 0)
        yield None

    def stopServer(self) -> Any:
        if self.server.running:
            self.registry.abortAll()
            return self.server.stopService()
        return None

    @inlineCallbacks
    def connect(self, client: Client) -> Any:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        yield connectProtocol(endpoint, client)
        return client

    def serverConnection(self) -> GuardedServer:
        [connection] = self.registry.connections
        return connection


class UNIXListenerTests(ServingTestCase):
    """
    A guarded UNIX-domain listener serves as a TCP one does (its port has no
    TCP_NODELAY to inherit, and its transport none to set).
    """

    @inlineCallbacks
    def test_echoesAndClosesAfterEOF(self) -> Any:
        path = os.path.join(self.mktemp() + ".d", "echo.sock")
        os.makedirs(os.path.dirname(path))
        yield self.serve(buildFactory({}), endpoint=f"unix:{path}")
        client = Client(b"over a UNIX socket" * 1000)
        yield connectProtocol(UNIXClientEndpoint(reactor, path), client)
        received = yield client.done
        self.assertEqual(received, b"over a UNIX socket" * 1000)
        self.assertEqual(self.registry.results, {"closed": 1})


class GuardedServerTests(ServingTestCase):
    """
    Real loopback connections to a guarded listener.
    """

    @inlineCallbacks
    def test_halfCloseSafeForAnyProtocol(self) -> Any:
        """
        A protocol that knows nothing of half-close still has everything it
        wrote delivered after the peer's EOF: the client reads nothing until
        long after its EOF reached the server.
        """
        yield self.serve(Factory.forProtocol(NaiveEcho))
        payload = os.urandom(3 * 1024 * 1024 + 11)
        client = yield self.connect(Client(payload, readPaused=True))
        yield deferLater(reactor, 0.5, lambda: None)
        client.transport.resumeProducing()
        received = yield client.done
        self.assertEqual(len(received), len(payload))
        self.assertEqual(received, payload)

    @inlineCallbacks
    def test_backpressureBoundsQueuedOutput(self) -> Any:
        """
        A client that does not read makes the server stop reading from it
        once more than max_write_buffer bytes are queued for it; when the
        client reads again everything arrives, in order.
        """
        yield self.serve(buildFactory({}))
        payload = os.urandom(16 * 1024 * 1024)
        client = yield self.connect(Client(payload, readPaused=True))
        connection = self.serverConnection()
        highest = 0
        for _ in range(20):
            yield deferLater(reactor, 0.05, lambda: None)
            highest = max(highest, connection.pendingBytes())
        self.assertTrue(connection._readPausedByGuard)
        self.assertLess(connection.bytesReceived, len(payload))
        # At most one read's worth above the mark before reading paused.
        self.assertLessEqual(highest, self.maxWriteBuffer + connection.bufferSize)
        client.transport.resumeProducing()
        received = yield client.done
        self.assertEqual(received, payload)
        self.assertEqual(connection.bytesReceived, len(payload))
        self.assertEqual(connection.bytesSent, len(payload))

    @inlineCallbacks
    def test_writeThrough(self) -> Any:
        """
        When nothing is queued, write() hands the bytes to the kernel at
        once, without waiting a reactor turn for write readiness.
        """
        yield self.serve(buildFactory({}))
        client = yield self.connect(Client(b"", halfClose=False))
        yield deferLater(reactor, 0, lambda: None)
        connection = self.serverConnection()
        connection.write(b"x" * 1000)
        self.assertEqual(connection.pendingBytes(), 0)
        self.assertEqual(connection.bytesSent, 1000)
        self.assertNotIn(connection, reactor.getWriters())
        client.transport.loseWriteConnection()
        received = yield client.done
        self.assertEqual(received, b"x" * 1000)

    @inlineCallbacks
    def test_socketObjectOnDemand(self) -> Any:
        """
        An accepted connection is served on its descriptor: no socket
        object exists until something asks for one (C{getHost} here),
        which then acts on the same descriptor; and either way each
        connection's descriptor is closed exactly once, so none leaks and
        none is closed twice (which would cut another connection that was
        given the number since).
        """
        yield self.serve(buildFactory({}))
        openBefore = 0
        # The first connection starts the client side's resolver too.
        for asks in [False, False] + [False, True] * 10:
            client = yield self.connect(Client(b"ping", halfClose=False))
            while not client.received:
                yield deferLater(reactor, 0.005, lambda: None)
            connection = self.serverConnection()
            descriptor = connection.fileno()
            self.assertIsNone(connection._socket)
            if asks:
                host = connection.getHost()
                self.assertEqual((host.host, host.port), ("127.0.0.1", self.port))
                self.assertEqual(connection.socket.fileno(), descriptor)
            client.transport.loseWriteConnection()
            received = yield client.done
            self.assertEqual(received, b"ping")
            self.assertEqual(connection.fileno(), -1)
            self.assertRaises(AttributeError, getattr, connection, "socket")
            openBefore = openBefore or len(os.listdir("/proc/self/fd"))
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(len(os.listdir("/proc/self/fd")), openBefore)

    def assertNoDelay(self, connection: GuardedServer, expected: bool) -> None:
        option = connection.getHandle().getsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY
        )
        self.assertEqual(bool(option), expected)

    @inlineCallbacks
    def test_noDelay(self) -> Any:
        """
        Accepted TCP connections have TCP_NODELAY set, unless turned off;
        on Linux they have it from the listening socket, which the port
        sets before it listens, and the transport sets nothing.
        """
        for noDelay in (True, False):
            yield self.serve(buildFactory({}), noDelay=noDelay)
            port = self.listener.port
            listening = port.socket  # type: ignore[union-attr]
            inherits = sys.platform.startswith("linux") and noDelay
            self.assertEqual(port.noDelayInherited, inherits)  # type: ignore[union-attr]
            if sys.platform.startswith("linux"):
                option = listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                self.assertEqual(bool(option), noDelay)
            client = yield self.connect(Client(b"", halfClose=False))
            yield deferLater(reactor, 0.05, lambda: None)
            self.assertNoDelay(self.serverConnection(), noDelay)
            client.transport.loseWriteConnection()
            yield client.done
            yield self.stopServer()

    @inlineCallbacks
    def test_noDelayOnAdoptedListener(self) -> Any:
        """
        A listening socket handed over without TCP_NODELAY (systemd's,
        unless its unit says NoDelay=) may already hold connections that
        lack it: the port sets it on the listener for later ones, and the
        transport on each connection, so every one has it.  One handed over
        with it, when the server wants it off, is turned off.
        """
        for had, noDelay in ((False, True), (True, False)):
            yield self.serve(buildFactory({}), noDelay=noDelay)
            listening = socket.socket()
            self.addCleanup(listening.close)
            listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(had))
            listening.bind(("127.0.0.1", 0))
            listening.listen()
            listening.setblocking(False)  # As systemd's are.
            # Queued before the server adopts the socket.
            early = socket.create_connection(listening.getsockname())
            self.addCleanup(early.close)
            adopted = GuardingReactor(reactor, self.guard).adoptStreamPort(
                listening.fileno(), socket.AF_INET, buildFactory({})
            )
            self.addCleanup(adopted.stopListening)
            self.assertFalse(adopted.noDelayInherited)  # type: ignore[attr-defined]
            option = listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            self.assertEqual(bool(option), noDelay)
            late = socket.create_connection(listening.getsockname())
            self.addCleanup(late.close)
            while len(self.registry.connections) < 2:
                yield deferLater(reactor, 0.01, lambda: None)
            for connection in self.registry.connections:
                if noDelay:
                    self.assertNoDelay(connection, True)
            if not noDelay:
                [lateServed] = [
                    c
                    for c in self.registry.connections
                    if c.getPeer().port == late.getsockname()[1]
                ]
                self.assertNoDelay(lateServed, False)
            yield self.stopServer()

    @inlineCallbacks
    def test_registryFollowsConnections(self) -> Any:
        """
        The registry holds a connection exactly while it is open.
        """
        yield self.serve(buildFactory({}))
        self.assertEqual(len(self.registry), 0)
        client = yield self.connect(Client(b"hello", halfClose=False))
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.registry), 1)
        emptied = self.registry.whenEmpty()
        self.assertNoResult(emptied)
        client.transport.loseWriteConnection()
        received = yield client.done
        yield emptied
        self.assertEqual(received, b"hello")
        self.assertEqual(len(self.registry), 0)


class _CountingListener:
    """
    A listening socket's stand-in for the accept loop: the real socket's
    accept, counting the tries that found nobody waiting.
    """

    def __init__(self, listening: socket.socket) -> None:
        self.listening = listening
        self.emptyTries = 0

    def _accept(self) -> tuple[int, Any]:
        try:
            return self.listening._accept()  # type: ignore[attr-defined, no-any-return]
        except BlockingIOError:
            self.emptyTries += 1
            raise


class AcceptLoopTests(ServingTestCase):
    """
    How many accepts the port tries per wake-up, on a real listening
    socket whose wake-ups the test makes itself (calling C{doRead} while
    clients wait in the kernel's queue).
    """

    def setUp(self) -> Any:
        d = self.serve(buildFactory({}))

        def counting(_: Any) -> None:
            port: Any = self.listener.port
            self.counting = _CountingListener(port.socket)
            port.socket = self.counting
            self.addCleanup(setattr, port, "socket", self.counting.listening)
            self.acceptingPort = port

        return d.addCallback(counting)

    def clients(self, count: int) -> list[socket.socket]:
        """
        Connect C{count} clients, which wait in the listening socket's
        queue until the port accepts them.
        """
        made = []
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", self.port))
            self.addCleanup(client.close)
            made.append(client)
        return made

    def test_oneAtATimeRarelyTriesTwice(self) -> None:
        """
        Clients that come one per wake-up are each accepted at their
        wake-up, and only one wake-up in several tries a second accept
        that finds nobody (Twisted's loop tries one at every other).
        """
        for served in range(1, 33):
            self.clients(1)
            self.acceptingPort.doRead()
            self.assertEqual(len(self.registry.connections), served)
        self.assertLessEqual(self.counting.emptyTries, 32 // 8)

    def test_burstIsAcceptedInLargeBatches(self) -> None:
        """
        Many clients waiting at once are accepted a growing batch per
        wake-up, after a few wake-ups of one.
        """
        waiting = 300
        self.clients(waiting)
        wakeups = 0
        while len(self.registry.connections) < waiting:
            self.acceptingPort.doRead()
            wakeups += 1
            self.assertLess(wakeups, 20)
        self.assertLessEqual(wakeups, 8 + 5)


class ReadToEndTests(TestCase):
    """
    L{GuardedServer.doReadToEnd}, which the reactor calls when a client's
    data and its EOF are both waiting, on the in-memory kit's sockets.
    """

    def connection(self, factory: Factory, **settings: Any) -> Any:
        server = MemoryServer(factory, **settings)
        connection = server.connect()
        self.assertIsNotNone(connection.transport)
        return connection

    def test_dataThenEOFInOneCall(self) -> None:
        """
        One call reads the data, echoes it, and finds the EOF: the echo
        protocol (half-closeable) closes then, as the next read would have
        had it; so does one that knows nothing of half-close.
        """
        for factory in (buildFactory({}), Factory.forProtocol(NaiveEcho)):
            connection = self.connection(factory)
            connection.socket.incoming += b"request"
            connection.socket.eof = True
            self.assertIsNone(connection.transport.doReadToEnd())
            self.assertTrue(connection.closed)
            self.assertEqual(bytes(connection.socket.outgoing), b"request")

    def test_fullReadLeavesTheRest(self) -> None:
        """
        A read that filled its buffer may have left data behind: the EOF
        waits for the read that finds it.
        """
        connection = self.connection(buildFactory({}))
        size = connection.transport.bufferSize
        payload = os.urandom(size + 10)
        connection.socket.incoming += payload
        connection.socket.eof = True
        connection.transport.doReadToEnd()
        self.assertFalse(connection.transport._readClosed)
        connection.transport.doReadToEnd()
        self.assertTrue(connection.transport._readClosed)
        self.assertEqual(connection.read(), payload)
        self.assertTrue(connection.closed)

    def test_pausedReadingKeepsTheEOF(self) -> None:
        """
        A connection that stopped reading while it handled the data (its
        queue for the client went above the mark) leaves the EOF for when
        it reads again, as Twisted would; the client then gets everything.
        """
        connection = self.connection(
            buildFactory({}), max_write_buffer="1KiB", socketBuffer=1024
        )
        payload = os.urandom(8 * 1024)
        connection.socket.incoming += payload
        connection.socket.eof = True
        connection.transport.doReadToEnd()
        self.assertTrue(connection.readingPaused)
        self.assertFalse(connection.transport._readClosed)
        self.assertFalse(connection.closed)
        self.assertEqual(connection.read(), payload)
        self.assertTrue(connection.closed)


class DrainTests(ServingTestCase):
    """
    Stopping the server: listeners close at once, open connections finish,
    the rest are aborted at the deadline.
    """

    @inlineCallbacks
    def test_drainLetsConnectionsFinish(self) -> Any:
        """
        After stopService the listener is closed, but a connection already
        open is still served until its peer half-closes.
        """
        yield self.serve(buildFactory({}))
        client = yield self.connect(Client(b"first", halfClose=False))
        yield deferLater(reactor, 0.05, lambda: None)
        stopped = self.server.stopService()
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(self.server.draining)
        self.assertNoResult(stopped)
        refused = Client(b"")
        yield self.assertFailure(self.connect(refused), Exception)
        client.transport.write(b" and last")
        client.transport.loseWriteConnection()
        received = yield client.done
        yield stopped
        self.assertEqual(received, b"first and last")

    @inlineCallbacks
    def test_deadlineAbortsTheRest(self) -> Any:
        """
        Connections still open at shutdown_timeout are aborted, and the
        drain then completes.
        """
        yield self.serve(buildFactory({}))
        clock = Clock()
        self.server.clock = clock
        client = yield self.connect(Client(b"never done", halfClose=False))
        yield deferLater(reactor, 0.05, lambda: None)
        stopped = self.server.stopService()
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertNoResult(stopped)
        clock.advance(self.server.shutdownTimeout)
        received = yield client.done
        yield stopped
        self.assertEqual(received, b"never done")
        self.assertEqual(len(self.registry), 0)


class IdleSweepTests(ServingTestCase):
    """
    The idle sweep, on a fake clock over real connections: activity is
    noticed by comparing byte counters, never by a timer per read.
    """

    @inlineCallbacks
    def test_sweepClosesOnlyIdle(self) -> Any:
        yield self.serve(buildFactory({}))
        clock = Clock()
        self.guard.clock = clock
        self.guard.idleTimeout = 10.0
        quiet = yield self.connect(Client(b"", halfClose=False))
        busy = yield self.connect(Client(b"", halfClose=False))
        yield deferLater(reactor, 0.05, lambda: None)
        byClient = {c.getPeer().port: c for c in self.registry.connections}
        busyServer = byClient[busy.transport.getHost().port]
        for step in range(4):
            clock.advance(4)
            busy.transport.write(b"tick %d" % step)
            yield deferLater(reactor, 0.05, lambda: None)
            self.assertEqual(self.guard.sweepIdle(), 1 if step == 2 else 0)
        received = yield quiet.done
        self.assertEqual(received, b"")
        self.assertEqual(self.registry.connections, {busyServer})
        self.assertEqual(self.guard.idleClosed, 1)
        busy.transport.loseWriteConnection()
        echoed = yield busy.done
        self.assertEqual(echoed, b"tick 0tick 1tick 2tick 3")
