# -*- test-case-name: tests.test_workers,tests.test_steering -*-
"""
Several processes serving the same listeners (C{workers = N}).

The parent binds every stream listener (so ports below 1024 and sockets
handed over by systemd work), then starts N workers that adopt the
listening sockets and serve them; the parent accepts nothing itself.  It
restarts a worker that dies, forwards SIGHUP (after validating the new
configuration), and on SIGTERM tells every worker to drain and waits for
them all.

How the kernel spreads connections: for TCP listeners the parent binds one
socket per worker on the same address with C{SO_REUSEPORT}, and the kernel
spreads new connections evenly across them by hashing.  One listening
socket shared by every worker (what an inherited systemd socket or a UNIX
socket allows) lets whichever worker wakes first accept, which under load
tends to favour one of them; see the README's performance section.

Limits apply per worker, as an even split: each worker enforces
C{ceil(max_connections / N)} and C{ceil(max_connections_per_ip / N)}.

A worker is C{python -m myserver.worker CONFIG} (L{myserver.worker}): myserver
run by twistd with the configuration the parent rendered for it, its listeners spelled
C{systemd:domain=...:index=K} (the systemd socket-passing convention, so
Twisted's own endpoint adopts them) with any C{haproxy:} prefix kept.  TLS
listeners (C{ssl:}, C{tlsreload:}) are spelled C{inherited:domain=...:index=K:}
before their own endpoint string: each worker reads the certificate files
and builds its TLS context itself (and again on the SIGHUP the parent
forwards), and serves it on the socket it inherited.

A live upgrade (SIGUSR2, L{myserver.upgrade}) executes the new code in
the supervisor's own process (L{WorkerSupervisor.executeInPlace}): the
listening sockets and the workers' pipes cross C{exec}; the new supervisor
starts new workers on the same sockets and retires the old ones once each
new one says it is ready.  This relies on one Twisted internal, checked by
C{tests.test_twistedcontract}: a spawned process's C{pipes} (the parent's
end of each of the child's descriptors).
UDP listeners are served by the workers too, where datagrams can be
steered by source address (L{myserver.steering}: Linux): the parent binds
one C{SO_REUSEPORT} datagram socket per worker and attaches a program that
sends every datagram of one source address to the same socket, so each
worker enforces the whole per-source rate (C{datagram_rate},
C{datagram_burst}: not divided).  A worker's UDP listener is spelled
C{udp:PORT[:interface=ADDR]:index=K}.  Where steering is not possible the
parent serves UDP itself, as one process would (L{WorkerSupervisor.steering}
says why, and the supervisor logs it once).

A worker dies with its supervisor, however the supervisor ends (SIGKILL
from the OOM killer included): its standard input is a pipe from the
supervisor, and the end of that pipe (L{SupervisorWatch}) stops the worker
exactly as SIGTERM does (it stops accepting at once and drains for
C{shutdown_timeout}).  On Linux the worker also asks the kernel for a
SIGTERM when its parent dies (L{myserver.worker}).
"""

from __future__ import annotations

import fcntl
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn

from twisted.application.service import Service
from twisted.internet import fdesc
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import (
    quoteStringArgument,
    serverFromString,
)
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from myserver.adopting import AdoptingReactor
from myserver.endpoints import endpointKind, keptPassedSockets, parseDatagramEndpoint
from myserver.errors import CannotListen
from myserver.generation import Generation
from myserver.inheritance import INHERIT, READY, Inheritance
from myserver.ports import DEFAULT_BACKLOG, backlogFor
from myserver.reactor import reactorName
from myserver.reload import sameListener
from myserver.render import render
from myserver.settings import Config, Listener
from myserver.steering import steerBySource, steeringProblem
from myserver.upgrade import successorEnvironment

log = Logger(namespace="myserver.workers")

_FAMILIES = {socket.AF_INET: "INET", socket.AF_INET6: "INET6", socket.AF_UNIX: "UNIX"}
_FIRST_FD = 3
_DOMAINS = {name: family for family, name in _FAMILIES.items()}
# Endpoint kinds whose every worker builds its own TLS context.
_TLS_KINDS = ("ssl", "tlsreload")
# What a supervisor says to a worker it retires, before closing its pipe.
RETIRE = b"retire\n"
# The supervisor's pid, in a worker's environment.
SUPERVISOR_PID = "MYSERVER_SUPERVISOR"


class BoundSockets:
    """
    The parent's sockets for one listener: one per worker (TCP and UDP,
    with SO_REUSEPORT) or one shared by all.
    """

    def __init__(self, listener: Listener, sockets: list[socket.socket]) -> None:
        self.listener = listener
        self.sockets = sockets

    def describe(self) -> str:
        """
        The address bound, as the listener's log line names it.
        """
        return _describe(self.sockets[0])

    def forWorker(self, index: int) -> socket.socket:
        return self.sockets[index % len(self.sockets)]

    def close(self) -> None:
        """
        Close the sockets for good, and remove the path of a UNIX socket
        this process bound (not one systemd passed).
        """
        for sock in self.sockets:
            path = sock.getsockname() if sock.family == socket.AF_UNIX else None
            sock.close()
            if (
                isinstance(path, str)
                and path
                and endpointKind(self.listener.endpoint) == "unix"
            ):
                try:
                    os.unlink(path)
                except OSError:
                    pass


class BindingReactor:
    """
    A reactor for C{serverFromString} that only binds: C{listenTCP} makes
    C{copies} SO_REUSEPORT sockets, C{listenUNIX} and C{adoptStreamPort}
    one socket, and nothing accepts on them in this process.
    """

    def __init__(self, reactor: Any, copies: int, backlog: int | None) -> None:
        self._reactor = reactor
        self._copies = copies
        self._backlog = backlog
        self.bound: list[socket.socket] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        for _ in range(self._copies):
            sock = reusePortListener(
                family, (interface or "", port), self._backlog or backlog
            )
            # An ephemeral port: the other copies share the one chosen.
            port = sock.getsockname()[1]
            self.bound.append(sock)
        return _Bound(self.bound)

    def listenUNIX(
        self, address: Any, factory: Any, backlog: int = 50, **_: Any
    ) -> Any:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(address)
        sock.listen(max(self._backlog or backlog, 1))
        self.bound.append(sock)
        return _Bound(self.bound)

    def adoptStreamPort(self, fileDescriptor: int, family: int, factory: Any) -> Any:
        sock = socket.socket(family, socket.SOCK_STREAM, fileno=os.dup(fileDescriptor))
        self.bound.append(sock)
        return _Bound(self.bound)

    def listenSSL(
        self,
        port: int,
        factory: Any,
        contextFactory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> Any:
        # The same sockets as plain TCP: TLS happens in the workers.
        return self.listenTCP(port, factory, backlog, interface)


class _Bound:
    def __init__(self, sockets: list[socket.socket]) -> None:
        self.sockets = sockets


def bindListener(listener: Listener, copies: int, reactor: Any) -> BoundSockets:
    """
    Bind a stream listener's sockets in this (the parent) process.
    """
    binding = BindingReactor(reactor, copies, backlogFor(listener.endpoint))
    endpoint = serverFromString(binding, listener.endpoint)
    outcome: list[Any] = []
    endpoint.listen(Factory()).addBoth(outcome.append)
    if not outcome or isinstance(outcome[0], Failure):
        for sock in binding.bound:
            sock.close()
        reason = outcome[0].getErrorMessage() if outcome else "no answer"
        raise CannotListen(
            f"cannot listen on {listener.endpoint}: {' '.join(reason.split())}"
        )
    return BoundSockets(listener, binding.bound)


def reusePortListener(family: int, address: Any, backlog: int) -> socket.socket:
    """
    A listening TCP socket on C{address} with C{SO_REUSEPORT}, one of the
    copies the kernel spreads a listener's connections over.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Before it listens, so that every connection it queues has it:
        # the workers' ports then leave it to the kernel to copy (a worker
        # configured without it turns it off on its copy).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(max(backlog, 1))
    except OSError:
        sock.close()
        raise
    return sock


def adoptBound(listener: Listener, descriptors: list[int], copies: int) -> BoundSockets:
    """
    A stream listener's sockets as the previous generation left them (a
    live upgrade): the very same sockets, so that no connection waiting in
    their queues is lost.  More workers than before get new C{SO_REUSEPORT}
    copies beside them; fewer leave the surplus closed.  UDP sockets keep
    the steering program attached to their group.
    """
    sockets = [socket.socket(fileno=fd) for fd in descriptors]
    if listener.isDatagram and len(sockets) != copies:
        # Steering is by source address modulo the number of sockets: a new
        # number needs a new group (datagrams queued in the old are lost).
        for sock in sockets:
            sock.close()
        return bindDatagramListener(listener, copies)
    first = sockets[0]
    reusable = first.family != socket.AF_UNIX and first.getsockopt(
        socket.SOL_SOCKET, socket.SO_REUSEPORT
    )
    while reusable and not listener.isDatagram and len(sockets) < copies:
        backlog = backlogFor(listener.endpoint) or DEFAULT_BACKLOG
        sockets.append(reusePortListener(first.family, first.getsockname(), backlog))
    for surplus in sockets[max(copies, 1) :]:
        surplus.close()
    return BoundSockets(listener, sockets[: max(copies, 1)])


def bindDatagramListener(listener: Listener, copies: int) -> BoundSockets:
    """
    Bind a UDP listener's C{copies} sockets in this (the parent) process,
    one per worker on the same address, and steer datagrams among them by
    source address (L{steerBySource}).
    """
    endpoint = parseDatagramEndpoint(listener.endpoint)
    interface, port = endpoint.interface, endpoint.port
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(copies):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((interface, port))
            # An ephemeral port: the other copies share the one chosen.
            port = sock.getsockname()[1]
        steerBySource(sockets[0], copies)
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise CannotListen(
            f"cannot listen on {listener.endpoint}: {' '.join(str(e).split())}"
        ) from None
    return BoundSockets(listener, sockets)


def workerEndpoint(listener: Listener, index: int, sock: socket.socket) -> str:
    """
    The endpoint string by which a worker adopts its socket number C{index}.
    """
    if listener.isDatagram:
        return f"{listener.endpoint}:index={index}"
    adopted = f"systemd:domain={_FAMILIES[sock.family]}:index={index}"
    proxied, own = "", listener.endpoint
    if own.split(":", 1)[0].lower() == "haproxy":
        proxied, own = "haproxy:", own.split(":", 1)[1]
    if own.split(":", 1)[0].lower() in _TLS_KINDS:
        adopted = f"inherited:domain={_FAMILIES[sock.family]}:index={index}:{own}"
    return proxied + adopted


def parseInherited(
    reactor: Any, *args: str, domain: str = "INET", index: str = "0", **kwargs: str
) -> Any:
    """
    C{inherited:domain=INET:index=K:ENDPOINT}: ENDPOINT (a TLS endpoint
    string) served on the listening socket a worker inherited as
    descriptor C{3 + K}.

    @raise ValueError: for a domain or an index that is not one.
    """
    if domain not in _DOMAINS or not index.isdecimal():
        raise ValueError(
            f"inherited: domain={domain} index={index}: expected "
            "domain=INET, INET6 or UNIX and a socket's index"
        )
    own = ":".join(
        [quoteStringArgument(arg) for arg in args]
        + [f"{key}={quoteStringArgument(value)}" for key, value in kwargs.items()]
    )
    adopting = AdoptingReactor(reactor, _FIRST_FD + int(index), _DOMAINS[domain])
    return serverFromString(adopting, own)


def workerConfig(
    config: Config, served: list[tuple[Listener, str]], workers: int
) -> str:
    """
    The configuration a worker runs with, as TOML: the parent's, with the
    listeners the workers serve adopted (each listener's settings, with the
    endpoint string that adopts its socket), and the connection limits
    split evenly.  Datagram rates are not split: steering gives each source
    address to one worker (L{myserver.steering}).
    """
    listeners = tuple(
        replace(
            listener,
            endpoint=endpoint,
            settings={
                name: math.ceil(value / workers)
                if name in ("max_connections", "max_connections_per_ip")
                else value
                for name, value in listener.settings.items()
            },
        )
        for listener, endpoint in served
    )
    perWorker = replace(
        config,
        listen=listeners,
        workers=1,
        # A worker's admin endpoint is a private socket of the parent's
        # (in a directory only this user can enter): no token.
        admin=None,
        admin_token_file=None,
        admin_token=None,
        max_connections=max(1, math.ceil(config.max_connections / workers)),
        max_connections_per_ip=math.ceil(config.max_connections_per_ip / workers),
        sources={},
    )
    return render(perWorker)


class Worker(ProcessProtocol):
    """
    One worker process, as its supervisor sees it.
    """

    def __init__(
        self, supervisor: WorkerSupervisor, index: int, readyDescriptor: int
    ) -> None:
        self.supervisor = supervisor
        self.index = index
        self.readyDescriptor = readyDescriptor
        self.ready = False
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == self.readyDescriptor and READY in data and not self.ready:
            self.ready = True
            self.supervisor.workerReady(self)

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.workerEnded(self, reason)
        self.ended.callback(None)


class WorkerSupervisor(Service):
    """
    Binds the listeners, starts C{workers} processes that serve them, keeps
    that many running, and stops them gracefully.

    @ivar steering: why datagrams cannot be steered by source address here
        (the parent then serves the UDP listeners itself); L{None} when
        they can, and the workers serve them.
    """

    restartDelay = 0.1

    def __init__(
        self,
        config: Config,
        reactor: Any,
        reconfigure: Any = None,
        inheritance: Inheritance | None = None,
    ) -> None:
        """
        @param inheritance: what the previous generation left this one, when
            this process executed itself in place (a live upgrade): the
            listening sockets to serve again, and the old workers, which
            drain once the new ones are ready.
        """
        self.config = config
        self.reactor = reactor
        self.count = config.workers
        self.bound: list[BoundSockets] = []
        self.workers: dict[int, Worker] = {}
        # Times each worker was started again after it died, for the status
        # page.
        self.restarts: dict[int, int] = {}
        self.stopping = False
        self.inheritance = inheritance or Inheritance()
        self.oldWorkers: dict[int, int] = dict(self.inheritance.workers)
        # From start until every new worker is ready, after an upgrade.
        self.upgrading = self.inheritance.inPlace
        self._readyWaiters: list[Deferred[None]] = []
        self._reaper: LoopingCall | None = None
        # The previous generation's scratch directory (its workers' admin
        # sockets), removed once its workers are gone.
        self._oldDirectory = self.inheritance.scratch
        self._directory = tempfile.mkdtemp(prefix="myserver-workers-")
        self.configPath = os.path.join(self._directory, "worker.toml")
        self.reconfigure = reconfigure
        # Workers run the parent's kind of reactor.
        name = reactorName(reactor)
        self.twistdOptions = ["--reactor", name] if name else []
        self.steering: str | None = None
        if any(listener.isDatagram for listener in config.listen):
            self.steering = steeringProblem()
            if self.steering is not None:
                log.warn(
                    "UDP listeners are served by the supervisor, not the "
                    "workers: datagrams cannot be steered by source address "
                    "here ({problem})",
                    problem=self.steering,
                )

    def serves(self, listener: Listener) -> bool:
        """
        Whether the workers serve C{listener} (else this process does).
        """
        return not listener.isDatagram or self.steering is None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        for listener in self.config.listen:
            if not self.serves(listener):
                continue
            inherited = self.inheritance.takeAll(listener.endpoint)
            if inherited:
                bound = adoptBound(listener, inherited, self.count)
            elif listener.isDatagram:
                bound = bindDatagramListener(listener, self.count)
            else:
                bound = bindListener(listener, self.count, self.reactor)
            self.bound.append(bound)
            for sock in bound.sockets[:1]:
                log.info(
                    "{protocol} listening on {address} ({endpoint}) for "
                    "{count} workers",
                    protocol=listener.protocol,
                    address=_describe(sock),
                    endpoint=listener.endpoint,
                    count=self.count,
                )
        self._writeConfig(self.config)

    def _writeConfig(self, config: Config) -> None:
        served = [
            (
                # The new settings; a changed listener changes at restart.
                sameListener(bound.listener, config.listen) or bound.listener,
                workerEndpoint(bound.listener, index, bound.sockets[0]),
            )
            for index, bound in enumerate(self.bound)
        ]
        text = workerConfig(config, served, self.count)
        temporary = self.configPath + ".new"
        with open(temporary, "w") as f:
            f.write(text)
        os.replace(temporary, self.configPath)

    def startService(self) -> None:
        super().startService()
        for index in range(self.count):
            self._spawn(index)
        if self.upgrading:
            self.reactor.callLater(self.config.upgrade_timeout, self._upgradeOverdue)

    def _upgradeOverdue(self) -> None:
        """
        After an upgrade the old workers serve until every new one is
        ready, however long that takes: say so once C{upgrade_timeout} has
        passed (new workers that keep failing are restarted meanwhile).
        """
        if self.upgrading and not self.stopping:
            log.error(
                "upgrade: the new workers are not all ready after {timeout}s; "
                "the {count} old workers keep serving",
                timeout=self.config.upgrade_timeout,
                count=len(self.oldWorkers),
            )

    def _spawn(self, index: int) -> None:
        readyDescriptor = _FIRST_FD + len(self.bound)
        worker = Worker(self, index, readyDescriptor)
        # Standard input is a pipe from here: its end tells the worker
        # that the supervisor is gone (SupervisorWatch).  Its output goes
        # where this process's own finally goes, not to an upgrade's pipes.
        stdout, stderr = self.inheritance.outputDescriptors()
        childFDs: dict[int, Any] = {0: "w", 1: stdout, 2: stderr}
        for position, bound in enumerate(self.bound):
            childFDs[_FIRST_FD + position] = bound.forWorker(index).fileno()
        # The worker says "ready" on this pipe once it serves.
        childFDs[readyDescriptor] = "r"
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MYSERVER_") and k != "NOTIFY_SOCKET"
        }
        environ[INHERIT] = Inheritance(ready=readyDescriptor).describe()
        environ["MYSERVER_WORKER"] = str(index)
        environ[SUPERVISOR_PID] = str(os.getpid())
        # Each worker answers its own metrics on a private socket, which the
        # parent's admin endpoint reads and sums.
        environ["MYSERVER_ADMIN"] = "unix:" + self.adminSocket(index)
        environ["LISTEN_FDS"] = str(len(self.bound))
        environ["LISTEN_FDNAMES"] = ":".join(f"l{n}" for n in range(len(self.bound)))
        workerArgs = [self.configPath, *self.twistdOptions]
        process = self.reactor.spawnProcess(
            worker,
            sys.executable,
            [sys.executable, "-m", "myserver.worker", *workerArgs],
            env=environ,
            childFDs=childFDs,
        )
        self.workers[index] = worker
        log.info("worker {index} started (pid {pid})", index=index, pid=process.pid)

    def workerReady(self, worker: Worker) -> None:
        if self.workers.get(worker.index) is not worker:
            return
        if self._allReady():
            if self.upgrading:
                self.upgrading = False
                self.retireOldWorkers()
            waiting, self._readyWaiters = self._readyWaiters, []
            for d in waiting:
                d.callback(None)

    def _allReady(self) -> bool:
        workers = self.workers.values()
        return len(workers) == self.count and all(w.ready for w in workers)

    def whenWorkersReady(self) -> Deferred[None]:
        """
        @return: fires once every worker serves.
        """
        if self._allReady():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._readyWaiters.append(d)
        return d

    def retireOldWorkers(self) -> None:
        """
        The previous generation's workers drain now: close the pipes they
        watch (each stops as on SIGTERM), and reap them as they end (they
        are this process's children, unknown to this reactor).
        """
        if not self.oldWorkers:
            return
        log.info(
            "the new workers serve; the {count} old workers drain",
            count=len(self.oldWorkers),
        )
        for pipe in self.oldWorkers.values():
            if pipe >= 0:
                try:
                    os.write(pipe, RETIRE)
                except OSError:
                    pass
                os.close(pipe)
        self.oldWorkers = {pid: -1 for pid in self.oldWorkers}
        self._reaper = LoopingCall(self._reapOldWorkers)
        self._reaper.clock = self.reactor
        self._reaper.start(0.2, now=False)

    def _reapOldWorkers(self) -> None:
        for pid in list(self.oldWorkers):
            try:
                ended, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                ended = pid
            if ended:
                del self.oldWorkers[pid]
                log.info("old worker (pid {pid}) ended", pid=pid)
        if not self.oldWorkers and self._reaper is not None:
            self._reaper.stop()
            self._reaper = None
            if self._oldDirectory:
                shutil.rmtree(self._oldDirectory, ignore_errors=True)

    def executeInPlace(
        self,
        generation: Generation,
        served: list[tuple[str, int]],
        pidfile: str | None,
        arguments: list[str],
    ) -> NoReturn:
        """
        Become the next generation: execute the new code in this process
        (the pid stays), handing it every listening socket (this process's
        copies for the workers, and C{served}: the admin endpoint's and UDP
        listeners') and the workers, which go on serving until the new
        workers are ready.

        @raise OSError: if the new code cannot be executed; nothing has
            changed then but the descriptors of sockets passed by systemd.
        """
        kept = keptPassedSockets()
        # Descriptors 3, 4, ... are for the sockets systemd passed, as
        # systemd numbers them; everything else goes above.
        lowest = _FIRST_FD + len(kept)
        carried: list[int] = []

        def carry(fd: int) -> int:
            copy = fcntl.fcntl(fd, fcntl.F_DUPFD, lowest)
            os.set_inheritable(copy, True)
            carried.append(copy)
            return copy

        inheritance = Inheritance(
            pidfile=pidfile, inPlace=True, scratch=self._directory
        )
        for bound in self.bound:
            inheritance.sockets.setdefault(bound.listener.endpoint, []).extend(
                carry(sock.fileno()) for sock in bound.sockets
            )
        for endpoint, fd in served:
            inheritance.sockets.setdefault(endpoint, []).append(carry(fd))
        for worker in self.workers.values():
            process = worker.transport
            # The parent's end of the worker's standard input.
            pipe = getattr(process, "pipes", {}).get(0)
            if process is not None and pipe is not None:
                inheritance.workers.append((process.pid, carry(pipe.fileno())))
        for pid, pipe in self.oldWorkers.items():
            # Still draining (or still to be told): reaped by the next.
            inheritance.workers.append((pid, carry(pipe) if pipe >= 0 else -1))
        keptCopies = [carry(fd) for fd in kept]
        environ = successorEnvironment(generation)
        environ[INHERIT] = inheritance.describe()
        log.info(
            "SIGUSR2: executing the new code in place as generation {number} "
            "(pid {pid}); {count} workers serve meanwhile",
            number=generation.number,
            pid=os.getpid(),
            count=len(inheritance.workers),
        )
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        argv = [sys.executable, "-m", "myserver.successor", *arguments]
        try:
            for offset, copy in enumerate(keptCopies):
                os.dup2(copy, _FIRST_FD + offset, inheritable=True)
            os.execve(sys.executable, argv, environ)
        except OSError:
            for copy in carried:
                os.close(copy)
            raise

    def adminSocket(self, index: int) -> str:
        return os.path.join(self._directory, f"admin-{index}.sock")

    def workerEnded(self, worker: Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self.stopping:
            return
        self.restarts[worker.index] = self.restarts.get(worker.index, 0) + 1
        log.warn(
            "worker {index} ended unexpectedly ({reason}); starting another",
            index=worker.index,
            reason=reason.getErrorMessage(),
        )
        self.reactor.callLater(self.restartDelay, self._respawn, worker.index)

    def _respawn(self, index: int) -> None:
        if not self.stopping and index not in self.workers:
            self._spawn(index)

    def signalAll(self, signum: int) -> None:
        for worker in list(self.workers.values()):
            if worker.transport is not None:
                try:
                    worker.transport.signalProcess(signal.Signals(signum).name[3:])
                except ProcessExitedAlready:
                    pass

    def reload(self, config: Config) -> None:
        """
        Hand a validated new configuration to every worker, and tell them.
        """
        self._writeConfig(config)
        self.signalAll(signal.SIGHUP)

    def abortAll(self) -> None:
        """
        A second stop signal: workers end their drains at once.
        """
        self.signalAll(signal.SIGTERM)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.stopping = True
        self.upgrading = False
        self.retireOldWorkers()
        waiting = [worker.ended for worker in self.workers.values()]
        self.signalAll(signal.SIGTERM)
        deadline = self.reactor.callLater(
            self.config.shutdown_timeout + 5, self.signalAll, signal.SIGKILL
        )

        def finished(_: object) -> None:
            if deadline.active():
                deadline.cancel()
            for bound in self.bound:
                bound.close()
            shutil.rmtree(self._directory, ignore_errors=True)
            log.info("all workers stopped")

        done = DeferredList(waiting) if waiting else succeed([])
        return done.addCallback(finished)


class _SupervisorPipe(FileDescriptor):
    """
    The read end of the pipe from the supervisor: its end means the
    supervisor is gone, unless the supervisor said L{RETIRE} first (a live
    upgrade: new workers serve now).
    """

    def __init__(
        self, reactor: Any, fileDescriptor: int, whenClosed: Callable[[bytes], None]
    ) -> None:
        super().__init__(reactor)
        self._fileDescriptor = fileDescriptor
        self._whenClosed = whenClosed
        self._said = b""
        fdesc.setNonBlocking(fileDescriptor)

    def fileno(self) -> int:
        return self._fileDescriptor

    def doRead(self) -> Any:
        return fdesc.readFromFD(self._fileDescriptor, self._heard)

    def _heard(self, data: bytes) -> None:
        self._said = (self._said + data)[-64:]

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._whenClosed(self._said)


class SupervisorWatch(Service):
    """
    In a worker: stop when the supervisor is gone, however it ended.

    The supervisor holds the write end of the worker's standard input,
    and the kernel closes it when the supervisor ends, SIGKILL included:
    portable, and noticed at the next reactor turn.  Stopping is the
    server's own, as on SIGTERM (C{stop}).
    """

    def __init__(
        self,
        reactor: Any,
        stop: Callable[[str], None],
        supervisor: int,
        fileDescriptor: int = 0,
    ) -> None:
        self.reactor = reactor
        self._stop = stop
        self.supervisor = supervisor
        self._pipe = _SupervisorPipe(reactor, fileDescriptor, self._gone)

    def startService(self) -> None:
        super().startService()
        self.reactor.addReader(self._pipe)

    def stopService(self) -> None:
        super().stopService()
        # Stopping already: the pipe's end no longer matters.
        self.reactor.removeReader(self._pipe)

    def _gone(self, said: bytes) -> None:
        if not self.running:
            return
        if RETIRE in said:
            self._stop(
                f"retired by the supervisor (pid {self.supervisor}) after an upgrade"
            )
        else:
            self._stop(f"the supervisor (pid {self.supervisor}) is gone")


def _describe(sock: socket.socket) -> str:
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{address}"
    kind = "udp" if sock.type == socket.SOCK_DGRAM else "tcp"
    if sock.family == socket.AF_INET6:
        return f"{kind}6:[{address[0]}]:{address[1]}"
    return f"{kind}:{address[0]}:{address[1]}"
