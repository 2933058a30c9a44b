"""
Live upgrades (SIGUSR2): generations and the handover of listening sockets.
"""

from __future__ import annotations

import os
import random
import re
import selectors
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence

from twisted.trial.unittest import SynchronousTestCase, TestCase

from myserver.generation import GENERATION, UPGRADED_AT, Generation, current
from tests.support import (
    ServerProcess,
    assertNoTraceback,
    exchange,
    processTest,
    requireTool,
)
from tests.test_tls import makePair


class GenerationTests(SynchronousTestCase):
    def test_firstByDefault(self) -> None:
        self.assertEqual(current({}), Generation(1, None))

    def test_fromEnvironment(self) -> None:
        self.assertEqual(
            current({GENERATION: "3", UPGRADED_AT: "1700000000.5"}),
            Generation(3, 1700000000.5),
        )

    def test_nonsenseIsFirst(self) -> None:
        self.assertEqual(
            current({GENERATION: "x", UPGRADED_AT: "y"}), Generation(1, None)
        )
        self.assertEqual(current({GENERATION: "-4"}), Generation(1, None))

    def test_successorRoundTrips(self) -> None:
        following = Generation(1, None).successor(1700000000.25)
        self.assertEqual(following, Generation(2, 1700000000.25))
        self.assertEqual(current(following.environment()), following)


class Traffic:
    """
    Clients of our own against a server under upgrade: a loop of short
    connections (each sends a random payload, half-closes and reads the
    echo to EOF) from C{loops} threads, each pacing itself to C{rate}
    connections a second, and C{transfers} long transfers (C{size} bytes
    each, sent at C{pace} bytes a second while the echo is read), one after
    another on each of their threads, until L{stop}.

    Every outcome is counted: refused, reset, short or mismatched echoes.
    """

    def __init__(
        self,
        address: tuple[str, int] | str,
        loops: int = 4,
        rate: float = 60,
        transfers: int = 20,
        size: int = 3 << 20,
        pace: float = 1.5 * (1 << 20),
    ) -> None:
        self.address = address
        self.family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.rate = rate
        self.size = size
        self.pace = pace
        self.lock = threading.Lock()
        self.counts = {
            "connections": 0,
            "echoed": 0,
            "refused": 0,
            "reset": 0,
            "short": 0,
            "mismatched": 0,
            "other": 0,
            "transfers": 0,
            "transfersComplete": 0,
        }
        self.problems: list[str] = []
        self.longestConnect = 0.0
        self.started = 0.0
        self.ended = 0.0
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, daemon=True) for _ in range(loops)
        ] + [
            threading.Thread(target=self._transfers, daemon=True)
            for _ in range(transfers)
        ]

    def start(self) -> Traffic:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 60) -> dict[str, int]:
        """
        Stop starting connections, wait for those in flight to finish.
        """
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)
        self.ended = time.monotonic()
        return dict(self.counts)

    def count(self, what: str, problem: str | None = None) -> None:
        with self.lock:
            self.counts[what] += 1
            if problem is not None and len(self.problems) < 20:
                self.problems.append(problem)

    def _connect(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.settimeout(30)
        began = time.monotonic()
        sock.connect(self.address)
        waited = time.monotonic() - began
        with self.lock:
            self.counts["connections"] += 1
            self.longestConnect = max(self.longestConnect, waited)
        return sock

    def _outcome(self, run: Callable[[], bool], kind: str) -> None:
        try:
            if run():
                self.count(kind)
        except ConnectionRefusedError as e:
            self.count("refused", f"{kind}: {e!r}")
        except ConnectionResetError as e:
            self.count("reset", f"{kind}: {e!r}")
        except Exception as e:
            self.count("other", f"{kind}: {e!r}")

    def _loop(self) -> None:
        period = 1 / self.rate
        following = time.monotonic()
        while not self._stopping.is_set():
            self._outcome(self._short, "echoed")
            following += period
            time.sleep(max(0.0, following - time.monotonic()))

    def _short(self) -> bool:
        payload = os.urandom(random.randint(1, 4096))
        with self._connect() as sock:
            received = exchange(sock, payload, 30)
        return self._compare(payload, received, "short connection")

    def _compare(self, payload: bytes, received: bytes, kind: str) -> bool:
        if received == payload:
            return True
        if payload.startswith(received):
            self.count("short", f"{kind}: {len(received)} of {len(payload)} bytes")
        else:
            self.count("mismatched", f"{kind}: bytes differ")
        return False

    def _transfers(self) -> None:
        while not self._stopping.is_set():
            self.count("transfers")
            self._outcome(self._transfer, "transfersComplete")

    def _transfer(self) -> bool:
        payload = os.urandom(self.size)
        chunk = 32768
        with self._connect() as sock:
            sock.setblocking(False)
            view = memoryview(payload)
            sent, received = 0, bytearray()
            began = time.monotonic()
            deadline = began + 10 * self.size / self.pace + 30
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_READ)
                while time.monotonic() < deadline:
                    due = min(len(payload), int((time.monotonic() - began) * self.pace))
                    while sent < due:
                        try:
                            sent += sock.send(view[sent : min(due, sent + chunk)])
                        except BlockingIOError:
                            break
                    if sent == len(payload):
                        sock.shutdown(socket.SHUT_WR)
                        sent += 1  # once
                    for _ in selector.select(0.02):
                        data = sock.recv(1 << 20)
                        if not data:
                            return self._compare(payload, bytes(received), "transfer")
                        received += data
        return self._compare(payload, bytes(received), "transfer (timed out)")


def processState(pid: int) -> str | None:
    """
    A process's state letter (C{Z} for a zombie), or L{None} if it is gone.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return None


@processTest
class UpgradeTests(TestCase):
    """
    Live upgrades of a real server under traffic of our own.
    """

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="myserver-upgrade-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.socketPath = os.path.join(self.directory, "echo.sock")
        self.configPath = os.path.join(self.directory, "myserver.toml")
        self.writeConfig()

    def writeConfig(self, extra: str = "") -> None:
        with open(self.configPath, "w") as f:
            f.write(
                'listen = ["tcp:0:interface=127.0.0.1", '
                f'"unix:{self.socketPath}"]\n'
                'admin = "tcp:0:interface=127.0.0.1"\n' + extra
            )

    def serve(self, *extra: str, twistdArgs: Sequence[str] = ()) -> ServerProcess:
        server = ServerProcess(
            "--config",
            self.configPath,
            *extra,
            listeners=1,
            loopback=False,
            twistdArgs=twistdArgs,
        )
        self.addCleanup(server.kill)
        return server.start()

    def adminPort(self, server: ServerProcess) -> int:
        match = server.waitForLine(r"admin endpoint on tcp:127\.0\.0\.1:(\d+)")
        return int(match.group(1))

    def metric(self, port: int, name: str) -> float:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=10
        ) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise AssertionError(f"no {name} in /metrics")

    def underTraffic(
        self, *extra: str
    ) -> tuple[ServerProcess, dict[str, int], Traffic]:
        """
        Ten upgrades in a row, each as soon as the previous one serves, with
        a failed one (a configuration made invalid just before SIGUSR2) in
        the middle, under short connections and long transfers on the TCP
        listener and short connections on the UNIX one.
        """
        server = self.serve(*extra)
        tcp = Traffic(server.addresses[0]).start()
        unix = Traffic(self.socketPath, loops=1, transfers=0).start()
        time.sleep(1)
        refusals = 0
        for number in range(10):
            if number == 5:
                self.writeConfig('max_connections = "lots"\n')
                self.assertIsNone(server.upgrade(), "an invalid configuration upgraded")
                refusals += 1
                self.writeConfig()
            self.assertIsNotNone(server.upgrade(), f"upgrade {number + 1} refused")
        time.sleep(1)
        counts = tcp.stop()
        unixCounts = unix.stop()
        for name in ("refused", "reset", "short", "mismatched", "other"):
            self.assertEqual(counts[name], 0, f"{name}: {tcp.problems}")
            self.assertEqual(unixCounts[name], 0, f"unix {name}: {unix.problems}")
        self.assertEqual(counts["transfers"], counts["transfersComplete"], tcp.problems)
        self.assertGreater(counts["transfersComplete"], 20)
        self.assertGreater(unixCounts["echoed"], 0)
        self.assertEqual(len(server.generations), 11)
        self.assertRegex(server.output, r"exited with status 2 .*: myserver: error:")
        self.assertNotIn("aborted", server.output)
        # Every old generation ends once its drain is over: the old
        # processes, or with workers the old workers.
        old = [pid for pid in server.generations if pid != server.pid]
        workers = [
            int(pid)
            for pid in re.findall(r"worker \d+ started \(pid (\d+)\)", server.output)
        ]
        if workers:
            old = workers[:-2]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            processState(pid) not in (None, "Z") for pid in old
        ):
            time.sleep(0.1)
        self.assertEqual(
            [pid for pid in old if processState(pid) not in (None, "Z")], []
        )
        connections = counts["connections"] + unixCounts["connections"]
        seconds = tcp.ended - tcp.started
        longest = max(tcp.longestConnect, unix.longestConnect) * 1000
        report = (
            f"{self.id()}: {connections} connections in {seconds:.1f}s "
            f"({connections / seconds:.0f}/s), {counts['transfersComplete']} "
            f"long transfers, longest connect {longest:.1f} ms"
        )
        self.addCleanup(print, "\n" + report)
        return server, counts, tcp

    def test_upgradesUnderTraffic(self) -> None:
        """
        Ten upgrades under traffic: not one connection refused, reset or
        cut short, every long transfer finished by the generation that
        accepted it, no old generation left once its drain ends.
        """
        server, _, _ = self.underTraffic()
        port = self.adminPort(server)
        self.assertEqual(self.metric(port, "myserver_generation"), 11)
        self.assertGreater(
            self.metric(port, "myserver_last_upgrade_timestamp_seconds"), 0
        )
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)

    def test_upgradesUnderTrafficWithWorkers(self) -> None:
        """
        The same with two workers: the supervisor executes the new code in
        its own place (its pid stays), new workers take the same sockets,
        and the old ones drain.
        """
        server, _, _ = self.underTraffic("--workers", "2")
        self.assertEqual(set(server.generations), {server.process.pid})
        self.assertEqual(server.process.poll(), None)
        port = self.adminPort(server)
        self.assertEqual(self.metric(port, "myserver_generation"), 11)
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)

    def test_failedUpgrades(self) -> None:
        """
        A successor that is killed, or is not ready in time, changes
        nothing; a second SIGUSR2 while one is starting is refused.
        """
        server = self.serve()
        # A second SIGUSR2 while the successor starts.
        server.signal(signal.SIGUSR2)
        server.waitForLine(r"starting generation 2 \(pid \d+\)")
        server.signal(signal.SIGUSR2)
        server.waitForLine(
            r"upgrade refused: generation 2 \(pid \d+\) is still starting"
        )
        server.waitFor(lambda: len(server.generations) == 2)
        first = server.pid
        # Killed before it is ready.
        server.signal(signal.SIGUSR2)
        starting = server.waitForLine(r"starting generation 3 \(pid (\d+)\)")
        os.kill(int(starting.group(1)), signal.SIGKILL)
        server.waitForLine(
            r"upgrade refused: generation 3 \(pid \d+\) killed by signal 9"
        )
        # Not ready in time.
        self.writeConfig("upgrade_timeout = 0.05\n")
        server.signal(signal.SIGHUP)
        server.waitForLine("configuration reloaded")
        self.assertIsNone(server.upgrade())
        self.assertIn("is not ready after 0.05s; killing it", server.output)
        self.assertEqual(server.pid, first)
        with socket.create_connection(server.addresses[0], timeout=10) as sock:
            self.assertEqual(exchange(sock, b"still here", 10), b"still here")
        # And the next one upgrades.
        self.writeConfig()
        server.signal(signal.SIGHUP)
        server.waitFor(lambda: server.output.count("configuration reloaded") == 2)
        self.assertNotEqual(server.upgrade(), None)
        with socket.create_connection(server.addresses[0], timeout=10) as sock:
            self.assertEqual(exchange(sock, b"upgraded", 10), b"upgraded")
        self.assertEqual(server.stop(), 0)

    def test_everyListenerKind(self) -> None:
        """
        TCP6, TLS (tlsreload:), PROXY (haproxy:) and UDP listeners go on
        serving on the same sockets through an upgrade, as TCP and UNIX do.
        """
        self.everyListenerKind()

    def test_everyListenerKindWithWorkers(self) -> None:
        """
        The same with workers, UDP among them (steered by source address).
        """
        self.everyListenerKind("--workers", "2")

    def everyListenerKind(self, *extra: str) -> None:
        requireTool("openssl")
        cert, key = makePair(self.directory, "server")
        with open(self.configPath, "w") as f:
            f.write(
                'listen = ["tcp6:0:interface=\\\\:\\\\:1", '
                f'"tlsreload:0:certKey={cert}:privateKey={key}:interface=127.0.0.1", '
                '"haproxy:tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1"]\n'
            )
        server = self.serve(*extra)
        server.waitFor(lambda: len(server.addresses) >= 4)
        (v6, tls, proxied, udp) = server.addresses[:4]
        context = ssl.create_default_context(cafile=cert)

        def everyKind(text: bytes) -> None:
            with socket.create_connection(v6, timeout=10) as sock:
                self.assertEqual(exchange(sock, text, 10), text)
            raw = socket.create_connection(tls, timeout=10)
            with context.wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(text)
                self.assertEqual(sock.recv(100), text)
            with socket.create_connection(proxied, timeout=10) as sock:
                header = b"PROXY TCP4 192.0.2.1 127.0.0.1 40000 27015\r\n"
                self.assertEqual(exchange(sock, header + text, 10), text)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(10)
                sock.sendto(text, udp)
                self.assertEqual(sock.recv(100), text)

        everyKind(b"generation 1")
        for number in (2, 3):
            self.assertIsNotNone(server.upgrade())
            everyKind(b"generation %d" % number)
        if not extra:
            self.assertIn("with 4 listening sockets", server.output)
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)

    def test_pidFileTakenOver(self) -> None:
        """
        With twistd's C{--pidfile}, each generation writes its own pid there
        when it serves, and the last removes the file as it exits.
        """
        pidfile = os.path.join(self.directory, "myserver.pid")
        server = self.serve(twistdArgs=[f"--pidfile={pidfile}"])
        with open(pidfile) as f:
            self.assertEqual(int(f.read()), server.pid)
        for _ in range(2):
            new = server.upgrade()
            self.assertIsNotNone(new)
            with open(pidfile) as f:
                self.assertEqual(int(f.read()), new)
        server.waitFor(lambda: processState(server.generations[0]) in (None, "Z"))
        self.assertTrue(
            os.path.exists(pidfile), "an old generation removed the pid file"
        )
        self.assertEqual(server.stop(), 0)
        self.assertFalse(os.path.exists(pidfile))
