# -*- test-case-name: tests.test_plugins -*-
"""
Finding protocol plugins.

Plugins are L{IProtocolPlugin} providers in any C{twisted/plugins/} package
on the path, found with L{twisted.plugin.getPlugins}.  Each one is checked
against the interface with L{zope.interface.verify.verifyObject}, and names
must be unique, so that a typo in a third-party plugin is reported by name
instead of surfacing later as an AttributeError inside the reactor.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.plugin import getPlugins
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from myserver.errors import ConfigError
from myserver.interfaces import IProtocolPlugin


@dataclass(frozen=True)
class Discovery:
    """
    What plugin discovery found.

    @ivar protocols: valid plugins by name.
    @ivar problems: one line for each plugin that was rejected, by the name
        it claimed (or its module, when it has no usable name).
    """

    protocols: dict[str, IProtocolPlugin]
    problems: dict[str, str]

    def plugin(self, name: str) -> IProtocolPlugin:
        """
        The valid plugin called C{name}.

        @raise ConfigError: saying why there is none: its problem, or the
            names that are available.
        """
        if name in self.protocols:
            return self.protocols[name]
        if name in self.problems:
            raise ConfigError(self.problems[name])
        available = ", ".join(sorted(self.protocols)) or "none"
        raise ConfigError(f"unknown protocol {name!r} (available: {available})")


def _origin(plugin: object) -> str:
    return f"{type(plugin).__module__}.{type(plugin).__qualname__}"


def discover() -> Discovery:
    """
    Find, verify and index every protocol plugin on the path.
    """
    from twisted import plugins

    protocols: dict[str, IProtocolPlugin] = {}
    problems: dict[str, str] = {}
    for plugin in getPlugins(IProtocolPlugin, plugins):
        name = getattr(plugin, "name", None)
        key = name if isinstance(name, str) and name else _origin(plugin)
        try:
            verifyObject(IProtocolPlugin, plugin)
            if not isinstance(name, str) or not name or name != name.strip():
                raise Invalid(f"its name {name!r} is not a non-empty string")
            if not isinstance(plugin.description, str):
                raise Invalid("its description is not a string")
        except Invalid as e:
            problems[key] = (
                f"protocol plugin {_origin(plugin)} is invalid: "
                f"{' '.join(str(e).split())}"
            )
            continue
        if name in protocols:
            problems[name] = (
                f"protocol {name!r} is defined twice: by "
                f"{_origin(protocols.pop(name))} and by {_origin(plugin)}"
            )
            continue
        if name not in problems:
            protocols[name] = plugin
    return Discovery(protocols, problems)
