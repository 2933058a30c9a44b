# -*- test-case-name: tests.test_bench -*-
"""
The load generator: several processes, each an asyncio loop (uvloop when
installed) driving its share of the connections, so that the client side
is not what is measured.  Every echoed byte is checked.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from dataclasses import dataclass, field


class LoadFailed(Exception):
    """
    The load could not be generated as asked (connections refused, a load
    generator that would not build).
    """


class WrongBytes(LoadFailed):
    """
    An echo came back different from what was sent.
    """


@dataclass
class Result:
    """
    What one run of a scenario measured.
    """

    operations: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.operations / self.seconds if self.seconds else 0.0


def _loop() -> None:
    from importlib import import_module

    try:
        import_module("uvloop").install()
    except ImportError:
        return


async def _readExactly(reader: asyncio.StreamReader, size: int) -> bytes:
    return await reader.readexactly(size)


async def _pingpong(
    port: int, connections: int, size: int, seconds: float, seed: int
) -> Result:
    result = Result()
    deadline = time.monotonic() + seconds

    async def one(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        counter = 0
        while time.monotonic() < deadline:
            # A message unique to this connection and round: a byte mixed
            # up between clients, or replayed, is caught.
            stamp = f"{seed}:{index}:{counter}:".encode()
            message = (stamp * (size // len(stamp) + 1))[:size]
            started = time.perf_counter()
            writer.write(message)
            echoed = await _readExactly(reader, size)
            if echoed != message:
                raise WrongBytes(f"connection {index} round {counter}")
            if counter % 16 == 0:
                result.latencies.append(time.perf_counter() - started)
            result.operations += 1
            counter += 1
        writer.close()

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(connections)))
    result.seconds = time.monotonic() - started
    return result


async def _connectRate(
    port: int, concurrency: int, size: int, seconds: float, seed: int
) -> Result:
    result = Result()
    deadline = time.monotonic() + seconds
    payload = os.urandom(size)

    async def one() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            writer.write_eof()
            echoed = await reader.read()
            writer.close()
            if echoed != payload:
                raise WrongBytes("connect-rate echo differs")
            result.latencies.append(time.perf_counter() - started)
            result.operations += 1

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    result.seconds = time.monotonic() - started
    return result


def _work(args: tuple[str, int, int, int, float, int]) -> Result:
    scenario, port, count, size, seconds, seed = args
    _loop()
    run = _pingpong if scenario == "pingpong" else _connectRate
    return asyncio.run(run(port, count, size, seconds, seed))


def generate(
    scenario: str,
    port: int,
    count: int,
    size: int,
    seconds: float,
    processes: int,
    cpus: set[int] | None = None,
) -> Result:
    """
    Run C{scenario} (C{pingpong} or C{connect-rate}) with C{count}
    connections (or concurrent clients) spread over C{processes}.

    @raise WrongBytes: if any echo differed from what was sent.
    """
    processes = max(1, min(processes, count))
    shares = [count // processes + (i < count % processes) for i in range(processes)]
    jobs = [(scenario, port, share, size, seconds, i) for i, share in enumerate(shares)]
    context = multiprocessing.get_context("fork")
    with context.Pool(processes, initializer=_pin, initargs=(cpus,)) as pool:
        parts = pool.map(_work, jobs)
    total = Result()
    for part in parts:
        total.operations += part.operations
        total.latencies += part.latencies
        total.seconds = max(total.seconds, part.seconds)
    return total


def _pin(cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
