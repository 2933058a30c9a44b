"""
Several worker processes serving the same listeners: the spread of
connections, supervision, graceful stop, reload, the per-worker split of
the limits, workers that die with their supervisor, and TLS in workers.
"""

from __future__ import annotations

import ipaddress
import os
import re
import selectors
import shutil
import signal
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from myserver.inheritance import READY, Inheritance
from myserver.service import StopOnSignals
from myserver.settings import Config
from myserver.steering import steeringProblem
from myserver.workers import RETIRE, SupervisorWatch, WorkerSupervisor
from tests.support import (
    ServerProcess,
    assertNoTraceback,
    echoOnce,
    exchange,
    isOpen,
    manyEchoes,
    processTest,
    requireTool,
    waitUntil,
)

STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def workerPids(server: ServerProcess, count: int) -> dict[int, int]:
    """
    The pid of each worker, once C{count} have started and listen.
    """
    server.waitFor(
        lambda: sum("(systemd:domain=" in line for line in server.lines) >= count
    )
    pids: dict[int, int] = {}
    for line in server.lines:
        match = STARTED.search(line)
        if match:
            pids[int(match.group(1))] = int(match.group(2))
    return pids


def alive(pid: int) -> bool:
    """
    Whether C{pid} runs (a zombie, waiting for whoever adopted it to reap
    it, has ended).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def refused(port: int) -> bool:
    """
    Whether a connection to C{port} on loopback is refused.
    """
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # Queued on a listening socket that closed meanwhile (a worker
        # stopping): not refused yet; the caller asks again.
        return False
    return False


_Connection = TypeVar("_Connection", bound=socket.socket)


def untilBothServe(
    pids: dict[int, int], connect: Callable[[], _Connection]
) -> list[_Connection]:
    """
    Open connections with C{connect} until every worker holds one of them
    (at most 100).
    """
    idle = {pid: socketsOf(pid) for pid in pids.values()}
    held: list[_Connection] = []
    while not all(socketsOf(pid) > idle[pid] for pid in pids.values()):
        if len(held) == 100:
            raise AssertionError(f"100 connections, not all workers serve: {pids}")
        held.append(connect())
    return held


def socketsOf(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


@processTest
class WorkerTests(TestCase):
    def start(self, *args: str) -> ServerProcess:
        server = ServerProcess("--workers", "2", *args).start()
        self.addCleanup(server.kill)
        return server

    def test_spread(self) -> None:
        """
        400 connections over 2 workers: each serves at least 30 % (the
        parent binds one SO_REUSEPORT socket per worker; the kernel spreads).
        """
        server = self.start()
        pids = workerPids(server, 2)
        idle = {index: socketsOf(pid) for index, pid in pids.items()}
        clients = []
        for i in range(400):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"%d" % i)
            self.assertEqual(sock.recv(10), b"%d" % i)
            clients.append(sock)
        served = {index: socketsOf(pid) - idle[index] for index, pid in pids.items()}
        for sock in clients:
            sock.close()
        self.assertEqual(sum(served.values()), 400)
        for count in served.values():
            self.assertGreaterEqual(count, 120, served)
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)

    def test_killedWorkerReplaced(self) -> None:
        """
        A worker killed with SIGKILL is replaced, and every client is still
        served exactly.
        """
        server = self.start()
        pids = workerPids(server, 2)
        os.kill(pids[0], signal.SIGKILL)
        server.waitForLine("worker 0 ended unexpectedly")
        server.waitFor(lambda: len(STARTED.findall(server.output)) >= 3)
        payloads = [os.urandom(1000 + i) for i in range(200)]
        self.assertEqual(manyEchoes(server.port, payloads), payloads)
        newPids = {
            int(index): int(pid) for index, pid in STARTED.findall(server.output)
        }
        self.assertNotEqual(newPids[0], pids[0])
        self.assertEqual(server.stop(), 0)

    def test_sigtermDrainsEveryWorker(self) -> None:
        """
        Connections open on both workers finish their echo after SIGTERM;
        the parent exits with 0 once every worker has.
        """
        server = self.start("--shutdown-timeout", "30")
        pids = workerPids(server, 2)
        clients = []
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"before ")
            self.assertEqual(sock.recv(7), b"before ")
            clients.append(sock)
        self.assertTrue(all(socketsOf(pid) > 1 for pid in pids.values()))
        server.signal(signal.SIGTERM)
        server.waitFor(lambda: sum("draining" in line for line in server.lines) >= 2)
        for sock in clients:
            sock.sendall(b"after")
            sock.shutdown(socket.SHUT_WR)
            received = b""
            while data := sock.recv(100):
                received += data
            self.assertEqual(received, b"after")
            sock.close()
        self.assertEqual(server.process.wait(60), 0)
        self.assertIn("all workers stopped", server.output)
        assertNoTraceback(self, server.output)

    def test_sighupReachesEveryWorker(self) -> None:
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write("idle_timeout = 300\n")
        server = self.start("--config", config)
        workerPids(server, 2)
        with open(config, "w") as f:
            f.write("idle_timeout = 1\n")
        server.signal(signal.SIGHUP)
        server.waitFor(
            lambda: sum("configuration reloaded" in line for line in server.lines) >= 3
        )
        # The new idle timeout is in force in whichever worker serves this.
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.settimeout(15)
        self.assertEqual(sock.recv(1), b"")
        sock.close()
        self.assertEqual(server.stop(), 0)

    def test_perAddressLimitSplitEvenly(self) -> None:
        """
        max_connections_per_ip 4 over 2 workers: each worker admits at most
        2 connections from one address, so at most 4 in all.
        """
        server = self.start("--max-connections-per-ip", "4")
        pids = workerPids(server, 2)
        idle = {index: socketsOf(pid) for index, pid in pids.items()}
        admitted = []
        for _ in range(12):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.settimeout(10)
            sock.connect(("127.0.0.1", server.port))
            try:
                sock.sendall(b"x")
                if sock.recv(1) == b"x":
                    admitted.append(sock)
                    continue
            except ConnectionResetError:
                pass
            sock.close()
        held = {index: socketsOf(pid) - idle[index] for index, pid in pids.items()}
        for sock in admitted:
            sock.close()
        self.assertLessEqual(len(admitted), 4)
        self.assertGreaterEqual(len(admitted), 2)
        for count in held.values():
            self.assertLessEqual(count, 2, held)
        self.assertEqual(echoOnce(server.port, b"other address"), b"other address")
        self.assertEqual(server.stop(), 0)


@processTest
class WorkerMetricsTests(TestCase):
    def test_metricsSummedOverWorkers(self) -> None:
        """
        The parent's admin endpoint reports the traffic of every worker.
        """
        from tests.test_admin import adminPort, scrape

        server = ServerProcess(
            "--workers", "2", "--admin", "tcp:0:interface=127.0.0.1"
        ).start()
        self.addCleanup(server.kill)
        pids = workerPids(server, 2)
        admin = adminPort(server)
        clients = [
            socket.create_connection(("127.0.0.1", server.port), timeout=10)
            for _ in range(40)
        ]
        for sock in clients:
            sock.sendall(b"12345")
            self.assertEqual(sock.recv(5), b"12345")
        # Both workers hold some of them.
        self.assertTrue(all(socketsOf(pid) > 1 for pid in pids.values()))
        metrics = scrape(admin)
        for sock in clients:
            sock.close()
        self.assertEqual(metrics[("myserver_connections_open", ())], 40)
        self.assertEqual(metrics[("myserver_bytes_received_total", ())], 200)
        self.assertEqual(server.stop(), 0)


UDP_LOOPBACK = "udp:0:interface=127.0.0.1"
STEERING_PROBLEM = steeringProblem()


def datagramWorkers(server: ServerProcess) -> dict[int, int]:
    """
    The pid of each of 2 workers, once both serve the UDP listener on the
    socket the supervisor bound for it.
    """
    server.waitFor(
        lambda: (
            sum(
                "listening on udp:" in line and ":index=" in line
                for line in server.lines
            )
            >= 2
        )
    )
    return workerPids(server, 0)


def workerSamples(pid: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of one worker's own /metrics, read from the private UNIX
    socket its supervisor gave it (its C{MYSERVER_ADMIN}).
    """
    from prometheus_client.parser import text_string_to_metric_families

    with open(f"/proc/{pid}/environ", "rb") as f:
        environ = dict(
            entry.decode().partition("=")[::2] for entry in f.read().split(b"\0")
        )
    path = environ["MYSERVER_ADMIN"].removeprefix("unix:")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: worker\r\n\r\n")
        response = exchange(sock, b"", 10)
    body = response.partition(b"\r\n\r\n")[2].decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def datagramCounts(pids: dict[int, int]) -> dict[int, tuple[float, float]]:
    """
    Each worker's datagrams answered and dropped for want of rate.
    """
    counts = {}
    for index, pid in pids.items():
        samples = workerSamples(pid)
        counts[index] = (
            samples.get(("myserver_datagrams_received_total", ()), 0.0),
            samples.get(
                ("myserver_datagrams_dropped_total", (("reason", "rate_limited"),)),
                0.0,
            ),
        )
    return counts


def sendDatagrams(
    port: int, source: str, count: int, newPorts: bool = True, least: int = 0
) -> int:
    """
    Send C{count} datagrams to loopback C{port} from address C{source},
    each from a new source port (or all from one), and count the answers:
    all of them come within 15 s, or else at least C{least} of them and
    then none for 1.5 s.
    """
    clients = []
    with selectors.DefaultSelector() as selector:
        try:
            for i in range(count):
                if newPorts or not clients:
                    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    client.bind((source, 0))
                    clients.append(client)
                    selector.register(client, selectors.EVENT_READ)
                clients[-1].sendto(b"%d" % i, ("127.0.0.1", port))
            answered = 0
            deadline = time.monotonic() + 15
            quiet = time.monotonic() + 1.5
            while answered < count and time.monotonic() < deadline:
                if answered >= least and time.monotonic() > quiet:
                    break
                for key, _ in selector.select(0.1):
                    key.fileobj.recv(100)  # type: ignore[union-attr]
                    answered += 1
                    quiet = time.monotonic() + 1.5
            return answered
        finally:
            for client in clients:
                client.close()


@processTest
class DatagramWorkerTests(TestCase):
    """
    UDP served by the workers, each source address steered to one of them.
    """

    if STEERING_PROBLEM is not None:
        skip = f"datagrams cannot be steered here: {STEERING_PROBLEM}"

    def start(self, *args: str) -> ServerProcess:
        server = ServerProcess("--workers", "2", "--listen", UDP_LOOPBACK, *args)
        self.addCleanup(server.kill)
        return server.start()

    def test_steeredBySource(self) -> None:
        """
        Datagrams from 127.0.0.1 and from 127.0.0.2, each from a new port,
        are all answered; all those of one address by one worker (the
        address modulo 2), so both workers serve; the parent's /metrics
        sums them.
        """
        from tests.test_admin import adminPort, scrape

        server = self.start("--admin", "tcp:0:interface=127.0.0.1")
        pids = datagramWorkers(server)
        self.assertEqual(sorted(pids), [0, 1])
        for source, count in (("127.0.0.1", 12), ("127.0.0.2", 15)):
            before = datagramCounts(pids)
            self.assertEqual(sendDatagrams(server.port, source, count), count)
            after = datagramCounts(pids)
            gained = {i: after[i][0] - before[i][0] for i in pids}
            steered = int(ipaddress.IPv4Address(source)) % 2
            self.assertEqual(gained, {steered: count, 1 - steered: 0}, source)
        metrics = scrape(adminPort(server))
        self.assertEqual(metrics[("myserver_datagrams_received_total", ())], 27)
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)

    def test_rateWhole(self) -> None:
        """
        The per-source rate holds whole, neither divided by the workers
        nor given to each: 40 datagrams from one address on 40 ports get
        about the burst (10) answered, by one worker, not twice that;
        and 20 from one port of another address get the burst too, not half.
        """
        rate, burst = 0.5, 10
        server = self.start(
            "--datagram-rate", str(rate), "--datagram-burst", str(burst)
        )
        pids = datagramWorkers(server)
        for source, count, newPorts in (
            ("127.0.0.2", 40, True),
            ("127.0.0.1", 20, False),
        ):
            started = time.monotonic()
            answered = sendDatagrams(server.port, source, count, newPorts, burst)
            # Tokens earned while this ran, however slowly it ran.
            earned = rate * (time.monotonic() - started)
            self.assertGreaterEqual(answered, burst, source)
            self.assertLessEqual(answered, burst + earned + 1, source)
        counts = datagramCounts(pids)
        # Each address was held by one worker only: 127.0.0.2 by worker 0.
        self.assertEqual(counts[0][0] + counts[0][1], 40, counts)
        self.assertEqual(counts[1][0] + counts[1][1], 20, counts)
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)


@processTest
class SupervisorDeathTests(TestCase):
    def test_sigkilledSupervisor(self) -> None:
        """
        SIGKILL to the supervisor only: every worker stops accepting at
        once (within 2 s the port refuses), a held connection still gets its
        echo during the drain, one that never ends is aborted at
        shutdown_timeout, and then no worker is left.
        """
        server = ServerProcess("--workers", "2", "--shutdown-timeout", "3").start()
        self.addCleanup(server.kill)
        pids = workerPids(server, 2)

        def connect() -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"before")
            self.assertEqual(sock.recv(6), b"before")
            return sock

        held = untilBothServe(pids, connect)
        os.kill(server.pid, signal.SIGKILL)
        server.process.wait(10)
        waitUntil(lambda: refused(server.port), 2, "the port to refuse connections")
        finishing, lingering = held[0], held[1:]
        self.assertEqual(
            exchange(finishing, b"during the drain", 10), b"during the drain"
        )
        waitUntil(
            lambda: not any(alive(pid) for pid in pids.values()),
            3 + 5,
            "every worker to exit",
        )
        for sock in lingering:
            # Aborted at the deadline.
            self.assertFalse(isOpen(sock))
            sock.close()
        finishing.close()
        # Each worker starts its drain once, on whichever news comes first:
        # the supervisor's pipe closing, or the kernel's SIGTERM on the
        # parent's death (PR_SET_PDEATHSIG); later news is "already
        # stopping".
        drainStarts = ("is gone: stopping", "received SIGTERM: stopping")
        server.waitFor(
            lambda: (
                sum(any(s in line for s in drainStarts) for line in server.lines) >= 2
            )
        )
        self.assertIn("aborted", server.output)
        assertNoTraceback(self, server.output)


@processTest
class TLSWorkerTests(TestCase):
    """
    TLS listeners served by every worker, each with its own context.
    """

    def setUp(self) -> None:
        from tests.test_tls import makePair

        requireTool("openssl")
        directory = tempfile.mkdtemp(prefix="myserver-tls-workers-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.a = makePair(directory, "a")
        self.b = makePair(directory, "b")
        self.cert = os.path.join(directory, "server.crt")
        self.key = os.path.join(directory, "server.key")
        shutil.copy(self.a[0], self.cert)
        shutil.copy(self.a[1], self.key)

    def connect(self, port: int, cafile: str) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=cafile)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        return context.wrap_socket(raw, server_hostname="localhost")

    def serveTLS(self, kind: str, *extra: str) -> ServerProcess:
        server = ServerProcess(
            "--workers",
            "2",
            "--listen",
            f"{kind}:0:certKey={self.cert}:privateKey={self.key}:interface=127.0.0.1",
            *extra,
        ).start()
        self.addCleanup(server.kill)
        server.waitFor(
            lambda: sum("(inherited:domain=" in line for line in server.lines) >= 2
        )
        return server

    def test_handshakeDeadline(self) -> None:
        """
        Each worker holds TLS handshakes to handshake_timeout, as one
        process does: drippers are closed at the deadline, not the idle
        timeout their bytes keep resetting.
        """
        from tests.test_tls import dripClientHellos

        server = self.serveTLS(
            "tlsreload", "--handshake-timeout", "2", "--idle-timeout", "60"
        )
        closedAt = dripClientHellos(server.port, 6)
        self.assertEqual(len(closedAt), 6, "some drippers were never closed")
        self.assertGreaterEqual(min(closedAt), 1.9)
        self.assertLess(max(closedAt), 2 + 0.5 + 2)
        self.assertEqual(server.stop(), 0)

    def servedByBoth(self, server: ServerProcess, cafile: str) -> list[ssl.SSLSocket]:
        """
        TLS connections with an echo each, until both workers hold some.
        """
        pids = workerPids(server, 0)
        self.assertEqual(len(pids), 2)

        def connect() -> ssl.SSLSocket:
            sock = self.connect(server.port, cafile)
            sock.sendall(b"through TLS")
            self.assertEqual(sock.recv(100), b"through TLS")
            return sock

        return untilBothServe(pids, connect)

    def test_tlsreload(self) -> None:
        """
        tlsreload: over 2 workers: handshake and echo on both; after a
        SIGHUP, whichever worker answers presents the new certificate.
        """
        from tests.test_tls import der

        server = self.serveTLS("tlsreload")
        for sock in self.servedByBoth(server, self.a[0]):
            self.assertEqual(sock.getpeercert(binary_form=True), der(self.a[0]))
            sock.close()
        shutil.copy(self.b[0], self.cert)
        shutil.copy(self.b[1], self.key)
        server.signal(signal.SIGHUP)
        server.waitFor(lambda: server.output.count("reloaded inherited:") >= 2)
        for sock in self.servedByBoth(server, self.b[0]):
            self.assertEqual(sock.getpeercert(binary_form=True), der(self.b[0]))
            sock.close()
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)

    def test_twistedSsl(self) -> None:
        """
        Twisted's own ssl: listeners are served by both workers too.
        """
        server = self.serveTLS("ssl")
        for sock in self.servedByBoth(server, self.a[0]):
            sock.close()
        self.assertEqual(server.stop(), 0)
        assertNoTraceback(self, server.output)


class _Reactor:
    stops = 0

    def stop(self) -> None:
        self.stops += 1


class _Server:
    aborts = 0

    def abortAll(self) -> None:
        self.aborts += 1


def watchedPipe(case: TestCase) -> tuple[int, Deferred[str]]:
    """
    A L{SupervisorWatch} (supervisor pid 4321) on a pipe of the test's.

    @return: the pipe's write end, and what fires with the reason the
        watch stops for.
    """
    readEnd, writeEnd = os.pipe()
    case.addCleanup(os.close, readEnd)
    stopped: Deferred[str] = Deferred()
    watch = SupervisorWatch(reactor, stopped.callback, 4321, readEnd)
    watch.startService()
    case.addCleanup(watch.stopService)
    return writeEnd, stopped


class StopWithoutSignalTests(TestCase):
    """
    How a worker whose supervisor is gone stops: the drain a SIGTERM
    begins, begun once, and not ended by the SIGTERM Linux then sends.
    """

    def test_stopOnce(self) -> None:
        fake, server = _Reactor(), _Server()
        stopper = StopOnSignals(fake, server)  # type: ignore[arg-type]
        stopper.stop("the supervisor (pid 1) is gone")
        stopper.stop("the supervisor (pid 1) is gone")
        self.assertEqual(fake.stops, 1)
        # The parent-death SIGTERM: nothing more.
        stopper._handle("SIGTERM")
        self.assertEqual((fake.stops, server.aborts), (1, 0))
        # An operator's: the drain ends.
        stopper._handle("SIGTERM")
        self.assertEqual((fake.stops, server.aborts), (1, 1))

    def test_signalThenStop(self) -> None:
        """
        A SIGTERM first: the supervisor's end changes nothing; a second
        signal still ends the drain.
        """
        fake, server = _Reactor(), _Server()
        stopper = StopOnSignals(fake, server)  # type: ignore[arg-type]
        stopper._handle("SIGTERM")
        stopper.stop("the supervisor (pid 1) is gone")
        self.assertEqual((fake.stops, server.aborts), (1, 0))
        stopper._handle("SIGTERM")
        self.assertEqual(server.aborts, 1)

    def test_pipeEnd(self) -> Deferred[None]:
        """
        The watch calls C{stop} when the write end of its pipe closes, and
        not before.
        """
        writeEnd, stopped = watchedPipe(self)
        self.assertFalse(stopped.called)
        os.close(writeEnd)
        return stopped.addCallback(
            self.assertEqual, "the supervisor (pid 4321) is gone"
        )


class _SpawningClock(Clock):
    """
    A clock that also "spawns" processes: enough reactor for a supervisor
    that never really starts one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Any] = []

    def spawnProcess(self, protocol: Any, *args: Any, **kwargs: Any) -> Any:
        self.spawned.append(protocol)

        class Process:
            pid = 10000 + len(self.spawned)

        return Process()


class UpgradeInPlaceTests(TestCase):
    """
    The supervisor's side of a live upgrade, in memory.
    """

    def test_retiredWorkerSaysWhy(self) -> Deferred[None]:
        """
        A worker retired after an upgrade (the supervisor says so on the
        pipe, then closes it) stops for that reason, not as orphaned.
        """
        writeEnd, stopped = watchedPipe(self)
        os.write(writeEnd, RETIRE)
        os.close(writeEnd)
        return stopped.addCallback(
            self.assertEqual, "retired by the supervisor (pid 4321) after an upgrade"
        )

    def test_oldWorkersServeUntilNewOnesAreReady(self) -> None:
        """
        After the supervisor executed the new code in place, the old
        workers' pipes stay open (they serve) until every new worker says it
        is ready; a late upgrade is logged at upgrade_timeout, and the old
        workers are retired only once the new ones are all ready.
        """
        clock = _SpawningClock()
        config = Config(listen=(), workers=2, upgrade_timeout=5)
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        inheritance = Inheritance(inPlace=True, workers=[(os.getpid(), writeEnd)])
        supervisor = WorkerSupervisor(config, clock, inheritance=inheritance)
        self.addCleanup(shutil.rmtree, supervisor._directory, True)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        supervisor.startService()
        self.assertEqual(len(clock.spawned), 2)
        first, second = clock.spawned
        first.childDataReceived(first.readyDescriptor, READY)
        clock.advance(5)
        self.assertTrue(supervisor.upgrading)
        self.assertIn(
            "upgrade: the new workers are not all ready after 5s; the 1 old "
            "workers keep serving",
            [formatEvent(event) for event in events],
        )
        second.childDataReceived(second.readyDescriptor, READY)
        self.assertFalse(supervisor.upgrading)
        # Retired: told so, and the pipe's end follows.
        self.assertEqual(os.read(readEnd, 100), RETIRE)
        self.assertEqual(os.read(readEnd, 100), b"")
