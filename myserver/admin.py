# -*- test-case-name: tests.test_admin -*-
"""
The admin HTTP endpoint: C{/metrics}, C{/healthz}, C{/readyz}.

Serving traffic never touches prometheus_client: the hot paths count in
plain integers on the transports, guards and registry, and
L{ServerCollector} reads them when Prometheus scrapes.  The scrape runs in
the reactor thread (not in a WSGI thread pool), so it sees a consistent
state without a lock on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from myserver.listening import EndpointService

log = Logger(namespace="myserver.admin")


class ServerCollector(Collector):
    """
    Reads the server's plain counters at scrape time.

    @param server: the L{myserver.service.ServerService}.
    @param datagrams: the L{myserver.datagram.GuardedDatagramProtocol}s.
    """

    def __init__(self, server: Any, datagrams: list[Any]) -> None:
        self.server = server
        self.datagrams = datagrams

    def collect(self) -> Iterator[Any]:
        registry = self.server.registry
        guards = self.server.guards
        connections = list(registry.connections)

        yield GaugeMetricFamily(
            "myserver_connections_open",
            "Connections open now.",
            value=len(connections),
        )
        results = CounterMetricFamily(
            "myserver_connections",
            "Connections closed, by how they ended: closed (cleanly), lost "
            "(reset or network error), aborted (by the server: idle with "
            "output stuck, protocol error, shutdown deadline).",
            labels=["result"],
        )
        for result in ("closed", "lost", "aborted"):
            results.add_metric([result], registry.results.get(result, 0))
        yield results

        rejected = CounterMetricFamily(
            "myserver_connections_rejected",
            "Connections refused or cut short by the server, by reason.",
            labels=["reason"],
        )
        reasons: dict[str, int] = {}
        for guard in guards:
            for reason, count in guard.rejected.items():
                reasons[reason] = reasons.get(reason, 0) + count
        for reason, count in sorted(reasons.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield CounterMetricFamily(
            "myserver_connections_idle_closed",
            "Connections closed by idle_timeout.",
            value=sum(guard.idleClosed for guard in guards),
        )

        yield CounterMetricFamily(
            "myserver_bytes_received",
            "Bytes read from clients.",
            value=registry.bytesReceived + sum(c.bytesReceived for c in connections),
        )
        yield CounterMetricFamily(
            "myserver_bytes_sent",
            "Bytes the kernel accepted for clients.",
            value=registry.bytesSent + sum(c.bytesSent for c in connections),
        )
        yield GaugeMetricFamily(
            "myserver_write_buffer_bytes",
            "Bytes queued in the server for clients, not yet sent.",
            value=sum(c.pendingBytes() for c in connections),
        )
        budget = self.server.gate.budget
        yield GaugeMetricFamily(
            "myserver_buffered_bytes",
            "Bytes queued for all clients, as the output budget counts them.",
            value=budget.queued,
        )
        yield GaugeMetricFamily(
            "myserver_buffer_budget_bytes",
            "The output budget, max_buffered (0: none).",
            value=budget.limit,
        )
        actions = CounterMetricFamily(
            "myserver_overload_actions",
            "Times the output budget acted, by action: shrink_marks (reading "
            "slowed), stop_accepting, abort (a connection with one of the "
            "largest queues).",
            labels=["action"],
        )
        for action, count in budget.actions.items():
            actions.add_metric([action], count)
        yield actions
        histogram = registry.durations
        yield HistogramMetricFamily(
            "myserver_connection_duration_seconds",
            "How long closed connections were open.",
            buckets=histogram.cumulative(),
            sum_value=histogram.total,
        )
        if self.datagrams:
            yield CounterMetricFamily(
                "myserver_datagrams_received",
                "Datagrams passed to UDP protocols.",
                value=sum(d.datagramsReceived for d in self.datagrams),
            )
            dropped = CounterMetricFamily(
                "myserver_datagrams_dropped",
                "Datagrams dropped unanswered, by reason.",
                labels=["reason"],
            )
            totals: dict[str, int] = {}
            for datagram in self.datagrams:
                for reason, count in datagram.dropped.items():
                    totals[reason] = totals.get(reason, 0) + count
            for reason, count in sorted(totals.items()):
                dropped.add_metric([reason], count)
            yield dropped


def metricsRegistry(server: Any, datagrams: list[Any]) -> CollectorRegistry:
    """
    A registry of the server's metrics and prometheus_client's process
    metrics (CPU, memory, descriptors), private to this server.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server, datagrams))
    ProcessCollector(registry=registry)
    return registry


class Metrics(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


class Health(Resource):
    """
    C{/healthz}: 200 while the reactor runs (if this answers, it does).
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return b"ok\n"


class Ready(Resource):
    """
    C{/readyz}: 200 when every listener listens and the server is not
    draining; 503 from the moment a stop begins (SIGTERM), so a load
    balancer stops sending new clients while the drain runs.
    """

    isLeaf = True

    def __init__(self, serverService: Any) -> None:
        super().__init__()
        self.serverService = serverService

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        if self.serverService.draining:
            request.setResponseCode(503)
            return b"draining\n"
        waiting = [
            s.listener.endpoint
            for s in self.serverService
            if hasattr(s, "listener") and s.port is None
        ]
        if waiting:
            request.setResponseCode(503)
            return ("not listening: " + " ".join(waiting) + "\n").encode()
        return b"ready\n"


# Process metrics that are not summed over workers: the largest is kept.
_NOT_SUMMED = ("process_start_time_seconds", "process_max_fds")


def sumExpositions(texts: list[str]) -> bytes:
    """
    Add up several Prometheus text expositions sample by sample (same name
    and labels): the server's metrics summed over worker processes.
    """
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Any] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, family)
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if sample.name in _NOT_SUMMED:
                    samples[key] = max(samples.get(key, sample.value), sample.value)
                else:
                    samples[key] = samples.get(key, 0.0) + sample.value

    class Summed(Collector):
        def collect(self) -> Iterator[Any]:
            for name, family in families.items():
                metric = Metric(family.name, family.documentation, family.type)
                for (sampleName, labels), value in values[name].items():
                    metric.add_sample(sampleName, dict(labels), value)
                yield metric

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Summed())
    return generate_latest(registry)


class WorkerMetrics(Resource):
    """
    C{/metrics} of a parent with workers: this process's own metrics (its
    UDP listeners where it serves them, its process) plus every worker's, summed.
    """

    isLeaf = True

    def __init__(self, local: CollectorRegistry, supervisor: Any, reactor: Any):
        super().__init__()
        self.local = local
        self.supervisor = supervisor
        self.reactor = reactor

    def render_GET(self, request: Request) -> Any:
        from twisted.internet.defer import gatherResults
        from twisted.web.server import NOT_DONE_YET

        fetches = [
            self._fetch(self.supervisor.adminSocket(index))
            for index in sorted(self.supervisor.workers)
        ]

        def respond(texts: list[str | None]) -> None:
            own = generate_latest(self.local).decode()
            body = sumExpositions([own, *(t for t in texts if t is not None)])
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            request.write(body)
            request.finish()

        gatherResults(fetches).addCallback(respond)
        return NOT_DONE_YET

    def _fetch(self, path: str) -> Deferred[str | None]:
        """
        One worker's metrics, or None if it does not answer (restarting).
        """
        from twisted.internet.endpoints import UNIXClientEndpoint
        from twisted.web.client import Agent, readBody

        reactor = self.reactor

        class ToWorker:
            def endpointForURI(self, uri: Any) -> Any:
                return UNIXClientEndpoint(reactor, path, timeout=5)

        agent = Agent.usingEndpointFactory(reactor, ToWorker())
        d: Deferred[Any] = agent.request(b"GET", b"http://worker/metrics")
        d.addCallback(readBody)
        d.addCallback(lambda body: body.decode())
        d.addErrback(lambda failure: None)
        text: Deferred[str | None] = d
        return text


class AdminSite(Site):
    """
    The admin endpoint's site: no access log (probes and scrapes every few
    seconds would drown the server's own log), no start/stop chatter.
    """

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


def adminSite(
    server: Any, datagrams: list[Any], reactor: Any, supervisor: Any = None
) -> Site:
    """
    @param supervisor: the L{myserver.workers.WorkerSupervisor}, when
        workers serve the listeners: metrics are then summed over
        them.
    """
    root = Resource()
    local = metricsRegistry(server, datagrams)
    if supervisor is None:
        root.putChild(b"metrics", Metrics(local))
    else:
        root.putChild(b"metrics", WorkerMetrics(local, supervisor, reactor))
    root.putChild(b"healthz", Health())
    root.putChild(b"readyz", Ready(server))
    return AdminSite(root)


class AdminService(EndpointService):
    """
    Serves the admin site on its own endpoint, unguarded (it is not client
    traffic), and keeps serving through the drain: it stops only once the
    server has stopped, so that C{/readyz} says 503 while draining.
    """

    def __init__(self, endpoint: str, site: Site, server: Any, reactor: Any) -> None:
        super().__init__(
            serverFromString(reactor, endpoint), site, f"{endpoint} (admin)"
        )
        self.server = server

    def logListening(self, address: str) -> None:
        log.info(
            "admin endpoint on {address}: /metrics /healthz /readyz", address=address
        )

    def stopService(self) -> Deferred[None]:
        stopping: Deferred[None] = Deferred()

        def stopListening(_: object) -> None:
            EndpointService.stopService(self).chainDeferred(stopping)

        self.server.whenStopped().addBoth(stopListening)
        return stopping
