"""Calls: outbound dispatch through the number's carrier, the call log, live calls and live-call control."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..call import CALL_STATUSES, Call
from ..callmanager import CapacityError
from ..carrier import CarrierError
from ..frames import HangupSource
from .errors import ApiError, carrier_api_error, read_json
from .numbers import scrub
from .validation import as_e164, as_int, as_object, as_str, bad, pagination, reject_unknown, required

if TYPE_CHECKING:
    from ..runtime import Gateway

log = logging.getLogger("gateway.api")

#: seconds an API transfer may wait behind the audio queued before it, on top of the carrier's REST timeout
TRANSFER_QUEUE_WAIT = 5.0


def _gw(request: web.Request) -> "Gateway":
    return request.app["gateway"]


def mmss(seconds: float | None) -> str:
    s = int(round(seconds or 0))
    return f"{s // 60}:{s % 60:02d}"


def call_log_json(row: dict[str, Any]) -> dict[str, Any]:
    """A call-log row with the seed API's telephony fields (call_duration as M:SS)."""
    out = dict(row)
    out["call_duration_in_seconds"] = row.get("call_duration_in_seconds") or 0
    out["call_duration"] = mmss(row.get("call_duration_in_seconds"))
    out["call_log_id"] = row["id"]
    return out


async def dispatch(request: web.Request) -> web.Response:
    gw = _gw(request)
    body = await read_json(request)
    reject_unknown(body, {"agent_id", "to_number", "from_number_id", "call_context"})
    agent_id = as_int(required(body, "agent_id"), "agent_id", minimum=1)
    to_number = as_e164(required(body, "to_number"), "to_number")
    number_id = as_int(required(body, "from_number_id"), "from_number_id", minimum=1)
    ctx = as_object(body["call_context"], "call_context") if body.get("call_context") is not None else {}
    number = await gw.store.get_number(number_id, with_secrets=True)
    if number is None:
        raise bad("from_number_id", f"phone number {number_id} not found", 404)
    carrier = gw.carrier_for(number["provider"])
    if carrier is None:
        raise bad("from_number_id", f"phone number {number_id} uses provider {number['provider']!r}, "
                                    "which has no carrier loaded on this gateway", 409)
    agent = await gw.store.get_agent(agent_id)
    if agent is None:
        raise bad("agent_id", f"agent {agent_id} not found", 404)
    try:
        call = await gw.calls.create(carrier=carrier.name, direction="outbound", from_number=number["phone_number"],
                                     to_number=to_number, number=number, agent=agent, call_context=ctx,
                                     status="queued")
    except CapacityError as e:
        raise ApiError(503, str(e), None) from None
    try:
        await carrier.dispatch(call, number, to_number)
    except CarrierError as e:
        message = scrub(e.message, number.get("secrets") or {})
        await call.end(HangupSource.CARRIER, message, status="failed")
        raise carrier_api_error(e, message, requestId=call.log_id) from None
    except Exception:
        # a bug in a carrier module: the call fails and the client is told so, never a bare 500
        log.exception("carrier dispatch failed", extra={"call_id": call.id, "carrier": carrier.name})
        await call.end(HangupSource.CARRIER, "dispatch_error", status="failed")
        raise ApiError(502, f"carrier {carrier.name} failed to place the call (logged on the gateway)", None,
                       requestId=call.log_id) from None
    log.info("call dispatched", extra={"call_id": call.id, "carrier": carrier.name})
    return web.json_response({"success": True, "status": "dispatched", "requestId": call.log_id,
                              "call_id": call.id})


async def list_logs(request: web.Request) -> web.Response:
    gw = _gw(request)
    q = request.query
    reject_unknown(dict(q), {"pageno", "pagesize", "agentid", "agent_id", "call_status", "carrier_sid"})
    pageno, pagesize = pagination(q)
    agent_key = "agentid" if q.get("agentid") else "agent_id"
    agent_id = as_int(q[agent_key], agent_key, minimum=1) if q.get(agent_key) else None
    status = q.get("call_status") or None
    if status is not None and status not in CALL_STATUSES:
        raise bad("call_status", f"must be one of {', '.join(CALL_STATUSES)} (got {status[:40]!r})")
    sid = as_str(q["carrier_sid"], "carrier_sid", max_len=128) if q.get("carrier_sid") else None
    rows, total = await gw.store.list_calls(pageno, pagesize, agent_id=agent_id, call_status=status,
                                            carrier_sid=sid)
    return web.json_response({"success": True, "total": total, "pageno": pageno, "pagesize": pagesize,
                              "call_log_data": [call_log_json(r) for r in rows]})


def _log_id(ident: str) -> int | None:
    """A call-log id when `ident` is one (ASCII digits in range), else None: then it is a call uuid."""
    if ident.isascii() and ident.isdigit():
        return as_int(ident, "id", minimum=1)
    return None


async def _log_row(gw: "Gateway", ident: str) -> dict[str, Any] | None:
    log_id = _log_id(ident)
    if log_id is not None:
        return await gw.store.get_call(log_id)
    return await gw.store.find_call(call_uuid=ident)


async def get_log(request: web.Request) -> web.Response:
    gw = _gw(request)
    ident = request.match_info["id"]
    row = await _log_row(gw, ident)
    if row is None:
        raise bad("id", f"call {ident} not found", 404)
    events = await gw.store.list_call_events(row["id"])
    return web.json_response({"success": True, "call_log": call_log_json(row),
                              "events": [{"at": e["at"], "event": e["kind"], "data": e["data"]} for e in events]})


async def live(request: web.Request) -> web.Response:
    calls = [c.describe() for c in list(_gw(request).calls.active.values())]
    return web.json_response({"success": True, "count": len(calls), "calls": calls})


async def _live_call(gw: "Gateway", ident: str) -> Call:
    log_id = _log_id(ident)
    call = gw.calls.get_by_log_id(log_id) if log_id is not None else gw.calls.get(ident)
    if call is None:
        row = await _log_row(gw, ident)
        if row is None:
            raise bad("id", f"call {ident} not found", 404)
        raise bad("id", f"call {ident} is not live (status {row['call_status']})", 404)
    return call


async def hangup(request: web.Request) -> web.Response:
    gw = _gw(request)
    call = await _live_call(gw, request.match_info["id"])
    await call.request_hangup(HangupSource.SYSTEM, "api_hangup", immediate=True)
    return web.json_response({"success": True, "status": "hangup_requested", "call_id": call.id,
                              "requestId": call.log_id})


async def transfer(request: web.Request) -> web.Response:
    gw = _gw(request)
    call = await _live_call(gw, request.match_info["id"])
    body = await read_json(request)
    reject_unknown(body, {"number"})
    number = as_e164(body["number"], "number") if body.get("number") not in (None, "") else None
    if call.transfer_request(number) is None:
        raise bad("number", "is required: the call's agent has no transfer number configured")
    if call.bus is None:
        raise bad("id", f"call {call.log_id} is not connected yet (status {call.status}); transfer needs media",
                  409)
    try:   # wait for the carrier to take it: a refusal is an error here, not a success followed by "failed"
        await call.request_transfer(number, wait=gw.settings.carrier_timeout + TRANSFER_QUEUE_WAIT)
    except CarrierError as e:
        raise carrier_api_error(e, requestId=call.log_id) from None
    except Exception:
        raise ApiError(502, "the transfer failed (logged on the gateway)", None, requestId=call.log_id) from None
    return web.json_response({"success": True, "status": "transfer_requested", "call_id": call.id,
                              "requestId": call.log_id, "number": call.transfer_request(number).number})


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    r.add_post(f"{prefix}/calls/dispatch", dispatch)
    r.add_get(f"{prefix}/calls/logs", list_logs)
    r.add_get(f"{prefix}/calls/logs/{{id}}", get_log)
    r.add_get(f"{prefix}/calls/live", live)
    r.add_post(f"{prefix}/calls/{{id}}/hangup", hangup)
    r.add_post(f"{prefix}/calls/{{id}}/transfer", transfer)
