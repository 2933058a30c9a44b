"""
Helpers for tests that run a real C{twistd -n myserver} process and talk to
it over real sockets.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from signal import SIGINT, SIGTERM
from typing import Any

LOOPBACK = "tcp:0:interface=127.0.0.1"
_LISTENING = re.compile(r"listening on (tcp6?|udp6?):\[?([^\]\s]+?)\]?:(\d+) ")


def twistdCommand() -> list[str]:
    """
    The twistd of the Python running the tests (the one myserver is
    installed into), falling back to the one on PATH.
    """
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("twistd")
    if found:
        return [found]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def myserverCommand(*args: str, twistdArgs: Sequence[str] = ()) -> list[str]:
    return [*twistdCommand(), "-n", "--pidfile=", *twistdArgs, "myserver", *args]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """
    Run C{twistd -n --pidfile= myserver ARGS} to completion in a scratch
    directory, for commands that exit by themselves.
    """
    with tempfile.TemporaryDirectory() as scratch:
        return subprocess.run(
            myserverCommand(*args),
            cwd=scratch,
            env=_environ(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _environ(extra: dict[str, str] | None) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MYSERVER_")}
    environ.update(extra or {})
    return environ


class ServerProcess:
    """
    A C{twistd -n myserver} child process.

    @ivar addresses: (host, port) of each listener, in the order logged.
    @ivar lines: every line the server wrote to standard output so far.
    """

    def __init__(
        self,
        *args: str,
        listeners: int | None = None,
        loopback: bool = True,
        env: dict[str, str] | None = None,
        preexec: Any = None,
        twistdArgs: Sequence[str] = (),
        launcher: Sequence[str] | None = None,
    ) -> None:
        """
        @param args: myserver's options; C{--listen LOOPBACK} is added when
            they name no listener and C{loopback} is true.
        @param listeners: how many "listening on" lines to wait for.
        @param launcher: the command before the word C{myserver}, instead
            of C{twistd -n --pidfile= TWISTD-ARGS}.
        """
        given = sum(a == "--listen" or a.startswith("--listen=") for a in args)
        if not given and loopback:
            args = ("--listen", LOOPBACK, *args)
        self.args = args
        self.expected = listeners or max(1, given)
        self.env = env
        self.preexec = preexec
        self.twistdArgs = twistdArgs
        self.launcher = launcher
        self.lines: list[str] = []
        self.addresses: list[tuple[str, int]] = []
        self._stopRequested = False
        self._changed = threading.Condition()
        self._scratch = tempfile.TemporaryDirectory()

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout: float = 30) -> ServerProcess:
        if self.launcher is None:
            command = myserverCommand(*self.args, twistdArgs=self.twistdArgs)
        else:
            command = [*self.launcher, "myserver", *self.args]
        self.process = subprocess.Popen(
            command,
            cwd=self._scratch.name,
            env=_environ(self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=self.preexec,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.waitFor(lambda: len(self.addresses) >= self.expected, timeout)
        return self

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                match = _LISTENING.search(line)
                if match:
                    self.addresses.append((match.group(2), int(match.group(3))))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def waitFor(self, condition: Any, timeout: float = 30) -> None:
        """
        Wait until C{condition()} is true; fail with the output so far if the
        process exits or C{timeout} passes first.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                remaining = deadline - time.monotonic()
                if self.process.poll() is not None and not condition():
                    self._changed.wait(0.2)
                    if not condition():
                        raise AssertionError(
                            f"server exited ({self.process.returncode}):\n"
                            + self.output
                        )
                if remaining <= 0:
                    raise AssertionError("timed out; server output:\n" + self.output)
                self._changed.wait(min(remaining, 0.2))

    def waitForLine(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            for line in self.lines:
                match = regex.search(line)
                if match:
                    found.append(match)
                    return True
            return False

        self.waitFor(seen, timeout)
        return found[0]

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, signum: int) -> None:
        if signum in (SIGTERM, SIGINT):
            self._stopRequested = True
        self.process.send_signal(signum)

    def stop(self, signum: int = SIGTERM, timeout: float = 60) -> int:
        """
        Send C{signum} and wait for the process to exit.

        @return: its exit status.
        """
        # A stop already asked for is not asked again: a second signal
        # would end the drain, or arrive after the handlers are gone.
        if self.process.poll() is None and not self._stopRequested:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._scratch.cleanup()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def rss(self) -> int:
        """
        Resident memory of the server process, in bytes.
        """
        return processRSS(self.pid)

    def openDescriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def openSockets(self) -> int:
        """
        How many sockets the server holds (listeners and connections); unlike
        all descriptors, not disturbed by the reactor's own pipes.
        """
        count = 0
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                if os.readlink(f"/proc/{self.pid}/fd/{fd}").startswith("socket:"):
                    count += 1
            except OSError:
                pass
        return count

    def waitForSockets(self, count: int, timeout: float = 15) -> int:
        """
        Wait until the server holds at most C{count} sockets.

        @return: how many it holds in the end.
        """
        deadline = time.monotonic() + timeout
        while self.openSockets() > count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.openSockets()


def processRSS(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


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
