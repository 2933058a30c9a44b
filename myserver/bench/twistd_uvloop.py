# -*- test-case-name: tests.test_bench -*-
"""
C{python -m myserver.bench.twistd_uvloop TWISTD-ARGS}: twistd on Twisted's
asyncio reactor over a uvloop event loop.  (C{twistd --reactor asyncio}
takes the standard library's loop; nothing in twistd names uvloop.)  The
bench runs myserver this way as C{myserver@uvloop}, to compare reactors.
"""

import sys


def main() -> None:
    from importlib import import_module

    from twisted.internet import asyncioreactor

    asyncioreactor.install(import_module("uvloop").new_event_loop())
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
