# -*- test-case-name: tests.test_testing -*-
"""
A protocol under the server's real policy, in memory: no socket, no sleep.

L{MemoryServer} builds a listener's real L{Guard} and accept path on a
L{MemoryReactorClock}, and L{MemoryServer.connect} hands the accept path a
L{MemorySocket} instead of a kernel socket, so the connection is myserver's
own guarded transport, not an imitation of it: the write-buffer mark and
the pause of reading, write-through, half-close safety, the isolation of a
protocol's exceptions and the idle sweep (on the fake clock) all apply
exactly as they do in the server.  The test plays the client and the
kernel: it delivers bytes (L{MemoryConnection.receive}), half-closes, reads
what the kernel took (L{MemoryConnection.read}) and moves the clock.

    server = MemoryServer(Factory.forProtocol(Upper), maxWriteBuffer=65536)
    connection = server.connect()
    connection.receive(b"hello")
    assert connection.read() == b"HELLO"
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from typing import Any

from twisted.internet import main
from twisted.internet.interfaces import IHalfCloseableDescriptor, IProtocolFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from myserver.accepting import AcceptGate
from myserver.admission import Admission
from myserver.budget import OutputBudget
from myserver.errors import ConfigError
from myserver.plugins import discover
from myserver.policy import Guard
from myserver.ports import GuardedTCPPort
from myserver.proxy import GuardedProxyFactory
from myserver.registry import ConnectionRegistry
from myserver.service import ServerService
from myserver.settings import Config, parseBudget, parseDuration, parseSize
from myserver.transport import GuardedServer


class MemorySocket:
    """
    The kernel's side of one TCP connection, in memory.

    @ivar incoming: bytes the client sent that the server has not read.
    @ivar outgoing: bytes the server sent that the client has not read: the
        kernel's send buffer, which holds at most C{capacity}.
    @ivar eof: the client shut down its sending side.
    @ivar resetByPeer: the client reset the connection.
    """

    family = socket.AF_INET

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.incoming = bytearray()
        self.outgoing = bytearray()
        self.eof = False
        self.resetByPeer = False
        self.closed = False

    def recv(self, size: int) -> bytes:
        if self.resetByPeer:
            raise ConnectionResetError(errno.ECONNRESET, "reset by peer")
        if self.incoming:
            data = bytes(self.incoming[:size])
            del self.incoming[:size]
            return data
        if self.eof:
            return b""
        raise BlockingIOError(errno.EWOULDBLOCK, "nothing to read")

    def send(self, data: bytes | memoryview) -> int:
        if self.resetByPeer:
            raise BrokenPipeError(errno.EPIPE, "reset by peer")
        room = self.capacity - len(self.outgoing)
        if room <= 0:
            raise BlockingIOError(errno.EWOULDBLOCK, "send buffer full")
        taken = bytes(data[:room])
        self.outgoing += taken
        return len(taken)

    def read(self, fd: int, size: int) -> bytes:
        """
        What the guarded transport calls instead of C{os.read(fd, size)}.
        """
        return self.recv(size)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """
        What the guarded transport calls instead of C{os.write(fd, data)}.
        """
        return self.send(data)

    def setblocking(self, flag: bool) -> None:
        pass

    def setsockopt(self, *args: Any) -> None:
        pass

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 27015)

    def fileno(self) -> int:
        return -1 if self.closed else 1023

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """
    The guard's settings from the configuration's names and spellings
    (C{max_write_buffer="64KiB"}, C{idle_timeout="5s"}), defaults filled in.
    """
    unknown = set(values) - {
        "max_write_buffer",
        "idle_timeout",
        "max_connections",
        "handshake_timeout",
    }
    if unknown:
        raise ConfigError(f"not a per-connection setting: {sorted(unknown)[0]}")
    return {
        "maxWriteBuffer": parseSize(
            values.get("max_write_buffer", Config.max_write_buffer)
        ),
        "idleTimeout": parseDuration(values.get("idle_timeout", 0)),
        "maxConnections": int(values.get("max_connections", 0)),
        "handshakeTimeout": parseDuration(values.get("handshake_timeout", 0)),
    }


class MemoryServer:
    """
    One listener serving C{factory} under the server's policy, in memory.

    @ivar reactor: the fake reactor and clock everything runs on.
    @ivar guard: the listener's L{Guard} (its counts: C{rejected},
        C{idleClosed}, C{connections}).
    @ivar registry: the server's connection registry.
    @ivar budget: the server's output budget (C{max_buffered}).
    """

    def __init__(
        self,
        factory: IProtocolFactory,
        *,
        protocolName: str = "test",
        socketBuffer: int = 64 * 1024,
        max_buffered: int | str = 0,
        proxied: bool = False,
        **settings: Any,
    ) -> None:
        """
        @param settings: C{max_write_buffer}, C{idle_timeout} and
            C{handshake_timeout} (off unless given) and C{max_connections},
            spelled as in the configuration.
        @param max_buffered: the server's output budget (off unless given).
        @param proxied: serve behind the PROXY protocol, as a C{haproxy:}
            listener does: each client must send a v1 or v2 header first.
        @param socketBuffer: how many bytes the kernel takes for a client
            that does not read.
        """
        self.reactor = MemoryReactorClock()
        self.socketBuffer = socketBuffer
        self.registry = ConnectionRegistry()
        self.budget = OutputBudget(self.registry, parseBudget(max_buffered))
        self.gate = AcceptGate(self.registry, Config.max_connections, self.budget)
        self.guard = Guard(
            self.registry,
            self.gate,
            self.reactor,
            protocolName=protocolName,
            admission=Admission(),
            budget=self.budget,
            **_settings(settings),
        )
        if proxied:
            factory = GuardedProxyFactory(factory, self.guard)
        self._port = GuardedTCPPort(0, factory, reactor=self.reactor)
        self._port.guard = self.guard
        self._port.proxied = proxied
        self.server = ServerService(
            self.registry, self.gate, 0.0, self.reactor, [self.guard]
        )
        self.server.startService()
        self.connections: list[MemoryConnection] = []

    def connect(self, peer: tuple[str, int] | None = None) -> MemoryConnection:
        """
        Accept one client through the server's own accept path.

        @param peer: the client's address; a new loopback port each time by
            default.
        """
        sock = MemorySocket(self.socketBuffer)
        before = set(self.guard.connections)
        address = peer or ("127.0.0.1", 40001 + len(self.connections))
        self._port.serve(sock, address)  # type: ignore[arg-type]
        [transport] = (set(self.guard.connections) - before) or [None]
        connection = MemoryConnection(self, sock, transport)
        self.connections.append(connection)
        self.pump()
        return connection

    def advance(self, seconds: float) -> None:
        """
        Move the clock: timers fire, and the idle sweep runs when due.
        """
        self.reactor.advance(seconds)
        self.pump()

    def pump(self) -> None:
        """
        Do what the reactor would for every connection until nothing
        changes: read while readable and reading, write while writable and
        writing, run what is due now.
        """
        progress = True
        while progress:
            self.reactor.advance(0)
            progress = False
            for connection in self.connections:
                progress = connection._step() or progress


class MemoryConnection:
    """
    One client of a L{MemoryServer}; its methods play the client and the
    reactor.

    @ivar transport: the server's guarded transport for this client (L{None}
        when the accept path refused it or its protocol failed at once).
    @ivar protocol: the server's protocol for this client.
    """

    def __init__(
        self, server: MemoryServer, sock: MemorySocket, transport: GuardedServer | None
    ) -> None:
        self.server = server
        self.socket = sock
        self.transport = transport
        self.protocol = transport.protocol if transport is not None else None
        self.reactor = server.reactor

    @property
    def closed(self) -> bool:
        """
        Whether the server closed (or lost) this connection.
        """
        return self.transport is None or bool(self.transport.disconnected)

    @property
    def readingPaused(self) -> bool:
        """
        Whether the server has stopped reading from this client (its queue
        for the client is above the mark, or its protocol paused it).
        """
        return not self.closed and self.transport not in self.reactor.getReaders()

    @property
    def pendingBytes(self) -> int:
        """
        Bytes the server has queued for this client beyond what the kernel
        took.
        """
        return self.transport.pendingBytes() if self.transport is not None else 0

    def receive(self, data: bytes) -> None:
        """
        The client sends C{data}; the server reads it as its reactor would,
        as far as it is reading.
        """
        self.socket.incoming += data
        self.server.pump()

    def halfClose(self) -> None:
        """
        The client shuts down its sending side (C{shutdown(SHUT_WR)}).
        """
        self.socket.eof = True
        self.server.pump()

    def reset(self) -> None:
        """
        The client resets the connection.
        """
        self.socket.resetByPeer = True
        self.server.pump()

    def read(self) -> bytes:
        """
        The client reads everything the kernel holds for it; the server then
        sends more of its queue, and may read again.

        @return: the bytes read.
        """
        received = bytearray()
        while self.socket.outgoing:
            received += self.socket.outgoing
            self.socket.outgoing.clear()
            self.server.pump()
        return bytes(received)

    def advance(self, seconds: float) -> None:
        """
        Move the clock (for every connection of the server).
        """
        self.server.advance(seconds)

    def _step(self) -> bool:
        """
        One reactor turn for this connection.

        @return: whether anything happened.
        """
        transport = self.transport
        if transport is None or self.closed:
            return False
        sock = self.socket
        happened = False
        if transport in self.reactor.getReaders() and (
            sock.incoming or sock.eof or sock.resetByPeer
        ):
            self._dispatch(transport.doRead(), isRead=True)
            happened = True
        writable = len(sock.outgoing) < sock.capacity
        if not self.closed and transport in self.reactor.getWriters() and writable:
            sent = transport.bytesSent
            self._dispatch(transport.doWrite(), isRead=False)
            happened = happened or transport.bytesSent != sent or self.closed
        return happened

    def _dispatch(self, why: Any, isRead: bool) -> None:
        """
        What Twisted's posix reactor does with a handler's result: nothing
        for L{None}, else the half-close or the end of the connection.
        """
        if not why:
            return
        transport = self.transport
        assert transport is not None
        self.reactor.removeReader(transport)
        reason = Failure(why)
        if (
            isRead
            and why is main.CONNECTION_DONE
            and IHalfCloseableDescriptor.providedBy(transport)
        ):
            transport.readConnectionLost(reason)
        else:
            self.reactor.removeWriter(transport)
            transport.connectionLost(reason)


def connect(factory: IProtocolFactory, **settings: Any) -> MemoryConnection:
    """
    One client of a new L{MemoryServer} serving C{factory}.
    """
    return MemoryServer(factory, **settings).connect()


def connectPlugin(
    name: str, options: Mapping[str, Any] | None = None, **settings: Any
) -> MemoryConnection:
    """
    One client of the installed protocol plugin C{name}, built with the
    listener C{options} it would get from the configuration.
    """
    return MemoryServer(
        pluginFactory(name, options), protocolName=name, **settings
    ).connect()


def pluginFactory(
    name: str, options: Mapping[str, Any] | None = None
) -> IProtocolFactory:
    """
    The factory the installed plugin C{name} builds for a listener with
    C{options}.

    @raise ConfigError: when no valid plugin has that name.
    """
    factory: IProtocolFactory = (
        discover().plugin(name).buildFactory(dict(options or {}))
    )
    return factory
