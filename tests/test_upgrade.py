"""
Live upgrades (SIGUSR2): generations and the handover of listening sockets.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from myserver.generation import GENERATION, UPGRADED_AT, Generation, current


class GenerationTests(SynchronousTestCase):
    def test_firstByDefault(self) -> None:
        self.assertEqual(current({}), Generation(1, None))

    def test_fromEnvironment(self) -> None:
        self.assertEqual(
            current({GENERATION: "3", UPGRADED_AT: "1700000000.5"}),
            Generation(3, 1700000000.5),
        )

    def test_nonsenseIsFirst(self) -> None:
        self.assertEqual(
            current({GENERATION: "x", UPGRADED_AT: "y"}), Generation(1, None)
        )
        self.assertEqual(current({GENERATION: "-4"}), Generation(1, None))

    def test_successorRoundTrips(self) -> None:
        following = Generation(1, None).successor(1700000000.25)
        self.assertEqual(following, Generation(2, 1700000000.25))
        self.assertEqual(current(following.environment()), following)
