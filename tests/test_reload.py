"""
SIGHUP reloads the configuration in place, like nginx and HAProxy: limits,
timeouts, networks and the log level change without dropping a connection;
an invalid new configuration is refused and the running one stays.
"""

from __future__ import annotations

import os
import signal
import socket

from twisted.trial.unittest import TestCase

from tests.support import ServerProcess, assertNoTraceback, echoOnce, processTest

LISTEN = 'listen = ["tcp:0:interface=127.0.0.1"]\n'


def connectAndEcho(port: int, payload: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        data = sock.recv(65536)
        if not data:
            break
        received += data
    if received != payload:
        raise AssertionError(f"expected {payload!r}, got {received!r}")
    return sock


def refused(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(10)
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True


@processTest
class ReloadTests(TestCase):
    def writeConfig(self, text: str) -> None:
        with open(self.config, "w") as f:
            f.write(text)

    def setUp(self) -> None:
        self.config = os.path.abspath(self.mktemp())
        self.writeConfig(LISTEN + 'max_connections_per_ip = 0\nlog_level = "info"\n')
        self.server = ServerProcess("--config", self.config, loopback=False).start()
        self.addCleanup(self.server.kill)

    def reload(self, count: int) -> None:
        """
        Send SIGHUP and wait until the server logged the outcome of the
        C{count}th reload.
        """
        self.server.signal(signal.SIGHUP)
        outcomes = ("configuration reloaded", "reload refused")
        self.server.waitFor(
            lambda: (
                sum(any(o in line for o in outcomes) for line in self.server.lines)
                >= count
            )
        )

    def test_limitsApplyWithoutDroppingConnections(self) -> None:
        """
        A per-address limit and the debug level, turned on by SIGHUP, apply
        to new connections; the connections already open stay open and
        served, even beyond the new limit.
        """
        port = self.server.port
        first = connectAndEcho(port, b"one")
        second = connectAndEcho(port, b"two")
        self.writeConfig(LISTEN + 'max_connections_per_ip = 2\nlog_level = "debug"\n')
        self.reload(1)
        self.assertTrue(refused(port))
        self.assertEqual(first.sendall(b"still") or first.recv(10), b"still")
        second.close()
        self.server.waitForSockets(2)
        third = connectAndEcho(port, b"three")
        for sock in (first, third):
            sock.close()
        self.assertEqual(self.server.stop(), 0)
        output = self.server.output
        self.assertIn("configuration reloaded", output)
        self.assertIn("refused a connection from 127.0.0.1", output)
        # The debug level took effect: per-connection lines appear.
        self.assertIn("bytes in", output)
        assertNoTraceback(self, output)

    def test_invalidConfigurationRefused(self) -> None:
        """
        A broken file is refused with one error line; the server keeps
        serving with the configuration it had.
        """
        self.writeConfig(LISTEN + "max_connections_per_ip = -3\n")
        self.reload(1)
        self.assertEqual(echoOnce(self.server.port, b"still up"), b"still up")
        self.writeConfig("this is not toml\n")
        self.reload(2)
        self.assertEqual(echoOnce(self.server.port, b"and now"), b"and now")
        self.assertEqual(self.server.stop(), 0)
        refusals = [line for line in self.server.lines if "reload refused" in line]
        self.assertEqual(len(refusals), 2)
        self.assertIn("max_connections_per_ip", refusals[0])
        self.assertIn("invalid TOML", refusals[1])
        assertNoTraceback(self, self.server.output)

    def test_listenerChangeNeedsRestart(self) -> None:
        self.writeConfig('listen = ["tcp:0:interface=127.0.0.1", "tcp:0"]\n')
        self.reload(1)
        self.assertEqual(self.server.stop(), 0)
        self.assertIn(
            "take effect at the next upgrade (SIGUSR2) or restart", self.server.output
        )
