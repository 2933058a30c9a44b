"""
The admin endpoint, scraped with curl and parsed with prometheus_client's
own text parser: the counters move by exactly the traffic sent.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import TestCase

from tests.support import (
    ServerProcess,
    assertNoTraceback,
    echoOnce,
    processTest,
    requireTool,
    run,
)

ADMIN = "tcp:0:interface=127.0.0.1"


def curl(url: str) -> tuple[int, str]:
    """
    GET C{url} with the real curl: (status, body).
    """
    curlPath = requireTool("curl")
    result = subprocess.run(
        [curlPath, "-s", "-w", "\n%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body.rstrip("\n")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of /metrics, by name and labels.
    """
    status, body = curl(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, status
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def adminPort(server: ServerProcess) -> int:
    match = server.waitForLine(r"admin endpoint on tcp:[\d.]+:(\d+)")
    return int(match.group(1))


@processTest
class MetricsTests(TestCase):
    def test_countersFollowTraffic(self) -> None:
        with ServerProcess("--admin", ADMIN, "--deny", "127.0.0.3") as server:
            admin = adminPort(server)
            before = scrape(admin)
            sizes = [0, 1, 1000, 65536, 300_000]
            for size in sizes:
                payload = os.urandom(size)
                self.assertEqual(echoOnce(server.port, payload), payload)
            for _ in range(2):
                with socket.socket() as denied:
                    denied.bind(("127.0.0.3", 0))
                    denied.connect(("127.0.0.1", server.port))
                    denied.settimeout(10)
                    try:
                        self.assertEqual(denied.recv(1), b"")
                    except ConnectionResetError:
                        pass
            held = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            held.sendall(b"x")
            self.assertEqual(held.recv(1), b"x")
            after = scrape(admin)
            held.close()
            self.assertEqual(server.stop(), 0)

        def delta(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        self.assertEqual(delta("myserver_bytes_received_total"), sum(sizes) + 1)
        self.assertEqual(delta("myserver_bytes_sent_total"), sum(sizes) + 1)
        self.assertEqual(delta("myserver_connections_total", result="closed"), 5)
        self.assertEqual(delta("myserver_connection_duration_seconds_count"), 5)
        self.assertEqual(delta("myserver_connections_rejected_total", reason="deny"), 2)
        self.assertEqual(after[("myserver_connections_open", ())], 1)
        self.assertEqual(after[("myserver_write_buffer_bytes", ())], 0)
        self.assertGreater(after[("process_resident_memory_bytes", ())], 0)
        assertNoTraceback(self, server.output)


@processTest
class ProbeTests(TestCase):
    def test_readyUntilDraining(self) -> None:
        """
        /readyz is 200 while serving and 503 from SIGTERM on, while the
        drain runs; /healthz stays 200 throughout.
        """
        with ServerProcess("--admin", ADMIN, "--shutdown-timeout", "30") as server:
            admin = adminPort(server)
            self.assertEqual(curl(f"http://127.0.0.1:{admin}/readyz")[0], 200)
            self.assertEqual(curl(f"http://127.0.0.1:{admin}/healthz"), (200, "ok"))
            client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            client.sendall(b"hold")
            self.assertEqual(client.recv(4), b"hold")
            server.signal(signal.SIGTERM)
            server.waitForLine("draining 1 open connections")
            self.assertEqual(
                curl(f"http://127.0.0.1:{admin}/readyz"), (503, "draining")
            )
            self.assertEqual(curl(f"http://127.0.0.1:{admin}/healthz")[0], 200)
            client.shutdown(socket.SHUT_WR)
            self.assertEqual(client.recv(10), b"")
            client.close()
            # The drain is over: the process exits by itself.
            self.assertEqual(server.process.wait(30), 0)

    def test_badAdminEndpoint(self) -> None:
        result = run("--admin", "tcp:nope")
        self.assertEqual(result.returncode, 2)
        self.assertIn("--admin", result.stderr)

    def test_adminOffByDefault(self) -> None:
        result = run("--check-config")
        self.assertRegex(result.stdout, re.compile(r'^admin = "off"  # default$', re.M))
