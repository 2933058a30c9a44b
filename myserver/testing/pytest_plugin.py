# -*- test-case-name: tests.test_testing -*-
"""
The C{myserver_server} pytest fixture, registered through the C{pytest11}
entry point: installed with myserver, nothing to copy.  It needs
pytest-twisted (the server runs on its reactor).

    def test_upper(myserver_server):
        server = myserver_server("upper")
        client = pytest_twisted.blockon(server.connect())
        ...

Nothing is imported from Twisted until the fixture is used, so that
pytest-twisted chooses the reactor first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def myserver_server() -> Iterator[Callable[..., Any]]:
    """
    A factory: C{myserver_server(protocol="echo", options=None,
    **settings)} starts the real server in this process (see
    L{myserver.testing.startServer}) and returns its L{RunningServer}; each
    one is stopped, and checked for leaked connections and timers, when
    the test ends.
    """
    pytest_twisted = pytest.importorskip("pytest_twisted")
    from myserver.testing.inprocess import RunningServer, startServer

    started: list[RunningServer] = []

    def start(protocol: str = "echo", options: Any = None, **settings: Any) -> Any:
        server = startServer(protocol, options, **settings)
        started.append(server)
        return server

    yield start
    for server in started:
        pytest_twisted.blockon(server.stop())
