# -*- test-case-name: tests.test_upgrade -*-
"""
Which generation of the server this process is, and when it took over.

The first process started is generation 1; each live upgrade (SIGUSR2)
starts the next generation, which inherits the listening sockets and
replaces the one before.  The generation that starts a new one tells it its
number and the time of the upgrade in the environment, so the new process
knows both before anything else is built (its logs, C{/metrics} and
C{/status.json} show them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# The environment variables a generation sets for the next.
GENERATION = "MYSERVER_GENERATION"
UPGRADED_AT = "MYSERVER_UPGRADED_AT"


@dataclass(frozen=True)
class Generation:
    """
    @ivar number: 1 for a process started by hand, one more per upgrade.
    @ivar upgradedAt: when this generation was started by an upgrade (POSIX
        time), or L{None} for generation 1.
    """

    number: int
    upgradedAt: float | None

    def successor(self, now: float) -> Generation:
        return Generation(self.number + 1, now)

    def environment(self) -> dict[str, str]:
        """
        The variables that make a new process this generation.
        """
        environ = {GENERATION: str(self.number)}
        if self.upgradedAt is not None:
            environ[UPGRADED_AT] = repr(self.upgradedAt)
        return environ


def current(environ: Mapping[str, str] = os.environ) -> Generation:
    """
    This process's generation, from its environment (generation 1 when
    nothing, or nothing sensible, says otherwise).
    """
    try:
        number = max(1, int(environ.get(GENERATION, "1")))
    except ValueError:
        number = 1
    try:
        upgradedAt: float | None = float(environ[UPGRADED_AT])
    except (KeyError, ValueError):
        upgradedAt = None
    return Generation(number, upgradedAt if number > 1 else None)
