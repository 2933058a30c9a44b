"""
C{twistd myserver}: command-line options and the service they describe.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from typing import Any, NoReturn

from twisted.application.service import IService, MultiService, Service
from twisted.python import usage

from myserver.config import SETTINGS, Config, ConfigError, Listener, load, render

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

    def __init__(self) -> None:
        super().__init__()
        for name in ("listen", *_LISTS):
            self[name] = []

    def opt_listen(self, endpoint: str) -> None:
        """
        Endpoint to listen on (repeatable), e.g. tcp:27015,
        tcp6:27015:interface=\\:\\:1, unix:/run/myserver.sock;
        PROTOCOL=ENDPOINT serves another protocol there, e.g.
        chargen=tcp:27019.
        """
        self["listen"].append({"text": endpoint, "options": {}})

    def opt_option(self, assignment: str) -> None:
        """
        KEY=VALUE option for the protocol of the --listen before it
        (repeatable); VALUE is read as TOML (72, true, "text") or else
        taken as text.
        """
        key, equals, text = assignment.partition("=")
        if not equals or not key.strip():
            raise usage.UsageError(f"--option {assignment!r}: expected KEY=VALUE")
        if not self["listen"]:
            raise usage.UsageError(f"--option {assignment!r}: no --listen before it")
        self["listen"][-1]["options"][key.strip()] = _tomlValue(text)

    def opt_allow(self, networks: str) -> None:
        """
        Serve only clients in these CIDR networks (repeatable; comma
        separated lists too), e.g. 127.0.0.0/8,::1.
        """
        self["allow"].append(networks)

    def opt_deny(self, networks: str) -> None:
        """
        Refuse clients in these CIDR networks, even if allowed (repeatable).
        """
        self["deny"].append(networks)

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            _fail(str(e))

    def postOptions(self) -> None:
        from myserver.plugins import discover
        from myserver.reactor import installUnlessChosen

        # Before anything imports the default reactor: twistd installs the
        # one named by --reactor while parsing its own options, earlier.
        installUnlessChosen()
        discovery = discover()
        if self["list-protocols"]:
            for name in sorted(discovery.protocols):
                print(f"{name:<16} {discovery.protocols[name].description}")
            raise SystemExit(0)
        cli = {s.name: self[s.flag[2:]] for s in SETTINGS if s.name not in _LISTS}
        cli["config"] = self["config"]
        for name in _LISTS:
            cli[name] = self[name] or None
        cli["listen"] = [_listenerTable(given) for given in self["listen"]] or None
        try:
            known = discovery.protocols.keys() | discovery.problems.keys()
            self.config = load(cli, os.environ, known)
            self.cli, self.knownProtocols = cli, known
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
            sys.stdout.write(render(self.config))
            raise SystemExit(0)
        self._chooseLogger()

    def _chooseLogger(self) -> None:
        """
        Have twistd log through myserver's observer, unless the operator
        asked twistd for a logger of their own or for syslog.
        """
        twistd = getattr(self, "parent", None)
        if twistd is None or twistd.get("logger") or twistd.get("syslog"):
            return
        from myserver.logs import prepare

        logfile = twistd.get("logfile") or ("-" if twistd.get("nodaemon") else "")
        if logfile in ("-", ""):
            stream = None if logfile == "-" else _openLog("twistd.log")
        else:
            stream = _openLog(logfile)
        twistd["logger"] = prepare(
            self.config.log_level, self.config.log_format, stream
        )


def _tomlValue(text: str) -> Any:
    """
    A command-line option value: a TOML value if it parses as one, else
    the text itself.
    """
    import tomllib

    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


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


def _buildFactory(plugin: Any, listener: Listener) -> Any:
    """
    The listener's protocol factory, or for a datagram listener its
    datagram protocol; a plugin's complaint about its options is a
    configuration error.
    """
    from myserver.interfaces import IDatagramPlugin

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


class _Root(MultiService):
    """
    The top service under twistd: a listener that cannot start ends the
    process with one line on standard error and status 1.
    """

    def privilegedStartService(self) -> None:
        from myserver.service import CannotListen

        try:
            super().privilegedStartService()
        except CannotListen as e:
            _fail(str(e), 1)


def makeService(options: Options) -> IService:
    """
    Build the server described by C{options}: one guarded listener per
    configured endpoint, drained gracefully on SIGTERM and SIGINT.
    """
    from twisted.internet import reactor

    from myserver.datagram import (
        DatagramListenerService,
        GuardedDatagramProtocol,
        SourceRateLimit,
    )
    from myserver.guard import Guard
    from myserver.reload import Reconfigure, admissionFor, listenerSetting
    from myserver.service import (
        ConnectionRegistry,
        ListenerService,
        ServerService,
        StopOnSignals,
        log,
    )

    config = options.config
    registry = ConnectionRegistry(
        config.max_connections, logConnections=config.log_level == "debug"
    )
    guards = []
    targets: list[tuple[Listener, Any]] = []
    listeners: list[Service] = []
    supervisor = None
    if config.workers > 1:
        # Stream listeners are served by worker processes; datagram
        # listeners, which have no connections to spread, by this one.
        from myserver.workers import WorkerSupervisor

        supervisor = WorkerSupervisor(config, reactor)
        listeners.append(supervisor)
    for listener, factory in zip(config.listen, options.factories, strict=True):
        setting = partial(listenerSetting, config, listener)
        if supervisor is not None and not listener.isDatagram:
            continue
        if listener.isDatagram:
            limit = SourceRateLimit(
                reactor, setting("datagram_rate"), setting("datagram_burst")
            )
            guarded = GuardedDatagramProtocol(
                factory,
                listener.protocol,
                admissionFor(config, listener),
                limit,
                reactor,
            )
            targets.append((listener, guarded))
            listeners.append(DatagramListenerService(listener, guarded, reactor))
            continue
        guard = Guard(
            registry,
            reactor,
            protocolName=listener.protocol,
            maxWriteBuffer=setting("max_write_buffer"),
            idleTimeout=setting("idle_timeout"),
            maxConnections=listener.settings.get("max_connections", 0),
            admission=admissionFor(config, listener),
            noDelay=setting("tcp_nodelay"),
        )
        guards.append(guard)
        targets.append((listener, guard))
        listeners.append(ListenerService(listener, factory, guard, reactor))
    server = ServerService(registry, config.shutdown_timeout, reactor, guards)
    for service in listeners:
        service.setServiceParent(server)
    for problem in getattr(options, "pluginProblems", ()):
        log.warn("ignoring a protocol plugin: {problem}", problem=problem)
    if hasattr(options, "cli"):
        server.reconfigure = Reconfigure(
            options.cli,
            options.knownProtocols,
            config,
            server,
            targets,
            lambda: os.environ,
            supervisor.reload if supervisor is not None else None,
        )

    root = _Root()
    if getattr(options, "parent", None) is not None:
        # Under twistd: own SIGTERM/SIGINT (so that a drain exits with 0)
        # and SIGHUP; first, so that they are handled before anything else
        # starts.
        StopOnSignals(reactor, server).setServiceParent(root)
    if config.admin is not None:
        from myserver.admin import AdminService, adminSite

        datagrams = [t for _, t in targets if not isinstance(t, Guard)]
        site = adminSite(server, datagrams, supervisor)
        # Added before the server: stopping runs in reverse, so the server
        # starts draining (and /readyz says so) before the admin stops.
        AdminService(config.admin, site, server, reactor).setServiceParent(root)
    server.setServiceParent(root)
    return root
