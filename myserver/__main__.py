# -*- test-case-name: tests.test_cli -*-
"""
C{python -m myserver ARGS} and the C{myserver} command: the same as
C{twistd -n --pidfile= myserver ARGS} (in the foreground, no pid file).
"""

import sys


def main() -> None:
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", "-n", "--pidfile=", "myserver", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
