# -*- test-case-name: tests.test_reactor,tests.test_twistedcontract -*-
"""
myserver's reactor: Twisted's epoll reactor, minus the legacy log context
on the hot path.

For every ready descriptor, Twisted's reactors call the handler through
C{twisted.python.log.callWithLogger}, which copies a context dictionary and
goes through four layers of C{*args, **kwargs} forwarding so that a legacy
C{log.msg} made inside the handler is tagged with the connection's
C{logPrefix}.  Measured under callgrind, that wrapper is more than half of
what echoing a message costs (28.0k instructions per message with it, 13.1k
without).  myserver logs through C{twisted.logger}, which does not read that
context, and its connections (L{myserver.guard.GuardedServer}) isolate
their protocol's errors themselves; so this reactor calls a selectable that
says C{directDispatch = True} directly, and every other one (listening
ports, the waker, processes, the admin endpoint's connections) exactly as
Twisted does.

It is installed when twistd was given no C{--reactor}: C{twistd -r epoll
myserver} (or any other reactor) serves the same way, only slower.  It is
also a twistd reactor plugin, C{twistd -r myserver}.

Twisted internals this module relies on (checked by
C{tests.test_twistedcontract}, which also fingerprints the Twisted code
copied or replaced here, so that an upgrade that changes it fails
loudly): C{EPollReactor.doPoll}'s body, copied with the dispatch below;
C{_add} and C{_remove}, copied so that the map of direct selectables is
kept in the same steps as Twisted's own; C{_poller}, C{_selectables},
C{_reads}, C{_writes}, C{_doReadOrWrite} and C{_disconnectSelectable},
which they use.

A direct selectable whose event is read readiness alone (nearly every event
of a busy server) is read without C{_doReadOrWrite}: that function's
checks (hang-up flags, C{fileno() == -1}, write readiness) are for other
events and other selectables, and skipping its frame saves about a tenth
of what an echoed message costs.  What it does with the result and with an
exception is done the same way here: a reason to disconnect goes to
C{_disconnectSelectable} as a read's, and an exception is logged and
disconnects the selectable.  So is one whose event is read readiness with
the peer's shutdown (C{EPOLLRDHUP}, which new connections are watched for:
L{DirectEPollReactor.readNewDescriptor}), through its C{doReadToEnd}.

The main loop (L{DirectEPollReactor.mainLoop}) is Twisted's, minus the work
it does on every iteration for timed and thread calls that are not there:
Twisted's calls C{runUntilCurrent} and C{timeout} (each merging new timed
calls and reading the clock) and enters a logging context manager every
time round; a busy server goes round once per batch of ready descriptors,
which is once per connection or message when they come one at a time.
Here C{runUntilCurrent} runs only when a thread call, a new or due timed
call, or the shutdown it fires is waiting, and the poll's timeout is
computed inline from the earliest timed call when nothing is new.  What
this reads of Twisted's reactor (C{threadCallQueue}, C{_newTimedCalls},
C{_pendingTimedCalls} and their C{time}, C{_justStopped}, C{_started},
C{running}) is checked by C{tests.test_twistedcontract}, which also pins
the code of C{ReactorBase.mainLoop} and C{timeout} this replaces.
"""

from __future__ import annotations

import errno
import select
import sys
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger
from twisted.python import log

_EPOLLIN = select.EPOLLIN if hasattr(select, "EPOLLIN") else 1
# Readable, and the peer has shut down its side: what epoll reports, for a
# descriptor registered for both, once the peer's FIN has arrived.
_EPOLLRDHUP = getattr(select, "EPOLLRDHUP", 0x2000)
_READ_TO_END = _EPOLLIN | _EPOLLRDHUP
# The longest poll, as Twisted's ReactorBase.timeout caps it: epoll_wait
# takes its timeout in milliseconds, as a C int.
# A float, as the waits compared with it are: CPython specialises a
# comparison of two floats, not of a float with an int.
_LONGEST_WAIT = 2147483.0
_log = Logger()
# What doPoll's dispatch answers for an event that is not a plain read.
_NOT_A_READ = object()


class DirectEPollReactor(EPollReactor):
    """
    An epoll reactor that dispatches C{directDispatch} selectables without
    a per-event log context.

    @ivar _direct: the direct selectables registered with the poller, by
        descriptor: kept with Twisted's C{_selectables} in the same steps
        (C{_add} and C{_remove}), so that an event finds whether its
        selectable is direct with one lookup, not with a C{getattr} of a
        flag on every event (which costs more than the rest of the
        dispatch).
    """

    def __init__(self) -> None:
        self._direct: dict[int, Any] = {}
        super().__init__()
        # An instance attribute (Twisted's is a class attribute until the
        # first stop): read on every iteration, where CPython 3.11 finds an
        # instance's own attributes faster.
        self._justStopped = False

    def _add(
        self,
        xer: Any,
        primary: set[int],
        other: set[int],
        selectables: dict[int, Any],
        event: int,
        antievent: int,
    ) -> None:
        """
        Twisted's C{EPollReactor._add} (behind C{addReader} and
        C{addWriter}), which also notes a direct selectable in C{_direct}.
        """
        fd = xer.fileno()
        if fd not in primary:
            flags = event
            # As in Twisted: an epoll_ctl error is a bug somewhere; let it
            # through, and update the maps only once epoll has agreed.
            if fd in other:
                flags |= antievent
                self._poller.modify(fd, flags)
            else:
                self._poller.register(fd, flags)
                if getattr(xer, "directDispatch", False):
                    self._direct[fd] = xer
            primary.add(fd)
            selectables[fd] = xer

    def _remove(
        self,
        xer: Any,
        primary: set[int],
        other: set[int],
        selectables: dict[int, Any],
        event: int,
        antievent: int,
    ) -> None:
        """
        Twisted's C{EPollReactor._remove} (behind C{removeReader} and
        C{removeWriter}), which also forgets a direct selectable when the
        poller forgets it: its descriptor number is reused by the next
        socket, which must not be dispatched to this one.
        """
        fd = xer.fileno()
        if fd == -1:
            for fd, fdes in selectables.items():  # noqa: B007 (used below)
                if xer is fdes:
                    break
            else:
                return
        if fd in primary:
            if fd in other:
                self._poller.modify(fd, antievent)
            else:
                del selectables[fd]
                self._direct.pop(fd, None)
                self._poller.unregister(fd)
            primary.remove(fd)

    def readNewDescriptor(self, selectable: Any, fd: int) -> None:
        """
        Watch C{selectable}, whose descriptor C{fd} is new (a connection
        just accepted), for reading: what C{addReader} does through
        C{startReading}, C{addReader}, C{_add} and C{fileno}, in one call.
        A descriptor number the reactor still holds (a selectable that
        was never removed) takes Twisted's way.

        A direct selectable is watched for the peer's shutdown too
        (C{EPOLLRDHUP}), and must then have C{doReadToEnd}, which
        L{doPoll} calls instead of C{doRead} when the peer's data and its
        EOF are both waiting: a connection whose client sends and
        half-closes at once (a request, then end of input) is then read
        and closed in one wake-up, not two.  Once the selectable is
        watched for writing too, Twisted's C{_add} registers it as it
        would any other (without C{EPOLLRDHUP}), and its EOF is found by a
        read again.
        """
        if fd in self._selectables:
            self.addReader(selectable)
            return
        if getattr(selectable, "directDispatch", False):
            self._poller.register(fd, _READ_TO_END)
            self._direct[fd] = selectable
        else:
            self._poller.register(fd, _EPOLLIN)
        self._reads.add(fd)
        self._selectables[fd] = selectable

    def removeSelectable(self, selectable: Any) -> None:
        """
        Stop watching C{selectable} for reading and for writing, as
        C{removeReader} then C{removeWriter} would, in one step: a closing
        connection's (L{myserver.transport.GuardedServer.connectionLost}),
        which Twisted's C{stopReading} and C{stopWriting} take eight Python
        calls to do.

        Always with an C{epoll_ctl(DEL)}, even for a descriptor about to be
        closed, whose close alone would take it out of the epoll set only
        if no other descriptor refers to its socket.  A child process
        between C{fork} and C{exec} (an upgrade's successor, a worker)
        holds a copy of every descriptor: a socket closed then stays in the
        set under its old number, and its events (a peer's EOF, level
        triggered) reach the connection that reuses the number, which
        would take them for its own (L{doPoll}'s read to the end would
        close it, its client's bytes unread).
        """
        fd = selectable.fileno()
        if self._selectables.get(fd) is selectable:
            del self._selectables[fd]
            self._direct.pop(fd, None)
            self._reads.discard(fd)
            self._writes.discard(fd)
            self._poller.unregister(fd)
        else:
            # Not ours to forget this way: polled continuously (epoll
            # refused its descriptor), or not watched at all.
            self.removeReader(selectable)
            self.removeWriter(selectable)

    def doPoll(self, timeout: float | None) -> None:
        if timeout is None:
            timeout = -1  # Wait indefinitely.
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        direct = self._direct
        readable = _EPOLLIN
        readToEnd = _READ_TO_END
        for fd, event in events:
            # A subscript, which CPython specialises for a dict, rather than
            # a call of get: a miss (a selectable that is not direct: the
            # waker, the admin site's connections) is the rare case.
            try:
                selectable = direct[fd]
            except KeyError:
                selectable = None
            if selectable is not None:
                try:
                    # The usual event (data, nothing else) takes one
                    # comparison to tell.
                    try:
                        if event == readable:
                            why = selectable.doRead()
                        elif event == readToEnd:
                            why = selectable.doReadToEnd()
                        else:
                            why = _NOT_A_READ
                    except KeyboardInterrupt:
                        raise
                    except BaseException:
                        # As _doReadOrWrite: log, and disconnect.
                        why = sys.exc_info()[1]
                        log.err()
                    # A direct selectable returns None or the reason: told
                    # apart without calling the reason's __bool__.
                    if why is not None:
                        if why is _NOT_A_READ:
                            # Writable, or an error: Twisted's handling,
                            # which catches and disconnects by itself.
                            self._doReadOrWrite(selectable, fd, event)
                        else:
                            self._disconnectSelectable(selectable, why, True)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    # What callWithLogger catches (a protocol's
                    # connectionLost raising, say): log it and go on with
                    # the other ready descriptors.  As there, Ctrl-C is not
                    # caught.
                    log.err(None, f"error handling {selectable.logPrefix()}")
                continue
            selectable = self._selectables.get(fd)
            if selectable is not None:
                log.callWithLogger(
                    selectable, self._doReadOrWrite, selectable, fd, event
                )

    doIteration = doPoll

    def mainLoop(self) -> None:
        """
        Twisted's C{ReactorBase.mainLoop}: run timed and thread calls, poll,
        until stopped, logging an unexpected error and going on; with
        C{runUntilCurrent} called only when it has something to do.
        """
        while self._started:
            try:
                self._iterate()
            except BaseException:
                _log.failure("Unexpected error in main loop")
        _log.info("Main loop terminated.")

    def _iterate(self) -> None:
        """
        Iterate until stopped (or until an iteration raises).  Twisted's
        iteration, C{runUntilCurrent(); doIteration(running and
        timeout())}, with both calls' work skipped when there is none: the
        clock is read once, and the poll's timeout is the earliest timed
        call's, capped as Twisted caps it.  The reactor's C{seconds} is
        looked up once per loop, not per iteration.

        The loop is C{while True} with a C{break}, not C{while
        self._started}: CPython 3.11 compiles the latter's test into a
        conditional backward jump, which never counts towards specialising
        the function, and a function entered once (this one) then runs its
        every attribute lookup, on every wake-up, by the generic path
        (about 2,100 instructions per wake-up under callgrind).  An
        unconditional backward jump does count.
        """
        seconds = self.seconds
        doIteration = self.doIteration
        while True:
            if not self._started:
                break
            pending = self._pendingTimedCalls
            if pending:
                wait = pending[0].time - seconds()
                if wait > _LONGEST_WAIT:
                    wait = _LONGEST_WAIT
            else:
                wait = None
            if (
                (wait is not None and wait <= 0.0)
                or self.threadCallQueue
                or self._newTimedCalls
                or self._justStopped
            ):
                self.runUntilCurrent()
                wait = self.timeout()
            doIteration(self.running and wait)


def install() -> None:
    """
    Install L{DirectEPollReactor} as the global reactor (C{twistd -r
    myserver}).
    """
    from twisted.internet.main import installReactor

    installReactor(DirectEPollReactor())


def installUnlessChosen() -> None:
    """
    Install L{DirectEPollReactor} if no reactor has been installed yet (twistd
    installs one at option parsing when given C{--reactor}) and epoll exists
    here; otherwise leave the choice as it is.
    """
    if "twisted.internet.reactor" not in sys.modules and hasattr(select, "epoll"):
        install()


def reactorName(reactor: Any) -> str | None:
    """
    The twistd C{--reactor} name that installs C{reactor}'s kind, for
    worker processes to run the same one; L{None} when there is none.
    """
    from twisted.application.reactors import getReactorTypes

    module = type(reactor).__module__
    for installer in getReactorTypes():
        if getattr(installer, "moduleName", None) == module:
            return str(installer.shortName)
    return None
