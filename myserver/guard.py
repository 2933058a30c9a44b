"""
Per-connection policy, applied in the transport itself.

Protocol plugins are plain Twisted protocols and never see the guard.  The
guard does not wrap them: it is the transport.  L{myserver.ports} makes
Twisted's endpoints (every type C{serverFromString} knows: tcp, tcp6, unix,
ssl, systemd, haproxy) accept connections as L{GuardedServer}s, whose read
and write paths are Twisted's own with the policy folded in, at the cost of
a few attribute updates per read or write:

  - accounting: bytes in and out, kept as plain integers;
  - bounded output: above C{max_write_buffer} bytes queued for a peer, the
    server stops reading from that peer until the queue has drained to half
    of it, so a client that sends without reading cannot grow the server;
  - write-through: when nothing is queued, C{write} sends at once and queues
    only what the kernel did not take, so an echo costs one C{recv} and one
    C{send} instead of waiting a reactor turn for write readiness;
  - half-close safety: when the peer shuts down its sending side, a protocol
    that does not provide L{IHalfCloseableProtocol} has its queued output
    flushed before the connection closes, instead of losing it;
  - isolation: an exception in the protocol closes that connection only, and
    is logged (rate-limited) with the protocol's name, and counted.

Idle connections are found by a periodic sweep that compares byte counters,
so the hot path never touches a timer.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Any

from twisted.internet import main, tcp, unix
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from myserver.admission import Admission, hostOf
from myserver.interfaces import IConnectionRegistry
from myserver.logs import RateLimitedLog

if TYPE_CHECKING:
    from myserver.ports import GuardedPort

_RETRY_LATER = (errno.EWOULDBLOCK, errno.ENOBUFS)
log = Logger(namespace="myserver.guard")
_CONNECTION_DONE = Failure(main.CONNECTION_DONE)

# Why connections end early, as counted and logged.
DESCRIPTORS_EXHAUSTED = "descriptors_exhausted"
PROTOCOL_ERROR = "protocol_error"


class Guard:
    """
    The policy for the connections of one listener.  Every listener has its
    own (its settings may differ); all share the server's registry, which
    holds the total count and the drain.

    @ivar protocolName: the protocol served, for logs.
    @ivar maxWriteBuffer: bytes queued for one peer above which reading from
        that peer pauses.
    @ivar idleTimeout: seconds without a byte either way after which a
        connection is closed; 0 for never.
    @ivar maxConnections: this listener's own cap on open connections, or 0
        for none (the server's total cap applies either way).
    @ivar admission: who may connect.
    @ivar noDelay: set TCP_NODELAY on accepted TCP connections, so that a
        small reply leaves at once instead of waiting for Nagle's algorithm.
    @ivar registry: told of every connection opened and closed.
    @ivar clock: the time source for durations and idleness.
    @ivar connections: this listener's open connections.
    @ivar ports: this listener's listening ports.
    @ivar rejected: connections refused or cut short, by reason.
    @ivar idleClosed: connections closed for being idle.
    """

    def __init__(
        self,
        registry: IConnectionRegistry,
        clock: IReactorTime,
        *,
        protocolName: str = "",
        maxWriteBuffer: int = 1024 * 1024,
        idleTimeout: float = 0.0,
        maxConnections: int = 0,
        admission: Admission | None = None,
        noDelay: bool = True,
    ) -> None:
        self.registry = registry
        self.noDelay = noDelay
        self.clock = clock
        self.protocolName = protocolName
        self.maxWriteBuffer = maxWriteBuffer
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
        self.admission = admission or Admission()
        self.connections: set[GuardedServer] = set()
        self.ports: set[GuardedPort] = set()
        self.rejected: dict[str, int] = {}
        self.idleClosed = 0
        self.warnings = RateLimitedLog(log, clock)

    def reconfigure(
        self,
        maxWriteBuffer: int,
        idleTimeout: float,
        maxConnections: int,
        admission: Admission,
    ) -> None:
        """
        Apply new settings without closing anything: open connections get
        the new write-buffer mark, the per-address counts are rebuilt under
        the new prefixes, and a listener given more room accepts again.
        """
        self.maxWriteBuffer = maxWriteBuffer
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
        counts: dict[tuple[int, int], int] = {}
        for connection in self.connections:
            connection.maxWriteBuffer = maxWriteBuffer
            host = hostOf(connection.getPeer()) if admission.maxPerAddress else None
            key = connection.addressKey = admission.addressKey(host) if host else None
            if key is not None:
                counts[key] = counts.get(key, 0) + 1
        admission.openByAddress = counts
        self.admission = admission
        for port in list(self.ports):
            port.maybeResumeAccepting()

    def room(self) -> int:
        """
        How many more connections this listener may accept now.
        """
        room: int = self.registry.room()
        if self.maxConnections:
            room = min(room, self.maxConnections - len(self.connections))
        return room

    def count(self, reason: str, number: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + number

    def refuse(self, reason: str, peer: Any) -> None:
        """
        Count and (rate-limited) log a refused connection.
        """
        self.count(reason)
        self.warnings.emit(
            reason,
            LogLevel.warn,
            "refused a connection from {peer}: {reason}",
            peer=hostOf(peer) or str(peer),
            reason=reason,
        )

    def protocolFailed(self, where: str, peer: Any) -> None:
        """
        The protocol raised; called from inside the C{except} block, so the
        traceback is the protocol's.  Count it, and log it with the
        protocol's name (rate-limited, so a protocol failing on every
        connection cannot flood the log).
        """
        self.count(PROTOCOL_ERROR)
        self.warnings.emit(
            f"{PROTOCOL_ERROR}:{where}",
            LogLevel.error,
            "protocol {protocol} raised an exception in {where} for {peer}; "
            "that connection is closed, the others are unaffected",
            failure=Failure(),
            protocol=self.protocolName,
            where=where,
            peer=hostOf(peer) or str(peer),
        )

    def opened(self, connection: GuardedServer) -> None:
        if not getattr(connection.server, "proxied", False):
            self._countAddress(connection, connection.getPeer())
        self.connections.add(connection)
        self.registry.add(connection)
        if self.maxConnections and len(self.connections) >= self.maxConnections:
            for port in self.ports:
                port.stopReading()  # type: ignore[attr-defined]

    def _countAddress(self, connection: GuardedServer, peer: Any) -> None:
        admission = self.admission
        if admission.maxPerAddress and (host := hostOf(peer)):
            key = admission.addressKey(host)
            connection.addressKey = key
            admission.openByAddress[key] = admission.openByAddress.get(key, 0) + 1

    def admitProxied(self, connection: GuardedServer, peer: Any) -> None:
        """
        The PROXY header of C{connection} names its real client, C{peer},
        which the admission rules have let in: count it against the
        per-address limit, and name it in logs.
        """
        connection.realPeer = peer
        self._countAddress(connection, peer)

    def closed(self, connection: GuardedServer, reason: Failure) -> None:
        key = connection.addressKey
        if key is not None:
            counts = self.admission.openByAddress
            remaining = counts[key] - 1
            if remaining:
                counts[key] = remaining
            else:
                del counts[key]
        self.connections.discard(connection)
        self.registry.remove(connection, reason)
        if self.maxConnections and len(self.connections) == self.maxConnections - 1:
            for port in list(self.ports):
                port.maybeResumeAccepting()

    def sweepIdle(self) -> int:
        """
        Close every connection that has moved no byte either way for
        C{idleTimeout} seconds.  A connection whose peer stopped reading
        while output is queued for it moves no byte either, so it is closed
        too, and its queue freed.  Called periodically; a connection's
        activity is noticed at the first sweep after it happens.

        @return: how many connections were closed.
        """
        now = self.clock.seconds()
        closed = 0
        for connection in list(self.connections):
            moved = connection.bytesReceived + connection.bytesSent
            if moved != connection.bytesMovedAtSweep:
                connection.bytesMovedAtSweep = moved
                connection.activeAt = now
            elif now - connection.activeAt >= self.idleTimeout:
                closed += 1
                if connection.disconnecting or connection.pendingBytes():
                    connection.abortConnection()
                else:
                    connection.loseConnection()
        self.idleClosed += closed
        return closed


class GuardedServer(tcp.Server):
    """
    A server-side TCP transport that applies its listener's L{Guard}.

    @ivar bytesReceived: bytes read from the peer so far.
    @ivar bytesSent: bytes the kernel accepted for the peer so far.
    @ivar openedAt: when the connection was accepted (the guard's clock).
    """

    # Errors are isolated here, and logs use twisted.logger: the reactor
    # may skip the legacy log context (L{myserver.reactor}).
    directDispatch = True
    isTCP = True
    bytesReceived = 0
    bytesSent = 0
    bytesMovedAtSweep = 0
    addressKey: tuple[int, int] | None = None
    # The client behind a PROXY-protocol proxy, once its header is read.
    realPeer: Any = None
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
        self.openedAt = self.activeAt = guard.clock.seconds()
        if guard.noDelay and self.isTCP:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # Already reset by the peer: the first read says so.
        guard.opened(self)

    def clientAddress(self) -> Any:
        """
        The client's address: the one a PROXY header named, if any.
        """
        return self.realPeer or self.getPeer()

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
        try:
            self.protocol.dataReceived(data)
        except Exception:
            # A bug in the protocol ends this connection only.
            self.guard.protocolFailed("dataReceived", self.getPeer())
            return main.CONNECTION_LOST
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
        if not data:
            # Twisted's doWrite asks even when the queue is empty.
            return 0
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
        self._closeIfFlushed()

    def _closeIfFlushed(self) -> None:
        """
        Close now if a close is only waiting for an empty queue.  Twisted's
        loseConnection always waits a reactor turn for write readiness
        (two epoll_ctl calls, a wake-up and an empty send per connection);
        called from the reactor, not from inside a protocol, this is safe to
        do at once.
        """
        if (
            self.disconnecting
            and self.connected
            and self.producer is None
            and not self.TLS
            and not self.pendingBytes()
        ):
            self.connectionLost(_CONNECTION_DONE)

    def connectionLost(self, reason: Failure) -> None:
        if not hasattr(self, "socket"):
            return
        try:
            super().connectionLost(reason)
        except Exception:
            # The protocol's connectionLost raised: the connection is closed
            # all the same; say which protocol, as for its other methods.
            self.guard.protocolFailed("connectionLost", self.getPeer())
        finally:
            self.guard.closed(self, reason)


class GuardedUNIXServer(GuardedServer, unix.Server):
    """
    L{GuardedServer} for UNIX-domain connections.  File descriptor passing
    (C{sendFileDescriptor}) is not supported on guarded connections.
    """

    isTCP = False
