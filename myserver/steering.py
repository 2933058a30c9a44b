# -*- test-case-name: tests.test_steering -*-
"""
Steering datagrams to one of several C{SO_REUSEPORT} sockets by their
source address alone.

Workers serve a UDP listener on one socket each, all bound to the same
address.  Left to itself, the kernel picks the socket by hashing the source
address I{and port}, so one client's datagrams from new ports land in every
worker, and no worker could enforce that client's per-source rate
(L{myserver.datagram.SourceRateLimit}) alone.  A classic BPF program
attached to the group (C{SO_ATTACH_REUSEPORT_CBPF}, Linux 4.5 and later)
returns the socket's index instead: the source address modulo the number of
sockets.  Every datagram of one source address then reaches one worker,
which enforces the whole rate, undivided.

For UDP, the kernel runs the program on the packet past its UDP header, so
the program reads the IP header through the ancillary offset
C{SKF_NET_OFF}: the version nibble first, then the source address, at 12
for IPv4 and its last four bytes at 20 (8 + 12) for IPv6.  IPv4 datagrams
on a dual-stack IPv6 socket carry an IPv4 header, and are read as such.
An index past the last socket (not that this program returns one) falls
back to the kernel's hash.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

# Linux's <asm-generic/socket.h>; Python's socket module does not name it.
SO_ATTACH_REUSEPORT_CBPF = 51
# <linux/filter.h>: a negative offset that reads from the network header.
SKF_NET_OFF = -0x100000

# Classic BPF opcodes (<linux/bpf_common.h>).
BPF_LD, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x04, 0x05, 0x06
BPF_W, BPF_B, BPF_ABS = 0x00, 0x10, 0x20
BPF_RSH, BPF_MOD, BPF_JEQ = 0x70, 0x90, 0x10
BPF_K, BPF_A = 0x00, 0x10

# struct sock_filter: u16 code, u8 jt, u8 jf, u32 k.
_INSTRUCTION = struct.Struct("=HBBI")


def _instruction(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> bytes:
    return _INSTRUCTION.pack(code, jt, jf, k & 0xFFFFFFFF)


def sourceSteeringProgram(count: int) -> bytes:
    """
    The classic BPF program that picks socket C{source address % count}.

    @return: its instructions, as the kernel's C{struct sock_filter} array.
    @raise ValueError: for fewer than one socket.
    """
    if count < 1:
        raise ValueError(f"cannot steer among {count} sockets")
    modulo = [
        _instruction(BPF_ALU | BPF_MOD | BPF_K, count),
        _instruction(BPF_RET | BPF_A),
    ]
    ipv6 = [_instruction(BPF_LD | BPF_W | BPF_ABS, SKF_NET_OFF + 20), *modulo]
    ipv4 = [_instruction(BPF_LD | BPF_W | BPF_ABS, SKF_NET_OFF + 12), *modulo]
    return b"".join(
        [
            # A = the IP version.
            _instruction(BPF_LD | BPF_B | BPF_ABS, SKF_NET_OFF),
            _instruction(BPF_ALU | BPF_RSH | BPF_K, 4),
            # 6: fall through to the IPv6 load; else skip past it.
            _instruction(BPF_JMP | BPF_JEQ | BPF_K, 6, jt=0, jf=len(ipv6)),
            *ipv6,
            *ipv4,
        ]
    )


class _SockFprog(ctypes.Structure):
    # struct sock_fprog: the length, and a pointer to the instructions.
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def steerBySource(sock: socket.socket, count: int) -> None:
    """
    Attach L{sourceSteeringProgram} to the reuseport group of C{sock}, one
    of C{count} sockets bound to the same address, in the order of their
    binding (socket I{i} receives the sources whose address is I{i} modulo
    C{count}).

    @raise OSError: where the kernel refuses (not Linux, or too old).
    """
    if not sys.platform.startswith("linux"):
        raise OSError("SO_ATTACH_REUSEPORT_CBPF is Linux's only")
    program = sourceSteeringProgram(count)
    # The kernel copies the instructions during the call; the buffer needs
    # to live only that long.
    instructions = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(
        len(program) // _INSTRUCTION.size, ctypes.addressof(instructions)
    )
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))


def steeringProblem() -> str | None:
    """
    Why datagrams cannot be steered by source on this system, found by
    trying on a throwaway pair of loopback sockets; L{None} when they can.
    """
    sockets: list[socket.socket] = []
    try:
        port = 0
        for _ in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", port))
            port = sock.getsockname()[1]
        steerBySource(sockets[0], 2)
    except (OSError, AttributeError) as e:
        # AttributeError: a platform without SO_REUSEPORT.
        return " ".join(str(e).split()) or type(e).__name__
    finally:
        for sock in sockets:
            sock.close()
    return None
