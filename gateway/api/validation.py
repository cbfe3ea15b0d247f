"""Field checks shared by the API handlers; each failure is an ApiError naming the field and the problem."""
from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar

from yarl import URL

from ..carrier import ImportField
from ..numbers import typed_e164
from .errors import ApiError

MAX_PAGESIZE = 150
#: larger integers than this overflow SQLite's 64-bit INTEGER; refuse them as input instead of failing with a 500
MAX_INT = 2**62
_INT = re.compile(r"^-?[0-9]{1,30}$")
_MISSING = object()

_Num = TypeVar("_Num", int, float)


def bad(field: str, problem: str, status: int = 400) -> ApiError:
    return ApiError(status, f"{field}: {problem}", field)


def as_int(value: Any, field: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise bad(field, "must be an integer")
    if isinstance(value, str) and _INT.match(value.strip()):
        value = int(value.strip())
    if not isinstance(value, int):
        raise bad(field, "must be an integer")
    if abs(value) > MAX_INT:
        raise bad(field, "is too large")
    return _within(value, field, minimum, maximum)


def _within(value: _Num, field: str, minimum: float | None, maximum: float | None) -> _Num:
    """`value` when within the bounds, else a 400 naming the bound (integers as written, floats shortest)."""
    def shown(bound: float) -> str:
        return str(bound) if isinstance(bound, int) else f"{bound:g}"
    if minimum is not None and value < minimum:
        raise bad(field, f"must be at least {shown(minimum)}")
    if maximum is not None and value > maximum:
        raise bad(field, f"must be at most {shown(maximum)}")
    return value


def as_float(value: Any, field: str, *, minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite number (a JSON number or a numeric string), within the bounds when given."""
    if isinstance(value, bool):
        raise bad(field, "must be a number")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise bad(field, "must be a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise bad(field, "must be a finite number")
    return float(_within(v, field, minimum, maximum))


def as_bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise bad(field, "must be true or false")


def as_str(value: Any, field: str, *, max_len: int = 1000) -> str:
    if not isinstance(value, str):
        raise bad(field, "must be a string")
    text: str = value.strip()
    if len(text) > max_len:
        raise bad(field, f"must be at most {max_len} characters")
    return text


def as_list(value: Any, field: str) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise bad(field, "must be a list")
    return value


def as_time_bound(value: Any, field: str, *, end: bool) -> datetime:
    """A date filter bound: an ISO 8601 date (`2026-11-30`: the whole day, UTC) or date-time (no zone: UTC).

    Returns the instant to compare with: a start bound is inclusive; for an end bound the caller compares with
    `<`, so a bare date as end bound becomes the next midnight (the named day is included)."""
    text = as_str(value, field, max_len=64)
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
        raise bad(field, f"must be a date (YYYY-MM-DD) or an ISO 8601 date-time (got {text[:40]!r})") from None
    return at


def as_e164(value: Any, field: str) -> str:
    """A number a person typed, with its + (numbers.typed_e164); what carriers send is normalised elsewhere."""
    try:
        return typed_e164(value)
    except ValueError as e:
        raise bad(field, str(e)) from None


def as_http_url(value: Any, field: str) -> str:
    text = as_str(value, field, max_len=1000)
    try:
        url = URL(text)
    except ValueError:
        raise bad(field, f"{text!r} is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise bad(field, "must be an http:// or https:// URL with a host")
    return text


def as_object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(field, "must be a JSON object")
    return value


def required(body: dict[str, Any], name: str, field: str | None = None) -> Any:
    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise bad(field or name, "is required")
    return value


def reject_unknown(body: dict[str, Any], allowed: Collection[str], where: str = "") -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        f = unknown[0]
        raise bad(f"{where}{f}", f"unknown field (expected one of: {', '.join(sorted(allowed))})")


def pagination(query: Any) -> tuple[int, int]:
    pageno = as_int(query.get("pageno", "1"), "pageno", minimum=1, maximum=10**9)
    pagesize = as_int(query.get("pagesize", "20"), "pagesize", minimum=1, maximum=MAX_PAGESIZE)
    return pageno, pagesize


def import_body(fields: tuple[ImportField, ...], body: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Check a phone-number import body against a carrier's declared fields.

    `extra` maps generic fields every provider accepts (agent_id) to their already-checked values. Returns every
    declared field (defaults filled in), typed and normalised.
    """
    declared = {f.name: f for f in fields}
    reject_unknown(body, set(declared) | set(extra))
    out: dict[str, Any] = {}
    for f in fields:
        value = body.get(f.name, _MISSING)
        if value is _MISSING or value is None or (isinstance(value, str) and not value.strip()):
            if f.required:
                raise bad(f.name, "is required" + (f" ({f.help})" if f.help else ""))
            out[f.name] = f.default
            continue
        out[f.name] = _convert(f, value)
    return out


def _convert(f: ImportField, value: Any) -> Any:
    if f.kind is bool:
        v: Any = as_bool(value, f.name)
    elif f.kind is int:
        v = as_int(value, f.name)
    elif f.kind is float:
        v = as_float(value, f.name)
    elif f.kind is list:
        v = as_list(value, f.name)
        if not all(isinstance(x, (str, int, float)) for x in v):
            raise bad(f.name, "must be a list of strings")
        if f.e164:
            v = [as_e164(x, f"{f.name}[{i}]") for i, x in enumerate(v)]
    else:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and f.e164:
            value = str(value)
        # a password may start or end with a space: keep it byte for byte
        v = value if f.secret and isinstance(value, str) else as_str(value, f.name)
        if f.e164:
            v = as_e164(v, f.name)
    if f.choices and v not in f.choices:
        got = "" if f.secret else f" (got {v!r})"
        raise bad(f.name, f"must be one of {', '.join(map(str, f.choices))}{got}")
    return v
