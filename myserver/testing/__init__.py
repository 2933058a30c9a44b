# -*- test-case-name: tests.test_testing -*-
"""
PUBLIC: the test kit for protocol plugin authors, and for myserver's own
tests.  See docs/testing.md.

Three layers, from fastest to most real:

  - L{MemoryServer}, L{connect}, L{connectPlugin}: a protocol under the
    server's real policy on a fake reactor and clock, in memory;
  - L{startServer} (and the C{myserver_server} pytest fixture): the real
    service tree on the test's reactor, listening on loopback, with a small
    client, a metrics snapshot and the log events captured;
  - L{ServerProcess}: C{myserver} in a process group of its own, for what
    needs a process (signals, limits, workers).
"""

from myserver.testing.inprocess import Client, RunningServer, serve, startServer
from myserver.testing.memory import (
    MemoryConnection,
    MemoryServer,
    MemorySocket,
    connect,
    connectPlugin,
    pluginFactory,
)

__all__ = [
    "Client",
    "MemoryConnection",
    "MemoryServer",
    "MemorySocket",
    "RunningServer",
    "connect",
    "connectPlugin",
    "pluginFactory",
    "serve",
    "startServer",
]
