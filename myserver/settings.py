# -*- test-case-name: tests.test_config,tests.test_configfuzz -*-
"""
The settings schema: every setting's name, parser and help, the scalar
parsers, and the frozen L{Config} and L{Listener} they produce.

Pure: no Twisted, no reactor, no files.  Every setting has one name in
three spellings: the command line (C{--max-write-buffer}), the environment
(C{MYSERVER_MAX_WRITE_BUFFER}) and the TOML file (C{max_write_buffer});
L{myserver.config} merges the sources.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

ENV_PREFIX = "MYSERVER_"
DEFAULT_ENDPOINT = "tcp:27015"
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
LOG_FORMATS = ("text", "json")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Listener:
    """
    One listening endpoint and what it serves.

    @ivar endpoint: a Twisted server endpoint string, e.g. C{tcp:27015}.
    @ivar protocol: the name of the L{IProtocolPlugin} served there.
    @ivar options: the listener's own options for that plugin.
    @ivar settings: the listener's own values for settings in
        L{PER_LISTENER}, overriding the server-wide ones.
    """

    endpoint: str
    protocol: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def isDatagram(self) -> bool:
        return self.endpoint.split(":", 1)[0].lower() == "udp"


@dataclass(frozen=True)
class Config:
    """
    The effective configuration.  C{sources} maps each setting name to where
    its value came from, for C{--check-config}.
    """

    listen: tuple[Listener, ...]
    protocol: str = "echo"
    max_connections: int = 10000
    max_connections_per_ip: int = 0
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    idle_timeout: float = 300.0
    max_write_buffer: int = 1024 * 1024
    max_buffered: int = 64 * 1024 * 1024
    handshake_timeout: float = 30.0
    tcp_nodelay: bool = True
    datagram_rate: float = 10.0
    datagram_burst: int = 20
    shutdown_timeout: float = 25.0
    upgrade_timeout: float = 60.0
    workers: int = 1
    admin: str | None = None
    admin_token_file: str | None = None
    # The token read from admin_token_file (by myserver.config.load): not a
    # setting of its own, and never rendered or shown.
    admin_token: str | None = field(default=None, repr=False)
    log_level: str = "info"
    log_format: str = "text"
    config: str | None = None
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


_SIZE = re.compile(r"\s*(\d+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(|ms|s|m|h)\s*", re.IGNORECASE)
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


def parseSize(value: object) -> int:
    """
    A positive number of bytes: an integer, or a string such as C{65536},
    C{64KiB}, C{1M} (units are binary: K = 1024).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)[:1].lower()]
    else:
        raise ValueError("expected a size in bytes such as 1048576, 64KiB or 1MiB")
    if size <= 0:
        raise ValueError("must be a positive size in bytes")
    return size


def parseBudget(value: object) -> int:
    """
    A size as for L{parseSize}, or 0 for no budget at all.
    """
    if value in (0, "0"):
        return 0
    return parseSize(value)


def parseDuration(value: object) -> float:
    """
    A non-negative number of seconds: a number, or a string such as C{25},
    C{2.5s}, C{500ms}, C{5m}, C{1h}.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    else:
        raise ValueError("expected seconds such as 25, 2.5s, 500ms or 5m")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a non-negative number of seconds")
    return seconds


def _positiveDuration(value: object) -> float:
    """
    A duration (L{parseDuration}) that is more than nothing.
    """
    seconds = parseDuration(value)
    if seconds <= 0:
        raise ValueError("must be more than 0 seconds")
    return seconds


def _count(minimum: int, maximum: int | None = None) -> Callable[[object], int]:
    """
    A parser for a whole number in [minimum, maximum].
    """

    def parseCount(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and value.strip().isdecimal():
            number = int(value.strip())
        else:
            raise ValueError("expected a whole number")
        if number < minimum or (maximum is not None and number > maximum):
            upper = f" to {maximum}" if maximum is not None else " or more"
            raise ValueError(f"must be {minimum}{upper}")
        return number

    return parseCount


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def parseBool(value: object) -> bool:
    """
    A boolean: TOML's true/false, or true/false, yes/no, on/off, 1/0.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("expected true or false")


def _positive(value: object) -> float:
    """
    A positive, finite number.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError("expected a number such as 10 or 0.5") from None
    else:
        raise ValueError("expected a number such as 10 or 0.5")
    if not math.isfinite(number) or number <= 0:
        raise ValueError("must be a positive number")
    return number


def parseNetworks(value: object) -> tuple[Network, ...]:
    """
    CIDR networks, IPv4 or IPv6: a list of strings, or one string of them
    separated by commas or white space.  A bare address is a /32 or /128.
    """
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        items: list[object] = []
        for item in value:
            items.extend(
                item.replace(",", " ").split() if isinstance(item, str) else [item]
            )
    else:
        raise ValueError("expected CIDR networks such as 10.0.0.0/8, ::1")
    networks = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError("expected CIDR networks such as 10.0.0.0/8, ::1")
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as e:
            raise ValueError(f"{item!r} is not a network: {e}") from None
    return tuple(networks)


def _choice(choices: Sequence[str]) -> Callable[[object], str]:
    def parseChoice(value: object) -> str:
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        raise ValueError(f"expected one of {', '.join(choices)}")

    return parseChoice


def tomlValue(text: str) -> Any:
    """
    A command-line option value (C{--option KEY=VALUE}): a TOML value if it
    parses as one (C{72}, C{true}, C{"text"}), else the text itself.
    """
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def parseName(value: object) -> str:
    """
    A protocol name: a non-empty string with no white space.
    """
    if isinstance(value, str) and value and not any(c.isspace() for c in value):
        return value
    raise ValueError("expected a protocol name")


def parseWorkers(value: object) -> int:
    """
    A number of worker processes, or C{auto} for one per CPU this process
    may run on.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) or 1
    return _count(1, 1024)(value)


def parseAdmin(value: object) -> str | None:
    """
    The admin endpoint: a stream endpoint string, or C{off} (or empty).
    The string itself is checked by L{myserver.config.load}'s endpoint
    checker, like the listeners'.
    """
    if not isinstance(value, str):
        raise ValueError("expected an endpoint such as tcp:9027:interface=127.0.0.1")
    if value.strip().lower() in ("", "off", "none"):
        return None
    return value


def parsePath(value: object) -> str | None:
    """
    A file's path, or C{off} (or empty) for none.  Whether the file can be
    read is checked by L{myserver.config.load}.
    """
    if not isinstance(value, str):
        raise ValueError("expected a file's path")
    if value.strip().lower() in ("", "off", "none"):
        return None
    return value


@dataclass(frozen=True)
class Setting:
    """
    How one scalar setting is spelled, parsed and documented.
    """

    name: str
    parse: Callable[[object], Any]
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("protocol", parseName, "Protocol served by listeners that name none."),
    Setting(
        "max_connections",
        _count(1),
        "Open connections in all; at the limit the server stops accepting "
        "(clients wait in the kernel's backlog) until one closes.",
    ),
    Setting(
        "max_connections_per_ip",
        _count(0),
        "Open connections per client address (0: no limit); beyond it new "
        "connections from that address are closed at once.",
    ),
    Setting(
        "ipv4_prefix",
        _count(0, 32),
        "IPv4 prefix length that counts as one address for the per-IP limit.",
    ),
    Setting(
        "ipv6_prefix",
        _count(0, 128),
        "IPv6 prefix length that counts as one address for the per-IP limit.",
    ),
    Setting(
        "allow",
        parseNetworks,
        "Only clients in these CIDR networks are served (repeatable; empty: all).",
    ),
    Setting(
        "deny",
        parseNetworks,
        "Clients in these CIDR networks are refused, even if allowed (repeatable).",
    ),
    Setting(
        "idle_timeout",
        parseDuration,
        "Close a connection with no bytes either way for this long (0: never).",
    ),
    Setting(
        "max_write_buffer",
        parseSize,
        "Per-connection bytes queued for sending above which the server stops "
        "reading from that client until they drain.",
    ),
    Setting(
        "max_buffered",
        parseBudget,
        "Bytes queued for all clients together (0: no budget); above half of "
        "it the server reads less from the clients it queues most for, at it "
        "stops accepting, and past 1.25 times it aborts the largest queues.",
    ),
    Setting(
        "handshake_timeout",
        parseDuration,
        "Seconds from accept within which the PROXY header and the TLS "
        "handshake must be done, however slowly bytes arrive (0: no deadline).",
    ),
    Setting(
        "tcp_nodelay",
        lambda value: parseBool(value),
        "Send small writes at once (TCP_NODELAY) on accepted TCP connections; "
        "true by default, as asyncio and uvloop do.",
    ),
    Setting(
        "datagram_rate",
        _positive,
        "UDP listeners: datagrams per second answered per source address.",
    ),
    Setting(
        "datagram_burst",
        _count(1),
        "UDP listeners: datagrams a source may send at once before its rate applies.",
    ),
    Setting(
        "shutdown_timeout",
        parseDuration,
        "Seconds open connections get to finish after SIGTERM/SIGINT.",
    ),
    Setting(
        "upgrade_timeout",
        _positiveDuration,
        "Seconds a new generation started by SIGUSR2 gets to serve every "
        "listener; past it the upgrade is refused and the old one serves on.",
    ),
    Setting(
        "workers",
        lambda value: parseWorkers(value),
        "Processes serving the listeners (auto: one per CPU); the parent "
        "binds and supervises.",
    ),
    Setting(
        "admin",
        lambda value: parseAdmin(value),
        "Endpoint for the admin HTTP server (/metrics /healthz /readyz "
        "/status /status.json), e.g. tcp:9027:interface=127.0.0.1; off by default.",
    ),
    Setting(
        "admin_token_file",
        lambda value: parsePath(value),
        "File holding a token that /metrics, /status and /status.json ask "
        "for (a bearer token, or a basic-auth password); /healthz and /readyz "
        "stay open.",
    ),
    Setting("log_level", _choice(LOG_LEVELS), "One of " + ", ".join(LOG_LEVELS)),
    Setting("log_format", _choice(LOG_FORMATS), "text, or json: one object a line."),
)
SETTINGS_BY_NAME = {setting.name: setting for setting in SETTINGS}
# Settings that a [[listen]] table may set for that listener alone.
PER_LISTENER = (
    "max_connections",
    "max_connections_per_ip",
    "ipv4_prefix",
    "ipv6_prefix",
    "allow",
    "deny",
    "idle_timeout",
    "max_write_buffer",
    "handshake_timeout",
    "tcp_nodelay",
    "datagram_rate",
    "datagram_burst",
)
KNOWN_KEYS = frozenset(SETTINGS_BY_NAME) | {"listen"}
