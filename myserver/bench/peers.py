# -*- test-case-name: tests.test_bench -*-
"""
The peers myserver is measured against, each a half-close-correct echo
server: C{python -m myserver.bench.peers KIND PORTFILE} listens on an
ephemeral loopback port and writes the port number to PORTFILE.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any


def twisted(portFile: str) -> None:
    """
    The minimal Twisted echo, made half-close correct: the baseline.
    """
    from twisted.internet import reactor
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    @implementer(IHalfCloseableProtocol)
    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[union-attr]

        def readConnectionLost(self) -> None:
            self.transport.loseConnection()  # type: ignore[union-attr]

        def writeConnectionLost(self) -> None:
            pass

    server: Any = reactor
    port = server.listenTCP(
        0, Factory.forProtocol(Echo), backlog=1024, interface="127.0.0.1"
    )
    _announce(portFile, port.getHost().port)
    server.run()


class _AsyncioEcho(asyncio.Protocol):
    """
    The fastest echo asyncio offers: a Protocol (streams add a coroutine
    hop per read).  Half-close correct: at EOF, returning None closes the
    transport, which sends what is still buffered first.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> None:
        return None


def _asyncioServer(portFile: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_AsyncioEcho, "127.0.0.1", 0, backlog=1024)
        _announce(portFile, server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def uvloop(portFile: str) -> None:
    from importlib import import_module

    import_module("uvloop").install()
    _asyncioServer(portFile)


def _announce(portFile: str, port: int) -> None:
    with open(portFile + ".tmp", "w") as f:
        f.write(str(port))
    import os

    os.replace(portFile + ".tmp", portFile)


KINDS: dict[str, Any] = {
    "twisted": twisted,
    "asyncio": _asyncioServer,
    "uvloop": uvloop,
}

if __name__ == "__main__":
    KINDS[sys.argv[1]](sys.argv[2])
