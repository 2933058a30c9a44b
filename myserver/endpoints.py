# -*- test-case-name: tests.test_config,tests.test_datagram,tests.test_systemd -*-
"""
Endpoint strings: checking a listener's before anything listens, myserver's
own C{udp:} spelling, and the sockets passed by systemd.

L{myserver.config.load} is handed a checker made here by whoever holds the
reactor (the twistd plugin, a reload, a test), so that the configuration
itself imports no reactor.

Sockets passed without names.  Twisted's C{systemd:} endpoint reads
C{LISTEN_PID}, C{LISTEN_FDS} and C{LISTEN_FDNAMES} once, when
C{twisted.internet.endpoints} is imported, and keeps no descriptor at all
when C{LISTEN_FDNAMES} is missing: then even C{index=0} fails with
"list index out of range".  Yet systemd before 227,
C{systemd-socket-activate} without C{--fdname} and other socket-passing
tools set only the first two, and libsystemd's C{sd_listen_fds} adopts
such sockets by index (naming them C{unknown}).  So does myserver: when
Twisted kept nothing, this module reads the variables from the environment
the process started with and hands Twisted's parser the descriptors.  It
reads that environment from C{/proc/self/environ}, because Twisted deletes
C{LISTEN_PID} and C{LISTEN_FDS} from C{os.environ} as it reads them (and
which import comes first is up to twistd's plugin loading, not us).  A
C{systemd:} endpoint whose socket is not there fails with one line naming
the variable that is missing or wrong.

Twisted internals this module relies on (checked to exist, with the kind
expected, by C{tests.test_twistedcontract}): C{endpoints._SystemdParser}
and its C{_sddaemon}, the L{ListenFDs} it looks descriptors up in.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.endpoints import _SystemdParser, serverFromString
from twisted.python.systemd import ListenFDs

# The first passed descriptor (SD_LISTEN_FDS_START), fixed by the convention.
FIRST_PASSED_DESCRIPTOR = 3


@dataclass(frozen=True)
class DatagramEndpoint:
    """
    A parsed C{udp:} listener.

    @ivar port: the port to bind (0: any).
    @ivar interface: the address to bind (C{""}: all IPv4 addresses).
    @ivar index: for a socket bound by someone else and passed to this
        process as descriptor C{3 + index}, that index; L{None} to bind.
    """

    port: int
    interface: str = ""
    index: int | None = None


# A passed socket's index, last in a udp: endpoint (a worker's: see below).
_DATAGRAM_INDEX = re.compile(r"(?:^|:)index=(\d+)$")


def parseDatagramEndpoint(endpoint: str) -> DatagramEndpoint:
    """
    myserver's own UDP listener spelling, C{udp:PORT[:interface=ADDR]}:
    Twisted's endpoint strings have no datagram server form.

    Internal, for workers: C{udp:PORT[:interface=ADDR]:index=K} serves the
    datagram socket passed as descriptor C{3 + K} instead of binding one
    (L{myserver.workers} binds one per worker, steered by source address,
    and passes each on); PORT and ADDR then say what the supervisor bound.

    @raise ValueError: if C{endpoint} is not of that form.
    """
    kind, _, rest = endpoint.partition(":")
    index = None
    passed = _DATAGRAM_INDEX.search(rest)
    if passed is not None:
        index = int(passed.group(1))
        rest = rest[: passed.start()]
    parts = rest.split(":", 1) if rest else []
    if kind.lower() != "udp" or not parts or not parts[0].isdecimal():
        raise ValueError("expected udp:PORT or udp:PORT:interface=ADDRESS")
    port = int(parts[0])
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    interface = ""
    if len(parts) == 2:
        key, equals, address = parts[1].replace("\\:", ":").partition("=")
        if key != "interface" or not equals:
            raise ValueError(f"unknown UDP option {parts[1]!r} (expected interface=)")
        ipaddress.ip_address(address)
        interface = address
    return DatagramEndpoint(port, interface, index)


@dataclass(frozen=True)
class PassedSockets:
    """
    The listening sockets passed to this process by the systemd convention.

    @ivar descriptors: their descriptors, in order (index 0 first).
    @ivar names: their names, one per descriptor (C{unknown} each when
        C{LISTEN_FDNAMES} was not set, as libsystemd names them).
    @ivar named: whether C{LISTEN_FDNAMES} named them.
    @ivar problem: why none was passed, naming the variable (C{""} when
        some were).
    """

    descriptors: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    named: bool = False
    problem: str = ""

    def missing(self, index: int | None, name: str | None) -> str | None:
        """
        Why the socket at C{index} (or named C{name}) is not among these, in
        one line for the operator; L{None} when it is.
        """
        if not self.descriptors:
            return f"no socket was passed to this process: {self.problem}"
        count = len(self.descriptors)
        passed = f"LISTEN_FDS={count} passes {count} socket{'s' * (count != 1)}"
        if index is not None and not 0 <= index < count:
            return f"index {index} is out of range: {passed}"
        if name is not None and name not in self.names:
            if not self.named:
                return (
                    f"no socket named {name!r}: LISTEN_FDNAMES is not set (use index=)"
                )
            return f"no socket named {name!r} (LISTEN_FDNAMES={':'.join(self.names)})"
        return None


def passedSockets(environ: Mapping[str, str], pid: int) -> PassedSockets:
    """
    The sockets that C{environ} passes to process C{pid}, read as
    libsystemd's C{sd_listen_fds_with_names} reads them.
    """
    count = environ.get("LISTEN_FDS")
    if count is None:
        return PassedSockets(problem="LISTEN_FDS is not set")
    if not count.isdecimal():
        return PassedSockets(problem=f"LISTEN_FDS={count!r} is not a number")
    owner = environ.get("LISTEN_PID")
    if owner is None:
        return PassedSockets(problem="LISTEN_PID is not set")
    if owner != str(pid):
        return PassedSockets(
            problem=f"LISTEN_PID={owner} is not this process (pid {pid})"
        )
    if int(count) == 0:
        return PassedSockets(problem="LISTEN_FDS=0")
    descriptors = tuple(
        range(FIRST_PASSED_DESCRIPTOR, FIRST_PASSED_DESCRIPTOR + int(count))
    )
    text = environ.get("LISTEN_FDNAMES", "")
    if not text:
        return PassedSockets(descriptors, ("unknown",) * len(descriptors))
    names = tuple(text.split(":"))
    if len(names) != len(descriptors):
        return PassedSockets(
            problem=f"LISTEN_FDNAMES names {len(names)} sockets but LISTEN_FDS={count}"
        )
    return PassedSockets(descriptors, names, named=True)


def startEnvironment() -> dict[str, str]:
    """
    The environment this process was started with (Linux's
    C{/proc/self/environ}), whatever has been deleted from C{os.environ}
    since; the current environment where there is no such file.
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            block = f.read()
    except OSError:
        return dict(os.environ)
    variables = (entry.partition(b"=") for entry in block.split(b"\0") if entry)
    return {os.fsdecode(k): os.fsdecode(v) for k, _, v in variables}


def _adoptPassedSockets() -> PassedSockets:
    """
    The sockets passed to this process; when Twisted's C{systemd:} parser
    kept none of them (no C{LISTEN_FDNAMES}), hand it the descriptors, so
    that C{index=} adopts them.
    """
    twisted: ListenFDs = _SystemdParser._sddaemon
    descriptors = tuple(twisted.inheritedDescriptors())
    if descriptors:
        names = tuple(twisted.inheritedNamedDescriptors())
        return PassedSockets(descriptors, names, named=True)
    passed = passedSockets(startEnvironment(), os.getpid())
    if passed.descriptors:
        _SystemdParser._sddaemon = ListenFDs(list(passed.descriptors), passed.names)
    return passed


PASSED_SOCKETS = _adoptPassedSockets()


# A copy of each, kept open: Twisted closes a passed descriptor once a
# port has adopted it, and a live upgrade passes them on at the same
# numbers (L{myserver.upgrade}).
def _keep(descriptors: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(os.dup(fd) for fd in descriptors)
    except OSError:
        # Not all open after all: nothing to pass on.
        return ()


_KEPT = list(_keep(PASSED_SOCKETS.descriptors))


def keptPassedSockets() -> tuple[int, ...]:
    """
    Descriptors of the sockets passed to this process, in order, open
    whatever has become of the originals; none once released.
    """
    return tuple(_KEPT)


def releaseKeptPassedSockets() -> None:
    """
    Close the copies: this process is stopping, and a copy would keep the
    socket listening (the kernel queueing connections nobody accepts) after
    every port on it has stopped.
    """
    while _KEPT:
        os.close(_KEPT.pop())


def behindProxy(endpoint: str) -> str:
    """
    An endpoint string without its C{haproxy:} prefixes: the endpoint that
    binds.
    """
    while endpoint[:8].lower() == "haproxy:":
        endpoint = endpoint[8:]
    return endpoint


def endpointKind(endpoint: str) -> str:
    """
    What kind of endpoint binds, behind any C{haproxy:} prefix: C{tcp},
    C{unix}, C{systemd}, ...
    """
    return behindProxy(endpoint).split(":", 1)[0].lower()


def _systemdSocketMissing(endpoint: str) -> str | None:
    """
    For a C{systemd:} endpoint string (behind any C{haproxy:} prefixes),
    why its socket was not passed; L{None} for any other string, or when
    the socket is there.
    """
    parts = behindProxy(endpoint).split(":")
    if parts[0].lower() != "systemd":
        return None
    arguments = dict(part.partition("=")[::2] for part in parts[1:])
    index, name = arguments.get("index"), arguments.get("name")
    if index is not None and not index.isdecimal():
        return None
    return PASSED_SOCKETS.missing(None if index is None else int(index), name)


def endpointChecker(reactor: Any) -> Callable[[str], None]:
    """
    A checker that parses an endpoint string exactly as the server will,
    on C{reactor}, without listening.

    @return: a callable raising L{ValueError} with one line for an endpoint
        string that does not parse.
    """

    def checkEndpoint(endpoint: str) -> None:
        if endpoint.split(":", 1)[0].lower() == "udp":
            parseDatagramEndpoint(endpoint)
            return
        try:
            serverFromString(reactor, endpoint)
        except Exception as e:
            missing = _systemdSocketMissing(endpoint)
            raise ValueError(
                missing or " ".join(str(e).split()) or type(e).__name__
            ) from None

    return checkEndpoint
