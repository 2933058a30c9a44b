"""
Log observers: human-readable text, or one JSON object per line.

twistd builds its log observer through its C{--logger} option, the dotted
name of a function of no arguments.  myserver's options L{prepare} the
observer and set that option to L{twistdObserver} (unless the operator chose
a logger or syslog), so C{log_level} and C{log_format} apply to everything
twistd, Twisted and myserver log.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

# Keys of an event that Twisted's logging machinery adds; the rest are the
# event's own structured fields.
_LEGACY_KEYS = frozenset({"message", "time", "system", "isError", "format", "why"})


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Write each event as one JSON object on one line: C{time} (ISO 8601, UTC),
    C{level}, C{namespace}, C{message}, then the event's own fields (C{peer},
    C{bytes_in}, ...) where they are plain JSON values, and C{traceback} when
    a failure is attached.  Parseable by C{jq}, one record per line.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time") or 0.0, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": getattr(level, "name", str(level)),
            "namespace": event.get("log_namespace", "-"),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if key.startswith("log_") or key in _LEGACY_KEYS or key in record:
                continue
            if value is None or isinstance(value, str | int | float | bool):
                record[key] = value
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            record["traceback"] = failure.getTraceback()
        self._stream.write(json.dumps(record, default=str) + "\n")
        self._stream.flush()


def makeObserver(level: str, format: str, stream: IO[str] | None = None) -> Any:
    """
    Build the observer for the configured level and format.

    @param stream: where to write; standard output when L{None}.
    """
    out = stream if stream is not None else sys.stdout
    base = JSONLinesObserver(out) if format == "json" else textFileLogObserver(out)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    _levels[:] = [predicate]
    return FilteringLogObserver(base, [predicate])


_levels: list[LogLevelFilterPredicate] = []


def setLevel(level: str) -> bool:
    """
    Change the level of the observer built by L{makeObserver}, in place.

    @return: whether there was one to change.
    """
    for predicate in _levels:
        predicate.setLogLevelForNamespace("", LogLevel.levelWithName(level))
    return bool(_levels)


_prepared: list[Any] = []


def prepare(level: str, format: str, stream: IO[str] | None) -> str:
    """
    Remember the observer that L{twistdObserver} will build.

    @return: the dotted name to give twistd as its C{--logger}.
    """
    _prepared[:] = [level, format, stream]
    return f"{__name__}.{twistdObserver.__name__}"


def twistdObserver() -> Any:
    """
    The observer L{prepare}d for twistd.
    """
    return makeObserver(*_prepared)


class RateLimitedLog:
    """
    Log each kind of event at most once per C{interval} seconds, so that a
    flood of refused connections or failed accepts cannot flood the log.
    The event that gets through says how many like it were held back.

    @ivar suppressed: events held back so far, by key.
    """

    def __init__(self, logger: Logger, clock: IReactorTime, interval: float = 5.0):
        self._logger = logger
        self._clock = clock
        self._interval = interval
        self._lastEmitted: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def emit(
        self,
        key: str,
        level: LogLevel,
        format: str,
        failure: Failure | None = None,
        **fields: Any,
    ) -> None:
        """
        Emit unless an event with the same C{key} was emitted less than
        C{interval} seconds ago.

        @param failure: attached to the event (its traceback is logged).
        """
        now = self._clock.seconds()
        last = self._lastEmitted.get(key)
        if last is not None and now - last < self._interval:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return
        self._lastEmitted[key] = now
        held = self.suppressed.pop(key, 0)
        if held:
            format += " ({suppressed} more like this in the last {interval:g}s)"
        if failure is not None:
            fields["log_failure"] = failure
        self._logger.emit(
            level, format, suppressed=held, interval=self._interval, **fields
        )
