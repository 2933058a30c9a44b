# -*- test-case-name: tests.test_check -*-
"""
C{myserver check PROTOCOL [--option K=V ...] [--json]}: does an installed
protocol plugin behave under the real server?

The plugin is served by a real C{myserver} process (the installed one, on
loopback) and met by a fixed set of careless and hostile clients; each
guarantee is one line, pass or fail, with the figure measured.  Exit 0 only
when all pass.  What is compared is the protocol with itself: a client that
half-closes must get at least what a client that waits gets, a thousand at
once at least what one alone gets, so that the check needs to know nothing
of what the protocol says.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import socket
import struct
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from myserver.errors import ConfigError
from myserver.interfaces import IProtocolPlugin
from myserver.plugins import discover
from myserver.service import raiseDescriptorLimit
from myserver.settings import tomlValue
from myserver.testing.process import ServerProcess, listenerArguments

PROBE = b"hello, server\r\n"
# Bytes read at most from one connection: enough to compare two exchanges
# of an endless protocol (chargen), small enough to stay quick.
CAP = 1 << 20
HALF_CLOSE_CAP = 8 << 20
CROWD = 1000
CROWD_CAP = 16 << 10
CROWD_SECONDS = 30.0
GREETING_SECONDS = 0.2
SLOW_READER_BYTES = 64 << 20
SLOW_READER_SECONDS = 3.0
MEMORY_MARGIN = 16 << 20
MAX_WRITE_BUFFER = 1 << 20
IDLE_TIMEOUT = 1.0


@dataclass
class Result:
    """
    One guarantee: whether it held, and what was measured.
    """

    name: str
    passed: bool
    figure: str


@dataclass
class Outcome:
    """
    What a client got from one exchange.
    """

    received: int
    closedByServer: bool
    reset: bool


def _options(pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        if not equals or not key:
            raise SystemExit(f"myserver check: error: --option {pair!r}: expected K=V")
        options[key] = tomlValue(text)
    return options


async def _connect(
    port: int, receiveBuffer: int | None = None, limit: int = CAP
) -> Any:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receiveBuffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, limit=limit)


async def _readFor(
    reader: asyncio.StreamReader, timeout: float, cap: int, settle: float | None = 0.5
) -> tuple[int, bool]:
    """
    Read for at most C{timeout} seconds and C{cap} bytes, or until nothing
    comes for C{settle} seconds (L{None}: until EOF).

    @return: bytes read, and whether the server closed.
    """
    received = 0
    deadline = time.monotonic() + timeout
    while received < cap:
        remaining = deadline - time.monotonic()
        wait = remaining if settle is None else min(settle, remaining)
        if wait <= 0:
            break
        try:
            chunk = await asyncio.wait_for(reader.read(65536), wait)
        except TimeoutError:
            break
        if not chunk:
            return received, True
        received += len(chunk)
    return received, False


async def exchange(
    port: int,
    payload: bytes,
    halfClose: bool,
    *,
    settle: float = 0.5,
    timeout: float = 15.0,
    receiveBuffer: int | None = None,
    between: Callable[[], Awaitable[None]] | None = None,
    before: Callable[[], Awaitable[None]] | None = None,
    cap: int = CAP,
) -> Outcome:
    """
    Send C{payload}; then either half-close and read to EOF, or keep the
    connection open and read until nothing more comes for C{settle}
    seconds; at most L{CAP} bytes either way.

    @param between: awaited after the first half of the payload is sent.
    @param before: awaited after all is sent, before reading.
    """
    reader, writer = await _connect(port, receiveBuffer, cap)
    closed = reset = False
    try:
        # First what the protocol says before it is told anything: an
        # announcing protocol (daytime) answers and closes at once, and
        # bytes sent after its close would only earn a reset.
        received, closed = await _readFor(reader, GREETING_SECONDS, cap)
        if closed:
            return Outcome(received, True, False)
        if between is not None:
            half = len(payload) // 2
            writer.write(payload[:half])
            await writer.drain()
            await between()
            payload = payload[half:]
        writer.write(payload)
        if halfClose:
            writer.write_eof()
        if before is not None:
            await before()
        if halfClose:
            more, closed = await _readFor(reader, timeout, cap - received, settle=None)
        else:
            more, closed = await _readFor(reader, timeout, cap - received, settle)
        received += more
    except (ConnectionResetError, BrokenPipeError):
        reset = True
    except OSError:
        # Closed by the server before this client finished sending.
        closed = True
    finally:
        writer.close()
    return Outcome(min(received, cap), closed, reset)


class Checker:
    """
    Runs every check of one protocol.
    """

    def __init__(self, protocol: str, options: dict[str, Any]) -> None:
        self.protocol = protocol
        self.options = options
        self.results: list[Result] = []

    def serverArgs(self, *settings: str) -> list[str]:
        args = listenerArguments(self.protocol, self.options)
        return [*args, "--max-write-buffer", str(MAX_WRITE_BUFFER), *settings]

    def record(self, name: str, passed: bool, figure: str) -> None:
        self.results.append(Result(name, passed, figure))

    def run(self) -> list[Result]:
        if not self.checkInterface():
            return self.results
        server = ServerProcess(
            *self.serverArgs("--admin", "tcp:0:interface=127.0.0.1"), listeners=1
        )
        try:
            server.start()
            admin = int(
                server.waitForLine(r"admin endpoint on tcp:[\d.]+:(\d+)").group(1)
            )
            asyncio.run(self.againstOneServer(server, admin))
            self.checkLog(server.output)
        finally:
            server.kill()
        self.checkIdleTimeout()
        self.checkDrain()
        return self.results

    def checkLog(self, output: str) -> None:
        lines = output.splitlines()
        starts = [i for i, line in enumerate(lines) if "Traceback" in line]
        figure = f"{len(starts)} tracebacks in the server's log"
        if starts:
            # The first one's exception: the first unindented line after it.
            after = lines[starts[0] + 1 :]
            raised = next((x for x in after if x and not x.startswith(" ")), "?")
            figure += f", the first: {raised.strip()}"
        self.record("no traceback", not starts, figure)

    def checkInterface(self) -> bool:
        try:
            plugin = discover().plugin(self.protocol)
        except ConfigError as e:
            self.record("interface", False, str(e))
            return False
        try:
            verifyObject(IProtocolPlugin, plugin)
            plugin.buildFactory(dict(self.options))
        except (Invalid, ValueError, TypeError) as e:
            self.record("interface", False, " ".join(str(e).split()))
            return False
        self.record("interface", True, "provides IProtocolPlugin; buildFactory works")
        unknown = dict(self.options) | {"no_such_option_for_the_check": 1}
        try:
            plugin.buildFactory(unknown)
        except (ValueError, TypeError) as e:
            self.record("unknown option refused", True, " ".join(str(e).split()))
        except Exception as e:
            self.record(
                "unknown option refused",
                False,
                f"raised {type(e).__name__} instead of ValueError: {e}",
            )
        else:
            self.record(
                "unknown option refused",
                False,
                "buildFactory accepted an unknown option",
            )
        return True

    async def againstOneServer(self, server: ServerProcess, admin: int) -> None:
        port = server.port
        await self.checkHalfClose(port)
        await self.checkSlowReader(server)
        await self.checkReset(port, admin)
        await self.checkGarbage(port, admin)
        await self.checkCrowd(port)

    async def checkHalfClose(self, port: int) -> None:
        # Larger than the kernel buffers and the write-buffer mark, so that
        # output is still queued in the server when its read of the EOF
        # comes; read only once all is sent, so that the queue fills.  Text
        # lines, which line protocols take as well as byte protocols do.
        rng = random.Random(862)
        line = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz ") for _ in range(70))
        payload = (line + b"\r\n") * ((2 << 20) // 72)

        async def wait() -> None:
            await asyncio.sleep(0.5)

        waited = await exchange(
            port, payload, False, receiveBuffer=4096, before=wait, cap=HALF_CLOSE_CAP
        )
        halfClosed = await exchange(
            port, payload, True, receiveBuffer=4096, before=wait, cap=HALF_CLOSE_CAP
        )
        self.record(
            "half-close",
            halfClosed.received >= waited.received and not halfClosed.reset,
            f"sent {len(payload)} bytes: {waited.received} back while open, "
            f"{halfClosed.received} after shutting down the sending side"
            + (" (reset)" if halfClosed.reset else ""),
        )

    async def checkSlowReader(self, server: ServerProcess) -> None:
        before = server.rss()
        peak = before
        _, writer = await _connect(server.port, 4096)
        chunk = b"x" * 65536
        sent = 0
        deadline = time.monotonic() + SLOW_READER_SECONDS
        try:
            while sent < SLOW_READER_BYTES and time.monotonic() < deadline:
                writer.write(chunk)
                sent += len(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), 0.05)
                except TimeoutError:
                    pass
                peak = max(peak, server.rss())
            for _ in range(10):
                await asyncio.sleep(0.05)
                peak = max(peak, server.rss())
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            writer.transport.abort()
        growth = peak - before
        limit = MAX_WRITE_BUFFER + MEMORY_MARGIN
        self.record(
            "slow reader",
            growth <= limit,
            f"{sent >> 20} MiB sent without reading: server grew "
            f"{growth / (1 << 20):.1f} MiB (at most {limit >> 20} MiB)",
        )

    async def checkReset(self, port: int, admin: int) -> None:
        _, writer = await _connect(port, 4096)
        sock = writer.get_extra_info("socket")
        # Closing now sends a reset instead of a FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.write(b"r\n" * (1 << 19))
        await asyncio.sleep(0.2)
        writer.transport.abort()
        start = time.monotonic()
        open = _metric(admin, "myserver_connections_open")
        while open and time.monotonic() - start < 5:
            await asyncio.sleep(0.05)
            open = _metric(admin, "myserver_connections_open")
        again = await exchange(port, PROBE, False)
        self.record(
            "reset mid-transfer",
            open == 0 and not again.reset,
            f"connection freed in {time.monotonic() - start:.2f} s; "
            f"next client got {again.received} bytes",
        )

    async def checkGarbage(self, port: int, admin: int) -> None:
        rng = random.Random(863)
        garbage = [
            rng.randbytes(64 << 10),
            b"A" * (1 << 20),
            bytes(64 << 10),
            b"\xff\xfe\xc0\x80\r\n" * 4096,
            b"x\n" * 10000,
            b"\r\n" * 10000,
            rng.randbytes(1 << 20),
        ]
        alone = await exchange(port, PROBE, False)
        clients = [exchange(port, g, True, receiveBuffer=4096) for g in garbage * 3]
        results = await asyncio.gather(exchange(port, PROBE, False), *clients)
        control = results[0]
        errors = _metric(
            admin, 'myserver_connections_rejected_total{reason="protocol_error"}'
        )
        self.record(
            "garbage and oversized input",
            errors == 0 and control.received >= alone.received and not control.reset,
            f"{len(clients)} clients sent garbage: {errors:.0f} protocol errors; "
            f"a client beside them got {control.received} bytes "
            f"(alone: {alone.received})",
        )

    async def checkCrowd(self, port: int) -> None:
        """
        A thousand connections open at once: each is accepted and, if a
        silent client alone is told something (a greeting, an endless
        stream), hears from the server too; a client beside them is
        answered as one alone is.
        """
        # A thousand client sockets in this process.
        raiseDescriptorLimit()
        silent = await exchange(port, b"", False, cap=CROWD_CAP)
        alone = await exchange(port, PROBE, False, cap=CROWD_CAP)
        start = time.monotonic()
        attempts = await asyncio.gather(
            *(_connect(port, 4096, CROWD_CAP) for _ in range(CROWD)),
            return_exceptions=True,
        )
        crowd = [a for a in attempts if not isinstance(a, BaseException)]
        try:
            expected = min(silent.received, 1)
            heard = await asyncio.gather(
                *(
                    _readFor(reader, CROWD_SECONDS, expected, None)
                    for reader, _ in crowd
                ),
                return_exceptions=True,
            )
            beside = await exchange(port, PROBE, False, settle=2.0, cap=CROWD_CAP)
        finally:
            for _, writer in crowd:
                writer.close()
        served = sum(
            1 for h in heard if not isinstance(h, BaseException) and h[0] >= expected
        )
        self.record(
            f"{CROWD} concurrent connections",
            served == CROWD and beside.received >= min(alone.received, 1),
            f"{len(crowd)}/{CROWD} accepted and {served} served in "
            f"{time.monotonic() - start:.1f} s; a client beside them got "
            f"{beside.received} bytes (alone: {alone.received})",
        )

    def checkIdleTimeout(self) -> None:
        server = ServerProcess(*self.serverArgs("--idle-timeout", str(IDLE_TIMEOUT)))
        try:
            server.start()
            elapsed = asyncio.run(self._timeToClose(server.port))
        finally:
            server.kill()
        deadline = IDLE_TIMEOUT + IDLE_TIMEOUT / 4 + 1.0
        self.record(
            "idle timeout",
            elapsed is not None and elapsed <= deadline,
            f"a silent client was closed after {elapsed:.2f} s"
            if elapsed is not None
            else f"a silent client was still open after {deadline * 4:.0f} s",
        )

    async def _timeToClose(self, port: int) -> float | None:
        reader, writer = await _connect(port, 4096)
        start = time.monotonic()
        try:
            # What the protocol says at once (a greeting, or its whole
            # answer and a close); then no more reading: a protocol that
            # writes without end is paused by backpressure, and then it is
            # idle too.
            while time.monotonic() - start < 0.5:
                chunk = await asyncio.wait_for(reader.read(65536), 0.2)
                if not chunk:
                    return time.monotonic() - start
        except TimeoutError:
            # (Before OSError, of which it is a kind.)
            pass
        except OSError:
            return time.monotonic() - start
        try:
            while time.monotonic() - start < (IDLE_TIMEOUT + 1.25) * 4:
                await asyncio.sleep(0.05)
                if reader.at_eof() or writer.transport.is_closing():
                    return time.monotonic() - start
                sock = writer.get_extra_info("socket")
                if _peerClosed(sock):
                    return time.monotonic() - start
            return None
        finally:
            writer.transport.abort()

    def checkDrain(self) -> None:
        server = ServerProcess(*self.serverArgs("--shutdown-timeout", "10"))
        try:
            server.start()
            port = server.port
            alone = asyncio.run(exchange(port, PROBE * 2, False))

            terminated: list[float] = []

            async def terminate() -> None:
                await asyncio.sleep(0.3)
                server.signal(signal.SIGTERM)
                terminated.append(time.monotonic())
                await asyncio.sleep(0.3)

            draining = asyncio.run(exchange(port, PROBE * 2, False, between=terminate))
            if not terminated:
                # An announcing protocol closed before the client spoke.
                server.signal(signal.SIGTERM)
            status = server.process.wait(15)
        finally:
            server.kill()
        self.record(
            "graceful drain on SIGTERM",
            status == 0 and draining.received >= alone.received and not draining.reset,
            f"a client open at SIGTERM got {draining.received} bytes "
            f"(undisturbed: {alone.received}); exit status {status}",
        )


def _peerClosed(sock: socket.socket) -> bool:
    """
    Whether the server has closed C{sock}'s connection, without reading
    what is queued on it (TCP_INFO state).
    """
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    # CLOSE_WAIT (8) or CLOSE (7): the server sent its FIN or a reset.
    return info[0] in (7, 8)


def _metric(admin: int, name: str) -> float:
    url = f"http://127.0.0.1:{admin}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="myserver check",
        description="Check that an installed protocol plugin behaves under "
        "the real server: one line per guarantee; exit 0 only if all pass.",
    )
    parser.add_argument("protocol", help="the plugin's name (--list-protocols)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="K=V",
        help="a listener option for the plugin (repeatable; V read as TOML)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead")
    args = parser.parse_args(argv)
    checker = Checker(args.protocol, _options(args.option))
    results = checker.run()
    passed = all(r.passed for r in results)
    if args.json:
        report = {
            "protocol": args.protocol,
            "options": checker.options,
            "passed": passed,
            "checks": [asdict(r) for r in results],
        }
        print(json.dumps(report, indent=2))
    else:
        for r in results:
            print(f"{'PASS' if r.passed else 'FAIL'}  {r.name}: {r.figure}")
        failed = sum(not r.passed for r in results)
        print(
            f"{args.protocol}: {len(results) - failed} of {len(results)} checks passed"
        )
    sys.exit(0 if passed else 1)
