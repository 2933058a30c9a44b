# -*- test-case-name: tests.test_workers -*-
"""
The entry point of a worker process (L{myserver.workers} starts them).

A module of its own, importing nothing but the standard library before it
has set C{LISTEN_PID}: Twisted reads the systemd socket-passing variables
once, when C{twisted.internet.endpoints} is first imported, so they must be
complete before anything imports it.
"""

import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def dieWithParent(supervisor: int) -> bool:
    """
    On Linux, ask the kernel for a SIGTERM (a drain, as from an operator)
    when the parent dies: belt and braces beside the supervisor's pipe
    (L{myserver.workers.SupervisorWatch}), which works everywhere.

    @param supervisor: the pid of the supervisor that started this worker.
    @return: whether the supervisor is still this process's parent; a
        parent that died before the request would never send it.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == supervisor


def main() -> None:
    """
    A worker: C{python -m myserver.worker CONFIG [TWISTD-OPTIONS]}, such as
    C{--reactor NAME}.  The listening sockets
    arrive as descriptors 3, 4, ... with LISTEN_FDS set by the parent; the
    systemd convention also wants LISTEN_PID to be this process, which only
    this process can know.
    """
    os.environ["LISTEN_PID"] = str(os.getpid())
    supervisor = int(os.environ.get("MYSERVER_SUPERVISOR", os.getppid()))
    if not dieWithParent(supervisor):
        sys.stderr.write(
            f"myserver: worker: the supervisor (pid {supervisor}) is gone; "
            "not starting\n"
        )
        raise SystemExit(1)
    # A process group of its own: a Ctrl-C in a terminal reaches only the
    # parent, which tells each worker once; two signals would end a drain.
    os.setpgid(0, 0)
    from twisted.scripts.twistd import run

    config, *twistdOptions = sys.argv[1:]
    sys.argv = [
        "twistd", "-n", "--pidfile=", *twistdOptions, "myserver", "--config", config
    ]  # fmt: skip
    run()


if __name__ == "__main__":
    main()
