"""
myserver-bench, in a short run: every server gets results, bytes are
verified, ratios are reported; a server that echoes a wrong byte is caught.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from myserver.bench import conntrack, native
from myserver.bench.load import LoadFailed, WrongBytes, generate
from tests.support import processTest, requireTool


def echoServer(corrupt: bool = False) -> tuple[int, threading.Event]:
    """
    An echo server on loopback, a thread per client, that closes after the
    client's EOF once everything is echoed; with C{corrupt}, it changes the
    last byte of each piece it sends back.

    @return: its port, and the event that stops it.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serveOne(client: socket.socket) -> None:
        with client:
            client.settimeout(5)
            try:
                while data := client.recv(65536):
                    if corrupt:
                        data = data[:-1] + bytes([data[-1] ^ 1])
                    client.sendall(data)
            except OSError:
                pass

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serveOne, args=(client,), daemon=True).start()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], stop


BENCH = os.path.join(os.path.dirname(sys.executable), "myserver-bench")
PNG = b"\x89PNG\r\n\x1a\n"


@processTest
class BenchTests(TestCase):
    def bench(self, *args: str) -> tuple[dict[str, Any], str, str]:
        """
        Run myserver-bench; return its JSON report, output and errors.
        """
        out = os.path.abspath(self.mktemp())
        result = subprocess.run(
            [BENCH, *args, "--quick", "--json", out],
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(out) as f:
            return json.load(f), result.stdout, result.stderr

    def test_quickRun(self) -> None:
        """
        Every server gets verified rates and myserver a ratio to each, the
        uvloop peer and myserver on Twisted's asyncio reactor over uvloop
        among them; the runs are announced one line each, counted.
        """
        servers = {"myserver", "twisted", "asyncio", "uvloop", "myserver@uvloop"}
        report, out, err = self.bench(
            "pingpong", "connect-rate", "--servers", ",".join(sorted(servers))
        )
        for scenario in ("pingpong", "connect-rate"):
            data = report["scenarios"][scenario]
            self.assertEqual(set(data["servers"]), servers)
            for values in data["servers"].values():
                self.assertGreater(values["rate"], 0)
                self.assertTrue(values["verified"])
            self.assertEqual(set(data["ratio_of_myserver_to"]), servers - {"myserver"})
        self.assertIn("myserver/twisted", out)
        self.assertEqual(
            report["settings"]["load"], "c" if native.compiler() else "python"
        )
        # Every measure side by side, each server's against uvloop's.
        measures = {(r["scenario"], r["measure"]): r for r in report["by_server"]}
        for scenario in ("pingpong", "connect-rate"):
            for measure in ("rate", "server_cpu_us"):
                row = measures[scenario, measure]
                self.assertEqual(set(row["values"]), servers)
                self.assertEqual(row["ratio_to_uvloop"]["uvloop"], 1.0)
                self.assertAlmostEqual(
                    row["ratio_to_uvloop"]["myserver"],
                    row["values"]["myserver"] / row["values"]["uvloop"],
                )
        self.assertIn("every measure, per server", out)
        self.assertIn("connect-rate: server CPU per operation (us)", out)
        self.assertIn("[1/10] pingpong: asyncio...", err)
        self.assertIn("[10/10] connect-rate: uvloop...", err)

    def test_syscallsAndPlot(self) -> None:
        """
        System calls per message under strace, for myserver and a peer on
        another reactor, and the plot of the ratio.
        """
        requireTool("strace")
        plot = os.path.abspath(self.mktemp())
        report, _, _ = self.bench(
            "syscalls", "--servers", "myserver,myserver@epoll", "--plot", plot
        )
        data = report["scenarios"]["syscalls"]
        for values in data["servers"].values():
            self.assertGreater(values["syscalls_per_message"], 1.0)
        self.assertIn("myserver@epoll", data["ratio_of_myserver_to"])
        with open(plot, "rb") as f:
            self.assertEqual(f.read(8), PNG)

    def test_combine(self) -> None:
        """
        Saved reports of runs with different settings combine into one
        table and plot, each load scenario named with its settings.
        """
        paths = []
        for connections, size, rates in [(1, 64, (10.0, 5.0)), (100, 1024, (9, 3))]:
            path = os.path.abspath(self.mktemp())
            servers = {"myserver": {"rate": rates[0]}, "twisted": {"rate": rates[1]}}
            saved = {
                "settings": {"connections": connections, "size": size},
                "scenarios": {
                    "pingpong": {
                        "metric": "rate",
                        "servers": servers,
                        "ratio_of_myserver_to": {"twisted": rates[0] / rates[1]},
                    }
                },
            }
            with open(path, "w") as f:
                json.dump(saved, f)
            paths.append(path)
        plot = os.path.abspath(self.mktemp())
        result = subprocess.run(
            [BENCH, "--combine", *paths, "--plot", plot],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("pingpong 1 x 64 B", result.stdout)
        self.assertIn("pingpong 100 x 1024 B", result.stdout)
        self.assertIn("myserver/twisted = 2.00", result.stdout)
        self.assertIn("myserver/twisted = 3.00", result.stdout)
        with open(plot, "rb") as f:
            self.assertEqual(f.read(8), PNG)

    def test_cost(self) -> None:
        """
        Instructions per message under callgrind: the difference of two
        runs, so a positive count that start-up does not swamp.
        """
        requireTool("valgrind")
        report, _, _ = self.bench("cost", "--servers", "myserver")
        cost = report["scenarios"]["cost"]["servers"]["myserver"]
        self.assertGreater(cost["instructions_per_message"], 1000)

    def test_progressBarOnTerminal(self) -> None:
        """
        On a terminal (script(1) gives it one), a rich progress bar shows
        the run in progress and how many are done.
        """
        script = requireTool("script")
        result = subprocess.run(
            [script, "-qec", f"{BENCH} pingpong --quick --servers myserver",
             "/dev/null"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertIn("pingpong: myserver", result.stdout)
        self.assertIn("1/1", result.stdout)
        self.assertIn("\u2501", result.stdout)  # the bar
        self.assertNotIn("[1/1]", result.stdout)  # not the line form

    def test_wrongByteFailsLoudly(self) -> None:
        port, stop = echoServer(corrupt=True)
        self.addCleanup(stop.set)
        with self.assertRaises(WrongBytes):
            generate("pingpong", port, 1, 64, 0.5, 1)

    def test_pythonLoad(self) -> None:
        """
        C{--load python} runs the asyncio load generator, and says so.
        """
        report, out, _ = self.bench(
            "pingpong", "--servers", "myserver", "--load", "python"
        )
        self.assertEqual(report["settings"]["load"], "python")
        self.assertIn("load generator: python", out)
        self.assertGreater(
            report["scenarios"]["pingpong"]["servers"]["myserver"]["rate"], 0
        )


class NativeLoadTests(TestCase):
    """
    The C load generator, built from the package's source with the machine's
    C compiler, against real echo servers on loopback.
    """

    def setUp(self) -> None:
        requireTool("cc")
        self.executable = native.build(os.path.abspath(self.mktemp()))

    def test_bothScenarios(self) -> None:
        """
        Against a correct echo server, both scenarios complete operations,
        with latency samples; the build is made once and then reused.
        """
        port, stop = echoServer()
        self.addCleanup(stop.set)
        for scenario in ("pingpong", "connect-rate"):
            result = native.generate(self.executable, scenario, port, 4, 1024, 0.5, 1)
            self.assertGreater(result.operations, 16, scenario)
            self.assertTrue(result.latencies, scenario)
            self.assertTrue(all(0 < latency < 10 for latency in result.latencies))
        self.assertEqual(
            native.build(os.path.dirname(self.executable)), self.executable
        )

    def test_wrongByteFailsLoudly(self) -> None:
        """
        An echo one byte off fails the run, in either scenario.
        """
        port, stop = echoServer(corrupt=True)
        self.addCleanup(stop.set)
        for scenario in ("pingpong", "connect-rate"):
            with self.assertRaises(WrongBytes, msg=scenario):
                native.generate(self.executable, scenario, port, 1, 64, 2.0, 1)


class ConntrackTests(TestCase):
    """
    The check of the kernel's connection tracking table around connect-rate
    runs, on a directory laid out as C{/proc/sys/net/netfilter}.
    """

    def table(self, count: int, limit: int) -> Path:
        proc = Path(self.mktemp())
        proc.mkdir()
        (proc / "nf_conntrack_count").write_text(f"{count}\n")
        (proc / "nf_conntrack_max").write_text(f"{limit}\n")
        return proc

    def test_untracked(self) -> None:
        """
        Without connection tracking there is nothing to check.
        """
        missing = Path(self.mktemp())
        self.assertIsNone(conntrack.usage(missing))
        conntrack.checkRoom(missing)

    def test_room(self) -> None:
        proc = self.table(1000, 262144)
        self.assertEqual(conntrack.usage(proc), (1000, 262144))
        conntrack.checkRoom(proc)

    def test_full(self) -> None:
        """
        A (nearly) full table fails the run, with the counts and a way to
        make room.
        """
        with self.assertRaises(LoadFailed) as raised:
            conntrack.checkRoom(self.table(250000, 262144))
        message = str(raised.exception)
        self.assertIn("250000 of 262144", message)
        self.assertIn("nf_conntrack_tcp_timeout_time_wait", message)
