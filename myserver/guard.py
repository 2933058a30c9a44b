"""
Per-connection policy, applied in the transport itself.

Protocol plugins are plain Twisted protocols and never see the guard.  The
guard does not wrap them: it is the transport.  L{GuardingReactor} hands
Twisted's endpoint machinery (C{serverFromString} and every endpoint type it
knows: tcp, tcp6, unix, ssl, systemd, haproxy) ports whose accepted
connections are L{GuardedServer}s.  Their read and write paths are Twisted's
own, with the policy folded in at the cost of a few attribute updates per
read or write:

  - accounting: bytes in and out, kept as plain integers;
  - bounded output: above C{max_write_buffer} bytes queued for a peer, the
    server stops reading from that peer until the queue has drained to half
    of it, so a client that sends without reading cannot grow the server;
  - write-through: when nothing is queued, C{write} sends at once and queues
    only what the kernel did not take, so an echo costs one C{recv} and one
    C{send} instead of waiting a reactor turn for write readiness;
  - half-close safety: when the peer shuts down its sending side, a protocol
    that does not provide L{IHalfCloseableProtocol} has its queued output
    flushed before the connection closes, instead of losing it.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import main, tcp, unix
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
)
from twisted.python.failure import Failure

from myserver.interfaces import IConnectionRegistry

_RETRY_LATER = (errno.EWOULDBLOCK, errno.ENOBUFS)


class Guard:
    """
    The policy shared by every connection of one listener.

    @ivar maxWriteBuffer: bytes queued for one peer above which reading from
        that peer pauses.
    @ivar registry: told of every connection opened and closed.
    @ivar clock: the time source for connection durations.
    """

    def __init__(
        self, maxWriteBuffer: int, registry: IConnectionRegistry, clock: IReactorTime
    ) -> None:
        self.maxWriteBuffer = maxWriteBuffer
        self.registry = registry
        self.clock = clock


class GuardedServer(tcp.Server):
    """
    A server-side TCP transport that applies its listener's L{Guard}.

    @ivar bytesReceived: bytes read from the peer so far.
    @ivar bytesSent: bytes the kernel accepted for the peer so far.
    @ivar openedAt: when the connection was accepted (the guard's clock).
    """

    bytesReceived = 0
    bytesSent = 0
    _readPausedByGuard = False
    _readPausedByConsumer = False
    _readClosed = False

    def __init__(
        self,
        sock: socket.socket,
        protocol: Any,
        client: tuple[object, ...],
        server: Any,
        sessionno: int,
        reactor: Any,
    ) -> None:
        super().__init__(sock, protocol, client, server, sessionno, reactor)
        guard: Guard = server.guard
        self.guard = guard
        self.maxWriteBuffer = guard.maxWriteBuffer
        self.openedAt = guard.clock.seconds()
        guard.registry.add(self)

    def pendingBytes(self) -> int:
        """
        How many bytes are queued in user space for this peer.
        """
        return len(self.dataBuffer) - self.offset + self._tempDataLen

    def doRead(self) -> Any:
        try:
            data = self.socket.recv(self.bufferSize)
        except OSError as e:
            if e.errno == errno.EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.bytesReceived += len(data)
        self.protocol.dataReceived(data)
        return None

    def write(self, data: bytes) -> None:
        if self.TLS:
            # STARTTLS turned this connection into a TLS one; Twisted's own
            # layering routes the bytes.
            super().write(data)
            return
        if not self.connected or self._writeDisconnected or not data:
            return
        if not self.dataBuffer and not self._tempDataLen:
            try:
                sent = self.socket.send(data)
            except OSError:
                # Queue it all: doWrite retries when the socket is writable,
                # and reports a real error (EPIPE, ECONNRESET) as a lost
                # connection from inside the reactor, where telling the
                # protocol cannot re-enter the code that called write().
                sent = 0
            else:
                self.bytesSent += sent
                if sent == len(data):
                    return
            data = data[sent:]
        self._tempDataBuffer.append(data)
        self._tempDataLen += len(data)
        self._maybePauseProducer()
        if not self._readPausedByGuard and self.pendingBytes() > self.maxWriteBuffer:
            self._readPausedByGuard = True
            self.stopReading()
        self.startWriting()

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))

    def writeSomeData(self, data: bytes) -> Any:
        try:
            sent = self.socket.send(memoryview(data)[: self.SEND_LIMIT])
        except OSError as e:
            if e.errno in _RETRY_LATER:
                return 0
            return main.CONNECTION_LOST
        self.bytesSent += sent
        return sent

    def doWrite(self) -> Any:
        result = super().doWrite()
        if self._readPausedByGuard and self.pendingBytes() <= self.maxWriteBuffer // 2:
            self._readPausedByGuard = False
            self._maybeResumeReading()
        return result

    def _isSendBufferFull(self) -> bool:
        """
        A registered streaming producer is paused at Twisted's usual mark,
        or at the guard's limit when that is lower.
        """
        return self.pendingBytes() > min(self.bufferSize, self.maxWriteBuffer)

    def _maybeResumeReading(self) -> None:
        if (
            self.connected
            and not self.disconnecting
            and not self._readClosed
            and not self._readPausedByGuard
            and not self._readPausedByConsumer
        ):
            self.startReading()

    def pauseProducing(self) -> None:
        self._readPausedByConsumer = True
        self.stopReading()

    def resumeProducing(self) -> None:
        self._readPausedByConsumer = False
        self._maybeResumeReading()

    def readConnectionLost(self, reason: Failure) -> None:
        self._readClosed = True
        if IHalfCloseableProtocol(self.protocol, None) is not None:
            super().readConnectionLost(reason)
        else:
            self.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        if not hasattr(self, "socket"):
            return
        try:
            super().connectionLost(reason)
        finally:
            self.guard.registry.remove(self, reason)


class GuardedUNIXServer(GuardedServer, unix.Server):
    """
    L{GuardedServer} for UNIX-domain connections.  File descriptor passing
    (C{sendFileDescriptor}) is not supported on guarded connections.
    """


class GuardedTCPPort(tcp.Port):
    """
    A TCP listening port whose connections are L{GuardedServer}s.

    @ivar guard: set by L{GuardingReactor} before the port starts listening.
    """

    transport = GuardedServer
    guard: Guard


class GuardedUNIXPort(unix.Port):
    """
    A UNIX-domain listening port whose connections are L{GuardedUNIXServer}s.
    """

    transport = GuardedUNIXServer
    guard: Guard


class GuardingReactor:
    """
    A reactor for C{serverFromString} that makes guarded ports.

    Every other attribute is the real reactor's, so endpoint parsers and
    endpoints behave exactly as they do with it.  Twisted's own C{listenSSL}
    and C{adoptStreamPort} build their ports internally; here they are
    spelled out so that TLS and adopted (systemd) sockets get guarded ports
    too.
    """

    def __init__(self, reactor: Any, guard: Guard) -> None:
        self._reactor = reactor
        self._guard = guard

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def _start(self, port: Any) -> IListeningPort:
        port.guard = self._guard
        port.startListening()
        listening: IListeningPort = port
        return listening

    def listenTCP(
        self,
        port: int,
        factory: IProtocolFactory,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        return self._start(
            GuardedTCPPort(port, factory, backlog, interface, self._reactor)
        )

    def listenUNIX(
        self,
        address: Any,
        factory: IProtocolFactory,
        backlog: int = 50,
        mode: int = 0o666,
        wantPID: int = 0,
    ) -> IListeningPort:
        return self._start(
            GuardedUNIXPort(address, factory, backlog, mode, self._reactor, wantPID)
        )

    def listenSSL(
        self,
        port: int,
        factory: IProtocolFactory,
        contextFactory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        tlsFactory = TLSMemoryBIOFactory(contextFactory, False, factory)
        listening = self.listenTCP(port, tlsFactory, backlog, interface)
        listening._type = "TLS"  # type: ignore[attr-defined]
        return listening

    def adoptStreamPort(
        self, fileDescriptor: int, addressFamily: int, factory: IProtocolFactory
    ) -> IListeningPort:
        if addressFamily == socket.AF_UNIX:
            port = GuardedUNIXPort._fromListeningDescriptor(
                self._reactor, fileDescriptor, factory
            )
        elif addressFamily in (socket.AF_INET, socket.AF_INET6):
            port = GuardedTCPPort._fromListeningDescriptor(
                self._reactor, fileDescriptor, addressFamily, factory
            )
        else:
            from twisted.internet.error import UnsupportedAddressFamily

            raise UnsupportedAddressFamily(addressFamily)
        return self._start(port)
