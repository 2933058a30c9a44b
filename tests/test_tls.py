"""
TLS listeners against real peers (openssl s_client, Python's ssl client),
with certificates made by the test, and live certificate reload on SIGHUP.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

from twisted.trial.unittest import TestCase

from tests.support import (
    ServerProcess,
    assertNoTraceback,
    processTest,
    requireTool,
    run,
)


def makePair(directory: str, name: str) -> tuple[str, str]:
    """
    A self-signed certificate for localhost and its key, made by openssl.
    """
    cert = os.path.join(directory, name + ".crt")
    key = os.path.join(directory, name + ".key")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", cert, "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


def der(path: str) -> bytes:
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def clientHello() -> bytes:
    """
    The bytes of a real TLS ClientHello, from Python's ssl module.
    """
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def dripClientHellos(port: int, count: int, within: float = 8) -> list[float]:
    """
    Open C{count} connections and drip a ClientHello on each, one byte per
    connection every 0.2 s, until the server has closed them all or
    C{within} seconds have passed.

    @return: the seconds after which each closed connection was closed.
    """
    hello = clientHello()
    drippers = [
        socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)
    ]
    started = time.monotonic()
    closedAt: dict[int, float] = {}
    sent = 0
    while len(closedAt) < count and time.monotonic() - started < within:
        for index, sock in enumerate(drippers):
            if index in closedAt:
                continue
            try:
                sock.send(hello[sent % len(hello) : sent % len(hello) + 1])
                sock.settimeout(0.02)
                if sock.recv(1) == b"":
                    closedAt[index] = time.monotonic() - started
            except TimeoutError:
                pass
            except OSError:
                closedAt[index] = time.monotonic() - started
        sent += 1
        time.sleep(0.2)
    for sock in drippers:
        sock.close()
    return list(closedAt.values())


@processTest
class TLSTests(TestCase):
    def setUp(self) -> None:
        requireTool("openssl")
        self.directory = tempfile.mkdtemp(prefix="myserver-tls-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.a = makePair(self.directory, "a")
        self.b = makePair(self.directory, "b")
        self.cert = os.path.join(self.directory, "server.crt")
        self.key = os.path.join(self.directory, "server.key")
        self.install(*self.a)

    def install(self, cert: str, key: str) -> None:
        shutil.copy(cert, self.cert)
        shutil.copy(key, self.key)

    def serve(self, *extra: str) -> ServerProcess:
        endpoint = (
            f"tlsreload:0:certKey={self.cert}:privateKey={self.key}"
            ":interface=127.0.0.1" + "".join(extra)
        )
        server = ServerProcess("--listen", endpoint).start()
        self.addCleanup(server.kill)
        return server

    def client(
        self, port: int, cafile: str | None = None, **versions: ssl.TLSVersion
    ) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=cafile or self.cert)
        for name, version in versions.items():
            setattr(context, name, version)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        return context.wrap_socket(raw, server_hostname="localhost")

    def echo(self, sock: ssl.SSLSocket, payload: bytes, timeout: float = 30) -> bytes:
        """
        Send C{payload} while reading the same length back, from one thread:
        an C{SSLSocket} is one OpenSSL connection, which must not be read and
        written from two threads at once (a sending thread once made C{recv}
        report an end of file in CI).
        """
        previousTimeout = sock.gettimeout()
        sock.setblocking(False)
        view = memoryview(payload)
        sent = 0
        received = bytearray()
        deadline = time.monotonic() + timeout
        while len(received) < len(payload):
            if time.monotonic() > deadline:
                raise TimeoutError(f"sent {sent}, received {len(received)}")
            if sent < len(payload):
                try:
                    # A retry after SSLWantWriteError offers the same bytes,
                    # as OpenSSL requires.
                    sent += sock.send(view[sent : sent + 16384])
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    pass
            try:
                data = sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                select.select([sock], [sock] if sent < len(payload) else [], [], 0.5)
                continue
            if not data:
                break
            received += data
        sock.settimeout(previousTimeout)
        return bytes(received)

    def test_pythonClient(self) -> None:
        server = self.serve()
        with self.client(server.port) as sock:
            self.assertEqual(sock.version() in ("TLSv1.2", "TLSv1.3"), True)
            payload = os.urandom(1 << 20)
            self.assertEqual(self.echo(sock, payload), payload)
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)

    def test_drippedHandshakeHeldToDeadline(self) -> None:
        """
        Clients that drip a ClientHello one byte at a time are closed at
        handshake_timeout after accept, however steadily they send, while
        the idle timeout, reset by every byte, would never fire; a normal
        client is served meanwhile.
        """
        server = ServerProcess(
            "--listen",
            f"tlsreload:0:certKey={self.cert}:privateKey={self.key}"
            ":interface=127.0.0.1",
            "--handshake-timeout",
            "2",
            "--idle-timeout",
            "60",
        ).start()
        self.addCleanup(server.kill)
        closedAt = dripClientHellos(server.port, 10)
        self.assertEqual(len(closedAt), 10, "some drippers were never closed")
        # The deadline (2 s), plus one sweep (0.5 s), plus slack for a busy
        # machine; never before the deadline.
        self.assertGreaterEqual(min(closedAt), 1.9)
        self.assertLess(max(closedAt), 2 + 0.5 + 2)
        with self.client(server.port) as sock:
            self.assertEqual(self.echo(sock, b"after"), b"after")
        self.assertEqual(server.stop(), 0)
        self.assertIn("handshake not finished within 2s", server.output)
        assertNoTraceback(self, server.output)

    def test_openssl(self) -> None:
        server = self.serve()
        result = subprocess.run(
            "(printf 'through openssl'; sleep 1) | openssl s_client "
            f"-connect 127.0.0.1:{server.port} -servername localhost -quiet "
            "-no_ign_eof",
            shell=True,
            capture_output=True,
            timeout=30,
        )
        self.assertIn(b"through openssl", result.stdout)
        self.assertEqual(server.stop(), 0)

    def test_minimumVersion(self) -> None:
        """
        TLS 1.2 at least by default; minimumVersion=TLSv1_3 refuses a
        client that can do no better than 1.2, which works otherwise.
        """
        server = self.serve()
        with self.client(server.port, maximum_version=ssl.TLSVersion.TLSv1_2) as sock:
            self.assertEqual(sock.version(), "TLSv1.2")
        self.assertEqual(server.stop(), 0)
        strict = self.serve(":minimumVersion=TLSv1_3")
        with self.assertRaises(ssl.SSLError):
            self.client(strict.port, maximum_version=ssl.TLSVersion.TLSv1_2)
        with self.client(strict.port) as sock:
            self.assertEqual(sock.version(), "TLSv1.3")
        self.assertEqual(strict.stop(), 0)

    def test_reload(self) -> None:
        """
        SIGHUP: new connections get the new certificate, the open one keeps
        working with the old; an unusable new pair is refused and the last
        good one keeps serving.
        """
        server = self.serve()
        old = self.client(server.port)
        self.assertEqual(old.getpeercert(binary_form=True), der(self.a[0]))
        self.install(*self.b)
        server.signal(signal.SIGHUP)
        server.waitForLine("reloaded tlsreload:")
        with self.client(server.port) as new:
            self.assertEqual(new.getpeercert(binary_form=True), der(self.b[0]))
            self.assertEqual(self.echo(new, b"new pair"), b"new pair")
        self.assertEqual(self.echo(old, b"old pair"), b"old pair")
        self.assertEqual(old.getpeercert(binary_form=True), der(self.a[0]))
        old.close()
        # B's certificate with A's key: refused.
        shutil.copy(self.a[1], self.key)
        server.signal(signal.SIGHUP)
        server.waitForLine("reload of tlsreload:.* refused")
        with self.client(server.port) as again:
            self.assertEqual(again.getpeercert(binary_form=True), der(self.b[0]))
        os.remove(self.cert)
        server.signal(signal.SIGHUP)
        server.waitFor(lambda: server.output.count("refused, still using") >= 2)
        with self.client(server.port, cafile=self.b[0]) as still:
            self.assertEqual(self.echo(still, b"still"), b"still")
        self.assertEqual(server.stop(), 0)
        self.assertIn("do not match", server.output)
        self.assertIn("cannot read certificate", server.output)
        assertNoTraceback(self, server.output)

    def test_missingFilesRefusedAtStart(self) -> None:
        result = run("--listen", "tlsreload:0:certKey=/nonexistent.pem")
        self.assertEqual(result.returncode, 2)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn("/nonexistent.pem", result.stderr)

    def test_twistedSslEndpoint(self) -> None:
        """
        Twisted's own ssl: listeners work too (without reload).
        """
        server = ServerProcess(
            "--listen",
            f"ssl:0:privateKey={self.key}:certKey={self.cert}:interface=127.0.0.1",
        ).start()
        self.addCleanup(server.kill)
        with self.client(server.port) as sock:
            self.assertEqual(self.echo(sock, b"plain ssl"), b"plain ssl")
        self.assertEqual(server.stop(), 0)
