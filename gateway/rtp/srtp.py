"""SDES-SRTP (RFC 4568 keys in SDP, RFC 3711 SRTP) for SIP trunk media, with libsrtp through `pylibsrtp`.

* `CryptoAttribute` is one ``a=crypto:<tag> <suite> inline:<key||salt>[|lifetime][|MKI:len]`` line (RFC 4568 §4,
  §6.1): AES_CM_128_HMAC_SHA1_80 (preferred) and AES_CM_128_HMAC_SHA1_32, 30 bytes of master key and salt. An
  attribute with an MKI or session parameters we do not implement is skipped (the answerer picks one it
  supports, §7.1.2). The key never appears in `repr()` or logs (gateway/redact.py masks ``inline:`` too).
* `SrtpContext` holds one call's two directions: our key protects what we send, the peer's key unprotects what
  we receive (SSRC "any", as the keys are per direction). A packet that fails authentication or replay checks is
  dropped and counted, never played.

pylibsrtp is the maintained binding aiortc itself uses (https://pylibsrtp.readthedocs.io/).
"""
from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass, field

from pylibsrtp import Error as LibSrtpError
from pylibsrtp import Policy, Session

__all__ = ["CryptoAttribute", "SrtpContext", "SUITES", "DEFAULT_SUITE", "KEY_LENGTH"]

#: suites we implement, most preferred first (RFC 4568 §6.2)
SUITES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
DEFAULT_SUITE = "AES_CM_128_HMAC_SHA1_80"
KEY_LENGTH = 30   # 128-bit master key + 112-bit master salt (RFC 4568 §6.2.1)
_CRYPTO = re.compile(r"^\s*(\d{1,9})\s+([A-Za-z0-9_]+)\s+(\S+)(?:\s+(.*))?$")


@dataclass(frozen=True)
class CryptoAttribute:
    tag: int
    suite: str
    key: bytes = field(repr=False)   # master key || master salt

    @classmethod
    def generate(cls, tag: int = 1, suite: str = DEFAULT_SUITE) -> CryptoAttribute:
        """A fresh random key for our side of a call (a new one for every offer or answer we make)."""
        return cls(tag, suite, secrets.token_bytes(KEY_LENGTH))

    @classmethod
    def parse(cls, value: str) -> CryptoAttribute | None:
        """The value of one a=crypto line, or None when it uses something we do not implement (another suite,
        an MKI, session parameters, several keys). Raises ValueError when the line is malformed."""
        m = _CRYPTO.match(value)
        if m is None:
            raise ValueError("malformed a=crypto attribute")
        tag, suite, keys, session_params = int(m.group(1)), m.group(2).upper(), m.group(3), m.group(4)
        if suite not in SUITES or session_params or ";" in keys:
            return None
        if not keys.lower().startswith("inline:"):
            raise ValueError("a=crypto key method is not inline:")
        key_b64, *rest = keys[7:].split("|")
        if any(p.count(":") == 1 and not p.startswith("2^") for p in rest):
            return None   # an MKI (value:length): one key per direction is all we do
        try:
            key = base64.b64decode(key_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a=crypto key is not base64") from None
        if len(key) != KEY_LENGTH:
            raise ValueError(f"a=crypto key of {len(key)} bytes (expected {KEY_LENGTH})")
        return cls(tag, suite, key)

    def to_sdp(self) -> str:
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode()}"

    def __str__(self) -> str:   # never the key
        return f"{self.tag} {self.suite} inline:****"


def choose(offered: list[str]) -> CryptoAttribute | None:
    """The offered attribute we answer (RFC 4568 §7.1.2): the first of our most preferred suite present; raises
    ValueError for a malformed line."""
    usable = [a for a in (CryptoAttribute.parse(v) for v in offered) if a is not None]
    for suite in SUITES:
        for a in usable:
            if a.suite == suite:
                return a
    return None


class SrtpContext:
    """Both directions of one SRTP session: `protect` what we send, `unprotect` what we receive."""

    def __init__(self, local: CryptoAttribute, remote: CryptoAttribute) -> None:
        if local.suite != remote.suite:
            raise ValueError("both directions of an SDES session use the negotiated suite")
        self.suite = local.suite
        self._tx = Session(Policy(key=local.key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=SUITES[local.suite]))
        self._rx = Session(Policy(key=remote.key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                                  srtp_profile=SUITES[remote.suite]))
        self.protected = 0
        self.unprotected = 0
        self.failed = 0     # received packets that failed authentication / replay checks (dropped)

    def protect(self, rtp: bytes) -> bytes | None:
        """The packet encrypted and authenticated, or None when libsrtp refuses it (a sequence number it
        already protected: sending it would be a two-time pad) — then nothing is sent."""
        try:
            out = self._tx.protect(rtp)
        except LibSrtpError:
            return None
        self.protected += 1
        return out

    def unprotect(self, srtp: bytes) -> bytes | None:
        try:
            rtp = self._rx.unprotect(srtp)
        except LibSrtpError:
            self.failed += 1
            return None
        self.unprotected += 1
        return rtp

    def protect_rtcp(self, rtcp: bytes) -> bytes | None:
        """An RTCP compound packet as SRTCP (RFC 3711 §3.4: encrypted, always authenticated), or None."""
        try:
            return self._tx.protect_rtcp(rtcp)
        except LibSrtpError:
            return None

    def unprotect_rtcp(self, srtcp: bytes) -> bytes | None:
        """A received SRTCP packet in the clear, or None (counted in `failed`) when it does not authenticate."""
        try:
            return self._rx.unprotect_rtcp(srtcp)
        except LibSrtpError:
            self.failed += 1
            return None
