# -*- test-case-name: tests.test_workers -*-
"""
The entry point of a worker process (L{myserver.workers} starts them).

A module of its own, importing nothing but the standard library before it
has set C{LISTEN_PID}: Twisted reads the systemd socket-passing variables
once, when C{twisted.internet.endpoints} is first imported, so they must be
complete before anything imports it.
"""

import os
import sys


def main() -> None:
    """
    A worker: C{python -m myserver.worker CONFIG [TWISTD-OPTIONS]}, such as
    C{--reactor NAME}.  The listening sockets
    arrive as descriptors 3, 4, ... with LISTEN_FDS set by the parent; the
    systemd convention also wants LISTEN_PID to be this process, which only
    this process can know.
    """
    os.environ["LISTEN_PID"] = str(os.getpid())
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
