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
    is logged (rate-limited) with the protocol's name, and counted;
  - a cheap connection: served on its descriptor, with no socket object
    unless something asks for one (L{GuardedServer.socket}); no log strings
    formatted at accept; and a close after the peer's EOF that costs an
    C{epoll_ctl(DEL)} and one C{close}, no C{shutdown} (see
    L{GuardedServer.loseConnection} and L{GuardedServer.connectionLost}).

Twisted internals this module relies on (checked to exist, with the kind
expected, by C{tests.test_twistedcontract}):

  - subclassing C{tcp.Server} and C{unix.Server}: there is no public way to
    give an endpoint's port another transport class;
  - the write queue of C{abstract.FileDescriptor}: C{dataBuffer}, C{offset},
    C{_tempDataBuffer}, C{_tempDataLen} (how many bytes are queued, and the
    list C{write} appends to, as Twisted's own C{write} does) and
    C{_writeDisconnected} (C{loseWriteConnection} was called);
  - C{SEND_LIMIT}, the most C{doWrite} hands to one C{send};
  - what C{tcp.Server.__init__} (with C{tcp.Connection.__init__} and
    C{abstract.FileDescriptor.__init__}) sets, which L{GuardedServer}'s
    constructor sets itself, minus the eagerly formatted C{logstr} and
    C{repstr} (made on demand here); the contract test pins the source of
    those three constructors, so that an upgrade adding an attribute fails
    loudly;
  - C{_SocketCloser._closeSocket(orderly)}, overridden to skip the
    C{shutdown(2)} when the peer's EOF has been read;
  - C{_TLSConnectionMixin.TLS}, whether C{startTLS} was called;
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
import os
import socket
from typing import Any

from twisted.internet import _newtls, abstract, address, main, tcp, unix
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python.failure import Failure

from myserver.budget import NORMAL
from myserver.policy import Guard
from myserver.registry import CONNECTION_DONE

_RETRY_LATER = (errno.EWOULDBLOCK, errno.ENOBUFS)
# What a read asks for: Twisted's bufferSize, the class's, set on each
# connection from here (the output budget lowers it while overloaded).
_READ_SIZE = abstract.FileDescriptor.bufferSize
_providesHalfClose = IHalfCloseableProtocol.providedBy


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
    # loseConnection was asked from inside the protocol and only marked.
    _closeMarked = False
    _aborted = False

    def __init__(
        self,
        sock: socket.socket | int,
        protocol: Any,
        client: tuple[object, ...],
        server: Any,
        sessionno: int,
        reactor: Any,
    ) -> None:
        """
        What C{tcp.Server.__init__} does, set directly: Twisted's formats
        two strings per connection (C{logstr} and C{repstr}, with an
        interface lookup for the log prefix) that only a log line or a
        C{repr} ever reads; here they are made when asked for.  The
        attributes read on every message are set on the instance, where
        CPython 3.11 finds them by a specialised lookup (a class attribute
        read through an instance takes the generic path), and so are those
        its close reads.  But not many more: 3.11 keeps an instance's
        attributes in a compact array whose names its class shares, up to
        30 names over every instance that ever set one (27 by a usual
        connection's close, a few more on rarer paths: an idle sweep's
        mark, a queue's offset); an instance that sets a name past those
        builds a dictionary of its own, and every specialised lookup on it
        falls back, which costs more than the lookups it would save
        (tried: 7 more attributes here added 6,000 instructions per
        connection).  So what can be derived is not stored (C{hostname},
        the output budget: the guard's).

        @param sock: the accepted connection's descriptor, as the accept
            loop passes it: the C{socket.socket} around it is made only if
            something asks for C{socket} (see L{socket}).  Or a socket
            object, or a stand-in for one (the in-memory test kit's).
        """
        self.reactor = reactor
        self._tempDataBuffer: list[bytes] = []
        self._tempDataLen = 0
        self.dataBuffer = b""
        self._writeDisconnected = False
        # Booleans where Twisted sets 0 and 1: tested on every message, and
        # CPython jumps on True and False without calling their __bool__.
        self.disconnecting = False
        self.bufferSize = _READ_SIZE
        self.bytesReceived = 0
        self.bytesSent = 0
        self.queuedCounted = 0
        self._inProtocol = False
        # Read when the connection closes: set here, each lookup is
        # specialised; left to the class, each takes the generic path.
        self.producer = None
        self.TLS = False
        if isinstance(sock, int):
            self._socket: Any = None
            self._fd = sock
            # One ioctl(FIONBIO) on Linux, where socket.socket's
            # constructor and setblocking cost a getsockname and the same
            # ioctl.
            os.set_blocking(sock, False)
            # read(2) and write(2) on the descriptor: os.read and os.write
            # parse their arguments through Argument Clinic, where
            # socket.recv and socket.send use the generic PyArg_ParseTuple
            # (about 500 instructions per echoed message under callgrind,
            # of some 12,000).  On a connected stream socket they are recv
            # and send without flags.
            self._io: Any = os
        else:
            # A stand-in socket provides read(fd, size) and write(fd, data)
            # itself.
            self._socket = sock
            sock.setblocking(False)
            self._fd = sock.fileno()
            self._io = os if isinstance(sock, socket.socket) else sock
        self.protocol = protocol
        if len(client) != 2:
            self._addressType = address.IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        guard: Guard = server.guard
        self.guard = guard
        self.maxWriteBuffer = guard.maxWriteBuffer
        # A plain attribute holding a function: looked up as one, then
        # called (a method call's lookup, LOAD_METHOD, is not specialised
        # for it).
        now = guard.now
        self.openedAt = self.activeAt = now()
        readNew = getattr(reactor, "readNewDescriptor", None)
        if readNew is None:
            self.startReading()
        else:
            readNew(self, self._fd)
        self.connected = True
        # The class's isTCP last: read through an instance, a class attribute
        # takes the generic lookup, and a listener whose sockets inherit
        # TCP_NODELAY (most) makes it unnecessary.
        if guard.noDelay and not server.noDelayInherited and self.isTCP:
            self._setNoDelay()
        guard.opened(self)

    def _setNoDelay(self) -> None:
        """
        Set C{TCP_NODELAY}, for a listening socket whose accepted sockets
        lack it, without keeping a socket object: the descriptor stays the
        transport's own, so that a constructor that fails after this
        leaves the accept loop one descriptor to close, and no object that
        would close it again when collected.
        """
        sock = self._socket
        if sock is None:
            sock = self._wrapDescriptor()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # Already reset by the peer: the first read says so.
        finally:
            if self._socket is None:
                sock.detach()

    def _wrapDescriptor(self) -> socket.socket:
        """
        A socket object around the descriptor, of the family, type and
        protocol of the listening port that accepted it (a
        L{myserver.ports.GuardedPort}); it owns the descriptor from then on
        unless detached.
        """
        port: Any = self.server
        family, kind, proto = port.socketArguments()
        return socket.socket(family, kind, proto, self._fd)

    # Read-only where Twisted's is an attribute: set by the constructor.
    @property
    def socket(self) -> socket.socket:  # type: ignore[override]
        """
        The connection's C{socket.socket}, made the first time something
        asks for it: Twisted's own methods that need one (C{getHost},
        C{getHandle}, C{setTcpNoDelay}, a C{shutdown}), a protocol calling
        C{getHandle}.  A connection that is accepted, echoes and closes
        never makes one: its reads, writes and orderly close act on the
        descriptor.  Once the connection is closed there is none, as in
        Twisted (which deletes the attribute).
        """
        made: socket.socket | None = self._socket
        if made is None:
            if self._fd < 0:
                raise AttributeError("socket: the connection is closed")
            made = self._socket = self._wrapDescriptor()
        return made

    # Read-only where Twisted's is an attribute: set by the constructor.
    @property
    def hostname(self) -> Any:  # type: ignore[override]
        """
        The client's host, as Twisted's C{tcp.Server} names it: read only by
        its log prefix, so not stored per connection.
        """
        return self.client[0]

    def fileno(self) -> int:
        """
        The connection's descriptor; -1 once it is closed, as Twisted's
        C{FileDescriptor.fileno} says then.
        """
        return self._fd

    @property
    def logstr(self) -> str:
        """
        Twisted's log prefix for this connection, made when first asked
        for (legacy logging, or a reactor that keeps the log context).
        """
        made = self.__dict__.get("_logstr")
        if made is None:
            prefix = self._getLogPrefix(self.protocol)
            made = self._logstr = f"{prefix},{self.sessionno},{self.hostname}"
        return made

    @logstr.setter
    def logstr(self, value: str) -> None:
        self._logstr = value

    @property
    def repstr(self) -> str:
        made = self.__dict__.get("_repstr")
        if made is None:
            made = self._repstr = (
                f"<{self.protocol.__class__.__name__} #{self.sessionno} "
                f"on {self.server._realPortNumber}>"
            )
        return made

    @repstr.setter
    def repstr(self, value: str) -> None:
        self._repstr = value

    def __repr__(self) -> str:
        return self.repstr

    def connectProtocol(self) -> None:
        """
        Tell the protocol it is connected (C{makeConnection}); a protocol
        that writes and closes there (daytime, a refusal banner) is closed
        at once, with no reactor turn (see L{loseConnection}).  Called by
        the accept loop.
        """
        self._inProtocol = True
        try:
            self.protocol.makeConnection(self)
        finally:
            self._inProtocol = False
        if self.disconnecting:
            self._closeIfFlushed()

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
            data = self._io.read(self._fd, self.bufferSize)
        except OSError as e:
            if e.errno == errno.EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if not data:
            return self._peerFinished()
        self.bytesReceived += len(data)
        self._inProtocol = True
        try:
            self.protocol.dataReceived(data)
        except Exception:
            # A bug in the protocol ends this connection only.
            self._inProtocol = False
            self.guard.protocolFailed("dataReceived", self.getPeer())
            return main.CONNECTION_LOST
        self._inProtocol = False
        if self.disconnecting:
            self._closeIfFlushed()
        return None

    def doReadToEnd(self) -> Any:
        """
        The peer's data and its EOF are both waiting (the reactor says so:
        L{myserver.reactor.DirectEPollReactor.readNewDescriptor}): read the
        data, and when that read took all there was (fewer bytes than asked
        for: the FIN is all that is left), handle the EOF now, as the next
        read would have on the next wake-up, one wake-up and one C{read}
        fewer.  Not if the connection stopped reading meanwhile (closing,
        paused by the guard or by a consumer): its EOF then waits, as it
        would for Twisted, until it reads again.
        """
        before = self.bytesReceived
        why = self.doRead()
        received = self.bytesReceived - before
        # Not _readClosed: a read that returned data did not find the EOF.
        if (
            why is None
            and 0 < received < self.bufferSize
            and self.connected
            and not self.disconnecting
            and not self._readPausedByGuard
            and not self._readPausedByConsumer
        ):
            return self._peerFinished()
        return why

    def write(self, data: bytes) -> None:
        if self._writeDisconnected or not self.connected:
            return
        # Nothing queued: what is queued is counted into the budget after
        # every write and every doWrite, and nothing else queues, so one
        # int compared with 0 (which CPython specialises) says so.
        if self.queuedCounted == 0:
            # An empty write costs a write(2) that sends nothing; it is too
            # rare to test for on every message.
            try:
                sent = self._io.write(self._fd, data)
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
        if not data:
            return
        self._tempDataBuffer.append(data)
        self._tempDataLen += len(data)
        pending = self.pendingBytes()
        budget = self.guard.budget
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

    def loseConnection(self) -> None:
        """
        Close once what is queued has been sent, as Twisted's does, but
        without Twisted's detour when the protocol asks from inside a call
        this transport made (C{connectionMade}, C{dataReceived}, the peer's
        EOF): Twisted stops reading and registers for write readiness (two
        C{epoll_ctl} calls, a wake-up, an empty C{send}, and a third
        C{epoll_ctl} at the close) even with nothing queued.  Here the
        connection is only marked, and when the protocol returns it is
        closed at once if nothing is queued, or the queue is flushed first,
        as Twisted would.  Asked from anywhere else (a timer, another
        connection), Twisted's own path is taken.
        """
        if (
            self._inProtocol
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and not self.TLS
        ):
            self.disconnecting = 1
            self._closeMarked = True
            return
        super().loseConnection()

    def abortConnection(self) -> None:
        # Nothing more is queued for a connection being aborted: its close
        # comes a reactor turn later, and the budget that may have asked
        # for it counts on its queue not growing meanwhile.
        self._writeDisconnected = True
        self._closeMarked = False
        self._aborted = True
        super().abortConnection()

    def writeSomeData(self, data: bytes) -> Any:
        if not data:
            # Twisted's doWrite asks even when the queue is empty.
            return 0
        try:
            sent = self._io.write(self._fd, memoryview(data)[: self.SEND_LIMIT])
        except OSError as e:
            if e.errno in _RETRY_LATER:
                return 0
            return main.CONNECTION_LOST
        self.bytesSent += sent
        return sent

    def doWrite(self) -> Any:
        if self.disconnected:
            # Closed by the read half of the same event (see loseConnection).
            return None
        result = super().doWrite()
        pending = self.pendingBytes()
        budget = self.guard.budget
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
        why = self._peerFinished()
        if why:
            self.connectionLost(Failure(why))

    def _peerFinished(self) -> Any:
        """
        The peer has shut down its sending side: what Twisted's reactor
        (C{_disconnectSelectable}) and C{tcp.Connection.readConnectionLost}
        do with the EOF, done here by the read that found it, in one call.
        A protocol that provides L{IHalfCloseableProtocol} is told, and the
        connection stays open for its output; any other one has what is
        queued sent, then the close (half-close safety).  Either way the
        connection stops reading: epoll would report the EOF on every turn.

        @return: L{None}, or the reason to drop the connection when the
            protocol raised (logged as its other methods' errors are).
        """
        self._readClosed = True
        protocol: Any = self.protocol
        halfCloseable: IHalfCloseableProtocol | None
        if _providesHalfClose(protocol):
            # What adapting it would return, without the adaptation's
            # failed lookup of __conform__ (an AttributeError made and
            # dropped: some 5,000 instructions per connection).
            halfCloseable = protocol
        else:
            halfCloseable = IHalfCloseableProtocol(protocol, None)
        self._inProtocol = True
        try:
            if halfCloseable is None:
                self.loseConnection()
            else:
                halfCloseable.readConnectionLost()
        except Exception:
            self._inProtocol = False
            self.guard.protocolFailed("readConnectionLost", self.getPeer())
            return main.CONNECTION_LOST
        self._inProtocol = False
        self._closeIfFlushed()
        if self.connected:
            self.stopReading()
        return None

    def _closeIfFlushed(self) -> None:
        """
        Called from the reactor once the protocol has returned, when it may
        have asked to close: close now if nothing is queued (this cannot
        re-enter the protocol).  A close that L{loseConnection} only marked
        and that must wait for the queue or a producer takes Twisted's way
        now: stop reading, and close once the queue has been sent.
        """
        if not (self.disconnecting and self.connected) or (
            # An abort closes writing first: _aborted, a class attribute
            # until then, is read only for a connection that did either.
            self._writeDisconnected and self._aborted
        ):
            return
        if (
            self.producer is None
            and not self.TLS
            and not self._tempDataLen
            and (not self.dataBuffer or len(self.dataBuffer) == self.offset)
        ):
            # Nothing queued (pendingBytes, inline; the class's offset is
            # read only when something was).
            self.connectionLost(CONNECTION_DONE)
        elif self._closeMarked:
            self._closeMarked = False
            self.stopReading()
            self.startWriting()

    def _closeSocket(self, orderly: bool) -> None:
        """
        Twisted's, minus the C{shutdown(2)} when the peer's EOF has been
        read: nothing unread can then be waiting, so C{close} alone sends
        the FIN that C{shutdown} would have, one system call fewer.  With
        input possibly unread, Twisted's C{shutdown} then C{close} is kept:
        the peer gets what was written and a FIN, then the reset the kernel
        sends for the unread bytes, exactly as from Twisted.
        """
        if orderly and self._readClosed:
            try:
                self.socket.close()
            except OSError:
                pass
        else:
            super()._closeSocket(orderly)

    def connectionLost(self, reason: Failure) -> None:
        """
        C{tcp.Connection.connectionLost} with C{abstract.FileDescriptor}'s
        (their code is pinned by C{tests.test_twistedcontract}), in one
        call instead of a dozen: the reactor forgets the descriptor for
        reading and writing at once when it can (L{myserver.reactor}'s
        C{removeSelectable}, one C{epoll_ctl}), and an abort is told from an orderly
        close by its type, not by C{Failure.check}'s walk of qualified
        names.  Then the guard's accounting, whatever the protocol did.
        """
        if self._fd < 0:
            # Closed already (an abort, then an error reaching the reactor).
            return
        try:
            self.disconnected = True
            self.connected = False
            if self.producer is not None:
                self.producer.stopProducing()
                self.producer = None
            # Failure is a BaseException subclass (in every Twisted version
            # CI tests, 24.7 on), whose attribute reads CPython 3.11 does
            # not specialise: the usual reason, this module's own, is known
            # without reading its value.
            orderly = reason is CONNECTION_DONE or not isinstance(
                reason.value, ConnectionAborted
            )
            # An orderly close after the peer's EOF, of a descriptor that no
            # socket object shares: os.close alone (see _closeSocket).
            bare = orderly and self._readClosed and self._socket is None
            removeSelectable = getattr(self.reactor, "removeSelectable", None)
            if removeSelectable is None:
                self.stopReading()
                self.stopWriting()
            else:
                removeSelectable(self)
            if bare:
                try:
                    os.close(self._fd)
                except OSError:
                    pass
            else:
                self._closeSocket(orderly)
            self._fd = -1
            self._socket = None
            protocol = self.protocol
            del self.protocol
            protocol.connectionLost(reason)
        except Exception:
            # The protocol's connectionLost raised: the connection is closed
            # all the same; say which protocol, as for its other methods.
            self.guard.protocolFailed("connectionLost", self.getPeer())
        finally:
            budget = self.guard.budget
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

    def __init__(
        self,
        sock: socket.socket | int,
        protocol: Any,
        client: Any,
        server: Any,
        sessionno: int,
        reactor: Any,
    ) -> None:
        # What unix.Server.__init__ adds to tcp.Server's.
        self._sendmsgQueue: list[int] = []
        super().__init__(sock, protocol, (client, None), server, sessionno, reactor)
