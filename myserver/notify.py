# -*- test-case-name: tests.test_upgrade -*-
"""
systemd's readiness protocol (C{sd_notify}), for units of C{Type=notify}:
one datagram to the socket named by C{NOTIFY_SOCKET}.  It tells systemd
when the server serves, and after a live upgrade which process is now the
service's main one (C{MAINPID=}; the unit needs C{NotifyAccess=all}, since
the new generation is not the process systemd started).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notifySystemd(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """
    Send C{message} (C{KEY=VALUE} lines) to systemd, if it listens.

    @return: whether it was sent.
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        # An abstract socket: its name begins with a NUL byte.
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError:
        return False
    return True
