"""
Helpers for tests that talk to a real C{myserver} over real sockets: the
clients, waiting and reading.  The process runner itself is
L{myserver.testing.process}.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import random
import resource
import selectors
import shutil
import socket
import sys
import time
import unittest
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

# The subprocess runner is the public test kit's: the project's tests use it
# as a plugin author's would.
from myserver.testing.process import (
    LOOPBACK,
    ServerProcess,
    myserverCommand,
    processRSS,
    run,
    twistdCommand,
)

# Tools a test needed and did not find, with how many tests skipped for it.
MISSING_TOOLS: dict[str, int] = {}


def requireTool(name: str, *elsewhere: str) -> str:
    """
    The path of the system tool C{name} (found on PATH, beside this Python,
    or at one of C{elsewhere}).  Absent, the test skips with a reason naming
    the tool, and the run ends with one line naming every tool that made a
    test skip; under C{CI=true}, where .ci/run installs them all, the test
    fails instead.
    """
    beside = os.path.join(os.path.dirname(sys.executable), name)
    for path in (shutil.which(name), beside, *elsewhere):
        if path and os.access(path, os.X_OK):
            return path
    message = f"needs {name}, which is not installed"
    if os.environ.get("CI") == "true":
        raise AssertionError(f"{message} (.ci/run installs it)")
    MISSING_TOOLS[name] = MISSING_TOOLS.get(name, 0) + 1
    raise unittest.SkipTest(message)


def _summarizeMissingTools() -> None:
    if MISSING_TOOLS:
        named = ", ".join(
            f"{tool} ({count} test{'s' if count > 1 else ''})"
            for tool, count in sorted(MISSING_TOOLS.items())
        )
        stream = sys.__stderr__ or sys.stderr
        stream.write(f"skipped for want of a system tool: {named}\n")


atexit.register(_summarizeMissingTools)


__all__ = [
    "LOOPBACK",
    "ServerProcess",
    "myserverCommand",
    "processRSS",
    "run",
    "twistdCommand",
]


FAST_ONLY = os.environ.get("TEST_FAST") == "1"

_T = TypeVar("_T")


def processTest(testClass: type[_T]) -> type[_T]:
    """
    Mark C{testClass} as needing a process of its own (a server process, a
    signal, an rlimit, workers, a real peer): C{make test-fast}, which sets
    C{TEST_FAST=1}, leaves it out; every other run includes it.
    """
    if FAST_ONLY:
        testClass.skip = "a process test: make test-fast leaves it out"  # type: ignore[attr-defined]
    return testClass


def assertNoTraceback(testCase: Any, output: str) -> None:
    testCase.assertNotIn("Traceback", output)
    testCase.assertNotIn("Unhandled Error", output)


def echoOnce(
    port: int,
    payload: bytes,
    host: str = "127.0.0.1",
    chunkSize: int = 65536,
    timeout: float = 120,
    family: int = socket.AF_INET,
) -> bytes:
    """
    The sockets example's client flow, done without deadlock for any size:
    connect, send C{payload} (in chunks of C{chunkSize}) while reading, shut
    down the sending side, then read until the server closes.

    @return: every byte received.
    """
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        return exchange(sock, payload, timeout, chunkSize=chunkSize)


def exchange(
    sock: socket.socket,
    payload: bytes,
    timeout: float,
    chunkSize: int = 65536,
    readSize: int = 1 << 20,
    readPause: float = 0.0,
) -> bytes:
    """
    Send C{payload} on the connected C{sock} (in chunks of C{chunkSize})
    while reading (at most C{readSize} bytes at a time,
    pausing C{readPause} seconds after each read), half-close once it is
    sent, and read until EOF.

    @return: every byte received.
    @raise TimeoutError: after C{timeout} seconds.
    """
    sock.setblocking(False)
    view = memoryview(payload)
    sent = 0
    received = bytearray()
    if not payload:
        sock.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"sent {sent} of {len(payload)}, received {len(received)}"
                )
            for _, events in selector.select(0.5):
                if events & selectors.EVENT_WRITE and sent < len(payload):
                    try:
                        sent += sock.send(view[sent : sent + chunkSize])
                    except BlockingIOError:
                        pass
                    if sent == len(payload):
                        sock.shutdown(socket.SHUT_WR)
                        selector.modify(sock, selectors.EVENT_READ)
                if events & selectors.EVENT_READ:
                    try:
                        data = sock.recv(readSize)
                    except BlockingIOError:
                        continue
                    if not data:
                        return bytes(received)
                    received += data
                    if readPause:
                        time.sleep(readPause)


async def asyncEcho(
    port: int,
    payload: bytes,
    host: str = "127.0.0.1",
    chunks: Sequence[int] = (),
    pause: float = 0.0,
) -> bytes:
    """
    One client of many on an asyncio loop: send C{payload} split at the
    given chunk sizes (pausing between chunks), half-close, read to EOF.
    """
    reader, writer = await asyncio.open_connection(host, port)

    async def send() -> None:
        offset = 0
        for size in chunks:
            writer.write(payload[offset : offset + size])
            offset += size
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        writer.write(payload[offset:])
        await writer.drain()
        writer.write_eof()

    sender = asyncio.ensure_future(send())
    received = await reader.read()
    await sender
    writer.close()
    await writer.wait_closed()
    return received


def manyEchoes(port: int, payloads: Sequence[bytes], **kwargs: Any) -> list[bytes]:
    """
    Run one L{asyncEcho} client per payload, all at once.
    """

    async def everyone() -> list[bytes]:
        return list(
            await asyncio.gather(*(asyncEcho(port, p, **kwargs) for p in payloads))
        )

    return asyncio.run(everyone())


def raiseOwnDescriptorLimit(testCase: Any) -> int:
    """
    Raise this process's soft RLIMIT_NOFILE to its hard limit for the
    duration of C{testCase}.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        testCase.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
    return hard


def waitUntil(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """
    Poll C{condition} until it is true.

    @return: the seconds it took.
    @raise AssertionError: after C{timeout} seconds.
    """
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def settledDescriptors(server: ServerProcess, quiet: float = 0.3) -> int:
    """
    The server's open descriptor count once it has not changed for C{quiet}
    seconds: a connection's descriptor outlives, briefly, the EOF its
    client has already read.
    """
    deadline = time.monotonic() + 10
    last, since = server.openDescriptors(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError("the server's descriptor count never settled")
        time.sleep(0.05)
        now = server.openDescriptors()
        if now != last:
            last, since = now, time.monotonic()
    return last


def isOpen(sock: socket.socket) -> bool:
    """
    Whether the peer has neither closed nor reset C{sock}: a non-blocking
    peek finds nothing to read rather than EOF.
    """
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def readToEnd(sock: socket.socket, timeout: float) -> tuple[int, bool]:
    """
    Read and discard until EOF or reset, for at most C{timeout} seconds.

    @return: bytes read, and whether the connection ended.
    """
    total = 0
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            break
        except OSError:
            return total, True
        if not data:
            return total, True
        total += len(data)
    return total, False


def randomSize(rng: random.Random, largest: int) -> int:
    """
    A size from 0 to C{largest}, spread evenly over orders of magnitude.
    """
    return min(largest, int(2 ** rng.uniform(0, largest.bit_length())) - 1)
