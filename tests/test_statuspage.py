"""
The status page in a real browser (the system's headless Chromium through
Selenium), and C{myserver status}, against a real server process with
traffic flowing: what the page shows equals what C{/metrics} and
C{/status.json} say.

Nothing is downloaded at run time: the browser and its driver are Debian's
C{chromium} and C{chromium-driver} (.ci/run installs them); without them
the browser test skips, naming the one missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from unittest import mock

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import ServerProcess, processTest, requireTool, waitUntil

TOKEN = "correct-horse-battery-staple"
WIDTH, HEIGHT = 1280, 800


def adminPort(server: ServerProcess) -> int:
    match = server.waitForLine(r"admin endpoint on tcp:[\d.]+:(\d+)")
    return int(match.group(1))


def fetch(port: int, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def status(port: int, token: str | None = TOKEN) -> dict[str, Any]:
    code, body = fetch(port, "/status.json", token)
    assert code == 200, code
    document: dict[str, Any] = json.loads(body)
    return document


def metrics(
    port: int, token: str | None = TOKEN
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, body = fetch(port, "/metrics", token)
    assert code == 200, code
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


class Traffic:
    """
    Clients of a real server: connections held open on each listener, one
    slow reader that sends without reading (so the server queues bytes for
    it and stops reading from it), one client refused by C{deny}.
    """

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def hold(self, port: int, count: int) -> None:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"ping")
            received = b""
            while len(received) < 4:
                received += sock.recv(4 - len(received))
            self.sockets.append(sock)

    def slowReader(self, port: int) -> None:
        """
        Send until the kernel takes no more: the server's queue for this
        client then stays where it is.
        """
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setblocking(False)
        chunk = b"s" * 65536
        deadline = time.monotonic() + 30
        stalled = 0.0
        while time.monotonic() < deadline:
            try:
                sock.send(chunk)
                stalled = 0.0
            except BlockingIOError:
                if not stalled:
                    stalled = time.monotonic()
                elif time.monotonic() - stalled > 1.0:
                    break
                time.sleep(0.05)
        self.sockets.append(sock)

    def refused(self, port: int, source: str) -> None:
        with socket.socket() as sock:
            sock.bind((source, 0))
            sock.settimeout(10)
            sock.connect(("127.0.0.1", port))
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def serverWithTraffic(testCase: TestCase, *extra: str) -> tuple[ServerProcess, int]:
    """
    A server with two listeners and an admin endpoint that asks for
    L{TOKEN}, and traffic on it (L{Traffic}): on the first listener 3
    connections and the slow reader, on the second 2 and a refusal.
    """
    tokenFile = testCase.mktemp()
    with open(tokenFile, "w") as f:
        f.write(TOKEN + "\n")
    config = testCase.mktemp()
    with open(config, "w") as f:
        f.write(
            'admin = "tcp:0:interface=127.0.0.1"\n'
            f"admin_token_file = {json.dumps(os.path.abspath(tokenFile))}\n"
            'deny = ["127.0.0.3"]\n'
            'max_write_buffer = "256KiB"\n'
            "shutdown_timeout = 30\n"
            "[[listen]]\n"
            'endpoint = "tcp:0:interface=127.0.0.1"\n'
            "max_connections = 5\n"
            "[[listen]]\n"
            'endpoint = "tcp:0:interface=127.0.0.1"\n'
        )
    server = ServerProcess(
        "--config", os.path.abspath(config), *extra, listeners=2, loopback=False
    )
    server.start()
    testCase.addCleanup(server.kill)
    admin = adminPort(server)
    first, second = (port for _, port in server.addresses)
    traffic = Traffic()
    testCase.addCleanup(traffic.close)
    traffic.hold(first, 3)
    traffic.hold(second, 2)
    traffic.slowReader(first)
    traffic.refused(second, "127.0.0.3")
    # The queue stays put once the slow reader's kernel buffers are full.
    waitUntil(lambda: status(admin)["memory"]["queued_bytes"] > 0, 30, "bytes queued")
    server.traffic = traffic  # type: ignore[attr-defined]
    return server, admin


def browser() -> Any:
    """
    Headless Chromium (Debian's), driven by its own chromedriver, with the
    console log kept; skips (fails under CI) naming what is missing.
    """
    chromium = requireTool("chromium", "/usr/bin/chromium")
    chromedriver = requireTool("chromedriver", "/usr/bin/chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        if os.environ.get("CI") == "true":
            raise
        raise SkipTest("needs selenium (the test extra: pip install '.[test]')") from e
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={WIDTH},{HEIGHT}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Selenium Manager would look for drivers online: both are given.
    with mock.patch.dict(os.environ, {"SE_OFFLINE": "true"}):
        driver = webdriver.Chrome(
            options=options, service=Service(executable_path=chromedriver)
        )
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
    )
    return driver


# What the page shows, read in one go.
SNAPSHOT = """
const all = (selector) => Array.from(document.querySelectorAll(selector));
const text = (root, selector) => {
  const node = root.querySelector(selector);
  return node === null ? null : node.innerText;
};
return {
  state: document.getElementById("server-state").innerText,
  listeners: all("#listeners tbody tr").map((row) => ({
    state: row.className,
    open: text(row, "[data-field=open]"),
    bound: text(row, "[data-field=bound]"),
    refused: text(row, "[data-field=refused]"),
  })),
  queued: text(document, "[data-field=memory-queued-bytes]"),
  reasons: all("#refusals [data-field=reason]").map((cell) => cell.innerText),
  heaviest: text(document, "#by-queued tbody tr [data-field=peer]"),
};
"""


def number(text: str) -> int:
    """
    The first whole number in C{text}, thousands separators and all.
    """
    match = re.search(r"\d[\d,]*", text)
    assert match is not None, text
    return int(match.group().replace(",", ""))


@processTest
class StatusPageTests(TestCase):
    def test_pageShowsWhatTheServerCounts(self) -> None:
        driver = browser()
        self.addCleanup(driver.quit)
        server, admin = serverWithTraffic(self)
        # The browser gives the token as a basic-auth password, as an
        # operator's browser does once asked.
        driver.get(f"http://status:{TOKEN}@127.0.0.1:{admin}/status")

        def refreshes() -> int:
            count = driver.execute_script(
                "return document.getElementById('refreshes').dataset.count"
            )
            return int(count or 0)

        try:
            waitUntil(lambda: refreshes() >= 1, 30, "the page's first drawing")
        except AssertionError as e:
            raise AssertionError(f"{e}; console: {driver.get_log('browser')}") from e
        seen = refreshes()
        waitUntil(lambda: refreshes() > seen, 30, "a refresh")
        # One reading of the page, in one turn of its event loop: a refresh
        # redraws the tables between two turns, never during one.
        page = driver.execute_script(SNAPSHOT)
        document = status(admin)
        samples = metrics(admin)

        self.assertEqual(len(page["listeners"]), 2)
        shown = []
        for row, listener in zip(page["listeners"], document["listeners"], strict=True):
            shown.append(number(row["open"]))
            self.assertEqual(number(row["open"].split("/")[1]), listener["limit"])
            self.assertEqual(row["bound"], listener["bound"])
        self.assertEqual(shown, [4, 2])
        self.assertEqual(shown, [x["open"] for x in document["listeners"]])
        self.assertEqual(sum(shown), samples[("myserver_connections_open", ())])
        # 4 of 5 on the first listener: near its limit, coloured so.
        self.assertEqual(
            [row["state"] for row in page["listeners"]], ["near_limit", "serving"]
        )
        self.assertIn("deny 1", page["listeners"][1]["refused"])

        self.assertGreater(number(page["queued"]), 0)
        self.assertEqual(number(page["queued"]), document["memory"]["queued_bytes"])
        self.assertEqual(
            number(page["queued"]), samples[("myserver_buffered_bytes", ())]
        )

        self.assertEqual(page["reasons"], ["deny"])
        self.assertEqual(document["refusals"][0]["reason"], "deny")
        self.assertEqual(
            samples[("myserver_connections_rejected_total", (("reason", "deny"),))], 1
        )
        self.assertEqual(
            page["heaviest"], document["connections"]["by_queued"][0]["peer"]
        )
        self.assertEqual(page["state"], "serving")

        errors = [
            entry
            for entry in driver.get_log("browser")
            if entry["level"] in ("SEVERE", "ERROR")
        ]
        self.assertEqual(errors, [])
        width = driver.execute_script("return window.innerWidth")
        scrollWidth = driver.execute_script(
            "return document.documentElement.scrollWidth"
        )
        self.assertEqual(width, WIDTH)
        self.assertLessEqual(scrollWidth, WIDTH, "the page scrolls sideways")
        screenshot = os.path.abspath(self.mktemp() + ".png")
        self.assertTrue(driver.save_screenshot(screenshot))
        sys.stderr.write(f"\nstatus page screenshot: {screenshot}\n")
        # STATUS_SCREENSHOT=docs/status.png refreshes the README's picture.
        if os.environ.get("STATUS_SCREENSHOT"):
            shutil.copyfile(screenshot, os.environ["STATUS_SCREENSHOT"])

        # Draining: the page turns blue within a refresh.
        server.signal(signal.SIGTERM)
        server.waitForLine("draining")
        waitUntil(
            lambda: driver.execute_script(SNAPSHOT)["state"] == "draining",
            30,
            "the page to show the drain",
        )
        page = driver.execute_script(SNAPSHOT)
        self.assertEqual({row["state"] for row in page["listeners"]}, {"draining"})
        server.traffic.close()  # type: ignore[attr-defined]
        self.assertEqual(server.process.wait(60), 0)


@processTest
class StatusCommandTests(TestCase):
    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        myserver = os.path.join(os.path.dirname(sys.executable), "myserver")
        return subprocess.run(
            [myserver, "status", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("MYSERVER_")}
            | {"COLUMNS": "200"},
        )

    def test_tables(self) -> None:
        """
        C{myserver status} prints the tables once; without the token, or
        with no server, it says so on one line and exits 1.
        """
        server, admin = serverWithTraffic(self)
        tokenFile = self.mktemp()
        with open(tokenFile, "w") as f:
            f.write(TOKEN)
        endpoint = f"tcp:{admin}:interface=127.0.0.1"
        result = self.command("--admin", endpoint, "--token-file", tokenFile)
        self.assertEqual(result.returncode, 0, result.stderr)
        for _, port in server.addresses:
            self.assertIn(f"tcp:127.0.0.1:{port}", result.stdout)
        self.assertIn("4 / 5", result.stdout)
        self.assertIn("deny 1", result.stdout)

        refused = self.command("--admin", endpoint)
        self.assertEqual(refused.returncode, 1)
        [line] = refused.stderr.splitlines()
        self.assertIn("asks for its token", line)
        self.assertEqual(fetch(admin, "/status.json", token=None)[0], 401)
        self.assertEqual(fetch(admin, "/healthz", token=None)[0], 200)

        server.traffic.close()  # type: ignore[attr-defined]
        self.assertEqual(server.stop(), 0)
        gone = self.command("--admin", endpoint)
        self.assertEqual(gone.returncode, 1)
        [line] = gone.stderr.splitlines()
        self.assertIn("no answer from the admin endpoint", line)

    def test_badTokenFile(self) -> None:
        result = subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "myserver"),
                "--admin",
                "tcp:0:interface=127.0.0.1",
                "--admin-token-file",
                "/nonexistent/token",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 2)
        [line] = result.stderr.splitlines()
        self.assertIn("--admin-token-file", line)
        self.assertIn("cannot read token file /nonexistent/token", line)


@processTest
class WorkerStatusTests(TestCase):
    def test_workersMerged(self) -> None:
        """
        With workers, the parent's /status.json has one row per worker and
        the listeners' figures added up over them, equal to /metrics.
        """
        server = ServerProcess(
            "--workers", "2", "--admin", "tcp:0:interface=127.0.0.1"
        ).start()
        self.addCleanup(server.kill)
        admin = adminPort(server)
        traffic = Traffic()
        self.addCleanup(traffic.close)
        traffic.hold(server.port, 6)

        def workersUp() -> bool:
            document = status(admin, None)
            return [w["state"] for w in document["workers"]] == ["serving"] * 2

        waitUntil(workersUp, 30, "both workers to answer")
        document = status(admin, None)
        samples = metrics(admin, None)
        [listener] = document["listeners"]
        self.assertEqual(listener["open"], 6)
        self.assertEqual(listener["bound"], f"tcp:127.0.0.1:{server.port}")
        self.assertEqual(samples[("myserver_connections_open", ())], 6)
        self.assertEqual(
            sum(w["connections"] for w in document["workers"]), listener["open"]
        )
        self.assertEqual(document["server"]["workers"], 2)
        pids = [w["pid"] for w in document["workers"]]
        self.assertEqual(len(set(pids)), 2)
        self.assertEqual(len(document["connections"]["by_age"]), 6)
        self.assertLessEqual(
            {c["worker"] for c in document["connections"]["by_age"]}, {0, 1}
        )

        os.kill(pids[0], signal.SIGKILL)

        def restarted() -> bool:
            rows = status(admin, None)["workers"]
            return rows[0]["restarts"] == 1 and rows[0]["state"] == "serving"

        waitUntil(restarted, 30, "the worker's restart to show")
        traffic.close()
        self.assertEqual(server.stop(), 0)
