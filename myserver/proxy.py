# -*- test-case-name: tests.test_proxy,tests.test_twistedcontract -*-
"""
The PROXY protocol (v1 and v2), with the guard applied to the client
behind the proxy.

Behind HAProxy (C{send-proxy} or C{send-proxy-v2}), every connection comes
from the proxy; the header it sends first names the real client.  Twisted's
L{HAProxyProtocolWrapper} parses it; this subclass holds the server's
protocol back until the header is in, so that:

  - allow, deny and max_connections_per_ip apply to the real client, which
    is refused (closed unanswered, counted, logged) like a direct one;
  - the protocol's C{connectionMade} and C{getPeer} see the real client;
  - the per-connection log and metrics name the real client;
  - a missing or malformed header closes the connection, counted as
    C{proxy_header} and logged (rate-limited), without a traceback;
  - a v2 LOCAL header (HAProxy's own health checks) is served as a
    connection from the proxy itself.

After the header, data flows to the protocol through one call, Twisted's.

Twisted internals this module relies on (checked to exist, with the kind
expected, by C{tests.test_twistedcontract}): Twisted publishes only
C{proxyEndpoint}, so the parser and wrapper are reached in their private
modules: C{_wrapper.HAProxyProtocolWrapper} (subclassed, with its
C{_proxyInfo} and C{_parser} state) and C{HAProxyWrappingFactory} (the
factory C{haproxy:} endpoints wrap, replaced on guarded ports),
C{_v1parser.V1Parser} and C{_v2parser.V2Parser} (their C{PROXYSTR} and
C{PREFIX} signatures and C{feed}), C{_exceptions.InvalidProxyHeader}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import LogLevel
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import (
    HAProxyProtocolWrapper,
    HAProxyWrappingFactory,
)
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from myserver.admission import hostOf
from myserver.interfaces import IHandshakePhase

PROXY_HEADER = "proxy_header"


@implementer(IHandshakePhase)
class GuardedProxyProtocol(HAProxyProtocolWrapper):
    """
    Reads the PROXY header, then admits (or refuses) the real client, and
    only then connects the server's protocol.  The header is its handshake,
    held to C{handshake_timeout}.
    """

    factory: GuardedProxyFactory
    _pending = b""
    _wrappedConnected = False

    def makeConnection(self, transport: Any) -> None:
        # As ProtocolWrapper.makeConnection, but the wrapped protocol is
        # connected only once the header names the peer.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)

    def handshakeFinished(self) -> bool:
        return self._proxyInfo is not None

    def dataReceived(self, data: bytes) -> None:
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        data = self._pending + data
        self._pending = b""
        if self._parser is None:
            if len(data) < 16 and (
                V2Parser.PREFIX.startswith(data[:12])
                or data.startswith(b"PROXY"[: len(data)])
            ):
                # Too short to tell yet: wait for more.
                self._pending = data
                return
            if data[:12] == V2Parser.PREFIX and data[12] & 0xF0 == 0x20:
                self._parser = V2Parser()
            elif data[:5] == V1Parser.PROXYSTR:
                self._parser = V1Parser()
            else:
                self._refuseHeader("no PROXY protocol header")
                return
        try:
            info, remaining = self._parser.feed(data)
        except InvalidProxyHeader:
            self._refuseHeader("malformed PROXY protocol header")
            return
        if info is None:
            return
        self._proxyInfo = info
        guard = self.factory.guard
        connection: Any = self.transport
        if info.source is not None:
            host = hostOf(info.source)
            reason = guard.admission.refusal(host)
            if reason is not None:
                guard.refuse(reason, info.source)
                connection.abortConnection()
                return
            guard.admitProxied(connection, info.source)
        self._wrappedConnected = True
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]
        if remaining:
            self.wrappedProtocol.dataReceived(remaining)

    def _refuseHeader(self, why: str) -> None:
        guard = self.factory.guard
        transport: Any = self.transport
        guard.count(PROXY_HEADER)
        peer = hostOf(transport.getPeer()) or "?"
        held = guard.warnings.emit(
            PROXY_HEADER,
            LogLevel.warn,
            "closed a connection from {peer}: {why}",
            peer=peer,
            why=why,
        )
        guard.remember(PROXY_HEADER, peer, held)
        transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._wrappedConnected:
            super().connectionLost(reason)
        else:
            # Never admitted: the server's protocol never knew of it.
            self.factory.unregisterProtocol(self)


class GuardedProxyFactory(HAProxyWrappingFactory):
    """
    Stands in for Twisted's L{HAProxyWrappingFactory} on guarded ports.
    """

    protocol = GuardedProxyProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, wrappedFactory: Any, guard: Any) -> None:
        super().__init__(wrappedFactory)
        self.guard = guard


def isProxyFactory(factory: object) -> bool:
    """
    Whether C{factory} is the one a C{haproxy:} endpoint wraps a protocol
    factory in (Twisted's own, not yet replaced by L{GuardedProxyFactory}).
    """
    return type(factory) is HAProxyWrappingFactory
