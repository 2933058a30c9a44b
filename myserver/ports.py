# -*- test-case-name: tests.test_core,tests.test_limits,tests.test_exhaustion -*-
"""
Listening ports that accept on the guard's terms.

L{GuardingReactor} stands in for the reactor when C{serverFromString}
builds and starts an endpoint, so every endpoint type Twisted knows (tcp,
tcp6, unix, ssl, systemd, haproxy) listens through L{GuardedTCPPort} or
L{GuardedUNIXPort}.  Their accept loop is the server's own, because each
step of it is policy:

  - never accept more than the room the L{AcceptGate} leaves: Twisted
    accepts up to a hundred or more connections per wake-up, so merely
    pausing the port at the limit would overshoot it by a batch;
  - refuse peers that L{Admission} turns away before any protocol is built,
    so that not one of their bytes is read;
  - when accept() fails for want of descriptors (EMFILE, ENFILE), release
    the reserved descriptor, accept and close the waiting clients, and log
    that at most every few seconds; if that is impossible, back off for a
    moment instead of spinning on a listening socket that stays readable;
  - an exception raised by the protocol factory or by C{connectionMade}
    closes that one connection and is logged with the protocol's name; any
    other unexpected exception (an unknown accept error, the transport's
    constructor) is logged and the port keeps listening, as Twisted's own
    accept loop does.

Twisted internals this module relies on (checked to exist, with the kind
expected, by C{tests.test_twistedcontract}):

  - subclassing C{tcp.Port} and C{unix.Port}, and their C{transport} class
    attribute: the only way to give an endpoint's port a transport of ours;
  - C{tcp._reservedFD}: the descriptor Twisted's ports reserve when they
    start listening, released here to accept and close waiting clients
    when the process runs out (one reserve for the whole process);
  - C{tcp._SocketCloser._shouldShutdown}, turned off (see L{GuardedPort});
  - CPython's C{socket._accept} (not Twisted's, fenced the same way):
    the accept that returns the descriptor, without C{socket.accept}'s
    socket object, which the transport makes only if asked for one;
  - C{tcp.Port.createInternetSocket} (the socket a port binds itself)
    and C{tcp.Port._preexistingSocket} (the one it adopted, read before
    C{startListening}): where C{TCP_NODELAY} goes on the listening socket;
  - C{tcp.Port._fromListeningDescriptor} and
    C{unix.Port._fromListeningDescriptor}: how Twisted's own
    C{adoptStreamPort} builds a port around an inherited socket (systemd).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Any

from twisted.internet import tcp, unix
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import UnsupportedAddressFamily
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from myserver.accepting import IAcceptingPort
from myserver.admission import describeAddress, hostOf
from myserver.policy import DESCRIPTORS_EXHAUSTED, Guard
from myserver.proxy import GuardedProxyFactory, isProxyFactory
from myserver.tls import TimedHandshakeTLSFactory
from myserver.transport import GuardedServer, GuardedUNIXServer

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
_newObject = object.__new__
# How many wake-ups in a row must fill a batch of one before a port tries
# more than one accept per wake-up.
_SINGLES_BEFORE_GROWING = 8
# Accepted TCP sockets copy the listening socket's options (TCP_NODELAY
# among them) on Linux; elsewhere each connection sets its own.
_INHERITS_OPTIONS = sys.platform.startswith("linux")


def _discard(skt: socket.socket | int) -> None:
    """
    Close an accepted connection that will not be served: its descriptor,
    or its socket object.
    """
    if isinstance(skt, int):
        os.close(skt)
    else:
        skt.close()


@implementer(IAcceptingPort)
class GuardedPort:
    """
    The accept loop of a guarded listening port, mixed into Twisted's TCP
    and UNIX ports.

    @ivar guard: set by L{GuardingReactor} before the port starts listening.
    @ivar backoff: seconds to stop accepting after accept() failed with
        nothing to show for it.
    """

    guard: Guard
    # doRead isolates what can go wrong per connection itself, and logs
    # through twisted.logger: myserver's reactor may call it without the
    # legacy log context (myserver.reactor).
    directDispatch = True
    # Behind a PROXY-protocol proxy: admission waits for the header.
    proxied = False
    # Stopping closes this process's descriptor only.  Twisted's ports call
    # shutdown(2) first (except TCP ports on adopted sockets), which acts on
    # the socket itself and so stops it for every process holding it too:
    # the other workers on a shared UNIX socket, a successor generation.
    _shouldShutdown = False
    backoff = 0.25
    numberAccepts = 100
    # Wake-ups in a row that found the one connection they were allowed.
    _singleBatches = 0
    sessionno = 0
    _backingOff = False
    _paused = False
    _socketArguments: tuple[int, int, int] | None = None
    # See GuardedTCPPort; the transport reads it first, before its own
    # isTCP, for every port.
    noDelayInherited = False

    def doRead(self) -> None:
        guard = self.guard
        room = guard.gate.room(guard)
        if room <= 0:
            guard.gate.reconsider()
            return
        # Not min(): CPython 3.11 does not specialise its call.
        batch = self.numberAccepts
        if room < batch:
            batch = room
        accepted = 0
        listening: socket.socket = self.socket  # type: ignore[attr-defined]
        while accepted < batch:
            try:
                # The descriptor and the address, without socket.accept()'s
                # socket object (which the transport makes only if asked
                # for one), enum conversions and timeout check.
                fd, addr = listening._accept()  # type: ignore[attr-defined]
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                if e.errno in _PEER_GONE:
                    continue
                if e.errno in _OUT_OF_DESCRIPTORS:
                    self._outOfDescriptors(e)
                else:
                    self._acceptFailed(e)
                break
            accepted += 1
            try:
                self.serve(fd, addr)
            except Exception:
                # Not the protocol's fault (that is handled in serve): the
                # transport could not be built.  This connection is lost;
                # the port goes on listening.
                _discard(fd)
                guard.acceptFailed(self._describe())
        # As Twisted does: accept more per wake-up while batches fill up,
        # and as many as there were when one did not.  Except that from one
        # per wake-up it grows only after several wake-ups in a row found
        # one: clients that come one at a time (a server that keeps up)
        # would otherwise have every other wake-up try a second accept,
        # whose EAGAIN costs more than the connection's own accept (an
        # exception made and caught, about 2,000 instructions).  The
        # listening socket stays readable while clients wait, so one that
        # arrives meanwhile is accepted at the next turn, with the events of
        # the other connections.
        if accepted == self.numberAccepts:
            if accepted > 1:
                self.numberAccepts += 20
            else:
                self._singleBatches += 1
                if self._singleBatches == _SINGLES_BEFORE_GROWING:
                    self._singleBatches = 0
                    self.numberAccepts += 20
        elif accepted < batch:
            self.numberAccepts = max(1, accepted)
            self._singleBatches = 0

    def socketArguments(self) -> tuple[int, int, int]:
        """
        The family, type and protocol of the sockets this port accepts
        (the listening socket's, as plain integers, noted when it started
        listening): what a transport needs to make a socket object around
        its descriptor, maybe after the port has stopped (a drain).
        """
        assert self._socketArguments is not None, "the port never listened"
        return self._socketArguments

    def _address(self, addr: Any) -> Any:
        raise NotImplementedError()

    def serve(self, skt: socket.socket | int, addr: Any) -> None:
        """
        Serve one accepted socket: admission, the protocol, the guarded
        transport.  The accept loop calls it for each client with the
        accepted descriptor; the in-memory test kit (L{myserver.testing})
        calls it with a socket of its own.
        """
        guard = self.guard
        address = self._address(addr)
        if guard.admission.active and not self.proxied:
            reason = guard.admission.refusal(hostOf(address))
            if reason is not None:
                _discard(skt)
                guard.refuse(reason, address)
                return
        try:
            protocol = self.factory.buildProtocol(address)  # type: ignore[attr-defined]
        except Exception:
            _discard(skt)
            guard.protocolFailed("buildProtocol", address)
            return
        if protocol is None:
            _discard(skt)
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
            transport.connectProtocol()
        except Exception:
            guard.protocolFailed("connectionMade", address)
            transport.abortConnection()

    def _describe(self) -> str:
        return describeAddress(self.getHost())  # type: ignore[attr-defined]

    def _outOfDescriptors(self, error: OSError) -> None:
        """
        accept() failed with EMFILE or ENFILE: use the reserved descriptor
        to accept and close the waiting clients, so that they learn at once
        and the listening socket stops waking the reactor.
        """
        closed = 0
        reserve = tcp._reservedFD
        if reserve.available():
            with reserve:
                while closed < self.numberAccepts:
                    try:
                        skt, _ = self.socket.accept()  # type: ignore[attr-defined]
                    except OSError:
                        break
                    skt.close()
                    closed += 1
        self.guard.count(DESCRIPTORS_EXHAUSTED, closed)
        held = self.guard.warnings.emit(
            DESCRIPTORS_EXHAUSTED,
            LogLevel.warn,
            "out of file descriptors ({error}) accepting connections on "
            "{listener}: closed {closed} waiting clients; still serving the "
            "open connections",
            error=errno.errorcode.get(error.errno or 0, str(error)),
            listener=self._describe(),
            closed=closed,
        )
        if closed:
            self.guard.remember(DESCRIPTORS_EXHAUSTED, "?", held)
        if not closed:
            self._backOff()

    def _acceptFailed(self, error: OSError) -> None:
        """
        accept() failed for another reason (the kernel short of memory, or
        an error nobody expected): log it, back off for a moment, keep the
        port.
        """
        self.guard.warnings.emit(
            "accept",
            LogLevel.warn,
            "cannot accept connections on {listener}: {error}",
            listener=self._describe(),
            error=error,
        )
        self._backOff()

    def _backOff(self) -> None:
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
        if not self._paused:
            self.resumeAccepting()

    def pauseAccepting(self) -> None:
        self._paused = True
        self.stopReading()  # type: ignore[attr-defined]

    def resumeAccepting(self) -> None:
        self._paused = False
        if (
            self.connected  # type: ignore[attr-defined]
            and not self.disconnecting  # type: ignore[attr-defined]
            and not self._backingOff
        ):
            self.startReading()  # type: ignore[attr-defined]

    def startListening(self) -> None:
        super().startListening()  # type: ignore[misc]
        listening: socket.socket = self.socket  # type: ignore[attr-defined]
        self._socketArguments = (
            int(listening.family),
            int(listening.type),
            listening.proto,
        )
        self.guard.gate.portStarted(self.guard, self)

    def connectionLost(self, reason: Failure) -> None:
        self.guard.gate.portStopped(self.guard, self)
        super().connectionLost(reason)  # type: ignore[misc]


class GuardedTCPPort(GuardedPort, tcp.Port):
    """
    A TCP listening port whose connections are L{GuardedServer}s.

    @ivar noDelayInherited: whether the sockets it accepts have
        C{TCP_NODELAY} already, from the listening socket: Linux copies a
        listening socket's options to the sockets it accepts, which saves
        the transport a C{setsockopt} call per connection.
    """

    transport = GuardedServer

    def createInternetSocket(self) -> socket.socket:
        """
        A socket this port binds itself: with C{TCP_NODELAY} set before it
        listens, so that every connection it accepts has it.
        """
        skt: socket.socket = super().createInternetSocket()
        if self.guard.noDelay and _INHERITS_OPTIONS:
            skt.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.noDelayInherited = True
        return skt

    def startListening(self) -> None:
        adopted = self._preexistingSocket
        if adopted is not None and _INHERITS_OPTIONS:
            # Listening already (systemd's, a previous generation's, the
            # supervisor's): what waits in its queue has the option only if
            # the socket had it from the start.  Set it now for later ones
            # all the same; when it was missing, the transport sets it on
            # each connection.
            option = (socket.IPPROTO_TCP, socket.TCP_NODELAY)
            had = adopted.getsockopt(*option) != 0
            adopted.setsockopt(*option, int(self.guard.noDelay))
            self.noDelayInherited = had and self.guard.noDelay
        super().startListening()

    def _address(self, addr: Any) -> IPv4Address | IPv6Address:
        # By the address's length (IPv6's has four fields): the class's
        # addressFamily, an enum, costs a generic lookup and comparison.
        if len(addr) != 2:
            # Keep the scope ID in the host, as Twisted does.
            host, _ = socket.getnameinfo(
                addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
            )
            return IPv6Address("TCP", host, *addr[1:])
        # IPv4Address("TCP", *addr), without the attrs constructor's frame
        # and its validator's (the type is a constant here): its three
        # fields, set as the constructor would (tests.test_twistedcontract
        # checks that they are all there is to one).
        address: IPv4Address = _newObject(IPv4Address)
        address.type = "TCP"
        address.host, address.port = addr
        return address


class GuardedUNIXPort(GuardedPort, unix.Port):
    """
    A UNIX-domain listening port whose connections are L{GuardedUNIXServer}s.

    @ivar ownsPath: whether stopping removes the socket's path, as Twisted's
        port does.  Not for a socket someone else bound and serves too (a
        worker's, which its supervisor bound; one systemd passed) or one
        handed to a successor: removing the path would cut them off from
        every new client.
    """

    transport = GuardedUNIXServer
    ownsPath = True

    def connectionLost(self, reason: Failure) -> None:
        if self.ownsPath:
            super().connectionLost(reason)
        else:
            # unix.Port.connectionLost removes the path, then does this.
            self.guard.gate.portStopped(self.guard, self)
            tcp.Port.connectionLost(self, reason)

    def _address(self, addr: Any) -> UNIXAddress:
        return UNIXAddress(addr)


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

    def _start(self, port: GuardedPort) -> IListeningPort:
        port.guard = self._guard
        port.proxied = isinstance(port.factory, GuardedProxyFactory)  # type: ignore[attr-defined]
        port.startListening()
        listening: IListeningPort = port  # type: ignore[assignment]
        return listening

    def _proxied(self, factory: Any) -> Any:
        """
        A C{haproxy:} endpoint wraps the factory in Twisted's PROXY
        protocol factory: put the guard-aware one in its place.
        """
        if isProxyFactory(factory):
            return GuardedProxyFactory(factory.wrappedFactory, self._guard)
        return factory

    def listenTCP(
        self,
        port: int,
        factory: IProtocolFactory,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        return self._start(
            GuardedTCPPort(
                port,
                self._proxied(factory),
                self._backlog or backlog,
                interface,
                self._reactor,
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
        tlsFactory = TimedHandshakeTLSFactory(contextFactory, False, factory)
        return self.listenTCP(port, tlsFactory, backlog, interface)

    def adoptStreamPort(
        self, fileDescriptor: int, addressFamily: int, factory: IProtocolFactory
    ) -> IListeningPort:
        port: GuardedPort
        if addressFamily == socket.AF_UNIX:
            unixPort = GuardedUNIXPort._fromListeningDescriptor(
                self._reactor, fileDescriptor, self._proxied(factory)
            )
            # Bound by someone else, who keeps it: a supervisor, systemd.
            unixPort.ownsPath = False
            port = unixPort
        elif addressFamily in (socket.AF_INET, socket.AF_INET6):
            port = GuardedTCPPort._fromListeningDescriptor(
                self._reactor, fileDescriptor, addressFamily, self._proxied(factory)
            )
        else:
            raise UnsupportedAddressFamily(addressFamily)
        return self._start(port)
