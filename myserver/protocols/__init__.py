# -*- test-case-name: tests.test_protocols -*-
"""
Built-in protocols, and the lazy plugin descriptor that publishes them.
"""

from collections.abc import Mapping
from importlib import import_module
from typing import Any

from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import DatagramProtocol
from twisted.plugin import IPlugin
from zope.interface import alsoProvides, implementer

from myserver.interfaces import IDatagramPlugin, IProtocolPlugin


@implementer(IPlugin, IProtocolPlugin)
class BuiltinProtocol:
    """
    An L{IProtocolPlugin} whose protocol module is imported only when a
    listener actually serves it, so that listing or validating protocols
    stays cheap (the same idea as L{twisted.application.service.ServiceMaker}).

    @ivar module: dotted name of a module with a C{buildFactory(options)}
        function.
    """

    def __init__(
        self, name: str, description: str, module: str, datagram: bool = False
    ) -> None:
        """
        @param datagram: whether the module also has a
            C{buildDatagramProtocol(options)}, making this plugin provide
            L{IDatagramPlugin} too.
        """
        self.name = name
        self.description = description
        self.module = module
        if datagram:
            alsoProvides(self, IDatagramPlugin)

    def buildFactory(self, options: Mapping[str, Any]) -> IProtocolFactory:
        factory: IProtocolFactory = import_module(self.module).buildFactory(options)
        return factory

    def buildDatagramProtocol(self, options: Mapping[str, Any]) -> DatagramProtocol:
        if not IDatagramPlugin.providedBy(self):
            raise ValueError(f"{self.name} has no datagram (UDP) form")
        protocol: DatagramProtocol = import_module(self.module).buildDatagramProtocol(
            options
        )
        return protocol

    def __repr__(self) -> str:
        return f"<BuiltinProtocol {self.name!r} from {self.module}>"
