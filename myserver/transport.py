# -*- test-case-name: tests.test_guard,tests.test_core,tests.test_backpressure -*-
"""
The guarded transport: Twisted's TCP (and UNIX) server connection with the
listener's policy folded into its read and write paths.

Protocol plugins are plain Twisted protocols and never see the guard.  The
guard does not wrap them: it is the transport.  L{myserver.ports} makes
every endpoint type C{serverFromString} knows (tcp, tcp6, unix, ssl,
systemd, haproxy) accept its connections as L{GuardedServer}s, whose read
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

Twisted internals this module relies on (checked to exist, with the kind
expected, by C{tests.test_twistedcontract}):

  - subclassing C{tcp.Server} and C{unix.Server}: there is no public way to
    give an endpoint's port another transport class;
  - the write queue of C{abstract.FileDescriptor}: C{dataBuffer}, C{offset},
    C{_tempDataBuffer}, C{_tempDataLen} (how many bytes are queued, and the
    list C{write} appends to, as Twisted's own C{write} does) and
    C{_writeDisconnected} (C{loseWriteConnection} was called);
  - C{SEND_LIMIT}, the most C{doWrite} hands to one C{send};
  - C{_newtls.startTLS(transport, ctx, normal, bypass)}, the function
    Twisted's own C{startTLS} calls, given our guarded write path as the
    base class the TLS layer sends its ciphertext through.

Registered producers are paused through the documented C{producer},
C{streamingProducer} and C{producerPaused} attributes of
L{twisted.internet.abstract.FileDescriptor}, not by overriding its private
C{_isSendBufferFull}.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import _newtls, abstract, main, tcp, unix
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python.failure import Failure

from myserver.budget import NORMAL, OutputBudget
from myserver.policy import Guard

_RETRY_LATER = (errno.EWOULDBLOCK, errno.ENOBUFS)
_CONNECTION_DONE = Failure(main.CONNECTION_DONE)


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
    # What this connection has added to the output budget's total.
    queuedCounted = 0
    abortedForOverload = False
    # Set by the handshake sweep once no layer is in its handshake.
    pastHandshake = False
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
        self.budget: OutputBudget = guard.budget
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
        pending = self.pendingBytes()
        budget = self.budget
        budget.queued += pending - self.queuedCounted
        self.queuedCounted = pending
        mark = self.maxWriteBuffer
        if budget.queued > budget.pressureAbove:
            mark = budget.pressed(mark, self._readPausedByGuard)
            if self._writeDisconnected:
                return  # Aborted by the budget, this one among the largest.
        producer = self.producer
        if (
            producer is not None
            and self.streamingProducer
            and pending > min(self.bufferSize, mark)
        ):
            # Twisted's own mark, or the guard's when that is lower.
            self.producerPaused = True
            producer.pauseProducing()  # type: ignore[attr-defined]
        if not self._readPausedByGuard and pending > mark:
            self._readPausedByGuard = True
            self.stopReading()
        self.startWriting()

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))

    def startTLS(self, ctx: Any, normal: bool = True) -> None:
        """
        STARTTLS, as Twisted's, except that the TLS layer sends its
        ciphertext through this transport's guarded write path (counted,
        under the write mark and the output budget), not around it.
        """
        _newtls.startTLS(self, ctx, normal, _GuardedCiphertext)
        # The protocol's plaintext now goes into the TLS layer first, as in
        # Twisted's own transports once TLS has started.
        self.write = tcp.Connection.write.__get__(self)  # type: ignore[method-assign]
        self.writeSequence = tcp.Connection.writeSequence.__get__(self)  # type: ignore[method-assign]

    def abortConnection(self) -> None:
        # Nothing more is queued for a connection being aborted: its close
        # comes a reactor turn later, and the budget that may have asked
        # for it counts on its queue not growing meanwhile.
        self._writeDisconnected = True
        super().abortConnection()

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
        pending = self.pendingBytes()
        budget = self.budget
        budget.queued += pending - self.queuedCounted
        self.queuedCounted = pending
        if self._readPausedByGuard and pending <= (
            budget.markFor(self.maxWriteBuffer) // 2
        ):
            self._readPausedByGuard = False
            self._maybeResumeReading()
        if budget.state != NORMAL:
            budget.relieved()
        return result

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
            budget = self.budget
            budget.queued -= self.queuedCounted
            self.queuedCounted = 0
            if budget.state != NORMAL:
                budget.relieved()
            self.guard.closed(self, reason)


class _GuardedCiphertext:
    """
    What Twisted's TLS layer sends through once a protocol has called
    C{startTLS} (its "bypass" base, whose methods it calls with the
    connection): the guarded path a plaintext connection writes through.
    """

    write = GuardedServer.write
    loseConnection = abstract.FileDescriptor.loseConnection
    registerProducer = abstract.FileDescriptor.registerProducer
    unregisterProducer = abstract.FileDescriptor.unregisterProducer

    @staticmethod
    def writeSequence(connection: GuardedServer, iovec: Any) -> None:
        GuardedServer.write(connection, b"".join(iovec))


class GuardedUNIXServer(GuardedServer, unix.Server):
    """
    L{GuardedServer} for UNIX-domain connections.  File descriptor passing
    (C{sendFileDescriptor}) is not supported on guarded connections.
    """

    isTCP = False
