# -*- test-case-name: tests.test_guard,tests.test_core -*-
"""
Every open guarded connection of a server, and what the closed ones add up
to: the count that limits and the drain read, and the totals the metrics
collector reads at scrape time.

The registry only counts.  Whether ports accept is decided by
L{myserver.accepting.AcceptGate}, which reads the count from here.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import Any

from twisted.internet import main
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from myserver.admission import describeAddress

log = Logger(namespace="myserver")

# How many of the last refusals the status page lists.
REFUSALS_KEPT = 50

# The reason of an orderly close, made once: what the guarded transport
# passes its protocol and the registry when nothing went wrong.
CONNECTION_DONE = Failure(main.CONNECTION_DONE)

DURATION_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0)


class Histogram:
    """
    A histogram in plain integers, updated without a lock (by
    L{ConnectionRegistry.remove}, inline: once per connection); the metrics
    collector reads it at scrape time.

    @ivar counts: observations per bucket: C{counts[i]} those above
        C{bounds[i - 1]} and at most C{bounds[i]}; the last, those above
        every bound.
    @ivar total: the sum of the observations.
    """

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def cumulative(self) -> list[tuple[str, int]]:
        """
        Prometheus buckets: (upper bound, observations at most that).
        """
        running = 0
        buckets = []
        for bound, count in zip(
            [*map(repr, self.bounds), "+Inf"], self.counts, strict=True
        ):
            running += count
            buckets.append((bound, running))
        return buckets


class ConnectionRegistry:
    """
    Every open guarded connection of the server.

    @ivar connections: the open connections' transports
        (L{myserver.transport.GuardedServer}s).
    @ivar logConnections: emit a debug event per connection; decided once,
        from the configured log level, so that the default level costs the
        accept path nothing.
    @ivar results: closed connections by how they ended.
    @ivar refusals: the last refusals logged (at the log's rate), newest
        last, for the status page: dicts of C{time} (POSIX seconds),
        C{reason}, C{peer}, C{listener} and C{suppressed} (how many like it
        were held back before it).
    """

    def __init__(self, logConnections: bool = False) -> None:
        self.connections: set[Any] = set()
        self.logConnections = logConnections
        self._whenEmpty: list[Deferred[None]] = []
        # Totals over closed connections, for the metrics.
        self.results: dict[str, int] = {}
        self.bytesReceived = 0
        self.bytesSent = 0
        self.durations = Histogram(DURATION_BUCKETS)
        self.refusals: deque[dict[str, Any]] = deque(maxlen=REFUSALS_KEPT)

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, connection: Any) -> None:
        self.connections.add(connection)
        if self.logConnections:
            log.debug(
                "connection from {peer} opened",
                peer=describeAddress(connection.clientAddress()),
            )

    def remove(self, connection: Any, reason: Failure) -> None:
        self.connections.discard(connection)
        # The usual reason, the transport's own, is known without reading
        # Failure.value (a BaseException subclass's attribute, which
        # CPython 3.11 looks up by its generic path).
        if reason is CONNECTION_DONE or isinstance(reason.value, ConnectionDone):
            result = "closed"
        elif isinstance(reason.value, ConnectionAborted):
            result = "aborted"
        else:
            result = "lost"
        self.results[result] = self.results.get(result, 0) + 1
        self.bytesReceived += connection.bytesReceived
        self.bytesSent += connection.bytesSent
        now = connection.guard.now  # See GuardedServer.__init__.
        duration = now() - connection.openedAt
        # The histogram's update, without a call.
        durations = self.durations
        durations.counts[bisect_left(durations.bounds, duration)] += 1
        durations.total += duration
        if self.logConnections:
            log.debug(
                "connection from {peer} closed after {duration:.3f}s: "
                "{bytes_in} bytes in, {bytes_out} bytes out ({reason})",
                peer=describeAddress(connection.clientAddress()),
                duration=duration,
                bytes_in=connection.bytesReceived,
                bytes_out=connection.bytesSent,
                reason=reason.getErrorMessage(),
            )
        if not self.connections and self._whenEmpty:
            waiting, self._whenEmpty = self._whenEmpty, []
            for d in waiting:
                d.callback(None)

    def whenEmpty(self) -> Deferred[None]:
        """
        @return: a Deferred that fires once no connection is open.
        """
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._whenEmpty.append(d)
        return d

    def abortAll(self) -> int:
        """
        Abort every open connection, dropping what is queued for it.

        @return: how many were aborted.
        """
        open = list(self.connections)
        for connection in open:
            connection.abortConnection()
        return len(open)
