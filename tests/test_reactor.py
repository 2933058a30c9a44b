"""
myserver's reactor (L{myserver.reactor}): guarded connections are called
without Twisted's per-event legacy log context, everything else as Twisted
does; it is the default, and any other reactor twistd offers serves the same.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.python import context, log
from twisted.trial.unittest import TestCase

from myserver.reactor import DirectEPollReactor, reactorName
from tests.support import ServerProcess, assertNoTraceback, echoOnce, processTest


class Readable(FileDescriptor):
    """
    One end of a socket pair, recording the legacy log context it was
    called in.
    """

    def __init__(self, reactor: Any, sock: socket.socket, prefix: str) -> None:
        super().__init__(reactor)
        self.socket = sock
        self.prefix = prefix
        self.systems: list[str] = []

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return self.prefix

    def doRead(self) -> None:
        self.systems.append(context.get(log.ILogContext)["system"])
        self.socket.recv(100)


class Direct(Readable):
    directDispatch = True

    def doReadToEnd(self) -> None:
        self.systems.append("to the end")
        self.socket.recv(100)


class RaisesWhenLost(Direct):
    def doRead(self) -> Any:
        from twisted.internet.main import CONNECTION_LOST

        return CONNECTION_LOST

    def connectionLost(self, reason: Any) -> None:
        raise RuntimeError("connectionLost went wrong")


class DispatchTests(TestCase):
    """
    L{DirectEPollReactor.doPoll} over real socket pairs.
    """

    def setUp(self) -> None:
        self.reactor = DirectEPollReactor()
        self.addCleanup(self.reactor.waker.connectionLost, None)
        self.addCleanup(self.reactor._poller.close)

    def readable(self, kind: type[Readable], prefix: str) -> Readable:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        theirs.sendall(b"x")
        selectable = kind(self.reactor, ours, prefix)
        self.reactor.addReader(selectable)
        self.addCleanup(self.reactor.removeReader, selectable)
        return selectable

    def test_directWithoutContext(self) -> None:
        """
        A C{directDispatch} selectable is called without a log context of
        its own; any other one in its C{logPrefix}, as Twisted does.
        """
        direct = self.readable(Direct, "direct")
        plain = self.readable(Readable, "plain")
        self.reactor.doPoll(1)
        self.assertEqual(direct.systems, ["-"])
        self.assertEqual(plain.systems, ["plain"])

    def test_errorIsLoggedOthersServed(self) -> None:
        """
        An exception escaping a direct selectable's handling is logged, and
        the other descriptors ready in the same poll are still served.
        """
        self.readable(RaisesWhenLost, "raises")
        others = [self.readable(Direct, f"other{n}") for n in range(3)]
        self.reactor.doPoll(1)
        self.assertEqual([o.systems for o in others], [["-"]] * 3)
        errors = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(len(errors), 1)

    def test_reusedDescriptorNotDirect(self) -> None:
        """
        A direct selectable is forgotten when it is removed: the next socket
        given its descriptor number is dispatched as what it is, not to the
        old one.
        """
        ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        gone = Direct(self.reactor, ours, "gone")
        self.reactor.addReader(gone)
        number = ours.fileno()
        self.reactor.removeReader(gone)
        ours.close()
        plain = self.readable(Readable, "plain")
        self.assertEqual(plain.fileno(), number)
        self.reactor.doPoll(1)
        self.assertEqual((gone.systems, plain.systems), ([], ["plain"]))

    def test_directWhileWatched(self) -> None:
        """
        A direct selectable stays direct while the poller watches it for
        reading or for writing, and is forgotten when it watches neither.
        """
        direct = self.readable(Direct, "direct")
        self.reactor.addWriter(direct)
        self.reactor.removeReader(direct)
        self.assertEqual(self.reactor._direct, {direct.fileno(): direct})
        self.reactor.removeWriter(direct)
        self.assertEqual(self.reactor._direct, {})

    def test_removeSelectable(self) -> None:
        """
        C{removeSelectable} forgets a selectable for reading and writing in
        one step, as C{removeReader} and C{removeWriter} would; one epoll
        refused (a regular file, polled continuously) too.
        """
        direct = self.readable(Direct, "direct")
        self.reactor.addWriter(direct)
        with open(__file__) as regular:
            polled = Readable(self.reactor, regular, "polled")
            self.reactor.addReader(polled)
            self.assertIn(polled, self.reactor.getReaders())
            for selectable in (direct, polled):
                self.reactor.removeSelectable(selectable)
            watched = self.reactor.getReaders() + self.reactor.getWriters()
            self.assertEqual([s for s in watched if s in (direct, polled)], [])
        self.assertEqual(self.reactor._direct, {})

    def test_readNewDescriptor(self) -> None:
        """
        C{readNewDescriptor} watches a new descriptor for reading as
        C{addReader} would, direct or not; a number the reactor still
        holds for another selectable takes C{addReader}'s way, which keeps
        the one it has.
        """
        pairs = [socket.socketpair() for _ in range(2)]
        for pair in pairs:
            for end in pair:
                self.addCleanup(end.close)
        direct = Direct(self.reactor, pairs[0][0], "direct")
        plain = Readable(self.reactor, pairs[1][0], "plain")
        for selectable in (direct, plain):
            self.reactor.readNewDescriptor(selectable, selectable.fileno())
            self.assertIn(selectable, self.reactor.getReaders())
        self.assertEqual(self.reactor._direct, {direct.fileno(): direct})
        for pair in pairs:
            pair[1].send(b"x")
        self.reactor.doPoll(1)
        self.assertEqual((direct.systems, plain.systems), (["-"], ["plain"]))
        stale = Direct(self.reactor, pairs[0][0], "stale")
        self.reactor.readNewDescriptor(stale, direct.fileno())
        self.assertIs(self.reactor._selectables[direct.fileno()], direct)

    def test_readToEnd(self) -> None:
        """
        A new direct descriptor is watched for the peer's shutdown too:
        when its data and its EOF are both waiting, C{doReadToEnd} is
        called instead of C{doRead}; data alone, C{doRead}.  Once it is
        watched for writing too, Twisted's registration applies and the
        EOF comes as read readiness again.
        """
        for shutDown, watchWrites, expected in (
            (False, False, "-"),
            (True, False, "to the end"),
            (True, True, "-"),
        ):
            ours, theirs = socket.socketpair()
            self.addCleanup(ours.close)
            self.addCleanup(theirs.close)
            direct = Direct(self.reactor, ours, "direct")
            self.reactor.readNewDescriptor(direct, ours.fileno())
            self.addCleanup(self.reactor.removeSelectable, direct)
            theirs.send(b"x")
            if shutDown:
                theirs.shutdown(socket.SHUT_WR)
            if watchWrites:
                # Writable and readable: dispatched by _doReadOrWrite, as
                # Twisted does; then back to reading alone.
                self.reactor.addWriter(direct)
                self.reactor.removeWriter(direct)
            self.reactor.doPoll(1)
            self.assertEqual(direct.systems, [expected], (shutDown, watchWrites))

    def test_removedSocketSharedWithAChild(self) -> None:
        """
        A socket removed and closed while another descriptor still refers
        to it (a child process's copy, between fork and exec) is reported
        no more: its peer's EOF, level-triggered, would otherwise reach
        whichever connection reuses the number.
        """
        ours, theirs = socket.socketpair()
        direct = Direct(self.reactor, ours, "direct")
        self.reactor.readNewDescriptor(direct, ours.fileno())
        theirs.send(b"x")
        theirs.close()
        self.assertNotEqual(self.reactor._poller.poll(0), [])
        childsCopy = os.dup(ours.fileno())
        self.addCleanup(os.close, childsCopy)
        self.reactor.removeSelectable(direct)
        ours.close()
        self.assertNotIn(direct, self.reactor.getReaders())
        self.assertEqual(self.reactor._direct, {})
        self.assertEqual(self.reactor._poller.poll(0), [])

    def test_reactorName(self) -> None:
        """
        Workers are told the parent's reactor by its twistd name.
        """
        self.assertEqual(reactorName(self.reactor), "myserver")
        self.assertIsNone(reactorName(object()))


@processTest
class ReactorChoiceTests(TestCase):
    """
    The reactor myserver runs on, by default and when twistd is told one.
    """

    def serve(self, *args: str, twistdArgs: tuple[str, ...] = ()) -> ServerProcess:
        server = ServerProcess(*args, twistdArgs=twistdArgs).start()
        self.addCleanup(server.kill)
        payload = bytes(range(256)) * 1024
        self.assertEqual(echoOnce(server.port, payload), payload)
        return server

    def reactorClasses(self, server: ServerProcess) -> list[str]:
        return [
            line.split("reactor class: ")[1].strip().rstrip(".")
            for line in server.lines
            if "reactor class: " in line
        ]

    def test_default(self) -> None:
        """
        Without C{--reactor}, myserver installs its own.
        """
        server = self.serve()
        self.assertEqual(
            self.reactorClasses(server), ["myserver.reactor.DirectEPollReactor"]
        )
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)

    def test_othersServeTheSame(self) -> None:
        """
        Twisted's own reactors, chosen with C{twistd --reactor}, echo every
        byte after a half-close just the same.
        """
        for name, kind in [
            ("epoll", "twisted.internet.epollreactor.EPollReactor"),
            ("poll", "twisted.internet.pollreactor.PollReactor"),
            ("asyncio", "twisted.internet.asyncioreactor.AsyncioSelectorReactor"),
        ]:
            server = self.serve(twistdArgs=("--reactor", name))
            self.assertEqual(self.reactorClasses(server), [kind])
            self.assertEqual(server.stop(), 0)
            assertNoTraceback(self, server.output)

    def test_workersRunTheParentsReactor(self) -> None:
        """
        Worker processes run the reactor their parent was given.
        """
        server = self.serve("--workers", "2", twistdArgs=("--reactor", "asyncio"))
        server.waitFor(lambda: len(self.reactorClasses(server)) == 3, 30)
        self.assertEqual(
            set(self.reactorClasses(server)),
            {"twisted.internet.asyncioreactor.AsyncioSelectorReactor"},
        )
        self.assertEqual(server.stop(), 0)


class InterruptedWhenLost(RaisesWhenLost):
    def connectionLost(self, reason: Any) -> None:
        raise KeyboardInterrupt()


class InterruptTests(TestCase):
    """
    Ctrl-C is not swallowed by a direct dispatch, exactly as
    C{log.callWithLogger} lets it through for Twisted's own reactors.
    """

    def test_keyboardInterruptReRaised(self) -> None:
        reactor = DirectEPollReactor()
        self.addCleanup(reactor.waker.connectionLost, None)
        self.addCleanup(reactor._poller.close)
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        theirs.sendall(b"x")
        selectable = InterruptedWhenLost(reactor, ours, "interrupted")
        reactor.addReader(selectable)
        self.addCleanup(reactor.removeReader, selectable)
        self.assertRaises(KeyboardInterrupt, reactor.doPoll, 1)
