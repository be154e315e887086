"""Daemon logging: human text or one JSON object per line.

Structured fields travel in ``extra={"fields": {...}}``; :func:`log` is the
short form. JSON lines always carry ``ts`` (RFC 3339, UTC, milliseconds),
``level`` and ``msg``, then the fields, then ``traceback`` for bugs.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from typing import Any, Dict, Optional, TextIO

from ..errors import printable

LOGGER_NAME = "ipvlan-reconciler"
logger = logging.getLogger(LOGGER_NAME)

_RESERVED = ("ts", "level", "msg", "traceback")


def iso_utc(created: float) -> str:
    """UTC, milliseconds, ``Z``: ``2026-01-02T03:04:05.678Z`` (log lines, the status file)."""
    t = _dt.datetime.fromtimestamp(created, tz=_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _fields(record: logging.LogRecord) -> Dict[str, Any]:
    f = getattr(record, "fields", None)
    return dict(f) if isinstance(f, dict) else {}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_jsonable(x) for x in v]
    return str(v)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: Dict[str, Any] = {
            "ts": iso_utc(record.created),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        for k, v in _fields(record).items():
            out[k if k not in _RESERVED else "field_" + k] = _jsonable(v)
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def _text_value(v: Any) -> str:
    s = json.dumps(_jsonable(v), ensure_ascii=False) if not isinstance(v, str) else v
    if s == "" or any(c in s for c in ' "=\n\t') or printable(s) != s:  # escapes: JSON-quoted
        return json.dumps(s, ensure_ascii=False)
    return s


class TextFormatter(logging.Formatter):
    def __init__(self, timestamps: bool = True):
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        head = f"{iso_utc(record.created)} " if self.timestamps else ""
        line = f"{head}{record.levelname:<7} {record.getMessage()}"
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(fmt: str = "text", level: str = "info", stream: Optional[TextIO] = None) -> logging.Logger:
    """Configure the daemon's logger (idempotent: replaces handlers it added before)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    for h in list(logger.handlers):
        logger.removeHandler(h)
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper(), logging.INFO))
    logger.propagate = False
    # libraries (watchdog) speak through the root logger: warnings and worse, same format
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_ipvlan_reconciler", False):
            root.removeHandler(h)
    rh = logging.StreamHandler(stream or sys.stderr)
    rh.setFormatter(handler.formatter)
    rh._ipvlan_reconciler = True  # type: ignore[attr-defined]
    root.addHandler(rh)
    root.setLevel(logging.WARNING)
    return logger


def log(level: int, msg: str, /, exc_info: bool = False, **fields: Any) -> None:
    logger.log(level, msg, exc_info=exc_info, extra={"fields": fields})


def debug(msg: str, /, **fields: Any) -> None:
    log(logging.DEBUG, msg, **fields)


def info(msg: str, /, **fields: Any) -> None:
    log(logging.INFO, msg, **fields)


def warning(msg: str, /, **fields: Any) -> None:
    log(logging.WARNING, msg, **fields)


def error(msg: str, /, exc_info: bool = False, **fields: Any) -> None:
    log(logging.ERROR, msg, exc_info=exc_info, **fields)
