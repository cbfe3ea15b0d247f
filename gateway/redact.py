"""Hiding credentials that ride inside URLs (ws://user:pw@engine, postgresql://user:pw@db) before they are shown."""
from __future__ import annotations

import re

MASK = "****"
_USERINFO = re.compile(r"(://[^:/@\s]+:)[^@/\s]+@")


def redact_url(url: str) -> str:
    return _USERINFO.sub(rf"\g<1>{MASK}@", url) if url else url


def is_redacted(url: str) -> bool:
    return f":{MASK}@" in (url or "")
