# -*- test-case-name: tests.test_config -*-
"""
The effective configuration as TOML: what C{--check-config} prints, and the
file a worker process is started with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from myserver.settings import SETTINGS, Config


def _toml(value: object) -> str:
    """
    Render a configuration value as TOML.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{key} = {_toml(item)}" for key, item in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")


def render(config: Config) -> str:
    """
    The effective configuration as a TOML document that myserver accepts as
    its C{--config} file, each setting annotated with its source.
    """
    listen = [
        {"endpoint": listener.endpoint, "protocol": listener.protocol}
        | ({"options": dict(listener.options)} if listener.options else {})
        | {
            name: [str(n) for n in value] if name in ("allow", "deny") else value
            for name, value in listener.settings.items()
        }
        for listener in config.listen
    ]
    lines = [f"listen = {_toml(listen)}  # {config.sources.get('listen', 'default')}"]
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        if setting.name in ("allow", "deny"):
            value = [str(network) for network in value]
        elif value is None:
            value = "off"
        source = config.sources.get(setting.name, "default")
        lines.append(f"{setting.name} = {_toml(value)}  # {source}")
    lines.append(f"# config file: {config.config or 'none'}")
    return "\n".join(lines) + "\n"
