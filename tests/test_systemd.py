"""
Operating under systemd and as root: socket activation with the real
systemd-socket-activate, the shipped unit files checked by systemd-analyze,
and dropping privileges with twistd's --uid/--gid after binding a low port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

from twisted.trial.unittest import TestCase

from myserver.endpoints import passedSockets
from tests.support import (
    ServerProcess,
    assertNoTraceback,
    echoOnce,
    myserverCommand,
    processTest,
    requireTool,
    twistdCommand,
)

UNITS = Path(__file__).resolve().parent.parent / "contrib" / "systemd"


def need(tool: str) -> str:
    """
    The path of C{tool}; in CI, where .ci/run installs it, its absence is a
    failure rather than a reason to skip.
    """
    return requireTool(tool)


def freePort(low: int = 0) -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on (below 1024 when
    C{low} is given and we may bind there).
    """
    candidates = range(low, 1024) if low else [0]
    for candidate in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise unittest.SkipTest("no free port")


@processTest
class SocketActivationTests(TestCase):
    def activate(
        self, endpoint: str, *fdname: str
    ) -> tuple[subprocess.Popen[str], int]:
        """
        Start the server under systemd-socket-activate on a free port, with
        C{--listen endpoint} and the activator's options C{fdname}.
        """
        activate = need("systemd-socket-activate")
        port = freePort()
        scratch = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, scratch, True)
        process = subprocess.Popen(
            [
                activate,
                "-l",
                f"127.0.0.1:{port}",
                *fdname,
                *myserverCommand("--listen", endpoint),
            ],
            cwd=scratch,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(process.kill)
        return process, port

    def assertServesThenStops(
        self, process: subprocess.Popen[str], port: int, endpoint: str
    ) -> None:
        """
        The first client starts the server, which echoes to it and the next
        one, then drains and exits 0 on SIGTERM.
        """
        deadline = time.monotonic() + 30
        while True:
            try:
                echoed = echoOnce(port, b"socket activated", timeout=30)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.assertEqual(echoed, b"socket activated")
        self.assertEqual(echoOnce(port, b"and again"), b"and again")
        process.send_signal(signal.SIGTERM)
        output, errors = process.communicate(timeout=30)
        self.assertEqual(process.returncode, 0, output + errors)
        self.assertIn(f"echo listening on tcp:127.0.0.1:{port} ({endpoint})", output)
        assertNoTraceback(self, output + errors)

    def assertRefused(self, process: subprocess.Popen[str], port: int) -> str:
        """
        The first client starts the server, which closes it unanswered (the
        socket goes when the server exits) and exits 2 with one line on
        stderr (after the activator's own lines); that line is returned.
        """
        deadline = time.monotonic() + 30
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with client:
            try:
                answer = client.recv(1)
            except ConnectionResetError:
                answer = b""
            self.assertEqual(answer, b"")
        output, errors = process.communicate(timeout=30)
        self.assertEqual(process.returncode, 2, output + errors)
        ours = [line for line in errors.splitlines() if line.startswith("myserver")]
        self.assertEqual(len(ours), 1, errors)
        assertNoTraceback(self, output + errors)
        return ours[0]

    def test_adoptsInheritedSocket(self) -> None:
        """
        systemd-socket-activate binds the port and starts the server on the
        first client; the server adopts the named socket (systemd:domain=
        INET:index=0, with LISTEN_FDNAMES as real systemd sets it) and serves
        that client and the next ones.
        """
        endpoint = "systemd:domain=INET:index=0"
        process, port = self.activate(endpoint, "--fdname=echo")
        self.assertServesThenStops(process, port, endpoint)

    def upgradedUnderActivation(self, *extra: str) -> None:
        """
        A server started by systemd-socket-activate upgrades live twice:
        the socket systemd passed goes on to each generation, which serves
        it, and nothing binds the port again.
        """
        activate = need("systemd-socket-activate")
        port = freePort()
        endpoint = "systemd:domain=INET:index=0"
        server = ServerProcess(
            "--listen",
            endpoint,
            *extra,
            launcher=[
                activate,
                "-l",
                f"127.0.0.1:{port}",
                "--fdname=echo",
                *twistdCommand(),
                "-n",
                "--pidfile=",
            ],
        )
        self.addCleanup(server.kill)

        def firstClient() -> None:
            # The activator starts the server for its first client.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    echoOnce(port, b"first", timeout=30)
                    return
                except ConnectionRefusedError:
                    time.sleep(0.05)

        first = threading.Thread(target=firstClient)
        first.start()
        server.start()
        first.join(30)
        for number in (2, 3):
            self.assertIsNotNone(server.upgrade(), server.output)
            self.assertEqual(
                echoOnce(port, b"generation %d" % number), b"generation %d" % number
            )
        self.assertIn(f"generation 3 (pid {server.pid}) is serving", server.output)
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)

    def test_upgradeKeepsPassedSocket(self) -> None:
        self.upgradedUnderActivation()

    def test_upgradeKeepsPassedSocketWithWorkers(self) -> None:
        self.upgradedUnderActivation("--workers", "2")

    def test_adoptsUnnamedSocketByIndex(self) -> None:
        """
        Without --fdname the activator sets no LISTEN_FDNAMES (as systemd
        before 227 and other socket-passing tools): Twisted alone keeps no
        descriptor then, but myserver adopts the socket by its index.
        """
        endpoint = "systemd:domain=INET:index=0"
        process, port = self.activate(endpoint)
        self.assertServesThenStops(process, port, endpoint)

    def test_wrongIndex(self) -> None:
        """
        An index beyond the sockets passed is one line naming LISTEN_FDS,
        and exit status 2.
        """
        process, port = self.activate("systemd:domain=INET:index=1")
        self.assertEqual(
            self.assertRefused(process, port),
            "myserver: error: --listen: invalid endpoint "
            "'systemd:domain=INET:index=1': index 1 is out of range: "
            "LISTEN_FDS=1 passes 1 socket",
        )

    def test_noSocketPassed(self) -> None:
        """
        Started with no socket passed at all, a systemd: listener is one
        line naming the missing LISTEN_FDS, and exit status 2.
        """
        environ = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        result = subprocess.run(
            myserverCommand("--listen", "haproxy:systemd:domain=INET:index=0"),
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertEqual(
            result.stderr,
            "myserver: error: --listen: invalid endpoint "
            "'haproxy:systemd:domain=INET:index=0': no socket was passed to "
            "this process: LISTEN_FDS is not set\n",
        )


@processTest
class UnitFileTests(TestCase):
    def test_unitsVerify(self) -> None:
        """
        contrib/systemd's units pass systemd-analyze verify, with ExecStart
        pointed at the myserver installed here.
        """
        analyze = need("systemd-analyze")
        script = Path(os.path.dirname(sys.executable), "myserver")
        with tempfile.TemporaryDirectory() as scratch:
            for unit in ("myserver.socket", "myserver.service"):
                text = (UNITS / unit).read_text()
                text = text.replace("/opt/myserver/bin/myserver", str(script))
                Path(scratch, unit).write_text(text)
            result = subprocess.run(
                [
                    analyze,
                    "verify",
                    "--man=no",
                    "./myserver.socket",
                    "./myserver.service",
                ],
                cwd=scratch,
                capture_output=True,
                text=True,
                timeout=60,
            )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr.strip(), "")

    def test_hardened(self) -> None:
        service = (UNITS / "myserver.service").read_text()
        for line in (
            "DynamicUser=yes",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ExecStart=/opt/myserver/bin/myserver --listen systemd:domain=INET:index=0",
        ):
            self.assertIn(line, service.splitlines())
        socketUnit = (UNITS / "myserver.socket").read_text()
        self.assertIn("ListenStream=27015", socketUnit.splitlines())


@processTest
class PrivilegeTests(TestCase):
    def test_bindsLowPortThenDropsToNobody(self) -> None:
        """
        As root: bind a port below 1024, then run as nobody (twistd's --uid
        and --gid, applied after the privileged start).
        """
        if os.getuid() != 0:
            raise unittest.SkipTest("needs root")
        port = freePort(low=900)
        server = ServerProcess(
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            twistdArgs=("--uid", "nobody", "--gid", "nogroup"),
        )
        with server:
            self.assertEqual(echoOnce(port, b"privileged port"), b"privileged port")
            with open(f"/proc/{server.pid}/status") as status:
                uids = next(line for line in status if line.startswith("Uid:"))
            nobody = int(subprocess.check_output(["id", "-u", "nobody"]).strip())
            self.assertEqual(uids.split()[1:], [str(nobody)] * 4)
            self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)


class PassedSocketsTests(TestCase):
    """
    L{passedSockets} reads the socket-passing variables as libsystemd does.
    """

    def test_unnamedByIndex(self) -> None:
        """
        Without LISTEN_FDNAMES the sockets are passed all the same, each
        named C{unknown}; only a lookup by name fails, naming the variable.
        """
        passed = passedSockets({"LISTEN_FDS": "2", "LISTEN_PID": "7"}, 7)
        self.assertEqual(passed.descriptors, (3, 4))
        self.assertEqual(passed.names, ("unknown", "unknown"))
        self.assertIsNone(passed.missing(1, None))
        self.assertEqual(
            passed.missing(2, None),
            "index 2 is out of range: LISTEN_FDS=2 passes 2 sockets",
        )
        self.assertEqual(
            passed.missing(None, "echo"),
            "no socket named 'echo': LISTEN_FDNAMES is not set (use index=)",
        )

    def test_named(self) -> None:
        passed = passedSockets(
            {"LISTEN_FDS": "1", "LISTEN_PID": "7", "LISTEN_FDNAMES": "echo"}, 7
        )
        self.assertIsNone(passed.missing(None, "echo"))
        self.assertEqual(
            passed.missing(None, "web"), "no socket named 'web' (LISTEN_FDNAMES=echo)"
        )

    def test_problems(self) -> None:
        """
        Each way of passing nothing names the variable at fault.
        """
        for environ, problem in [
            ({}, "LISTEN_FDS is not set"),
            ({"LISTEN_FDS": "x", "LISTEN_PID": "7"}, "LISTEN_FDS='x' is not a number"),
            ({"LISTEN_FDS": "1"}, "LISTEN_PID is not set"),
            (
                {"LISTEN_FDS": "1", "LISTEN_PID": "8"},
                "LISTEN_PID=8 is not this process (pid 7)",
            ),
            ({"LISTEN_FDS": "0", "LISTEN_PID": "7"}, "LISTEN_FDS=0"),
            (
                {"LISTEN_FDS": "1", "LISTEN_PID": "7", "LISTEN_FDNAMES": "a:b"},
                "LISTEN_FDNAMES names 2 sockets but LISTEN_FDS=1",
            ),
        ]:
            passed = passedSockets(environ, 7)
            self.assertEqual(passed.descriptors, ())
            self.assertEqual(
                passed.missing(0, None),
                f"no socket was passed to this process: {problem}",
            )
