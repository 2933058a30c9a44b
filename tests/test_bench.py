"""
myserver-bench, in a short run: every server gets results, bytes are
verified, ratios are reported; a server that echoes a wrong byte is caught.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

from twisted.trial.unittest import TestCase

from myserver.bench.load import WrongBytes, generate


def wrongEchoServer() -> tuple[int, threading.Event]:
    """
    An echo server that changes the last byte of what it sends back.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            with client:
                client.settimeout(5)
                try:
                    while data := client.recv(65536):
                        client.sendall(data[:-1] + bytes([data[-1] ^ 1]))
                except OSError:
                    pass
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], stop


class BenchTests(TestCase):
    def test_quickRun(self) -> None:
        out = os.path.abspath(self.mktemp())
        script = os.path.join(os.path.dirname(sys.executable), "myserver-bench")
        result = subprocess.run(
            [script, "pingpong", "connect-rate", "--quick", "--servers",
             "myserver,twisted,asyncio", "--json", out],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(out) as f:
            report = json.load(f)
        for scenario in ("pingpong", "connect-rate"):
            data = report["scenarios"][scenario]
            self.assertEqual(set(data["servers"]), {"myserver", "twisted", "asyncio"})
            for values in data["servers"].values():
                self.assertGreater(values["rate"], 0)
                self.assertTrue(values["verified"])
            self.assertEqual(set(data["ratio_of_myserver_to"]), {"twisted", "asyncio"})
        self.assertIn("myserver/twisted", result.stdout)

    def test_wrongByteFailsLoudly(self) -> None:
        port, stop = wrongEchoServer()
        self.addCleanup(stop.set)
        with self.assertRaises(WrongBytes):
            generate("pingpong", port, 1, 64, 0.5, 1)
