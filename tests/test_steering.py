"""
Steering datagrams among reuseport sockets by source address: the program
(run here by a small interpreter of the classic BPF it uses), and the
kernel running it on real loopback sockets.
"""

from __future__ import annotations

import ipaddress
import selectors
import shutil
import socket
import struct

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from myserver import steering, workers
from myserver.settings import Config, Listener
from myserver.steering import (
    SKF_NET_OFF,
    sourceSteeringProgram,
    steerBySource,
    steeringProblem,
)
from myserver.workers import WorkerSupervisor, bindDatagramListener

PROBLEM = steeringProblem()


def runProgram(program: bytes, network: bytes) -> int:
    """
    Run the classic BPF C{program} as the kernel runs a reuseport program
    on a datagram whose network header (and what follows) is C{network}:
    only the instructions L{sourceSteeringProgram} uses.

    @return: the socket index it returns.
    """
    instructions = [
        struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)
    ]
    a, pc = 0, 0

    def load(k: int, size: int) -> int:
        offset = (k - (1 << 32) if k & 0x80000000 else k) - SKF_NET_OFF
        return int.from_bytes(network[offset : offset + size], "big")

    while True:
        code, jt, jf, k = instructions[pc]
        pc += 1
        if code == steering.BPF_LD | steering.BPF_B | steering.BPF_ABS:
            a = load(k, 1)
        elif code == steering.BPF_LD | steering.BPF_W | steering.BPF_ABS:
            a = load(k, 4)
        elif code == steering.BPF_ALU | steering.BPF_RSH | steering.BPF_K:
            a >>= k
        elif code == steering.BPF_ALU | steering.BPF_MOD | steering.BPF_K:
            a %= k
        elif code == steering.BPF_JMP | steering.BPF_JEQ | steering.BPF_K:
            pc += jt if a == k else jf
        elif code == steering.BPF_RET | steering.BPF_A:
            return a
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


def ipv4Header(source: str) -> bytes:
    return bytes([0x45]) + bytes(11) + ipaddress.IPv4Address(source).packed + bytes(4)


def ipv6Header(source: str) -> bytes:
    return bytes([0x60]) + bytes(7) + ipaddress.IPv6Address(source).packed + bytes(16)


class ProgramTests(TestCase):
    def test_ipv4(self) -> None:
        """
        An IPv4 datagram goes to socket (source address % count).
        """
        for count in (1, 2, 3, 7):
            program = sourceSteeringProgram(count)
            for source in ("127.0.0.1", "127.0.0.2", "10.1.2.3", "255.255.255.255"):
                self.assertEqual(
                    runProgram(program, ipv4Header(source)),
                    int(ipaddress.IPv4Address(source)) % count,
                    (source, count),
                )

    def test_ipv6(self) -> None:
        """
        An IPv6 datagram goes by the last 32 bits of its source address.
        """
        program = sourceSteeringProgram(3)
        for source in ("::1", "2001:db8::5", "fe80::ffff:fffe"):
            self.assertEqual(
                runProgram(program, ipv6Header(source)),
                (int(ipaddress.IPv6Address(source)) & 0xFFFFFFFF) % 3,
            )

    def test_noSockets(self) -> None:
        self.assertRaises(ValueError, sourceSteeringProgram, 0)


def spread(sockets: list[socket.socket], source: str, count: int) -> list[int]:
    """
    Send C{count} datagrams from C{source}, each from a new port, to the
    sockets' address, and count what each socket receives.
    """
    host, port = sockets[0].getsockname()[:2]
    for _ in range(count):
        with socket.socket(sockets[0].family, socket.SOCK_DGRAM) as client:
            client.bind((source, 0))
            client.sendto(b"x", (host, port))
    received = [0] * len(sockets)
    with selectors.DefaultSelector() as selector:
        for index, sock in enumerate(sockets):
            selector.register(sock, selectors.EVENT_READ, index)
        while sum(received) < count:
            events = selector.select(10)
            if not events:
                break
            for key, _ in events:
                key.fileobj.recv(10)  # type: ignore[union-attr]
                received[key.data] += 1
    return received


class KernelTests(TestCase):
    """
    The kernel runs the program: real sockets on loopback.
    """

    if PROBLEM is not None:
        skip = f"datagrams cannot be steered here: {PROBLEM}"

    def bound(self, endpoint: str, copies: int) -> list[socket.socket]:
        bound = bindDatagramListener(Listener(endpoint, "echo"), copies)
        self.addCleanup(bound.close)
        return bound.sockets

    def test_bySourceAddress(self) -> None:
        """
        Every datagram of one source address reaches the same socket, its
        address modulo the count of sockets, whatever its source port.
        """
        sockets = self.bound("udp:0:interface=127.0.0.1", 3)
        self.assertEqual(len({s.getsockname() for s in sockets}), 1)
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            expected = [0, 0, 0]
            expected[int(ipaddress.IPv4Address(source)) % 3] = 60
            self.assertEqual(spread(sockets, source, 60), expected, source)

    def test_ipv6AndMapped(self) -> None:
        """
        On a dual-stack IPv6 socket: IPv6 sources by their last 32 bits,
        IPv4 ones (mapped) by their address.
        """
        if not socket.has_ipv6:
            self.skipTest("no IPv6")
        try:
            sockets = self.bound("udp:0:interface=::", 2)
        except Exception as e:
            self.skipTest(f"no IPv6 socket: {e}")
        self.assertEqual(spread(sockets, "::1", 40), [0, 40])
        self.assertEqual(spread(sockets, "::ffff:127.0.0.2", 40), [40, 0])
        self.assertEqual(spread(sockets, "::ffff:127.0.0.1", 40), [0, 40])

    def test_steerTwice(self) -> None:
        """
        Attaching again replaces the program (a group keeps one).
        """
        sockets = self.bound("udp:0:interface=127.0.0.1", 2)
        steerBySource(sockets[1], 2)
        self.assertEqual(spread(sockets, "127.0.0.2", 20), [20, 0])


class FallbackTests(TestCase):
    """
    Where datagrams cannot be steered, the supervisor serves UDP itself.
    """

    def supervisor(self, problem: str | None) -> tuple[WorkerSupervisor, list[str]]:
        self.patch(workers, "steeringProblem", lambda: problem)
        config = Config(
            listen=(Listener("tcp:0", "echo"), Listener("udp:0", "echo")), workers=2
        )
        with capturedLogs() as events:
            supervisor = WorkerSupervisor(config, reactor=None)
        self.addCleanup(shutil.rmtree, supervisor._directory, True)
        return supervisor, [formatEvent(event) for event in events]

    def test_unavailable(self) -> None:
        """
        The workers serve the stream listeners, the supervisor UDP, and it
        says why, once.
        """
        supervisor, logged = self.supervisor("SO_ATTACH_REUSEPORT_CBPF is Linux's")
        stream, datagram = supervisor.config.listen
        self.assertTrue(supervisor.serves(stream))
        self.assertFalse(supervisor.serves(datagram))
        self.assertEqual(supervisor.steering, "SO_ATTACH_REUSEPORT_CBPF is Linux's")
        self.assertEqual(len(logged), 1)
        self.assertIn("UDP listeners are served by the supervisor", logged[0])
        self.assertIn("(SO_ATTACH_REUSEPORT_CBPF is Linux's)", logged[0])

    def test_available(self) -> None:
        supervisor, logged = self.supervisor(None)
        self.assertTrue(all(map(supervisor.serves, supervisor.config.listen)))
        self.assertEqual(logged, [])
