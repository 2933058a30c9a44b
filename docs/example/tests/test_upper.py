"""
The upper protocol's tests, written with myserver's test kit
(docs/testing.md): in memory, then against the real server.
"""

import pytest
import pytest_twisted
from upper import buildFactory

from myserver.testing import MemoryServer


def test_upperCase():
    connection = MemoryServer(buildFactory({})).connect()
    connection.receive(b"hello")
    assert connection.read() == b"HELLO"


def test_prefixOption():
    connection = MemoryServer(buildFactory({"prefix": "> "})).connect()
    connection.receive(b"x")
    assert connection.read() == b"> X"


def test_slowReaderIsPaused():
    """
    A client that does not read: past max_write_buffer the server stops
    reading from it, and everything arrives once it reads.
    """
    server = MemoryServer(buildFactory({}), max_write_buffer="64KiB", socketBuffer=4096)
    connection = server.connect()
    connection.receive(b"a" * 1_000_000)
    assert connection.readingPaused
    assert connection.read() == b"A" * 1_000_000


def test_unknownOption():
    with pytest.raises(ValueError, match="unknown option"):
        buildFactory({"colour": "blue"})


@pytest_twisted.inlineCallbacks
def test_realServer(myserver_server):
    server = myserver_server("upper", options={"prefix": "> "})
    client = yield server.connect()
    client.send(b"over the network")
    client.halfClose()
    received = yield client.readUntilEOF()
    assert received == b"> OVER THE NETWORK"
