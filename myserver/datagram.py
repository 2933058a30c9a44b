# -*- test-case-name: tests.test_datagram,tests.test_workers -*-
"""
Datagram (UDP) listeners, and the guard in front of their protocols.

UDP answers go wherever the source address of a request says, and that
address is trivially forged: a UDP echo, daytime or time service is a
reflector for attacks on third parties.  So every datagram passes the
listener's allow and deny networks and a per-source token bucket before the
protocol sees it, and what the bucket refuses is dropped without an answer,
counted, and logged at most every few seconds.  Off by default: UDP is
served only on C{udp:} listeners the operator configures.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet import fdesc
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from myserver.admission import Admission, describeAddress
from myserver.endpoints import FIRST_PASSED_DESCRIPTOR, parseDatagramEndpoint
from myserver.errors import CannotListen
from myserver.logs import RateLimitedLog
from myserver.settings import Listener

log = Logger(namespace="myserver.datagram")

RATE_LIMITED = "rate_limited"
TOO_MANY_SOURCES = "too_many_sources"


class SourceRateLimit:
    """
    A token bucket per source address: C{rate} datagrams a second on
    average, C{burst} at once.  At most C{maxSources} sources are tracked;
    when the table is full, sources whose bucket has refilled completely
    are forgotten, and if none has, datagrams from new sources are refused
    (a flood of forged sources must not grow memory without limit).
    """

    def __init__(
        self, clock: IReactorTime, rate: float, burst: int, maxSources: int = 10000
    ) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.maxSources = maxSources
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, source: str) -> str | None:
        """
        Take a token for C{source}.

        @return: L{None} if the datagram may be answered, else the reason.
        """
        now = self.clock.seconds()
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.maxSources and not self._forgetFull(now):
                return TOO_MANY_SOURCES
            tokens = float(self.burst)
        else:
            tokens, then = bucket
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens < 1:
            self._buckets[source] = (tokens, now)
            return RATE_LIMITED
        self._buckets[source] = (tokens - 1, now)
        return None

    def _forgetFull(self, now: float) -> bool:
        refill = self.burst / self.rate
        stale = [s for s, (_, then) in self._buckets.items() if now - then >= refill]
        for source in stale:
            del self._buckets[source]
        return bool(stale)


class GuardedDatagramProtocol(DatagramProtocol):
    """
    Stands between a UDP port and the plugin's protocol: admission, rate
    limit, isolation and counting, then the plugin's C{datagramReceived}.

    @ivar datagramsReceived: datagrams that reached the protocol.
    @ivar bytesReceived: their bytes.
    @ivar dropped: datagrams dropped, by reason.
    """

    noisy = False

    def __init__(
        self,
        protocol: DatagramProtocol,
        protocolName: str,
        admission: Admission,
        limit: SourceRateLimit,
        clock: IReactorTime,
    ) -> None:
        self.protocol = protocol
        self.protocolName = protocolName
        self.admission = admission
        self.limit = limit
        self.datagramsReceived = 0
        self.bytesReceived = 0
        self.dropped: dict[str, int] = {}
        self.warnings = RateLimitedLog(log, clock)

    def startProtocol(self) -> None:
        assert self.transport is not None
        self.protocol.makeConnection(self.transport)

    def stopProtocol(self) -> None:
        self.protocol.doStop()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        host = addr[0]
        reason = self.admission.refusal(host) or self.limit.allow(host)
        if reason is not None:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            self.warnings.emit(
                reason,
                LogLevel.warn,
                "dropped a datagram from {peer}: {reason}",
                peer=host,
                reason=reason,
            )
            return
        self.datagramsReceived += 1
        self.bytesReceived += len(datagram)
        try:
            self.protocol.datagramReceived(datagram, addr)
        except Exception:
            self.dropped["protocol_error"] = self.dropped.get("protocol_error", 0) + 1
            self.warnings.emit(
                "protocol_error",
                LogLevel.error,
                "protocol {protocol} raised an exception for a datagram from {peer}",
                failure=Failure(),
                protocol=self.protocolName,
                peer=host,
            )


class DatagramListenerService(Service):
    """
    One C{udp:PORT[:interface=ADDR]} listener, or in a worker the socket
    its supervisor bound for it (C{udp:...:index=K}, see
    L{myserver.endpoints.parseDatagramEndpoint}).

    myserver's own rather than Twisted's C{internet.UDPServer}: that one
    binds in C{startService} unless made privileged, keeps its port in a
    private attribute, and raises Twisted's C{CannotListenError} where the
    operator needs one line.  C{listenUDP} answers synchronously, so
    nothing here waits on a Deferred.
    """

    port: Any = None
    # What listenUDP reads at most at a time, by default.
    maxPacketSize = 8192

    def __init__(
        self,
        listener: Listener,
        protocol: GuardedDatagramProtocol,
        reactor: Any,
        inherited: int | None = None,
    ) -> None:
        """
        @param inherited: the socket a previous generation served, to serve
            instead of binding again (a live upgrade).
        """
        self.listener = listener
        self.protocol = protocol
        self.reactor = reactor
        self.inherited = inherited

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        endpoint = parseDatagramEndpoint(self.listener.endpoint)
        try:
            if self.inherited is not None:
                inherited, self.inherited = self.inherited, None
                self.port = self._adopt(inherited)
            elif endpoint.index is None:
                self.port = self.reactor.listenUDP(
                    endpoint.port, self.protocol, interface=endpoint.interface
                )
            else:
                self.port = self._adopt(FIRST_PASSED_DESCRIPTOR + endpoint.index)
        except Exception as e:
            raise CannotListen(
                f"cannot listen on {self.listener.endpoint}: {' '.join(str(e).split())}"
            ) from None
        log.info(
            "{protocol} listening on {address} ({endpoint})",
            protocol=self.listener.protocol,
            address=describeAddress(self.port.getHost()),
            endpoint=self.listener.endpoint,
        )

    def _adopt(self, fileDescriptor: int) -> Any:
        """
        Serve the bound datagram socket passed as C{fileDescriptor} (a
        worker's, or one a previous generation served), as C{listenUDP}
        would serve one it bound.  The port holds
        a duplicate; the descriptor passed is closed, as Twisted's adopted
        stream endpoints close theirs.
        """
        passed = socket.socket(fileno=fileDescriptor)
        family, kind = passed.family, passed.type
        passed.detach()
        if kind != socket.SOCK_DGRAM:
            raise ValueError(f"descriptor {fileDescriptor} is not a datagram socket")
        fdesc.setNonBlocking(fileDescriptor)
        port = self.reactor.adoptDatagramPort(
            fileDescriptor, family, self.protocol, self.maxPacketSize
        )
        os.close(fileDescriptor)
        return port

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None
