"""
myserver's tests, run by both trial and pytest.

Importing this package marks the environment: every process the suite
starts inherits C{SUITE_RUN}, so that L{tests.test_zzz_leftovers} can find
any that outlive it.
"""

import os
import time

SUITE_RUN = "SUITE_RUN"
SUITE_RUN_ID = os.environ.setdefault(SUITE_RUN, f"{os.getpid()}-{time.time_ns()}")
