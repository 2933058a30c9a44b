"""
pytest only: run the tests from a scratch working directory, as trial does
from _trial_temp, so that files tests create with relative paths (such as
C{TestCase.mktemp}) never land in the checkout.
"""

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def scratchWorkingDirectory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)
