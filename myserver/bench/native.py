# -*- test-case-name: tests.test_bench -*-
"""
The C load generator (C{loadgen.c}, beside this module), built with the
machine's C compiler the first time it is needed.

The Python generator (L{myserver.bench.load}) runs out of its own core
before the fastest servers run out of theirs: on one connection and on
connect-rate runs the figures it gives are the client's.  This one keeps
the server's core busy, so that rates compare the servers; like the Python
one, it checks every echoed byte.  No library does this: the general load
generators (wrk, tcpkali) neither check an echo byte for byte nor do the
connect, send, half-close, read-to-EOF cycle of the connect-rate scenario.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from importlib.resources import files

from myserver.bench.load import LoadFailed, Result, WrongBytes

SOURCE = "loadgen.c"


def compiler() -> str | None:
    """
    The C compiler to build with: C{$CC}, else C{cc} or C{gcc} on the path.
    """
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    return None


def build(cacheDir: str | None = None) -> str:
    """
    The load generator's executable, compiled from C{loadgen.c} into
    C{cacheDir} (the user's cache by default) unless a build of the same
    source is there already.

    @raise LoadFailed: there is no compiler, or it failed.
    """
    cc = compiler()
    if cc is None:
        raise LoadFailed("the C load generator needs a C compiler (cc)")
    source = files("myserver.bench").joinpath(SOURCE).read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    if cacheDir is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        cacheDir = os.path.join(base, "myserver-bench")
    os.makedirs(cacheDir, exist_ok=True)
    executable = os.path.join(cacheDir, f"loadgen-{digest}")
    if os.access(executable, os.X_OK):
        return executable
    with tempfile.TemporaryDirectory(dir=cacheDir) as scratch:
        path = os.path.join(scratch, SOURCE)
        with open(path, "wb") as f:
            f.write(source)
        built = os.path.join(scratch, "loadgen")
        compiled = subprocess.run(
            [cc, "-O2", "-pthread", "-o", built, path],
            capture_output=True,
            text=True,
        )
        if compiled.returncode != 0:
            raise LoadFailed(f"building the C load generator failed: {compiled.stderr}")
        # Atomically: another run may be building the same source.
        os.replace(built, executable)
    return executable


def generate(
    executable: str,
    scenario: str,
    port: int,
    count: int,
    size: int,
    seconds: float,
    threads: int,
    cpus: set[int] | None = None,
) -> Result:
    """
    Run C{scenario} against C{127.0.0.1:port}, as
    L{myserver.bench.load.generate} does, from C{threads} threads of the C
    load generator (pinned to C{cpus}).

    @raise WrongBytes: if any echo differed from what was sent.
    @raise LoadFailed: if the run failed otherwise (refused connections).
    """
    threads = max(1, min(threads, count))
    run = subprocess.run(
        [executable, scenario, str(port), str(count), str(size), str(seconds),
         str(threads)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )  # fmt: skip
    if run.returncode != 0:
        message = run.stderr.strip() or f"exit status {run.returncode}"
        if run.returncode == WRONG_BYTES_STATUS:
            raise WrongBytes(message)
        raise LoadFailed(f"the C load generator failed: {message}")
    report = json.loads(run.stdout)
    return Result(
        operations=report["operations"],
        seconds=report["seconds"],
        latencies=report["latencies"],
    )


# What loadgen.c exits with when an echo differs from what it sent.
WRONG_BYTES_STATUS = 3
