"""
The running server: listening services, the connection registry, and the
graceful drain.

Stopping runs top down (twistd does it on SIGTERM and SIGINT): every
listener stops accepting at once, the connections still open get up to
C{shutdown_timeout} seconds to finish on their own (echo: a peer that
half-closes still gets its whole echo), and whatever remains is aborted.
"""

from __future__ import annotations

import resource
import signal
from bisect import bisect_left
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from myserver.admission import describeAddress
from myserver.config import Listener
from myserver.guard import Guard, GuardedServer
from myserver.interfaces import IConnectionRegistry, IReloadable
from myserver.ports import GuardedPort, GuardingReactor, backlogFor

log = Logger(namespace="myserver")


class CannotListen(Exception):
    """
    A listener could not start; the message is one line for the operator.
    """


def raiseDescriptorLimit() -> int:
    """
    Raise the soft limit on open descriptors to the hard limit, as servers
    that hold thousands of connections do, and log the figure.

    @return: the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warn(
                "cannot raise the open file limit from {soft} to {hard}: {error}",
                soft=soft,
                hard=hard,
                error=e,
            )
            return soft
    log.info("open file limit: {limit}", limit=hard)
    return hard


DURATION_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0)


class Histogram:
    """
    A histogram in plain integers, updated without a lock; the metrics
    collector reads it at scrape time.
    """

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """
        Prometheus buckets: (upper bound, observations at most that).
        """
        running = 0
        buckets = []
        for bound, count in zip(
            [*map(repr, self.bounds), "+Inf"], self.counts, strict=True
        ):
            running += count
            buckets.append((bound, running))
        return buckets


@implementer(IConnectionRegistry)
class ConnectionRegistry:
    """
    Every open guarded connection of the server.

    @ivar connections: the open connections' transports.
    @ivar logConnections: emit a debug event per connection; decided once,
        from the configured log level, so that the default level costs the
        accept path nothing.
    """

    def __init__(
        self, maxConnections: int = 10000, logConnections: bool = False
    ) -> None:
        self.connections: set[GuardedServer] = set()
        self.maxConnections = maxConnections
        self.logConnections = logConnections
        self.ports: set[GuardedPort] = set()
        self._whenEmpty: list[Deferred[None]] = []
        # Totals over closed connections, for the metrics.
        self.results: dict[str, int] = {}
        self.bytesReceived = 0
        self.bytesSent = 0
        self.durations = Histogram(DURATION_BUCKETS)

    def __len__(self) -> int:
        return len(self.connections)

    def room(self) -> int:
        """
        How many more connections may be accepted now.
        """
        return self.maxConnections - len(self.connections)

    def addPort(self, port: GuardedPort) -> None:
        self.ports.add(port)

    def removePort(self, port: GuardedPort) -> None:
        self.ports.discard(port)

    def add(self, connection: GuardedServer) -> None:
        self.connections.add(connection)
        if len(self.connections) >= self.maxConnections:
            # Stop accepting: new clients wait in the kernel's backlog.
            for port in self.ports:
                port.stopReading()  # type: ignore[attr-defined]
        if self.logConnections:
            log.debug(
                "connection from {peer} opened",
                peer=describeAddress(connection.clientAddress()),
            )

    def remove(self, connection: GuardedServer, reason: Failure) -> None:
        before = len(self.connections)
        self.connections.discard(connection)
        if isinstance(reason.value, ConnectionDone):
            result = "closed"
        elif isinstance(reason.value, ConnectionAborted):
            result = "aborted"
        else:
            result = "lost"
        self.results[result] = self.results.get(result, 0) + 1
        self.bytesReceived += connection.bytesReceived
        self.bytesSent += connection.bytesSent
        self.durations.observe(connection.guard.clock.seconds() - connection.openedAt)
        if before >= self.maxConnections > len(self.connections):
            for port in list(self.ports):
                port.maybeResumeAccepting()
        if self.logConnections:
            log.debug(
                "connection from {peer} closed after {duration:.3f}s: "
                "{bytes_in} bytes in, {bytes_out} bytes out ({reason})",
                peer=describeAddress(connection.clientAddress()),
                duration=connection.guard.clock.seconds() - connection.openedAt,
                bytes_in=connection.bytesReceived,
                bytes_out=connection.bytesSent,
                reason=reason.getErrorMessage(),
            )
        if not self.connections and self._whenEmpty:
            waiting, self._whenEmpty = self._whenEmpty, []
            for d in waiting:
                d.callback(None)

    def whenEmpty(self) -> Deferred[None]:
        """
        @return: a Deferred that fires once no connection is open.
        """
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._whenEmpty.append(d)
        return d

    def abortAll(self) -> int:
        """
        Abort every open connection, dropping what is queued for it.

        @return: how many were aborted.
        """
        open = list(self.connections)
        for connection in open:
            connection.abortConnection()
        return len(open)


class ListenerService(Service):
    """
    One listening endpoint serving one protocol factory through a L{Guard}.

    Listening happens in C{privilegedStartService}, before twistd drops
    privileges, so ports below 1024 work with C{--uid}.
    """

    port: IListeningPort | None = None
    endpoint: Any = None

    def __init__(
        self,
        listener: Listener,
        factory: IProtocolFactory,
        guard: Guard,
        reactor: Any,
    ) -> None:
        self.listener = listener
        self.factory = factory
        self.guard = guard
        self.reactor = reactor
        self._failure: Failure | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is None and self._failure is None:
            spec = self.listener.endpoint
            endpoint = self.endpoint = serverFromString(
                GuardingReactor(self.reactor, self.guard, backlogFor(spec)), spec
            )
            endpoint.listen(self.factory).addCallbacks(self._listening, self._failed)
        if self._failure is not None:
            raise CannotListen(
                f"cannot listen on {self.listener.endpoint}: "
                f"{' '.join(self._failure.getErrorMessage().split())}"
            )

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        log.info(
            "{protocol} listening on {address} ({endpoint})",
            protocol=self.listener.protocol,
            address=describeAddress(port.getHost()),
            endpoint=self.listener.endpoint,
        )

    def _failed(self, failure: Failure) -> None:
        self._failure = failure

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        return port.stopListening()


class ServerService(MultiService):
    """
    The whole server: its listeners, and the drain that stopping runs.

    @ivar registry: every open connection.
    @ivar draining: true from the moment stopping begins.
    """

    draining = False

    _sweeper: LoopingCall | None = None
    reconfigure: Callable[[], object] | None = None

    def __init__(
        self,
        registry: ConnectionRegistry,
        shutdownTimeout: float,
        clock: Any,
        guards: list[Guard] | None = None,
    ) -> None:
        super().__init__()
        self._whenStopped: list[Deferred[None]] = []
        self.registry = registry
        self.shutdownTimeout = shutdownTimeout
        self.clock = clock
        self.guards = guards or []

    def privilegedStartService(self) -> None:
        raiseDescriptorLimit()
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self._startSweeping()

    def _startSweeping(self) -> None:
        timeouts = [g.idleTimeout for g in self.guards if g.idleTimeout > 0]
        if timeouts:
            # Activity is noticed at the next sweep, so a connection is
            # closed between idle_timeout and idle_timeout + interval.
            self._sweeper = LoopingCall(self.sweepIdle)
            self._sweeper.clock = self.clock
            self._sweeper.start(min(5.0, min(timeouts) / 4), now=False)

    def sweepIdle(self) -> None:
        for guard in self.guards:
            if guard.idleTimeout > 0:
                guard.sweepIdle()

    def stopService(self) -> Deferred[None]:
        self.draining = True
        stopped: Deferred[object] = super().stopService()
        drained = stopped.addCallback(lambda _: self._drain())
        drained.addBoth(self._stopped)
        return drained

    def _stopped(self, result: object) -> object:
        waiting, self._whenStopped = self._whenStopped, []
        for d in waiting:
            d.callback(None)
        return result

    def whenStopped(self) -> Deferred[None]:
        """
        @return: a Deferred that fires once a stop has finished draining.
        """
        d: Deferred[None] = Deferred()
        self._whenStopped.append(d)
        return d

    def _drain(self) -> Deferred[None]:
        count = len(self.registry)
        if not count:
            self._stopSweeping()
            return succeed(None)
        log.info(
            "draining {count} open connections for up to {timeout}s",
            count=count,
            timeout=self.shutdownTimeout,
        )
        drained = self.registry.whenEmpty()
        deadline = self.clock.callLater(self.shutdownTimeout, self.abortAll)

        def finished(result: None) -> None:
            if deadline.active():
                deadline.cancel()
                log.info("all connections finished")

        drained.addCallback(finished)
        return drained.addCallback(lambda _: self._stopSweeping())

    def _stopSweeping(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()

    def reload(self) -> None:
        """
        Apply the configuration as it now reads (C{reconfigure}, set by
        whoever built the server), then reload what each listener loaded
        from disk (L{IReloadable} endpoints: TLS material).  Nothing here
        closes a connection; whatever fails is logged and the running
        state stays in force.
        """
        if self.reconfigure is not None:
            self.reconfigure()
        for service in self:
            endpoint = getattr(service, "endpoint", None)
            if IReloadable.providedBy(endpoint):
                try:
                    endpoint.reload()
                except Exception as e:
                    log.error(
                        "reload of {endpoint} refused, still using what it "
                        "had: {error}",
                        endpoint=service.listener.endpoint,
                        error=" ".join(str(e).split()) or type(e).__name__,
                    )
                else:
                    log.info("reloaded {endpoint}", endpoint=service.listener.endpoint)

    def restartSweeper(self) -> None:
        """
        Sweep at the interval the guards' idle timeouts now call for.
        """
        self._stopSweeping()
        if self.running:
            self._startSweeping()

    def abortAll(self) -> None:
        """
        End the drain now: abort every connection still open.
        """
        for service in self:
            abort = getattr(service, "abortAll", None)
            if abort is not None:
                abort()
        count = self.registry.abortAll()
        if count:
            log.warn(
                "aborted {count} connections still open at the shutdown deadline",
                count=count,
            )


class StopOnSignals(Service):
    """
    SIGTERM and SIGINT stop the reactor (and so drain the server) without
    asking twistd to re-raise the signal at exit: the process ends with
    status 0, as gunicorn, uvicorn and HAProxy do.  A second signal during
    the drain aborts what is left at once.  SIGHUP reloads (see
    L{ServerService.reload}).
    """

    def __init__(self, reactor: Any, server: ServerService) -> None:
        self.reactor = reactor
        self.server = server
        self._received = 0

    def privilegedStartService(self) -> None:
        # Handle signals before any listener starts (a SIGHUP's default
        # action would end the process).
        super().privilegedStartService()
        self._install()

    def startService(self) -> None:
        super().startService()
        # twistd starts services before the reactor runs, and the reactor
        # installs its own SIGTERM and SIGINT handlers as it starts: install
        # ours again after that.
        self.reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._onSignal)

    def _onSignal(self, signum: int, frame: FrameType | None) -> None:
        # Only callFromThread is safe here; the work happens in the reactor.
        self.reactor.callFromThread(self._handle, signal.Signals(signum).name)

    def _handle(self, name: str) -> None:
        if name == "SIGHUP":
            log.info("received SIGHUP: reloading")
            self.server.reload()
            return
        self._received += 1
        if self._received == 1:
            log.info("received {signal}: stopping", signal=name)
            self.reactor.stop()
        else:
            log.warn("received {signal} again: ending the drain now", signal=name)
            self.server.abortAll()
