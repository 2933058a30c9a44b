# -*- test-case-name: tests.test_cli,tests.test_check -*-
"""
C{python -m myserver ARGS} and the C{myserver} command: the same as
C{twistd -n --pidfile= myserver ARGS} (in the foreground, no pid file).

The commands beside serving are the first word: C{myserver check
PROTOCOL} (L{myserver.check}), C{myserver new-plugin NAME}
(L{myserver.scaffold}) and C{myserver status} (L{myserver.statuscmd}).
"""

import sys
from importlib import import_module

COMMANDS = {
    "check": "myserver.check",
    "new-plugin": "myserver.scaffold",
    "status": "myserver.statuscmd",
}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        import_module(COMMANDS[sys.argv[1]]).main(sys.argv[2:])
        return
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", "-n", "--pidfile=", "myserver", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
