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

discard = BuiltinProtocol(
    "discard",
    "RFC 863 discard: reads everything, sends nothing",
    "myserver.protocols.discard",
)

chargen = BuiltinProtocol(
    "chargen",
    "RFC 864 character generator: endless 72-character lines, paced by the reader",
    "myserver.protocols.chargen",
)

daytime = BuiltinProtocol(
    "daytime",
    "RFC 867 daytime: the date and time as one line, then close",
    "myserver.protocols.daytime",
    datagram=True,
)

time = BuiltinProtocol(
    "time",
    "RFC 868 time: seconds since 1900 as 4 big-endian bytes, then close",
    "myserver.protocols.timeprotocol",
    datagram=True,
)

chat = BuiltinProtocol(
    "chat",
    "a line-based chat room; members who cannot keep up are dropped",
    "myserver.protocols.chat",
)
