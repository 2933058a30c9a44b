"""
Logging, end to end: what a real C{twistd -n myserver} process writes to
standard output in each log format and at each log level.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from typing import Any

from twisted.trial.unittest import TestCase

from tests.support import ServerProcess, assertNoTraceback, processTest

TIMEOUT = 30


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def waitUntilConnectable(
    server: ServerProcess, port: int, timeout: float = TIMEOUT
) -> None:
    """
    Wait until something accepts connections on 127.0.0.1:C{port}, for a
    server that does not log its listening address.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return
        except OSError:
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"nothing listens on {port}; server output:\n{server.output}"
                ) from None
            time.sleep(0.05)


def echo(port: int, payload: bytes) -> tuple[bytes, str]:
    """
    Send C{payload}, half-close, read to EOF.

    @return: the bytes read and the client's own address as the server
        describes peers (C{tcp:127.0.0.1:PORT}).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        host, clientPort = sock.getsockname()[:2]
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while data := sock.recv(65536):
            received += data
    return bytes(received), f"tcp:{host}:{clientPort}"


def stopAndCollect(testCase: TestCase, server: ServerProcess, marker: str) -> str:
    """
    Stop the server with SIGTERM, check it exits 0, and return its whole
    output once the line containing C{marker} (its last) has been read.
    """
    testCase.assertEqual(server.stop(signal.SIGTERM, timeout=TIMEOUT), 0)
    deadline = time.monotonic() + 10
    while marker not in server.output and time.monotonic() < deadline:
        time.sleep(0.05)
    output = server.output
    assertNoTraceback(testCase, output)
    return output


def jsonRecords(testCase: TestCase, output: str) -> list[dict[str, Any]]:
    """
    Parse every non-empty line of C{output} as one JSON object with the
    keys every record has.
    """
    records = []
    for line in output.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            testCase.fail(f"not JSON: {line!r}")
        testCase.assertIsInstance(record, dict, line)
        for key in ("time", "level", "namespace", "message"):
            testCase.assertIn(key, record, line)
        records.append(record)
    testCase.assertTrue(records, "no output at all")
    return records


@processTest
class LoggingTests(TestCase):
    """
    C{--log-format} and C{--log-level} (and their environment spellings)
    shape everything the server logs.
    """

    def startServer(self, *args: str, **kwargs: Any) -> ServerProcess:
        server = ServerProcess(*args, **kwargs).start()
        self.addCleanup(server.kill)
        return server

    def assertJSONListener(
        self, records: list[dict[str, Any]], server: ServerProcess
    ) -> None:
        [listening] = [r for r in records if "listening on" in r["message"]]
        self.assertEqual(listening["level"], "info")
        self.assertEqual(listening["namespace"], "myserver")
        self.assertEqual(listening["protocol"], "echo")
        self.assertEqual(listening["address"], f"tcp:127.0.0.1:{server.port}")

    def test_jsonFormat(self) -> None:
        """
        With C{--log-format json --log-level debug}, every line is a JSON
        object with time, level, namespace and message; the listener line
        carries its address and protocol; and a connection's debug event
        carries its peer, duration and exact byte counts.
        """
        server = self.startServer("--log-format", "json", "--log-level", "debug")
        payload = os.urandom(12345)
        received, peer = echo(server.port, payload)
        self.assertEqual(received, payload)
        server.waitForLine(r'"bytes_in": ', timeout=10)
        records = jsonRecords(self, stopAndCollect(self, server, "Server Shut Down."))
        self.assertJSONListener(records, server)
        [closed] = [r for r in records if "bytes_in" in r]
        self.assertEqual(closed["level"], "debug")
        self.assertEqual(closed["peer"], peer)
        self.assertEqual(closed["bytes_in"], len(payload))
        self.assertEqual(closed["bytes_out"], len(received))
        self.assertIsInstance(closed["duration"], float)
        self.assertGreaterEqual(closed["duration"], 0.0)
        for record in records:
            self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")

    def test_jsonFromEnvironment(self) -> None:
        """
        C{MYSERVER_LOG_FORMAT=json} in the environment has the same effect as
        C{--log-format json}.
        """
        server = self.startServer(env={"MYSERVER_LOG_FORMAT": "json"})
        self.assertEqual(echo(server.port, b"hello")[0], b"hello")
        records = jsonRecords(self, stopAndCollect(self, server, "Server Shut Down."))
        self.assertJSONListener(records, server)
        # The default level is info: no per-connection debug events.
        self.assertEqual([r for r in records if "bytes_in" in r], [])
        self.assertEqual({r["level"] for r in records}, {"info"})

    def test_textFormatIsReadable(self) -> None:
        """
        The default format is plain text, one readable line per event: the
        listener line says where it listens, and no line is JSON.
        """
        server = self.startServer()
        self.assertEqual(echo(server.port, b"hello")[0], b"hello")
        output = stopAndCollect(self, server, "Server Shut Down.")
        self.assertIn(f"echo listening on tcp:127.0.0.1:{server.port}", output)
        for line in output.splitlines():
            self.assertFalse(line.lstrip().startswith("{"), line)

    def test_warnLevelSuppressesInfo(self) -> None:
        """
        C{--log-level warn} drops info events (no "listening on" line, no
        drain messages) but keeps warnings (the abort at the shutdown
        deadline).
        """
        port = freePort()
        server = ServerProcess(
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--log-level",
            "warn",
            "--shutdown-timeout",
            "0.5",
        )
        # Nothing announces the listener at this level: don't wait for it.
        server.expected = 0
        server.start()
        self.addCleanup(server.kill)
        waitUntilConnectable(server, port)
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(b"ping")
            received = b""
            while len(received) < 4 and (data := sock.recv(4)):
                received += data
            self.assertEqual(received, b"ping")
            # Still open at SIGTERM: aborted at the deadline, with a warning.
            output = stopAndCollect(self, server, "aborted 1 connections")
        self.assertIn("aborted 1 connections", output)
        self.assertNotIn("listening on", output)
        self.assertNotIn("draining", output)
        self.assertNotIn("received SIGTERM", output)
        self.assertNotIn("#info]", output)
