"""Logging for the CLI: text or JSON lines on stderr, database passwords masked, kafka-python's
own records tamed, and an observer that logs the relay's state changes (never one line per
event).

Below DEBUG level, kafka-python speaks only through `KafkaClientFilter`: at most one line per
`KAFKA_SUMMARY_INTERVAL` seconds, without traceback, saying how many of its records were held
back; the relay's own lines (broker unreachable, a reminder at most once a minute, reachable
again) tell the story of an outage. With ``--log-level debug`` every kafka-python record passes
unchanged, tracebacks included.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, Literal, TextIO

from sqlalchemy.engine import URL

from outbox.config import mask_url
from outbox.errors import ConfigurationError
from outbox.relay.observer import RelayObserver

LogFormat = Literal["text", "json"]

# `scheme://user:password@` in free text. The password runs to the last '@' before a '/' or
# a blank, so a raw '@' inside it is masked too (over-masking beats leaking).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)[^\s/]*@")
MASK = "***"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_HANDLER_MARK = "_outbox_handler"


def mask_text(text: str) -> str:
    """`text` with the password of every ``scheme://user:password@host`` replaced by ***."""
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)


def _mask_value(value: Any) -> Any:
    if isinstance(value, URL):
        return mask_url(value)
    if isinstance(value, str):
        return mask_text(value)
    return value


class MaskPasswordsFilter(logging.Filter):
    """Hides database passwords in messages, arguments, `extra=` fields and tracebacks.

    Attach it to a handler so that it sees the records of every logger (kafka-python's and
    SQLAlchemy's too); it never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, URL) for a in record.args):
            record.args = tuple(mask_url(a) if isinstance(a, URL) else a for a in record.args)
        try:
            message = record.getMessage()
        except Exception:
            # A broken format string: leave it to logging's own error report.
            return True
        masked = mask_text(message)
        if record.args or masked != message:
            record.msg, record.args = masked, None
        for name, extra in list(record.__dict__.items()):
            if name not in _STANDARD_ATTRS:
                record.__dict__[name] = _mask_value(extra)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        return True


#: Seconds between kafka-python summary lines at levels above DEBUG.
KAFKA_SUMMARY_INTERVAL = 60.0
#: Seconds between reminders that a component is still unreachable.
REMINDER_INTERVAL = 60.0


def _is_kafka(name: str) -> bool:
    return name == "kafka" or name.startswith("kafka.")


class KafkaClientFilter(logging.Filter):
    """kafka-python's records at levels above DEBUG: never a traceback, never one per reconnect.

    kafka-python logs an ERROR with a full traceback for each failed connection attempt (many
    per second while a broker is unreachable). This filter lets through at most one of its
    records per `interval` seconds, as one line without traceback (the exception's own first
    line appended), and counts the ones held back in the next line it lets through. Records of
    other loggers pass untouched. Attach it to a handler, before `MaskPasswordsFilter` (a held
    back record then costs no traceback formatting).
    """

    def __init__(self, interval: float = KAFKA_SUMMARY_INTERVAL) -> None:
        super().__init__()
        self.interval = interval
        self._next = 0.0
        self.held_back = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not _is_kafka(record.name):
            return True
        now = time.monotonic()
        if now < self._next:
            self.held_back += 1
            return False
        self._next = now + self.interval
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        message = message.strip().splitlines()[0] if message.strip() else record.levelname
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            first = str(error).strip().splitlines()
            message += f" ({type(error).__name__}: {first[0]})" if first else ""
        if self.held_back:
            message += (
                f" [{self.held_back} more kafka-python records held back in the last "
                f"{self.interval:.0f}s; --log-level debug shows them]"
            )
            self.held_back = 0
        record.msg, record.args = f"kafka-python: {message}", None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller passed with ``extra=``."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


def _utc_timestamp(created: float) -> str:
    seconds = time.gmtime(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the `extra=` fields, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in extra_fields(record).items():
            entry.setdefault(name, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2024-05-06 07:08:09,123 WARNING outbox.relay: message key=value ...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = extra_fields(record)
        if not extras:
            return line
        first, newline, rest = line.partition("\n")
        pairs = " ".join(f"{k}={v}" for k, v in extras.items())
        return f"{first} {pairs}{newline}{rest}"


def format_duration(seconds: float) -> str:
    """``4.2s``, ``3m 07s``, ``5h 02m``, ``3d 04h``: for logs and `outbox status`."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def configure_logging(
    format: LogFormat = "text", level: str = "INFO", stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record to stderr (or `stream`) as text or JSON lines, passwords masked.

    Calling it again replaces the handler it installed before. Returns that handler.
    """
    if format not in ("text", "json"):
        raise ConfigurationError(f"unknown log format {format!r}: text or json")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigurationError(
            f"unknown log level {level!r}: DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    if numeric > logging.DEBUG:
        handler.addFilter(KafkaClientFilter())
    handler.addFilter(MaskPasswordsFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    # kafka-python logs every connection at INFO; keep its warnings, drop the chatter (and
    # `KafkaClientFilter` summarises those). At DEBUG, all of its details.
    kafka_level = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    logging.getLogger("kafka").setLevel(kafka_level)
    return handler


class LoggingObserver(RelayObserver):
    """Logs one line per change of state: lease, database/broker reachability, parked events.

    Repeated reports of the same state log nothing, so an outage gives one line when it starts
    (with what the relay waits for) and one when it ends (with how long it lasted), however many
    batches fail in between; while it lasts, a reminder at most every `REMINDER_INTERVAL`
    seconds says for how long and how many events are pending.
    """

    def __init__(
        self, logger: logging.Logger | None = None, reminder_interval: float = REMINDER_INTERVAL
    ) -> None:
        self.log = logger if logger is not None else logging.getLogger("outbox.relay")
        self.reminder_interval = reminder_interval
        self._lease: bool | None = None
        self._up: dict[str, bool] = {}
        # Per component down: (monotonic time it went down, time of its last line).
        self._down: dict[str, tuple[float, float]] = {}
        self._pending: int | None = None

    def backlog(self, pending: int, oldest_age_seconds: float | None) -> None:
        self._pending = pending
        self._remind()

    def _remind(self, detail: str = "") -> None:
        now = time.monotonic()
        for component, (since, last) in list(self._down.items()):
            if now - last < self.reminder_interval:
                continue
            self._down[component] = (since, now)
            pending = "" if self._pending is None else f", {self._pending} events pending"
            self.log.warning(
                "%s still unreachable after %s%s%s",
                component,
                format_duration(now - since),
                pending,
                f": {detail}" if detail else "",
                extra={"component": component, "up": False, "down_seconds": round(now - since)},
            )

    def lease(self, held: bool, released: bool = False) -> None:
        if held == self._lease:
            return
        first = self._lease is None
        self._lease = held
        if held:
            self.log.info("lease acquired: this relay is now active", extra={"lease": "active"})
        elif released:
            self.log.info("lease released", extra={"lease": "released"})
        elif first:
            self.log.info("another relay holds the lease: standing by", extra={"lease": "standby"})
        else:
            self.log.warning("lease lost: standing by", extra={"lease": "standby"})

    def state(self, component: str, up: bool, detail: str = "") -> None:
        before = self._up.get(component)
        if before == up:
            if not up:
                self._remind(detail)
            return
        self._up[component] = up
        fields: dict[str, Any] = {"component": component, "up": up}
        now = time.monotonic()
        if up:
            down = self._down.pop(component, None)
            if down is None:
                self.log.info("%s reachable", component, extra=fields)
                return
            fields["down_seconds"] = round(now - down[0], 1)
            # The relay's own account of the outage's length (`detail`) beats ours: a silent
            # broker is reported down only after a while.
            self.log.info(
                "%s reachable again: %s",
                component,
                detail or f"down for {format_duration(now - down[0])}",
                extra=fields,
            )
        else:
            self._down[component] = (now, now)
            self.log.warning(
                "%s unreachable%s", component, f": {detail}" if detail else "", extra=fields
            )

    def parked(self, topic: str, count: int, reason: str = "") -> None:
        self.log.warning(
            "parked %d event%s for topic %s after a permanent rejection (see `outbox parked`)%s",
            count,
            "" if count == 1 else "s",
            topic,
            f": {reason}" if reason else "",
            extra={"topic": topic, "count": count},
        )
