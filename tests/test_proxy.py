"""
Behind a real HAProxy speaking the PROXY protocol (v1 and v2): the server
sees, limits and logs the real client, not the proxy.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time

from twisted.trial.unittest import TestCase

from tests.support import ServerProcess, assertNoTraceback, processTest, requireTool


def freePort() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def connectFrom(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def exchange(sock: socket.socket, payload: bytes) -> bytes:
    """
    Send C{payload}, half-close, read to EOF (a reset counts as EOF).
    """
    received = b""
    try:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while data := sock.recv(65536):
            received += data
    except OSError:  # reset, broken pipe, or already disconnected
        pass
    return received


@processTest
class BehindHAProxyTests(TestCase):
    def setUp(self) -> None:
        self.haproxy = requireTool("haproxy", "/usr/sbin/haproxy")

    def serve(self, *args: str) -> tuple[ServerProcess, int, int]:
        """
        myserver on a haproxy: listener, and a real haproxy in front of it:
        @return: the server, the port of a frontend that sends PROXY v1,
            and of one that sends v2.
        """
        server = ServerProcess(
            "--listen",
            "haproxy:tcp:0:interface=127.0.0.1",
            "--log-level",
            "debug",
            *args,
        ).start()
        self.addCleanup(server.kill)
        v1, v2 = freePort(), freePort()
        directory = tempfile.mkdtemp(prefix="myserver-haproxy-")
        self.addCleanup(shutil.rmtree, directory, True)
        config = os.path.join(directory, "haproxy.cfg")
        with open(config, "w") as f:
            f.write(
                textwrap.dedent(
                    f"""
                    defaults
                        mode tcp
                        timeout connect 5s
                        timeout client 30s
                        timeout server 30s
                    frontend v1
                        bind 127.0.0.1:{v1}
                        default_backend v1
                    frontend v2
                        bind 127.0.0.1:{v2}
                        default_backend v2
                    backend v1
                        server s1 127.0.0.1:{server.port} send-proxy
                    backend v2
                        server s2 127.0.0.1:{server.port} send-proxy-v2
                    """
                )
            )
        proxy = subprocess.Popen(
            [self.haproxy, "-f", config, "-db"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(proxy.wait, 10)
        self.addCleanup(proxy.kill)
        deadline = time.monotonic() + 20
        # Probe each frontend from an address of its own, so that the probes
        # never meet a per-address limit the test sets.
        for port, source in ((v1, "127.0.0.9"), (v2, "127.0.0.10")):
            while True:
                try:
                    connectFrom(source, port).close()
                    break
                except OSError:
                    self.assertLess(time.monotonic(), deadline, "haproxy did not start")
                    time.sleep(0.05)
        return server, v1, v2

    def test_exactEchoAndRealPeerLogged(self) -> None:
        server, v1, v2 = self.serve()
        for port in (v1, v2):
            payload = os.urandom(200_000)
            self.assertEqual(exchange(connectFrom("127.0.0.2", port), payload), payload)
        self.assertEqual(server.stop(), 0)
        echoed = [line for line in server.lines if "200000 bytes out" in line]
        self.assertEqual(len(echoed), 2)
        self.assertTrue(all("from tcp:127.0.0.2:" in line for line in echoed), echoed)
        assertNoTraceback(self, server.output)

    def test_limitsApplyToRealClient(self) -> None:
        """
        One connection per address: 127.0.0.2 gets one through haproxy, its
        second is refused; 127.0.0.3, through the same haproxy, gets in;
        and a denied address is refused.
        """
        server, v1, v2 = self.serve(
            "--max-connections-per-ip", "1", "--deny", "127.0.0.4"
        )
        for port in (v1, v2):
            first = connectFrom("127.0.0.2", port)
            first.sendall(b"one")
            self.assertEqual(first.recv(10), b"one")
            self.assertEqual(exchange(connectFrom("127.0.0.2", port), b"two"), b"")
            self.assertEqual(
                exchange(connectFrom("127.0.0.3", port), b"three"), b"three"
            )
            self.assertEqual(exchange(connectFrom("127.0.0.4", port), b"four"), b"")
            first.close()
            server.waitForSockets(2)
        self.assertEqual(server.stop(), 0)
        self.assertIn(
            "refused a connection from 127.0.0.2: max_connections_per_ip", server.output
        )
        self.assertIn("refused a connection from 127.0.0.4: deny", server.output)
        assertNoTraceback(self, server.output)

    def test_missingHeaderAndLocalCommand(self) -> None:
        """
        A client that skips haproxy and sends no header is closed and the
        event logged; a v2 LOCAL header (HAProxy's health checks) is served
        as a connection from the proxy itself.
        """
        server, _, _ = self.serve()
        direct = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.assertEqual(exchange(direct, b"GET / HTTP/1.0\r\n\r\n"), b"")
        local = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        header = b"\r\n\r\n\x00\r\nQUIT\n" + b"\x20\x00\x00\x00"
        self.assertEqual(exchange(local, header + b"health"), b"health")
        self.assertEqual(server.stop(), 0)
        self.assertIn("no PROXY protocol header", server.output)
        assertNoTraceback(self, server.output)
