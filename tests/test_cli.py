"""
The command line, end to end: packaging as a twistd plugin, the three
equivalent ways to start myserver, and how bad configuration is reported.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile

from twisted.trial.unittest import TestCase

from tests.support import ServerProcess, echoOnce, processTest, run, twistdCommand


def scratchRun(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as scratch:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MYSERVER")}
        return subprocess.run(
            command,
            cwd=scratch,
            env=environ | env,
            capture_output=True,
            text=True,
            timeout=60,
        )


@processTest
class PackagingTests(TestCase):
    """
    An installed myserver is a twistd plugin, a console script and a module.
    """

    def test_twistdListsPlugin(self) -> None:
        """
        C{twistd --help} lists myserver with a description on one line.
        """
        result = scratchRun([*twistdCommand(), "--help"])
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        [index] = [
            i for i, line in enumerate(lines) if re.match(r"\s+myserver\s", line)
        ]
        self.assertRegex(lines[index], r"^\s+myserver\s+\S.*TCP")
        # The next line is another command, not a wrapped description.
        following = lines[index + 1] if index + 1 < len(lines) else ""
        self.assertFalse(
            re.match(r"^\s{20,}\S", following), f"description wraps: {following!r}"
        )

    def test_threeSpellingsAgree(self) -> None:
        """
        The C{myserver} script, C{python -m myserver} and
        C{twistd -n --pidfile= myserver} parse the same arguments the same way.
        """
        args = ["--check-config", "--shutdown-timeout", "7"]
        script = os.path.join(os.path.dirname(sys.executable), "myserver")
        results = [
            scratchRun([script, *args], MYSERVER_LOG_LEVEL="warn"),
            scratchRun(
                [sys.executable, "-m", "myserver", *args], MYSERVER_LOG_LEVEL="warn"
            ),
            run(*args, env={"MYSERVER_LOG_LEVEL": "warn"}),
        ]
        for result in results:
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("shutdown_timeout = 7.0  # --shutdown-timeout", result.stdout)
            self.assertIn('log_level = "warn"  # MYSERVER_LOG_LEVEL', result.stdout)
            self.assertIn(
                'listen = [{ endpoint = "tcp:27015", protocol = "echo" }]  # default',
                result.stdout,
            )
        self.assertEqual(len({r.stdout for r in results}), 1)

    def test_listProtocols(self) -> None:
        """
        C{--list-protocols} names each protocol with its description.
        """
        result = run("--list-protocols")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"(?m)^echo\s+RFC 862 echo")

    def test_help(self) -> None:
        """
        C{--help} documents every setting's command-line spelling.
        """
        result = run("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for flag in (
            "--listen",
            "--protocol",
            "--max-write-buffer",
            "--shutdown-timeout",
            "--log-level",
            "--log-format",
            "--config",
            "--check-config",
        ):
            self.assertIn(flag, result.stdout)


@processTest
class TwistTests(TestCase):
    """
    Twisted's newer C{twist} runner serves myserver too: its reactor, its
    logging, myserver's signals.
    """

    def test_twistServesAndDrains(self) -> None:
        twist = os.path.join(os.path.dirname(sys.executable), "twist")
        if not os.access(twist, os.X_OK):
            self.skipTest(f"no twist beside {sys.executable}")
        server = ServerProcess(launcher=[twist, "--log-format", "text"]).start()
        self.addCleanup(server.kill)
        payload = os.urandom(100_000)
        self.assertEqual(echoOnce(server.port, payload), payload)
        self.assertEqual(server.stop(), 0)
        self.assertIn("received SIGTERM: stopping", server.output)
        self.assertNotIn("Traceback", server.output)


@processTest
class BadConfigurationTests(TestCase):
    """
    Bad configuration of any kind: one line on standard error, status 2, no
    traceback.
    """

    def assertRefused(
        self, *args: str, fragments: tuple[str, ...] = (), **env: str
    ) -> str:
        result = run(*args, env=env)
        self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("myserver: error: "), lines[0])
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        for fragment in fragments:
            self.assertIn(fragment, lines[0])
        return lines[0]

    def test_unknownOption(self) -> None:
        self.assertRefused("--no-such-option", fragments=("no-such-option",))

    def test_missingValue(self) -> None:
        self.assertRefused("--max-write-buffer")

    def test_unparsableEndpoint(self) -> None:
        self.assertRefused("--listen", "tcp:port", fragments=("tcp:port",))

    def test_unknownEndpointType(self) -> None:
        self.assertRefused(
            "--listen", "carrier-pigeon:1", fragments=("carrier-pigeon",)
        )

    def test_negativeSize(self) -> None:
        self.assertRefused(
            "--max-write-buffer", "-1", fragments=("--max-write-buffer", "'-1'")
        )

    def test_badEnvironment(self) -> None:
        self.assertRefused(
            fragments=("MYSERVER_SHUTDOWN_TIMEOUT", "'never'"),
            MYSERVER_SHUTDOWN_TIMEOUT="never",
        )

    def test_unknownProtocol(self) -> None:
        self.assertRefused(
            "--protocol", "gopher", fragments=("'gopher'", "available: ", "echo")
        )

    def test_invalidToml(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('protocol = "echo"\nmax_write_buffer = = 3\n')
        line = self.assertRefused("--config", path, fragments=(path, "invalid TOML"))
        self.assertIn("line 2", line)

    def test_unreadableToml(self) -> None:
        self.assertRefused(
            fragments=("cannot read config file",),
            MYSERVER_CONFIG=os.path.join(self.mktemp(), "absent.toml"),
        )

    def test_badOptionForProtocol(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('[[listen]]\nendpoint = "tcp:0"\n[listen.options]\ncolour = 1\n')
        self.assertRefused("--config", path, fragments=("echo", "colour"))

    def test_portInUse(self) -> None:
        """
        A port already in use: one line naming the endpoint and the OS error,
        and a non-zero exit.
        """
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
            result = run("--listen", endpoint)
        self.assertNotEqual(result.returncode, 0)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(endpoint, lines[0])
        self.assertIn("Address already in use", lines[0])
        self.assertNotIn("Traceback", result.stdout + result.stderr)
