# -*- test-case-name: tests.test_config,tests.test_configfuzz -*-
"""
One frozen, validated configuration, merged from four sources.

Precedence, highest first: command line, environment, TOML file
(C{--config PATH} or C{MYSERVER_CONFIG}), built-in defaults.  Whatever is
wrong raises L{ConfigError} with a single line that names the setting,
where its value came from, and the value.  The schema and the scalar
parsers are L{myserver.settings}; endpoint strings are checked by the
checker the caller hands in (L{myserver.endpoints.endpointChecker}), so
that this module imports no reactor.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any

from myserver.errors import ConfigError
from myserver.settings import (
    DEFAULT_ENDPOINT,
    ENV_PREFIX,
    KNOWN_KEYS,
    PER_LISTENER,
    SETTINGS_BY_NAME,
    Config,
    Listener,
    parseName,
)

EndpointCheck = Callable[[str], None]


def _oneLine(text: str) -> str:
    return " ".join(str(text).split())


def _readFile(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(
            f"cannot read config file {path}: {e.strerror or e}"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML in {path}: {_oneLine(str(e))}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"invalid TOML in {path}: not UTF-8 ({e.reason})") from None


def _readToken(path: str, source: str) -> str:
    """
    The admin token in C{path}: its first line, without surrounding white
    space (a trailing newline is what editors and C{echo} leave).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(4097)
    except OSError as e:
        raise ConfigError(
            f"{source}: cannot read token file {path}: {e.strerror or e}"
        ) from None
    try:
        lines = raw.decode().strip().splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: token file {path} is not UTF-8") from None
    token = lines[0].strip() if lines else ""
    if not token:
        raise ConfigError(f"{source}: token file {path} is empty")
    if len(raw) > 4096 or len(lines) > 1:
        raise ConfigError(f"{source}: token file {path} must hold one line: the token")
    return token


def _listenerFromTable(table: Mapping[str, Any]) -> Listener:
    unknown = set(table) - {"endpoint", "protocol", "options", *PER_LISTENER}
    if unknown:
        raise ValueError(
            f"unknown key {sorted(unknown)[0]!r} in a listen table (expected "
            f"endpoint, protocol, options, {', '.join(PER_LISTENER)})"
        )
    endpoint = table.get("endpoint")
    if not isinstance(endpoint, str):
        raise ValueError('a listen table needs endpoint = "ENDPOINT"')
    protocol = table.get("protocol", "")
    if protocol != "":
        protocol = parseName(protocol)
    options = table.get("options", {})
    if not isinstance(options, Mapping):
        raise ValueError("options in a listen table must be a table")
    settings = {}
    for name in PER_LISTENER:
        if name in table:
            try:
                settings[name] = SETTINGS_BY_NAME[name].parse(table[name])
            except ValueError as e:
                raise ValueError(
                    f"{name} = {_show(table[name])} for {endpoint}: {e}"
                ) from None
    return Listener(
        endpoint,
        protocol,
        MappingProxyType(dict(options)),
        MappingProxyType(settings),
    )


def _listenerFromString(text: str) -> Listener:
    """
    C{ENDPOINT}, or C{PROTOCOL=ENDPOINT} to name the protocol served there
    (an endpoint's own C{=} signs come after its first colon).
    """
    head, colon, _ = text.partition(":")
    if colon and "=" in head:
        protocol, _, endpoint = text.partition("=")
        return Listener(endpoint, parseName(protocol))
    return Listener(text, "")


def _parseListen(value: object) -> list[Listener]:
    """
    Listeners from the command line (a list of strings and tables), the
    environment (a string of endpoints separated by white space) or TOML (a
    string, or an array of strings and tables).  An empty protocol means
    "the default".
    """
    if isinstance(value, str):
        items: list[object] = list(value.split())
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError("expected endpoint strings or [[listen]] tables")
    listeners = []
    for item in items:
        if isinstance(item, str):
            listeners.append(_listenerFromString(item))
        elif isinstance(item, Mapping):
            listeners.append(_listenerFromTable(item))
        else:
            raise ValueError("expected endpoint strings or [[listen]] tables")
    if not listeners:
        raise ValueError("at least one endpoint is needed")
    return listeners


def load(
    cli: Mapping[str, Any],
    environ: Mapping[str, str],
    protocols: Collection[str],
    checkEndpoint: EndpointCheck,
) -> Config:
    """
    Merge and validate every source into one L{Config}.

    @param cli: settings given on the command line, by setting name
        (C{listen} is a list of endpoint strings); absent means not given.
    @param environ: the process environment; only C{MYSERVER_*} is read.
        Other C{MYSERVER_*} names are ignored, because platforms add their
        own (Kubernetes defines C{MYSERVER_PORT} for a Service so named).
    @param protocols: names of the protocol plugins available.
    @param checkEndpoint: raises L{ValueError} for an endpoint string that
        cannot be served (L{myserver.endpoints.endpointChecker}).
    @raise ConfigError: on the first problem found.
    """
    path = cli.get("config") or environ.get(ENV_PREFIX + "CONFIG") or None
    fileValues: dict[str, Any] = {}
    if path is not None:
        fileValues = _readFile(path)
        unknown = sorted(set(fileValues) - KNOWN_KEYS)
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r} in {path}")

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in ("listen", *SETTINGS_BY_NAME):
        flag = "--" + name.replace("_", "-")
        env = ENV_PREFIX + name.upper()
        if name in cli and cli[name] is not None:
            raw, source = cli[name], flag
        elif env in environ:
            raw, source = environ[env], env
        elif name in fileValues:
            raw, source = fileValues[name], f"{path}: {name}"
        else:
            sources[name] = "default"
            continue
        try:
            if name == "listen":
                values[name] = _parseListen(raw)
            else:
                values[name] = SETTINGS_BY_NAME[name].parse(raw)
            if name == "admin" and values[name] is not None:
                checkEndpoint(values[name])
        except ValueError as e:
            raise ConfigError(
                f"{source}: invalid value {_show(raw)}: {_oneLine(str(e))}"
            ) from None
        sources[name] = source

    tokenFile = values.get("admin_token_file")
    if tokenFile is not None:
        values["admin_token"] = _readToken(tokenFile, sources["admin_token_file"])
    protocol = values.get("protocol", Config.protocol)
    listeners = values.pop("listen", [Listener(DEFAULT_ENDPOINT, "")])
    resolved = []
    for listener in listeners:
        name = listener.protocol or protocol
        if name not in protocols:
            available = ", ".join(sorted(protocols)) or "none"
            raise ConfigError(
                f"{sources['listen'] if listener.protocol else sources['protocol']}:"
                f" unknown protocol {name!r} (available: {available}; a plugin"
                " installed with pip install -e is not found: Twisted looks only"
                " in installed twisted/plugins packages)"
            )
        try:
            checkEndpoint(listener.endpoint)
        except ValueError as e:
            raise ConfigError(
                f"{sources['listen']}: invalid endpoint {listener.endpoint!r}: {e}"
            ) from None
        resolved.append(
            Listener(listener.endpoint, name, listener.options, listener.settings)
        )
    sources["config"] = (
        "--config" if cli.get("config") else "MYSERVER_CONFIG" if path else "default"
    )
    return Config(
        listen=tuple(resolved),
        config=path,
        sources=MappingProxyType(sources),
        **values,
    )


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
