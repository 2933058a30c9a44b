"""
Plugin packages as their authors have them: the one C{myserver new-plugin}
writes and docs/example, each installed (into a directory of its own on
PYTHONPATH, leaving this environment untouched), tested with its own tests
(which use the test kit) and checked with C{myserver check}.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import TestCase

from myserver.testing.process import cleanEnvironment
from tests.support import processTest

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "example"


def environment(target: str) -> dict[str, str]:
    return cleanEnvironment({"PYTHONPATH": target})


@processTest
class PluginPackageTests(TestCase):
    def installAndTest(self, source: Path, name: str, tests: int) -> None:
        target = tempfile.mkdtemp(prefix="plugin-")
        self.addCleanup(subprocess.run, ["rm", "-rf", target])
        install = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-deps",
                "--target",
                target,
                str(source),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(install.returncode, 0, install.stderr)
        ran = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
            cwd=source,
            env=environment(target),
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertIn(f"{tests} passed", ran.stdout, ran.stdout + ran.stderr)
        myserver = os.path.join(os.path.dirname(sys.executable), "myserver")
        checked = subprocess.run(
            [myserver, "check", name],
            cwd=target,
            env=environment(target),
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)
        self.assertIn(f"{name}: 10 of 10 checks passed", checked.stdout)

    def test_newPlugin(self) -> None:
        directory = Path(self.mktemp()).resolve()
        myserver = os.path.join(os.path.dirname(sys.executable), "myserver")
        written = subprocess.run(
            [myserver, "new-plugin", "shout", str(directory)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(written.returncode, 0, written.stderr)
        self.assertIn("tests/test_shout.py", written.stdout)
        self.installAndTest(directory, "shout", 5)

    def test_newPluginRefusesBadNameAndFullDirectory(self) -> None:
        myserver = os.path.join(os.path.dirname(sys.executable), "myserver")
        for args in (["Bad-Name"], ["ok", str(EXAMPLE)]):
            result = subprocess.run(
                [myserver, "new-plugin", *args],
                capture_output=True,
                text=True,
                timeout=60,
                cwd="/tmp",
            )
            self.assertEqual(result.returncode, 2)
            self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)

    def test_example(self) -> None:
        copy = Path(self.mktemp()).resolve()
        subprocess.run(["cp", "-r", str(EXAMPLE), str(copy)], check=True)
        subprocess.run(["rm", "-rf", str(copy / "build")], check=True)
        self.installAndTest(copy, "upper", 5)
