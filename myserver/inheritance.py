# -*- test-case-name: tests.test_upgrade -*-
"""
What a generation inherits from the one it replaces at a live upgrade.

The old generation (L{myserver.upgrade}) starts the new one with its
listening sockets as open descriptors and one environment variable,
C{MYSERVER_INHERIT}, that says which is which:

    {"sockets": {"tcp:27015": [5], "admin tcp:9027": [6]},
     "ready": 9, "streams": [7, 8], "pidfile": "/run/myserver.pid"}

  - C{sockets}: for each endpoint string of the old configuration, the
    descriptors of its listening sockets (several for the same string when
    it was bound more than once, as C{tcp:0} may be).  A listener of the
    new configuration with the same endpoint string serves the inherited
    socket instead of binding a new one: the very same socket, so that no
    connection waiting in its accept queue is lost.  Sockets passed by
    systemd are passed on at the numbers systemd gave them, with
    C{LISTEN_FDS}, and need no entry here;
  - C{ready}: the pipe on which the new generation says C{ready} once every
    listener serves; the old one stops accepting only then;
  - C{streams}: the old generation's own standard output and error.  Until
    it is ready, the new generation writes through pipes that the old one
    reads, relays and remembers (the line explaining a failed upgrade is
    there); when ready it writes to these directly;
  - C{pidfile}: twistd's pid file, which the new generation takes over
    when it is ready.

With workers the supervisor keeps its pid: it starts the new generation by
executing itself in place (C{"inPlace": true}), so there is no old process
to tell and no output to relay; instead C{workers} lists its old workers
(each C{[PID, PIPE]}: the write end of the pipe the worker watches), which
drain once the new workers serve, and C{scratch} the directory of their
admin sockets, removed once they are gone.  A worker says it is ready on a
pipe of its own (C{ready} alone).

This module is only data and descriptors: no Twisted, no reactor.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass, field

INHERIT = "MYSERVER_INHERIT"
READY = b"ready\n"


def adminKey(endpoint: str) -> str:
    """
    The admin endpoint's entry in C{sockets}: apart from the listeners',
    whose endpoint string may be the same (C{tcp:0:interface=127.0.0.1}).
    """
    return "admin " + endpoint


@dataclass
class Inheritance:
    """
    What this process inherited; empty for a process started by hand.
    """

    sockets: dict[str, list[int]] = field(default_factory=dict)
    ready: int | None = None
    streams: tuple[int, int] | None = None
    pidfile: str | None = None
    inPlace: bool = False
    workers: list[tuple[int, int]] = field(default_factory=list)
    scratch: str | None = None

    @classmethod
    def fromEnvironment(cls, environ: MutableMapping[str, str]) -> Inheritance:
        """
        Read (and remove, so that no child of this process sees it) the
        inheritance described in C{environ}.
        """
        text = environ.pop(INHERIT, None)
        if not text:
            return cls()
        described = json.loads(text)
        streams = described.get("streams")
        return cls(
            sockets={
                str(endpoint): [int(fd) for fd in fds]
                for endpoint, fds in described.get("sockets", {}).items()
            },
            ready=described.get("ready"),
            streams=(int(streams[0]), int(streams[1])) if streams else None,
            pidfile=described.get("pidfile"),
            inPlace=bool(described.get("inPlace")),
            workers=[
                (int(pid), int(pipe)) for pid, pipe in described.get("workers", [])
            ],
        )

    def describe(self) -> str:
        """
        This inheritance as the value of C{MYSERVER_INHERIT}.
        """
        return json.dumps(
            {
                "sockets": self.sockets,
                "ready": self.ready,
                "streams": list(self.streams) if self.streams else None,
                "pidfile": self.pidfile,
                "inPlace": self.inPlace,
                "workers": [list(worker) for worker in self.workers],
                "scratch": self.scratch,
            }
        )

    @property
    def upgrading(self) -> bool:
        """
        Whether this process was started by a live upgrade.
        """
        return self.ready is not None or self.inPlace

    def takeAll(self, endpoint: str) -> list[int]:
        """
        Every inherited listening socket for C{endpoint} (a supervisor's
        copies of one listener), now the caller's.
        """
        return self.sockets.pop(endpoint, [])

    def take(self, endpoint: str) -> int | None:
        """
        The next inherited listening socket for C{endpoint}, now this
        caller's to serve (and close); L{None} when there is none.
        """
        descriptors = self.sockets.get(endpoint)
        if not descriptors:
            return None
        return descriptors.pop(0)

    def closeUnclaimed(self) -> list[str]:
        """
        Close the inherited sockets that no listener took (listeners the
        new configuration dropped).

        @return: their endpoints.
        """
        dropped = []
        for endpoint, descriptors in self.sockets.items():
            for fd in descriptors:
                os.close(fd)
                dropped.append(endpoint)
            descriptors.clear()
        return dropped

    def outputDescriptors(self) -> tuple[int, int]:
        """
        Where a child process started now should write its output: the
        original streams, not the pipes to the old generation, which end
        with it.
        """
        return self.streams if self.streams is not None else (1, 2)

    def announceReady(self, pid: int) -> None:
        """
        Every listener serves: write to the original streams from now on,
        take over the pid file, and tell the old generation (in that order:
        the old one may end as soon as it reads C{ready}).
        """
        if self.streams is not None:
            for stream in (sys.__stdout__, sys.__stderr__):
                if stream is not None:
                    stream.flush()
            for original, fd in zip(self.streams, (1, 2), strict=True):
                os.dup2(original, fd)
                os.close(original)
            self.streams = None
        if self.pidfile:
            temporary = f"{self.pidfile}.{pid}"
            with open(temporary, "w") as f:
                f.write(f"{pid}\n")
            os.replace(temporary, self.pidfile)
        if self.ready is not None:
            os.write(self.ready, READY)
            os.close(self.ready)
            self.ready = None
