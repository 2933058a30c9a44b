"""
The protocol plugin API, end to end: a separately packaged protocol, broken
and clashing plugins, several protocols and per-listener settings in one
server.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.support import ServerProcess, assertNoTraceback, echoOnce, processTest, run

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "example"
_built: dict[str, str] = {}


def installedExample() -> str:
    """
    docs/example, built and installed with pip into a directory of its own
    (once per test run), as a user would install a plugin distribution.

    @return: the directory, to put on PYTHONPATH.
    """
    if "path" not in _built:
        target = tempfile.mkdtemp(prefix="myserver-upper-")
        atexit.register(shutil.rmtree, target, True)
        # Built from a copy: setuptools writes build/ and *.egg-info into
        # the tree it builds, and trial's other worker may be building
        # docs/example at the same moment.
        source = os.path.join(target + "-source", "example")
        atexit.register(shutil.rmtree, target + "-source", True)
        shutil.copytree(EXAMPLE, source)
        built = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--target",
                target,
                source,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if built.returncode != 0:
            raise AssertionError(f"pip could not install docs/example: {built.stderr}")
        _built["path"] = target
    return _built["path"]


def pluginDirectory(testCase: TestCase, **modules: str) -> str:
    """
    A directory holding C{twisted/plugins/NAME.py} for each module given,
    to put on PYTHONPATH.
    """
    root = tempfile.mkdtemp(prefix="myserver-plugins-")
    testCase.addCleanup(shutil.rmtree, root, True)
    plugins = Path(root, "twisted", "plugins")
    plugins.mkdir(parents=True)
    for name, source in modules.items():
        (plugins / f"{name}.py").write_text(textwrap.dedent(source))
    return root


BROKEN = """
    from twisted.internet.protocol import Factory, Protocol
    from twisted.plugin import IPlugin
    from zope.interface import implementer

    from myserver.interfaces import IProtocolPlugin


    class Broken(Protocol):
        # Every third connection fails as it is made; b"boom" fails later.
        made = 0

        def connectionMade(self):
            Broken.made += 1
            if Broken.made % 3 == 0:
                raise RuntimeError("connectionMade went wrong")

        def dataReceived(self, data):
            if b"boom" in data:
                raise ValueError("dataReceived went wrong")
            self.transport.write(data)
            self.lastWords = b"last" in data

        def connectionLost(self, reason):
            if getattr(self, "lastWords", False):
                raise KeyError("connectionLost went wrong")


    @implementer(IPlugin, IProtocolPlugin)
    class BrokenPlugin:
        name = "broken"
        description = "raises on purpose"

        def buildFactory(self, options):
            return Factory.forProtocol(Broken)


    broken = BrokenPlugin()
"""

TWIN = """
    from twisted.internet.protocol import Factory, Protocol
    from twisted.plugin import IPlugin
    from zope.interface import implementer

    from myserver.interfaces import IProtocolPlugin


    @implementer(IPlugin, IProtocolPlugin)
    class Twin:
        name = "twin"
        description = "one of two"

        def buildFactory(self, options):
            return Factory.forProtocol(Protocol)


    twin = Twin()
"""

INVALID = """
    from twisted.plugin import IPlugin
    from zope.interface import implementer

    from myserver.interfaces import IProtocolPlugin


    @implementer(IPlugin, IProtocolPlugin)
    class Invalid:
        name = "invalid"
        description = "forgot buildFactory"


    invalid = Invalid()
"""


@processTest
class SeparatePackageTests(TestCase):
    """
    A protocol in its own distribution, installed beside myserver, is served
    with no change to myserver: the example of docs/plugins.md.
    """

    def setUp(self) -> None:
        self.env = {"PYTHONPATH": installedExample()}

    def test_listed(self) -> None:
        result = run("--list-protocols", env=self.env)
        self.assertEqual(result.returncode, 0, result.stderr)
        names = [line.split()[0] for line in result.stdout.splitlines()]
        self.assertIn("upper", names)
        self.assertEqual(names, sorted(names))
        self.assertIn("echo in upper case", result.stdout)

    def test_served(self) -> None:
        """
        C{--protocol upper} serves it, with the server's guarantees: the
        half-close flow gets every byte, transformed.
        """
        with ServerProcess("--protocol", "upper", env=self.env) as server:
            payload = bytes(range(256)) * 100
            self.assertEqual(echoOnce(server.port, payload), payload.upper())
            self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)

    def test_optionsOnCommandLine(self) -> None:
        """
        PROTOCOL=ENDPOINT and --option KEY=VALUE give a listener its
        protocol and options; VALUE is read as TOML.
        """
        with ServerProcess(
            "--listen",
            "upper=tcp:0:interface=127.0.0.1",
            "--option",
            'prefix="> "',
            env=self.env,
        ) as server:
            self.assertEqual(echoOnce(server.port, b"hi"), b"> HI")
            self.assertIn("upper listening on", server.output)
            self.assertEqual(server.stop(), 0)

    def test_badOption(self) -> None:
        result = run("--listen", "upper=tcp:0", "--option", "colour=1", env=self.env)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn("unknown option 'colour'", result.stderr)


@processTest
class IsolationTests(TestCase):
    """
    A protocol that raises closes the connection it raised for, and only
    that one; the exception is logged with the protocol's name, rate-limited.
    """

    def test_brokenPluginCannotTakeServerDown(self) -> None:
        env = {"PYTHONPATH": pluginDirectory(self, broken_plugin=BROKEN)}
        with ServerProcess("--protocol", "broken", env=env) as server:
            steady = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            steady.sendall(b"first")
            self.assertEqual(steady.recv(100), b"first")
            outcomes = []
            for i in range(12):
                # A connection the server refuses may be reset before even
                # connect() has returned here: that is an outcome too.
                try:
                    with socket.create_connection(
                        ("127.0.0.1", server.port), timeout=10
                    ) as sock:
                        sock.sendall([b"fine", b"boom", b"last", b"boom"][i % 4])
                        sock.shutdown(socket.SHUT_WR)
                        outcomes.append(sock.recv(100))
                except ConnectionResetError:
                    outcomes.append(b"reset")
            # The steady connection, opened first, is still served.
            steady.sendall(b"still here")
            self.assertEqual(steady.recv(100), b"still here")
            steady.close()
            self.assertEqual(server.stop(), 0)
        # Clients that sent "boom", or came at a third connection, got
        # nothing; the others got their echo.
        self.assertIn(b"fine", outcomes)
        self.assertIn(b"last", outcomes)
        self.assertNotIn(b"boom", outcomes)
        output = server.output
        self.assertIn("protocol broken raised an exception in dataReceived", output)
        self.assertIn("protocol broken raised an exception in connectionMade", output)
        self.assertIn("protocol broken raised an exception in connectionLost", output)
        self.assertIn("ValueError: dataReceived went wrong", output)
        # Four failures in dataReceived, one traceback: the rest are counted.
        self.assertEqual(output.count("ValueError: dataReceived went wrong"), 1)


@processTest
class DiscoveryProblemTests(TestCase):
    """
    Plugins that clash or do not meet the interface are reported by name.
    """

    def test_duplicateNames(self) -> None:
        env = {"PYTHONPATH": pluginDirectory(self, twin_a=TWIN, twin_b=TWIN)}
        result = run("--protocol", "twin", env=env)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn("'twin' is defined twice", result.stderr)
        self.assertIn("twin_a", result.stderr)
        self.assertIn("twin_b", result.stderr)

    def test_invalidPluginAskedFor(self) -> None:
        env = {"PYTHONPATH": pluginDirectory(self, invalid_plugin=INVALID)}
        result = run("--protocol", "invalid", env=env)
        self.assertEqual(result.returncode, 2)
        self.assertIn("invalid_plugin.Invalid", result.stderr)
        self.assertIn("buildFactory", result.stderr)

    def test_invalidPluginNotAskedForIsAWarning(self) -> None:
        env = {"PYTHONPATH": pluginDirectory(self, invalid_plugin=INVALID)}
        with ServerProcess(env=env) as server:
            self.assertEqual(echoOnce(server.port, b"ok"), b"ok")
            self.assertEqual(server.stop(), 0)
        self.assertIn("ignoring a protocol plugin", server.output)
        self.assertIn("invalid_plugin.Invalid", server.output)


KEYERROR = """
    from twisted.plugin import IPlugin
    from zope.interface import implementer

    from myserver.interfaces import IProtocolPlugin


    @implementer(IPlugin, IProtocolPlugin)
    class Buggy:
        name = "buggy"
        description = "buildFactory has a bug"

        def buildFactory(self, options):
            return {}["missing"]


    buggy = Buggy()
"""


@processTest
class OperatorMessagesTests(TestCase):
    """
    What an operator sees of plugins that are broken, buggy or not installed
    the way Twisted finds them.
    """

    def test_brokenListed(self) -> None:
        env = {"PYTHONPATH": pluginDirectory(self, invalid_plugin=INVALID)}
        result = run("--list-protocols", env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("invalid          (broken, not served:", result.stdout)

    def test_checkConfigWarns(self) -> None:
        env = {"PYTHONPATH": pluginDirectory(self, invalid_plugin=INVALID)}
        result = run("--check-config", env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("myserver: warning: ignoring a protocol plugin", result.stderr)

    def test_anyExceptionFromBuildFactoryIsOneLine(self) -> None:
        env = {"PYTHONPATH": pluginDirectory(self, buggy_plugin=KEYERROR)}
        result = run("--protocol", "buggy", env=env)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn("buildFactory raised KeyError: 'missing'", result.stderr)

    def test_unknownProtocolHintsAtEditableInstalls(self) -> None:
        result = run("--protocol", "upper")
        self.assertEqual(result.returncode, 2)
        self.assertIn("pip install -e is not found", result.stderr)

    def test_version(self) -> None:
        import twisted

        result = run("--version")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"^myserver \S+ \(Twisted ")
        self.assertIn(twisted.__version__, result.stdout)


@processTest
class PerListenerTests(TestCase):
    """
    [[listen]] tables give each listener its own protocol, options and
    limits, in one server.
    """

    def test_ownLimits(self) -> None:
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(
                textwrap.dedent(
                    """
                    [[listen]]
                    endpoint = "tcp:0:interface=127.0.0.1"
                    max_connections_per_ip = 1

                    [[listen]]
                    endpoint = "tcp:0:interface=127.0.0.1"
                    """
                )
            )
        with ServerProcess("--config", config, listeners=2, loopback=False) as server:
            (_, strict), (_, relaxed) = server.addresses
            held = socket.create_connection(("127.0.0.1", strict), timeout=10)
            held.sendall(b"a")
            self.assertEqual(held.recv(10), b"a")
            refused = socket.create_connection(("127.0.0.1", strict), timeout=10)
            refused.settimeout(10)
            try:
                self.assertEqual(refused.recv(10), b"")
            except ConnectionResetError:
                pass
            both = [
                socket.create_connection(("127.0.0.1", relaxed), timeout=10)
                for _ in range(2)
            ]
            for sock in both:
                sock.sendall(b"b")
                self.assertEqual(sock.recv(10), b"b")
            for sock in [held, refused, *both]:
                sock.close()
            self.assertEqual(server.stop(), 0)
        self.assertIn("max_connections_per_ip", server.output)

    def test_checkConfigShowsListeners(self) -> None:
        result = run(
            "--check-config",
            "--listen",
            "tcp:1",
            "--listen",
            "echo=tcp:2",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(
            'listen = [{ endpoint = "tcp:1", protocol = "echo" }, '
            '{ endpoint = "tcp:2", protocol = "echo" }]',
            result.stdout,
        )
