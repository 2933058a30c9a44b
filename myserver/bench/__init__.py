# -*- test-case-name: tests.test_bench -*-
"""
C{myserver-bench}: myserver against its peers, measured in the same run.

Speed goals live here, never in a test assertion: numbers on one machine
move by 20-30 % from run to run, so every report is a ratio to peers
measured in the same run, with repetitions interleaved.
"""
