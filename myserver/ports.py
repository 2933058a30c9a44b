"""
Listening ports that accept on the guard's terms.

L{GuardingReactor} stands in for the reactor when C{serverFromString}
builds and starts an endpoint, so every endpoint type Twisted knows (tcp,
tcp6, unix, ssl, systemd, haproxy) listens through L{GuardedTCPPort} or
L{GuardedUNIXPort}.  Their accept loop is the server's own, because each
step of it is policy:

  - never accept more than the room left under C{max_connections}: Twisted
    accepts up to a hundred or more connections per wake-up, so merely
    pausing the port at the limit would overshoot it by a batch;
  - refuse peers that L{Admission} turns away before any protocol is built,
    so that not one of their bytes is read;
  - when accept() fails for want of descriptors (EMFILE, ENFILE), release a
    reserved descriptor, accept and close the waiting clients, and log that
    at most every few seconds; if that is impossible, back off for a moment
    instead of spinning on a listening socket that stays readable;
  - an exception raised by the protocol factory or by C{connectionMade}
    closes that one connection and is logged with the protocol's name.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet import tcp, unix
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from myserver.admission import describeAddress, hostOf
from myserver.guard import (
    DESCRIPTORS_EXHAUSTED,
    Guard,
    GuardedServer,
    GuardedUNIXServer,
)

# The listen backlog when an endpoint string names none, as nginx (511) and
# uvicorn (2048) choose theirs; the kernel caps it at net.core.somaxconn.
DEFAULT_BACKLOG = 1024


def backlogFor(endpoint: str) -> int | None:
    """
    L{DEFAULT_BACKLOG}, unless the endpoint string sets its own backlog.
    """
    return None if "backlog=" in endpoint.lower() else DEFAULT_BACKLOG


_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
# The peer gave up, or a firewall said no: try the next one.
_PEER_GONE = (errno.ECONNABORTED, errno.EPERM, errno.EPROTO)
# The kernel is short of memory: stop for now, without spinning.
_SHORT_OF_MEMORY = (errno.ENOBUFS, errno.ENOMEM)


class DescriptorReserve:
    """
    One descriptor held back so that, when the process runs out, it can be
    released to accept (and close) the clients waiting in the backlog
    instead of leaving them to time out while the listening socket keeps
    waking the reactor.
    """

    def __init__(self) -> None:
        self._fd: int | None = None

    def reserve(self) -> None:
        if self._fd is None:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._fd = None

    def release(self) -> bool:
        """
        @return: whether a descriptor was released.
        """
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True


_reserve = DescriptorReserve()


class GuardedPort:
    """
    The accept loop of a guarded listening port, mixed into Twisted's TCP
    and UNIX ports.

    @ivar guard: set by L{GuardingReactor} before the port starts listening.
    @ivar backoff: seconds to stop accepting after accept() failed with
        nothing to show for it.
    """

    guard: Guard
    # Behind a PROXY-protocol proxy: admission waits for the header.
    proxied = False
    backoff = 0.25
    numberAccepts = 100
    sessionno = 0
    _backingOff = False

    def doRead(self) -> None:
        guard = self.guard
        room = guard.room()
        if room <= 0:
            self.stopReading()  # type: ignore[attr-defined]
            return
        batch = min(self.numberAccepts, room)
        accepted = 0
        listening: socket.socket = self.socket  # type: ignore[attr-defined]
        while accepted < batch:
            try:
                skt, addr = listening.accept()
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                if e.errno in _PEER_GONE:
                    continue
                if e.errno in _OUT_OF_DESCRIPTORS:
                    self._outOfDescriptors(e)
                elif e.errno in _SHORT_OF_MEMORY:
                    self._acceptFailed(e)
                else:
                    raise
                break
            accepted += 1
            self._serve(skt, addr)
        # As Twisted does: accept more per wake-up while a batch fills up.
        if accepted == self.numberAccepts:
            self.numberAccepts += 20
        elif accepted < batch:
            self.numberAccepts = max(1, accepted)

    def _serve(self, skt: socket.socket, addr: Any) -> None:
        guard = self.guard
        if isinstance(addr, tuple) and len(addr) == 4:
            # IPv6: keep the scope ID in the host, as Twisted does.
            host = socket.getnameinfo(
                addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
            )
            addr = (host[0], *addr[1:])
        address = self._buildAddr(addr)  # type: ignore[attr-defined]
        if guard.admission.active and not self.proxied:
            reason = guard.admission.refusal(hostOf(address))
            if reason is not None:
                skt.close()
                guard.refuse(reason, address)
                return
        try:
            protocol = self.factory.buildProtocol(address)  # type: ignore[attr-defined]
        except Exception:
            skt.close()
            guard.protocolFailed("buildProtocol", address)
            return
        if protocol is None:
            skt.close()
            return
        sessionno = self.sessionno
        self.sessionno = sessionno + 1
        transport = self.transport(  # type: ignore[attr-defined]
            skt,
            protocol,
            addr,
            self,
            sessionno,
            self.reactor,  # type: ignore[attr-defined]
        )
        try:
            protocol.makeConnection(transport)
        except Exception:
            guard.protocolFailed("connectionMade", address)
            transport.abortConnection()

    def _outOfDescriptors(self, error: OSError) -> None:
        """
        accept() failed with EMFILE or ENFILE: use the reserved descriptor
        to accept and close the waiting clients, so that they learn at once
        and the listening socket stops waking the reactor.
        """
        closed = 0
        if _reserve.release():
            try:
                while closed < self.numberAccepts:
                    try:
                        skt, _ = self.socket.accept()  # type: ignore[attr-defined]
                    except OSError:
                        break
                    skt.close()
                    closed += 1
            finally:
                _reserve.reserve()
        self.guard.count(DESCRIPTORS_EXHAUSTED, closed)
        self.guard.warnings.emit(
            DESCRIPTORS_EXHAUSTED,
            LogLevel.warn,
            "out of file descriptors ({error}) accepting connections on "
            "{listener}: closed {closed} waiting clients; still serving the "
            "open connections",
            error=errno.errorcode.get(error.errno or 0, str(error)),
            listener=describeAddress(self.getHost()),  # type: ignore[attr-defined]
            closed=closed,
        )
        if not closed:
            self._pause()

    def _acceptFailed(self, error: OSError) -> None:
        self.guard.warnings.emit(
            "accept",
            LogLevel.warn,
            "cannot accept connections on {listener}: {error}",
            listener=describeAddress(self.getHost()),  # type: ignore[attr-defined]
            error=error,
        )
        self._pause()

    def _pause(self) -> None:
        """
        Stop accepting for C{backoff} seconds: the listening socket stays
        readable, and without a pause the reactor would call doRead in a
        busy loop.
        """
        self._backingOff = True
        self.stopReading()  # type: ignore[attr-defined]
        self.guard.clock.callLater(self.backoff, self._endBackoff)

    def _endBackoff(self) -> None:
        self._backingOff = False
        self.maybeResumeAccepting()

    def maybeResumeAccepting(self) -> None:
        """
        Accept again, unless stopping, backing off, or out of room.
        """
        if (
            self.connected  # type: ignore[attr-defined]
            and not self.disconnecting  # type: ignore[attr-defined]
            and not self._backingOff
            and self.guard.room() > 0
        ):
            self.startReading()  # type: ignore[attr-defined]

    def startListening(self) -> None:
        _reserve.reserve()
        super().startListening()  # type: ignore[misc]
        self.guard.ports.add(self)
        self.guard.registry.addPort(self)

    def connectionLost(self, reason: Failure) -> None:
        self.guard.ports.discard(self)
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

    def __init__(self, reactor: Any, guard: Guard, backlog: int | None = None) -> None:
        """
        @param backlog: the listen backlog to use instead of the one the
            endpoint asks for (Twisted's default of 50 when the endpoint
            string names none: too short for a busy server, whose clients
            then wait a second for the kernel's SYN retry).
        """
        self._reactor = reactor
        self._guard = guard
        self._backlog = backlog

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def _start(self, port: Any) -> IListeningPort:
        from myserver.proxy import GuardedProxyFactory

        port.guard = self._guard
        port.proxied = isinstance(port.factory, GuardedProxyFactory)
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
        listening = GuardedTCPPort(
            port,
            self._proxied(factory),
            self._backlog or backlog,
            interface,
            self._reactor,
        )
        return self._start(listening)

    def _proxied(self, factory: Any) -> Any:
        """
        A C{haproxy:} endpoint wraps the factory in Twisted's PROXY
        protocol factory: put the guard-aware one in its place.
        """
        from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

        if type(factory) is HAProxyWrappingFactory:
            from myserver.proxy import GuardedProxyFactory

            return GuardedProxyFactory(factory.wrappedFactory, self._guard)
        return factory

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
                address, factory, self._backlog or backlog, mode, self._reactor, wantPID
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
                self._reactor, fileDescriptor, self._proxied(factory)
            )
        elif addressFamily in (socket.AF_INET, socket.AF_INET6):
            port = GuardedTCPPort._fromListeningDescriptor(
                self._reactor, fileDescriptor, addressFamily, self._proxied(factory)
            )
        else:
            from twisted.internet.error import UnsupportedAddressFamily

            raise UnsupportedAddressFamily(addressFamily)
        return self._start(port)
