"""The Replaces header (RFC 3891): naming a dialog so that a new INVITE takes its place.

Used both ways by attended transfer (RFC 5589 §7): the gateway, as transferor, puts one in the Refer-To of its
REFER (`?Replaces=` URI header, escaped) naming its consultation dialog with the target; and it accepts an
INVITE carrying one that names a dialog of its own (the far end transferred its side of our call elsewhere).

The tags are given as the *receiver* of the Replaces sees its dialog (RFC 3891 §3): `to-tag` is the receiver's
local tag, `from-tag` its remote tag. So for a dialog of ours named to our peer, to-tag is our remote tag and
from-tag our local tag; and an incoming Replaces matches our dialog (Call-ID, local tag, remote tag) =
(call-id, to-tag, from-tag).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

_PARAM = re.compile(r"\s*([A-Za-z0-9._!%*+`'~-]+)\s*(?:=\s*(\"[^\"]*\"|[^;\s]*))?\s*")


class ReplacesError(ValueError):
    """A Replaces header that cannot be read (answered 400 with the reason)."""


@dataclass(frozen=True)
class Replaces:
    call_id: str
    to_tag: str
    from_tag: str
    #: only an early dialog may be replaced (RFC 3891 §3: a confirmed one then answers 486)
    early_only: bool = False

    @classmethod
    def parse(cls, values: list[str]) -> Replaces:
        """The one Replaces header of a request (RFC 3891 §3: more than one is a 400)."""
        values = [v for v in values if v.strip()]
        if len(values) != 1:
            raise ReplacesError("exactly one Replaces header is allowed")
        call_id, _, rest = values[0].strip().partition(";")
        call_id = call_id.strip()
        if not call_id or len(call_id) > 255:
            raise ReplacesError("no Call-ID")
        params: dict[str, str | None] = {}
        for part in rest.split(";") if rest else []:
            m = _PARAM.fullmatch(part)
            if m is None:
                raise ReplacesError(f"bad parameter {part.strip()[:40]!r}")
            params[m.group(1).lower()] = (m.group(2) or "").strip('"') if m.group(2) is not None else None
        to_tag, from_tag = params.get("to-tag"), params.get("from-tag")
        if not to_tag or not from_tag:
            raise ReplacesError("to-tag and from-tag are required")
        return cls(call_id, to_tag, from_tag, "early-only" in params)

    @classmethod
    def naming(cls, call_id: str, local_tag: str, remote_tag: str) -> Replaces:
        """Our dialog (Call-ID, our tag, the peer's tag) as the peer must be told it."""
        return cls(call_id, to_tag=remote_tag, from_tag=local_tag)

    @property
    def dialog_id(self) -> tuple[str, str, str]:
        """The receiver's dialog id this names: (Call-ID, local tag, remote tag)."""
        return self.call_id, self.to_tag, self.from_tag

    def value(self) -> str:
        return f"{self.call_id};to-tag={self.to_tag};from-tag={self.from_tag}" + (
            ";early-only" if self.early_only else "")

    def in_uri(self, uri: str) -> str:
        """`uri` with this Replaces as a URI header (RFC 3261 §19.1.1: `;`, `=`, `@` escaped), for Refer-To."""
        return f"{uri}?Replaces={quote(self.value(), safe='')}"
