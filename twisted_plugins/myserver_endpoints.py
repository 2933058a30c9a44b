"""
Endpoint string types of myserver's own: C{tlsreload:}, TLS whose certificate is
read again on SIGHUP (see L{myserver.tls}), and C{inherited:}, how a worker
process serves a TLS listener on the socket its supervisor bound (see
L{myserver.workers}).
"""

from typing import Any

from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReloadableTLSParser:
    prefix = "tlsreload"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from myserver.tls import parseTLS

        return parseTLS(reactor, *args, **kwargs)


tls = ReloadableTLSParser()


@implementer(IPlugin, IStreamServerEndpointStringParser)
class InheritedParser:
    prefix = "inherited"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from myserver.workers import parseInherited

        return parseInherited(reactor, *args, **kwargs)


inherited = InheritedParser()
