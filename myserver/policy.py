# -*- test-case-name: tests.test_guard,tests.test_core,tests.test_limits -*-
"""
The per-listener policy: limits, timeouts, admission and what is counted.

Protocol plugins are plain Twisted protocols and never see the policy.  A
L{Guard} holds one listener's settings; the guarded transport
(L{myserver.transport}) applies them on the read and write paths, the
accept loop (L{myserver.ports}) at accept time, and the idle sweep here
closes connections that moved no byte for C{idle_timeout}.  Whether ports
accept at all is decided by L{myserver.accepting.AcceptGate}, which the
guard tells of every connection opened and closed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from myserver.accepting import AcceptGate, ILimitedListener
from myserver.admission import Admission, hostOf
from myserver.budget import OutputBudget
from myserver.interfaces import IHandshakePhase
from myserver.logs import RateLimitedLog
from myserver.registry import ConnectionRegistry

log = Logger(namespace="myserver.guard")

# Why connections end early, as counted and logged.
DESCRIPTORS_EXHAUSTED = "descriptors_exhausted"
PROTOCOL_ERROR = "protocol_error"
ACCEPT_ERROR = "accept_error"
HANDSHAKE_TIMEOUT = "handshake_timeout"


@implementer(ILimitedListener)
class Guard:
    """
    The policy for the connections of one listener.  Every listener has its
    own (its settings may differ); all share the server's registry, which
    holds the total count and the drain, and its accept gate.

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
    @ivar gate: decides whether this listener's ports accept.
    @ivar clock: the time source for durations and idleness.
    @ivar now: C{clock.seconds}.
    @ivar connections: this listener's open connections.
    @ivar rejected: connections refused or cut short, by reason.
    @ivar idleClosed: connections closed for being idle.
    @ivar budget: the server's output budget, which every connection's
        queue counts against.
    @ivar handshakeTimeout: seconds from accept within which a connection
        must finish what comes before its protocol (the PROXY header, the
        TLS handshake); 0 for no deadline.
    @ivar endpoint: the listener's endpoint string, for the status page.
    @ivar address: the address it listens on (C{tcp:127.0.0.1:27015}), once
        it does: what the status page names it by.
    @ivar accepted: connections accepted (past admission) since start.
    @ivar bytesReceived: bytes read from this listener's closed
        connections (the open ones count their own), for the status page.
    @ivar bytesSent: bytes sent to them, likewise.
    """

    address: str | None = None
    accepted = 0
    bytesReceived = 0
    bytesSent = 0

    def __init__(
        self,
        registry: ConnectionRegistry,
        gate: AcceptGate,
        clock: IReactorTime,
        *,
        protocolName: str = "",
        maxWriteBuffer: int = 1024 * 1024,
        idleTimeout: float = 0.0,
        maxConnections: int = 0,
        admission: Admission | None = None,
        noDelay: bool = True,
        budget: OutputBudget | None = None,
        handshakeTimeout: float = 0.0,
        endpoint: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.registry = registry
        self.budget = budget or OutputBudget(registry, 0)
        self.handshakeTimeout = handshakeTimeout
        self.gate = gate
        self.noDelay = noDelay
        self.clock = clock
        self.protocolName = protocolName
        self.maxWriteBuffer = maxWriteBuffer
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
        self.admission = admission or Admission()
        self.connections: set[Any] = set()
        self.rejected: dict[str, int] = {}
        self.idleClosed = 0
        self.warnings = RateLimitedLog(log, clock)

    @property
    def clock(self) -> IReactorTime:
        return self._clock

    @clock.setter
    def clock(self, clock: IReactorTime) -> None:
        """
        Use C{clock}; L{now} is its C{seconds}, looked up here once: the
        reactor's is a staticmethod, whose lookup through the reactor
        CPython 3.11 does not specialise (and connections read the time
        twice each, when they open and when they close).
        """
        self._clock = clock
        self.now = clock.seconds

    def reconfigure(
        self,
        maxWriteBuffer: int,
        idleTimeout: float,
        maxConnections: int,
        admission: Admission,
        handshakeTimeout: float,
    ) -> None:
        """
        Apply new settings without closing anything: open connections get
        the new write-buffer mark and the per-address counts are rebuilt
        under the new prefixes.  The caller asks the gate to reconsider
        once every listener has its new limits.
        """
        self.maxWriteBuffer = maxWriteBuffer
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
        self.handshakeTimeout = handshakeTimeout
        counts: dict[tuple[int, int], int] = {}
        for connection in self.connections:
            connection.maxWriteBuffer = maxWriteBuffer
            host = None
            if admission.maxPerAddress:
                # As opened and admitProxied count: behind a PROXY-protocol
                # proxy, the client its header named, once it has.
                if getattr(connection.server, "proxied", False):
                    host = connection.realPeer and hostOf(connection.realPeer)
                else:
                    host = hostOf(connection.getPeer())
            key = connection.addressKey = admission.addressKey(host) if host else None
            if key is not None:
                counts[key] = counts.get(key, 0) + 1
        admission.openByAddress = counts
        self.admission = admission

    def count(self, reason: str, number: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + number

    def refuse(self, reason: str, peer: Any) -> None:
        """
        Count and (rate-limited) log a refused connection.
        """
        self.count(reason)
        shown = hostOf(peer) or str(peer)
        self.remember(
            reason,
            shown,
            self.warnings.emit(
                reason,
                LogLevel.warn,
                "refused a connection from {peer}: {reason}",
                peer=shown,
                reason=reason,
            ),
        )

    def remember(self, reason: str, peer: str, held: int | None) -> None:
        """
        Keep a refusal that was logged (C{held} is what the rate-limited log
        returned: L{None} when it held this one back) in the registry's
        short list of the last ones, for the status page: at the log's rate,
        so a flood costs no more there than in the log.
        """
        if held is not None:
            self.registry.refusals.append(
                {
                    "time": self.clock.seconds(),
                    "reason": reason,
                    "peer": peer,
                    "listener": self.address or self.endpoint,
                    "suppressed": held,
                }
            )

    def shed(self, connection: Any, reason: str, why: str) -> None:
        """
        Abort an open connection for C{reason}: counted, and logged
        (rate-limited) with C{why}.
        """
        self.count(reason)
        peer = hostOf(connection.clientAddress()) or str(connection.getPeer())
        held = self.warnings.emit(
            reason,
            LogLevel.warn,
            "closed a connection from {peer}: {why}",
            peer=peer,
            why=why,
        )
        self.remember(reason, peer, held)
        connection.abortConnection()

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

    def acceptFailed(self, listener: str) -> None:
        """
        Something unexpected went wrong while accepting a connection (in the
        transport's construction, say); called from inside the C{except}
        block.  That connection is closed, the port keeps listening.
        """
        self.count(ACCEPT_ERROR)
        self.warnings.emit(
            ACCEPT_ERROR,
            LogLevel.error,
            "unexpected error accepting a connection on {listener}; that "
            "connection is closed, the port keeps listening",
            failure=Failure(),
            listener=listener,
        )

    def opened(self, connection: Any) -> None:
        if self.admission.maxPerAddress and not getattr(
            connection.server, "proxied", False
        ):
            self._countAddress(connection, connection.getPeer())
        self.connections.add(connection)
        self.accepted += 1
        self.registry.add(connection)
        self.gate.opened(self)

    def _countAddress(self, connection: Any, peer: Any) -> None:
        admission = self.admission
        if admission.maxPerAddress and (host := hostOf(peer)):
            key = admission.addressKey(host)
            connection.addressKey = key
            admission.openByAddress[key] = admission.openByAddress.get(key, 0) + 1

    def admitProxied(self, connection: Any, peer: Any) -> None:
        """
        The PROXY header of C{connection} names its real client, C{peer},
        which the admission rules have let in: count it against the
        per-address limit, and name it in logs.
        """
        connection.realPeer = peer
        self._countAddress(connection, peer)

    def closed(self, connection: Any, reason: Failure) -> None:
        counts = self.admission.openByAddress
        # addressKey (a class attribute unless this connection was counted)
        # only when some connection was.
        key = connection.addressKey if counts else None
        if key is not None:
            remaining = counts[key] - 1
            if remaining:
                counts[key] = remaining
            else:
                del counts[key]
        self.connections.discard(connection)
        self.bytesReceived += connection.bytesReceived
        self.bytesSent += connection.bytesSent
        self.registry.remove(connection, reason)
        self.gate.closed(self)

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

    def sweepHandshakes(self) -> int:
        """
        Abort every connection still in its handshake (PROXY header, TLS)
        C{handshakeTimeout} seconds after it was accepted.  The deadline is
        absolute: bytes that trickle in do not move it, so a client that
        drips its hello cannot hold a slot.  A connection past its
        handshake is not looked at again.

        @return: how many connections were aborted.
        """
        deadline = self.clock.seconds() - self.handshakeTimeout
        aborted = 0
        for connection in list(self.connections):
            if connection.pastHandshake:
                continue
            if not inHandshake(connection.protocol):
                connection.pastHandshake = True
            elif connection.openedAt <= deadline:
                aborted += 1
                self.shed(
                    connection,
                    HANDSHAKE_TIMEOUT,
                    f"handshake not finished within {self.handshakeTimeout:g}s",
                )
        return aborted


def inHandshake(protocol: Any) -> bool:
    """
    Whether any layer of C{protocol} (it and what it wraps) is still in a
    handshake: an L{IHandshakePhase} not yet finished.
    """
    while protocol is not None:
        phase = IHandshakePhase(protocol, None)
        if phase is not None and not phase.handshakeFinished():
            return True
        protocol = getattr(protocol, "wrappedProtocol", None)
    return False
