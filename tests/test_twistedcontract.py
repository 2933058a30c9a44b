"""
The contract with Twisted: every private Twisted name myserver relies on
still exists, with the kind expected, and the upstream code myserver's
reactor copied is still the code it was copied from.

These are the names listed at the top of L{myserver.transport},
L{myserver.ports}, L{myserver.proxy}, L{myserver.reactor},
L{myserver.listening}, L{myserver.endpoints}, L{myserver.adopting} and
L{myserver.upgrade}.  When a Twisted upgrade
makes one of these tests fail, the message names what to re-check; nothing
else in the suite would fail as clearly (a renamed internal can turn into
silently different behaviour instead of an error).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import socket
import textwrap
import types
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import (
    _newtls,
    abstract,
    address,
    base,
    endpoints,
    epollreactor,
    process,
    tcp,
    unix,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.protocols.haproxy import _exceptions, _v1parser, _v2parser, _wrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python import systemd
from twisted.scripts import _twistd_unix
from twisted.trial.unittest import TestCase

from myserver.accepting import AcceptGate
from myserver.policy import Guard
from myserver.ports import GuardedTCPPort
from myserver.registry import ConnectionRegistry
from myserver.transport import GuardedServer, GuardedUNIXServer

# sha256 of inspect.getsource(EPollReactor.doPoll) in the Twisted versions
# myserver's copy (DirectEPollReactor.doPoll) was checked against: 24.7.0
# through 26.10.0 all have this one.
DO_POLL_SHA256 = "09b62ae68ef01b4bc5eaa170827e2baf0a2a5098e7e7ce7b5e1c80cda187c827"

# codeFingerprint of the Twisted methods myserver copied or replaced, and
# where: the same in 24.7.0 through 26.10.0 (whose sources differ only in
# type annotations).
_REACTOR = "myserver.reactor (DirectEPollReactor)"
_TRANSPORT = "myserver.transport (GuardedServer)"
COPIED_FINGERPRINTS = {
    (epollreactor.EPollReactor, "_add"): (
        "8e6fb574664fbdddce77f42627d30025858c28fd734ba4695bea2b272abd9f7e",
        _REACTOR,
    ),
    (epollreactor.EPollReactor, "_remove"): (
        "c75b61dcb64fc5195abc8ac2b7e4f561422a2841502fcf5dcb5472132818decd",
        _REACTOR,
    ),
    (base.ReactorBase, "mainLoop"): (
        "1d9e342e85c872e6e88749982f759af2cbdb7ffe09f748b4b8883bcd14d13eec",
        _REACTOR,
    ),
    (base.ReactorBase, "timeout"): (
        "9eee6d22c2b3537b74d2475c43cb897faeaaa4b5b8fd9de51e5f1a6124ba3b6d",
        _REACTOR,
    ),
    (tcp.Connection, "connectionLost"): (
        "58bac5ad31515ab49b84cc23a8e10b123be6c058fbb53e6e850310af7f309b3c",
        _TRANSPORT,
    ),
    (abstract.FileDescriptor, "connectionLost"): (
        "721339ba19773b138f8f7a791d796462050b33c4ccb6996b2072cee0cf773834",
        _TRANSPORT,
    ),
    (tcp.Connection, "readConnectionLost"): (
        "ada62adc2a708579acd20c7020f4858c843b56eba0d06f8eace97abc4281a452",
        _TRANSPORT,
    ),
}


def codeFingerprint(function: Any) -> str:
    """
    A hash of what C{function} does: its syntax tree without docstrings
    and type annotations (which Twisted rewrites between releases without
    changing the code) and without positions, so that only a change of
    code changes it.
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
            if ast.get_docstring(node, clean=False) is not None:
                node.body = node.body[1:] or [ast.Pass()]
        elif isinstance(node, ast.arg):
            node.annotation = None
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


class ContractTestCase(TestCase):
    def assertKind(self, owner: Any, name: str, kind: Any, user: str) -> None:
        found = inspect.getattr_static(owner, name, None)
        self.assertIsInstance(
            found,
            kind,
            f"{getattr(owner, '__qualname__', owner)}.{name} is no longer a "
            f"{kind}: re-check {user}",
        )


class PrivateNamesTests(ContractTestCase):
    """
    Each private name exists and is of the kind myserver uses it as.
    """

    def test_writeQueue(self) -> None:
        """
        The write queue the guarded transport reads and appends to.
        """
        fd = abstract.FileDescriptor()
        user = "myserver.transport (pendingBytes, write, writeSomeData)"
        self.assertKind(abstract.FileDescriptor, "dataBuffer", bytes, user)
        self.assertKind(abstract.FileDescriptor, "offset", int, user)
        self.assertKind(abstract.FileDescriptor, "SEND_LIMIT", int, user)
        self.assertKind(abstract.FileDescriptor, "_writeDisconnected", bool, user)
        self.assertIsInstance(fd._tempDataBuffer, list, user)
        self.assertIsInstance(fd._tempDataLen, int, user)
        for documented in ("producer", "streamingProducer", "producerPaused"):
            self.assertTrue(hasattr(fd, documented), f"{documented}: {user}")

    def test_transportClasses(self) -> None:
        """
        The transports and ports subclassed, and the C{transport} attribute
        through which a port builds its connections.
        """
        self.assertTrue(issubclass(unix.Server, tcp.Server))
        self.assertTrue(issubclass(unix.Port, tcp.Port))
        user = "myserver.ports (GuardedTCPPort, GuardedUNIXPort)"
        self.assertKind(tcp.Port, "transport", type, user)
        self.assertKind(unix.Port, "transport", type, user)
        self.assertKind(tcp.Port, "_fromListeningDescriptor", classmethod, user)
        # Where TCP_NODELAY goes on a listening socket (GuardedTCPPort).
        self.assertKind(tcp.Port, "createInternetSocket", types.FunctionType, user)
        self.assertIn(
            "_preexistingSocket", inspect.getsource(tcp.Port.startListening), user
        )
        self.assertKind(unix.Port, "_fromListeningDescriptor", classmethod, user)
        self.assertEqual(tcp.Port.addressFamily, socket.AF_INET, user)

    def test_serverConstructor(self) -> None:
        """
        L{GuardedServer} sets what Twisted's C{tcp.Server} constructor sets
        (and C{unix.Server}'s, for the UNIX transport), except the log
        strings it makes on demand, and the socket object and its
        C{fileno}, which are a property and a method on the class (the
        socket object made on demand too): a Twisted upgrade that adds an
        attribute there fails here.
        """
        reactor = MemoryReactor()
        registry = ConnectionRegistry()
        port: Any = types.SimpleNamespace(
            guard=Guard(registry, AcceptGate(registry, 10), Clock()),
            _realPortNumber=1,
            noDelayInherited=False,
        )
        lazy = {"logstr", "repstr"}
        onTheClass = {"socket", "fileno", "hostname"}
        cases = [
            (tcp.Server, GuardedServer, socket.AF_INET, ("127.0.0.1", 1)),
            (unix.Server, GuardedUNIXServer, socket.AF_UNIX, ""),
        ]
        for twisted, ours, family, client in cases:
            skts = [socket.socket(family, socket.SOCK_STREAM) for _ in range(2)]
            for skt in skts:
                self.addCleanup(skt.close)
            theirs = twisted(skts[0], Protocol(), client, port, 0, reactor)
            mine = ours(skts[1], Protocol(), client, port, 0, reactor)
            self.assertEqual(
                set(vars(theirs)) - set(vars(mine)) - lazy - onTheClass,
                set(),
                f"{twisted.__module__}.{twisted.__qualname__}.__init__ sets "
                "more: re-check myserver.transport (GuardedServer.__init__)",
            )
            self.assertEqual(theirs.hostname, mine.hostname)
            self.assertEqual(theirs.logstr, mine.logstr)
            self.assertEqual(repr(theirs), repr(mine))
            self.assertIs(mine.socket, skts[1])
            self.assertEqual(mine.fileno(), skts[1].fileno())

    def test_closePath(self) -> None:
        """
        What the guarded transport's close overrides and reads, and the
        reactor's disconnect helper its dispatch calls.
        """
        user = "myserver.transport (_closeSocket, loseConnection)"
        self.assertKind(tcp._SocketCloser, "_closeSocket", types.FunctionType, user)
        self.assertIs(tcp.Server.TLS, False, user)
        self.assertKind(
            abstract.FileDescriptor, "_getLogPrefix", types.FunctionType, user
        )
        self.assertKind(
            epollreactor.EPollReactor,
            "_disconnectSelectable",
            types.FunctionType,
            "myserver.reactor (DirectEPollReactor.doPoll)",
        )
        self.assertTrue(
            callable(getattr(socket.socket, "_accept", None)),
            "CPython's socket._accept: re-check myserver.ports (GuardedPort.doRead)",
        )

    def test_addressFields(self) -> None:
        """
        The accept loop makes C{IPv4Address}es by setting their fields on a
        bare instance: those fields must be all that Twisted's constructor
        sets, in a class without slots, and the result equal to one the
        constructor made.
        """
        user = "myserver.ports (GuardedTCPPort._address)"
        fields = [field.name for field in address.IPv4Address.__attrs_attrs__]
        self.assertEqual(fields, ["type", "host", "port"], user)
        self.assertFalse(hasattr(address.IPv4Address, "__slots__"), user)
        port = GuardedTCPPort(0, None)
        made = port._address(("127.0.0.1", 40001))
        expected = address.IPv4Address("TCP", "127.0.0.1", 40001)
        self.assertEqual(made, expected, user)
        self.assertEqual(vars(made), vars(expected), user)
        self.assertEqual(hash(made), hash(expected), user)
        self.assertEqual(repr(made), repr(expected), user)

    def test_startTLS(self) -> None:
        """
        The function Twisted's C{startTLS} calls, which takes the base class
        the TLS layer sends its ciphertext through, and the flag that says
        a TLS layer's handshake is over.
        """
        user = "myserver.transport (GuardedServer.startTLS)"
        self.assertKind(_newtls, "startTLS", types.FunctionType, user)
        self.assertEqual(
            list(inspect.signature(_newtls.startTLS).parameters),
            ["transport", "contextFactory", "normal", "bypass"],
            user,
        )
        source = inspect.getsource(_newtls.ConnectionMixin.startTLS)
        self.assertIn("startTLS(self, ctx, normal, FileDescriptor)", source, user)
        self.assertIs(TLSMemoryBIOProtocol._handshakeDone, False, "myserver.tls")
        self.assertIn(
            "self._handshakeDone = True",
            inspect.getsource(TLSMemoryBIOProtocol),
            "myserver.tls (TimedHandshakeTLS)",
        )

    def test_descriptorReserve(self) -> None:
        """
        The one descriptor reserve: Twisted's ports reserve it as they start
        listening, myserver's accept loop releases it on EMFILE.
        """
        reserve = tcp._reservedFD
        for method in ("available", "reserve", "__enter__", "__exit__"):
            self.assertTrue(
                callable(getattr(reserve, method, None)),
                f"tcp._reservedFD.{method}: re-check myserver.ports "
                "(_outOfDescriptors)",
            )
        source = inspect.getsource(tcp.Port.startListening)
        self.assertIn("_reservedFD.reserve()", source)

    def test_proxyProtocol(self) -> None:
        """
        The PROXY protocol wrapper and parsers L{myserver.proxy} builds on.
        """
        user = "myserver.proxy"
        self.assertKind(_wrapper, "HAProxyProtocolWrapper", type, user)
        self.assertKind(_wrapper, "HAProxyWrappingFactory", type, user)
        self.assertKind(_exceptions, "InvalidProxyHeader", type, user)
        self.assertIsInstance(_v1parser.V1Parser.PROXYSTR, bytes, user)
        self.assertIsInstance(_v2parser.V2Parser.PREFIX, bytes, user)
        for parser in (_v1parser.V1Parser, _v2parser.V2Parser):
            self.assertKind(parser, "feed", types.FunctionType, user)
        wrapper = _wrapper.HAProxyProtocolWrapper(None, None)  # type: ignore[arg-type]
        self.assertIsNone(wrapper._proxyInfo, user)
        self.assertIsNone(wrapper._parser, user)

    def test_systemdParser(self) -> None:
        """
        The lookup table of Twisted's C{systemd:} parser, which
        L{myserver.endpoints} fills in when Twisted kept no descriptor.
        """
        self.assertIsInstance(
            endpoints._SystemdParser._sddaemon,
            systemd.ListenFDs,
            "twisted.internet.endpoints._SystemdParser._sddaemon: re-check "
            "myserver.endpoints (_adoptPassedSockets)",
        )

    def test_endpointService(self) -> None:
        """
        The documented flag L{myserver.listening} sets so that a failure to
        listen is raised while the service tree starts.
        """
        self.assertKind(
            StreamServerEndpointService,
            "_raiseSynchronously",
            bool,
            "myserver.listening (EndpointService)",
        )

    def test_handover(self) -> None:
        """
        What L{myserver.adopting.releaseForSuccessor} turns off so that a
        port stops without ending the socket its successor serves.
        """
        user = "myserver.adopting (releaseForSuccessor)"
        self.assertKind(tcp._SocketCloser, "_shouldShutdown", bool, user)
        self.assertIn("self._shouldShutdown", inspect.getsource(tcp._SocketCloser))
        source = inspect.getsource(unix.Port.connectionLost)
        # (self.port before Twisted 24.10, self._bindPath since.)
        self.assertRegex(source, r"os\.unlink\(self\.(_bindPath|port)\)", user)
        self.assertIn("tcp.Port.connectionLost(self, reason)", source, user)

    def test_processPipes(self) -> None:
        """
        A spawned process keeps the parent's end of each child descriptor in
        C{pipes}: L{myserver.workers} carries a worker's across C{exec}.
        """
        self.assertIn(
            "self.pipes = {}",
            inspect.getsource(process.Process.__init__),
            "twisted.internet.process.Process.pipes: re-check myserver.workers "
            "(executeInPlace)",
        )

    def test_pidFile(self) -> None:
        """
        twistd reads its C{pidfile} option again as it exits, to remove the
        file: L{myserver.upgrade} changes the option to hand the file over.
        """
        source = inspect.getsource(_twistd_unix.UnixApplicationRunner.postApplication)
        self.assertIn(
            'self.removePID(self.config["pidfile"])',
            source,
            "twistd's runner no longer removes the pid file named by its "
            "options at exit: re-check myserver.upgrade (pid file hand-over)",
        )


class CopiedCodeTests(ContractTestCase):
    """
    Code copied from Twisted is still what it was copied from.
    """

    def test_doPoll(self) -> None:
        """
        L{myserver.reactor.DirectEPollReactor.doPoll} is Twisted's
        C{EPollReactor.doPoll} with one change; if Twisted's changes, the copy
        must be redone from the new one (and this hash updated).
        """
        source = inspect.getsource(epollreactor.EPollReactor.doPoll)
        self.assertEqual(
            hashlib.sha256(source.encode()).hexdigest(),
            DO_POLL_SHA256,
            "twisted.internet.epollreactor.EPollReactor.doPoll changed: "
            "re-copy it into myserver.reactor.DirectEPollReactor.doPoll",
        )
        user = "myserver.reactor (DirectEPollReactor.doPoll)"
        self.assertKind(
            epollreactor.EPollReactor, "_doReadOrWrite", types.FunctionType, user
        )
        reactor = epollreactor.EPollReactor()
        self.addCleanup(reactor.waker.connectionLost, None)
        self.addCleanup(reactor._poller.close)
        self.assertIsInstance(reactor._selectables, dict, user)
        self.assertTrue(callable(reactor._poller.poll), user)

    def test_replacedCode(self) -> None:
        """
        The Twisted code L{myserver.reactor.DirectEPollReactor} copies
        (C{_add}, C{_remove}) or replaces with a leaner loop (C{mainLoop},
        C{timeout}), and the close path L{GuardedServer} does in one call
        (C{connectionLost}, C{readConnectionLost}), is still the code it
        was made from; and the reactor's state the replacement reads is
        still there, of the kind it reads.
        """
        for (owner, name), (fingerprint, user) in COPIED_FINGERPRINTS.items():
            self.assertEqual(
                codeFingerprint(getattr(owner, name)),
                fingerprint,
                f"{owner.__module__}.{owner.__qualname__}.{name} changed: "
                f"redo {user}'s {name} from the new one",
            )
        user = "myserver.reactor (DirectEPollReactor.mainLoop)"
        reactor = epollreactor.EPollReactor()
        self.addCleanup(reactor.waker.connectionLost, None)
        self.addCleanup(reactor._poller.close)
        self.assertIsInstance(reactor.threadCallQueue, list, user)
        self.assertIsInstance(reactor._newTimedCalls, list, user)
        self.assertIsInstance(reactor._pendingTimedCalls, list, user)
        self.assertIs(reactor._justStopped, False, user)
        self.assertIs(reactor._started, False, user)
        self.assertIs(reactor.running, False, user)
        self.assertIsInstance(reactor._reads, set, user)
        self.assertIsInstance(reactor._writes, set, user)
        call = reactor.callLater(5, lambda: None)
        self.addCleanup(call.cancel)
        reactor.runUntilCurrent()
        self.assertEqual(reactor._pendingTimedCalls, [call], user)
        self.assertIsInstance(call.time, float, user)
