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

At accept time, the guard decides who gets in (allow and deny networks, the
per-address limit: a refused peer is closed before any of its bytes is
read), and its ports never accept more than C{max_connections} in all.  Idle
connections are found by a periodic sweep that compares byte counters, so
the hot path never touches a timer.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any, cast

from twisted.internet import main, tcp, unix
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
)
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure

from myserver.config import Network
from myserver.interfaces import IConnectionRegistry
from myserver.logs import RateLimitedLog

_RETRY_LATER = (errno.EWOULDBLOCK, errno.ENOBUFS)
log = Logger(namespace="myserver.guard")

# Reasons a connection is refused, as counted and logged.
DENIED = "deny"
NOT_ALLOWED = "not_allowed"
PER_IP_LIMIT = "max_connections_per_ip"
DESCRIPTORS_EXHAUSTED = "descriptors_exhausted"


class Admission:
    """
    Who may connect: allow and deny networks (deny wins) and the number of
    open connections per client address, where an address is its IPv4 or
    IPv6 prefix of the configured length (one IPv6 host owns a whole /64).
    IPv4-mapped IPv6 peers (on dual-stack listeners) count as IPv4.

    @ivar openByAddress: open connections by address key.
    """

    def __init__(
        self,
        allow: tuple[Network, ...] = (),
        deny: tuple[Network, ...] = (),
        maxPerAddress: int = 0,
        ipv4Prefix: int = 32,
        ipv6Prefix: int = 64,
    ) -> None:
        self.allow = allow
        self.deny = deny
        self.maxPerAddress = maxPerAddress
        self._shift = {4: 32 - ipv4Prefix, 6: 128 - ipv6Prefix}
        self.openByAddress: dict[tuple[int, int], int] = {}

    @property
    def active(self) -> bool:
        """
        Whether any rule applies; when none does, accepting skips admission.
        """
        return bool(self.allow or self.deny or self.maxPerAddress)

    @staticmethod
    def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        ip = ipaddress.ip_address(host.partition("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ip

    def addressKey(self, host: str) -> tuple[int, int]:
        """
        The per-address limit's key for C{host}: its prefix.
        """
        ip = self._ip(host)
        return (ip.version, int(ip) >> self._shift[ip.version])

    def refusal(self, host: str | None) -> str | None:
        """
        @return: why a new connection from C{host} is refused, or L{None}.
            Peers without an IP address (UNIX sockets) are always admitted.
        """
        if host is None:
            return None
        ip = self._ip(host)
        if any(ip in network for network in self.deny):
            return DENIED
        if self.allow and not any(ip in network for network in self.allow):
            return NOT_ALLOWED
        if self.maxPerAddress:
            key = (ip.version, int(ip) >> self._shift[ip.version])
            if self.openByAddress.get(key, 0) >= self.maxPerAddress:
                return PER_IP_LIMIT
        return None


def hostOf(address: Any) -> str | None:
    """
    The IP address of a peer, or L{None} for peers that have none.
    """
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


class Guard:
    """
    The policy shared by the connections of a server.

    @ivar maxWriteBuffer: bytes queued for one peer above which reading from
        that peer pauses.
    @ivar idleTimeout: seconds without a byte either way after which a
        connection is closed; 0 for never.
    @ivar admission: who may connect.
    @ivar registry: told of every connection opened and closed.
    @ivar clock: the time source for durations and idleness.
    @ivar rejected: connections refused, by reason.
    @ivar idleClosed: connections closed for being idle.
    """

    def __init__(
        self,
        maxWriteBuffer: int,
        registry: IConnectionRegistry,
        clock: IReactorTime,
        idleTimeout: float = 0.0,
        admission: Admission | None = None,
    ) -> None:
        self.maxWriteBuffer = maxWriteBuffer
        self.registry = registry
        self.clock = clock
        self.idleTimeout = idleTimeout
        self.admission = admission or Admission()
        self.rejected: dict[str, int] = {}
        self.idleClosed = 0
        self.warnings = RateLimitedLog(log, clock)

    def refuse(self, reason: str, peer: Any) -> None:
        """
        Count and (rate-limited) log a refused connection.
        """
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.warnings.emit(
            reason,
            LogLevel.warn,
            "refused a connection from {peer}: {reason}",
            peer=hostOf(peer) or str(peer),
            reason=reason,
        )

    def opened(self, connection: GuardedServer) -> None:
        admission = self.admission
        if admission.maxPerAddress and (host := hostOf(connection.getPeer())):
            key = admission.addressKey(host)
            connection.addressKey = key
            admission.openByAddress[key] = admission.openByAddress.get(key, 0) + 1
        self.registry.add(connection)

    def closed(self, connection: GuardedServer, reason: Failure) -> None:
        key = connection.addressKey
        if key is not None:
            counts = self.admission.openByAddress
            remaining = counts[key] - 1
            if remaining:
                counts[key] = remaining
            else:
                del counts[key]
        self.registry.remove(connection, reason)

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
        for connection in list(self.registry.connections):
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


class AdmittingFactory:
    """
    Wraps a listening port's factory to refuse peers before a protocol is
    built: returning L{None} from C{buildProtocol} makes the port close the
    new socket at once, before any byte is read.
    """

    def __init__(self, factory: IProtocolFactory, guard: Guard) -> None:
        self.factory = factory
        self.guard = guard

    def buildProtocol(self, addr: Any) -> Any:
        reason = self.guard.admission.refusal(hostOf(addr))
        if reason is not None:
            self.guard.refuse(reason, addr)
            return None
        return self.factory.buildProtocol(addr)

    def doStart(self) -> None:
        self.factory.doStart()

    def doStop(self) -> None:
        self.factory.doStop()

    def logPrefix(self) -> str:
        prefix = getattr(self.factory, "logPrefix", None)
        return prefix() if prefix is not None else type(self.factory).__name__


class GuardedServer(tcp.Server):
    """
    A server-side TCP transport that applies its listener's L{Guard}.

    @ivar bytesReceived: bytes read from the peer so far.
    @ivar bytesSent: bytes the kernel accepted for the peer so far.
    @ivar openedAt: when the connection was accepted (the guard's clock).
    """

    bytesReceived = 0
    bytesSent = 0
    bytesMovedAtSweep = 0
    addressKey: tuple[int, int] | None = None
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
        guard.opened(self)

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
            self.guard.closed(self, reason)


class GuardedUNIXServer(GuardedServer, unix.Server):
    """
    L{GuardedServer} for UNIX-domain connections.  File descriptor passing
    (C{sendFileDescriptor}) is not supported on guarded connections.
    """


class GuardedPort:
    """
    Mixed into listening ports: never accept more connections than the
    registry has room for, and back off instead of spinning when accept()
    fails for want of descriptors.

    Twisted's port accepts up to C{numberAccepts} connections per wake-up
    (a number it grows under load), so pausing the port when the limit is
    reached would overshoot it by a batch: the batch is capped instead.
    Its accept-error events (EMFILE recovery, failed accepts) are logged
    through the guard's rate limiter rather than once per connection.

    @ivar guard: set by L{GuardingReactor} before the port starts listening.
    """

    guard: Guard
    numberAccepts: int
    backoff = 0.25
    _backingOff = False

    def doRead(self) -> None:
        room = self.guard.registry.room()
        if room <= 0:
            self.stopReading()  # type: ignore[attr-defined]
            return
        if self.numberAccepts > room:
            self.numberAccepts = room
        super().doRead()  # type: ignore[misc]

    def maybeResumeAccepting(self) -> None:
        """
        Accept again, unless stopping, backing off, or out of room.
        """
        if (
            self.connected  # type: ignore[attr-defined]
            and not self.disconnecting  # type: ignore[attr-defined]
            and not self._backingOff
            and self.guard.registry.room() > 0
        ):
            self.startReading()  # type: ignore[attr-defined]

    def _observeAccept(self, event: dict[str, Any]) -> None:
        """
        Twisted's port logs accept trouble here (see L{tcp._accept}).
        """
        text = event.get("log_format") or ""
        if text.startswith("EMFILE recovery: Closed socket"):
            self.guard.rejected[DESCRIPTORS_EXHAUSTED] = (
                self.guard.rejected.get(DESCRIPTORS_EXHAUSTED, 0) + 1
            )
        elif text.startswith("Could not accept"):
            # Nothing was accepted and the listening socket stays readable:
            # without a pause the reactor would call doRead in a busy loop.
            self._backingOff = True
            self.stopReading()  # type: ignore[attr-defined]
            self.guard.clock.callLater(self.backoff, self._endBackoff)
        self.guard.warnings.emit(
            "accept:" + text[:24],
            LogLevel.warn,
            "accepting connections on {listener}: " + text,
            listener=str(self.getHost()),  # type: ignore[attr-defined]
            **{k: v for k, v in event.items() if not k.startswith("log_")},
        )

    def _endBackoff(self) -> None:
        self._backingOff = False
        self.maybeResumeAccepting()

    def startListening(self) -> None:
        observer = cast(ILogObserver, self._observeAccept)
        self._logger = Logger(namespace="myserver.guard", observer=observer)
        super().startListening()  # type: ignore[misc]
        self.guard.registry.addPort(self)

    def connectionLost(self, reason: Failure) -> None:
        self.guard.registry.removePort(self)
        super().connectionLost(reason)  # type: ignore[misc]


class GuardedTCPPort(GuardedPort, tcp.Port):
    """
    A TCP listening port whose connections are L{GuardedServer}s.
    """

    transport = GuardedServer


class GuardedUNIXPort(GuardedPort, unix.Port):
    """
    A UNIX-domain listening port whose connections are L{GuardedUNIXServer}s.
    """

    transport = GuardedUNIXServer


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

    def _admitting(self, factory: IProtocolFactory) -> Any:
        if self._guard.admission.active:
            return AdmittingFactory(factory, self._guard)
        return factory

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
            GuardedTCPPort(
                port, self._admitting(factory), backlog, interface, self._reactor
            )
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
            GuardedUNIXPort(
                address, self._admitting(factory), backlog, mode, self._reactor, wantPID
            )
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
                self._reactor, fileDescriptor, self._admitting(factory)
            )
        elif addressFamily in (socket.AF_INET, socket.AF_INET6):
            port = GuardedTCPPort._fromListeningDescriptor(
                self._reactor, fileDescriptor, addressFamily, self._admitting(factory)
            )
        else:
            from twisted.internet.error import UnsupportedAddressFamily

            raise UnsupportedAddressFamily(addressFamily)
        return self._start(port)
