"""
The protocols built into myserver, published as L{IProtocolPlugin} providers.

Third-party protocols are published the same way from their own
C{twisted_plugins} module.
"""

from myserver.protocols import BuiltinProtocol

echo = BuiltinProtocol(
    "echo",
    "RFC 862 echo: every byte comes back, in order, to the client that sent it",
    "myserver.protocols.echo",
    datagram=True,
)
