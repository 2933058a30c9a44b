# -*- test-case-name: tests.test_status -*-
"""
C{myserver status [--admin ENDPOINT] [--token-file PATH] [--watch]}: the
status page's tables in a terminal, read from a running server's
C{/status.json}.

The admin endpoint is given as the server's own setting spells it
(C{tcp:9027:interface=127.0.0.1}, C{unix:/run/myserver-admin.sock}), or as
C{HOST:PORT} or a URL; by default C{MYSERVER_ADMIN}, else
C{tcp:9027:interface=127.0.0.1}.  The token, when the server asks for one,
comes from C{--token-file} or C{MYSERVER_ADMIN_TOKEN_FILE}, as the server's
own setting does.  A server that does not answer is one line on standard
error and exit status 1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

DEFAULT_ADMIN = "tcp:9027:interface=127.0.0.1"
# What a figure not known (yet) shows.
NONE = "-"
TIMEOUT = 5.0


class NoAnswer(Exception):
    """
    The admin endpoint did not answer, or not with a status document.
    """


class _UNIXConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def connectionFor(admin: str) -> tuple[http.client.HTTPConnection, str]:
    """
    An HTTP connection to the admin endpoint C{admin}, and the path prefix
    of its URL (empty unless a URL gave one).

    @raise ValueError: for a spelling that names no endpoint.
    """
    kind, _, rest = admin.partition(":")
    kind = kind.lower()
    if kind in ("http", "https"):
        url = urlsplit(admin)
        if not url.hostname:
            raise ValueError(f"no host in {admin!r}")
        factory = (
            http.client.HTTPSConnection
            if kind == "https"
            else http.client.HTTPConnection
        )
        return factory(url.hostname, url.port, timeout=TIMEOUT), url.path.rstrip("/")
    if kind == "unix":
        path = rest.split(":", 1)[0]
        path = path.removeprefix("address=")
        return _UNIXConnection(path, TIMEOUT), ""
    if kind in ("tcp", "tcp6"):
        # Colons escaped with a backslash (IPv6 addresses) separate nothing.
        fields = re.split(r"(?<!\\):", rest)
        port = fields[0].removeprefix("port=")
        host = "::1" if kind == "tcp6" else "127.0.0.1"
        for field in fields[1:]:
            if field.startswith("interface="):
                host = field.removeprefix("interface=").replace("\\", "")
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if not port.isdecimal():
            raise ValueError(f"no port in {admin!r}")
        return http.client.HTTPConnection(host, int(port), timeout=TIMEOUT), ""
    host, colon, port = admin.rpartition(":")
    if colon and port.isdecimal():
        return http.client.HTTPConnection(
            host.strip("[]") or "127.0.0.1", int(port), timeout=TIMEOUT
        ), ""
    raise ValueError(
        f"{admin!r} is not an admin endpoint (expected e.g. "
        "tcp:9027:interface=127.0.0.1, unix:PATH, HOST:PORT or a URL)"
    )


def fetchStatus(admin: str, token: str | None = None) -> dict[str, Any]:
    """
    The server's C{/status.json}.

    @raise NoAnswer: saying why, in one line.
    """
    try:
        connection, prefix = connectionFor(admin)
    except ValueError as e:
        raise NoAnswer(str(e)) from None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        connection.request("GET", prefix + "/status.json", headers=headers)
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise NoAnswer(f"no answer from the admin endpoint {admin}: {reason}") from None
    finally:
        connection.close()
    if response.status == 401:
        raise NoAnswer(
            f"the admin endpoint {admin} asks for its token: give --token-file "
            "(or MYSERVER_ADMIN_TOKEN_FILE)"
            + (" (the one given was refused)" if token else "")
        )
    if response.status != 200:
        raise NoAnswer(f"the admin endpoint {admin} answered {response.status}")
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict) or "server" not in document:
        raise NoAnswer(f"the admin endpoint {admin} sent no status document")
    return document


def _bytes(n: float | None) -> str:
    if n is None:
        return NONE
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # pragma: no cover


def _rate(n: float | None) -> str:
    return NONE if n is None else _bytes(n) + "/s"


def _seconds(s: float | None) -> str:
    if s is None:
        return NONE
    s = int(s)
    days, hours, minutes = s // 86400, s // 3600 % 24, s // 60 % 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {s % 60}s"
    return f"{s}s"


def _clock(t: float | None) -> str:
    return "never" if t is None else time.strftime("%H:%M:%S", time.localtime(t))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or NONE


# Rich styles for the states the page colours.
STYLES = {
    "serving": "green",
    "normal": "green",
    "near_limit": "yellow",
    "pressure": "yellow",
    "at_limit": "bold red",
    "overloaded": "bold red",
    "draining": "bold blue",
    "not_listening": "bold red",
    "not_answering": "bold red",
    "restarting": "bold red",
}


def _state(state: str) -> Any:
    from rich.text import Text

    return Text(state.replace("_", " "), style=STYLES.get(state, ""))


def render(document: dict[str, Any]) -> Any:
    """
    The status document as rich renderables, in the page's order.
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    server = document["server"]
    title = Text.assemble(
        ("myserver ", "bold"),
        _state(server["state"]),
        f"  pid {server['pid']}  generation {server['generation']}"
        f" (last upgrade {_clock(server['last_upgrade'])})"
        f"  up {_seconds(server['uptime_seconds'])}"
        f"  myserver {server['myserver_version']}, Twisted "
        f"{server['twisted_version']}, reactor {server['reactor']}"
        f"  open file limit {server['open_file_limit']:,}",
    )
    listeners = Table(title="Listeners", title_justify="left", expand=True)
    for name in (
        "listener", "protocol", "state", "open/limit", "accepted", "refused",
        "in / out", "rate in / out", "queued", "idle closed",
    ):  # fmt: skip
        listeners.add_column(name, overflow="fold")
    for row in document["listeners"]:
        limit = f"{row['limit']:,}" if row["limit"] else "no limit"
        listeners.add_row(
            row["bound"] or row["endpoint"],
            row["protocol"],
            _state(row["state"]),
            f"{row['open']:,} / {limit}",
            f"{row['accepted']:,}",
            _counts(row["refused"]),
            f"{_bytes(row['bytes_received'])} / {_bytes(row['bytes_sent'])}",
            f"{_rate(row['receive_rate_bytes_per_second'])} / "
            f"{_rate(row['send_rate_bytes_per_second'])}",
            _bytes(row["queued_bytes"]),
            f"{row['idle_closed']:,}",
        )
    memory = document["memory"]
    budget = _bytes(memory["budget_bytes"]) if memory["budget_bytes"] else "no budget"
    memoryLine = Text.assemble(
        ("Memory ", "bold"),
        f"queued {memory['queued_bytes']:,} B of {budget}  ",
        _state(memory["state"]),
        f"  overload actions: {_counts(memory['overload_actions'])}"
        f"  resident {_bytes(memory['rss_bytes'])}",
    )
    parts: list[Any] = [title, listeners, memoryLine]
    if document["workers"]:
        workers = Table(title="Workers", title_justify="left")
        for name in (
            "#",
            "pid",
            "state",
            "connections",
            "queued",
            "memory",
            "restarts",
        ):
            workers.add_column(name)
        for w in document["workers"]:
            workers.add_row(
                str(w["index"]),
                str(w["pid"] or NONE),
                _state(w["state"]),
                NONE if w["connections"] is None else f"{w['connections']:,}",
                _bytes(w["queued_bytes"]),
                _bytes(w["rss_bytes"]),
                str(w["restarts"]),
            )
        parts.append(workers)
    for key, heading in (("by_queued", "most queued"), ("by_age", "oldest")):
        table = Table(
            title=f"Heaviest connections: {heading}", title_justify="left", expand=True
        )
        for name in ("peer", "listener", "in", "out", "queued", "age", "idle"):
            table.add_column(name, overflow="fold")
        for c in document["connections"][key][:10]:
            worker = "" if c.get("worker") is None else f" (worker {c['worker']})"
            table.add_row(
                c["peer"] + (" (PROXY)" if c["proxied"] else "") + worker,
                c["listener"],
                _bytes(c["bytes_received"]),
                _bytes(c["bytes_sent"]),
                _bytes(c["queued_bytes"]),
                _seconds(c["age_seconds"]),
                _seconds(c["idle_seconds"]),
            )
        parts.append(table)
    refusals = Table(title="Last refusals", title_justify="left", expand=True)
    for name in ("time", "reason", "peer", "listener", "held back"):
        refusals.add_column(name, overflow="fold")
    for r in document["refusals"][:10]:
        refusals.add_row(
            _clock(r["time"]),
            r["reason"],
            r["peer"],
            r["listener"],
            f"+{r['suppressed']:,}" if r["suppressed"] else "",
        )
    parts.append(refusals)
    return Group(*parts)


def _fail(message: str) -> None:
    sys.stderr.write(f"myserver status: error: {' '.join(message.split())}\n")
    raise SystemExit(1)


def _token(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError as e:
        _fail(f"cannot read token file {path}: {e.strerror or e}")
    return None  # pragma: no cover


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="myserver status",
        description="Show a running server's state (its admin endpoint's "
        "/status.json) as tables; exit 1 if it does not answer.",
    )
    parser.add_argument(
        "--admin",
        default=os.environ.get("MYSERVER_ADMIN") or DEFAULT_ADMIN,
        metavar="ENDPOINT",
        help="the server's admin endpoint, as its setting spells it, "
        "HOST:PORT or a URL (default: MYSERVER_ADMIN, else %(default)s)",
    )
    parser.add_argument(
        "--token-file",
        default=os.environ.get("MYSERVER_ADMIN_TOKEN_FILE"),
        metavar="PATH",
        help="the admin token's file (default: MYSERVER_ADMIN_TOKEN_FILE)",
    )
    parser.add_argument(
        "--watch", action="store_true", help="redraw every --interval seconds"
    )
    parser.add_argument(
        "--interval", type=float, default=2.0, help="seconds between redraws"
    )
    parser.add_argument("--json", action="store_true", help="print the JSON instead")
    args = parser.parse_args(argv)
    token = _token(args.token_file)
    try:
        document = fetchStatus(args.admin, token)
    except NoAnswer as e:
        _fail(str(e))
    if args.json:
        print(json.dumps(document, indent=2))
        return
    from rich.console import Console

    console = Console()
    if not args.watch:
        console.print(render(document))
        return
    from rich.live import Live

    try:
        with Live(render(document), console=console, screen=True) as live:
            while True:
                time.sleep(max(0.2, args.interval))
                try:
                    live.update(render(fetchStatus(args.admin, token)))
                except NoAnswer as e:
                    from rich.text import Text

                    live.update(Text(f"{e} (retrying)", style="bold red"))
    except KeyboardInterrupt:
        pass
