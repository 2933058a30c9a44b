"""
The process-wide limits, in memory: the output budget (slower reads, no
accepting, aborting the largest queues), the handshake deadline, and
STARTTLS staying on the guarded write path.
"""

from __future__ import annotations

import os
from typing import Any

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import deferLater
from twisted.test import __file__ as twistedTests
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from myserver.accepting import AcceptGate
from myserver.budget import (
    ABORT,
    MARK_FLOOR,
    NORMAL,
    OVERLOAD,
    OVERLOADED,
    SHRINK_MARKS,
    STOP_ACCEPTING,
    MemoryReturner,
    OutputBudget,
)
from myserver.interfaces import IHandshakePhase
from myserver.policy import HANDSHAKE_TIMEOUT
from myserver.registry import ConnectionRegistry
from myserver.testing import MemoryServer, pluginFactory
from tests.test_core import Listening, RecordingPort

KiB = 1024
MiB = 1024 * KiB


class Broadcast(Protocol):
    """
    Writes what one member sends to every other member, as chat does: the
    queues that grow are not the sender's, so pausing reads cannot help.
    """

    def connectionMade(self) -> None:
        self.factory.members.append(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.members.remove(self)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        for member in self.factory.members:  # type: ignore[attr-defined]
            if member is not self:
                member.transport.write(data)


class BudgetTests(TestCase):
    def test_marksShrinkUnderPressure(self) -> None:
        budget = OutputBudget(ConnectionRegistry(), 64 * MiB)
        self.assertEqual(budget.markFor(MiB), MiB)
        budget.queued = 48 * MiB
        self.assertEqual(budget.markFor(MiB), MiB // 2)
        # A thousand open connections: half a fair share each.
        budget.registry.connections.update(object() for _ in range(1000))
        self.assertEqual(budget.markFor(MiB), 64 * MiB // 2000)
        budget.registry.connections.clear()
        budget.queued = 64 * MiB
        self.assertEqual(budget.markFor(MiB), MARK_FLOOR)
        self.assertEqual(budget.markFor(4 * KiB), 4 * KiB)

    def test_offByDefault(self) -> None:
        budget = OutputBudget(ConnectionRegistry(), 0)
        budget.queued = 1 << 40
        self.assertEqual(budget.markFor(MiB), MiB)
        self.assertEqual(budget.pressed(MiB), MiB)
        self.assertEqual(budget.state, NORMAL)

    def test_slowReadersBoundedAndEveryByteDelivered(self) -> None:
        """
        Twenty echo clients each send 1 MiB and read nothing: the total
        queued stays near the 2 MiB budget, not at 20 MiB, and nothing is
        lost: once they read, each gets exactly what it sent.
        """
        server = MemoryServer(
            pluginFactory("echo"),
            max_buffered="2MiB",
            max_write_buffer="1MiB",
            socketBuffer=4 * KiB,
        )
        clients = [server.connect() for _ in range(20)]
        payloads = [os.urandom(MiB) for _ in clients]
        highest = 0
        for client, payload in zip(clients, payloads, strict=True):
            client.receive(payload)
            highest = max(highest, server.budget.queued)
        # At most one read (64 KiB) past its mark per connection.
        self.assertLessEqual(highest, 2 * MiB + 20 * 64 * KiB)
        self.assertGreater(server.budget.actions[SHRINK_MARKS], 0)
        received = [bytearray() for _ in clients]
        while any(len(r) < MiB for r in received):
            for client, got in zip(clients, received, strict=True):
                got += client.read()
        for got, payload in zip(received, payloads, strict=True):
            self.assertEqual(bytes(got), payload)
        self.assertEqual(server.budget.queued, 0)
        self.assertEqual(server.budget.state, NORMAL)

    def test_largestQueuesAbortedAboveCeiling(self) -> None:
        """
        A broadcaster keeps writing to members that do not read: past the
        ceiling the largest queues are aborted, counted as overload; the
        member that reads keeps receiving.
        """
        factory = Factory.forProtocol(Broadcast)
        factory.members = []  # type: ignore[attr-defined]
        server = MemoryServer(
            factory, max_buffered="1MiB", max_write_buffer="1MiB", socketBuffer=KiB
        )
        sender = server.connect()
        reader = server.connect()
        stalled = [server.connect() for _ in range(4)]
        for _ in range(40):
            sender.receive(b"x" * 32 * KiB)
            reader.read()
        self.assertTrue(any(c.closed for c in stalled))
        self.assertFalse(reader.closed)
        self.assertFalse(sender.closed)
        self.assertGreater(server.guard.rejected[OVERLOAD], 0)
        self.assertEqual(server.budget.actions[ABORT], server.guard.rejected[OVERLOAD])
        self.assertLessEqual(server.budget.queued, server.budget.ceiling)
        sender.receive(b"still here")
        self.assertTrue(reader.read().endswith(b"still here"))

    def test_noAcceptingWhileOverloaded(self) -> None:
        registry = ConnectionRegistry()
        budget = OutputBudget(registry, MiB)
        gate = AcceptGate(registry, 100, budget)
        listener = Listening()
        port = RecordingPort()
        gate.portStarted(listener, port)
        budget.queued = MiB
        budget.pressed(MiB)
        self.assertEqual(budget.state, OVERLOADED)
        self.assertFalse(port.accepting)
        self.assertEqual(gate.room(listener), 0)
        self.assertEqual(budget.actions[STOP_ACCEPTING], 1)
        budget.queued = int(MiB * 0.95)
        budget.relieved()
        self.assertEqual(budget.state, OVERLOADED)
        budget.queued = MiB // 4
        budget.relieved()
        self.assertEqual(budget.state, NORMAL)
        self.assertTrue(port.accepting)

    def test_memoryTrimmedAfterHighQueues(self) -> None:
        budget = OutputBudget(ConnectionRegistry(), 64 * MiB)
        returner = MemoryReturner(budget)
        budget.queued = 40 * MiB
        returner.check()
        budget.queued = 30 * MiB
        returner.check()
        self.assertEqual(returner.trims, 0)
        budget.queued = MiB
        returner.check()
        self.assertEqual(returner.trims, 1 if returner._libc is not None else 0)
        returner.check()
        self.assertLessEqual(returner.trims, 1)


@implementer(IHandshakePhase)
class Login(Protocol):
    """
    A plugin's own handshake: done once a line C{LOGIN} has arrived.
    """

    loggedIn = False

    def handshakeFinished(self) -> bool:
        return self.loggedIn

    def dataReceived(self, data: bytes) -> None:
        if b"LOGIN\n" in data:
            self.loggedIn = True


class HandshakeDeadlineTests(TestCase):
    def test_absoluteDeadline(self) -> None:
        """
        Bytes that trickle in do not move the deadline; a finished
        handshake is never looked at again.
        """
        server = MemoryServer(
            Factory.forProtocol(Login), handshake_timeout=4, idle_timeout=0
        )
        dripper = server.connect()
        quick = server.connect()
        quick.receive(b"LOGIN\n")
        for _ in range(10):
            dripper.receive(b"L")
            server.advance(0.5)
        self.assertTrue(dripper.closed)
        self.assertFalse(quick.closed)
        self.assertEqual(server.guard.rejected, {HANDSHAKE_TIMEOUT: 1})
        server.advance(60)
        self.assertFalse(quick.closed)


def _tlsContexts() -> tuple[Any, Any]:
    pem = os.path.join(os.path.dirname(twistedTests), "server.pem")
    with open(pem, "rb") as f:
        serverOptions = PrivateCertificate.loadPEM(f.read()).options()
    client = SSL.Context(SSL.TLS_METHOD)
    return serverOptions, client


class StartTLS(Protocol):
    """
    Echo, upgraded to TLS on a C{STARTTLS} line, as SMTP or IMAP do.
    """

    def dataReceived(self, data: bytes) -> None:
        if data == b"STARTTLS\n":
            self.transport.startTLS(self.factory.tls)  # type: ignore[attr-defined]
        else:
            self.transport.write(data)  # type: ignore[union-attr]


class StartTLSTests(TestCase):
    @inlineCallbacks
    def test_ciphertextGuarded(self) -> Any:
        """
        After STARTTLS the connection is still counted, and a client that
        does not read is held to the write mark: reading from it pauses.
        """
        serverTLS, clientContext = _tlsContexts()
        factory = Factory.forProtocol(StartTLS)
        factory.tls = serverTLS  # type: ignore[attr-defined]
        server = MemoryServer(factory, max_write_buffer="64KiB", socketBuffer=4 * KiB)
        connection = server.connect()
        connection.receive(b"STARTTLS\n")
        tls = SSL.Connection(clientContext, None)
        tls.set_connect_state()

        def pump() -> None:
            for _ in range(20):
                try:
                    tls.do_handshake()
                except SSL.WantReadError:
                    pass
                try:
                    out = tls.bio_read(1 << 20)
                except SSL.WantReadError:
                    out = b""
                if out:
                    connection.receive(out)
                back = connection.read()
                if back:
                    tls.bio_write(back)
                if not out and not back:
                    return

        pump()
        sentBefore = connection.transport.bytesSent  # type: ignore[union-attr]
        self.assertGreater(sentBefore, 0)
        tls.send(b"hello")
        pump()
        # Twisted's TLS layer gathers small writes for a turn of the global
        # reactor (not the memory kit's) before encrypting them.
        yield deferLater(reactor, 0.01, lambda: None)
        pump()
        self.assertEqual(tls.recv(100), b"hello")
        self.assertGreater(
            connection.transport.bytesSent,  # type: ignore[union-attr]
            sentBefore,
        )
        # Now the client sends 2 MiB and reads nothing back.
        for _ in range(32):
            tls.send(b"y" * 64 * KiB)
            connection.receive(tls.bio_read(1 << 20))
        self.assertTrue(connection.readingPaused)
        self.assertLess(connection.pendingBytes, 64 * KiB + 2 * 64 * KiB)
        self.assertEqual(server.budget.queued, connection.pendingBytes)
