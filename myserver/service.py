# -*- test-case-name: tests.test_guard,tests.test_shutdown,tests.test_core -*-
"""
The running server: its listening services, the idle sweep, reload, and
the graceful drain.

Stopping runs top down (twistd does it on SIGTERM and SIGINT): every
listener stops accepting at once, the connections still open get up to
C{shutdown_timeout} seconds to finish on their own (echo: a peer that
half-closes still gets its whole echo), and whatever remains is aborted.
"""

from __future__ import annotations

import resource
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from myserver.accepting import AcceptGate
from myserver.admission import describeAddress
from myserver.adopting import AdoptingReactor
from myserver.budget import MemoryReturner
from myserver.endpoints import releaseKeptPassedSockets
from myserver.interfaces import IReloadable
from myserver.listening import EndpointService
from myserver.policy import Guard
from myserver.ports import GuardingReactor, backlogFor
from myserver.registry import ConnectionRegistry
from myserver.settings import Listener

log = Logger(namespace="myserver")


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


class ListenerService(EndpointService):
    """
    One listening endpoint serving one protocol factory through a L{Guard}:
    Twisted's endpoint service, listening through a L{GuardingReactor}.

    Listening happens in C{privilegedStartService}, before twistd drops
    privileges, so ports below 1024 work with C{--uid}.
    """

    def __init__(
        self,
        listener: Listener,
        factory: IProtocolFactory,
        guard: Guard,
        reactor: Any,
        inherited: int | None = None,
    ) -> None:
        """
        @param inherited: the listening socket a previous generation served
            for this endpoint, to serve instead of binding it again (a live
            upgrade).
        """
        spec = listener.endpoint
        guarding = GuardingReactor(reactor, guard, backlogFor(spec))
        listenOn = (
            guarding if inherited is None else AdoptingReactor(guarding, inherited)
        )
        endpoint = serverFromString(listenOn, spec)
        super().__init__(endpoint, factory, spec)
        self.listener = listener
        self.guard = guard

    def listening(self, port: IListeningPort) -> IListeningPort:
        # The status page names the listener by the address it bound.
        self.guard.address = describeAddress(port.getHost())
        return super().listening(port)

    def logListening(self, address: str) -> None:
        log.info(
            "{protocol} listening on {address} ({endpoint})",
            protocol=self.listener.protocol,
            address=address,
            endpoint=self.listener.endpoint,
        )


class ServerService(MultiService):
    """
    The whole server: its listeners, and the drain that stopping runs.

    @ivar registry: every open connection.
    @ivar gate: decides when the listening ports accept.
    @ivar draining: true from the moment stopping begins.
    """

    draining = False

    _sweeper: LoopingCall | None = None
    reconfigure: Callable[[], object] | None = None

    def __init__(
        self,
        registry: ConnectionRegistry,
        gate: AcceptGate,
        shutdownTimeout: float,
        clock: Any,
        guards: list[Guard] | None = None,
    ) -> None:
        super().__init__()
        self._whenStopped: list[Deferred[None]] = []
        self.registry = registry
        self.gate = gate
        self.shutdownTimeout = shutdownTimeout
        self.clock = clock
        self.guards = guards or []
        self.memory = MemoryReturner(gate.budget)

    def privilegedStartService(self) -> None:
        raiseDescriptorLimit()
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self.memory.start()
        self._startSweeping()

    def _startSweeping(self) -> None:
        timeouts = [
            timeout
            for g in self.guards
            for timeout in (g.idleTimeout, g.handshakeTimeout)
            if timeout > 0
        ]
        # Activity is noticed at the next sweep, so a connection is closed
        # between idle_timeout and idle_timeout + interval; a handshake past
        # its deadline likewise.  The memory check rides along.
        interval = min(5.0, min(timeouts) / 4) if timeouts else 5.0
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = self.clock
        self._sweeper.start(interval, now=False)

    def sweep(self) -> None:
        for guard in self.guards:
            if guard.idleTimeout > 0:
                guard.sweepIdle()
            if guard.handshakeTimeout > 0:
                guard.sweepHandshakes()
        self.memory.check()

    def stopService(self) -> Deferred[None]:
        self.draining = True
        releaseKeptPassedSockets()
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
            endpoint = getattr(service, "serverEndpoint", None)
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
    L{ServerService.reload}).  SIGUSR2 starts a live upgrade (C{upgrade},
    set by whoever can: L{myserver.upgrade.Upgrader}); where nobody can, it
    is logged and ignored rather than left to its default action, which
    would end the process.  L{stop} begins the same drain without a
    signal.

    @ivar upgrade: starts a live upgrade; L{None} in a worker.
    """

    upgrade: Callable[[], None] | None = None

    def __init__(self, reactor: Any, server: ServerService) -> None:
        self.reactor = reactor
        self.server = server
        self._received = 0
        self._stopping = False

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
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            signal.signal(signum, self._onSignal)

    def _onSignal(self, signum: int, frame: FrameType | None) -> None:
        # Only callFromThread is safe here; the work happens in the reactor.
        self.reactor.callFromThread(self._handle, signal.Signals(signum).name)

    def _handle(self, name: str) -> None:
        if name == "SIGHUP":
            log.info("received SIGHUP: reloading")
            self.server.reload()
            return
        if name == "SIGUSR2":
            if self.upgrade is None:
                log.warn(
                    "received SIGUSR2: ignored (a worker; the supervisor upgrades)"
                )
            else:
                self.upgrade()
            return
        self._received += 1
        if not self._stopping:
            self._stopping = True
            log.info("received {signal}: stopping", signal=name)
            self.reactor.stop()
        elif self._received == 1:
            # The drain began without a signal (a worker whose supervisor
            # is gone, where Linux also sends this SIGTERM): this one asks
            # for what is already happening; the next ends the drain.
            log.info("received {signal}: already stopping", signal=name)
        else:
            log.warn("received {signal} again: ending the drain now", signal=name)
            self.server.abortAll()

    def stop(self, reason: str) -> None:
        """
        Stop exactly as the first SIGTERM does, for a reason that is not a
        signal (a worker's supervisor is gone); once, whatever asks again.
        """
        if not self._stopping:
            self._stopping = True
            log.info("{reason}: stopping", reason=reason)
            self.reactor.stop()
