"""HTTP Digest authentication for SIP, client and server (RFC 3261 §22.4, RFC 2617, RFC 7616, RFC 8760).

API::

    # client (answering a 401 WWW-Authenticate / 407 Proxy-Authenticate)
    ch = parse_challenge(header_value) -> Challenge(realm, nonce, algorithm, qop: list, opaque, stale, ...)
    build_authorization(ch, method, uri, username, password, *, cnonce=None, nc=1, body=b"") -> str
    authorize(request, response, username, password, *, nc=1) -> (header_name, header_value)
        picks the strongest supported challenge in `response` (SHA-256 over MD5), answers with
        "Authorization" for 401 and "Proxy-Authorization" for 407. Raises DigestError if nothing usable.

    # server (inbound trunks authenticating with digest)
    srv = DigestServer(secret=None, nonce_ttl=300, clock=time.time)
    srv.make_challenge(realm, algorithm="MD5", *, stale=False, qop="auth") -> str  (the header value)
    parse_credentials(header_value) -> Credentials(username, realm, nonce, uri, response, algorithm, qop, nc,
                                                   cnonce, opaque)   # read username first for async lookups
    srv.verify_authorization(header_value, method, lookup_password, *, realm=None, uri=None, body=b"")
        -> AuthResult(ok, username, stale, reason)
        lookup_password(username, realm) -> password | None.  stale=True means "nonce expired, same password
        works": send a new challenge with stale=true (RFC 7616 §3.3) rather than a 403.
    make_challenge / verify_authorization at module level use a process-wide DigestServer.

Nonces are stateless: base64(timestamp ‖ random ‖ HMAC-SHA256(secret, timestamp ‖ random ‖ realm)), so any
worker sharing the secret can verify them; nonce-count replays are rejected with a bounded per-nonce memory.
Not supported: qop=auth-int on the server side, `userhash`, `username*` (RFC 7616 §3.4.4), SHA-512-256.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .message import SipRequest, SipResponse

__all__ = [
    "DigestError", "Challenge", "Credentials", "AuthResult", "DigestServer", "parse_challenge",
    "parse_credentials", "parse_auth_params", "build_authorization", "authorize", "make_challenge",
    "verify_authorization", "ALGORITHMS",
]

_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
ALGORITHMS = ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess")
_STRENGTH = {"SHA-256": 2, "SHA-256-SESS": 2, "MD5": 1, "MD5-SESS": 1}


class DigestError(ValueError):
    pass


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Split 'Digest k=v, k="v, with comma"' into ("Digest", {k: v}); keys lower-cased, quotes removed."""
    bits = value.strip().split(None, 1)
    scheme, rest = (bits[0], bits[1] if len(bits) > 1 else "") if bits else ("", "")
    if not scheme:
        raise DigestError("empty authentication header")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t,":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise DigestError(f"malformed auth parameter near {rest[i:i + 20]!r}")
        key = rest[i:eq].strip().lower()
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            buf = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(rest[i])
                i += 1
            if i >= n:
                raise DigestError(f"unterminated quoted value for {key!r}")
            i += 1
            val = "".join(buf)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            val = rest[i:end].strip()
            i = end
        if not key:
            raise DigestError("empty auth parameter name")
        params[key] = val
    return scheme, params


def _canon_alg(alg: str | None) -> str:
    a = (alg or "MD5").strip()
    for known in ALGORITHMS:
        if a.upper() == known.upper():
            return known
    raise DigestError(f"unsupported digest algorithm {a!r}")


@dataclass
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: list[str] = field(default_factory=list)
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None

    @property
    def strength(self) -> int:
        return _STRENGTH.get(self.algorithm.upper(), 0)


def parse_challenge(value: str) -> Challenge:
    scheme, p = parse_auth_params(value)
    if scheme.lower() != "digest":
        raise DigestError(f"unsupported authentication scheme {scheme!r}")
    if "realm" not in p or "nonce" not in p:
        raise DigestError("digest challenge without realm or nonce")
    qop = [q.strip().lower() for q in p.get("qop", "").split(",") if q.strip()]
    return Challenge(p["realm"], p["nonce"], _canon_alg(p.get("algorithm")), qop, p.get("opaque"),
                     p.get("stale", "").lower() == "true", p.get("domain"))


def _h(alg: str, data: str | bytes) -> str:
    fn = _HASHES["SHA-256" if alg.upper().startswith("SHA-256") else "MD5"]
    return fn(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def _response(alg: str, username: str, realm: str, password: str, method: str, uri: str, nonce: str,
              qop: str | None, nc: str, cnonce: str, body: bytes = b"", ha1: str | None = None) -> str:
    """RFC 7616 §3.4.1-3.4.3 (RFC 2617 §3.2.2 for MD5): request-digest."""
    if ha1 is None:
        ha1 = _h(alg, f"{username}:{realm}:{password}")
    if alg.upper().endswith("-SESS"):
        ha1 = _h(alg, f"{ha1}:{nonce}:{cnonce}")
    a2 = f"{method}:{uri}"
    if qop == "auth-int":
        a2 += ":" + _h(alg, body)
    ha2 = _h(alg, a2)
    if qop:
        return _h(alg, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(alg, f"{ha1}:{nonce}:{ha2}")  # RFC 2069 compatibility: no qop offered


def _q(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_authorization(challenge: Challenge, method: str, uri: str, username: str, password: str, *,
                        cnonce: str | None = None, nc: int = 1, body: bytes = b"") -> str:
    """The Authorization / Proxy-Authorization value answering `challenge` (qop=auth preferred)."""
    alg = challenge.algorithm
    qop = "auth" if "auth" in challenge.qop else ("auth-int" if "auth-int" in challenge.qop else None)
    if challenge.qop and qop is None:
        raise DigestError(f"no supported qop in {challenge.qop}")
    cnonce = cnonce or os.urandom(12).hex()
    ncs = f"{nc:08x}"
    resp = _response(alg, username, challenge.realm, password, method, uri, challenge.nonce, qop, ncs, cnonce,
                     body)
    parts = [f"username={_q(username)}", f"realm={_q(challenge.realm)}", f"nonce={_q(challenge.nonce)}",
             f"uri={_q(uri)}", f"response={_q(resp)}", f"algorithm={alg}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={_q(challenge.opaque)}")
    if qop:
        parts += [f"qop={qop}", f"nc={ncs}", f"cnonce={_q(cnonce)}"]
    return "Digest " + ", ".join(parts)


def authorize(request: SipRequest, response: SipResponse, username: str, password: str, *, nc: int = 1,
              cnonce: str | None = None) -> tuple[str, str]:
    """Answer a 401/407 for `request` (a SipRequest being re-sent with a new CSeq by the caller)."""
    if response.status == 407:
        values, out_name = response.headers.getlist("Proxy-Authenticate"), "Proxy-Authorization"
    else:
        values, out_name = response.headers.getlist("WWW-Authenticate"), "Authorization"
    challenges = []
    errors = []
    for v in values:
        try:
            challenges.append(parse_challenge(v))
        except DigestError as e:
            errors.append(str(e))
    if not challenges:
        raise DigestError("no usable digest challenge" + (f": {'; '.join(errors)}" if errors else ""))
    best = max(challenges, key=lambda c: c.strength)
    return out_name, build_authorization(best, request.method, request.uri, username, password, nc=nc,
                                         cnonce=cnonce, body=request.body)


# --- server -------------------------------------------------------------------------------------------------

@dataclass
class Credentials:
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None


def parse_credentials(value: str) -> Credentials:
    scheme, p = parse_auth_params(value)
    if scheme.lower() != "digest":
        raise DigestError(f"unsupported authentication scheme {scheme!r}")
    missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in p]
    if missing:
        raise DigestError(f"credentials without {', '.join(missing)}")
    return Credentials(p["username"], p["realm"], p["nonce"], p["uri"], p["response"],
                       _canon_alg(p.get("algorithm")), p.get("qop"), p.get("nc"), p.get("cnonce"), p.get("opaque"))


@dataclass
class AuthResult:
    ok: bool
    username: str | None = None
    stale: bool = False
    reason: str = ""


class DigestServer:
    """Issues and checks nonces; see the module docstring for the nonce format."""

    def __init__(self, secret: bytes | None = None, nonce_ttl: float = 300.0,
                 clock: Callable[[], float] = time.time, max_tracked_nonces: int = 10000):
        self.secret = secret or os.urandom(32)
        self.nonce_ttl = nonce_ttl
        self.clock = clock
        self._nc_seen: OrderedDict[str, int] = OrderedDict()
        self._max_tracked = max_tracked_nonces

    def new_nonce(self, realm: str) -> str:
        stamp = struct.pack(">Q", int(self.clock()))
        rnd = os.urandom(8)
        mac = hmac.new(self.secret, stamp + rnd + realm.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(stamp + rnd + mac).decode().rstrip("=")

    def check_nonce(self, nonce: str, realm: str) -> str:
        """'ok', 'stale' (ours but expired) or 'invalid'."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, TypeError):
            return "invalid"
        if len(raw) != 32:
            return "invalid"
        stamp, rnd, mac = raw[:8], raw[8:16], raw[16:]
        good = hmac.new(self.secret, stamp + rnd + realm.encode(), hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, good):
            return "invalid"
        age = self.clock() - struct.unpack(">Q", stamp)[0]
        return "ok" if -5 <= age <= self.nonce_ttl else "stale"

    def make_challenge(self, realm: str, algorithm: str = "MD5", *, stale: bool = False,
                       qop: str | None = "auth") -> str:
        alg = _canon_alg(algorithm)
        parts = [f"realm={_q(realm)}", f"nonce={_q(self.new_nonce(realm))}", f"algorithm={alg}"]
        if qop:
            parts.append(f'qop="{qop}"')
        if stale:
            parts.append("stale=true")
        return "Digest " + ", ".join(parts)

    def verify_authorization(self, header: str, method: str,
                             lookup_password: Callable[[str, str], str | None], *, realm: str | None = None,
                             uri: str | None = None, body: bytes = b"") -> AuthResult:
        try:
            c = parse_credentials(header)
        except DigestError as e:
            return AuthResult(False, reason=str(e))
        if realm is not None and c.realm != realm:
            return AuthResult(False, c.username, reason=f"wrong realm {c.realm!r}")
        if uri is not None and c.uri != uri:
            return AuthResult(False, c.username, reason="digest uri does not match the Request-URI")
        if c.qop not in (None, "auth"):
            return AuthResult(False, c.username, reason=f"unsupported qop {c.qop!r}")
        if c.qop and (not c.nc or not c.cnonce):
            return AuthResult(False, c.username, reason="qop without nc/cnonce")
        state = self.check_nonce(c.nonce, c.realm)
        if state == "invalid":
            return AuthResult(False, c.username, reason="nonce not issued by us")
        password = lookup_password(c.username, c.realm)
        if password is None:
            return AuthResult(False, c.username, reason="unknown user")
        expected = _response(c.algorithm, c.username, c.realm, password, method, c.uri, c.nonce, c.qop,
                             c.nc or "", c.cnonce or "", body)
        if not hmac.compare_digest(expected.encode(), c.response.lower().encode("utf-8", "replace")):
            return AuthResult(False, c.username, reason="wrong password")
        if state == "stale":
            return AuthResult(False, c.username, stale=True, reason="nonce expired")
        if c.qop:
            try:
                nc = int(c.nc or "", 16)
            except ValueError:
                return AuthResult(False, c.username, reason="malformed nc")
            last = self._nc_seen.get(c.nonce, 0)
            if nc <= last:
                return AuthResult(False, c.username, reason="nonce count replayed")
            self._nc_seen[c.nonce] = nc
            self._nc_seen.move_to_end(c.nonce)
            while len(self._nc_seen) > self._max_tracked:
                self._nc_seen.popitem(last=False)
        return AuthResult(True, c.username)


_default_server: DigestServer | None = None


def _server() -> DigestServer:
    global _default_server
    if _default_server is None:
        _default_server = DigestServer()
    return _default_server


def make_challenge(realm: str, algorithm: str = "MD5", *, stale: bool = False) -> str:
    return _server().make_challenge(realm, algorithm, stale=stale)


def verify_authorization(header: str, method: str, lookup_password: Callable[[str, str], str | None], *,
                         realm: str | None = None, uri: str | None = None, body: bytes = b"") -> AuthResult:
    return _server().verify_authorization(header, method, lookup_password, realm=realm, uri=uri, body=body)
