"""
Built-in protocols, and the lazy plugin descriptor that publishes them.
"""

from collections.abc import Mapping
from importlib import import_module
from typing import Any

from twisted.internet.interfaces import IProtocolFactory
from twisted.plugin import IPlugin
from zope.interface import implementer

from myserver.interfaces import IProtocolPlugin


@implementer(IPlugin, IProtocolPlugin)
class BuiltinProtocol:
    """
    An L{IProtocolPlugin} whose protocol module is imported only when a
    listener actually serves it, so that listing or validating protocols
    stays cheap (the same idea as L{twisted.application.service.ServiceMaker}).

    @ivar module: dotted name of a module with a C{buildFactory(options)}
        function.
    """

    def __init__(self, name: str, description: str, module: str) -> None:
        self.name = name
        self.description = description
        self.module = module

    def buildFactory(self, options: Mapping[str, Any]) -> IProtocolFactory:
        factory: IProtocolFactory = import_module(self.module).buildFactory(options)
        return factory

    def __repr__(self) -> str:
        return f"<BuiltinProtocol {self.name!r} from {self.module}>"
