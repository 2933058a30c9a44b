# -*- test-case-name: tests.test_admin -*-
"""
The admin HTTP endpoint: C{/metrics}, C{/healthz}, C{/readyz}, and the
status page, C{/status} (HTML) and C{/status.json} (L{myserver.status}).

Serving traffic never touches prometheus_client: the hot paths count in
plain integers on the transports, guards and registry, and
L{ServerCollector} reads them when Prometheus scrapes.  The scrape runs in
the reactor thread (not in a WSGI thread pool), so it sees a consistent
state without a lock on the hot path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterator
from importlib.resources import files
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
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from myserver.adopting import AdoptingReactor, releaseForSuccessor
from myserver.generation import Generation
from myserver.listening import EndpointService
from myserver.status import StatusCollector, mergeWorkers

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


class GenerationCollector(Collector):
    """
    Which generation serves (live upgrades), and how upgrades went.

    @param upgrades: the L{myserver.upgrade.Upgrader}, when this process
        can upgrade.
    """

    def __init__(self, generation: Generation, upgrades: Any = None) -> None:
        self.generation = generation
        self.upgrades = upgrades

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily(
            "myserver_generation",
            "This server's generation: 1 when started, one more per live "
            "upgrade (SIGUSR2).",
            value=self.generation.number,
        )
        yield GaugeMetricFamily(
            "myserver_last_upgrade_timestamp_seconds",
            "When the live upgrade that started this generation began (POSIX "
            "time); 0 for a generation started by hand.",
            value=self.generation.upgradedAt or 0,
        )
        if self.upgrades is not None:
            yield CounterMetricFamily(
                "myserver_upgrades_refused",
                "Live upgrades refused by this generation: the new one "
                "failed or was not ready in time.",
                value=self.upgrades.refused,
            )


def metricsRegistry(
    server: Any,
    datagrams: list[Any],
    generation: Generation | None = None,
    upgrades: Any = None,
) -> CollectorRegistry:
    """
    A registry of the server's metrics and prometheus_client's process
    metrics (CPU, memory, descriptors), private to this server.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server, datagrams))
    registry.register(GenerationCollector(generation or Generation(1, None), upgrades))
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
_NOT_SUMMED = (
    "process_start_time_seconds",
    "process_max_fds",
    "myserver_generation",
    "myserver_last_upgrade_timestamp_seconds",
)


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


def fetchFromWorker(reactor: Any, path: str, resource: bytes) -> Deferred[Any]:
    """
    GET C{resource} from a worker's private admin socket at C{path}: the
    body, or L{None} if it does not answer (it is restarting).
    """
    from twisted.internet.endpoints import UNIXClientEndpoint
    from twisted.web.client import Agent, readBody

    class ToWorker:
        def endpointForURI(self, uri: Any) -> Any:
            return UNIXClientEndpoint(reactor, path, timeout=5)

    agent = Agent.usingEndpointFactory(reactor, ToWorker())
    d: Deferred[Any] = agent.request(b"GET", b"http://worker" + resource)
    d.addCallback(readBody)
    d.addErrback(lambda failure: None)
    return d


class FromWorkers(Resource):
    """
    What a parent with workers answers from its own figures, C{local}, and
    each worker's, read from the worker's private admin socket.
    """

    isLeaf = True

    def __init__(self, local: Any, supervisor: Any, reactor: Any):
        super().__init__()
        self.local = local
        self.supervisor = supervisor
        self.reactor = reactor


class WorkerMetrics(FromWorkers):
    """
    C{/metrics} of a parent with workers: this process's own metrics (its
    UDP listeners, its process) plus every worker's, summed.
    """

    def render_GET(self, request: Request) -> Any:
        fetches = [
            fetchFromWorker(
                self.reactor, self.supervisor.adminSocket(index), b"/metrics"
            )
            for index in sorted(self.supervisor.workers)
        ]

        def respond(bodies: list[bytes | None]) -> None:
            own = generate_latest(self.local).decode()
            texts = [body.decode() for body in bodies if body is not None]
            body = sumExpositions([own, *texts])
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            request.write(body)
            request.finish()

        gatherResults(fetches).addCallback(respond)
        return NOT_DONE_YET


class AdminAccess:
    """
    Who may read what the admin endpoint says of clients: with a token
    (C{admin_token_file}), only a request that gives it, as a bearer token
    or as the password of HTTP basic authentication (any user name), so
    that a browser asks for it once.

    @ivar token: the token, or L{None} when none is asked for.
    @ivar unauthorized: requests answered 401, for the metrics.
    """

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.unauthorized = 0

    def allows(self, request: Request) -> bool:
        if self.token is None:
            return True
        raw = request.getHeader(b"authorization") or b""
        header = raw.decode("latin-1").strip()
        scheme, _, value = header.partition(" ")
        given = ""
        if scheme.lower() == "bearer":
            given = value.strip()
        elif scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            given = decoded.partition(":")[2]
        # Digests of equal length, compared in constant time: neither the
        # token's bytes nor its length can be learnt from the timing.
        return hmac.compare_digest(
            hashlib.sha256(given.encode()).digest(),
            hashlib.sha256(self.token.encode()).digest(),
        )


class AccessCollector(Collector):
    def __init__(self, access: AdminAccess) -> None:
        self.access = access

    def collect(self) -> Iterator[Any]:
        yield CounterMetricFamily(
            "myserver_admin_unauthorized",
            "Admin requests refused (401) for a missing or wrong token.",
            value=self.access.unauthorized,
        )


class Unauthorized(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(401)
        request.responseHeaders.setRawHeaders(
            b"www-authenticate",
            [b'Basic realm="myserver admin", charset="UTF-8"', b"Bearer"],
        )
        request.setHeader(b"content-type", b"text/plain")
        return b"unauthorized: this needs the admin token\n"


class AdminRoot(Resource):
    """
    The admin site's root: the probes are open; what names clients (the
    status page) or counts them (the metrics) asks for the token.
    """

    protected = (b"metrics", b"status", b"status.json")

    def __init__(self, access: AdminAccess) -> None:
        super().__init__()
        self.access = access

    def getChildWithDefault(self, path: bytes, request: Request) -> Any:
        if path in self.protected and not self.access.allows(request):
            self.access.unauthorized += 1
            return Unauthorized()
        return super().getChildWithDefault(path, request)


class StatusPage(Resource):
    """
    C{/status}: one self-contained HTML page (its script and styles are in
    it: it works with no network) that reads C{/status.json} every few
    seconds.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.page = files("myserver").joinpath("status.html").read_bytes()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(
            b"content-security-policy",
            b"default-src 'none'; script-src 'unsafe-inline'; "
            b"style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        )
        return self.page


def _json(request: Request, document: dict[str, Any]) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(document, indent=1).encode() + b"\n"


class StatusJSON(Resource):
    """
    C{/status.json} of one process: read at request time.
    """

    isLeaf = True

    def __init__(self, collector: StatusCollector) -> None:
        super().__init__()
        self.collector = collector

    def render_GET(self, request: Request) -> bytes:
        return _json(request, self.collector.collect())


class WorkerStatusJSON(FromWorkers):
    """
    C{/status.json} of a parent with workers: each worker's, read from its
    private admin socket as for the metrics, merged with the parent's own
    (C{local}, a L{StatusCollector}).
    """

    def render_GET(self, request: Request) -> Any:
        supervisor = self.supervisor
        indexes = range(supervisor.count)
        fetches = [
            fetchFromWorker(self.reactor, supervisor.adminSocket(i), b"/status.json")
            if i in supervisor.workers
            else succeed(None)
            for i in indexes
        ]

        def respond(bodies: list[bytes | None]) -> None:
            workers = []
            for index, body in zip(indexes, bodies, strict=True):
                worker = supervisor.workers.get(index)
                transport = getattr(worker, "transport", None)
                workers.append(
                    {
                        "index": index,
                        "pid": getattr(transport, "pid", None),
                        "restarts": supervisor.restarts.get(index, 0),
                        "running": worker is not None,
                        "status": _parse(body),
                    }
                )
            bound = [
                (b.listener.endpoint, b.listener.protocol, b.describe())
                for b in supervisor.bound
            ]
            merged = mergeWorkers(self.local.collect(), bound, workers)
            request.write(_json(request, merged))
            request.finish()

        gatherResults(fetches).addCallback(respond)
        return NOT_DONE_YET


def _parse(body: bytes | None) -> Any:
    if body is None:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


class AdminSite(Site):
    """
    The admin endpoint's site: no access log (probes and scrapes every few
    seconds would drown the server's own log), no start/stop chatter.
    """

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


def adminSite(
    server: Any,
    datagrams: list[Any],
    reactor: Any,
    supervisor: Any = None,
    token: str | None = None,
    datagramServices: list[tuple[Any, Any]] | None = None,
    generation: Generation | None = None,
    upgrades: Any = None,
) -> Site:
    """
    @param supervisor: the L{myserver.workers.WorkerSupervisor}, when
        workers serve the listeners: metrics are then summed over
        them, and their status merged.
    @param token: the admin token (C{admin_token_file}), if one is asked.
    @param datagramServices: the datagram listeners with their guarded
        protocols, for the status page.
    @param generation: this process's generation (live upgrades).
    @param upgrades: the L{myserver.upgrade.Upgrader}, when there is one.
    """
    access = AdminAccess(token)
    # Reload (SIGHUP) finds it here, to apply a rotated token.
    server.adminAccess = access
    root = AdminRoot(access)
    local = metricsRegistry(server, datagrams, generation, upgrades)
    local.register(AccessCollector(access))
    collector = StatusCollector(server, datagramServices or [])
    if supervisor is None:
        root.putChild(b"metrics", Metrics(local))
        root.putChild(b"status.json", StatusJSON(collector))
    else:
        root.putChild(b"metrics", WorkerMetrics(local, supervisor, reactor))
        root.putChild(b"status.json", WorkerStatusJSON(collector, supervisor, reactor))
    root.putChild(b"status", StatusPage())
    root.putChild(b"healthz", Health())
    root.putChild(b"readyz", Ready(server))
    return AdminSite(root)


class AdminService(EndpointService):
    """
    Serves the admin site on its own endpoint, unguarded (it is not client
    traffic), and keeps serving through the drain: it stops only once the
    server has stopped, so that C{/readyz} says 503 while draining.  After
    a live upgrade it stops at once instead (L{handOver}).
    """

    _handedOver = False

    def __init__(
        self,
        endpoint: str,
        site: Site,
        server: Any,
        reactor: Any,
        inherited: int | None = None,
    ) -> None:
        """
        @param inherited: the admin socket a previous generation served,
            to serve instead of binding C{endpoint} again.
        """
        listenOn = reactor if inherited is None else AdoptingReactor(reactor, inherited)
        super().__init__(
            serverFromString(listenOn, endpoint), site, f"{endpoint} (admin)"
        )
        # (Not C{endpoint}: that is the service's endpoint object.)
        self.endpointString = endpoint
        self.server = server

    def logListening(self, address: str) -> None:
        log.info(
            "admin endpoint on {address}: /metrics /healthz /readyz /status",
            address=address,
        )

    def handOver(self) -> None:
        """
        A successor serves the admin socket now: stop accepting on it at
        once, leaving the socket itself alone.  Probes then reach the
        generation that serves (a 503 from this draining one would make a
        healthy server look half down).
        """
        port = self.port
        if port is not None and not self._handedOver:
            self._handedOver = True
            releaseForSuccessor(port)
            port.stopListening()

    def stopService(self) -> Deferred[None]:
        stopping: Deferred[None] = Deferred()

        def stopListening(_: object) -> None:
            if self._handedOver:
                self.running = False
                self.port = None
                stopping.callback(None)
            else:
                EndpointService.stopService(self).chainDeferred(stopping)

        self.server.whenStopped().addBoth(stopListening)
        return stopping
