"""
C{myserver check}: every built-in protocol passes it, and deliberately
broken plugins (tests/plugins) fail the lines they should, and only those.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from myserver.testing.process import cleanEnvironment
from tests.support import processTest

BROKEN_PLUGINS = Path(__file__).parent / "plugins"
BUILTIN = ("echo", "discard", "chargen", "daytime", "time", "chat")


def check(protocol: str, *options: str) -> tuple[int, dict[str, Any]]:
    """
    Run C{myserver check PROTOCOL --json}, with the broken plugins
    installed too.

    @return: its exit status and its report.
    """
    command = os.path.join(os.path.dirname(sys.executable), "myserver")
    environ = cleanEnvironment({"PYTHONPATH": str(BROKEN_PLUGINS)})
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run(
            [command, "check", protocol, "--json", *options],
            cwd=scratch,
            env=environ,
            capture_output=True,
            text=True,
            timeout=300,
        )
    try:
        report = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(result.stdout + result.stderr) from None
    return result.returncode, report


def failed(report: dict[str, Any]) -> list[str]:
    return [c["name"] for c in report["checks"] if not c["passed"]]


@processTest
class BuiltinProtocolsPassTests(TestCase):
    def test_everyBuiltinPasses(self) -> None:
        for protocol in BUILTIN:
            status, report = check(protocol)
            self.assertEqual(failed(report), [], f"{protocol}: {report}")
            self.assertEqual(status, 0)
            self.assertEqual(len(report["checks"]), 10)

    def test_options(self) -> None:
        """
        Listener options reach the plugin, and a bad one fails the
        interface line with the plugin's own message.
        """
        status, report = check("chargen", "--option", "line_length=0")
        self.assertEqual(status, 1)
        self.assertEqual(failed(report), ["interface"])


@processTest
class BrokenPluginsFailTests(TestCase):
    def test_dropsOutputOnHalfClose(self) -> None:
        status, report = check("dropper")
        self.assertEqual(status, 1)
        self.assertEqual(failed(report), ["half-close"])

    def test_buffersWithoutBound(self) -> None:
        status, report = check("hoarder")
        self.assertEqual(status, 1)
        self.assertEqual(failed(report), ["slow reader"])

    def test_unknownProtocol(self) -> None:
        status, report = check("no-such-protocol")
        self.assertEqual(status, 1)
        self.assertEqual(failed(report), ["interface"])
