# -*- test-case-name: tests.test_cli,tests.test_core,tests.test_plugins -*-
"""
C{twistd myserver}: command-line options and the service they describe.

L{Options} parses and validates: it finds the protocol plugins, merges the
configuration and builds each listener's protocol factory (a plugin's
complaint about its options is a configuration error, reported before
anything listens).  L{makeService} builds the service tree from that,
in the spirit of C{twisted.web.tap}.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from functools import partial
from typing import Any, NoReturn

from twisted.application.service import IService, MultiService, Service
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.components import Componentized

from myserver.accepting import AcceptGate
from myserver.admin import AdminService, adminSite
from myserver.budget import OutputBudget
from myserver.config import load
from myserver.datagram import (
    DatagramListenerService,
    GuardedDatagramProtocol,
    SourceRateLimit,
)
from myserver.endpoints import endpointChecker
from myserver.errors import CannotListen, ConfigError
from myserver.generation import current
from myserver.inheritance import Inheritance, adminKey
from myserver.interfaces import IDatagramPlugin
from myserver.logs import ServerLogObserver
from myserver.plugins import discover
from myserver.policy import Guard
from myserver.reactor import installUnlessChosen
from myserver.registry import ConnectionRegistry
from myserver.reload import Reconfigure, admissionFor, listenerSetting
from myserver.render import render
from myserver.service import ListenerService, ServerService, StopOnSignals, log
from myserver.settings import SETTINGS, Config, Listener, tomlValue
from myserver.upgrade import Readiness, Upgrader
from myserver.workers import SUPERVISOR_PID, SupervisorWatch, WorkerSupervisor

# Repeatable options, spelled with opt_ methods.
_LISTS = ("allow", "deny")


def _fail(message: str, status: int = 2) -> NoReturn:
    """
    Print C{myserver: error: MESSAGE} as one line on the real standard error
    (twistd may already have redirected C{sys.stderr} into the log) and exit.
    """
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"myserver: error: {' '.join(message.split())}\n")
    stream.flush()
    raise SystemExit(status)


def _warn(message: str) -> None:
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"myserver: warning: {' '.join(message.split())}\n")


class Options(usage.Options):
    """
    myserver's options.  Each setting is also read from C{MYSERVER_*}
    environment variables and from the TOML file named by C{--config}.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve a protocol (echo by default) on one or more Twisted endpoints "
        "(tcp:27015 by default).  Settings come from these options, then "
        "MYSERVER_* environment variables, then the --config TOML file."
    )
    optFlags = [
        ["check-config", None, "Print the effective configuration and exit."],
        ["list-protocols", None, "List the protocols available and exit."],
    ]
    optParameters = [
        ["config", "c", None, "TOML configuration file (or MYSERVER_CONFIG)."],
        *[[s.flag[2:], None, None, s.help] for s in SETTINGS if s.name not in _LISTS],
    ]

    config: Config
    # Where MYSERVER_* settings are read from (the test kit gives its own).
    environ: Mapping[str, str] = os.environ

    def __init__(self) -> None:
        super().__init__()
        for name in ("listen", *_LISTS):
            self[name] = []

    def opt_listen(self, endpoint: str) -> None:
        """
        Endpoint to listen on (repeatable), e.g. tcp:27015, tcp6:27015:interface=\\:\\:1, unix:/run/myserver.sock; PROTOCOL=ENDPOINT serves another protocol there, e.g. chargen=tcp:27019. Replaces every listener of the TOML file.
        """  # noqa: E501 (one line: usage.Options keeps a docstring's breaks)
        self["listen"].append({"text": endpoint, "options": {}})

    def opt_option(self, assignment: str) -> None:
        """
        KEY=VALUE option for the protocol of the --listen before it (repeatable); VALUE is read as TOML (72, true, "text") or else taken as text.
        """  # noqa: E501
        key, equals, text = assignment.partition("=")
        if not equals or not key.strip():
            raise usage.UsageError(f"--option {assignment!r}: expected KEY=VALUE")
        if not self["listen"]:
            raise usage.UsageError(f"--option {assignment!r}: no --listen before it")
        self["listen"][-1]["options"][key.strip()] = tomlValue(text)

    def opt_allow(self, networks: str) -> None:
        """
        Serve only clients in these CIDR networks (repeatable; comma-separated lists too), e.g. 127.0.0.0/8,::1.
        """  # noqa: E501
        self["allow"].append(networks)

    def opt_deny(self, networks: str) -> None:
        """
        Refuse clients in these CIDR networks, even if allowed (repeatable).
        """
        self["deny"].append(networks)

    def opt_version(self) -> NoReturn:
        """
        Print the versions of myserver, Twisted and Python, and exit.
        """
        import platform

        import twisted

        from myserver import __version__

        print(
            f"myserver {__version__} (Twisted {twisted.__version__}, "
            f"Python {platform.python_version()})"
        )
        raise SystemExit(0)

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            _fail(str(e))

    def postOptions(self) -> None:
        # twistd installs the reactor named by --reactor while parsing its
        # own options, before ours; with none named, myserver's is the
        # default, installed before anything imports the reactor.
        installUnlessChosen()
        from twisted.internet import reactor

        discovery = discover()
        if self["list-protocols"]:
            for name in sorted(discovery.protocols):
                print(f"{name:<16} {discovery.protocols[name].description}")
            for name, problem in sorted(discovery.problems.items()):
                print(f"{name:<16} (broken, not served: {problem})")
            raise SystemExit(0)
        cli = {s.name: self[s.flag[2:]] for s in SETTINGS if s.name not in _LISTS}
        cli["config"] = self["config"]
        for name in _LISTS:
            cli[name] = self[name] or None
        cli["listen"] = [_listenerTable(given) for given in self["listen"]] or None
        self.cli = cli
        self.knownProtocols = discovery.protocols.keys() | discovery.problems.keys()
        self.checkEndpoint = endpointChecker(reactor)
        try:
            self.config = load(
                cli, self.environ, self.knownProtocols, self.checkEndpoint
            )
            for listener in self.config.listen:
                if listener.protocol in discovery.problems:
                    raise ConfigError(discovery.problems[listener.protocol])
            self.factories = [
                _buildFactory(discovery.protocols[listener.protocol], listener)
                for listener in self.config.listen
            ]
        except ConfigError as e:
            _fail(str(e))
        self.pluginProblems = sorted(discovery.problems.values())
        if self["check-config"]:
            for problem in self.pluginProblems:
                _warn(f"ignoring a protocol plugin: {problem}")
            sys.stdout.write(render(self.config))
            raise SystemExit(0)


def _listenerTable(given: dict[str, Any]) -> Any:
    """
    A --listen and its --options, as the configuration's listener table
    (or plain string, when it has no options).
    """
    if not given["options"]:
        return given["text"]
    head, colon, _ = given["text"].partition(":")
    protocol, endpoint = "", given["text"]
    if colon and "=" in head:
        protocol, _, endpoint = given["text"].partition("=")
    table = {"endpoint": endpoint, "options": given["options"]}
    return table | ({"protocol": protocol} if protocol else {})


def _openLog(path: str) -> Any:
    from twisted.python.logfile import LogFile

    return LogFile.fromFullPath(path, rotateLength=None)


def _logObserver(twistd: Any, config: Config) -> ServerLogObserver | None:
    """
    The server's log observer for twistd's application, writing where
    twistd's C{--logfile} says (standard output in the foreground, else
    C{twistd.log}); L{None} when the operator gave twistd a C{--logger} or
    C{--syslog} of their own, or when not run by twistd.
    """
    if twistd is None or "logger" not in twistd:
        return None
    if twistd.get("logger") or twistd.get("syslog"):
        return None
    logfile = twistd.get("logfile") or ("-" if twistd.get("nodaemon") else "")
    if logfile == "-":
        stream = None
    else:
        stream = _openLog(logfile or "twistd.log")
    return ServerLogObserver(config.log_level, config.log_format, stream)


def _buildFactory(plugin: Any, listener: Listener) -> Any:
    """
    The listener's protocol factory, or for a datagram listener its
    datagram protocol; a plugin's complaint about its options is a
    configuration error.
    """
    try:
        if not listener.isDatagram:
            return plugin.buildFactory(listener.options)
        if not IDatagramPlugin.providedBy(plugin):
            raise ValueError("this protocol has no datagram (UDP) form")
        return plugin.buildDatagramProtocol(listener.options)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"listener {listener.endpoint} ({listener.protocol}): {e}"
        ) from None
    except Exception as e:
        # A bug in the plugin, not a bad option: still one line, naming it.
        raise ConfigError(
            f"listener {listener.endpoint} ({listener.protocol}): the plugin's "
            f"buildFactory raised {type(e).__name__}: {e}"
        ) from None


class _Root(MultiService):
    """
    The top service: a listener that cannot start ends the process with one
    line on standard error and status 1, and, under twistd, the server's
    log observer is the application's L{ILogObserver} component.
    """

    def __init__(self, logObserver: ServerLogObserver | None) -> None:
        super().__init__()
        self.logObserver = logObserver

    def setServiceParent(self, parent: Any) -> None:
        if self.logObserver is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.logObserver)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListen as e:
            _fail(str(e), 1)


def _serve(
    config: Config,
    listener: Listener,
    factory: Any,
    registry: ConnectionRegistry,
    gate: AcceptGate,
    reactor: Any,
    inherited: int | None,
) -> tuple[Service, Any]:
    """
    One listener's service, and what applies its settings on reload (its
    L{Guard}, or for UDP its guarded datagram protocol).

    @param inherited: its socket, when a previous generation served it.
    """
    setting = partial(listenerSetting, config, listener)
    if listener.isDatagram:
        limit = SourceRateLimit(
            reactor, setting("datagram_rate"), setting("datagram_burst")
        )
        guarded = GuardedDatagramProtocol(
            factory, listener.protocol, admissionFor(config, listener), limit, reactor
        )
        service = DatagramListenerService(listener, guarded, reactor, inherited)
        return service, guarded
    guard = Guard(
        registry,
        gate,
        reactor,
        protocolName=listener.protocol,
        maxWriteBuffer=setting("max_write_buffer"),
        idleTimeout=setting("idle_timeout"),
        maxConnections=listener.settings.get("max_connections", 0),
        admission=admissionFor(config, listener),
        noDelay=setting("tcp_nodelay"),
        budget=gate.budget,
        handshakeTimeout=setting("handshake_timeout"),
        endpoint=listener.endpoint,
    )
    return ListenerService(listener, factory, guard, reactor, inherited), guard


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the server described by C{options}: one guarded listener per
    configured endpoint (or, with C{workers > 1}, a supervisor whose
    workers serve the listeners), drained gracefully on SIGTERM and
    SIGINT, reloaded on SIGHUP, and the admin endpoint when configured.

    @param reactor: what the tree runs on; the global reactor by default
        (twistd passes none; tests may pass their own).
    """
    if reactor is None:
        from twisted.internet import reactor

    config = options.config
    twistd = getattr(options, "parent", None)
    generation = current()
    # Only a process twistd runs can have been started by an upgrade.
    inheritance = Inheritance.fromEnvironment(os.environ) if twistd else Inheritance()
    registry = ConnectionRegistry(logConnections=config.log_level == "debug")
    gate = AcceptGate(
        registry, config.max_connections, OutputBudget(registry, config.max_buffered)
    )
    supervisor = (
        WorkerSupervisor(config, reactor, inheritance=inheritance)
        if config.workers > 1
        else None
    )
    services: list[Service] = [supervisor] if supervisor is not None else []
    targets: list[tuple[Listener, Any]] = []
    for listener, factory in zip(config.listen, options.factories, strict=True):
        # The workers serve every listener when there are any, but UDP
        # where datagrams cannot be steered by source (served here then).
        if supervisor is None or not supervisor.serves(listener):
            service, target = _serve(
                config,
                listener,
                factory,
                registry,
                gate,
                reactor,
                inheritance.take(listener.endpoint),
            )
            services.append(service)
            targets.append((listener, target))
    guards = [target for _, target in targets if isinstance(target, Guard)]
    server = ServerService(registry, gate, config.shutdown_timeout, reactor, guards)
    for service in services:
        service.setServiceParent(server)
    for problem in options.pluginProblems:
        log.warn("ignoring a protocol plugin: {problem}", problem=problem)
    logObserver = _logObserver(twistd, config)
    server.reconfigure = Reconfigure(
        options.cli,
        options.knownProtocols,
        config,
        server,
        targets,
        lambda: options.environ,
        options.checkEndpoint,
        logObserver.setLevel if logObserver is not None else None,
        supervisor.reload if supervisor is not None else None,
    )
    root = _Root(logObserver)
    stopper = None
    # A worker's environment names its supervisor.
    supervisorPid = options.environ.get(SUPERVISOR_PID)
    worker = supervisorPid is not None
    if twistd is not None:
        # Under twistd (or twist): own SIGTERM/SIGINT (so that a drain exits
        # with 0), SIGHUP and SIGUSR2; first, so that they are handled
        # before anything else starts.
        stopper = StopOnSignals(reactor, server)
        stopper.setServiceParent(root)
        if supervisorPid is not None:
            # A worker: it stops when its supervisor is gone.
            watch = SupervisorWatch(reactor, stopper.stop, int(supervisorPid))
            watch.setServiceParent(root)
    upgrader = None
    if stopper is not None and not worker:
        upgrader = Upgrader(
            reactor,
            server,
            stopper.stop,
            twistd,
            lambda: server.reconfigure.config.upgrade_timeout,  # type: ignore[union-attr]
            generation,
            supervisor=supervisor,
        )
        stopper.upgrade = upgrader.upgrade
    admin = None
    if config.admin is not None:
        datagrams = [t for _, t in targets if not isinstance(t, Guard)]
        site = adminSite(
            server,
            datagrams,
            reactor,
            supervisor,
            token=config.admin_token,
            datagramServices=[
                (listener, t) for listener, t in targets if not isinstance(t, Guard)
            ],
            generation=generation,
            upgrades=upgrader,
        )
        # Added before the server: stopping runs in reverse, so the server
        # starts draining (and /readyz says so) before the admin stops.
        admin = AdminService(
            config.admin,
            site,
            server,
            reactor,
            inheritance.take(adminKey(config.admin)),
        )
        admin.setServiceParent(root)
        if upgrader is not None:
            upgrader.adminService = admin
    server.setServiceParent(root)
    if stopper is not None:
        if not worker:
            log.info(
                "generation {number} (pid {pid}){since}",
                number=generation.number,
                pid=os.getpid(),
                since=" started by an upgrade" if inheritance.upgrading else "",
            )
        # Last, so that it runs once everything else has started.
        Readiness(
            reactor,
            inheritance,
            generation,
            twistd,
            supervisor.whenWorkersReady if supervisor is not None else None,
            worker=worker,
        ).setServiceParent(root)
    return root
