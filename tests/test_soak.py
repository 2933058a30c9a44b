"""
A soak: one server with every limit configured, and for SOAK_SECONDS many
kinds of client at once (echo clients checking every byte, idle clients,
resets, garbage, bursts over the per-address limit, denied clients, slow
readers).  Every exact echo must be exact, every limit must hold, and
afterwards the server must hold what it held before and exit cleanly.

C{MYSERVER_SOAK_SECONDS} sets the duration (default 60 when C{CI=true},
else 15).
"""

from __future__ import annotations

import os
import random
import re
import selectors
import socket
import struct
import threading
import time
from collections import defaultdict
from typing import Any

from twisted.trial.unittest import TestCase

from tests.support import (
    ServerProcess,
    assertNoTraceback,
    echoOnce,
    exchange,
    isOpen,
    processTest,
    raiseOwnDescriptorLimit,
    randomSize,
    readToEnd,
    settledDescriptors,
    waitUntil,
)


def soakSeconds() -> float:
    default = "60" if os.environ.get("CI") == "true" else "15"
    return float(os.environ.get("MYSERVER_SOAK_SECONDS", default))


SOAK_SECONDS = soakSeconds()
IDLE_TIMEOUT = 1.0
PER_IP = 50
MAX_WRITE_BUFFER = 256 * 1024
# Each kind of client comes from its own loopback address, so that the
# per-address limit applies to the over-limit bursts alone.
NORMAL = "127.0.0.1"
OVER_LIMIT = "127.0.0.2"
IDLE = "127.0.0.3"
RESET = "127.0.0.4"
GARBAGE = "127.0.0.5"
SLOW = "127.0.0.6"
DENIED = "127.0.0.9"
BURST = 60
IDLE_BATCH = 20
# Linux: choose the source port at connect(), by the whole 4-tuple, so
# that bound clients share the ephemeral ports as unbound ones do.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
DESCRIPTOR_MARGIN = 3
# Resident memory the server may have grown by.  Measured: a few MiB at
# most.  Freed queues (up to max_write_buffer per client, a few dozen
# clients at once) stay in glibc's heap rather than going back to the
# system, and CPython keeps its freed arenas; a leak of a few hundred
# bytes per connection over the tens of thousands of connections of a
# soak would exceed this.
RSS_MARGIN = 20 * 1024 * 1024
# The guard logs each kind of refusal at most once per this many seconds.
RATE_INTERVAL = 5.0


def boundSocket(source: str, receiveBuffer: int = 0) -> socket.socket:
    """
    A TCP socket whose connections will come from C{source}.
    """
    sock = socket.socket()
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        if receiveBuffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
        sock.bind((source, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def connectFrom(
    source: str, port: int, timeout: float = 10, receiveBuffer: int = 0
) -> socket.socket:
    sock = boundSocket(source, receiveBuffer)
    try:
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def reset(sock: socket.socket) -> None:
    """
    Close C{sock} with a reset rather than a FIN.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Soak:
    """
    The clients of a soak, each kind a loop run in threads until the
    deadline, recording what each client saw.

    @ivar results: by kind, one record per client.
    @ivar errors: unexpected exceptions, by kind.
    """

    def __init__(self, port: int, seconds: float) -> None:
        self.port = port
        self.deadline = time.monotonic() + seconds
        self.results: dict[str, list[Any]] = defaultdict(list)
        self.errors: list[tuple[str, BaseException]] = []
        self._lock = threading.Lock()

    def record(self, kind: str, result: Any) -> None:
        with self._lock:
            self.results[kind].append(result)

    def run(self, kinds: dict[str, int]) -> list[threading.Thread]:
        """
        Start C{kinds[name]} threads running C{self.name} in a loop.
        """
        threads = []
        for name, count in kinds.items():
            for n in range(count):
                thread = threading.Thread(
                    target=self._loop, args=(name, n), name=f"soak-{name}-{n}"
                )
                thread.start()
                threads.append(thread)
        return threads

    def _loop(self, kind: str, n: int) -> None:
        rng = random.Random(os.urandom(8))
        client = getattr(self, kind)
        while time.monotonic() < self.deadline:
            try:
                client(rng)
            except Exception as e:
                with self._lock:
                    self.errors.append((kind, e))
                time.sleep(0.1)

    def normal(self, rng: random.Random) -> None:
        """
        An echo of a random payload, up to 1 MiB: exact or not.
        """
        payload = rng.randbytes(randomSize(rng, 1024 * 1024))
        received = echoOnce(self.port, payload, host=NORMAL, timeout=30)
        self.record("normal", (len(payload), received == payload))

    def idle(self, rng: random.Random) -> None:
        """
        A batch of clients that never send: each must be closed by the
        server, with nothing sent, no earlier than the idle timeout.
        """
        batch = []
        try:
            for _ in range(IDLE_BATCH):
                batch.append((connectFrom(IDLE, self.port), time.monotonic()))
            for sock, connectedAt in batch:
                received, ended = readToEnd(sock, IDLE_TIMEOUT + 10)
                self.record("idle", (received, ended, time.monotonic() - connectedAt))
        finally:
            for sock, _ in batch:
                sock.close()

    def reset(self, rng: random.Random) -> None:
        """
        Connect, maybe send a little, then reset the connection.
        """
        sock = connectFrom(RESET, self.port)
        try:
            if rng.random() < 0.5:
                sock.sendall(rng.randbytes(rng.randrange(1, 65536)))
            if rng.random() < 0.5:
                time.sleep(0.01)
        finally:
            reset(sock)
        self.record("reset", True)
        time.sleep(0.005)

    def garbage(self, rng: random.Random) -> None:
        """
        Random bytes of a random size: either echoed exactly, or abandoned
        mid-stream (closed, or reset, with the echo unread).
        """
        payload = rng.randbytes(randomSize(rng, 512 * 1024))
        with connectFrom(GARBAGE, self.port) as sock:
            if rng.random() < 0.5:
                received = exchange(sock, payload, 30)
                self.record("garbage", (len(payload), received == payload))
                return
            sock.settimeout(5)
            try:
                sock.sendall(payload[: rng.randrange(len(payload) + 1)])
            except TimeoutError:
                pass
            if rng.random() < 0.5:
                reset(sock)
        self.record("abandoned", True)

    def overLimit(self, rng: random.Random) -> None:
        """
        A burst of more connections from one address than the per-address
        limit allows: record how many the server kept and how many it
        closed at once.
        """
        burst = []
        try:
            for _ in range(BURST):
                sock = boundSocket(OVER_LIMIT)
                burst.append(sock)
                sock.setblocking(False)
                try:
                    sock.connect(("127.0.0.1", self.port))
                except BlockingIOError:
                    pass
            with selectors.DefaultSelector() as selector:
                for sock in burst:
                    selector.register(sock, selectors.EVENT_WRITE)
                waiting, deadline = len(burst), time.monotonic() + 10
                while waiting and time.monotonic() < deadline:
                    for key, _ in selector.select(0.5):
                        selector.unregister(key.fileobj)
                        waiting -= 1
            time.sleep(0.3)
            held = sum(isOpen(sock) for sock in burst)
            self.record("overLimit", (held, len(burst) - held, waiting))
        finally:
            for sock in burst:
                sock.close()
        # Let the server see these closed before the next burst.
        time.sleep(0.5)

    def denied(self, rng: random.Random) -> None:
        """
        A client from a denied address: it must receive nothing.
        """
        with connectFrom(DENIED, self.port) as sock:
            try:
                sock.sendall(b"let me in")
            except OSError:
                pass
            self.record("denied", readToEnd(sock, 5))
        time.sleep(0.02)

    def slow(self, rng: random.Random) -> None:
        """
        An echo read a little at a time through a small receive buffer, so
        that the server's queue for it fills: exact or not.
        """
        payload = rng.randbytes(rng.randrange(256 * 1024, 1024 * 1024))
        with connectFrom(SLOW, self.port, receiveBuffer=8192) as sock:
            received = exchange(sock, payload, 60, readSize=8192, readPause=0.005)
        self.record("slow", (len(payload), received == payload))


@processTest
class SoakTests(TestCase):
    """
    One fully configured server under every kind of client at once.
    """

    timeout = SOAK_SECONDS + 120

    def setUp(self) -> None:
        raiseOwnDescriptorLimit(self)
        self.server = ServerProcess(
            "--max-connections",
            "200",
            "--max-connections-per-ip",
            str(PER_IP),
            "--allow",
            "127.0.0.0/8",
            "--deny",
            DENIED,
            "--idle-timeout",
            str(IDLE_TIMEOUT),
            "--max-write-buffer",
            "256KiB",
        ).start()
        self.addCleanup(self.server.kill)

    def test_soakUnderEveryKindOfClient(self) -> None:
        """
        For SOAK_SECONDS, with echo clients, idle clients, resets, garbage,
        bursts over the per-address limit, denied clients and slow readers
        all at once: every echo is exact, idle clients are closed after the
        idle timeout, no burst gets more than 50 connections from one
        address (and some get exactly 50), denied clients get nothing,
        refusals are logged at a bounded rate, and afterwards descriptors
        and memory are back near their baseline, a new client gets an exact
        echo, and SIGTERM ends the server with status 0 and no traceback.
        """
        server = self.server
        rng = random.Random(os.urandom(8))
        for _ in range(50):
            payload = rng.randbytes(randomSize(rng, 1024 * 1024))
            self.assertEqual(echoOnce(server.port, payload, timeout=30), payload)
        baseline = settledDescriptors(server)
        baselineRSS = server.rss()
        linesBefore = len(server.lines)

        started = time.monotonic()
        soak = Soak(server.port, SOAK_SECONDS)
        threads = soak.run(
            {
                "normal": 4,
                "idle": 1,
                "reset": 1,
                "garbage": 1,
                "overLimit": 1,
                "denied": 1,
                "slow": 2,
            }
        )
        for thread in threads:
            thread.join(max(1.0, soak.deadline - time.monotonic()) + 60)
        elapsed = time.monotonic() - started
        self.assertEqual([t.name for t in threads if t.is_alive()], [])
        results = soak.results
        counts = {kind: len(records) for kind, records in sorted(results.items())}
        print(f"soak of {elapsed:.0f}s: {counts}")

        self.assertEqual(soak.errors[:5], [])
        for kind in ("normal", "garbage", "slow"):
            self.assertGreater(len(results[kind]), 0, kind)
            inexact = [size for size, exact in results[kind] if not exact]
            self.assertEqual(inexact, [], f"{kind} echoes not exact (sizes)")
        for kind in ("reset", "abandoned"):
            self.assertGreater(len(results[kind]), 0, kind)

        self.assertGreater(len(results["idle"]), 0)
        self.assertEqual({r[:2] for r in results["idle"]}, {(0, True)})
        # The server counts from its accept, which follows our connect.
        self.assertGreaterEqual(min(r[2] for r in results["idle"]), IDLE_TIMEOUT - 0.1)

        bursts = results["overLimit"]
        self.assertGreater(len(bursts), 0)
        self.assertLessEqual(max(held for held, _, _ in bursts), PER_IP, bursts)
        self.assertIn((PER_IP, BURST - PER_IP, 0), bursts)

        self.assertGreater(len(results["denied"]), 0)
        self.assertEqual(set(results["denied"]), {(0, True)})

        refusals = [
            line
            for line in server.lines[linesBefore:]
            if re.search(r"refused a connection from 127\.0\.0\.[29]", line)
        ]
        self.assertTrue(any("max_connections_per_ip" in r for r in refusals))
        self.assertTrue(any(": deny" in r for r in refusals))
        # Two kinds of refusal, each at most once per interval.
        allowed = 2 * (1 + int(elapsed // RATE_INTERVAL))
        self.assertLessEqual(len(refusals), allowed, "".join(refusals))

        waitUntil(
            lambda: server.openDescriptors() <= baseline + DESCRIPTOR_MARGIN,
            15,
            f"descriptors back to {baseline}",
        )
        rss = server.rss()
        print(f"server RSS {baselineRSS >> 10} KiB before, {rss >> 10} KiB after")
        self.assertLessEqual(rss, baselineRSS + RSS_MARGIN)
        payload = os.urandom(1024 * 1024)
        self.assertEqual(echoOnce(server.port, payload, timeout=30), payload)
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)
