"""
Bounded memory per connection, end to end: a client that sends without
reading makes a real C{twistd -n myserver} process stop reading from it
(C{max_write_buffer}) instead of growing, and nobody else notices.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

from twisted.trial.unittest import TestCase

from tests.support import ServerProcess, assertNoTraceback, echoOnce, processTest

MiB = 1024 * 1024
TIMEOUT = 60
RSS_MARGIN = 64 * MiB


def numberedChunk(block: bytes, index: int) -> bytes:
    """
    Chunk number C{index} of a stream: C{block} with the chunk's number in
    its first eight bytes, so that reordered chunks cannot compare equal.
    """
    return struct.pack(">Q", index) + block[8:]


class StalledSender:
    """
    A client that sends C{count} numbered chunks from a thread and reads
    nothing until the test calls L{readAll}.

    @ivar chunksSent: how many whole chunks the kernel has accepted.
    @ivar finished: set once every chunk is sent and the client half-closed
        (or sending failed).
    """

    def __init__(self, port: int, count: int, chunkSize: int = MiB) -> None:
        self.count = count
        self.block = os.urandom(chunkSize)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.settimeout(TIMEOUT)
        self.chunksSent = 0
        self.finished = threading.Event()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._send, daemon=True)
        self._thread.start()

    def _send(self) -> None:
        try:
            for index in range(self.count):
                self.sock.sendall(numberedChunk(self.block, index))
                self.chunksSent = index + 1
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.errors.append(e)
        finally:
            self.finished.set()

    def waitUntilStalled(self, interval: float = 0.5, timeout: float = 30) -> int:
        """
        Wait until no further chunk is accepted for C{interval} seconds.

        @return: how many chunks were sent by then.
        """
        deadline = time.monotonic() + timeout
        before = -1
        while self.chunksSent != before and time.monotonic() < deadline:
            before = self.chunksSent
            time.sleep(interval)
        return self.chunksSent

    def readAll(self) -> tuple[int, str | None]:
        """
        Read to EOF, checking each chunk against the one expected next.

        @return: the number of bytes read and a description of the first
            mismatch, if any.
        """
        size = len(self.block)
        buffer = bytearray()
        total = 0
        index = 0
        problem = None
        while True:
            data = self.sock.recv(MiB)
            if not data:
                break
            total += len(data)
            buffer += data
            while len(buffer) >= size:
                if problem is None and buffer[:size] != numberedChunk(
                    self.block, index
                ):
                    problem = f"chunk {index} differs (got #{buffer[:8].hex()})"
                del buffer[:size]
                index += 1
        if buffer and problem is None:
            problem = f"{len(buffer)} trailing bytes after chunk {index}"
        return total, problem

    def close(self) -> None:
        """
        Stop: wake the sending thread if it is blocked, then close.
        """
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(TIMEOUT)
        self.sock.close()


@processTest
class BackpressureTests(TestCase):
    """
    A peer that does not read costs the server at most about
    C{max_write_buffer}, and every byte still arrives once it reads.
    """

    def startServer(self, *args: str) -> ServerProcess:
        server = ServerProcess(*args).start()
        self.addCleanup(server.kill)
        return server

    def idleRSS(self, server: ServerProcess) -> int:
        """
        The server's resident memory after one warm-up echo.
        """
        payload = os.urandom(256 * 1024)
        self.assertEqual(echoOnce(server.port, payload, timeout=TIMEOUT), payload)
        time.sleep(0.2)
        return server.rss()

    def stallThenRead(
        self, server: ServerProcess, count: int, chunkSize: int, stall: float
    ) -> None:
        """
        Send C{count} chunks without reading for C{stall} seconds: the sender
        stalls and the server's memory stays near its idle level; then read
        everything back, in order.
        """
        baseline = self.idleRSS(server)
        sender = StalledSender(server.port, count, chunkSize)
        self.addCleanup(sender.close)
        samples = []
        progress = []
        steps = 6
        for _ in range(steps):
            time.sleep(stall / steps)
            samples.append(server.rss())
            progress.append(sender.chunksSent)
        self.assertEqual(sender.errors, [])
        # The sender is blocked: it has not sent everything, and sent no
        # further chunk during the last part of the stall.  Only a server
        # that stopped reading from it can cause that.
        self.assertFalse(sender.finished.is_set(), progress)
        self.assertLess(progress[-1], count)
        self.assertEqual(progress[-1], progress[-3], progress)
        growth = max(samples) - baseline
        self.assertLess(
            growth,
            RSS_MARGIN,
            f"RSS grew by {growth / MiB:.1f} MiB over {baseline / MiB:.1f} MiB",
        )
        total, problem = sender.readAll()
        self.assertTrue(sender.finished.wait(TIMEOUT))
        self.assertEqual(sender.errors, [])
        self.assertIsNone(problem)
        self.assertEqual(total, count * chunkSize)
        self.assertEqual(server.process.poll(), None)
        assertNoTraceback(self, server.output)

    def test_nonReadingClientBoundsMemory(self) -> None:
        """
        With the default 1 MiB C{max_write_buffer}, a client streaming
        200 MiB without reading for 3 s is stalled by the server (which stops
        reading from it) and the server's RSS stays within 64 MiB of idle;
        once the client reads, all 200 MiB come back in order.
        """
        server = self.startServer()
        self.stallThenRead(server, count=200, chunkSize=MiB, stall=3.0)

    def test_smallWriteBuffer(self) -> None:
        """
        With C{--max-write-buffer 64KiB} the same stall-then-read round trip
        of 32 MiB is exact too.
        """
        server = self.startServer("--max-write-buffer", "64KiB")
        self.stallThenRead(server, count=32, chunkSize=MiB, stall=1.5)

    def test_slowClientDoesNotStallOthers(self) -> None:
        """
        While one client is stalled (sending, never reading), another client
        still gets an exact echo of 1 MiB.
        """
        server = self.startServer()
        slow = StalledSender(server.port, 64)
        self.addCleanup(slow.close)
        stalledAt = slow.waitUntilStalled()
        self.assertFalse(slow.finished.is_set())
        self.assertLess(stalledAt, 64)
        payload = os.urandom(MiB)
        self.assertEqual(echoOnce(server.port, payload, timeout=30), payload)
        # The slow client was stalled all along.
        self.assertFalse(slow.finished.is_set())
        self.assertEqual(slow.errors, [])
        slow.close()
        self.assertEqual(server.process.poll(), None)
        assertNoTraceback(self, server.output)
