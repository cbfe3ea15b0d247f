"""Field converters shared by the API's models (gateway/api/models.py uses them as pydantic before-validators):
each raises ValueError saying the problem, which the API answers as a 400 naming the field."""
from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar

from yarl import URL

from .errors import ApiError

MAX_PAGESIZE = 150
#: larger integers than this overflow SQLite's 64-bit INTEGER; refuse them as input instead of failing with a 500
MAX_INT = 2**62
_INT = re.compile(r"^-?[0-9]{1,30}$")

_Num = TypeVar("_Num", int, float)


def bad(field: str, problem: str, status: int = 400) -> ApiError:
    return ApiError(status, f"{field}: {problem}", field)


def to_int(value: Any) -> int:
    """An integer from JSON or a query string ("5"); booleans are refused (lax parsing would read true as 1)."""
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    if isinstance(value, str) and _INT.match(value.strip()):
        value = int(value.strip())
    if not isinstance(value, int):
        raise ValueError("must be an integer")
    if abs(value) > MAX_INT:
        raise ValueError("is too large")
    return value


def to_float(value: Any) -> float:
    """A finite number (a JSON number or a numeric string); booleans are refused."""
    if isinstance(value, bool):
        raise ValueError("must be a number")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError("must be a finite number")
    return v


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError("must be true or false")


def to_str(value: Any, max_len: int = 1000) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    text: str = value.strip()
    if len(text) > max_len:
        raise ValueError(f"must be at most {max_len} characters")
    return text


def to_list(value: Any) -> list[Any]:
    """A JSON list, or a comma-separated string (what a form or a CLI flag sends)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ValueError("must be a list")
    return value


def to_http_url(value: Any) -> str:
    text = to_str(value, max_len=1000)
    try:
        url = URL(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an http:// or https:// URL with a host")
    return text


def to_time_bound(value: Any, *, end: bool) -> datetime:
    """A date filter bound: an ISO 8601 date (`2026-11-30`: the whole day, UTC) or date-time (no zone: UTC).

    Returns the instant to compare with: a start bound is inclusive; for an end bound the caller compares with
    `<`, so a bare date as end bound becomes the next midnight (the named day is included)."""
    text = to_str(value, max_len=64)
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            at = datetime.combine(day + timedelta(days=1) if end else day, time(), UTC)
        else:
            at = datetime.fromisoformat(text.replace("Z", "+00:00"))
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
            if end:
                at += timedelta(microseconds=1)
    except (ValueError, OverflowError):
        raise ValueError(f"must be a date (YYYY-MM-DD) or an ISO 8601 date-time (got {text[:40]!r})") from None
    return at


def as_int(value: Any, field: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """`to_int` for a value outside a model (a path segment), failing as a 400 naming `field`."""
    try:
        number = to_int(value)
    except ValueError as e:
        raise bad(field, str(e)) from None
    if minimum is not None and number < minimum:
        raise bad(field, f"must be at least {minimum}")
    if maximum is not None and number > maximum:
        raise bad(field, f"must be at most {maximum}")
    return number
