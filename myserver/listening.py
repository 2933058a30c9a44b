# -*- test-case-name: tests.test_guard,tests.test_admin,tests.test_core -*-
"""
Listening services: Twisted's L{StreamServerEndpointService}, with the two
things an operator needs from it.

  - A listener that cannot start is one line for the operator
    (L{CannotListen}), raised while the service tree starts, so that twistd
    exits at once instead of logging a traceback and serving the rest.
  - Each listener logs the address it actually bound (C{tcp:0} shows the
    port the kernel chose) and exposes its port, for readiness.

Both are done by wrapping the endpoint (L{ReportingEndpoint}), so nothing
of C{StreamServerEndpointService} is reimplemented.  Its documented
C{_raiseSynchronously} flag is set, as C{twisted.application.strports}
does, so that a synchronous failure to listen is raised from
C{privilegedStartService}; whether an endpoint answers at once or later,
the service works the same.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from myserver.admission import describeAddress
from myserver.errors import CannotListen

log = Logger(namespace="myserver")


@implementer(IStreamServerEndpoint)
class ReportingEndpoint:
    """
    An endpoint that tells its service when it listens, and turns a failure
    to listen into one L{CannotListen} line.
    """

    def __init__(self, endpoint: Any, service: EndpointService) -> None:
        self.endpoint = endpoint
        self.service = service

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        d: Deferred[IListeningPort] = self.endpoint.listen(protocolFactory)
        return d.addCallbacks(self.service.listening, self._failed)

    def _failed(self, failure: Failure) -> Failure:
        if failure.check(CannotListen):
            return failure
        reason = " ".join(failure.getErrorMessage().split())
        return Failure(
            CannotListen(f"cannot listen on {self.service.description}: {reason}")
        )


class EndpointService(StreamServerEndpointService):
    """
    A L{StreamServerEndpointService} that reports its port and fails to
    start with one line.

    @ivar description: the endpoint as the operator wrote it, for messages.
    @ivar serverEndpoint: the endpoint itself (the wrapped one).
    @ivar port: the listening port while it listens, else L{None}.
    """

    _raiseSynchronously = True
    port: IListeningPort | None = None

    def __init__(
        self, endpoint: Any, factory: IProtocolFactory, description: str
    ) -> None:
        super().__init__(ReportingEndpoint(endpoint, self), factory)
        self.serverEndpoint = endpoint
        self.description = description

    def listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        self.logListening(describeAddress(port.getHost()))
        return port

    def logListening(self, address: str) -> None:
        log.info(
            "listening on {address} ({endpoint})",
            address=address,
            endpoint=self.description,
        )

    def stopService(self) -> Deferred[None]:
        self.port = None
        stopped: Deferred[None] = super().stopService()
        return stopped
