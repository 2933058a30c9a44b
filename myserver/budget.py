# -*- test-case-name: tests.test_budget -*-
"""
The global output budget: the bytes queued in user space for all clients
together, held against C{max_buffered}.

Each connection is bounded by its own C{max_write_buffer}, but ten thousand
bounded connections are not bounded together.  The budget is the process's
answer, in the manner of Envoy's overload manager and Redis's
C{maxmemory-clients}, with the thresholds fixed as fractions of the budget:

  - below half of it, each connection's own mark applies;
  - from half of it up to the budget (I{pressure}), every connection's mark
    shrinks in proportion to the room left, and to at most half of a fair
    share of the budget, down to L{MARK_FLOOR}: reading (and a registered
    producer) pauses earlier, and the largest queues pause first because
    they cross the shrinking mark first;
  - at the budget (I{overloaded}), the marks are at the floor, every
    connection reads in pieces of L{OVERLOADED_READ_SIZE} instead of 64 KiB
    (so that one read past a mark adds little), and the ports stop
    accepting, until the total falls below L{RESUME_FRACTION} of it;
  - above L{CEILING_FRACTION} of it, where pausing reads cannot help (a
    protocol that writes to one client what others send, like chat: the
    queue grows while reading from that client is already paused), the
    connections with the largest queues are aborted, counted and logged
    with the reason C{overload}, until the total is back under the budget.

The worst case is therefore about C{max_buffered} plus, per open
connection, one read of L{OVERLOADED_READ_SIZE} (the read that crosses the
budget may still be 64 KiB), and never more than the ceiling from
protocols that write to paused clients.

A client that eventually reads gets every byte: pausing never drops
anything; only the ceiling does, and only for the largest queues.

The transport (L{myserver.transport}) keeps the total: each connection adds
the change in its own queue when it queues or sends, a few integer
operations on the queueing path only (a write the kernel takes whole never
touches the budget).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Any

from myserver.registry import ConnectionRegistry

# Why a connection was aborted by the budget, as counted and logged.
OVERLOAD = "overload"

NORMAL = "normal"
PRESSURE = "pressure"
OVERLOADED = "overloaded"

# The actions counted in myserver_overload_actions_total{action}.
SHRINK_MARKS = "shrink_marks"
STOP_ACCEPTING = "stop_accepting"
ABORT = "abort"
ACTIONS = (SHRINK_MARKS, STOP_ACCEPTING, ABORT)

PRESSURE_FRACTION = 0.5
RESUME_FRACTION = 0.9
CEILING_FRACTION = 1.25
# The smallest mark pressure shrinks a connection's to: small replies still
# go out while the server is overloaded.
MARK_FLOOR = 16 * 1024

# What one read takes from a client while overloaded (64 KiB otherwise).
OVERLOADED_READ_SIZE = 4 * 1024

_NEVER = 1 << 62


class OutputBudget:
    """
    The bytes queued for all clients, their budget, and the state they put
    the server in.

    @ivar queued: bytes queued in user space for all connections now.
    @ivar limit: the budget, C{max_buffered}; 0 when off.
    @ivar pressureAbove: the total above which marks shrink.
    @ivar peak: the highest total seen under pressure since the memory was
        last trimmed (L{MemoryReturner}).
    @ivar state: L{NORMAL}, L{PRESSURE} or L{OVERLOADED}.
    @ivar actions: how many times each action was taken, by L{ACTIONS}.
    @ivar observers: called with the new state whenever it changes (the
        accept gate stops accepting while overloaded).
    """

    def __init__(self, registry: ConnectionRegistry, limit: int) -> None:
        self.registry = registry
        self.queued = 0
        self.peak = 0
        self.state = NORMAL
        self.actions = dict.fromkeys(ACTIONS, 0)
        self.observers: list[Callable[[str], object]] = []
        self.setLimit(limit)

    def setLimit(self, limit: int) -> None:
        """
        Use a new budget (on reload), and take the state it implies now.
        """
        self.limit = limit
        if limit:
            self.pressureAbove = int(limit * PRESSURE_FRACTION)
            self.resumeBelow = int(limit * RESUME_FRACTION)
            self.ceiling = int(limit * CEILING_FRACTION)
        else:
            self.pressureAbove = self.resumeBelow = self.ceiling = _NEVER
        self.pressed(0)
        self.relieved()

    def pressed(self, mark: int, readingPaused: bool = False) -> int:
        """
        The total is above L{pressureAbove} after a connection queued more:
        change state if it must, abort the largest queues above the
        ceiling, and give the connection its shrunken mark.

        @param mark: the connection's own C{max_write_buffer}.
        @param readingPaused: whether reading from that connection was
            already paused: its queue grew from what others sent, the case
            where pausing reads cannot help (echo-like protocols, which
            write only what they just read, stop growing once paused, and
            are never aborted).
        @return: the mark that applies to it now.
        """
        queued = self.queued
        if queued > self.peak:
            self.peak = queued
        if queued >= self.limit and self.limit:
            if self.state != OVERLOADED:
                self._enter(OVERLOADED, STOP_ACCEPTING)
            if queued > self.ceiling and readingPaused:
                self._abortLargest()
            return min(mark, MARK_FLOOR)
        if queued > self.pressureAbove and self.state == NORMAL:
            self._enter(PRESSURE, SHRINK_MARKS)
        return self.markFor(mark)

    def markFor(self, mark: int) -> int:
        """
        A connection's mark under the current total: its own below the
        pressure threshold; then the smaller of its own shrunk in proportion
        to the room left and half of a fair share of the budget (so that
        many connections with small queues, such as push producers paused
        at 64 KiB, stay under it too), never below L{MARK_FLOOR}.
        """
        queued = self.queued
        if queued <= self.pressureAbove:
            return mark
        room = self.limit - queued
        if room <= 0:
            return min(mark, MARK_FLOOR)
        shrunk = mark * room // (self.limit - self.pressureAbove)
        fairShare = self.limit // (2 * max(1, len(self.registry)))
        return min(mark, max(MARK_FLOOR, min(shrunk, fairShare)))

    def relieved(self) -> None:
        """
        The total fell (a queue drained or a connection closed) while the
        server was not in the normal state: leave the states it is now
        below.
        """
        if self.state == OVERLOADED and self.queued < self.resumeBelow:
            self._enter(PRESSURE)
        if self.state == PRESSURE and self.queued <= self.pressureAbove:
            self._enter(NORMAL)

    def _enter(self, state: str, action: str | None = None) -> None:
        if OVERLOADED in (state, self.state):
            # Every connection reads in smaller pieces while overloaded: a
            # connection not yet paused takes one read past its mark.
            overloaded = state == OVERLOADED
            for connection in self.registry.connections:
                connection.bufferSize = (
                    OVERLOADED_READ_SIZE if overloaded else type(connection).bufferSize
                )
        self.state = state
        if action is not None:
            self.actions[action] += 1
        for observer in list(self.observers):
            observer(state)

    def _abortLargest(self) -> None:
        """
        Abort the connections with the largest queues until what is left
        is back under the budget.  Their queues are freed when they close,
        a moment later; they are no longer sent to meanwhile.
        """
        excess = self.queued - self.limit
        open_: list[Any] = [
            c for c in self.registry.connections if not c.abortedForOverload
        ]
        open_.sort(key=lambda c: c.pendingBytes(), reverse=True)
        for connection in open_:
            if excess <= 0:
                break
            excess -= connection.pendingBytes()
            connection.abortedForOverload = True
            self.actions[ABORT] += 1
            connection.guard.shed(
                connection,
                OVERLOAD,
                "the server's output budget is exhausted and this client's "
                "queue is among the largest",
            )


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


class MemoryReturner:
    """
    Gives freed heap memory back to the system once queues that grew large
    have drained.

    CPython hands each queued chunk (64 KiB reads, up to C{max_write_buffer}
    once joined for sending) to glibc's malloc.  glibc serves large blocks
    from the heap once its dynamic mmap threshold has grown, and keeps what
    is freed there for reuse: after the clients that filled the queues have
    gone, the process would keep its peak size forever.  Two measures, both
    glibc's own (elsewhere, nothing is done):

      - at start, a fixed mmap threshold (L{MMAP_THRESHOLD}), so that large
        blocks are mapped and unmapped on their own instead of raising the
        threshold and fragmenting the heap;
      - when the queued total has fallen from a high mark (at least
        L{TRIM_AFTER} above it) to a quarter of it, one C{malloc_trim(0)},
        which returns the free pages of every arena.

    Called from a timer, never on the data path.
    """

    MMAP_THRESHOLD = 256 * 1024
    TRIM_AFTER = 8 * 1024 * 1024
    _M_MMAP_THRESHOLD = -3

    def __init__(self, budget: OutputBudget) -> None:
        self.budget = budget
        self.highest = 0
        self.trims = 0
        self._libc = _libc()

    def start(self) -> None:
        if self._libc is not None:
            self._libc.mallopt(self._M_MMAP_THRESHOLD, self.MMAP_THRESHOLD)

    def check(self) -> None:
        """
        Trim when the queues have drained from a high mark.
        """
        budget = self.budget
        queued = budget.queued
        highest = max(self.highest, budget.peak)
        if queued > highest:
            self.highest = queued
        elif highest >= self.TRIM_AFTER and queued <= highest // 4:
            self.highest = budget.peak = queued
            if self._libc is not None:
                self._libc.malloc_trim(0)
                self.trims += 1
