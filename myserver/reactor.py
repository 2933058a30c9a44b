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
C{tests.test_twistedcontract}, which also compares a hash of Twisted's own
C{EPollReactor.doPoll} with the one this copy was made from, so that an
upgrade that changes it fails loudly): C{EPollReactor.doPoll}'s body,
copied with one change; C{_poller}, C{_selectables}, C{_doReadOrWrite}
and C{_disconnectSelectable}, which it uses.

A direct selectable whose event is read readiness alone (nearly every event
of a busy server) is read without C{_doReadOrWrite}: that function's
checks (hang-up flags, C{fileno() == -1}, write readiness) are for other
events and other selectables, and skipping its frame saves about a tenth
of what an echoed message costs.  What it does with the result and with an
exception is done the same way here: a reason to disconnect goes to
C{_disconnectSelectable} as a read's, and an exception is logged and
disconnects the selectable.
"""

from __future__ import annotations

import errno
import select
import sys
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.python import log

_EPOLLIN = select.EPOLLIN if hasattr(select, "EPOLLIN") else 1


class DirectEPollReactor(EPollReactor):
    """
    An epoll reactor that dispatches C{directDispatch} selectables without
    a per-event log context.
    """

    def doPoll(self, timeout: float | None) -> None:
        if timeout is None:
            timeout = -1  # Wait indefinitely.
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        doReadOrWrite = self._doReadOrWrite
        selectables = self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if getattr(selectable, "directDispatch", False):
                try:
                    if event == _EPOLLIN:
                        try:
                            why = selectable.doRead()
                        except KeyboardInterrupt:
                            raise
                        except BaseException:
                            # As _doReadOrWrite: log, and disconnect.
                            why = sys.exc_info()[1]
                            log.err()
                        if why:
                            self._disconnectSelectable(selectable, why, True)
                    else:
                        doReadOrWrite(selectable, fd, event)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    # What callWithLogger catches (a protocol's
                    # connectionLost raising, say): log it and go on with
                    # the other ready descriptors.  As there, Ctrl-C is not
                    # caught.
                    log.err(None, f"error handling {selectable.logPrefix()}")
            else:
                log.callWithLogger(selectable, doReadOrWrite, selectable, fd, event)

    doIteration = doPoll


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
