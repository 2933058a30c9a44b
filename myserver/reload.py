# -*- test-case-name: tests.test_reload,tests.test_core -*-
"""
Reloading the configuration on SIGHUP, as nginx and HAProxy do.

The TOML file and the environment are read again and validated exactly as
at start (C{--check-config} is the dry run of the same code).  An invalid
new configuration is refused with one error line and the running one stays.
A valid one takes effect without dropping a connection: limits, timeouts,
allow/deny networks, datagram rates, the shutdown timeout and the log level.
Changes to the listeners themselves (endpoints, protocols, their options),
the log format or the worker count need a restart, and are logged as such.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any

from twisted.logger import Logger

from myserver.admission import Admission
from myserver.config import EndpointCheck, load
from myserver.errors import ConfigError
from myserver.settings import Config, Listener

log = Logger(namespace="myserver")

# What must stay the same for a reload to apply in place.
_NEEDS_RESTART = ("log_format",)


def listenerSetting(config: Config, listener: Listener, name: str) -> Any:
    """
    A listener's own value for a setting, or else the server-wide one.
    """
    return listener.settings.get(name, getattr(config, name))


def admissionFor(config: Config, listener: Listener) -> Admission:
    setting = listenerSetting
    return Admission(
        setting(config, listener, "allow"),
        setting(config, listener, "deny"),
        setting(config, listener, "max_connections_per_ip"),
        setting(config, listener, "ipv4_prefix"),
        setting(config, listener, "ipv6_prefix"),
    )


def sameListener(
    listener: Listener, candidates: tuple[Listener, ...]
) -> Listener | None:
    """
    The listener among C{candidates} (a new configuration's) that is
    C{listener}: the same endpoint and protocol, perhaps new settings.
    """
    for candidate in candidates:
        if (candidate.endpoint, candidate.protocol) == (
            listener.endpoint,
            listener.protocol,
        ):
            return candidate
    return None


class Reconfigure:
    """
    Re-reads the configuration and applies it to a running server.

    @ivar config: the configuration in force.
    @ivar targets: for each listener served in this process, the object
        that applies its settings: a L{myserver.policy.Guard} or a
        L{myserver.datagram.GuardedDatagramProtocol}.
    """

    def __init__(
        self,
        cli: Mapping[str, Any],
        protocols: Collection[str],
        config: Config,
        server: Any,
        targets: list[tuple[Listener, Any]],
        environ: Callable[[], Mapping[str, str]],
        checkEndpoint: EndpointCheck,
        setLogLevel: Callable[[str], None] | None = None,
        workers: Callable[[Config], None] | None = None,
    ) -> None:
        """
        @param server: the L{myserver.service.ServerService}.
        @param targets: each listener served in this process, with what
            applies its settings.
        @param checkEndpoint: checks endpoint strings, as at start.
        @param setLogLevel: changes the level of the server's log observer,
            when it has one (not under an operator's own twistd logger).
        @param workers: hands a new configuration to worker processes.
        """
        self.checkEndpoint = checkEndpoint
        self.setLogLevel = setLogLevel
        self.cli = cli
        self.protocols = protocols
        self.config = config
        self.server = server
        self.targets = targets
        self.environ = environ
        self.workers = workers

    def __call__(self) -> bool:
        """
        @return: whether the new configuration was applied.
        """
        try:
            new = load(self.cli, self.environ(), self.protocols, self.checkEndpoint)
        except ConfigError as e:
            log.error("reload refused, configuration unchanged: {error}", error=str(e))
            return False
        old, self.config = self.config, new
        for name in _NEEDS_RESTART:
            if getattr(old, name) != getattr(new, name):
                log.warn(
                    "{setting} changed: takes effect at the next upgrade "
                    "(SIGUSR2) or restart",
                    setting=name,
                )
        oldListeners = [(x.endpoint, x.protocol, dict(x.options)) for x in old.listen]
        newListeners = [(x.endpoint, x.protocol, dict(x.options)) for x in new.listen]
        if oldListeners != newListeners:
            log.warn(
                "listeners changed: the new ones take effect at the next "
                "upgrade (SIGUSR2) or restart"
            )
        if old.workers != new.workers:
            log.warn(
                "workers changed: takes effect at the next upgrade (SIGUSR2) or restart"
            )
        for listener, target in self.targets:
            match = sameListener(listener, new.listen)
            if match is not None:
                self._apply(new, match, target)
        self.server.gate.maxConnections = new.max_connections
        self.server.gate.budget.setLimit(new.max_buffered)
        self.server.gate.reconsider()
        self.server.shutdownTimeout = new.shutdown_timeout
        self.server.restartSweeper()
        if self.setLogLevel is not None:
            self.setLogLevel(new.log_level)
        self.server.registry.logConnections = new.log_level == "debug"
        access = getattr(self.server, "adminAccess", None)
        if access is not None:
            # A rotated token takes effect at once.
            access.token = new.admin_token
        if self.workers is not None:
            self.workers(replace(new, workers=old.workers))
        log.info("configuration reloaded")
        return True

    @staticmethod
    def _apply(config: Config, listener: Listener, target: Any) -> None:
        admission = admissionFor(config, listener)
        if listener.isDatagram:
            target.admission = admission
            target.limit.rate = listenerSetting(config, listener, "datagram_rate")
            target.limit.burst = listenerSetting(config, listener, "datagram_burst")
        else:
            target.reconfigure(
                listenerSetting(config, listener, "max_write_buffer"),
                listenerSetting(config, listener, "idle_timeout"),
                listener.settings.get("max_connections", 0),
                admission,
                listenerSetting(config, listener, "handshake_timeout"),
            )
