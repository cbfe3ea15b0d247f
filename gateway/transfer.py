"""An agent's transfer settings, in either shape the API accepts, and which transfer a request means.

Shapes (settings.transfer):
* ours: `{number, backup_numbers, type, transfer_condition, transfer_message, enabled}`;
* the seed API's: `{enabled, transfer_options: [{number, type, backup_numbers, transfer_condition,
  transfer_message}, …]}`. Both may be present: ours is then the first option.

`type: static` options are used when nobody names a number (the first static one). `type: dynamic` means the
engine names the number: once an agent has a dynamic option, a number the engine names must be one of the options'
numbers (or their backups), so the engine cannot send a caller anywhere else (with static options only, an engine
may name any number, as before). Each option's `transfer_condition` is handed to the engine at call start so it
can decide which option applies; its `transfer_message` is said before the transfer (docs/engine-protocol.md
`say`; a WAV path or URL is played by the gateway).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .frames import TransferRequest


@dataclass(frozen=True)
class TransferOption:
    number: str
    type: str = "static"
    backup_numbers: tuple[str, ...] = ()
    transfer_condition: str | None = None
    transfer_message: str | None = None

    def for_engine(self) -> dict[str, Any]:
        return {"number": self.number, "type": self.type, "backup_numbers": list(self.backup_numbers),
                "transfer_condition": self.transfer_condition}


def _option(o: dict[str, Any]) -> TransferOption | None:
    if not isinstance(o, dict) or not o.get("number"):
        return None
    return TransferOption(o["number"], o.get("type") or "static", tuple(o.get("backup_numbers") or ()),
                          o.get("transfer_condition"), o.get("transfer_message"))


def transfer_settings(agent: dict[str, Any] | None) -> tuple[bool, list[TransferOption]]:
    """(enabled, options) of an agent; no settings means enabled with no options."""
    t = ((agent or {}).get("settings") or {}).get("transfer") or {}
    options = [o for o in (_option(t), *(_option(x) for x in t.get("transfer_options") or [])) if o is not None]
    return t.get("enabled", True) is not False, options


class TransferRefused(ValueError):
    """The request names no usable transfer; the message says why (logged, and the API's 400)."""


def resolve(agent: dict[str, Any] | None, number: str | None, *, by_engine: bool) -> TransferRequest:
    """The transfer a request means. `by_engine`: the engine asked (settings bind it); else an operator (API)."""
    enabled, options = transfer_settings(agent)
    if by_engine and not enabled:
        raise TransferRefused("transfers are disabled for this agent (settings.transfer.enabled is false)")
    if number:
        for o in options:
            if number == o.number or number in o.backup_numbers:
                backups = [n for n in (o.number, *o.backup_numbers) if n != number]
                return TransferRequest(number, backups, o.transfer_message)
        if by_engine and any(o.type == "dynamic" for o in options):
            raise TransferRefused(f"{number} is not one of the agent's transfer options "
                                  f"({', '.join(o.number for o in options)})")
        return TransferRequest(number, [], None)
    static = [o for o in options if o.type != "dynamic"]
    if not static:
        raise TransferRefused("no transfer number configured" if not options else
                              "every transfer option is dynamic: the engine must name the number")
    o = static[0]
    return TransferRequest(o.number, [n for n in o.backup_numbers if n != o.number], o.transfer_message)
