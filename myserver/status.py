# -*- test-case-name: tests.test_status -*-
"""
What C{/status.json} says: the server's state at a glance, read when it is
asked for.

Nothing here runs on the hot path.  Every figure is read, at request time,
from what the transports, guards, registry and output budget already count
in plain integers; the only state of this module's own is a few samples of
the byte totals, so that a rate can be given (bytes since the previous
request at least a second old).

The document's fields and units are listed in the README ("The status
page"); its C{version} changes only if a field changes meaning or goes.
L{mergeWorkers} makes one document of a parent's and its workers'.
"""

from __future__ import annotations

import heapq
import os
import platform
import resource
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import twisted

from myserver import __version__
from myserver.admission import describeAddress
from myserver.budget import NORMAL, OVERLOADED, PRESSURE
from myserver.generation import current
from myserver.reactor import reactorName
from myserver.registry import REFUSALS_KEPT

# The version of the document's layout.
VERSION = 1
# How many connections each of the two lists of the heaviest holds.
HEAVIEST = 20
# A listener is near its limit from this fraction of it on.
NEAR_LIMIT = 0.8
# The shortest interval a rate is measured over.
RATE_INTERVAL = 1.0

SERVING = "serving"
DRAINING = "draining"
# The server is overloaded when its budget is.
OVERLOADED_STATE = OVERLOADED
NEAR = "near_limit"
AT_LIMIT = "at_limit"
NOT_LISTENING = "not_listening"

_BUDGET_ORDER = (NORMAL, PRESSURE, OVERLOADED)


def residentBytes() -> int | None:
    """
    This process's resident memory now (Linux's C{/proc/self/statm}), or
    L{None} where that cannot be read.
    """
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None


def listenerState(
    open: int, limit: int, draining: bool, listening: bool, budgetState: str
) -> str:
    """
    A listener's state, as the page colours it: draining, not listening,
    at its limit (or the server overloaded: no port accepts), near it (or
    the budget under pressure), or serving.
    """
    if draining:
        return DRAINING
    if not listening:
        return NOT_LISTENING
    if (limit and open >= limit) or budgetState == OVERLOADED:
        return AT_LIMIT
    if (limit and open >= NEAR_LIMIT * limit) or budgetState == PRESSURE:
        return NEAR
    return SERVING


def listenerRow(
    endpoint: str, protocol: str, state: str, **figures: Any
) -> dict[str, Any]:
    """
    One row of C{listeners}: every field there, those not given at zero
    (counts) or unknown (bytes and rates).
    """
    row: dict[str, Any] = {
        "endpoint": endpoint,
        "bound": None,
        "protocol": protocol,
        "kind": "stream",
        "state": state,
        "open": 0,
        "limit": 0,
        "accepted": 0,
        "refused": {},
        "refused_total": 0,
        "bytes_received": None,
        "bytes_sent": None,
        "receive_rate_bytes_per_second": None,
        "send_rate_bytes_per_second": None,
        "queued_bytes": 0,
        "idle_closed": 0,
    }
    row.update(figures)
    return row


class StatusCollector:
    """
    Reads one process's state into the C{/status.json} document.

    @param server: the L{myserver.service.ServerService}.
    @param datagrams: the datagram listeners served (L{Listener}s), each
        with its L{myserver.datagram.GuardedDatagramProtocol}.
    """

    def __init__(
        self,
        server: Any,
        datagrams: Sequence[tuple[Any, Any]] = (),
    ) -> None:
        self.server = server
        self.datagrams = list(datagrams)
        self.startedAt = time.time()
        self._samples: deque[tuple[float, list[tuple[int, int]]]] = deque(maxlen=16)

    def _listeners(self) -> list[tuple[Any, Any]]:
        """
        The stream listeners served here: (listener service, its guard).
        """
        return [
            (service, service.guard)
            for service in self.server
            if hasattr(service, "guard") and hasattr(service, "listener")
        ]

    def collect(self) -> dict[str, Any]:
        server = self.server
        budget = server.gate.budget
        now = time.time()
        clock = server.clock.seconds()
        draining = bool(server.draining)
        state = (
            DRAINING
            if draining
            else OVERLOADED_STATE
            if budget.state == OVERLOADED
            else SERVING
        )
        generation = current()
        connections = list(server.registry.connections)
        listeners = self._listeners()
        totals = []
        rows = []
        serverLimit = server.gate.maxConnections
        for service, guard in listeners:
            open_ = list(guard.connections)
            received = guard.bytesReceived + sum(c.bytesReceived for c in open_)
            sent = guard.bytesSent + sum(c.bytesSent for c in open_)
            totals.append((received, sent))
            limits = [x for x in (guard.maxConnections, serverLimit) if x]
            limit = min(limits) if limits else 0
            port = service.port
            rows.append(
                listenerRow(
                    service.listener.endpoint,
                    service.listener.protocol,
                    listenerState(
                        len(open_), limit, draining, port is not None, budget.state
                    ),
                    bound=describeAddress(port.getHost()) if port else None,
                    open=len(open_),
                    limit=limit,
                    accepted=guard.accepted,
                    refused=dict(sorted(guard.rejected.items())),
                    refused_total=sum(guard.rejected.values()),
                    bytes_received=received,
                    bytes_sent=sent,
                    queued_bytes=sum(c.pendingBytes() for c in open_),
                    idle_closed=guard.idleClosed,
                )
            )
        for row, rate in zip(rows, self._rates(clock, totals), strict=True):
            if rate is not None:
                row["receive_rate_bytes_per_second"] = rate[0]
                row["send_rate_bytes_per_second"] = rate[1]
        for listener, protocol in self.datagrams:
            rows.append(
                listenerRow(
                    listener.endpoint,
                    listener.protocol,
                    DRAINING if draining else SERVING,
                    kind="datagram",
                    accepted=protocol.datagramsReceived,
                    refused=dict(sorted(protocol.dropped.items())),
                    refused_total=sum(protocol.dropped.values()),
                )
            )
        return {
            "version": VERSION,
            "time": now,
            "server": {
                "myserver_version": __version__,
                "twisted_version": twisted.__version__,
                "python_version": platform.python_version(),
                "reactor": reactorName(server.clock) or type(server.clock).__name__,
                "pid": os.getpid(),
                "generation": generation.number,
                "last_upgrade": generation.upgradedAt,
                "started": self.startedAt,
                "uptime_seconds": now - self.startedAt,
                "state": state,
                "open_file_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                "connections_open": len(connections),
                "max_connections": serverLimit,
                "workers": 0,
            },
            "listeners": rows,
            "memory": {
                "queued_bytes": budget.queued,
                "budget_bytes": budget.limit,
                "state": budget.state,
                "overload_actions": dict(budget.actions),
                "rss_bytes": residentBytes(),
            },
            "workers": [],
            "connections": self._heaviest(connections, clock),
            "refusals": [
                dict(refusal) for refusal in reversed(server.registry.refusals)
            ],
        }

    def _rates(
        self, now: float, totals: list[tuple[int, int]]
    ) -> list[tuple[float, float] | None]:
        """
        Each listener's bytes per second in and out since the latest
        sample at least L{RATE_INTERVAL} old (L{None} before there is
        one), keeping a sample per interval at most.
        """
        base = None
        for at, values in reversed(self._samples):
            if now - at >= RATE_INTERVAL and len(values) == len(totals):
                base = (at, values)
                break
        if not self._samples or now - self._samples[-1][0] >= RATE_INTERVAL:
            self._samples.append((now, totals))
        if base is None:
            return [None] * len(totals)
        elapsed = now - base[0]
        return [
            ((r - r0) / elapsed, (s - s0) / elapsed)
            for (r, s), (r0, s0) in zip(totals, base[1], strict=True)
        ]

    def _heaviest(self, connections: list[Any], now: float) -> dict[str, Any]:
        byQueued = heapq.nlargest(HEAVIEST, connections, key=_queued)
        byAge = heapq.nsmallest(HEAVIEST, connections, key=_openedAt)
        return {
            "open": len(connections),
            "by_queued": [_describe(c, now) for c in byQueued if c.pendingBytes()],
            "by_age": [_describe(c, now) for c in byAge],
        }


def _queued(connection: Any) -> int:
    return int(connection.pendingBytes())


def _openedAt(connection: Any) -> float:
    return float(connection.openedAt)


def _describe(connection: Any, now: float) -> dict[str, Any]:
    """
    One connection, as the status lists show it.  Its activity is noticed
    here as the idle sweep notices it (bytes moved since the last look),
    so the idle time is as fresh as the last sweep or request.
    """
    moved = connection.bytesReceived + connection.bytesSent
    if moved != connection.bytesMovedAtSweep:
        connection.bytesMovedAtSweep = moved
        connection.activeAt = now
    return {
        "peer": describeAddress(connection.clientAddress()),
        "proxied": connection.realPeer is not None,
        "listener": connection.guard.address or connection.guard.endpoint,
        "bytes_received": connection.bytesReceived,
        "bytes_sent": connection.bytesSent,
        "queued_bytes": connection.pendingBytes(),
        "age_seconds": max(0.0, now - connection.openedAt),
        "idle_seconds": max(0.0, now - connection.activeAt),
        "worker": None,
    }


def _worst(states: Iterable[str]) -> str:
    return max(states, key=_BUDGET_ORDER.index, default=NORMAL)


def _sum(values: Iterable[Any]) -> Any:
    """
    The sum of figures that may be unknown (L{None}): unknown if all are.
    """
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _addCounts(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in dicts:
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    return dict(sorted(total.items()))


def mergeWorkers(
    parent: dict[str, Any],
    bound: Sequence[tuple[str, str, str | None]],
    workers: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """
    One document for a parent whose workers serve the stream listeners.

    @param parent: the parent's own document (its datagram listeners, its
        process).
    @param bound: each stream listener as the parent bound it: (endpoint
        as configured, protocol, address bound).
    @param workers: for each worker: C{index}, C{pid}, C{restarts},
        C{running} (whether its process is up) and C{status}, its own
        document or L{None} when it did not answer.
    @return: the parent's document with the workers' listeners,
        connections and memory added up, one row per worker, and the
        heaviest connections and last refusals of all of them.
    """
    docs = [w["status"] for w in workers if w["status"] is not None]
    draining = parent["server"]["state"] == DRAINING
    budgetState = _worst(d["memory"]["state"] for d in docs)
    listeners = []
    for position, (endpoint, protocol, address) in enumerate(bound):
        rows = [
            d["listeners"][position] for d in docs if len(d["listeners"]) > position
        ]
        open_ = sum(r["open"] for r in rows)
        limit = sum(r["limit"] for r in rows)
        listeners.append(
            listenerRow(
                endpoint,
                protocol,
                listenerState(open_, limit, draining, bool(rows), budgetState),
                bound=address,
                open=open_,
                limit=limit,
                accepted=sum(r["accepted"] for r in rows),
                refused=_addCounts(r["refused"] for r in rows),
                refused_total=sum(r["refused_total"] for r in rows),
                bytes_received=sum(r["bytes_received"] for r in rows),
                bytes_sent=sum(r["bytes_sent"] for r in rows),
                receive_rate_bytes_per_second=_sum(
                    r["receive_rate_bytes_per_second"] for r in rows
                ),
                send_rate_bytes_per_second=_sum(
                    r["send_rate_bytes_per_second"] for r in rows
                ),
                queued_bytes=sum(r["queued_bytes"] for r in rows),
                idle_closed=sum(r["idle_closed"] for r in rows),
            )
        )
    listeners.extend(r for r in parent["listeners"] if r["kind"] == "datagram")
    connections: list[dict[str, Any]] = []
    byAge: list[dict[str, Any]] = []
    refusals: list[dict[str, Any]] = []
    rows = []
    for worker in workers:
        doc = worker["status"]
        if doc is None:
            state = "not_answering" if worker["running"] else "restarting"
        else:
            state = doc["server"]["state"]
            for key, into in (("by_queued", connections), ("by_age", byAge)):
                into.extend(
                    c | {"worker": worker["index"]} for c in doc["connections"][key]
                )
            refusals.extend(r | {"worker": worker["index"]} for r in doc["refusals"])
        rows.append(
            {
                "index": worker["index"],
                "pid": worker["pid"],
                "state": state,
                "connections": doc["server"]["connections_open"] if doc else None,
                "queued_bytes": doc["memory"]["queued_bytes"] if doc else None,
                "rss_bytes": doc["memory"]["rss_bytes"] if doc else None,
                "restarts": worker["restarts"],
            }
        )
    server = dict(parent["server"])
    server["connections_open"] = sum(d["server"]["connections_open"] for d in docs)
    server["max_connections"] = sum(d["server"]["max_connections"] for d in docs)
    server["workers"] = len(workers)
    if not draining and budgetState == OVERLOADED:
        server["state"] = OVERLOADED_STATE
    memory = {
        "queued_bytes": sum(d["memory"]["queued_bytes"] for d in docs),
        "budget_bytes": sum(d["memory"]["budget_bytes"] for d in docs),
        "state": budgetState,
        "overload_actions": _addCounts(d["memory"]["overload_actions"] for d in docs),
        "rss_bytes": _sum(
            [parent["memory"]["rss_bytes"], *(d["memory"]["rss_bytes"] for d in docs)]
        ),
    }
    refusals = sorted(refusals + parent["refusals"], key=lambda r: -r["time"])
    return parent | {
        "server": server,
        "listeners": listeners,
        "memory": memory,
        "workers": rows,
        "connections": {
            "open": server["connections_open"],
            "by_queued": sorted(connections, key=lambda c: -c["queued_bytes"])[
                :HEAVIEST
            ],
            "by_age": sorted(byAge, key=lambda c: -c["age_seconds"])[:HEAVIEST],
        },
        "refusals": refusals[:REFUSALS_KEPT],
    }
