"""
Operating under systemd and as root: socket activation with the real
systemd-socket-activate, the shipped unit files checked by systemd-analyze,
and dropping privileges with twistd's --uid/--gid after binding a low port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.support import (
    ServerProcess,
    assertNoTraceback,
    echoOnce,
    myserverCommand,
    processTest,
    requireTool,
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
    def test_adoptsInheritedSocket(self) -> None:
        """
        systemd-socket-activate binds the port and starts the server on the
        first client; the server adopts the socket (systemd:domain=INET:
        index=0) and serves that client and the next ones.
        """
        activate = need("systemd-socket-activate")
        port = freePort()
        with tempfile.TemporaryDirectory() as scratch:
            process = subprocess.Popen(
                [
                    activate,
                    "-l",
                    f"127.0.0.1:{port}",
                    # Real systemd names every socket (LISTEN_FDNAMES), and
                    # Twisted insists on it; the test tool only does if told.
                    "--fdname=echo",
                    *myserverCommand("--listen", "systemd:domain=INET:index=0"),
                ],
                cwd=scratch,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            self.addCleanup(process.kill)
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
            output, _ = process.communicate(timeout=30)
        self.assertEqual(process.returncode, 0, output)
        self.assertIn(
            f"echo listening on tcp:127.0.0.1:{port} (systemd:domain=INET:index=0)",
            output,
        )
        assertNoTraceback(self, output)


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
