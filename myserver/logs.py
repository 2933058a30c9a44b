# -*- test-case-name: tests.test_logging -*-
"""
Log observers: human-readable text, or one JSON object per line.

Under twistd, the server's L{ServerLogObserver} is set as the
L{ILogObserver} component of the application, the way twistd documents a
custom observer, so C{log_level} and C{log_format} apply to everything
twistd, Twisted and myserver log.  An operator's own C{twistd --logger} or
C{--syslog} wins over it; under C{twist}, twist's own C{--log-level} and
C{--log-format} apply.
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


@implementer(ILogObserver)
class ServerLogObserver:
    """
    myserver's log observer: text or JSON lines, filtered at a level that a
    reload can change in place.
    """

    def __init__(self, level: str, format: str, stream: IO[str] | None = None) -> None:
        """
        @param stream: where to write; standard output when L{None}.
        """
        out = stream if stream is not None else sys.stdout
        base = JSONLinesObserver(out) if format == "json" else textFileLogObserver(out)
        self._predicate = LogLevelFilterPredicate(
            defaultLogLevel=LogLevel.levelWithName(level)
        )
        self._filtered = FilteringLogObserver(base, [self._predicate])

    def __call__(self, event: dict[str, Any]) -> None:
        self._filtered(event)

    def setLevel(self, level: str) -> None:
        self._predicate.setLogLevelForNamespace("", LogLevel.levelWithName(level))


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
    ) -> int | None:
        """
        Emit unless an event with the same C{key} was emitted less than
        C{interval} seconds ago.

        @param failure: attached to the event (its traceback is logged).
        @return: L{None} when held back; else how many like it were held
            back before it (what the status page's list of refusals shows,
            at the log's own rate).
        """
        now = self._clock.seconds()
        last = self._lastEmitted.get(key)
        if last is not None and now - last < self._interval:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return None
        self._lastEmitted[key] = now
        held = self.suppressed.pop(key, 0)
        if held:
            format += " ({suppressed} more like this in the last {interval:g}s)"
        if failure is not None:
            fields["log_failure"] = failure
        self._logger.emit(
            level, format, suppressed=held, interval=self._interval, **fields
        )
        return held
