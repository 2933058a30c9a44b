# -*- test-case-name: tests.test_upgrade -*-
"""
The entry point of a new generation at a live upgrade
(L{myserver.upgrade} starts it): C{python -m myserver.successor
TWISTD-ARGUMENTS}, the old generation's own twistd command line.

A module of its own, importing nothing but the standard library before it
has set C{LISTEN_PID} (as L{myserver.worker} does, for the same reason):
sockets that systemd passed to the first generation are passed on at the
same numbers with the same C{LISTEN_FDS} and C{LISTEN_FDNAMES}, and the
convention wants C{LISTEN_PID} to be this process, which only this process
can know.
"""

import os
import sys


def main() -> None:
    if "LISTEN_FDS" in os.environ:
        os.environ["LISTEN_PID"] = str(os.getpid())
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
