"""
Configuration fuzzing: arbitrary values for every setting, in every
spelling, give either a valid L{Config} or a one-line L{ConfigError}, never
another exception.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from myserver.config import load
from myserver.endpoints import endpointChecker
from myserver.errors import ConfigError
from myserver.settings import ENV_PREFIX, SETTINGS, Config

NAMES = ["listen", *(s.name for s in SETTINGS)]
PROTOCOLS = ("echo",)

# Values that look like the real thing as well as nonsense, so that both
# the accepting and the refusing paths are exercised.
plausible = st.sampled_from(
    [
        "tcp:0",
        "tcp:0:interface=127.0.0.1",
        "unix:/tmp/fuzz.sock",
        "tcp:port",
        "echo",
        "0",
        "1",
        "-1",
        "64KiB",
        "1.5s",
        "10.0.0.0/8",
        "::1",
        "300.0.0.1",
        "json",
        "debug",
        "",
        " ",
        "1e309",
        "nan",
    ]
)
text = st.one_of(plausible, st.text(max_size=30))
tomlText = st.one_of(plausible, st.text(st.characters(exclude_categories=["Cs"])))
tomlScalar = st.one_of(
    tomlText,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.booleans(),
)
tomlValue = st.recursive(
    tomlScalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["endpoint", "protocol", "options", "x"]), inner, max_size=3
        ),
    ),
    max_leaves=8,
)
cliValue = st.one_of(text, st.lists(text, max_size=3), st.none())


def tomlDocument(values: dict[str, Any]) -> str:
    """
    Write C{values} as TOML (inline tables and arrays only).
    """

    def render(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            if value != value:
                return "nan"
            if value in (float("inf"), float("-inf")):
                return "inf" if value > 0 else "-inf"
            return repr(value)
        if isinstance(value, int):
            return str(value)
        if isinstance(value, str):
            return json.dumps(value, ensure_ascii=False)
        if isinstance(value, list):
            return "[" + ", ".join(render(v) for v in value) + "]"
        return (
            "{"
            + ", ".join(f"{json.dumps(k)} = {render(v)}" for k, v in value.items())
            + "}"
        )

    return "".join(f"{name} = {render(value)}\n" for name, value in values.items())


class ConfigFuzzTests(TestCase):
    """
    L{load} under arbitrary input.
    """

    def assertLoadsOrRefuses(self, *args: Any) -> None:
        try:
            config = load(*args, endpointChecker(reactor))
        except ConfigError as e:
            message = str(e)
            self.assertTrue(message)
            self.assertNotIn("\n", message)
            self.assertNotIn("\r", message)
        else:
            self.assertIsInstance(config, Config)
            self.assertTrue(config.listen)

    @settings(max_examples=300, deadline=None, database=None)
    @given(
        cli=st.dictionaries(st.sampled_from(NAMES), cliValue),
        env=st.dictionaries(
            st.sampled_from([ENV_PREFIX + n.upper() for n in NAMES]), text
        ),
    )
    def test_commandLineAndEnvironment(
        self, cli: dict[str, Any], env: dict[str, str]
    ) -> None:
        self.assertLoadsOrRefuses(cli, env, PROTOCOLS)

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(values=st.dictionaries(st.sampled_from([*NAMES, "bogus"]), tomlValue))
    def test_tomlValues(self, values: dict[str, Any]) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(tomlDocument(values))
        try:
            self.assertLoadsOrRefuses({"config": f.name}, {}, PROTOCOLS)
        finally:
            os.unlink(f.name)

    @settings(max_examples=200, deadline=None, database=None)
    @given(document=st.binary(max_size=200))
    def test_tomlBytes(self, document: bytes) -> None:
        """
        Any bytes at all as the configuration file.
        """
        with tempfile.NamedTemporaryFile("wb", suffix=".toml", delete=False) as f:
            f.write(document)
        try:
            self.assertLoadsOrRefuses({}, {"MYSERVER_CONFIG": f.name}, PROTOCOLS)
        finally:
            os.unlink(f.name)
