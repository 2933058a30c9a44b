# -*- test-case-name: tests.test_protocols -*-
"""
A tiny line-based chat room: what a stateful protocol looks like as a
myserver plugin.  The state shared across connections (the members) lives
in the factory, one room per listener.

Lines end with LF (a CR before it is dropped).  A new member is greeted as
C{guest-N}; C{/nick NAME} (1 to 32 of A-Z a-z 0-9 _ -, unique) renames it;
any other line goes to every other member as C{NAME: text}.  Joins, leaves
and renames are announced as C{* ...} lines.  A line longer than
C{max_line} bytes (option, default 1024) ends that member's connection.

Backpressure rule: each member registers itself as a streaming producer on
its own transport, which pauses it once more than min(64 KiB,
max_write_buffer) bytes are queued for that member: the member is then
I{behind}.  A message for a member that is behind is not queued: the
member is disconnected at once (its queue dropped) and its leaving is
announced.  So a member who stops reading can never make the server buffer
without limit, nor slow the others down.
"""

import re
from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

NAME = re.compile(rb"[A-Za-z0-9_-]{1,32}")


@implementer(IPushProducer, IHalfCloseableProtocol)
class Member(LineReceiver):
    delimiter = b"\n"
    factory: "Room"
    name = b""
    behind = False
    present = False

    def connectionMade(self) -> None:
        self.MAX_LENGTH = self.factory.maxLine
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.name = self.factory.guestName()
        self.deliver(b"* welcome, " + self.name + b"; /nick NAME to rename")
        self.factory.join(self)

    def deliver(self, line: bytes) -> None:
        """
        Send C{line}, unless this member is behind: then drop the member.
        """
        if self.behind:
            self.drop()
            return
        self.transport.write(line + b"\r\n")  # type: ignore[union-attr]

    def lineReceived(self, line: bytes) -> None:
        line = line.removesuffix(b"\r")
        if line.startswith(b"/nick "):
            self.rename(line[6:].strip())
        elif line:
            self.factory.broadcast(self, self.name + b": " + line)

    def rename(self, name: bytes) -> None:
        if not NAME.fullmatch(name):
            self.deliver(b"* a name is 1 to 32 of A-Z a-z 0-9 _ -")
        elif name in self.factory.names():
            self.deliver(b"* " + name + b" is taken")
        else:
            old, self.name = self.name, name
            self.factory.broadcast(None, b"* " + old + b" is now " + name)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.deliver(b"* line too long; goodbye")
        self.leave(b"sent a line too long")
        self.transport.loseConnection()  # type: ignore[union-attr]

    def drop(self) -> None:
        self.leave(b"could not keep up")
        self.transport.abortConnection()  # type: ignore[union-attr]

    def leave(self, why: bytes) -> None:
        if self.present:
            self.factory.part(self, why)
        if self.transport is not None and self.transport.producer is self:  # type: ignore[attr-defined]
            self.transport.unregisterProducer()  # type: ignore[attr-defined]

    # IPushProducer: the transport's verdict on this member's queue.
    def pauseProducing(self) -> None:
        self.behind = True

    def resumeProducing(self) -> None:
        self.behind = False

    def stopProducing(self) -> None:
        pass

    # IHalfCloseableProtocol: a member that stops sending has left.
    def readConnectionLost(self) -> None:
        self.leave(b"left")
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: object = None) -> None:
        if self.present:
            self.factory.part(self, b"left")


class Room(Factory):
    """
    One chat room: the members of one listener.
    """

    noisy = False

    def __init__(self, maxLine: int) -> None:
        self.maxLine = maxLine
        self.members: list[Member] = []
        self._guests = 0

    def buildProtocol(self, addr: Any) -> Member:  # type: ignore[override]
        member = Member()
        member.factory = self
        return member

    def guestName(self) -> bytes:
        self._guests += 1
        return b"guest-%d" % self._guests

    def names(self) -> set[bytes]:
        return {member.name for member in self.members}

    def join(self, member: Member) -> None:
        member.present = True
        self.broadcast(member, b"* " + member.name + b" joined")
        self.members.append(member)

    def part(self, member: Member, why: bytes) -> None:
        member.present = False
        self.members.remove(member)
        self.broadcast(None, b"* " + member.name + b" " + why)

    def broadcast(self, sender: Member | None, line: bytes) -> None:
        for member in list(self.members):
            if member is not sender and member.present:
                member.deliver(line)


def buildFactory(options: Mapping[str, Any]) -> Room:
    """
    Options: C{max_line}, the longest line accepted, 16 to 65536 bytes
    (default 1024).
    """
    unknown = set(options) - {"max_line"}
    if unknown:
        raise ValueError(f"unknown chat option {sorted(unknown)[0]!r}")
    maxLine = options.get("max_line", 1024)
    if (
        not isinstance(maxLine, int)
        or isinstance(maxLine, bool)
        or not 16 <= maxLine <= 65536
    ):
        raise ValueError(
            f"max_line must be a whole number from 16 to 65536, not {maxLine!r}"
        )
    return Room(maxLine)
