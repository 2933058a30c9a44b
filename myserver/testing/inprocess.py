# -*- test-case-name: tests.test_testing -*-
"""
The real server, in the test's own process and reactor.

L{startServer} parses the same options twistd would, builds the same
service tree (L{myserver.tap.makeService}) and starts it on the test's
reactor, listening on C{tcp:0} on loopback; the port is read from the
listening port itself, so no two tests race for one.  L{RunningServer}
gives the test a client (L{Client}), a snapshot of the metrics and the log
events, and on L{RunningServer.stop} closes its clients, stops the tree,
and fails if a connection or a timer of the server was left behind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from myserver.admin import metricsRegistry
from myserver.service import ListenerService, ServerService
from myserver.tap import Options, makeService
from myserver.testing.process import listenerArguments


class Client(Protocol):
    """
    A small client of a L{RunningServer}: send, half-close, read until EOF
    or until some bytes have arrived, expect.

    @ivar received: every byte received so far, in order.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self._consumed = 0
        self._waiting: list[tuple[int, Deferred[bytes]]] = []
        self._lost: list[Deferred[bytes]] = []
        self.closedReason: Failure | None = None
        self.localPort = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        waiting, self._waiting = self._waiting, []
        for count, d in waiting:
            self._deliver(count, d)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closedReason = reason
        waiting, self._waiting = self._waiting, []
        for count, d in waiting:
            d.errback(
                EOFError(
                    f"connection closed after {len(self.received) - self._consumed} "
                    f"of {count} bytes"
                )
            )
        lost, self._lost = self._lost, []
        for d in lost:
            d.callback(self._take(len(self.received) - self._consumed))

    @property
    def closed(self) -> bool:
        """
        Whether the connection has ended (closed by either side, or reset).
        """
        return self.closedReason is not None

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def halfClose(self) -> None:
        """
        Shut down the sending side; the server sees EOF.
        """
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def close(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def _take(self, count: int) -> bytes:
        data = bytes(self.received[self._consumed : self._consumed + count])
        self._consumed += count
        return data

    def _deliver(self, count: int, d: Deferred[bytes]) -> None:
        if len(self.received) - self._consumed >= count:
            d.callback(self._take(count))
        else:
            self._waiting.append((count, d))

    def read(self, count: int) -> Deferred[bytes]:
        """
        @return: a Deferred firing with the next C{count} bytes, or failing
            with L{EOFError} if the connection closes first.
        """
        d: Deferred[bytes] = Deferred()
        if (
            self.closedReason is not None
            and len(self.received) - self._consumed < count
        ):
            d.errback(EOFError("connection already closed"))
        else:
            self._deliver(count, d)
        return d

    def readUntilEOF(self) -> Deferred[bytes]:
        """
        @return: a Deferred firing with every byte not yet read, once the
            server has closed the connection.
        """
        d: Deferred[bytes] = Deferred()
        if self.closedReason is not None:
            d.callback(self._take(len(self.received) - self._consumed))
        else:
            self._lost.append(d)
        return d

    @inlineCallbacks
    def expect(self, data: bytes) -> Any:
        """
        Read C{len(data)} bytes and fail unless they are C{data}.
        """
        got = yield self.read(len(data))
        if got != data:
            raise AssertionError(f"expected {data[:60]!r}, received {got[:60]!r}")
        return got


def _optionArgs(
    protocol: str, options: Mapping[str, Any], settings: Mapping[str, Any]
) -> list[str]:
    args = listenerArguments(protocol, options)
    for name, value in settings.items():
        if isinstance(value, list | tuple):
            for item in value:
                args += [f"--{name.replace('_', '-')}", str(item)]
        else:
            args += [
                f"--{name.replace('_', '-')}",
                str(value).lower() if isinstance(value, bool) else str(value),
            ]
    return args


class RunningServer:
    """
    myserver's service tree, running in this process.

    @ivar host: the loopback address listened on.
    @ivar port: the port of the first listener.
    @ivar ports: the port of each stream listener, in configuration order.
    @ivar server: the L{ServerService} (its C{registry} holds every open
        connection).
    @ivar events: every log event emitted while the server ran.
    """

    host = "127.0.0.1"

    def __init__(self, options: Options, reactor: Any) -> None:
        self.options = options
        self.reactor = reactor
        self.events: list[dict[str, Any]] = []
        self.clients: list[Client] = []
        self._observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(self._observer)
        self._timersBefore = set(reactor.getDelayedCalls())
        self.root = cast(MultiService, makeService(options, reactor))
        [self.server] = [s for s in self.root if isinstance(s, ServerService)]
        try:
            self.root.startService()
        except BaseException:
            globalLogPublisher.removeObserver(self._observer)
            raise
        self.ports = [
            s.port.getHost().port  # type: ignore[attr-defined]
            for s in self.server
            if isinstance(s, ListenerService) and s.port is not None
        ]
        self.port = self.ports[0] if self.ports else 0

    @inlineCallbacks
    def connect(self, port: int | None = None, source: str | None = None) -> Any:
        """
        @param source: the loopback address to connect from (e.g.
            C{"127.0.0.2"}), to test per-address limits and allow/deny
            networks with real source addresses.
        @return: a Deferred firing with a connected L{Client}.
        """
        endpoint = TCP4ClientEndpoint(
            self.reactor,
            self.host,
            port or self.port,
            bindAddress=(source, 0) if source else None,
        )
        client = yield connectProtocol(endpoint, Client())
        client.localPort = client.transport.getHost().port
        self.clients.append(client)
        return client

    @inlineCallbacks
    def waitFor(
        self, condition: Callable[[], object], timeout: float = 10, what: str = ""
    ) -> Any:
        """
        Poll C{condition} on the reactor (every 10 ms) until it is true.

        @return: a Deferred firing when it is, or failing with
            L{AssertionError} after C{timeout} seconds.
        """
        deadline = self.reactor.seconds() + timeout
        while not condition():
            if self.reactor.seconds() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what or condition}"
                )
            yield deferLater(self.reactor, 0.01, lambda: None)

    def metrics(self) -> dict[str, float]:
        """
        The server's own metrics now, as C{/metrics} would give them: each
        sample by its name with its labels, e.g.
        C{myserver_connections_rejected_total{reason="deny"}}.
        """
        registry = metricsRegistry(self.server, [])
        snapshot: dict[str, float] = {}
        for family in registry.collect():
            if not family.name.startswith("myserver_"):
                continue
            for sample in family.samples:
                labels = ",".join(
                    f'{k}="{v}"' for k, v in sorted(sample.labels.items())
                )
                snapshot[sample.name + (f"{{{labels}}}" if labels else "")] = (
                    sample.value
                )
        return snapshot

    def messages(self) -> list[str]:
        """
        The log events emitted so far, formatted.
        """
        return [formatEvent(event) for event in self.events]

    @inlineCallbacks
    def stop(self) -> Any:
        """
        Close this kit's clients, wait for the server to see them go, stop
        the tree; then fail if any other connection was still open or the
        server left a timer behind.
        """
        clientPorts = set()
        for client in self.clients:
            clientPorts.add(client.localPort)
            if client.closedReason is None:
                client.transport.abortConnection()  # type: ignore[union-attr]
        registry = self.server.registry
        for _ in range(500):
            if not any(c.getPeer().port in clientPorts for c in registry.connections):
                break
            yield deferLater(self.reactor, 0.01, lambda: None)
        leaked = sorted(str(c.clientAddress()) for c in registry.connections)
        registry.abortAll()
        try:
            yield self.root.stopService()
        finally:
            globalLogPublisher.removeObserver(self._observer)
        yield deferLater(self.reactor, 0, lambda: None)
        timers = [
            call
            for call in set(self.reactor.getDelayedCalls()) - self._timersBefore
            if call.active() and _isServers(call)
        ]
        if leaked:
            raise AssertionError(
                f"connections left open at the end of the test: {leaked}"
            )
        if timers:
            raise AssertionError(f"timers the server left behind: {timers}")


def _isServers(call: Any) -> bool:
    """
    Whether a delayed call is myserver's (not the test runner's own).
    """
    function = call.func
    owner = getattr(function, "__self__", None)
    if isinstance(owner, LoopingCall):
        function = owner.f
        owner = getattr(function, "__self__", None)
    module = type(owner).__module__ if owner is not None else function.__module__
    return str(module).startswith("myserver")


def startServer(
    protocol: str = "echo",
    options: Mapping[str, Any] | None = None,
    *,
    reactor: Any = None,
    environ: Mapping[str, str] | None = None,
    **settings: Any,
) -> RunningServer:
    """
    Start the real server in this process, serving the installed protocol
    plugin C{protocol} on loopback.

    @param options: the listener's protocol options (C{[listen.options]}).
    @param settings: any other setting by its TOML name, e.g.
        C{max_write_buffer="64KiB"}, C{idle_timeout=5},
        C{deny=["10.0.0.0/8"]}.
    @param environ: C{MYSERVER_*} variables to read; none by default, so
        that the test's own environment does not leak in.
    @raise SystemExit: with status 2 for a bad configuration, after one line
        on standard error, as the command does.
    """
    if reactor is None:
        from twisted.internet import reactor
    parsed = Options()
    parsed.environ = dict(environ or {})
    parsed.parseOptions(_optionArgs(protocol, options or {}, settings))
    return RunningServer(parsed, reactor)


def serve(
    testCase: Any,
    protocol: str = "echo",
    options: Mapping[str, Any] | None = None,
    **settings: Any,
) -> RunningServer:
    """
    L{startServer} for a trial C{TestCase}: the server is stopped (and
    checked) by the test's cleanup.
    """
    server = startServer(protocol, options, **settings)
    testCase.addCleanup(server.stop)
    return server
