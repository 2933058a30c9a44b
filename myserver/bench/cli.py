# -*- test-case-name: tests.test_bench -*-
"""
C{myserver-bench [scenario ...] [options]}: start myserver and its peers,
load each the same way, interleave repetitions, report medians and ratios.

Scenarios: C{pingpong} (N connections each sending S bytes and waiting for
the whole echo, for T seconds), C{connect-rate} (N clients at once: connect,
send S bytes, half-close, read to EOF, close), C{idle-hold} (N idle
connections: server memory per connection), C{cost} (instructions per
echoed message under callgrind: two message counts, the difference divided
by the difference, so that start-up cancels out; needs valgrind),
C{syscalls} (system calls per echoed message under C{strace -c}).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from typing import Any

from myserver.bench import conntrack, native
from myserver.bench.load import LoadFailed, Result, WrongBytes, generate
from myserver.bench.progress import progress

SCENARIOS = ("pingpong", "connect-rate", "idle-hold", "cost", "syscalls")
_LISTENING = re.compile(r"listening on tcp:127\.0\.0\.1:(\d+)")


def availableServers() -> list[str]:
    servers = ["myserver", "twisted", "asyncio"]
    if find_spec("uvloop") is not None:
        servers.append("uvloop")
    return servers


def _cpus() -> tuple[set[int] | None, set[int] | None]:
    """
    The server's CPU and the load's, when there are two or more.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def serverCommand(kind: str, portFile: str, serverArgs: list[str]) -> list[str]:
    """
    The command that starts server C{kind}: C{myserver}, C{myserver@REACTOR}
    (myserver on a twistd C{--reactor}, or on asyncio over uvloop for
    C{myserver@uvloop}), or a peer from L{myserver.bench.peers}.
    """
    if kind.startswith("myserver"):
        reactor = kind.partition("@")[2]
        if reactor == "uvloop":
            twistd = [sys.executable, "-m", "myserver.bench.twistd_uvloop"]
        else:
            twistd = [os.path.join(os.path.dirname(sys.executable), "twistd")]
            if reactor:
                twistd += ["--reactor", reactor]
        return [
            *twistd, "-n", "--pidfile=", "myserver",
            "--listen", "tcp:0:interface=127.0.0.1:backlog=1024",
            *serverArgs,
        ]  # fmt: skip
    return [sys.executable, "-m", "myserver.bench.peers", kind, portFile]


@contextmanager
def running(
    kind: str, serverArgs: list[str], prefix: list[str] | None = None
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """
    Start a server, wait for its port, stop it afterwards.
    """
    serverCpu, _ = _cpus()
    if any(arg.startswith("--workers") for arg in serverArgs):
        # Workers are there to use every core: not pinned (the load then
        # shares the cores with them).
        serverCpu = None
    with tempfile.TemporaryDirectory() as scratch:
        portFile = os.path.join(scratch, "port")
        process = subprocess.Popen(
            [*(prefix or []), *serverCommand(kind, portFile, serverArgs)],
            cwd=scratch,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, serverCpu))
            if serverCpu
            else None,
        )
        try:
            yield _port(kind, process, portFile), process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _port(kind: str, process: subprocess.Popen[str], portFile: str) -> int:
    deadline = time.monotonic() + 300
    if kind.startswith("myserver"):
        assert process.stdout is not None
        for line in process.stdout:
            match = _LISTENING.search(line)
            if match:
                # Keep draining its output so that it never blocks on it.
                import threading

                threading.Thread(target=process.stdout.read, daemon=True).start()
                return int(match.group(1))
        raise RuntimeError("myserver exited before listening")
    while time.monotonic() < deadline:
        if os.path.exists(portFile):
            with open(portFile) as f:
                return int(f.read())
        if process.poll() is not None:
            raise RuntimeError(f"{kind} exited before listening")
        time.sleep(0.05)
    raise RuntimeError(f"{kind} never listened")


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpuSeconds(pid: int) -> float:
    """
    User and system CPU time of process C{pid} and of its descendants (a
    server's workers), from C{/proc}.
    """
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name, in parentheses, may contain spaces.
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, family = 0.0, {pid}
    for process in sorted(times):
        if process in family or parents.get(process) in family:
            family.add(process)
            total += times[process]
    return total


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def load(
    options: argparse.Namespace,
    scenario: str,
    port: int,
    count: int,
    size: int,
    seconds: float,
) -> Result:
    """
    Run C{scenario} on the load generator chosen (C{options.loadgen}: the
    C one's executable, or L{None} for the Python one), on the load's CPUs.

    @raise LoadFailed: nothing completed, or a connect-rate run found the
        kernel's connection tracking table full, before or after (its rate
        would be the firewall's: L{conntrack}).
    """
    _, loadCpus = _cpus()
    tracked = scenario == "connect-rate"
    if tracked:
        conntrack.checkRoom()
    if options.loadgen is None:
        result = generate(
            scenario, port, count, size, seconds, options.processes, loadCpus
        )
    else:
        threads = len(loadCpus) if loadCpus else 1
        result = native.generate(
            options.loadgen, scenario, port, count, size, seconds, threads, loadCpus
        )
    if tracked:
        conntrack.checkRoom()
    if not result.operations:
        raise LoadFailed(f"{scenario}: no operation completed in {seconds:g} s")
    return result


def chooseLoadGenerator(choice: str) -> str | None:
    """
    The C load generator's executable for C{--load c} (built now if need be),
    and for C{--load auto} when it builds here; L{None} for the Python one.

    @raise LoadFailed: C{--load c} and it cannot be built.
    """
    if choice == "python":
        return None
    try:
        return native.build()
    except LoadFailed as e:
        if choice == "c":
            raise
        print(f"myserver-bench: {e}; the Python load generator runs", file=sys.stderr)
        return None


def runLoad(kind: str, scenario: str, options: argparse.Namespace) -> dict[str, Any]:
    with running(kind, options.server_args) as (port, process):
        before = cpuSeconds(process.pid)
        result = load(
            options,
            scenario,
            port,
            options.connections,
            options.size,
            options.seconds,
        )
        used = cpuSeconds(process.pid) - before
    return {
        "rate": result.rate,
        "operations": result.operations,
        # What the server spent per operation, whatever limited the rate:
        # with a load generator near its own limit, the better measure.
        "server_cpu_us": used / result.operations * 1e6,
        "server_busy": used / result.seconds if result.seconds else 0,
        "p50_ms": percentile(result.latencies, 0.50) * 1000,
        "p99_ms": percentile(result.latencies, 0.99) * 1000,
        "verified": True,
    }


def runIdleHold(kind: str, options: argparse.Namespace) -> dict[str, Any]:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    count = min(options.connections, hard - 100)
    with running(kind, options.server_args) as (port, process):
        time.sleep(0.5)
        before = rss(process.pid)
        held = []
        for _ in range(count):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        time.sleep(1.0)
        during = rss(process.pid)
        for sock in held:
            sock.close()
    return {
        "connections": count,
        "bytes_per_connection": (during - before) / count if count else 0.0,
    }


def _pingpongCount(
    port: int, messages: int, size: int = 1024, connections: int = 10
) -> None:
    clients = [
        socket.create_connection(("127.0.0.1", port), timeout=600)
        for _ in range(connections)
    ]
    for client in clients:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = b"m" * size
    for _ in range(messages // connections):
        for client in clients:
            client.sendall(message)
        for client in clients:
            received = 0
            while received < size:
                data = client.recv(65536)
                if not data:
                    raise WrongBytes("server closed during the cost run")
                received += len(data)
    for client in clients:
        client.close()


def runCost(kind: str, options: argparse.Namespace) -> dict[str, Any]:
    """
    Instructions per echoed 1 KiB message, and per connection (the
    connect-rate flow, one client at a time), under callgrind.
    """
    # A first start may write caches (bytecode, Twisted's plugin cache)
    # that later starts only read: keep that out of the measured runs.
    with running(kind, options.server_args):
        pass
    messages = (2000, 6000) if not options.quick else (1000, 3000)
    connections = (200, 1400) if not options.quick else (100, 300)
    return {
        "instructions_per_message": _perOperation(
            kind, options, _pingpongCount, messages
        ),
        "instructions_per_connection": _perOperation(
            kind, options, _connectCount, connections
        ),
    }


def _perOperation(
    kind: str, options: argparse.Namespace, drive: Any, counts: tuple[int, int]
) -> float:
    """
    Instructions per operation: two runs under callgrind, C{drive(port,
    count)} for each count, the difference divided by the difference, so
    that start-up cancels out.
    """
    totals = []
    for count in counts:
        with tempfile.TemporaryDirectory() as scratch:
            out = os.path.join(scratch, "callgrind.out")
            # A fixed hash seed makes both runs' start-up the same work, so
            # that it cancels out exactly (with random seeds it varies by
            # millions of instructions).
            prefix = [
                "env", "PYTHONHASHSEED=0",
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            ]  # fmt: skip
            with running(kind, options.server_args, prefix) as (port, _):
                drive(port, count)
            totals.append(_callgrindTotal(out))
    return (totals[1] - totals[0]) / (counts[1] - counts[0])


def _callgrindTotal(path: str) -> int:
    with open(path) as f:
        summary = next(line for line in f if line.startswith(("summary:", "totals:")))
    return int(summary.split()[1])


def _connectCount(port: int, connections: int, size: int = 1024) -> None:
    """
    The connect-rate client flow, one client at a time: connect, send
    C{size} bytes, half-close, read to EOF, close.
    """
    payload = b"c" * size
    for _ in range(connections):
        with socket.create_connection(("127.0.0.1", port), timeout=600) as client:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            received = b""
            while data := client.recv(65536):
                received += data
            if received != payload:
                raise WrongBytes("connect-count echo differs")


# Scenarios that run the server under a tool, and the tool.
NEEDS_TOOL = {"cost": "valgrind", "syscalls": "strace"}


def _straced(pid: int, load: Any) -> tuple[dict[str, int], Any]:
    """
    Run C{load()} with C{strace -c -f} attached to process C{pid}.

    @return: the calls counted, by system call, and what C{load} returned.
    """
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "strace")
        tracer = subprocess.Popen(
            ["strace", "-c", "-f", "-o", out, "-p", str(pid)],
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.0)
            result = load()
            time.sleep(0.3)
        finally:
            # Also when the load fails: strace must not outlive the run.
            tracer.send_signal(signal.SIGINT)
            tracer.wait(60)
        calls: dict[str, int] = {}
        with open(out) as f:
            for line in f:
                fields = line.split()
                # % time, seconds, usecs/call, calls, [errors,] syscall
                if len(fields) >= 5 and fields[0][0].isdigit():
                    if fields[-1] != "total":
                        calls[fields[-1]] = int(fields[3])
    return calls, result


def runSyscalls(kind: str, options: argparse.Namespace) -> dict[str, Any]:
    """
    System calls per echoed 1 KiB message (pingpong over 10 connections)
    and per connection (the connect-rate flow: 32 clients at once from the
    load generator, and one at a time), counted by C{strace -c -f} attached
    to the server, with the calls per connection listed by name.
    """
    messages = 2000 if options.quick else 20000
    with running(kind, options.server_args) as (port, process):
        _pingpongCount(port, 100)
        calls, _ = _straced(process.pid, lambda: _pingpongCount(port, messages))
        perMessage = sum(calls.values()) / messages
        calls, result = _straced(
            process.pid,
            lambda: load(
                options, "connect-rate", port, 32, 1024, 1.0 if options.quick else 3.0
            ),
        )
        done = result.operations
        one = 100 if options.quick else 1000
        alone, _ = _straced(process.pid, lambda: _connectCount(port, one))
    return {
        "syscalls_per_message": perMessage,
        "syscalls_per_connection": sum(calls.values()) / done,
        "syscalls_per_connection_alone": sum(alone.values()) / one,
        "syscalls_by_name": {
            name: round(count / done, 2)
            for name, count in sorted(calls.items(), key=lambda item: -item[1])
            if count / done >= 0.01
        },
    }


def plot(report: dict[str, Any], path: str) -> bool:
    """
    Bars of myserver's ratio to each peer, per scenario (matplotlib, from
    the [bench] extra).

    @return: whether a plot was written.
    """
    from importlib import import_module

    try:
        import_module("matplotlib").use("Agg")
        plt: Any = import_module("matplotlib.pyplot")
    except ImportError:
        print("no plot: matplotlib is not installed", file=sys.stderr)
        return False
    scenarios = [
        (name, data["metric"], data["ratio_of_myserver_to"])
        for name, data in report["scenarios"].items()
        if data["ratio_of_myserver_to"]
    ] + [
        (name, key.rpartition("_by_")[2], data[key])
        for name, data in report["scenarios"].items()
        for key in data
        if key.startswith("ratio_of_myserver_to_by_") and data[key]
    ]
    # myserver against uvloop on every measure at once: throughput higher
    # is better, every other measure (a cost) lower.  A panel of its own
    # across the figure's width, one horizontal bar per measure, so that
    # the measures' names stay legible however many there are.
    againstUvloop = {
        f"{row['scenario']}: {row['measure']}": (
            row["ratio_to_uvloop"]["myserver"],
            row["measure"] == "rate",
        )
        for row in report.get("by_server", [])
        if "myserver" in row["ratio_to_uvloop"] and row["measure"] != "server_busy"
    }
    columns = max(1, min(4, len(scenarios)))
    rows = max(1, -(-len(scenarios) // columns))
    summaryHeight = 0.3 * len(againstUvloop) + 1.0 if againstUvloop else 0.0
    figure = plt.figure(figsize=(4.2 * columns, 3.8 * rows + summaryHeight))
    grid = figure.add_gridspec(
        rows + bool(againstUvloop),
        columns,
        height_ratios=[3.8] * rows + ([summaryHeight] if againstUvloop else []),
    )
    for index, (name, metric, byPeer) in enumerate(scenarios):
        axis = figure.add_subplot(grid[index // columns, index % columns])
        peers = list(byPeer)
        ratios = [byPeer[p] for p in peers]
        colours = [
            "tab:green" if (r >= 1) == (metric == "rate") else "tab:red" for r in ratios
        ]
        axis.bar(peers, ratios, color=colours)
        axis.axhline(1.0, color="black", linewidth=0.8)
        better = "higher" if metric == "rate" else "lower"
        axis.set_title(
            f"{name}: myserver / peer\n({metric}, {better} is better)", fontsize=9
        )
        axis.tick_params(axis="x", labelrotation=30)
        axis.set_ylim(0, max([*ratios, 1.0]) * 1.15)
        for x, ratio in enumerate(ratios):
            axis.text(x, ratio, f"{ratio:.2f}", ha="center", va="bottom")
    if againstUvloop:
        axis = figure.add_subplot(grid[rows, :])
        labels = list(againstUvloop)[::-1]
        ratios = [againstUvloop[label][0] for label in labels]
        colours = [
            "tab:green" if (ratio >= 1) == againstUvloop[label][1] else "tab:red"
            for label, ratio in zip(labels, ratios, strict=True)
        ]
        axis.barh(labels, ratios, color=colours)
        axis.axvline(1.0, color="black", linewidth=0.8)
        axis.set_title(
            "myserver / uvloop, every measure (rates: higher is better; costs: lower)"
        )
        axis.set_xlim(0, max([*ratios, 1.0]) * 1.12)
        for y, ratio in enumerate(ratios):
            axis.text(ratio, y, f" {ratio:.2f}", va="center")
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="myserver-bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", default=["pingpong", "connect-rate"])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--processes", type=int, default=max(1, (os.cpu_count() or 2) - 1)
    )
    parser.add_argument(
        "--servers",
        default=",".join(availableServers()),
        help="comma-separated: myserver, twisted, asyncio, uvloop, and "
        "myserver@REACTOR (a twistd --reactor name, or uvloop: Twisted's "
        "asyncio reactor on a uvloop loop)",
    )
    parser.add_argument("--server-args", default="", help="extra myserver options")
    parser.add_argument(
        "--load",
        choices=("auto", "c", "python"),
        default="auto",
        help="the load generator: c (built with the machine's C compiler; "
        "keeps the server's core busy), python (asyncio processes), or auto "
        "(c when there is a compiler)",
    )
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--plot", help="write a PNG of the ratios to this file")
    parser.add_argument("--quick", action="store_true", help="a tiny run, for CI")
    parser.add_argument(
        "--combine",
        nargs="+",
        metavar="JSON",
        help="run nothing: combine reports saved with --json into one table "
        "(and --plot, --json)",
    )
    options = parser.parse_args(argv)
    if options.combine:
        return publish(combine(options.combine), options)
    options.server_args = options.server_args.split()
    if options.quick:
        options.seconds, options.repeat = 1.0, 1
        options.connections = min(options.connections, 10)
    servers = [s for s in options.servers.split(",") if s]
    unknown = [s for s in options.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario {unknown[0]!r} (choose from {', '.join(SCENARIOS)})"
        )
    for scenario, tool in NEEDS_TOOL.items():
        if scenario in options.scenarios and shutil.which(tool) is None:
            parser.error(
                f"the {scenario} scenario needs {tool}, which is not installed"
            )
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    runs = [
        (scenario, server)
        for scenario in options.scenarios
        for _ in range(
            options.repeat if scenario in ("pingpong", "connect-rate") else 1
        )
        for server in servers
    ]
    try:
        options.loadgen = chooseLoadGenerator(options.load)
    except LoadFailed as e:
        print(f"myserver-bench: error: {e}", file=sys.stderr)
        return 2
    try:
        with progress(len(runs)) as shown:
            for scenario, server in runs:
                shown.start(f"{scenario}: {server}")
                if scenario == "idle-hold":
                    measured = runIdleHold(server, options)
                elif scenario == "cost":
                    measured = runCost(server, options)
                elif scenario == "syscalls":
                    measured = runSyscalls(server, options)
                else:
                    measured = runLoad(server, scenario, options)
                results.setdefault(scenario, {}).setdefault(server, []).append(measured)
                shown.finish()
    except WrongBytes as e:
        print(f"myserver-bench: error: wrong bytes echoed: {e}", file=sys.stderr)
        return 1
    except LoadFailed as e:
        print(f"myserver-bench: error: {e}", file=sys.stderr)
        return 1
    return publish(summarise(results, options), options)


def publish(summary: dict[str, Any], options: argparse.Namespace) -> int:
    """
    Print C{summary} as a table, with every measure side by side per server
    and its ratio to uvloop's (L{byServer}), and save it as JSON and a plot if
    asked.
    """
    summary["by_server"] = byServer(summary)
    print(table(summary))
    print(byServerTable(summary["by_server"]))
    if options.json:
        with open(options.json, "w") as f:
            json.dump(summary, f, indent=2)
    if options.plot and not plot(summary, options.plot):
        return 1
    return 0


def combine(paths: list[str]) -> dict[str, Any]:
    """
    One summary from several saved ones; a load scenario is named with its
    connections and size, which differ between runs.
    """
    combined: dict[str, Any] = {"settings": {"combined": paths}, "scenarios": {}}
    for path in paths:
        with open(path) as f:
            saved = json.load(f)
        settings = saved["settings"]
        for name, data in saved["scenarios"].items():
            if data["metric"] == "rate":
                name = f"{name} {settings['connections']} x {settings['size']} B"
            combined["scenarios"][name] = data
    return combined


def summarise(
    results: dict[str, dict[str, list[dict[str, Any]]]], options: argparse.Namespace
) -> dict[str, Any]:
    """
    Medians over repetitions, and myserver's ratio to each peer.
    """
    report: dict[str, Any] = {
        "settings": {
            "connections": options.connections,
            "size": options.size,
            "seconds": options.seconds,
            "repeat": options.repeat,
            "cpus": len(os.sched_getaffinity(0)),
            "load": "python" if options.loadgen is None else "c",
        },
        "scenarios": {},
    }
    for scenario, byServer in results.items():
        medians = {
            server: {
                key: statistics.median(run[key] for run in runs)
                for key in runs[0]
                if isinstance(runs[0][key], int | float)
                and not isinstance(runs[0][key], bool)
            }
            | {key: value for key, value in runs[0].items() if isinstance(value, dict)}
            | {"verified": all(run.get("verified", True) for run in runs)}
            for server, runs in byServer.items()
            if runs
        }
        metric = {
            "pingpong": "rate",
            "connect-rate": "rate",
            "idle-hold": "bytes_per_connection",
            "cost": "instructions_per_message",
            "syscalls": "syscalls_per_message",
        }[scenario]
        report["scenarios"][scenario] = {
            "metric": metric,
            "servers": medians,
            "ratio_of_myserver_to": _ratios(medians, metric),
        }
        secondary = {
            "rate": "server_cpu_us",
            "cost": "instructions_per_connection",
            "syscalls": "syscalls_per_connection",
        }.get(metric if metric == "rate" else scenario)
        if secondary:
            report["scenarios"][scenario][f"ratio_of_myserver_to_by_{secondary}"] = (
                _ratios(medians, secondary)
            )
        if metric == "rate":
            report["scenarios"][scenario]["cpu_ratio_of_myserver_to"] = _ratios(
                medians, "server_cpu_us"
            )
    return report


# The measures shown side by side, per scenario: key, label, unit.
_MEASURES = (
    ("rate", "throughput", "/s"),
    ("server_cpu_us", "server CPU per operation", "us"),
    ("server_busy", "server's core busy", ""),
    ("syscalls_per_message", "system calls per echoed message", ""),
    ("syscalls_per_connection", "system calls per connection", ""),
    ("syscalls_per_connection_alone", "system calls per connection, one at a time", ""),
    ("instructions_per_message", "instructions per echoed message", ""),
    ("instructions_per_connection", "instructions per connection", ""),
    ("bytes_per_connection", "memory per idle connection", "B"),
)  # fmt: skip


def byServer(report: dict[str, Any]) -> list[dict[str, Any]]:
    """
    Every measure of every scenario, one row each: each server's value and
    its ratio to uvloop's (when uvloop ran), so that a peer's throughput,
    CPU, system calls and instructions per operation read side by side.
    """
    rows = []
    for scenario, data in report["scenarios"].items():
        servers = data["servers"]
        for key, label, unit in _MEASURES:
            values = {
                server: measured[key]
                for server, measured in servers.items()
                if key in measured
            }
            if not values:
                continue
            reference = values.get("uvloop")
            rows.append(
                {
                    "scenario": scenario,
                    "measure": key,
                    "label": label,
                    "unit": unit,
                    "values": values,
                    "ratio_to_uvloop": {
                        server: value / reference for server, value in values.items()
                    }
                    if reference
                    else {},
                    # Under 90 % of its core, a server's rate is the load
                    # generator's: compare its CPU per operation instead.
                    "client_bound": sorted(
                        server
                        for server, measured in servers.items()
                        if key == "rate" and measured.get("server_busy", 1) < 0.9
                    ),
                }
            )
    return rows


def byServerTable(rows: list[dict[str, Any]]) -> str:
    """
    L{byServer}'s rows as text: one line per measure, one column per
    server, each value with its ratio to uvloop's.
    """
    servers: list[str] = []
    for row in rows:
        servers += [s for s in row["values"] if s not in servers]
    lines = ["every measure, per server (x uvloop; * client-bound: see CPU/op)"]
    lines.append(f"  {'':<58}" + "".join(f"{s:>22}" for s in servers))
    for row in rows:
        cells = ""
        for server in servers:
            value = row["values"].get(server)
            if value is None:
                cells += f"{'-':>22}"
                continue
            shown = f"{value:.0%}" if row["measure"] == "server_busy" else _short(value)
            ratio = row["ratio_to_uvloop"].get(server)
            if ratio is not None and server != "uvloop":
                shown += f" ({ratio:.2f}x)"
            if server in row["client_bound"]:
                shown += "*"
            cells += f"{shown:>22}"
        unit = f" ({row['unit']})" if row["unit"] else ""
        lines.append(f"  {row['scenario'] + ': ' + row['label'] + unit:<58}{cells}")
    return "\n".join(lines)


def _short(value: float) -> str:
    if abs(value) >= 10000:
        return f"{value / 1000:.1f}k"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def _ratios(medians: dict[str, dict[str, Any]], key: str) -> dict[str, float]:
    """
    myserver's C{key} divided by each other server's.
    """
    if "myserver" not in medians:
        return {}
    mine = medians["myserver"][key]
    return {
        server: mine / values[key]
        for server, values in medians.items()
        if server != "myserver" and values[key]
    }


def table(report: dict[str, Any]) -> str:
    """
    One block per scenario, one line per server: the scenario's figure,
    every other figure measured, and myserver's ratio to that server (on
    rates, "client-bound?" where the server used under 90 % of its core:
    then its CPU per operation is the figure to compare).
    """
    lines = []
    if "load" in report["settings"]:
        lines.append(f"load generator: {report['settings']['load']}")
    for scenario, data in report["scenarios"].items():
        lines.append(f"{scenario} ({data['metric']}, median)")
        for server, values in data["servers"].items():
            extra = ""
            if "p50_ms" in values:
                bound = "  client-bound?" if values["server_busy"] < 0.9 else ""
                extra = (
                    f"  p50 {values['p50_ms']:.2f} ms  p99 {values['p99_ms']:.2f} ms"
                    f"  server CPU {values['server_cpu_us']:.1f} us/op"
                    f" ({values['server_busy']:.0%} of its core){bound}"
                )
            for key, value in values.items():
                if key == data["metric"] or key in _SHOWN_WITH_RATE:
                    continue
                if isinstance(value, float | int) and not isinstance(value, bool):
                    extra += f"  {key} {value:.2f}"
                elif isinstance(value, dict):
                    listed = " ".join(f"{k}={v}" for k, v in value.items())
                    extra += f"\n      {key}: {listed}"
            ratio = data["ratio_of_myserver_to"].get(server)
            shown = f"  myserver/{server} = {ratio:.2f}" if ratio else ""
            cpu = data.get("cpu_ratio_of_myserver_to", {}).get(server)
            if cpu:
                shown += f" (CPU/op {cpu:.2f})"
            lines.append(
                f"  {server:<16} {values[data['metric']]:>12.2f}{shown}{extra}"
            )
    return "\n".join(lines)


_SHOWN_WITH_RATE = {
    "p50_ms", "p99_ms", "server_cpu_us", "server_busy", "verified", "operations",
}  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
