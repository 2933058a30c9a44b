# -*- test-case-name: tests.test_scaffold -*-
"""
C{myserver new-plugin NAME [DIR]}: write a ready protocol plugin package.

What it writes installs as it is (C{pip install DIR}), passes C{myserver
check NAME} and its own tests, which use L{myserver.testing}: a protocol
that answers each line in upper case, to be changed into the real one.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "myserver-{name}"
version = "0.1.0"
description = "The {name} protocol for myserver."
requires-python = ">=3.11"
dependencies = ["myserver"]

[project.optional-dependencies]
test = ["pytest>=8", "pytest-twisted>=1.14"]

[tool.setuptools]
# The plugin module must land in the twisted.plugins package, where
# myserver (through Twisted's getPlugins) looks for it; twisted_plugins/
# has no __init__.py of its own.
packages = ["{name}", "twisted.plugins"]
package-dir = {{ "twisted.plugins" = "twisted_plugins" }}

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

PROTOCOL = '''\
"""
The {name} protocol: each line it is sent comes back in upper case.

A plain Twisted protocol: myserver applies limits, timeouts, backpressure,
metrics and the graceful drain to every connection it serves.
"""

from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

OPTIONS = {{"max_line": 4096}}


@implementer(IHalfCloseableProtocol)
class {cls}(LineOnlyReceiver):
    # Lines end with LF; a CR before it is kept in the line.  The default
    # of LineOnlyReceiver would be CRLF, and its MAX_LENGTH (16384)
    # silently closes the connection on a longer line.
    delimiter = b"\\n"

    def __init__(self, maxLine: int) -> None:
        self.MAX_LENGTH = maxLine

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line.upper())

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.write(b"error: line too long\\n")
        self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        # The client has sent everything: finish writing, then close.
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class {cls}Factory(Factory):
    noisy = False

    def __init__(self, maxLine: int) -> None:
        self.maxLine = maxLine

    def buildProtocol(self, addr: Any) -> {cls}:
        protocol = {cls}(self.maxLine)
        protocol.factory = self
        return protocol


def buildFactory(options: Mapping[str, Any]) -> {cls}Factory:
    """
    One factory per listener.  A ValueError is shown to the operator as a
    configuration error (one line, exit 2).
    """
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown {name} option {{sorted(unknown)[0]!r}} "
            f"(expected {{', '.join(OPTIONS)}})"
        )
    maxLine = options.get("max_line", OPTIONS["max_line"])
    if not isinstance(maxLine, int) or isinstance(maxLine, bool) or maxLine < 1:
        raise ValueError(f"max_line must be a positive whole number, not {{maxLine!r}}")
    return {cls}Factory(maxLine)
'''

PLUGIN = '''\
"""
Publishes the {name} protocol to myserver: C{{myserver --protocol {name}}}.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from myserver.interfaces import IProtocolPlugin


@implementer(IPlugin, IProtocolPlugin)
class {cls}Plugin:
    name = "{name}"
    description = "each line comes back in upper case"

    def buildFactory(self, options):
        # Imported here, so that listing protocols stays cheap.
        from {name} import buildFactory

        return buildFactory(options)


{name} = {cls}Plugin()
'''

TESTS = '''\
"""
Tests of the {name} protocol with myserver's test kit: in memory (fast,
the server's own policy on a fake clock) and against the real server.
"""

import pytest
import pytest_twisted
from myserver.testing import MemoryServer

from {name} import buildFactory


def test_linesComeBackUpperCase():
    connection = MemoryServer(buildFactory({{}})).connect()
    connection.receive(b"hello\\nwor")
    assert connection.read() == b"HELLO\\n"
    connection.receive(b"ld\\n")
    assert connection.read() == b"WORLD\\n"


def test_halfCloseFinishesThenCloses():
    connection = MemoryServer(buildFactory({{}})).connect()
    connection.receive(b"last words\\n")
    connection.halfClose()
    assert connection.read() == b"LAST WORDS\\n"
    assert connection.closed


def test_tooLongLine():
    connection = MemoryServer(buildFactory({{"max_line": 8}})).connect()
    connection.receive(b"x" * 100)
    assert connection.read() == b"error: line too long\\n"
    assert connection.closed


def test_unknownOptionRefused():
    with pytest.raises(ValueError, match="unknown {name} option"):
        buildFactory({{"colour": "blue"}})


@pytest_twisted.inlineCallbacks
def test_realServer(myserver_server):
    server = myserver_server("{name}")
    client = yield server.connect()
    client.send(b"over the network\\n")
    yield client.expect(b"OVER THE NETWORK\\n")
    client.halfClose()
    rest = yield client.readUntilEOF()
    assert rest == b""
'''

README = """\
# myserver-{name}

The {name} protocol for [myserver](https://pypi.org/project/myserver/).

```sh
pip install .                      # or: pip install '.[test]' for the tests
myserver check {name}              # the conformance check
myserver --protocol {name}         # serve it on tcp:27015
python -m pytest                   # its tests, with myserver's test kit
```
"""


def write(name: str, directory: str) -> list[str]:
    """
    Write the package for protocol C{name} into C{directory}.

    @return: the files written.
    @raise ValueError: for a bad name or a directory that is not empty.
    """
    if not NAME.fullmatch(name):
        raise ValueError(
            f"invalid plugin name {name!r}: lower-case letters, digits and _, "
            "starting with a letter"
        )
    if os.path.exists(directory) and os.listdir(directory):
        raise ValueError(f"{directory} exists and is not empty")
    cls = "".join(part.capitalize() for part in name.split("_"))
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{name}/__init__.py": PROTOCOL,
        f"twisted_plugins/{name}_plugin.py": PLUGIN,
        f"tests/test_{name}.py": TESTS,
    }
    written = []
    for path, template in files.items():
        full = os.path.join(directory, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(template.format(name=name, cls=cls))
        written.append(full)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="myserver new-plugin",
        description="Write a ready protocol plugin package: it installs, "
        "passes `myserver check NAME` and its own tests.",
    )
    parser.add_argument("name", help="the protocol's name (lower case, digits, _)")
    parser.add_argument(
        "directory", nargs="?", help="where to write it (default: ./myserver-NAME)"
    )
    args = parser.parse_args(argv)
    directory = args.directory or f"myserver-{args.name}"
    try:
        written = write(args.name, directory)
    except (ValueError, OSError) as e:
        sys.stderr.write(f"myserver new-plugin: error: {e}\n")
        raise SystemExit(2) from None
    for path in written:
        print(f"wrote {path}")
    print(f"next: pip install '{directory}[test]' && myserver check {args.name}")
