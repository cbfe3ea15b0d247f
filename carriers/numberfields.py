"""A stored phone number's carrier fields, read the same way by every carrier.

A number row keeps its carrier settings in two JSON columns, `config` (plain) and `secrets` (decrypted on read),
next to its own columns; an import request arrives as one flat dict. Both helpers accept either shape.
"""
from __future__ import annotations

from typing import Any


def number_settings(number: dict[str, Any] | None) -> dict[str, Any]:
    """The row's fields, config and secrets in one dict (secrets over config over the row), or a flat dict as it is."""
    if not number:
        return {}
    return {**number, **(number.get("config") or {}), **(number.get("secrets") or {})}


def number_setting(number: dict[str, Any] | None, key: str, default: Any = None) -> Any:
    """One field: the first of secrets, config and the row that holds it with a value (None and "" count as unset,
    so an empty secret does not hide a value kept in config)."""
    n = number or {}
    for src in (n.get("secrets") or {}, n.get("config") or {}, n):
        if src.get(key) not in (None, ""):
            return src[key]
    return default
