"""
Graceful shutdown, end to end: real signals to a real C{twistd -n myserver}
process, with real clients mid-transfer on loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

from twisted.trial.unittest import TestCase

from tests.support import ServerProcess, assertNoTraceback, processTest

CLIENTS = 50
PAYLOAD_SIZE = 2 * 1024 * 1024
CHUNK_SIZE = 64 * 1024
PAUSE = 0.005
TIMEOUT = 60


def connect(port: int, timeout: float = TIMEOUT) -> socket.socket:
    """
    A blocking TCP connection to the server on 127.0.0.1.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def recvExactly(sock: socket.socket, size: int) -> bytes:
    """
    Read exactly C{size} bytes, or fewer if the peer closes first.
    """
    received = bytearray()
    while len(received) < size:
        data = sock.recv(size - len(received))
        if not data:
            break
        received += data
    return bytes(received)


def recvToEnd(sock: socket.socket) -> tuple[bytes, BaseException | None]:
    """
    Read until EOF or an error.

    @return: the bytes read and the error that ended reading, if any.
    """
    received = bytearray()
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return bytes(received), None
            received += data
    except OSError as e:
        return bytes(received), e


def finishEcho(sock: socket.socket, data: bytes) -> bytes:
    """
    Send C{data} (from a thread, so that a large payload cannot deadlock),
    then half-close, while reading to EOF.

    @return: every byte read until EOF.
    """
    errors: list[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            errors.append(e)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received, error = recvToEnd(sock)
    sender.join(TIMEOUT)
    if errors or error is not None:
        raise AssertionError(f"echo failed: send {errors}, receive {error!r}")
    return received


def waitForExit(server: ServerProcess, timeout: float = 20) -> int:
    """
    Wait for the server to exit by itself (without sending it a signal)
    and for its last line of output to be read.

    @return: its exit status.
    """
    status = server.process.wait(timeout)
    deadline = time.monotonic() + 10
    while "Server Shut Down." not in server.output and time.monotonic() < deadline:
        time.sleep(0.05)
    return status


class StreamingClient:
    """
    One client of many: streams its payload in chunks with pauses, reading
    the echo concurrently.  Halfway through it stops at C{gate} until the
    test opens it, then sends the rest and half-closes.

    @ivar echoing: set once the first echoed byte arrived (so the server
        has accepted the connection).
    @ivar halfway: set once half of the payload is sent.
    """

    def __init__(self, port: int, payload: bytes, gate: threading.Event) -> None:
        self.payload = payload
        self.gate = gate
        self.sock = connect(port)
        self.received = bytearray()
        self.echoing = threading.Event()
        self.halfway = threading.Event()
        self.errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        view = memoryview(self.payload)
        half = len(self.payload) // 2
        try:
            for offset in range(0, len(view), CHUNK_SIZE):
                if offset >= half and not self.halfway.is_set():
                    self.halfway.set()
                    self.gate.wait(TIMEOUT)
                self.sock.sendall(view[offset : offset + CHUNK_SIZE])
                time.sleep(PAUSE)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.errors.append(e)
        finally:
            self.halfway.set()

    def _receive(self) -> None:
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                self.received += data
                self.echoing.set()
        except OSError as e:
            self.errors.append(e)
        finally:
            self.echoing.set()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(TIMEOUT)
        self.sock.close()


@processTest
class ShutdownTests(TestCase):
    """
    SIGTERM and SIGINT stop accepting at once, let open connections finish,
    abort what is left at the deadline or on a second signal, and exit 0.
    """

    def startServer(self, *args: str) -> ServerProcess:
        server = ServerProcess(*args).start()
        self.addCleanup(server.kill)
        return server

    def assertRefused(self, port: int) -> None:
        """
        Nothing listens on C{port} any more.
        """
        with self.assertRaises(ConnectionRefusedError):
            connect(port, timeout=5).close()

    def drainUnderLoad(self, signum: int) -> None:
        """
        Many clients mid-transfer when C{signum} arrives: every one gets its
        exact echo, new connections are refused, the exit status is 0.
        """
        server = self.startServer()
        gate = threading.Event()
        clients = [
            StreamingClient(server.port, os.urandom(PAYLOAD_SIZE), gate)
            for _ in range(CLIENTS)
        ]
        try:
            for client in clients:
                client.start()
            for client in clients:
                self.assertTrue(client.halfway.wait(TIMEOUT))
                self.assertTrue(client.echoing.wait(TIMEOUT))
                self.assertEqual(client.errors, [])
            # Every client has sent exactly half and is waiting: mid-transfer.
            server.signal(signum)
            server.waitForLine(rf"draining {CLIENTS} open connections")
            self.assertRefused(server.port)
        finally:
            gate.set()
            for client in clients:
                client.join()
        for index, client in enumerate(clients):
            self.assertEqual(client.errors, [], f"client {index}")
            self.assertEqual(len(client.received), PAYLOAD_SIZE, f"client {index}")
            self.assertTrue(client.received == client.payload, f"client {index}")
        self.assertEqual(waitForExit(server), 0, server.output)
        self.assertIn("all connections finished", server.output)
        self.assertNotIn("aborted", server.output)
        assertNoTraceback(self, server.output)

    def test_sigtermDrainsEveryByte(self) -> None:
        """
        SIGTERM with 50 clients mid-transfer: the listener closes (new
        connections are refused), every client finishes and gets back
        exactly what it sent, and the server exits 0 once they are done.
        """
        self.drainUnderLoad(signal.SIGTERM)

    def test_sigintDrainsEveryByte(self) -> None:
        """
        SIGINT drains exactly as SIGTERM does, and also exits 0.
        """
        self.drainUnderLoad(signal.SIGINT)

    def test_halfCloseDuringDrain(self) -> None:
        """
        A client already connected when the drain starts can keep sending,
        half-close, and still receive its whole echo.
        """
        server = self.startServer()
        first, second = os.urandom(100_000), os.urandom(300_000)
        with connect(server.port) as sock:
            sock.sendall(first)
            self.assertEqual(recvExactly(sock, len(first)), first)
            server.signal(signal.SIGTERM)
            server.waitForLine(r"draining 1 open connections")
            self.assertRefused(server.port)
            self.assertEqual(finishEcho(sock, second), second)
        self.assertEqual(waitForExit(server), 0, server.output)
        self.assertIn("all connections finished", server.output)
        assertNoTraceback(self, server.output)

    def test_deadlineAbortsIdleConnection(self) -> None:
        """
        With C{--shutdown-timeout 1}, a client that never half-closes is
        aborted at the deadline; the abort is logged and the exit status is
        still 0.
        """
        server = self.startServer("--shutdown-timeout", "1")
        with connect(server.port, timeout=30) as sock:
            sock.sendall(b"ping")
            self.assertEqual(recvExactly(sock, 4), b"ping")
            server.signal(signal.SIGTERM)
            server.waitForLine(r"draining 1 open connections")
            received, error = recvToEnd(sock)
        self.assertEqual(received, b"")
        if error is not None:
            self.assertIsInstance(error, ConnectionResetError)
        self.assertEqual(waitForExit(server), 0, server.output)
        self.assertIn("aborted 1 connections", server.output)
        self.assertNotIn("all connections finished", server.output)
        assertNoTraceback(self, server.output)

    def test_secondSignalEndsDrain(self) -> None:
        """
        A second SIGTERM during a drain with a 60 s deadline aborts what is
        left at once: the process exits 0 long before the deadline.
        """
        server = self.startServer("--shutdown-timeout", "60")
        with connect(server.port, timeout=20) as sock:
            sock.sendall(b"ping")
            self.assertEqual(recvExactly(sock, 4), b"ping")
            server.signal(signal.SIGTERM)
            server.waitForLine(r"draining 1 open connections")
            server.signal(signal.SIGTERM)
            received, error = recvToEnd(sock)
            self.assertEqual(received, b"")
            if error is not None:
                self.assertIsInstance(error, ConnectionResetError)
            # Failure bound only: a drain that waited for its deadline
            # would take 60 s.
            self.assertEqual(waitForExit(server, timeout=20), 0, server.output)
        self.assertIn("received SIGTERM again", server.output)
        self.assertIn("aborted 1 connections", server.output)
        assertNoTraceback(self, server.output)
