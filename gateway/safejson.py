"""JSON from the network, parsed so that no input can crash a handler further down.

`json.loads` accepts three things the rest of the gateway cannot take:
* nesting deep enough to raise `RecursionError` (not a `ValueError`, so handlers catching bad JSON miss it), or
  merely deep enough to overflow the stack later, when the value is serialised again for the store or a webhook;
* `\\ud800`-style escapes of a lone UTF-16 surrogate, which give a `str` that cannot be encoded as UTF-8: SQLite,
  PostgreSQL and every outgoing JSON body then fail with an encoding error (a 500);
* `NaN` / `Infinity`, which are not JSON (RFC 8259 §6) and could not be sent back out.

`loads()` refuses all three with `BadJson` (a `ValueError`), so every caller already handling invalid JSON handles
these too: the REST API answers 400, the media websockets close with their bad-message code.

`loads_media()` is `loads()` for media-socket text messages, with orjson parsing the 50-a-second `media` event.
"""
from __future__ import annotations

import json
import re
from typing import Any

import orjson

#: deeper than any body the API, carriers or engines send (they nest 3-5 levels) and far below the
#: interpreter's recursion limit, which json.dumps/SQLAlchemy need headroom under.
MAX_DEPTH = 64

# a \uD800-\uDFFF escape: only then can the parsed value hold a surrogate (raw UTF-8 input cannot encode one)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class BadJson(ValueError):
    """Input that is not acceptable JSON; the message says why and never quotes the input."""


def _no_constant(name: str) -> None:
    raise BadJson(f"{name} is not allowed")


#: one decoder for every call: `json.loads(..., parse_constant=...)` builds a new decoder and scanner per call, which
#: cost more than parsing a Twilio media message (bench/frame_cost.py)
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def loads(data: str | bytes | bytearray) -> Any:
    """Parse JSON from a peer; raises BadJson for invalid, too deeply nested or unencodable input."""
    try:
        if isinstance(data, str):
            if data.startswith("\ufeff"):
                raise BadJson("Unexpected UTF-8 BOM (decode using utf-8-sig)")   # what json.loads says
            text = data
        elif isinstance(data, (bytes, bytearray)):
            text = data.decode(json.detect_encoding(data), "surrogatepass")   # as json.loads decodes bytes
        else:
            raise TypeError(f"the JSON object must be str, bytes or bytearray, not {type(data).__name__}")
        value = _DECODER.decode(text)
    except RecursionError:
        raise BadJson(f"nested more than {MAX_DEPTH} levels deep") from None
    except UnicodeDecodeError as e:
        raise BadJson(f"not UTF-8 ({e.reason})") from None
    except BadJson:
        raise
    except ValueError as e:
        raise BadJson(str(e)) from None
    check_strings = "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None
    # nesting deeper than MAX_DEPTH needs more than MAX_DEPTH opening brackets: counting them (C speed) spares
    # the walk over every value for the small messages media sockets carry 50 times a second per call
    if check_strings or text.count("{") + text.count("[") > MAX_DEPTH:
        _check(value, check_strings)
    return value


def loads_media(text: str) -> Any:
    """`loads()` for a media socket's text messages (Twilio, Telnyx, Plivo, Exotel), ≈ 1.6 µs less per `media` event.

    orjson parses (about 5× faster than the stdlib decoder; RFC 8259 strict, so it refuses NaN/Infinity and lone
    surrogates itself) and the depth limit is checked as `loads()` checks it. Its one difference from `json` —
    integers beyond 64 bits come back as floats — cannot be seen in a `media` event, whose only fields read are
    strings (track, payload): every other message, and everything orjson refuses, goes through `loads()`, so it
    is accepted, parsed and refused exactly as before."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return loads(text)
    if type(value) is not dict or value.get("event") != "media":
        return loads(text)
    if text.count("{") + text.count("[") > MAX_DEPTH:
        _check(value, False)
    return value


def _check(value: Any, check_strings: bool) -> None:
    """Depth limit, and (when the raw text had a surrogate escape) that every string encodes as UTF-8.

    Iterative, so that checking a deep value cannot itself overflow the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            if depth > MAX_DEPTH:
                raise BadJson(f"nested more than {MAX_DEPTH} levels deep")
            for k, item in v.items():
                if check_strings:
                    _utf8(k)
                stack.append((item, depth + 1))
        elif isinstance(v, list):
            if depth > MAX_DEPTH:
                raise BadJson(f"nested more than {MAX_DEPTH} levels deep")
            stack.extend((item, depth + 1) for item in v)
        elif check_strings and isinstance(v, str):
            _utf8(v)


def _utf8(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise BadJson("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff escape without its pair)") from None
