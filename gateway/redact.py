"""Hiding credentials before they are shown: inside URLs (ws://user:pw@engine, postgresql://user:pw@db) and SRTP
master keys inside SDP (``a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:<key>``, RFC 4568), which decrypt a call."""
from __future__ import annotations

import re

MASK = "****"
_USERINFO = re.compile(r"(://[^:/@\s]+:)[^@/\s]+@")
_SDES_KEY = re.compile(r"(inline:)[A-Za-z0-9+/=]+", re.IGNORECASE)


def redact_url(url: str) -> str:
    return _USERINFO.sub(rf"\g<1>{MASK}@", url) if url else url


def is_redacted(url: str) -> bool:
    return f":{MASK}@" in (url or "")


def redact_sdes(text: str) -> str:
    """SDP (or any text) with every SDES ``inline:`` key masked."""
    return _SDES_KEY.sub(rf"\g<1>{MASK}", text) if text and "inline:" in text.lower() else text
