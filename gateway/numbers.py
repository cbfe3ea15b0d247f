"""Phone-number normalisation shared by the API, SIP routing and carriers."""
from __future__ import annotations

import re

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def is_e164(value: str) -> bool:
    return bool(_E164.match(value or ""))


def typed_e164(value: object) -> str:
    """A number a person typed (API, CLI): it must carry its `+` and country code. A bare `4155550130` is refused
    rather than guessed (normalize_e164 would read it as +41…, Switzerland), so a transfer can never ring a foreign
    number; spaces, dashes and dots between digits are dropped. Raises ValueError saying the expected form."""
    if not isinstance(value, str):
        raise ValueError("must be a string holding an E.164 number such as +14155550100")
    if not value.strip().startswith("+"):
        raise ValueError(f"{value!r} must be an E.164 number with a leading + and the country code "
                         "(e.g. +14155550100)")
    return normalize_e164(value)


def normalize_e164(value: str, default_prefix: str = "+") -> str:
    """Best-effort E.164 from what carriers send: strips spaces, dashes, `tel:`/`sip:` decorations and a
    leading `00`; adds `+` to a bare digit string. Raises ValueError when the result is not E.164."""
    v = (value or "").strip()
    v = re.sub(r"^(tel:|sips?:)", "", v, flags=re.I).split("@", 1)[0].split(";", 1)[0]
    v = re.sub(r"[\s\-().]", "", v)
    if v.startswith("00"):
        v = "+" + v[2:]
    elif v and not v.startswith("+"):
        v = default_prefix + v
    if not is_e164(v):
        raise ValueError(f"{value!r} is not an E.164 number (expected + and 7-15 digits)")
    return v
