"""
Several worker processes serving the same listeners: the spread of
connections, supervision, graceful stop, reload, and the per-worker split of
the limits.
"""

from __future__ import annotations

import os
import re
import signal
import socket

from twisted.trial.unittest import TestCase

from tests.support import (
    ServerProcess,
    assertNoTraceback,
    echoOnce,
    manyEchoes,
    processTest,
)

STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def workerPids(server: ServerProcess, count: int) -> dict[int, int]:
    """
    The pid of each worker, once C{count} have started and listen.
    """
    server.waitFor(
        lambda: sum("(systemd:domain=" in line for line in server.lines) >= count
    )
    pids: dict[int, int] = {}
    for line in server.lines:
        match = STARTED.search(line)
        if match:
            pids[int(match.group(1))] = int(match.group(2))
    return pids


def socketsOf(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


@processTest
class WorkerTests(TestCase):
    def start(self, *args: str) -> ServerProcess:
        server = ServerProcess("--workers", "2", *args).start()
        self.addCleanup(server.kill)
        return server

    def test_spread(self) -> None:
        """
        400 connections over 2 workers: each serves at least 30 % (the
        parent binds one SO_REUSEPORT socket per worker; the kernel spreads).
        """
        server = self.start()
        pids = workerPids(server, 2)
        idle = {index: socketsOf(pid) for index, pid in pids.items()}
        clients = []
        for i in range(400):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"%d" % i)
            self.assertEqual(sock.recv(10), b"%d" % i)
            clients.append(sock)
        served = {index: socketsOf(pid) - idle[index] for index, pid in pids.items()}
        for sock in clients:
            sock.close()
        self.assertEqual(sum(served.values()), 400)
        for count in served.values():
            self.assertGreaterEqual(count, 120, served)
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)

    def test_killedWorkerReplaced(self) -> None:
        """
        A worker killed with SIGKILL is replaced, and every client is still
        served exactly.
        """
        server = self.start()
        pids = workerPids(server, 2)
        os.kill(pids[0], signal.SIGKILL)
        server.waitForLine("worker 0 ended unexpectedly")
        server.waitFor(lambda: len(STARTED.findall(server.output)) >= 3)
        payloads = [os.urandom(1000 + i) for i in range(200)]
        self.assertEqual(manyEchoes(server.port, payloads), payloads)
        newPids = {
            int(index): int(pid) for index, pid in STARTED.findall(server.output)
        }
        self.assertNotEqual(newPids[0], pids[0])
        self.assertEqual(server.stop(), 0)

    def test_sigtermDrainsEveryWorker(self) -> None:
        """
        Connections open on both workers finish their echo after SIGTERM;
        the parent exits with 0 once every worker has.
        """
        server = self.start("--shutdown-timeout", "30")
        pids = workerPids(server, 2)
        clients = []
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"before ")
            self.assertEqual(sock.recv(7), b"before ")
            clients.append(sock)
        self.assertTrue(all(socketsOf(pid) > 1 for pid in pids.values()))
        server.signal(signal.SIGTERM)
        server.waitFor(lambda: sum("draining" in line for line in server.lines) >= 2)
        for sock in clients:
            sock.sendall(b"after")
            sock.shutdown(socket.SHUT_WR)
            received = b""
            while data := sock.recv(100):
                received += data
            self.assertEqual(received, b"after")
            sock.close()
        self.assertEqual(server.process.wait(60), 0)
        self.assertIn("all workers stopped", server.output)
        assertNoTraceback(self, server.output)

    def test_sighupReachesEveryWorker(self) -> None:
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write("idle_timeout = 300\n")
        server = self.start("--config", config)
        workerPids(server, 2)
        with open(config, "w") as f:
            f.write("idle_timeout = 1\n")
        server.signal(signal.SIGHUP)
        server.waitFor(
            lambda: sum("configuration reloaded" in line for line in server.lines) >= 3
        )
        # The new idle timeout is in force in whichever worker serves this.
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.settimeout(15)
        self.assertEqual(sock.recv(1), b"")
        sock.close()
        self.assertEqual(server.stop(), 0)

    def test_perAddressLimitSplitEvenly(self) -> None:
        """
        max_connections_per_ip 4 over 2 workers: each worker admits at most
        2 connections from one address, so at most 4 in all.
        """
        server = self.start("--max-connections-per-ip", "4")
        pids = workerPids(server, 2)
        idle = {index: socketsOf(pid) for index, pid in pids.items()}
        admitted = []
        for _ in range(12):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.settimeout(10)
            sock.connect(("127.0.0.1", server.port))
            try:
                sock.sendall(b"x")
                if sock.recv(1) == b"x":
                    admitted.append(sock)
                    continue
            except ConnectionResetError:
                pass
            sock.close()
        held = {index: socketsOf(pid) - idle[index] for index, pid in pids.items()}
        for sock in admitted:
            sock.close()
        self.assertLessEqual(len(admitted), 4)
        self.assertGreaterEqual(len(admitted), 2)
        for count in held.values():
            self.assertLessEqual(count, 2, held)
        self.assertEqual(echoOnce(server.port, b"other address"), b"other address")
        self.assertEqual(server.stop(), 0)


@processTest
class WorkerMetricsTests(TestCase):
    def test_metricsSummedOverWorkers(self) -> None:
        """
        The parent's admin endpoint reports the traffic of every worker.
        """
        from tests.test_admin import adminPort, scrape

        server = ServerProcess(
            "--workers", "2", "--admin", "tcp:0:interface=127.0.0.1"
        ).start()
        self.addCleanup(server.kill)
        pids = workerPids(server, 2)
        admin = adminPort(server)
        clients = [
            socket.create_connection(("127.0.0.1", server.port), timeout=10)
            for _ in range(40)
        ]
        for sock in clients:
            sock.sendall(b"12345")
            self.assertEqual(sock.recv(5), b"12345")
        # Both workers hold some of them.
        self.assertTrue(all(socketsOf(pid) > 1 for pid in pids.values()))
        metrics = scrape(admin)
        for sock in clients:
            sock.close()
        self.assertEqual(metrics[("myserver_connections_open", ())], 40)
        self.assertEqual(metrics[("myserver_bytes_received_total", ())], 200)
        self.assertEqual(server.stop(), 0)
