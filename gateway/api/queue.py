"""The dispatch queue and bulk calls over the API (docs/api.md, "Dispatch queue and bulk calls").

`POST /calls/dispatch` with `"queue": true` queues one call (gateway/api/calls.py); the routes here list and cancel
queued calls and manage bulk calls in OmniDimension's shape (`POST /calls/bulk_call/create` with a
`contact_list`, `GET /calls/bulk_call`, `GET|PUT|DELETE /calls/bulk_call/{id}`). Every queued call is placed by
gateway/dispatcher.py; its outcome is the call-log row it became (`call_log_id`; bulk calls also carry
`call_context.bulk_call_id`, the call-log filter) and that call's lifecycle webhooks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from pydantic import ConfigDict, Field

from ..store.dispatchq import ITEM_STATUSES
from .errors import read_json
from .models import E164, Body, Id, parse
from .validation import as_int, bad, pagination, reject_unknown

if TYPE_CHECKING:
    from ..runtime import Gateway

#: contacts one bulk-call request may carry
MAX_CONTACTS = 10_000
#: bulk-call states an operator sets; `completed` is reported when nothing is left to dial
BULK_STATES = ("in_progress", "paused", "cancelled")


class Contact(Body):
    """One row of a bulk call's `contact_list`: `phone_number` and any other keys, which become that call's
    `call_context` (OmniDimension: "passed to the agent as a context variable for that specific call")."""
    model_config = ConfigDict(extra="allow")
    phone_number: E164


class BulkCreate(Body):
    """POST /calls/bulk_call/create (OmniDimension's createBulkCall)."""
    name: str = Field(min_length=1, max_length=200)
    phone_number_id: Id
    contact_list: list[Contact] = Field(min_length=1, max_length=MAX_CONTACTS)
    agent_id: Id | None = Field(None, description="default: the agent attached to the phone number")
    bot_id: Id | None = Field(None, description="OmniDimension's name for agent_id")
    is_scheduled: Literal[False] = Field(False, description="scheduled bulk calls are not supported: create it "
                                                            "when it is due")


class BulkAction(Body):
    """PUT /calls/bulk_call/{id} (OmniDimension's bulkCallActions; cancel is also DELETE)."""
    action: Literal["pause", "resume", "cancel"]


def _gw(request: web.Request) -> Gateway:
    gw: Gateway = request.app["gateway"]
    return gw


def _id(request: web.Request) -> int:
    return as_int(request.match_info["id"], "id", minimum=1)


# -- queued calls ---------------------------------------------------------------------------------------------
async def list_queue(request: web.Request) -> web.Response:
    gw = _gw(request)
    q = request.query
    reject_unknown(dict(q), {"pageno", "pagesize", "status", "bulk_call_id"})
    pageno, pagesize = pagination(q)
    status = q.get("status") or None
    if status is not None and status not in ITEM_STATUSES:
        raise bad("status", f"must be one of {', '.join(ITEM_STATUSES)} (got {status[:40]!r})")
    bulk = as_int(q["bulk_call_id"], "bulk_call_id", minimum=1) if q.get("bulk_call_id") else None
    rows, total = await gw.store.list_queue(pageno, pagesize, status=status, bulk_call_id=bulk)
    return web.json_response({"success": True, "total": total, "total_records": total, "pageno": pageno,
                              "pagesize": pagesize, "queue": rows})


async def get_queued(request: web.Request) -> web.Response:
    item_id = _id(request)
    row = await _gw(request).store.get_item(item_id)
    if row is None:
        raise bad("id", f"queued call {item_id} not found", 404)
    return web.json_response({"success": True, "queued_call": row})


async def cancel_queued(request: web.Request) -> web.Response:
    gw = _gw(request)
    item_id = _id(request)
    if not await gw.store.cancel_item(item_id):
        row = await gw.store.get_item(item_id)
        if row is None:
            raise bad("id", f"queued call {item_id} not found", 404)
        raise bad("id", f"queued call {item_id} is {row['status']}: only a call still queued can be cancelled "
                        "(hang up a placed call with POST /calls/{id}/hangup)", 409)
    return web.json_response({"success": True, "id": item_id, "status": "cancelled"})


# -- bulk calls -------------------------------------------------------------------------------------------------
def bulk_json(row: dict[str, Any]) -> dict[str, Any]:
    """A bulk call with OmniDimension's names beside ours: `bot_id`, `status` (completed once nothing is left
    to dial), the per-status counts and `total_calls`."""
    counts = row["counts"]
    status = row["status"]
    if status == "in_progress" and not counts["queued"] and not counts["dispatching"]:
        status = "completed"
    return {**{k: v for k, v in row.items() if k != "counts"}, "status": status, "bot_id": row["agent_id"],
            "total_calls": sum(counts.values()), "counts": counts}


async def create_bulk(request: web.Request) -> web.Response:
    gw = _gw(request)
    req = parse(BulkCreate, await read_json(request))
    number = await gw.store.get_number(req.phone_number_id)
    if number is None:
        raise bad("phone_number_id", f"phone number {req.phone_number_id} not found", 404)
    if gw.carrier_for(number["provider"]) is None:
        raise bad("phone_number_id", f"phone number {req.phone_number_id} uses provider {number['provider']!r}, "
                                     "which has no carrier loaded on this gateway", 409)
    agent_id = req.agent_id or req.bot_id or number.get("agent_id")
    if agent_id is None:
        raise bad("agent_id", f"is required: phone number {req.phone_number_id} has no agent attached")
    if await gw.store.get_agent(agent_id) is None:
        raise bad("agent_id", f"agent {agent_id} not found", 404)
    items = [{"agent_id": agent_id, "from_number_id": req.phone_number_id, "to_number": c.phone_number,
              "call_context": dict(c.model_extra or {})} for c in req.contact_list]
    bulk, ids = await gw.store.enqueue_calls(items, {"name": req.name, "agent_id": agent_id,
                                                     "phone_number_id": req.phone_number_id,
                                                     "status": "in_progress"})
    gw.dispatcher.wake()
    assert bulk is not None
    return web.json_response({"success": True, "status": "success", "message": "bulk call created",
                              "bulk_call_id": bulk["id"], "id": bulk["id"], "total_contacts": len(ids),
                              "queue_ids": ids}, status=201)


async def list_bulk(request: web.Request) -> web.Response:
    gw = _gw(request)
    reject_unknown(dict(request.query), {"pageno", "pagesize"})
    pageno, pagesize = pagination(request.query)
    rows, total = await gw.store.list_bulks(pageno, pagesize)
    return web.json_response({"success": True, "status": "success", "total": total, "total_records": total,
                              "pageno": pageno, "pagesize": pagesize, "bulk_calls": [bulk_json(r) for r in rows]})


async def _bulk_or_404(gw: Gateway, bulk_id: int) -> dict[str, Any]:
    row = await gw.store.get_bulk(bulk_id)
    if row is None:
        raise bad("id", f"bulk call {bulk_id} not found", 404)
    return row


async def get_bulk(request: web.Request) -> web.Response:
    row = await _bulk_or_404(_gw(request), _id(request))
    return web.json_response({"success": True, "status": "success", "details": bulk_json(row)})


#: action → (new state, states it may come from, past tense for the message)
_ACTIONS = {"pause": ("paused", ("in_progress",), "paused"),
            "resume": ("in_progress", ("paused",), "resumed"),
            "cancel": ("cancelled", ("in_progress", "paused"), "cancelled")}


async def _act(request: web.Request, action: str) -> web.Response:
    gw = _gw(request)
    bulk_id = _id(request)
    await _bulk_or_404(gw, bulk_id)
    state, allowed, done = _ACTIONS[action]
    if not await gw.store.set_bulk_status(bulk_id, state, only_from=allowed):
        now = bulk_json(await _bulk_or_404(gw, bulk_id))["status"]
        raise bad("action", f"bulk call {bulk_id} is {now}: cannot {action} it", 409)
    if action == "resume":
        gw.dispatcher.wake()
    return web.json_response({"success": True, "status": "success", "message": f"Bulk call {done} successfully",
                              "current_status": state})


async def bulk_action(request: web.Request) -> web.Response:
    return await _act(request, parse(BulkAction, await read_json(request)).action)


async def cancel_bulk(request: web.Request) -> web.Response:
    return await _act(request, "cancel")


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    r.add_get(f"{prefix}/calls/queue", list_queue)
    r.add_get(f"{prefix}/calls/queue/{{id}}", get_queued)
    r.add_delete(f"{prefix}/calls/queue/{{id}}", cancel_queued)
    r.add_post(f"{prefix}/calls/bulk_call/create", create_bulk)
    r.add_get(f"{prefix}/calls/bulk_call", list_bulk)
    r.add_get(f"{prefix}/calls/bulk_call/{{id}}", get_bulk)
    r.add_put(f"{prefix}/calls/bulk_call/{{id}}", bulk_action)
    r.add_delete(f"{prefix}/calls/bulk_call/{{id}}", cancel_bulk)
