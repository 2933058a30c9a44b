# -*- test-case-name: tests.test_upgrade -*-
"""
Live upgrade: on SIGUSR2 a new generation of the server starts from the
code installed now and the configuration as it now reads, serves the very
listening sockets this one serves, and says when it is ready; only then
does this generation stop accepting and drain, exactly as on SIGTERM.

The sequence (L{Upgrader}):

  1. this generation starts C{python -m myserver.successor} with its own
     twistd command line (without its pid file, which the successor takes
     over when ready) and hands it every listening socket: each stream
     listener's, each UDP listener's and the admin endpoint's, as open
     descriptors described in C{MYSERVER_INHERIT}
     (L{myserver.inheritance}); sockets systemd passed go on at their own
     numbers;
  2. the successor adopts the socket of every listener whose endpoint
     string it still has (binding only new ones), starts, and writes
     C{ready} on a pipe.  Until then its output comes through this
     generation, which relays it and keeps its last line;
  3. on C{ready}, this generation lets go of the sockets without touching
     them (no C{shutdown(2)}, no removal of a UNIX path: see
     L{myserver.adopting.releaseForSuccessor}), stops accepting, and
     drains its open connections for up to C{shutdown_timeout}.  They stay
     with this generation until they end: nothing is migrated, nothing is
     cut.  The kernel queues new connections on the shared sockets
     throughout, so none is refused.

A successor that exits before it is ready (a bad configuration, an import
error in new code, a listener it cannot serve), or is not ready within
C{upgrade_timeout} (then it is killed), changes nothing here: the refusal
is one log line with its exit status and its last line of output, and the
next SIGUSR2 may try again.  One upgrade at a time.

With workers (C{--workers N}) the supervisor keeps its pid instead: the new
code checks the configuration first (C{--check-config}), then the
supervisor executes it in place (L{myserver.workers.WorkerSupervisor.
executeInPlace}), and the new workers take over from the old ones there.

Twisted internals this module relies on (checked by
C{tests.test_twistedcontract}): twistd's runner reads its C{pidfile} option
again as it exits, to remove the file; the generation that hands the file
over sets the option to nothing first, and the one that takes it over sets
it to the file.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from myserver.adopting import releaseForSuccessor
from myserver.endpoints import PASSED_SOCKETS, endpointKind, keptPassedSockets
from myserver.generation import GENERATION, UPGRADED_AT, Generation
from myserver.inheritance import INHERIT, READY, Inheritance, adminKey
from myserver.notify import notifySystemd

log = Logger(namespace="myserver")

# Descriptors of the successor: 0-2 as usual, then any systemd passed.
_FIRST_FREE = 3
# Output kept to explain a refusal: enough for a traceback's last line.
_KEPT_OUTPUT = 8192


def successorArguments(argv: list[str]) -> list[str]:
    """
    twistd's arguments for the successor: this process's own, with no pid
    file (the successor takes over this one's when it is ready; twistd
    would refuse to start beside a live pid file).
    """
    arguments: list[str] = []
    skipValue = False
    for argument in argv[1:]:
        if skipValue:
            skipValue = False
        elif argument == "--pidfile":
            skipValue = True
        elif not argument.startswith("--pidfile="):
            arguments.append(argument)
    return ["--pidfile=", *arguments]


def describeEnd(reason: Failure) -> str:
    """
    How a process ended, for a log line: C{exited with status 2}, C{killed
    by signal 9}.
    """
    signal = getattr(reason.value, "signal", None)
    if signal is not None:
        return f"killed by signal {signal}"
    return f"exited with status {getattr(reason.value, 'exitCode', None)}"


class Successor(ProcessProtocol):
    """
    The new generation as this one sees it while it starts: its output is
    relayed to this process's own and remembered, and its readiness pipe
    read.
    """

    def __init__(self, upgrader: Upgrader, readyDescriptor: int) -> None:
        self.upgrader = upgrader
        self.readyDescriptor = readyDescriptor
        self.output = b""
        self._readiness = b""
        self.ready = False
        self.pid: int | None = None
        # Checking the configuration only (workers): its output is its own.
        self.checking = False
        self.errors = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == self.readyDescriptor:
            self._readiness += data
            if READY in self._readiness and not self.ready:
                self.ready = True
                self.upgrader.successorReady(self)
            return
        if childFD == 2:
            self.errors = (self.errors + data)[-_KEPT_OUTPUT:]
        if not self.checking or childFD == 2:
            _writeAll(childFD if childFD in (1, 2) else 2, data)
        self.output = (self.output + data)[-_KEPT_OUTPUT:]

    def processEnded(self, reason: Failure) -> None:
        if self.checking:
            self.upgrader.checked(self, reason)
        elif not self.ready:
            self.upgrader.successorFailed(self, reason)

    def lastLine(self, stderrOnly: bool = False) -> str:
        """
        The last line of output that says something (of standard error
        alone, when C{stderrOnly}).
        """
        text = (self.errors if stderrOnly else self.output).decode(errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def _writeAll(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            continue
        except OSError:
            return


class Upgrader:
    """
    Starts the next generation and hands it this one's listening sockets.

    @ivar inProgress: the successor being started, if any.
    @ivar refused: upgrades refused so far, for C{/metrics}.
    """

    inProgress: Successor | None = None

    def __init__(
        self,
        reactor: Any,
        server: Any,
        stop: Callable[[str], None],
        twistd: Any,
        timeout: Callable[[], float],
        generation: Generation,
        adminService: Any = None,
        argv: list[str] | None = None,
        supervisor: Any = None,
    ) -> None:
        """
        @param server: the L{myserver.service.ServerService}; its listener
            services hold the ports handed over.
        @param stop: begins this generation's drain (as SIGTERM does).
        @param twistd: twistd's options (a dict), whose C{pidfile} the
            successor takes over; L{None} when not run by twistd.
        @param timeout: the seconds the successor gets (C{upgrade_timeout}
            as it reads now).
        @param supervisor: the L{myserver.workers.WorkerSupervisor}, with
            workers: then this process executes itself in place.
        """
        self.reactor = reactor
        self.server = server
        self._stop = stop
        self.twistd = twistd
        self.timeout = timeout
        self.generation = generation
        self.adminService = adminService
        self.argv = list(sys.argv if argv is None else argv)
        self.supervisor = supervisor
        self.refused = 0
        self._deadline: Any = None
        self._ports: list[Any] = []

    def upgrade(self) -> None:
        """
        Start the next generation (SIGUSR2), unless one is starting already
        or this one is stopping.
        """
        if self.inProgress is not None:
            log.warn(
                "upgrade refused: generation {number} (pid {pid}) is still starting",
                number=self.generation.number + 1,
                pid=self.inProgress.pid,
            )
            return
        if self.server.draining:
            log.warn("upgrade refused: this generation is already stopping")
            return
        if self.twistd is None:
            log.warn("upgrade refused: only a server run by twistd can upgrade")
            return
        if self.supervisor is not None:
            if self.supervisor.upgrading:
                log.warn("upgrade refused: the new workers are still starting")
                return
            self._checkNewCode()
            return
        successor = self.generation.successor(time.time())
        childFDs: dict[int, Any] = {0: 0, 1: "r", 2: "r"}
        environ = successorEnvironment(successor)
        nextFD = passOnSystemdSockets(childFDs)
        inheritance = Inheritance(pidfile=self.twistd.get("pidfile") or None)
        self._ports = []
        for endpoint, port in self._listeningPorts():
            childFDs[nextFD] = port.fileno()
            inheritance.sockets.setdefault(endpoint, []).append(nextFD)
            self._ports.append(port)
            nextFD += 1
        inheritance.streams = (nextFD, nextFD + 1)
        childFDs[nextFD], childFDs[nextFD + 1] = 1, 2
        inheritance.ready = nextFD + 2
        childFDs[inheritance.ready] = "r"
        environ[INHERIT] = inheritance.describe()
        protocol = Successor(self, inheritance.ready)
        if not self._start(protocol, successorArguments(self.argv), environ, childFDs):
            return
        log.info(
            "SIGUSR2: starting generation {number} (pid {pid}) with {count} "
            "listening sockets",
            number=successor.number,
            pid=protocol.pid,
            count=len(self._ports),
        )

    def _checkNewCode(self) -> None:
        """
        With workers: before this process executes the new code in its own
        place (which cannot be undone), the new code checks the
        configuration as it now reads (C{--check-config}, in a process of
        its own); only if it accepts does the upgrade go on.
        """
        protocol = Successor(self, -1)
        protocol.checking = True
        arguments = [*successorArguments(self.argv), "--check-config"]
        childFDs: dict[int, Any] = {0: 0, 1: "r", 2: "r"}
        passOnSystemdSockets(childFDs)
        environ = successorEnvironment(self.generation)
        if self._start(protocol, arguments, environ, childFDs):
            log.info(
                "SIGUSR2: the new code checks the configuration (pid {pid})",
                pid=protocol.pid,
            )

    def _start(
        self,
        protocol: Successor,
        arguments: list[str],
        environ: dict[str, str],
        childFDs: dict[int, Any],
    ) -> bool:
        """
        Start C{python -m myserver.successor ARGUMENTS}, the upgrade in
        progress until it ends or is ready, within C{upgrade_timeout}.

        @return: whether it started.
        """
        command = [sys.executable, "-m", "myserver.successor", *arguments]
        try:
            process = self.reactor.spawnProcess(
                protocol, sys.executable, command, env=environ, childFDs=childFDs
            )
        except OSError as e:
            self.refused += 1
            log.error("upgrade refused: cannot start the new code: {e}", e=e)
            return False
        protocol.pid = process.pid
        self.inProgress = protocol
        self._deadline = self.reactor.callLater(self.timeout(), self._tooSlow, protocol)
        return True

    def checked(self, successor: Successor, reason: Failure) -> None:
        """
        The check of the new code ended: execute it in place if it passed.
        """
        self._cancelDeadline()
        self.inProgress = None
        if reason.check(ProcessDone) is None:
            self.refused += 1
            line = successor.lastLine(stderrOnly=True)
            log.error(
                "upgrade refused: the new code {ended} checking the "
                "configuration{colon}{line}; generation {current} serves on",
                ended=describeEnd(reason),
                colon=": " if line else "",
                line=line,
                current=self.generation.number,
            )
            return
        try:
            self.supervisor.executeInPlace(
                self.generation.successor(time.time()),
                [
                    (endpoint, port.fileno())
                    for endpoint, port in self._listeningPorts()
                ],
                self.twistd.get("pidfile") or None,
                successorArguments(self.argv),
            )
        except OSError as e:
            self.refused += 1
            log.error("upgrade refused: cannot execute the new code: {e}", e=e)

    def _listeningPorts(self) -> list[tuple[str, Any]]:
        """
        Every listening port to hand over, with its endpoint string; not
        those on sockets systemd passed, which go on at their own numbers.
        """
        ports = []
        for service in self.server:
            listener = getattr(service, "listener", None)
            port = getattr(service, "port", None)
            if listener is None or port is None:
                continue
            if _passedBySystemd(listener.endpoint):
                continue
            ports.append((listener.endpoint, port))
        admin = self.adminService
        if admin is not None and admin.port is not None:
            if not _passedBySystemd(admin.endpointString):
                ports.append((adminKey(admin.endpointString), admin.port))
        return ports

    def successorReady(self, successor: Successor) -> None:
        if successor is not self.inProgress:
            return
        self._cancelDeadline()
        # The successor has taken over the pid file: twistd must not remove
        # it when this generation exits.
        self.twistd["pidfile"] = ""
        for port in self._ports:
            releaseForSuccessor(port)
        if self.adminService is not None:
            self.adminService.handOver()
        self._stop(
            f"generation {self.generation.number + 1} (pid "
            f"{successor.pid}) is serving; generation "
            f"{self.generation.number} stops accepting and drains"
        )

    def successorFailed(self, successor: Successor, reason: Failure) -> None:
        """
        The successor ended before it was ready (Twisted says so once it
        has exited and every descriptor it had from here is closed).
        """
        if successor is not self.inProgress:
            return
        self._cancelDeadline()
        self.inProgress = None
        self._ports = []
        self.refused += 1
        ended = describeEnd(reason)
        line = successor.lastLine()
        log.error(
            "upgrade refused: generation {number} (pid {pid}) {ended} before "
            "it was ready{colon}{line}; generation {current} serves on",
            number=self.generation.number + 1,
            pid=successor.pid,
            ended=ended,
            colon=": " if line else "",
            line=line,
            current=self.generation.number,
        )

    def _tooSlow(self, successor: Successor) -> None:
        self._deadline = None
        log.error(
            "upgrade: generation {number} (pid {pid}) is not ready after "
            "{timeout}s; killing it",
            number=self.generation.number + 1,
            pid=successor.pid,
            timeout=self.timeout(),
        )
        if successor.transport is not None:
            try:
                successor.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass

    def _cancelDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None


def successorEnvironment(generation: Generation) -> dict[str, str]:
    """
    The environment of the new code: this process's, as C{generation},
    with C{LISTEN_FDS} and C{LISTEN_FDNAMES} for the sockets systemd passed
    here (which go on at the same numbers; the new code sets C{LISTEN_PID},
    L{myserver.successor}).
    """
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LISTEN_") and k not in (GENERATION, UPGRADED_AT)
    }
    environ.update(generation.environment())
    kept = keptPassedSockets()
    if kept:
        environ["LISTEN_FDS"] = str(len(kept))
        if PASSED_SOCKETS.named:
            environ["LISTEN_FDNAMES"] = ":".join(PASSED_SOCKETS.names)
    return environ


def passOnSystemdSockets(childFDs: dict[int, Any]) -> int:
    """
    Pass the sockets systemd passed to this process on to a child, at the
    numbers systemd gave them (L{successorEnvironment} names them).

    @return: the first child descriptor left free.
    """
    kept = keptPassedSockets()
    for offset, fd in enumerate(kept):
        childFDs[_FIRST_FREE + offset] = fd
    return _FIRST_FREE + len(kept)


def _passedBySystemd(endpoint: str) -> bool:
    return endpointKind(endpoint) == "systemd"


class Readiness(Service):
    """
    In a generation started by an upgrade: once every listener serves
    (the reactor runs, and C{whenServing} has fired: the workers, in worker
    mode), close the inherited sockets no listener took and tell the old
    generation (L{Inheritance.announceReady}).  In every generation, tell
    systemd when there is a C{NOTIFY_SOCKET} (C{READY=1}, and the new
    C{MAINPID=} after an upgrade).
    """

    def __init__(
        self,
        reactor: Any,
        inheritance: Inheritance,
        generation: Generation,
        twistd: Any,
        whenServing: Callable[[], Deferred[None]] | None = None,
        worker: bool = False,
    ) -> None:
        """
        @param whenServing: fires when the server serves (the workers are
            ready); at once when not given.
        @param worker: whether this is a worker, which tells only its
            supervisor.
        """
        self.reactor = reactor
        self.inheritance = inheritance
        self.generation = generation
        self.twistd = twistd
        self.whenServing = whenServing
        self.worker = worker

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        serving = self.whenServing() if self.whenServing is not None else succeed(None)
        serving.addCallback(lambda _: self._ready())

    def _ready(self) -> None:
        for endpoint in self.inheritance.closeUnclaimed():
            log.info(
                "closed the inherited socket of {endpoint}: no longer configured",
                endpoint=endpoint,
            )
        upgraded = self.inheritance.upgrading
        pidfile = self.inheritance.pidfile
        self.inheritance.announceReady(os.getpid())
        if pidfile and self.twistd is not None:
            # Ours now: twistd removes it when this generation exits.
            self.twistd["pidfile"] = pidfile
        if self.worker:
            return
        if upgraded:
            log.info(
                "generation {number} (pid {pid}) is serving",
                number=self.generation.number,
                pid=os.getpid(),
            )
        notifySystemd(f"READY=1\nMAINPID={os.getpid()}" if upgraded else "READY=1")
