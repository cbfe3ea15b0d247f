"""SIP message model, parser and serializer (RFC 3261 §7, §8.2.6, §18.3, §20, §25).

API (used by transport, transaction and the dialog layer)::

    parse_message(data: bytes, *, stream=False) -> SipRequest | SipResponse   # raises SipParseError
    SipParseError(reason, status=400)  .reason  .status  .partial (best-effort message or None)
    SipRequest(method, uri, headers=None, body=b"")     .method .uri (str) .request_uri -> SipUri
    SipResponse(status, reason="", headers=None, body=b"")   .status .reason
    common: .headers (Headers)  .body (bytes)  .to_bytes()  .copy()
            .call_id  .cseq -> (int, METHOD)  .from_ / .to -> NameAddr (.uri .tag .display .params)
            .from_tag  .to_tag  .vias -> list[Via]  .top_via -> Via  .branch  .contacts -> list[NameAddr]
            .content_type  .max_forwards  .first(name)  (header convenience)
    make_response(request, status, reason=None, *, to_tag=None, headers=None, body=b"") -> SipResponse
    Headers: case-insensitive, ordered, multi-valued; compact forms (i m f t v l c k s o u e r b x …) are
        expanded on input. Methods: get(name, default) first value, getlist(name), add, set, setlist, remove,
        `name in h`, h[name], items() -> (Name, value) pairs, copy(), joined(name) -> "a, b".
        NOTE: for list headers get()/h[name] return the FIRST ELEMENT ("Supported: 100rel, timer" -> "100rel");
        use getlist() (elements) or joined() (one string) to see them all.
        Comma-separated list headers (Via, Contact, Route, Record-Route, Allow, Supported, …) are split into one
        value per element on parse, never inside "quotes" or <brackets>; they serialize one element per line.
    Via.parse(str) / str(via): .transport .host .port .params (dict) .branch .received .rport
    NameAddr.parse(str) / str(na): .display .uri .params .tag ; parse_name_addrs(str) for lists
    SipUri.parse(str): .scheme .user .host .port .params (via the `sipmessage` URI grammar)
    new_branch(), new_tag(), new_call_id(host)
    SipStreamParser: TCP framing by Content-Length; .feed(bytes) -> list[bytes] (complete messages);
        CRLF keep-alives are skipped and counted in .pings (RFC 5626 §3.5.1).

Why not `sipmessage.Message.parse` for the whole message: measured on this machine it costs ~35 µs per INVITE
plus ~55 µs for the From/To/Via/CSeq accessors, it does not unfold continuation lines, does not split
comma-separated Via headers, and splits quoted commas in auth headers. Our framing + header store + lazy
accessors are ~4x cheaper (see docs/sip-stack.md); `sipmessage`'s URI grammar is used for full URI parsing.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

_T = TypeVar("_T")


__all__ = [
    "SipParseError", "Headers", "SipMessage", "SipRequest", "SipResponse", "Via", "NameAddr", "SipUri",
    "parse_message", "make_response", "parse_name_addrs", "split_header_list", "new_branch", "new_tag",
    "new_call_id", "SipStreamParser", "REASON_PHRASES", "BRANCH_MAGIC",
]

BRANCH_MAGIC = "z9hG4bK"
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024


class SipParseError(ValueError):
    """A malformed SIP message. `reason` is a human-readable explanation safe to put in a reason phrase.

    `status` is the response the UAS should send (400, or 505 for a wrong SIP version). `partial` carries the
    message as far as it could be parsed (start line + headers) so the transport can still build a response.
    """

    def __init__(self, reason: str, status: int = 400, partial: SipMessage | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.partial = partial


# --- header names -------------------------------------------------------------------------------------------

# RFC 3261 §7.3.3 + IANA "Header Fields" registry compact forms.
COMPACT_FORMS = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact", "k": "Supported",
    "l": "Content-Length", "m": "Contact", "o": "Event", "r": "Refer-To", "s": "Subject", "t": "To",
    "u": "Allow-Events", "v": "Via", "x": "Session-Expires", "y": "Identity",
}
_CANONICAL_NAMES = [
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
    "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact", "Content-Disposition",
    "Content-Encoding", "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date", "Error-Info",
    "Event", "Expires", "From", "History-Info", "Identity", "In-Reply-To", "Max-Forwards", "MIME-Version",
    "Min-Expires", "Min-SE", "Organization", "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Priority",
    "Privacy", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason", "Record-Route",
    "Refer-To", "Referred-By", "Reject-Contact", "Replaces", "Reply-To", "Request-Disposition", "Require",
    "Retry-After", "Route", "RSeq", "Server", "Service-Route", "Session-Expires", "SIP-ETag", "SIP-If-Match",
    "Subject", "Subscription-State", "Supported", "Timestamp", "To", "Unsupported", "User-Agent", "Via",
    "Warning", "WWW-Authenticate", "X-Twilio-CallSid",
]
# Headers whose grammar is `1#element` (comma-separated list): split into one value per element.
_LIST_HEADERS = frozenset(n.lower() for n in [
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
    "Call-Info", "Contact", "Content-Encoding", "Content-Language", "Error-Info", "History-Info", "In-Reply-To",
    "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Proxy-Require", "Reason", "Record-Route",
    "Reject-Contact", "Require", "Route", "Service-Route", "Supported", "Unsupported", "Via", "Warning",
])

# Token lists written back on one line ("Allow: INVITE, ACK"); address lists and Via keep one line per element.
_JOINED_ON_OUTPUT = frozenset(n.lower() for n in [
    "Accept", "Accept-Encoding", "Accept-Language", "Allow", "Allow-Events", "Content-Encoding",
    "Content-Language", "In-Reply-To", "Proxy-Require", "Require", "Supported", "Unsupported",
])

# lower-case name as received -> (key, display name, is_list)
_NAME_INFO: dict[str, tuple[str, str, bool]] = {}
for _n in _CANONICAL_NAMES:
    _NAME_INFO[_n.lower()] = (_n.lower(), _n, _n.lower() in _LIST_HEADERS)
for _c, _n in COMPACT_FORMS.items():
    _NAME_INFO[_c] = (_n.lower(), _n, _n.lower() in _LIST_HEADERS)
del _c, _n

_NAME_CACHE_LIMIT = len(_NAME_INFO) + 2000
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")


def _name_info(name: str) -> tuple[str, str, bool]:
    info = _NAME_INFO.get(name.lower())
    if info is None:
        lower = name.lower()
        info = (lower, name, lower in _LIST_HEADERS)
    return info


def split_header_list(value: str) -> list[str]:
    """Split a `1#element` header value on commas that are outside "quoted strings" and <angle brackets>."""
    if "," not in value:
        return [value]
    if '"' not in value and "<" not in value:
        return [p for p in (x.strip() for x in value.split(",")) if p]
    out: list[str] = []
    start = 0
    quoted = False
    angle = 0
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle += 1
        elif ch == ">":
            if angle:
                angle -= 1
        elif ch == "," and not angle:
            part = value[start:i].strip()
            if part:
                out.append(part)
            start = i + 1
        i += 1
    part = value[start:].strip()
    if part:
        out.append(part)
    return out


class Headers:
    """Ordered, case-insensitive, multi-valued header store.

    Values of the same header stay in arrival order (which matters for Via, Route, Record-Route); the relative
    order of different header names is kept as first seen. `_parsed` caches typed views (Via, From…) and is
    cleared on every mutation.
    """

    __slots__ = ("_d", "_parsed")

    def __init__(self, items: Iterable[tuple[str, str]] | None = None):
        self._d: dict[str, tuple[str, list[str]]] = {}
        self._parsed: dict[str, Any] = {}   # key → the typed view its accessor built
        if items:
            for k, v in items:
                self.add(k, v)

    def add(self, name: str, value: str) -> None:
        """Append a value; list headers given as "a, b" are split into elements."""
        key, display, is_list = _name_info(name)
        value = str(value).strip()
        values = split_header_list(value) if is_list else [value]
        entry = self._d.get(key)
        if entry is None:
            self._d[key] = (display, values)
        else:
            entry[1].extend(values)
        if self._parsed:
            self._parsed.clear()

    def prepend(self, name: str, value: str) -> None:
        """Insert a value before the existing ones (a new top Via or Route)."""
        key, display, _ = _name_info(name)
        entry = self._d.get(key)
        if entry is None:
            self._d[key] = (display, [str(value)])
        else:
            entry[1].insert(0, str(value))
        self._parsed.clear()

    def set(self, name: str, value: str) -> None:
        self.setlist(name, [value])

    def setlist(self, name: str, values: Iterable[str]) -> None:
        key, display, _ = _name_info(name)
        entry = self._d.get(key)
        vals = [str(v) for v in values]
        if entry is None:
            self._d[key] = (display, vals)
        else:
            self._d[key] = (entry[0], vals)
        self._parsed.clear()

    def remove(self, name: str) -> None:
        self._d.pop(_name_info(name)[0], None)
        self._parsed.clear()

    def _entry(self, name: str) -> tuple[str, list[str]] | None:
        # Fast path: internal callers use the lower-case full name, which is the storage key.
        entry = self._d.get(name)
        if entry is None:
            entry = self._d.get(_name_info(name)[0])
        return entry

    def get(self, name: str, default: str | None = None) -> str | None:
        entry = self._entry(name)
        return entry[1][0] if entry and entry[1] else default

    def joined(self, name: str, default: str | None = None) -> str | None:
        """All values as one comma-separated string ("timer, replaces"), or `default` when absent."""
        entry = self._entry(name)
        return ", ".join(entry[1]) if entry and entry[1] else default

    def getlist(self, name: str) -> list[str]:
        """All values (a copy) for `name`, list elements split; [] if absent."""
        entry = self._entry(name)
        return list(entry[1]) if entry else []

    def __getitem__(self, name: str) -> str:
        entry = self._entry(name)
        if not entry or not entry[1]:
            raise KeyError(name)
        return entry[1][0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _name_info(name)[0] in self._d

    def __delitem__(self, name: str) -> None:
        self.remove(name)

    def __setitem__(self, name: str, value: str) -> None:
        self.set(name, value)

    def keys(self) -> list[str]:
        return [display for display, _ in self._d.values()]

    def items(self) -> Iterator[tuple[str, str]]:
        for display, values in self._d.values():
            for v in values:
                yield display, v

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._d)

    def copy(self) -> Headers:
        h = Headers()
        h._d = {k: (d, list(v)) for k, (d, v) in self._d.items()}
        return h

    def __repr__(self) -> str:
        return f"Headers({list(self.items())!r})"


# --- typed header values ------------------------------------------------------------------------------------

def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return v


def _quote(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split_semis(s: str) -> list[str]:
    if '"' not in s:
        return s.split(";")
    out, cur, quoted, i = [], [], False, 0
    while i < len(s):
        ch = s[i]
        if quoted and ch == "\\" and i + 1 < len(s):
            cur.append(s[i:i + 2])
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def _parse_params(s: str, what: str) -> dict[str, str | None]:
    """Parse ';k=v;flag' (leading ';' optional). Names are lower-cased (RFC 3261 §7.3.1: case-insensitive)."""
    params: dict[str, str | None] = {}
    if not s:
        return params
    if s[0] != ";":
        s = s.strip()
        if not s:
            return params
        if s[0] != ";":
            raise SipParseError(f"unexpected text {s[:30]!r} in {what}")
    for part in (_split_semis(s) if '"' in s else s.split(";"))[1:]:
        k, eq, v = part.partition("=")
        k = k.strip().lower()
        if not k:
            raise SipParseError(f"empty parameter in {what}")
        if eq:
            v = v.strip()
            params[k] = _unquote(v) if v[:1] == '"' else v
        else:
            params[k] = None
    return params


def _format_params(params: dict[str, str | None]) -> str:
    out = []
    for k, v in params.items():
        if v is None:
            out.append(";" + k)
        elif v == "" or _TOKEN_RE.match(v) or (":" in v and '"' not in v and " " not in v):
            out.append(f";{k}={v}")
        else:
            out.append(f";{k}={_quote(v)}")
    return "".join(out)


_VIA_VERSION_RE = re.compile(r"\s*SIP\s*/\s*(\d+\.\d+)\s*/", re.IGNORECASE)
_VIA_RE = re.compile(
    r"SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)\s*(?::\s*(\d{1,5}))?\s*(;.*)?\Z",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(slots=True)
class Via:
    """One Via element (RFC 3261 §20.42, RFC 3581 rport/received)."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str) -> Via:
        m = _VIA_RE.match(value.strip())
        if m is None:
            other = _VIA_VERSION_RE.match(value)
            if other is not None and other.group(1) != "2.0":  # RFC 4475 badvers: a Via of another SIP version
                raise SipParseError(f"SIP version {other.group(1)[:10]!r} in Via not supported", 505)
            raise SipParseError(f"malformed Via {value[:60]!r}")
        port = int(m.group(3)) if m.group(3) else None
        if port is not None and not 0 < port < 65536:
            raise SipParseError(f"Via port out of range in {value[:60]!r}")
        return cls(m.group(1).upper(), m.group(2), port, _parse_params(m.group(4) or "", "Via"))

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        v = self.params.get("rport")
        return int(v) if v and v.isdigit() else None

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port

    def __str__(self) -> str:
        hp = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"SIP/2.0/{self.transport} {hp}{_format_params(self.params)}"


@dataclass(slots=True)
class NameAddr:
    """name-addr / addr-spec with header parameters (From, To, Contact, Route, Refer-To…)."""

    uri: str
    display: str = ""
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        v = value.strip()
        if not v:
            raise SipParseError("empty address")
        display = ""
        if v[0] == '"':
            i = 1
            while i < len(v):
                if v[i] == "\\":
                    i += 2
                    continue
                if v[i] == '"':
                    break
                i += 1
            else:
                raise SipParseError(f"unterminated quoted display name in {value[:60]!r}")
            display = _unquote(v[: i + 1])
            v = v[i + 1:].lstrip()
            if not v.startswith("<"):
                raise SipParseError(f"missing <uri> after display name in {value[:60]!r}")
        lt = v.find("<")
        if lt >= 0:
            gt = v.find(">", lt)
            if gt < 0:
                raise SipParseError(f"missing '>' in {value[:60]!r}")
            if lt > 0:
                display = v[:lt].strip()
            uri = v[lt + 1:gt].strip()
            rest = v[gt + 1:]
        else:
            semi = v.find(";")
            uri, rest = (v, "") if semi < 0 else (v[:semi], v[semi:])
            uri = uri.strip()
        if ":" not in uri or " " in uri:
            raise SipParseError(f"invalid URI {uri[:60]!r}")
        return cls(uri, display, _parse_params(rest, "address"))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_tag(self, tag: str) -> NameAddr:
        return NameAddr(self.uri, self.display, {**self.params, "tag": tag})

    @property
    def parsed_uri(self) -> SipUri:
        return SipUri.parse(self.uri)

    def __str__(self) -> str:
        d = ""
        if self.display:
            d = (self.display if _TOKEN_RE.match(self.display.replace(" ", "")) else _quote(self.display)) + " "
        return f"{d}<{self.uri}>{_format_params(self.params)}"


def parse_name_addrs(value: str) -> list[NameAddr]:
    return [NameAddr.parse(v) for v in split_header_list(value)]


@dataclass(slots=True, frozen=True)
class SipUri:
    """A parsed sip:/sips:/tel: URI. Grammar from `sipmessage.URI` (RFC 3261 §25.1, RFC 3966)."""

    scheme: str
    host: str
    user: str | None = None
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str) -> SipUri:
        from sipmessage import URI  # noqa: PLC0415 - imported lazily: only needed off the hot path

        raw = value.strip()
        try:
            u = URI.parse(raw)
        except ValueError:
            # sipmessage's grammar requires a lower-case scheme; RFC 3261 §19.1.4 says it is case-insensitive.
            scheme, colon, rest = raw.partition(":")
            try:
                u = URI.parse(scheme.lower() + colon + rest)
            except ValueError:
                raise SipParseError(f"invalid URI {value[:60]!r}") from None
        return cls(u.scheme, u.host, u.user, u.port, dict(u.parameters))

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}" + _format_params(self.params)
        s = f"{self.scheme}:"
        if self.user is not None:
            s += self.user + "@"
        s += self.host
        if self.port is not None:
            s += f":{self.port}"
        return s + _format_params(self.params)


# --- messages -----------------------------------------------------------------------------------------------

class SipMessage:
    """Common part of requests and responses. Typed accessors parse lazily and cache until headers change."""

    __slots__ = ("headers", "body")

    def __init__(self, headers: Headers | Iterable[tuple[str, str]] | None = None, body: bytes = b""):
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body

    # -- cached typed views
    def _cached(self, key: str, fn: Callable[[], _T]) -> _T:
        cache = self.headers._parsed
        try:
            hit: _T = cache[key]
            return hit
        except KeyError:
            val = cache[key] = fn()
            return val

    def first(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)

    @property
    def call_id(self) -> str:
        v = self.headers.get("call-id")
        if not v:
            raise SipParseError("missing Call-ID")
        return v

    @property
    def cseq(self) -> tuple[int, str]:
        v: tuple[int, str] | None = self.headers._parsed.get("cseq")
        if v is None:
            v = self.headers._parsed["cseq"] = self._parse_cseq()
        return v

    def _parse_cseq(self) -> tuple[int, str]:
        v = self.headers.get("cseq")
        if v is None:
            raise SipParseError("missing CSeq")
        parts = v.split()
        if len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 10:
            raise SipParseError(f"malformed CSeq {v[:40]!r}")
        num = int(parts[0])
        if num >= 2 ** 31:
            raise SipParseError("CSeq number must be below 2**31")
        return num, parts[1]

    @property
    def from_(self) -> NameAddr:
        v: NameAddr | None = self.headers._parsed.get("from")
        if v is None:
            v = self.headers._parsed["from"] = self._addr("from", "From")
        return v

    @property
    def to(self) -> NameAddr:
        v: NameAddr | None = self.headers._parsed.get("to")
        if v is None:
            v = self.headers._parsed["to"] = self._addr("to", "To")
        return v

    def _addr(self, key: str, display: str) -> NameAddr:
        v = self.headers.get(key)
        if v is None:
            raise SipParseError(f"missing {display}")
        try:
            return NameAddr.parse(v)
        except SipParseError as e:
            raise SipParseError(f"malformed {display}: {e.reason}") from None

    @property
    def from_tag(self) -> str | None:
        return self.from_.tag

    @property
    def to_tag(self) -> str | None:
        return self.to.tag

    @property
    def vias(self) -> list[Via]:
        return self._cached("vias", lambda: [Via.parse(v) for v in self.headers.getlist("via")])

    @property
    def top_via(self) -> Via:
        v: Via | None = self.headers._parsed.get("top_via")
        if v is None:
            v = self.headers._parsed["top_via"] = self._parse_top_via()
        return v

    def _parse_top_via(self) -> Via:
        v = self.headers.get("via")
        if v is None:
            raise SipParseError("missing Via")
        return Via.parse(v)

    def set_top_via(self, via: Via) -> None:
        vals = self.headers.getlist("via")
        vals[0:1] = [str(via)]
        self.headers.setlist("Via", vals)

    @property
    def branch(self) -> str | None:
        return self.top_via.branch

    @property
    def contacts(self) -> list[NameAddr]:
        return self._cached("contacts", lambda: [NameAddr.parse(v) for v in self.headers.getlist("contact")
                                                 if v.strip() != "*"])

    @property
    def content_type(self) -> str | None:
        v = self.headers.get("content-type")
        return v.split(";", 1)[0].strip().lower() if v else None

    @property
    def max_forwards(self) -> int | None:
        v = self.headers.get("max-forwards")
        return int(v) if v is not None and v.isdigit() else None

    def _head_bytes(self, start: str) -> bytes:
        parts = [start, "\r\n"]
        for key, (display, values) in self.headers._d.items():
            if key == "content-length":
                continue
            if len(values) > 1 and key in _JOINED_ON_OUTPUT:
                parts += (display, ": ", ", ".join(values), "\r\n")
                continue
            for v in values:
                parts += (display, ": ", v, "\r\n")
        parts += ("Content-Length: ", str(len(self.body)), "\r\n\r\n")
        return "".join(parts).encode("utf-8")

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def to_bytes(self) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError


class SipRequest(SipMessage):
    __slots__ = ("method", "uri")

    def __init__(self, method: str, uri: str, headers: Headers | Iterable[tuple[str, str]] | None = None,
                 body: bytes = b""):
        super().__init__(headers, body)
        self.method = method
        self.uri = str(uri)

    @property
    def request_uri(self) -> SipUri:
        return SipUri.parse(self.uri)

    def to_bytes(self) -> bytes:
        return self._head_bytes(f"{self.method} {self.uri} SIP/2.0") + self.body

    def copy(self) -> SipRequest:
        return SipRequest(self.method, self.uri, self.headers.copy(), self.body)

    def __repr__(self) -> str:
        return f"<SipRequest {self.method} {self.uri}>"


class SipResponse(SipMessage):
    __slots__ = ("status", "reason")

    def __init__(self, status: int, reason: str = "", headers: Headers | Iterable[tuple[str, str]] | None = None,
                 body: bytes = b""):
        super().__init__(headers, body)
        self.status = int(status)
        self.reason = reason if reason else REASON_PHRASES.get(self.status, "")

    @property
    def status_line(self) -> str:
        return f"{self.status} {self.reason}"

    def to_bytes(self) -> bytes:
        return self._head_bytes(f"SIP/2.0 {self.status} {self.reason}") + self.body

    def copy(self) -> SipResponse:
        return SipResponse(self.status, self.reason, self.headers.copy(), self.body)

    def __repr__(self) -> str:
        return f"<SipResponse {self.status} {self.reason}>"


# --- parsing ------------------------------------------------------------------------------------------------

# Headers that must appear once: a second value makes matching (or, for Content-Length, framing) ambiguous.
_SINGLETONS = frozenset(("call-id", "cseq", "from", "to", "max-forwards", "content-length", "content-type"))
_REQUIRED_REQUEST = (("via", "Via"), ("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"))
_METHOD_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:\S+\Z")


def _check_header_lines(rest: str, msg: SipMessage) -> None:
    for line in rest.split("\n"):
        if not line.strip():
            raise SipParseError("message without headers" if not rest.strip() else "empty header line",
                                partial=msg)
        if line.find(":") <= 0:
            raise SipParseError(f"malformed header line {line[:40]!r}", partial=msg)


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[:end], data[end + 4:]
    end = data.find(b"\n\n")
    if end >= 0:
        return data[:end], data[end + 2:]
    if data.endswith(b"\r\n"):  # headers only, no blank line: tolerate (some UDP senders)
        return data[:-2], b""
    raise SipParseError("no blank line after the headers (message truncated?)")


def parse_message(data: bytes, *, stream: bool = False) -> SipRequest | SipResponse:
    """Parse one SIP message. `stream=True` means TCP framing already cut it (Content-Length is exact).

    Tolerant: leading CRLFs, bare-LF line ends, folded header lines, compact names, any name case, a missing
    Max-Forwards, extra bytes after Content-Length on UDP (discarded per §18.3). Strict: start line, CSeq and
    Via syntax, required headers, CSeq method = request method, a body shorter than Content-Length.
    """
    if len(data) > MAX_HEADER_BYTES + MAX_BODY_BYTES:
        raise SipParseError("message too large")
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError("empty message")
    head, body = _split_head(data)
    if len(head) > MAX_HEADER_BYTES:
        raise SipParseError("header section too large")
    text = head.decode("utf-8", "replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if "\n " in text or "\n\t" in text:
        text = re.sub(r"[ \t]*\n[ \t]+", " ", text)  # RFC 3261 §7.3.1 line folding
    start, _, rest = text.partition("\n")
    msg: SipRequest | SipResponse
    bad_version = None
    if start.startswith("SIP/"):
        parts = start.split(" ", 2)
        if parts[0].upper() != "SIP/2.0":
            raise SipParseError(f"unsupported SIP version {parts[0][:20]!r}")
        if len(parts) < 2 or len(parts[1]) != 3 or not parts[1].isdigit() or not 100 <= int(parts[1]) <= 699:
            raise SipParseError(f"malformed status line {start[:60]!r}")
        msg = SipResponse(int(parts[1]), "", Headers(), body)
        msg.reason = parts[2].strip() if len(parts) > 2 else ""  # keep the peer's phrase, even empty
    else:
        parts = start.split()
        if len(parts) != 3:
            raise SipParseError(f"malformed request line {start[:60]!r}")
        method, uri, version = parts
        if not _METHOD_RE.match(method):
            raise SipParseError(f"invalid method {method[:20]!r}")
        if not _URI_RE.match(uri):
            raise SipParseError(f"invalid Request-URI {uri[:60]!r}")
        msg = SipRequest(method, uri, Headers(), body)
        if version.upper() != "SIP/2.0":
            bad_version = version
    hd = msg.headers._d
    info_get = _NAME_INFO.get
    for line in rest.split("\n"):
        name, colon, value = line.partition(":")
        if not colon or not name:
            _check_header_lines(rest, msg)  # raises with the offending line
        lname = name.lower()
        info = info_get(lname)
        if info is None:
            name = name.rstrip()
            if not _TOKEN_RE.match(name):
                raise SipParseError(f"invalid header name {name[:40]!r}", partial=msg)
            info = _name_info(name)
            if len(_NAME_INFO) < _NAME_CACHE_LIMIT:  # bounded: random names from a peer cannot grow it forever
                _NAME_INFO[lname] = info
        key, display, is_list = info
        value = value.strip()
        values = split_header_list(value) if is_list and "," in value else [value]
        entry = hd.get(key)
        if entry is None:
            hd[key] = (display, values)
        else:
            if key in _SINGLETONS:  # RFC 4475 multi01/mcl01: two Call-IDs, Content-Lengths… are not one message
                raise SipParseError(f"more than one {display} header", partial=msg)
            entry[1].extend(values)
    if bad_version is not None:
        raise SipParseError(f"SIP version {bad_version[:20]!r} not supported", 505, msg)

    # Body framing (RFC 3261 §18.3, §20.14).
    cl = hd.get("content-length")
    if cl is not None:
        v = cl[1][0]
        if not v.isdigit() or len(v) > 9:
            raise SipParseError(f"invalid Content-Length {v[:20]!r}", partial=msg)
        n = int(v)
        if len(body) < n:
            raise SipParseError(f"body is {len(body)} bytes, shorter than Content-Length {n}", partial=msg)
        if len(body) > n:
            msg.body = body[:n]
    elif stream and body:
        msg.body = b""

    # Required headers and consistency; the parsed views are cached for the layers above.
    is_request = isinstance(msg, SipRequest)
    for key, display in _REQUIRED_REQUEST:
        entry = hd.get(key)
        if entry is None or not entry[1][0]:
            raise SipParseError(f"missing {display} header" if is_request else f"response without {display}",
                                partial=msg)
    cache = msg.headers._parsed
    try:
        cache["cseq"] = cseq = msg._parse_cseq()
        cache["top_via"] = Via.parse(hd["via"][1][0])
        cache["from"] = msg._addr("from", "From")
        cache["to"] = msg._addr("to", "To")
    except SipParseError as e:
        raise SipParseError(e.reason, e.status, partial=msg) from None
    if isinstance(msg, SipRequest):
        if cseq[1] != msg.method:
            raise SipParseError(f"CSeq method {cseq[1]} does not match request method {msg.method}",
                                partial=msg)
        mf = hd.get("max-forwards")
        if mf is not None and (not mf[1][0].isdigit() or int(mf[1][0]) > 255):
            raise SipParseError(f"invalid Max-Forwards {mf[1][0][:20]!r}", partial=msg)
    return msg


# --- building -----------------------------------------------------------------------------------------------

REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued", 183: "Session Progress",
    200: "OK", 202: "Accepted", 204: "No Notification", 300: "Multiple Choices", 301: "Moved Permanently",
    302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service", 400: "Bad Request",
    401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
    493: "Undecipherable", 500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


def make_response(request: SipRequest, status: int, reason: str | None = None, *, to_tag: str | None = None,
                  headers: Iterable[tuple[str, str]] | dict[str, str] | None = None,
                  body: bytes = b"") -> SipResponse:
    """Build a response per RFC 3261 §8.2.6: Via (all, in order), From, To (+ tag), Call-ID, CSeq copied.

    `to_tag` is added to To unless To already carries one (an in-dialog request) or the status is 100.
    Timestamp is echoed in 100 Trying (§8.2.6.1). Extra `headers` are appended in order.
    """
    src = request.headers
    h = Headers()
    d = h._d
    for key in ("via", "from", "to", "call-id", "cseq"):
        entry = src._d.get(key)
        if entry is not None:
            d[key] = (entry[0], list(entry[1]))
    if to_tag and status != 100 and "to" in d:
        try:
            has_tag = request.to.tag is not None
        except SipParseError:
            has_tag = True
        if not has_tag:
            d["to"] = ("To", [d["to"][1][0] + ";tag=" + to_tag])
    if status == 100:
        ts = src.get("timestamp")
        if ts:
            h.add("Timestamp", ts)
    if headers:
        for k, v in (headers.items() if isinstance(headers, dict) else headers):
            h.add(k, v)
    return SipResponse(status, reason or REASON_PHRASES.get(status, ""), h, body)


def new_branch() -> str:
    """RFC 3261 §8.1.1.7 branch: magic cookie + 64 random bits."""
    return BRANCH_MAGIC + os.urandom(8).hex()


def new_tag() -> str:
    return os.urandom(6).hex()


def new_call_id(host: str = "") -> str:
    cid = os.urandom(12).hex()
    return f"{cid}@{host}" if host else cid


# --- TCP framing --------------------------------------------------------------------------------------------

_CL_RE = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\S*)[ \t]*\r?$")


class SipStreamParser:
    """Cut a TCP byte stream into SIP messages by Content-Length (RFC 3261 §18.3).

    `feed()` returns complete message byte strings. Leading CRLFs between messages are keep-alives
    (RFC 5626 §3.5.1); a double-CRLF "ping" increments `pings` so the transport can answer a CRLF "pong".
    Raises SipParseError when the stream cannot be resynchronised (oversized headers, bad Content-Length):
    the connection should then be closed.
    """

    __slots__ = ("_buf", "pings")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.pings = 0

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            # Skip keep-alive CRLFs.
            i = 0
            while i < len(buf) and buf[i] in (13, 10):
                i += 1
            if i:
                self.pings += bytes(buf[:i]).count(b"\r\n\r\n")
                del buf[:i]
                if not buf:
                    break
            end = buf.find(b"\r\n\r\n")
            sep = 4
            if end < 0:
                end = buf.find(b"\n\n")
                sep = 2
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise SipParseError("header section too large")
                break
            head = bytes(buf[:end])
            found = _CL_RE.findall(head)
            n = 0
            if len(set(found)) > 1:
                raise SipParseError("conflicting Content-Length headers")  # framing would be a guess
            if found:
                v = found[0]
                if not v.isdigit() or len(v) > 9:
                    raise SipParseError(f"invalid Content-Length {v[:20]!r}")
                n = int(v)
                if n > MAX_BODY_BYTES:
                    raise SipParseError("body too large")
            total = end + sep + n
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)


def split_hostport(value: str, default: int) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port`, with or without `sip:` (outbound proxies, registrars)."""
    v = value.strip().removeprefix("sip:")
    if v.startswith("["):
        host, _, rest = v[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default
    if v.count(":") == 1:
        h, p = v.split(":")
        return h, int(p)
    return v, default
