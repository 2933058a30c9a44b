"""
Unit tests for L{myserver.config} and L{myserver.settings}: precedence,
parsing, validation, rendering.
"""

from __future__ import annotations

import operator
import os
import tomllib
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from myserver.config import load
from myserver.endpoints import endpointChecker
from myserver.errors import ConfigError
from myserver.render import render
from myserver.settings import Listener, parseDuration, parseSize

PROTOCOLS = ("echo", "chargen")


class ParseTests(TestCase):
    """
    The value parsers shared by every spelling of a setting.
    """

    def test_sizes(self) -> None:
        """
        Sizes are bytes, with optional binary units.
        """
        self.assertEqual(parseSize(1), 1)
        self.assertEqual(parseSize("65536"), 65536)
        self.assertEqual(parseSize("64KiB"), 65536)
        self.assertEqual(parseSize("64k"), 65536)
        self.assertEqual(parseSize("1 MiB"), 1 << 20)
        self.assertEqual(parseSize("2G"), 2 << 30)

    def test_badSizes(self) -> None:
        """
        Zero, negative, fractional, boolean and unit-less garbage are refused.
        """
        for bad in (0, -1, "-1", "1.5M", "lots", True, 1.0, "", None, "1 TiB"):
            self.assertRaises(ValueError, parseSize, bad)

    def test_durations(self) -> None:
        """
        Durations are seconds, with optional units.
        """
        self.assertEqual(parseDuration(25), 25.0)
        self.assertEqual(parseDuration(0), 0.0)
        self.assertEqual(parseDuration("2.5"), 2.5)
        self.assertEqual(parseDuration("500ms"), 0.5)
        self.assertEqual(parseDuration("5m"), 300.0)
        self.assertEqual(parseDuration("1h"), 3600.0)

    def test_badDurations(self) -> None:
        """
        Negative, infinite, NaN and garbage durations are refused.
        """
        for bad in (-1, "-1", float("inf"), float("nan"), "soon", False, "1d"):
            self.assertRaises(ValueError, parseDuration, bad)


class LoadTests(TestCase):
    """
    L{load} merges command line, environment, TOML file and defaults.
    """

    def writeToml(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def load(
        self, cli: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> Any:
        return load(cli or {}, env or {}, PROTOCOLS, endpointChecker(reactor))

    def test_defaults(self) -> None:
        """
        With nothing given, the server serves echo on tcp:27015.
        """
        config = self.load()
        self.assertEqual(config.listen, (Listener("tcp:27015", "echo"),))
        self.assertEqual(config.max_write_buffer, 1 << 20)
        self.assertEqual(config.shutdown_timeout, 25.0)
        self.assertEqual(config.log_level, "info")
        self.assertEqual(config.log_format, "text")
        self.assertEqual(config.sources["listen"], "default")

    def test_precedence(self) -> None:
        """
        The command line beats the environment, which beats the file, which
        beats the defaults; each source is recorded.
        """
        path = self.writeToml(
            'listen = ["tcp:1"]\nmax_write_buffer = 111\n'
            'shutdown_timeout = 3\nlog_level = "warn"\n'
        )
        config = self.load(
            {"config": path, "max_write_buffer": "333"},
            {"MYSERVER_MAX_WRITE_BUFFER": "222", "MYSERVER_SHUTDOWN_TIMEOUT": "4"},
        )
        self.assertEqual(config.max_write_buffer, 333)
        self.assertEqual(config.shutdown_timeout, 4.0)
        self.assertEqual(config.log_level, "warn")
        self.assertEqual(config.log_format, "text")
        self.assertEqual(config.listen[0].endpoint, "tcp:1")
        self.assertEqual(config.sources["max_write_buffer"], "--max-write-buffer")
        self.assertEqual(
            config.sources["shutdown_timeout"], "MYSERVER_SHUTDOWN_TIMEOUT"
        )
        self.assertEqual(config.sources["log_level"], f"{path}: log_level")
        self.assertEqual(config.sources["log_format"], "default")

    def test_configFromEnvironment(self) -> None:
        """
        MYSERVER_CONFIG names the file when --config does not.
        """
        path = self.writeToml("shutdown_timeout = 7\n")
        config = self.load(env={"MYSERVER_CONFIG": path})
        self.assertEqual(config.shutdown_timeout, 7.0)
        self.assertEqual(config.config, path)

    def test_listenSpellings(self) -> None:
        """
        Listeners are repeatable on the command line, space-separated in the
        environment, and strings or tables in TOML; a table may name its own
        protocol and options, others get the default protocol.
        """
        cli = self.load({"listen": ["tcp:1", "tcp6:2"]})
        self.assertEqual([x.endpoint for x in cli.listen], ["tcp:1", "tcp6:2"])
        env = self.load(env={"MYSERVER_LISTEN": "tcp:1  unix:/tmp/x.sock"})
        self.assertEqual(
            [x.endpoint for x in env.listen], ["tcp:1", "unix:/tmp/x.sock"]
        )
        path = self.writeToml(
            'protocol = "echo"\n'
            '[[listen]]\nendpoint = "tcp:1"\n'
            '[[listen]]\nendpoint = "tcp:2"\nprotocol = "chargen"\n'
            "[listen.options]\nline_length = 72\n"
        )
        toml = self.load({"config": path})
        self.assertEqual(toml.listen[0], Listener("tcp:1", "echo"))
        self.assertEqual(toml.listen[1].protocol, "chargen")
        self.assertEqual(dict(toml.listen[1].options), {"line_length": 72})

    def test_frozen(self) -> None:
        """
        The configuration cannot be changed once loaded.
        """
        config = self.load()
        self.assertRaises(AttributeError, setattr, config, "max_write_buffer", 1)
        self.assertRaises(TypeError, operator.setitem, config.sources, "x", "y")

    def assertConfigError(self, *fragments: str, **kwargs: Any) -> str:
        error = self.assertRaises(ConfigError, self.load, **kwargs)
        message = str(error)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_badValueNamesSettingAndSource(self) -> None:
        """
        A bad value is reported with its source and the value itself.
        """
        self.assertConfigError(
            "--max-write-buffer", "'-5'", cli={"max_write_buffer": "-5"}
        )
        self.assertConfigError(
            "MYSERVER_SHUTDOWN_TIMEOUT",
            "'never'",
            env={"MYSERVER_SHUTDOWN_TIMEOUT": "never"},
        )
        self.assertConfigError("MYSERVER_LOG_LEVEL", env={"MYSERVER_LOG_LEVEL": "loud"})
        self.assertConfigError("--log-format", cli={"log_format": "xml"})

    def test_unknownProtocolListsAvailable(self) -> None:
        """
        An unknown protocol name is refused with the list of known ones.
        """
        self.assertConfigError(
            "unknown protocol 'nope'", "chargen, echo", cli={"protocol": "nope"}
        )

    def test_badEndpoint(self) -> None:
        """
        An endpoint string Twisted cannot parse is refused at load time.
        """
        self.assertConfigError(
            "invalid endpoint 'tcp:notaport'", cli={"listen": ["tcp:notaport"]}
        )
        self.assertConfigError(
            "invalid endpoint 'bogus:1'", cli={"listen": ["bogus:1"]}
        )

    def test_badToml(self) -> None:
        """
        Invalid TOML is reported with the file and the line number.
        """
        path = self.writeToml('max_write_buffer = 1\nlisten = [\n"tcp:1"\nx = 2\n')
        message = self.assertConfigError("invalid TOML in", path, cli={"config": path})
        self.assertRegex(message, r"line \d+")

    def test_unreadableToml(self) -> None:
        """
        A config file that cannot be read is reported with the OS's reason.
        """
        missing = os.path.join(self.mktemp(), "missing.toml")
        self.assertConfigError(
            "cannot read config file", "No such file", cli={"config": missing}
        )

    def test_unknownTomlKey(self) -> None:
        """
        A misspelt setting in the file is an error, not silently ignored.
        """
        path = self.writeToml("max_write_bufer = 1\n")
        self.assertConfigError(
            "unknown setting 'max_write_bufer'", cli={"config": path}
        )

    def test_badListenTable(self) -> None:
        """
        A listen table without an endpoint, or with unknown keys, is refused.
        """
        path = self.writeToml('[[listen]]\nprotocol = "echo"\n')
        self.assertConfigError("needs endpoint", cli={"config": path})
        path = self.writeToml('[[listen]]\nendpoint = "tcp:1"\nport = 2\n')
        self.assertConfigError("unknown key 'port'", cli={"config": path})

    def test_unknownEnvironmentIgnored(self) -> None:
        """
        Other MYSERVER_* variables are ignored: Kubernetes defines
        MYSERVER_PORT and friends for a Service named myserver.
        """
        config = self.load(env={"MYSERVER_PORT": "tcp://10.0.0.1:27015"})
        self.assertEqual(config.listen[0].endpoint, "tcp:27015")

    def test_renderRoundTrips(self) -> None:
        """
        The rendered configuration is TOML that loads back to the same
        settings, with each value's source noted.
        """
        path = self.writeToml(
            '[[listen]]\nendpoint = "tcp:2"\nprotocol = "chargen"\n'
            '[listen.options]\nline_length = 72\nname = "a \\"quoted\\" ü"\n'
        )
        config = self.load(
            {"config": path, "shutdown_timeout": "1.5"},
            {"MYSERVER_LOG_FORMAT": "json"},
        )
        text = render(config)
        self.assertIn("# --shutdown-timeout", text)
        self.assertIn("# MYSERVER_LOG_FORMAT", text)
        parsed = tomllib.loads(text)
        again = self.writeToml(text.replace("# config file", "# was"))
        reloaded = self.load({"config": again})
        self.assertEqual(parsed["shutdown_timeout"], 1.5)
        self.assertEqual(reloaded.listen, config.listen)
        self.assertEqual(reloaded.log_format, "json")
        self.assertEqual(reloaded.shutdown_timeout, 1.5)
