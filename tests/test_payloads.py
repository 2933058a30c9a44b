"""
Property-based echo over real sockets: for any payload, any way of
splitting it across C{send()} calls and any moment of half-closing, one
running C{twistd -n myserver} sends back exactly the bytes it was sent.
"""

from __future__ import annotations

import os
import random
import selectors
import socket
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import cycle

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from tests.test_echo import SharedServerTestCase, assertSameBytes

# Besides its example database (off below), Hypothesis caches under
# .hypothesis/ in the directory it was imported from: the checkout, under
# trial.  Keep that out of the repository unless told where to put it.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    _storage = tempfile.TemporaryDirectory(prefix="hypothesis-")
    set_hypothesis_home_dir(_storage.name)

MAX_PAYLOAD = 300 * 1024
MAX_PIECES = 512


@dataclass(frozen=True)
class Payload:
    """
    A payload described in a few fields, so that a failing example reads as
    one short line instead of 300 KiB of repr: C{head} (arbitrary, shrunk
    byte by byte by Hypothesis), then C{size} bytes of C{kind}: random
    bytes from C{seed}, every byte value in turn from C{seed % 256}, or the
    byte C{seed % 256} repeated.
    """

    head: bytes
    size: int
    kind: str
    seed: int

    def build(self) -> bytes:
        if self.kind == "random":
            body = random.Random(self.seed).randbytes(self.size)
        elif self.kind == "everyByte":
            start = self.seed % 256
            body = (bytes(range(256)) * (self.size // 256 + 2))[
                start : start + self.size
            ]
        else:
            body = bytes([self.seed % 256]) * self.size
        return self.head + body


payloads = st.builds(
    Payload,
    head=st.binary(max_size=64),
    size=st.one_of(
        st.integers(0, MAX_PAYLOAD - 64),
        st.integers(0, 2048),
        st.sampled_from([255, 256, 1023, 1024, 65535, 65536, 65537]),
    ),
    kind=st.sampled_from(["random", "everyByte", "constant"]),
    seed=st.integers(0, 2**32 - 1),
)

chunkings = st.lists(
    st.one_of(st.integers(1, 16), st.integers(1, 96 * 1024)), min_size=1, max_size=16
)

halfCloses = st.one_of(
    st.just(("immediate", 0.0)),
    st.tuples(st.just("sleep"), st.floats(0.001, 0.05)),
    st.just(("together", 0.0)),
)


def split(payload: bytes, chunking: Sequence[int]) -> list[bytes]:
    """
    Cut C{payload} into pieces whose sizes repeat C{chunking}; the last of
    at most L{MAX_PIECES} pieces takes whatever is left.
    """
    pieces = []
    offset = 0
    for size in cycle(chunking):
        if offset >= len(payload):
            break
        if len(pieces) == MAX_PIECES - 1:
            size = len(payload) - offset
        pieces.append(payload[offset : offset + size])
        offset += size
    return pieces


def chunkedEcho(
    port: int,
    pieces: Sequence[bytes],
    halfClose: str,
    delay: float,
    timeout: float = 30,
) -> bytes:
    """
    Send each piece with its own C{send()} call(s) (Nagle off, so pieces
    leave as separate segments) while reading whatever comes back, then
    half-close and read to EOF.

    @param halfClose: C{"immediate"}: shut down the sending side as soon
        as the last byte is sent; C{"sleep"}: C{delay} seconds later (still
        reading meanwhile); C{"together"}: send the last piece with
        C{MSG_MORE}, so the kernel holds it back and it leaves in the same
        segment as the FIN.
    @return: every byte received.
    @raise AssertionError: if the server closes before the client has
        half-closed.
    """
    received = bytearray()
    pending = deque(memoryview(piece) for piece in pieces if piece)
    shutdownAt: float | None = None
    writeClosed = False
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while True:
                now = time.monotonic()
                if now > deadline:
                    raise TimeoutError(
                        f"{len(pending)} pieces unsent, {len(received)} bytes "
                        f"received, write side closed: {writeClosed}"
                    )
                if not pending and shutdownAt is None:
                    shutdownAt = now + (delay if halfClose == "sleep" else 0.0)
                    selector.modify(sock, selectors.EVENT_READ)
                if shutdownAt is not None and not writeClosed and now >= shutdownAt:
                    sock.shutdown(socket.SHUT_WR)
                    writeClosed = True
                wait = 1.0
                if shutdownAt is not None and not writeClosed:
                    wait = max(0.0, min(wait, shutdownAt - now))
                for _, events in selector.select(wait):
                    if events & selectors.EVENT_WRITE and pending:
                        piece = pending[0]
                        last = len(pending) == 1
                        flags = (
                            socket.MSG_MORE if halfClose == "together" and last else 0
                        )
                        try:
                            sent = sock.send(piece, flags)
                        except BlockingIOError:
                            sent = 0
                        if sent == len(piece):
                            pending.popleft()
                        else:
                            pending[0] = piece[sent:]
                    if events & selectors.EVENT_READ:
                        try:
                            data = sock.recv(1 << 20)
                        except BlockingIOError:
                            continue
                        if not data:
                            if not writeClosed:
                                raise AssertionError(
                                    "the server closed the connection before the "
                                    f"client half-closed ({len(received)} bytes "
                                    "received)"
                                )
                            return bytes(received)
                        received += data


class PayloadPropertyTests(SharedServerTestCase):
    """
    Echo is exact for arbitrary payloads, chunkings and half-close timings,
    all against one server.
    """

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(spec=payloads, chunking=chunkings, timing=halfCloses)
    @example(
        spec=Payload(b"", 0, "constant", 0), chunking=[1], timing=("together", 0.0)
    )
    @example(
        spec=Payload(b"", 1, "constant", 0), chunking=[1], timing=("together", 0.0)
    )
    @example(
        spec=Payload(b"\xff", MAX_PAYLOAD - 1, "everyByte", 0),
        chunking=[1, 255, 65536],
        timing=("sleep", 0.05),
    )
    def test_echoIsExact(
        self, spec: Payload, chunking: list[int], timing: tuple[str, float]
    ) -> None:
        """
        Whatever the bytes (all 256 values, 0 to 300 KiB), however they are
        split across C{send()} calls, and whether the half-close comes at
        once, after a pause, or in the same segment as the last data, the
        client reads back exactly what it sent, then EOF.  This is the
        contract of the guarded transport's write-through, pause/resume
        and half-close paths taken together.
        """
        payload = spec.build()
        halfClose, delay = timing
        pieces = split(payload, chunking)
        self.assertEqual(b"".join(pieces), payload)
        received = chunkedEcho(self.port, pieces, halfClose, delay)
        assertSameBytes(self, payload, received)
