"""
The status document (C{/status.json}), the admin token and C{myserver
status}, on the real server in the test's own reactor: the figures equal
what the metrics and the registry say, the token is asked where it must be
and nowhere else.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from myserver import statuscmd
from myserver.admin import AdminService
from myserver.budget import OVERLOADED
from myserver.config import load
from myserver.errors import ConfigError
from myserver.status import (
    AT_LIMIT,
    DRAINING,
    NEAR,
    NOT_LISTENING,
    SERVING,
    StatusCollector,
    listenerState,
    mergeWorkers,
)
from myserver.testing import serve

LOOPBACK = "tcp:0:interface=127.0.0.1"


def adminPortOf(running: Any) -> int:
    [admin] = [s for s in running.root if isinstance(s, AdminService)]
    return int(admin.port.getHost().port)


@inlineCallbacks
def get(port: int, path: str, authorization: str | None = None) -> Any:
    """
    GET C{path} from the admin endpoint: (status code, body).
    """
    headers = Headers(
        {b"authorization": [authorization.encode()]} if authorization else {}
    )
    response = yield Agent(reactor).request(
        b"GET", f"http://127.0.0.1:{port}{path}".encode(), headers
    )
    body = yield readBody(response)
    return response.code, body


class StatusDocumentTests(TestCase):
    @inlineCallbacks
    def test_figuresFollowTraffic(self) -> None:
        """
        Two listeners with open connections, one slow reader holding queued
        bytes and one refused client: the document says so, and agrees with
        the metrics.
        """
        running = serve(
            self,
            "echo",
            listen=[LOOPBACK],
            deny=["127.0.0.3"],
            max_write_buffer="64KiB",
            max_connections=50,
        )
        first, second = running.ports
        clients = []
        for port in (first, first, second):
            client = yield running.connect(port)
            client.send(b"ping")
            yield client.expect(b"ping")
            clients.append(client)
        slow = yield running.connect(first)
        slow.transport.pauseProducing()
        slow.send(b"x" * (16 << 20))
        refused = yield running.connect(second, source="127.0.0.3")
        yield running.waitFor(lambda: refused.closed, what="the refusal")
        yield running.waitFor(
            lambda: running.server.gate.budget.queued > 0, what="queued bytes"
        )
        document = StatusCollector(running.server).collect()
        metrics = running.metrics()
        json.dumps(document)  # All of it is JSON.

        self.assertEqual(document["server"]["state"], SERVING)
        self.assertEqual(document["server"]["pid"], os.getpid())
        self.assertEqual(document["server"]["connections_open"], 4)
        self.assertEqual(metrics["myserver_connections_open"], 4)
        one, two = document["listeners"]
        self.assertEqual((one["open"], two["open"]), (3, 1))
        self.assertEqual((one["limit"], two["limit"]), (50, 50))
        self.assertEqual((one["accepted"], two["accepted"]), (3, 1))
        self.assertEqual(two["refused"], {"deny": 1})
        self.assertEqual(one["bound"], f"tcp:127.0.0.1:{first}")
        self.assertEqual(one["protocol"], "echo")
        self.assertEqual(
            one["bytes_received"] + two["bytes_received"],
            metrics["myserver_bytes_received_total"],
        )
        memory = document["memory"]
        self.assertEqual(memory["queued_bytes"], metrics["myserver_buffered_bytes"])
        self.assertEqual(
            memory["budget_bytes"], metrics["myserver_buffer_budget_bytes"]
        )
        self.assertGreater(memory["rss_bytes"], 0)
        heaviest = document["connections"]["by_queued"][0]
        self.assertEqual(heaviest["peer"], f"tcp:127.0.0.1:{slow.localPort}")
        self.assertEqual(heaviest["queued_bytes"], one["queued_bytes"])
        self.assertEqual(len(document["connections"]["by_age"]), 4)
        self.assertEqual(
            document["connections"]["by_age"][0]["listener"],
            f"tcp:127.0.0.1:{first}",
        )
        [refusal] = document["refusals"]
        self.assertEqual(refusal["reason"], "deny")
        self.assertEqual(refusal["peer"], "127.0.0.3")
        self.assertEqual(refusal["listener"], f"tcp:127.0.0.1:{second}")

        running.server.draining = True
        try:
            drained = StatusCollector(running.server).collect()
        finally:
            running.server.draining = False
        self.assertEqual(drained["server"]["state"], DRAINING)
        self.assertEqual({x["state"] for x in drained["listeners"]}, {DRAINING})

        budget = running.server.gate.budget
        budget.state = OVERLOADED
        try:
            overloaded = StatusCollector(running.server).collect()
        finally:
            budget.state = "normal"
        self.assertEqual(overloaded["server"]["state"], "overloaded")
        self.assertEqual(overloaded["memory"]["state"], OVERLOADED)
        self.assertEqual({x["state"] for x in overloaded["listeners"]}, {AT_LIMIT})

    def test_listenerStates(self) -> None:
        self.assertEqual(listenerState(1, 10, False, True, "normal"), SERVING)
        self.assertEqual(listenerState(8, 10, False, True, "normal"), NEAR)
        self.assertEqual(listenerState(1, 10, False, True, "pressure"), NEAR)
        self.assertEqual(listenerState(10, 10, False, True, "normal"), AT_LIMIT)
        self.assertEqual(listenerState(0, 10, False, True, OVERLOADED), AT_LIMIT)
        self.assertEqual(listenerState(0, 10, False, False, "normal"), NOT_LISTENING)
        self.assertEqual(listenerState(10, 10, True, True, OVERLOADED), DRAINING)

    def test_rates(self) -> None:
        """
        A rate is bytes over the time since the latest sample at least a
        second old; before there is one, it is not known.
        """
        collector = StatusCollector(server=None)
        self.assertEqual(collector._rates(100.0, [(0, 0)]), [None])
        self.assertEqual(collector._rates(100.5, [(500, 50)]), [None])
        self.assertEqual(collector._rates(102.0, [(2000, 200)]), [(1000.0, 100.0)])

    def test_mergeWorkers(self) -> None:
        def worker(open: int, queued: int, state: str = "serving") -> dict[str, Any]:
            return {
                "server": {
                    "state": state, "connections_open": open, "max_connections": 5,
                },
                "listeners": [
                    {
                        "open": open, "limit": 5, "accepted": open,
                        "refused": {"deny": 1}, "refused_total": 1,
                        "bytes_received": 10, "bytes_sent": 10,
                        "receive_rate_bytes_per_second": None,
                        "send_rate_bytes_per_second": 2.0,
                        "queued_bytes": queued, "idle_closed": 0,
                    }
                ],
                "memory": {
                    "queued_bytes": queued, "budget_bytes": 100, "state": "normal",
                    "overload_actions": {"abort": 1}, "rss_bytes": 1000,
                },
                "connections": {
                    "by_queued": [{"queued_bytes": queued, "age_seconds": 1.0}],
                    "by_age": [{"queued_bytes": queued, "age_seconds": 1.0 + open}],
                },
                "refusals": [{"time": float(open), "reason": "deny"}],
            }  # fmt: skip

        parent = {
            "server": {"state": "serving", "connections_open": 0},
            "listeners": [],
            "memory": {"rss_bytes": 500},
            "refusals": [],
        }
        merged = mergeWorkers(
            parent,
            [("tcp:27015", "echo", "tcp:0.0.0.0:27015")],
            [
                {"index": 0, "pid": 11, "restarts": 0, "running": True,
                 "status": worker(3, 30)},
                {"index": 1, "pid": 12, "restarts": 3, "running": True,
                 "status": worker(5, 70)},
                {"index": 2, "pid": None, "restarts": 1, "running": False,
                 "status": None},
            ],
        )  # fmt: skip
        [listener] = merged["listeners"]
        self.assertEqual(listener["open"], 8)
        self.assertEqual(listener["limit"], 10)
        self.assertEqual(listener["state"], NEAR)
        self.assertEqual(listener["refused"], {"deny": 2})
        self.assertIsNone(listener["receive_rate_bytes_per_second"])
        self.assertEqual(listener["send_rate_bytes_per_second"], 4.0)
        self.assertEqual(merged["server"]["connections_open"], 8)
        self.assertEqual(merged["memory"]["queued_bytes"], 100)
        self.assertEqual(merged["memory"]["budget_bytes"], 200)
        self.assertEqual(merged["memory"]["overload_actions"], {"abort": 2})
        self.assertEqual(merged["memory"]["rss_bytes"], 2500)
        self.assertEqual(
            [(w["pid"], w["state"], w["restarts"]) for w in merged["workers"]],
            [(11, "serving", 0), (12, "serving", 3), (None, "restarting", 1)],
        )
        self.assertEqual(
            [c["worker"] for c in merged["connections"]["by_queued"]], [1, 0]
        )
        self.assertEqual([c["worker"] for c in merged["connections"]["by_age"]], [1, 0])
        self.assertEqual([r["worker"] for r in merged["refusals"]], [1, 0])


class TokenTests(TestCase):
    def setUp(self) -> None:
        self.tokenFile = self.mktemp()
        with open(self.tokenFile, "w") as f:
            f.write("s3cret-token\n")

    @inlineCallbacks
    def test_tokenAsked(self) -> None:
        """
        With admin_token_file, /metrics, /status and /status.json answer
        only a request with the token (bearer, or basic-auth password);
        the probes stay open; each 401 is counted.
        """
        running = serve(self, admin=LOOPBACK, admin_token_file=self.tokenFile)
        port = adminPortOf(running)
        refused = 0
        for path in ("/metrics", "/status", "/status.json"):
            for authorization in (
                None,
                "Bearer wrong",
                "Bearer s3cret-tokenX",
                "Basic " + base64.b64encode(b"admin:wrong").decode(),
                "Basic !!!",
                "Digest s3cret-token",
            ):
                code, body = yield get(port, path, authorization)
                self.assertEqual(code, 401, (path, authorization))
                self.assertNotIn(b"s3cret", body)
                refused += 1
        for path in ("/healthz", "/readyz"):
            code, _ = yield get(port, path)
            self.assertEqual(code, 200, path)
        basic = "Basic " + base64.b64encode(b"anyone:s3cret-token").decode()
        for authorization in ("Bearer s3cret-token", basic):
            code, body = yield get(port, "/status.json", authorization)
            self.assertEqual(code, 200)
            self.assertEqual(json.loads(body)["server"]["pid"], os.getpid())
            code, body = yield get(port, "/status", authorization)
            self.assertEqual(code, 200)
            self.assertIn(b"<title>myserver status</title>", body)
        code, body = yield get(port, "/metrics", "Bearer s3cret-token")
        self.assertEqual(code, 200)
        self.assertIn(
            f"myserver_admin_unauthorized_total {float(refused)}".encode(), body
        )

    @inlineCallbacks
    def test_tokenRotatedOnReload(self) -> None:
        """
        SIGHUP reads the token file again: the new token works at once, the
        old one no longer does.
        """
        running = serve(self, admin=LOOPBACK, admin_token_file=self.tokenFile)
        port = adminPortOf(running)
        with open(self.tokenFile, "w") as f:
            f.write("rotated\n")
        running.server.reload()
        code, _ = yield get(port, "/status.json", "Bearer s3cret-token")
        self.assertEqual(code, 401)
        code, _ = yield get(port, "/status.json", "Bearer rotated")
        self.assertEqual(code, 200)

    @inlineCallbacks
    def test_openWithoutToken(self) -> None:
        running = serve(self, admin=LOOPBACK)
        port = adminPortOf(running)
        code, body = yield get(port, "/status.json")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["listeners"][0]["protocol"], "echo")
        code, body = yield get(port, "/metrics")
        self.assertIn(b"myserver_admin_unauthorized_total 0.0", body)

    def load(self, path: str) -> Any:
        return load({"admin_token_file": path}, {}, {"echo"}, lambda endpoint: None)

    def test_tokenRead(self) -> None:
        config = self.load(self.tokenFile)
        self.assertEqual(config.admin_token, "s3cret-token")
        self.assertNotIn("s3cret", repr(config))

    def test_badTokenFile(self) -> None:
        missing = self.mktemp()
        empty = self.mktemp()
        with open(empty, "w") as f:
            f.write("\n")
        twoLines = self.mktemp()
        with open(twoLines, "w") as f:
            f.write("one\ntwo\n")
        for path, why in (
            (missing, "cannot read token file"),
            (empty, "is empty"),
            (twoLines, "must hold one line"),
        ):
            with self.assertRaises(ConfigError) as raised:
                self.load(path)
            self.assertIn("--admin-token-file", str(raised.exception))
            self.assertIn(why, str(raised.exception))
            self.assertNotIn("\n", str(raised.exception))


class StatusCommandTests(TestCase):
    def test_endpoints(self) -> None:
        def where(admin: str) -> tuple[str, int | None, str]:
            connection, prefix = statuscmd.connectionFor(admin)
            return connection.host, connection.port, prefix

        self.assertEqual(where("tcp:9027:interface=127.0.0.1"), ("127.0.0.1", 9027, ""))
        self.assertEqual(where("tcp:9027"), ("127.0.0.1", 9027, ""))
        self.assertEqual(where("tcp6:9027:interface=\\:\\:1"), ("::1", 9027, ""))
        self.assertEqual(where("10.1.2.3:9027"), ("10.1.2.3", 9027, ""))
        self.assertEqual(
            where("http://admin.example:8080/myserver/"),
            ("admin.example", 8080, "/myserver"),
        )
        connection, _ = statuscmd.connectionFor("unix:/run/myserver-admin.sock")
        self.assertEqual(connection.path, "/run/myserver-admin.sock")  # type: ignore[attr-defined]
        self.assertRaises(ValueError, statuscmd.connectionFor, "gopher")

    def test_noAnswer(self) -> None:
        """
        An admin endpoint that does not answer: one line, exit 1.
        """
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        stderr = io.StringIO()
        self.patch(statuscmd.sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as exited:
            statuscmd.main(["--admin", f"tcp:{port}:interface=127.0.0.1"])
        self.assertEqual(exited.exception.code, 1)
        [line] = stderr.getvalue().splitlines()
        self.assertIn("no answer from the admin endpoint", line)

    @inlineCallbacks
    def test_render(self) -> None:
        """
        The terminal tables show what the document says.
        """
        from rich.console import Console

        running = serve(self, deny=["127.0.0.3"])
        client = yield running.connect()
        client.send(b"hello")
        yield client.expect(b"hello")
        refused = yield running.connect(source="127.0.0.3")
        yield running.waitFor(lambda: refused.closed, what="the refusal")
        document = json.loads(json.dumps(StatusCollector(running.server).collect()))
        console = Console(file=io.StringIO(), width=160)
        console.print(statuscmd.render(document))
        shown = console.file.getvalue()  # type: ignore[attr-defined]
        self.assertIn(f"tcp:127.0.0.1:{running.port}", shown)
        self.assertIn("1 / 10,000", shown)
        self.assertIn("deny 1", shown)
        self.assertIn("127.0.0.3", shown)
        self.assertIn("serving", shown)
