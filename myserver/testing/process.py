# -*- test-case-name: tests.test_testing -*-
"""
A real C{myserver} process, for what needs one: signals, resource limits,
workers, memory.

L{ServerProcess} runs C{twistd -n --pidfile= myserver ...} from a scratch
working directory (no C{twistd.pid} or log lands anywhere), in a process
group of its own, reads the bound ports from its log, and on L{kill} ends
the whole group and every descendant, never only the parent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from signal import SIGINT, SIGKILL, SIGTERM, SIGUSR2
from typing import Any

LOOPBACK = "tcp:0:interface=127.0.0.1"
_LISTENING = re.compile(r"listening on (tcp6?|udp6?):\[?([^\]\s]+?)\]?:(\d+) ")
_SERVING = re.compile(r"generation (\d+) \(pid (\d+)\) is serving")
_REFUSED = re.compile(r"upgrade refused: .*")


# Set in the environment of every process a ServerProcess starts; inherited
# by whatever those start (workers, helpers), even once they are orphaned,
# so that all of them can be found and ended.  Not MYSERVER_*: the worker
# supervisor does not pass those on.
PROCESS_MARK = "TESTKIT_PROCESS"


def markedProcesses(name: str, value: str) -> list[int]:
    """
    The live processes whose environment sets C{name} to C{value}, read
    from C{/proc}: this process and its ancestors excluded.
    """
    wanted = f"{name}={value}".encode()
    found = []
    ours = _ancestry()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ours:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if wanted in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _ancestry() -> set[int]:
    pids = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
    return pids


def commandLine(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def endProcesses(pids: Sequence[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, SIGKILL)
        except ProcessLookupError:
            pass


def listenerArguments(protocol: str, options: Mapping[str, Any]) -> list[str]:
    """
    The command-line options that serve C{protocol} on loopback (C{tcp:0}),
    with a listener's protocol C{options} (each read back as TOML).
    """
    args = ["--listen", f"{protocol}={LOOPBACK}"]
    for key, value in options.items():
        args += ["--option", f"{key}={json.dumps(value)}"]
    return args


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
            env=cleanEnvironment(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def cleanEnvironment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """
    This process's environment without its C{MYSERVER_*} settings (so that
    they do not leak into a server under test), plus C{extra}.
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MYSERVER_")}
    environ.update(extra or {})
    return environ


class ServerProcess:
    """
    A C{twistd -n myserver} child process.

    @ivar addresses: (host, port) of each listener, in the order logged
        by the first generation.
    @ivar lines: every line the server wrote to standard output so far.
    @ivar generations: the pid of each generation, the first first; more
        after each live upgrade (L{upgrade}).
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
        self.generations: list[int] = []
        self._outputEnded = False
        self._stopRequested = False
        self._changed = threading.Condition()
        self._scratch = tempfile.TemporaryDirectory()
        self.mark = f"{os.getpid()}-{id(self)}-{time.monotonic_ns()}"

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def pid(self) -> int:
        """
        The pid of the generation serving now.
        """
        return self.generations[-1] if self.generations else self.process.pid

    def start(self, timeout: float = 30) -> ServerProcess:
        if self.launcher is None:
            command = myserverCommand(*self.args, twistdArgs=self.twistdArgs)
        else:
            command = [*self.launcher, "myserver", *self.args]
        self.process = subprocess.Popen(
            command,
            cwd=self._scratch.name,
            env=cleanEnvironment(self.env) | {PROCESS_MARK: self.mark},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=self.preexec,
            # A process group of its own, so that kill() can end the whole
            # group, whatever the server started.
            start_new_session=True,
        )
        self.generations = [self.process.pid]
        threading.Thread(target=self._read, daemon=True).start()
        self.waitFor(lambda: len(self.addresses) >= self.expected, timeout)
        return self

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                match = _LISTENING.search(line)
                if match and len(self.generations) == 1:
                    self.addresses.append((match.group(2), int(match.group(3))))
                serving = _SERVING.search(line)
                if serving and int(serving.group(1)) == len(self.generations) + 1:
                    self.generations.append(int(serving.group(2)))
                self._changed.notify_all()
        with self._changed:
            # Every generation has closed its output: all have ended.
            self._outputEnded = True
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
                if self._ended() and not condition():
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

    def _ended(self) -> bool:
        """
        Whether the server is gone: the first generation exited, and no
        later one holds its output open.
        """
        return self.process.poll() is not None and (
            len(self.generations) == 1 or self._outputEnded
        )

    def signal(self, signum: int) -> None:
        """
        Send C{signum} to the generation serving now.
        """
        if signum in (SIGTERM, SIGINT):
            self._stopRequested = True
        if self.pid == self.process.pid:
            self.process.send_signal(signum)
        else:
            os.kill(self.pid, signum)

    def upgrade(self, timeout: float = 60) -> int | None:
        """
        A live upgrade: send SIGUSR2 to the generation serving now and wait
        until the next one serves, or the upgrade is refused.

        @return: the new generation's pid, or L{None} when the upgrade was
            refused (the reason is the last C{upgrade refused} line of
            L{output}).
        """
        generations = len(self.generations)
        refusals = len(_REFUSED.findall(self.output))
        self.signal(SIGUSR2)
        self.waitFor(
            lambda: (
                len(self.generations) > generations
                or len(_REFUSED.findall(self.output)) > refusals
            ),
            timeout,
        )
        return self.pid if len(self.generations) > generations else None

    def stop(self, signum: int = SIGTERM, timeout: float = 60) -> int:
        """
        Send C{signum} and wait for the server to exit.

        @return: its exit status.  After a live upgrade, the generation
            serving is not this process's child, and its status cannot be
            read: then 0 once it has ended having logged twistd's clean
            shutdown last, else 1.
        """
        # A stop already asked for is not asked again: a second signal
        # would end the drain, or arrive after the handlers are gone.
        if not self._ended() and not self._stopRequested:
            self.signal(signum)
        try:
            if len(self.generations) == 1:
                return self.process.wait(timeout)
            self.waitFor(self._ended, timeout)
            last = [line for line in self.lines if line.strip()][-1:]
            return 0 if last and "Server Shut Down." in last[0] else 1
        finally:
            self.kill()

    def kill(self) -> None:
        """
        End the server and everything it started, at once: its process
        group, and any descendant that moved to a group of its own (workers
        do, so that a terminal's Ctrl-C reaches only their supervisor).
        """
        try:
            os.killpg(self.process.pid, SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        endProcesses(markedProcesses(PROCESS_MARK, self.mark))
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
