"""Log output of `gateway serve`: the structured `extra` fields of every record, as text or as JSON lines.

Code all over the gateway logs with `extra={"call_id": …, "carrier": …, "reason": …, "source_ip": …}`. The
standard `%(message)s` format drops those fields, which left lines like "call ended" with nothing to act on.
Both formats here print them:

* ``text`` (default): ``2026-01-01 12:00:00,000 WARNING gateway.api API request refused source_ip=203.0.113.9
  path=/api/v1/agents`` — logfmt-style ``key=value`` pairs after the message, values with spaces quoted, so
  fail2ban-style tools can match ``source_ip=<HOST>``;
* ``json``: one JSON object per line with ``time``, ``level``, ``logger``, ``message``, every field, and
  ``exception`` when there is a traceback.

Both formats mask fields whose name says they hold a credential, credentials inside URLs and SRTP keys inside SDP
(``inline:****``), so an extra like
``{"password": …}`` or a ``ws://user:pw@host`` engine URL can never reach the log in clear. Written here rather than
taken from a JSON-logging package because the text and JSON formats must pick and mask fields the same way.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

from .redact import MASK, redact_sdes, redact_url

FORMATS = ("text", "json")
#: attributes every LogRecord has; anything else on a record came from `extra=`
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_SECRET_NAME = re.compile(r"(^|_)(pass(word|wd)?|secret|token|authorization|api_?key|private_?key|cookie|credential)s?"
                          r"($|_)", re.IGNORECASE)
_BARE = re.compile(r"^[^\s\"=\\]+$")


def _clean(key: str, value: Any) -> Any:
    """A field value safe to log: credentials masked by field name, and inside URLs."""
    if _SECRET_NAME.search(key) and value not in (None, ""):
        return MASK
    if isinstance(value, str):
        return redact_sdes(redact_url(value) if "://" in value else value)
    return value


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra` fields of a record, in the order they were given, cleaned for the log."""
    return {k: _clean(k, v) for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


def _logfmt(value: Any) -> str:
    if not isinstance(value, str):
        value = json.dumps(value, default=str, separators=(",", ":")) if isinstance(value, (dict, list, tuple)) \
            else str(value)
    return value if _BARE.match(value) else json.dumps(value)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message key=value …` (the traceback, if any, on the following lines)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = redact_sdes(super().formatMessage(record))
        fields = record_fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_logfmt(v)}" for k, v in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": redact_sdes(record.getMessage()),
        }
        for k, v in record_fields(record).items():
            out.setdefault(k, v)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text", stream: Any = None) -> logging.Handler:
    """Install one handler on the root logger (replacing any), as `gateway serve` does at start."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


class ContextLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds fixed context (call id, carrier…) to every record *and keeps* the fields of each call.

    The standard LoggerAdapter (before Python 3.13's `merge_extra`) replaces a call's `extra` with its own, which
    silently dropped `reason`, `status`, `close_code`… from every per-call log line."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs
