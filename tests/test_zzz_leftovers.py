"""
Runs last under both runners (each orders test modules by name): no process
the suite started is still alive.

Every process the suite starts, directly or through the servers it starts,
inherits C{SUITE_RUN} from L{tests} (see C{tests/__init__.py}), even once
orphaned; any of them still alive here fails the run, named, and is ended
so that nothing outlives it.
"""

from __future__ import annotations

import os
import time

from twisted.trial.unittest import TestCase

from myserver.testing.process import commandLine, endProcesses, markedProcesses
from tests import SUITE_RUN, SUITE_RUN_ID


class LeftoverProcessTests(TestCase):
    def test_noProcessOutlivesTheSuite(self) -> None:
        # A process told to stop may take a moment to finish its drain.
        deadline = time.monotonic() + 10
        alive = self._started()
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = self._started()
        named = [f"{pid}: {commandLine(pid)}" for pid in alive]
        endProcesses(alive)
        self.assertEqual(named, [], "processes the suite started are still alive")

    @staticmethod
    def _started() -> list[int]:
        """
        The marked processes, less this run's other trial workers (C{trial
        -j N}): the runner's, not the suite's, still running their tests.
        """
        ours = commandLine(os.getpid())
        return [
            pid
            for pid in markedProcesses(SUITE_RUN, SUITE_RUN_ID)
            if commandLine(pid) != ours
        ]
