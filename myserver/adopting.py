# -*- test-case-name: tests.test_upgrade,tests.test_workers -*-
"""
Serving a listening socket this process did not bind: one its supervisor
bound (a worker) or one the previous generation served (a live upgrade).

L{AdoptingReactor} stands in for the reactor when C{serverFromString}
builds the listener's endpoint, so that the endpoint (C{tcp:}, C{ssl:},
C{tlsreload:}, C{unix:}, with or without C{haproxy:}) does everything it
does in a process of its own (reads its certificates, wraps its factory)
and only the last step, binding, becomes adopting the socket given.

L{releaseForSuccessor} is the other side: a port whose socket a successor
now serves must stop without touching that socket.

Twisted internals this module relies on (checked by
C{tests.test_twistedcontract}): C{tcp.Port._shouldShutdown} (a port that
bound its socket calls C{shutdown(2)} on it when it stops, which would stop
the socket for every process holding it, not only this one) and
that C{unix.Port.connectionLost} is C{tcp.Port.connectionLost} after
removing the socket's path.
"""

from __future__ import annotations

import os
import socket
from functools import partial
from typing import Any

from twisted.internet import fdesc, tcp, unix
from twisted.internet.interfaces import IListeningPort, IProtocolFactory

from myserver.ports import GuardedUNIXPort
from myserver.tls import TimedHandshakeTLSFactory


def socketFamily(fileDescriptor: int) -> int:
    """
    The address family of the socket open as C{fileDescriptor}.
    """
    sock = socket.socket(fileno=fileDescriptor)
    try:
        return sock.family
    finally:
        sock.detach()


class AdoptingReactor:
    """
    A reactor for C{serverFromString}: an endpoint that would bind a TCP or
    UNIX port serves the listening socket C{fileDescriptor} instead,
    through the reactor given (a L{myserver.ports.GuardingReactor} for
    client listeners, the reactor itself for the admin endpoint).  The
    descriptor is this object's to close: the port keeps a duplicate, as
    Twisted's own adopted endpoint does.
    """

    def __init__(
        self, reactor: Any, fileDescriptor: int, family: int | None = None
    ) -> None:
        self._reactor = reactor
        self._fileDescriptor = fileDescriptor
        self._family = socketFamily(fileDescriptor) if family is None else family

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def _adopt(self, factory: IProtocolFactory) -> IListeningPort:
        fdesc.setNonBlocking(self._fileDescriptor)
        listening: IListeningPort = self._reactor.adoptStreamPort(
            self._fileDescriptor, self._family, factory
        )
        os.close(self._fileDescriptor)
        return listening

    def listenTCP(
        self,
        port: int,
        factory: IProtocolFactory,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        return self._adopt(factory)

    def listenSSL(
        self,
        port: int,
        factory: IProtocolFactory,
        contextFactory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        tlsFactory = TimedHandshakeTLSFactory(contextFactory, False, factory)
        return self._adopt(tlsFactory)

    def listenUNIX(
        self,
        address: Any,
        factory: IProtocolFactory,
        backlog: int = 50,
        mode: int = 0o666,
        wantPID: int = 0,
    ) -> IListeningPort:
        listening = self._adopt(factory)
        # The path is this process's now: removed when this port stops for
        # good, as the port that bound it would have.
        if isinstance(listening, GuardedUNIXPort):
            listening.ownsPath = True
        return listening


def releaseForSuccessor(port: object) -> None:
    """
    From now on, stopping C{port} closes only this process's descriptor of
    its socket: no C{shutdown(2)}, which would end the socket for the
    successor that serves it too, and for a UNIX port no removal of the
    path, which clients of the successor connect to.
    """
    if isinstance(port, tcp.Port):
        port._shouldShutdown = False
    if isinstance(port, GuardedUNIXPort):
        port.ownsPath = False
    elif isinstance(port, unix.Port):
        # A plain Twisted port (the admin endpoint's): stop as unix.Port
        # does, less the removal of the path.
        port.connectionLost = partial(tcp.Port.connectionLost, port)  # type: ignore[method-assign]
