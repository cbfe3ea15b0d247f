"""How E.164 numbers become SIP user parts on a trunk, and how SIP user parts become E.164 numbers again.

Outbound (dispatch, REFER Refer-To, bridged transfer legs) one rule, applied in this order:

1. the dialled user part starts as the E.164 number (``+15551234567``);
2. ``sip_strip_plus`` removes the leading ``+`` (``15551234567``);
3. ``sip_dial_prefix`` is prepended as given (``9`` → ``915551234567``).

The prefix is prepended even when the ``+`` is kept (``9+15551234567``) because that is what the operator asked
for; docs/sip-trunks.md shows every combination. Inbound, carriers send the called number in the Request-URI
user part, sometimes only in To, with or without ``+``, with visual separators or an ``00`` international prefix;
`inbound_number` turns what they send into E.164 so it can be matched against imported numbers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..numbers import is_e164, normalize_e164

_PREFIX = re.compile(r"^[0-9*#+]*$")
_USER_SAFE = re.compile(r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+$")  # RFC 3261 user = unreserved / escaped / user-unreserved


class DialFormatError(ValueError):
    """The number or trunk settings cannot produce a valid SIP user part."""


@dataclass(frozen=True)
class DialPlan:
    """A trunk's outbound number formatting (`sip_strip_plus`, `sip_dial_prefix`)."""

    strip_plus: bool = False
    dial_prefix: str = ""

    def __post_init__(self) -> None:
        check_dial_prefix(self.dial_prefix)

    def user_part(self, e164: str) -> str:
        return dial_user(e164, strip_plus=self.strip_plus, dial_prefix=self.dial_prefix)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DialPlan:
        return cls(bool(config.get("sip_strip_plus")), config.get("sip_dial_prefix") or "")


def check_dial_prefix(prefix: str) -> str:
    """Dial prefixes are digits, `*`, `#` and `+` (e.g. ``9``, ``011``, ``*67``); anything else is a typo."""
    if prefix is None:
        return ""
    if not isinstance(prefix, str) or not _PREFIX.match(prefix) or len(prefix) > 16:
        raise DialFormatError(f"dial prefix {prefix!r} may only hold digits, *, # and + (at most 16)")
    return prefix


def dial_user(e164: str, *, strip_plus: bool = False, dial_prefix: str = "") -> str:
    """The SIP user part to dial `e164` on a trunk: E.164, then strip `+`, then prepend the prefix."""
    if not is_e164(e164):
        raise DialFormatError(f"{e164!r} is not an E.164 number (expected + and 7-15 digits)")
    user = e164[1:] if strip_plus else e164
    return check_dial_prefix(dial_prefix or "") + user


def sip_uri(user: str, host: str, port: int | None = None, *, transport: str = "udp",
            user_phone: bool = False) -> str:
    """``sip:user@host[:port][;transport=tcp]`` with the user part checked against RFC 3261's grammar."""
    if not user or not _USER_SAFE.match(user):
        raise DialFormatError(f"{user!r} cannot be used as a SIP user part")
    hostport = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if port:
        hostport += f":{port}"
    params = ""
    if transport and transport.lower() != "udp":
        params += f";transport={transport.lower()}"
    if user_phone:
        params += ";user=phone"
    return f"sip:{user}@{hostport}{params}"


def uri_user(uri: str) -> str:
    """The user part of a ``sip:``/``sips:``/``tel:`` URI, unescaped, without parameters ("" when none)."""
    u = (uri or "").strip()
    if "<" in u:  # a name-addr such as '"Alice" <sip:alice@host>;tag=x'
        u = u[u.find("<") + 1:]
        u = u[:u.find(">")] if ">" in u else u
    m = re.match(r"^(sips?|tel):", u, flags=re.I)
    if not m:
        return ""
    rest = u[m.end():]
    if m.group(1).lower() == "tel":
        return _unescape(rest.split(";", 1)[0])
    if "@" not in rest:
        return ""
    return _unescape(rest.split("@", 1)[0].split(";", 1)[0].split(":", 1)[0])


def _unescape(s: str) -> str:
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), s)


def inbound_number(user: str, *, dial_prefix: str = "") -> str | None:
    """E.164 for a called/calling user part, or None when it is not a phone number (``alice``, ``anonymous``).

    ``+15551234567``, ``15551234567``, ``0015551234567`` and ``+1 (555) 123-4567`` all give ``+15551234567``.
    A trunk's own dial prefix, when a carrier echoes it back, is removed first.
    """
    u = (user or "").strip()
    if dial_prefix and u.startswith(dial_prefix) and len(u) > len(dial_prefix):
        stripped = u[len(dial_prefix):]
        try:
            return normalize_e164(stripped)
        except ValueError:
            pass
    try:
        return normalize_e164(u)
    except ValueError:
        return None


def called_number_candidates(request_uri: str, to_uri: str) -> list[str]:
    """E.164 candidates for the number an inbound INVITE is for: Request-URI user first, then To user."""
    out: list[str] = []
    for uri in (request_uri, to_uri):
        n = inbound_number(uri_user(uri))
        if n and n not in out:
            out.append(n)
    return out
