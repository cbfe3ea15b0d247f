"""Carrier webhooks about a call another process of the cluster holds (docs/deploy.md, "Webhooks about a call
another process holds").

A carrier posts its callbacks (status, events, transfer steps) to whichever process its balancer picks; only the
process that owns the call can act on it. Every carrier does the same four things, here once:

* find the call a webhook is about when the URL names none (`call_id_of_sid`: the carrier's own call id in the
  call log, e.g. Plivo's CallUUID, Exotel's CallSid, Vonage's uuid);
* find the number to authenticate it against when the call is not here (`number_of_call`, from the row; or
  `call_row` + `number_of_row`, which read the row once and hand it on to `forward`);
* pass it to the owner (`forward`: control op `<carrier>:webhook`, via `CallManager.forward_to_owner`, which
  follows a call that moved meanwhile) and return the owner's answer body;
* on the owner, run it (`_forwarded`: the carrier's `forwarded_target` finds its per-call state, `on_forwarded`
  carries the webhook out and returns the body that goes back; a call no longer here answers `moved`).

The receiving process always authenticates first (signature, token) with the number from the row, so the owner
acts only on webhooks that would have been accepted had they reached it directly.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.carrier import Carrier
from gateway.cluster import Reply


class ForwardingCarrier(Carrier):
    """A carrier whose webhooks follow the call to its owner."""

    calls_move = True     # the media websocket may reach another process, which adopts the call

    @property
    def forward_op(self) -> str:
        return f"{self.name}:webhook"

    async def start(self) -> None:
        self.gateway.control.handle(self.forward_op, self._forwarded)

    # -- the receiving process ---------------------------------------------------------------------------------
    async def call_row(self, call_id: str, sid: str) -> dict[str, Any] | None:
        """The call-log row of this carrier a webhook is about, read once: by our call id when its URL names one,
        else by the carrier's call id `sid`; None when neither names a call of this carrier."""
        if call_id:
            row = await self.gateway.store.find_call(call_uuid=call_id)
        else:
            row = await self.gateway.store.find_call(carrier_sid=sid) if sid else None
        return row if row is not None and row["channel_type"] == self.name else None

    async def number_of_row(self, row: dict[str, Any] | None) -> dict[str, Any] | None:
        """The number (with its secrets) of a call-log row of this carrier (`call_row`), or None."""
        if row is None or row["channel_type"] != self.name or not row["phone_number_id"]:
            return None
        return await self.gateway.store.get_number(row["phone_number_id"], with_secrets=True)

    async def call_id_of_sid(self, sid: str) -> str:
        """Our call id of the carrier's call `sid` (held here, else the newest row of this carrier), or ''."""
        if not sid:
            return ""
        call = self.gateway.calls.find_by_sid(sid)
        if call is not None and call.carrier == self.name:
            return str(call.id)
        row = await self.gateway.store.find_call(carrier_sid=sid)
        return str(row["call_uuid"]) if row is not None and row["channel_type"] == self.name else ""

    async def number_of_call(self, call_id: str) -> dict[str, Any] | None:
        """The number (with its secrets) of a call-log row of this carrier: what a webhook about a call not held
        here is authenticated against, before it is forwarded to the owner or (the call has ended) answered
        with nothing to do."""
        return await self.number_of_row(await self.gateway.store.find_call(call_uuid=call_id) if call_id else None)

    async def forward(self, call_id: str, args: dict[str, Any],
                      row: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """An authenticated webhook about call `call_id`, which another live process holds: that process carries
        it out (`on_forwarded`) and its answer's body is returned; None when no live process holds the call, or
        the owner refused it (an `UnknownWebhook`: it is then handled here as a call no process holds). `row`:
        the call's row when the caller has just read it (not read again)."""
        reply = await self.gateway.calls.forward_to_owner(call_id, self.forward_op, args, row=row)
        if reply is None or not reply.ok:
            return None
        return reply.body

    # -- the owner -----------------------------------------------------------------------------------------------
    def forwarded_target(self, call_id: str) -> Any | None:
        """This carrier's state of call `call_id` when this process holds it (what `on_forwarded` acts on)."""
        raise NotImplementedError

    async def on_forwarded(self, target: Any, args: dict[str, Any]) -> dict[str, Any]:
        """Carry out a webhook another process received about a call held here (`args` is what that process sent
        with `forward`); the answer's body goes back to it. A `kind` it does not know raises `UnknownWebhook`."""
        raise NotImplementedError

    async def _forwarded(self, args: dict[str, Any]) -> Reply:
        call_id = str(args.get("call") or "")
        target = self.forwarded_target(call_id)
        if target is None:
            return self.gateway.calls.not_here(call_id)
        try:
            return Reply(200, await self.on_forwarded(target, args))
        except UnknownWebhook as e:
            # bad input from another process (e.g. one of a newer version), not a fault of this one: a 400 naming
            # the field, no traceback (docs/deploy.md, "Webhooks about a call another process holds")
            return Reply(400, {"success": False, "error": str(e), "field": "kind"})


class UnknownWebhook(ValueError):
    """A forwarded webhook of a `kind` this carrier does not handle: the owner answers 400 naming `kind`."""

    def __init__(self, carrier: str, kind: str) -> None:
        super().__init__(f"unknown {carrier} webhook kind {kind[:40]!r}")


#: bytes of webhook fields one forwarded request carries at most (a control-bus message stays under 7900 bytes)
FIELDS_BUDGET = 4000


def forwarded_fields(params: Mapping[str, Any], keys: Iterable[str] | None = None) -> dict[str, str]:
    """What of a webhook's parameters goes to the call's owner: `keys` (default: every one) that have a value, as
    text cut at 200 characters, in order until FIELDS_BUDGET bytes of JSON (escapes counted) are used."""
    out: dict[str, str] = {}
    used = 2
    for k in (keys if keys is not None else params.keys()):
        v = params.get(k)
        if v is None or v == "":
            continue
        key, text = str(k)[:64], str(v)[:200]
        size = len(json.dumps(key)) + len(json.dumps(text)) + 2
        if used + size > FIELDS_BUDGET:
            break
        out[key] = text
        used += size
    return out


def str_dict(value: Any) -> dict[str, str]:
    """A forwarded mapping (JSON from another process) as str → str; anything else is empty."""
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
