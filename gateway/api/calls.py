"""Calls: outbound dispatch through the number's carrier, the call log, live calls and live-call control."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..call import Call
from ..callmanager import CallLogUnavailableError, CapacityError, ChannelLimitError
from ..carrier import CarrierError
from ..channels import Limits
from ..cluster import Reply
from ..cluster.livecalls import remote_live_calls
from ..consult import ConsultError
from ..frames import HangupSource
from ..outbound import DispatchFailed, place_call
from ..store.durable import StoreUnavailableError, is_transient, reason
from ..transfer import TransferRefused
from . import models, responses
from .errors import ApiError, carrier_api_error, error_body, read_json
from .models import parse
from .routes import api_route, ok, reply
from .validation import as_int, bad

if TYPE_CHECKING:
    from ..runtime import Gateway

log = logging.getLogger("gateway.api")

#: seconds an API transfer may wait behind the audio queued before it, on top of the carrier's REST timeout
TRANSFER_QUEUE_WAIT = 5.0


def _gw(request: web.Request) -> Gateway:
    gw: Gateway = request.app["gateway"]
    return gw


def mmss(seconds: float | None) -> str:
    s = int(round(seconds or 0))
    return f"{s // 60}:{s % 60:02d}"


def time_of_call(created_at: str | None) -> str:
    """OmniDimension's `time_of_call`: MM/DD/YYYY HH:MM:SS (UTC, like every time the gateway stores)."""
    if not created_at:
        return ""
    at = datetime.fromisoformat(created_at)
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.strftime("%m/%d/%Y %H:%M:%S")


def call_log_json(row: dict[str, Any]) -> dict[str, Any]:
    """A call-log row with the seed (OmniDimension) API's fields besides ours: call_duration as M:SS, an integer
    call_duration_in_seconds, call_duration_in_minutes, time_of_call, recording_url false when there is none
    (docs/omnidimension-compat.md)."""
    out = dict(row)
    seconds = row.get("call_duration_in_seconds") or 0
    out["call_duration_in_seconds"] = int(round(seconds))
    out["call_duration_in_minutes"] = round(seconds / 60, 2)
    out["call_duration"] = mmss(seconds)
    out["time_of_call"] = time_of_call(row.get("created_at"))
    out["recording_url"] = row.get("recording_url") or False
    if row.get("recording"):       # what and where, without paths on the gateway's disk
        out["recording"] = {k: v for k, v in row["recording"].items() if k not in ("path", "relative")}
    out["call_log_id"] = row["id"]
    return out


async def dispatch(request: web.Request) -> web.Response:
    gw = _gw(request)
    req = parse(models.Dispatch, await read_json(request))
    agent_id, to_number, ctx = req.agent_id, req.to_number, req.call_context or {}
    if req.from_number_id is not None:
        number_id = req.from_number_id
    else:   # as in OmniDimension: the agent's attached number
        number_id = await _attached_number(gw, agent_id)
    number = await gw.store.get_number(number_id, with_secrets=True)
    if number is None:
        raise bad("from_number_id", f"phone number {number_id} not found", 404)
    if gw.carrier_for(number["provider"]) is None:
        raise bad("from_number_id", f"phone number {number_id} uses provider {number['provider']!r}, "
                                    "which has no carrier loaded on this gateway", 409)
    agent = await gw.store.get_agent(agent_id)
    if agent is None:
        raise bad("agent_id", f"agent {agent_id} not found", 404)
    recording = req.recording.model_dump(exclude_none=True) if req.recording is not None else None
    if req.queue:
        _, ids = await gw.store.enqueue_calls([{"agent_id": agent_id, "from_number_id": number_id,
                                                "to_number": to_number, "call_context": ctx,
                                                "recording": recording}])
        gw.dispatcher.wake()
        return reply(responses.Queued, status="queued", queue_id=ids[0], _status=202)
    await take_slot(gw, number)
    try:
        call = await place_call(gw, number=number, agent=agent, to_number=to_number, call_context=ctx,
                                recording=recording)
    except ChannelLimitError as e:
        raise ApiError(429, f"{e}; retry later or dispatch with \"queue\": true", "from_number_id",
                       headers={"Retry-After": str(e.retry_after)}) from None
    except CapacityError as e:
        raise ApiError(503, str(e), None) from None
    except DispatchFailed as e:
        if e.error is None:
            raise ApiError(502, f"carrier {e.call.carrier} failed to place the call (logged on the gateway)",
                           None, requestId=e.call.log_id) from None
        raise carrier_api_error(e.error, requestId=e.call.log_id) from None
    return reply(responses.Dispatched, status="dispatched", requestId=call.log_id, call_id=call.id)


async def take_slot(gw: Gateway, number: dict[str, Any]) -> None:
    """A direct dispatch takes the number's next slot at its `max_cps` now, or is refused with 429 and how long
    until a slot is free (the dispatch queue waits for slots instead)."""
    cps = Limits.of(number).max_cps
    if not cps:
        return
    for _ in range(20):     # another process handing out this number's slots holds its pace row for a moment
        slots = await gw.store.take_slots(number["id"], cps=cps, want=1, horizon=0.0)
        if slots is not None:
            break
        await asyncio.sleep(0.01)
    else:
        slots = None
    if slots is None or not slots.times:
        wait = max(1, math.ceil(slots.wait)) if slots is not None else 1
        raise ApiError(429, f"from_number_id: phone number {number['phone_number']} is at its max_cps of {cps:g} "
                            "calls per second; retry later or dispatch with \"queue\": true", "from_number_id",
                       headers={"Retry-After": str(wait)})


async def _attached_number(gw: Gateway, agent_id: int) -> int:
    """The id of the (first) number attached to the agent, for a dispatch without from_number_id."""
    numbers = await gw.store.numbers_of_agent(agent_id)
    if not numbers:
        raise bad("from_number_id", f"is required: agent {agent_id} has no phone number attached "
                                    "(attach one, or name the number to call from)")
    first: int = numbers[0]["id"]
    return first


@contextlib.asynccontextmanager
async def _call_log_read(gw: Gateway) -> AsyncIterator[None]:
    """A read of the call log that answers at once while the database is away: reads wait for this process's
    queued writes first (they show a call's latest state), and while those are held for the database that wait
    lasts up to --store-retry-seconds; so the read is refused, 503 with Retry-After and the reason, as is one whose
    own query the database failed transiently (a 500 would say the gateway is broken, not the database away)."""
    try:
        await gw.store.flush_for_read()
        yield
    except Exception as e:
        if not isinstance(e, StoreUnavailableError) and not is_transient(e):
            raise
        why = str(e) if isinstance(e, StoreUnavailableError) else f"the call log is unavailable ({reason(e)})"
        raise ApiError(503, f"{why}; retry later", None,
                       headers={"Retry-After": str(CallLogUnavailableError.retry_after)}) from None


async def list_logs(request: web.Request) -> web.Response:
    gw = _gw(request)
    q = parse(models.LogQuery, request.query)
    # bulk_call_id is OmniDimension's campaign filter: here a call belongs to bulk call N when dispatched with
    # call_context.bulk_call_id = N
    if q.since is not None and q.until is not None and q.until <= q.since:
        raise bad("until", "must be after since")
    async with _call_log_read(gw):
        rows, total = await gw.store.list_calls(q.pageno, q.pagesize, agent_id=q.agentid or q.agent_id,
                                                call_status=q.call_status, carrier_sid=q.carrier_sid,
                                                bulk_call_id=q.bulk_call_id, carrier=q.carrier, since=q.since,
                                                until=q.until)
    return reply(responses.CallLogList, total=total, total_records=total, pageno=q.pageno, pagesize=q.pagesize,
                                    call_log_data=[call_log_json(r) for r in rows])


def _log_id(ident: str) -> int | None:
    """A call-log id when `ident` is one (ASCII digits in range), else None: then it is a call uuid."""
    if ident.isascii() and ident.isdigit():
        return as_int(ident, "id", minimum=1)
    return None


async def _log_row(gw: Gateway, ident: str) -> dict[str, Any] | None:
    log_id = _log_id(ident)
    if log_id is not None:
        return await gw.store.get_call(log_id)
    return await gw.store.find_call(call_uuid=ident)


async def get_log(request: web.Request) -> web.Response:
    gw = _gw(request)
    ident = request.match_info["id"]
    async with _call_log_read(gw):
        row = await _log_row(gw, ident)
        events = await gw.store.list_call_events(row["id"]) if row is not None else []
    if row is None:
        raise bad("id", f"call {ident} not found", 404)
    view = call_log_json(row)
    return reply(responses.CallLogReply, call_log=view, call_log_data=[view], total_records=1, events=[
        {"at": e["at"], "event": e["kind"], "data": e["data"]} for e in events])


async def live(request: web.Request) -> web.Response:
    """Live calls of every live process: this one's with meters, the others' from the call log."""
    gw = _gw(request)
    calls = [{**c.describe(), "owner": gw.settings.proc_id, "node": gw.settings.node_id}
             for c in list(gw.calls.active.values())]
    calls += await remote_live_calls(gw)
    return reply(responses.LiveCalls, count=len(calls), calls=calls)


# -- control of a live call, wherever it lives ----------------------------------------------------------------
@dataclass(frozen=True)
class CallOp:
    """A control action on a live call, `POST /api/v1/calls/{id}/<name>`.

    `body` (a models.Body, or None for no body) is validated in the process that received the request; `perform`
    runs in the process that owns the call (this one, or another reached over the control bus with the parsed
    body as a dict) and returns the JSON answer, which is checked against `response` (a responses.CallOpReply) on
    its way out, or raises ApiError. `orphan` is the answer when the owner turned out to be gone and the call was
    closed on its behalf (`node_lost`); without it that is a 404 "not live". `wait` is how long `perform` may
    take (seconds, from the settings), when longer than the control bus's timeout. A new op (hold, mute…) is one
    more entry in CALL_OPS: its route, its OpenAPI entry (from `summary`, `body`, `response`) and its
    control-bus handler follow from it."""
    name: str
    summary: str
    perform: Callable[[Gateway, Call, dict[str, Any]], Awaitable[dict[str, Any]]]
    body: type[models.Body] | None = None
    response: type[responses.CallOpReply] = responses.CallOpReply
    orphan: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    wait: Callable[[Gateway], float] | None = None

    async def parse(self, request: web.Request) -> dict[str, Any]:
        if self.body is None:
            return {}
        return parse(self.body, await read_json(request)).model_dump(mode="json", exclude_unset=True)


async def _hangup(gw: Gateway, call: Call, args: dict[str, Any]) -> dict[str, Any]:
    await call.request_hangup(HangupSource.SYSTEM, "api_hangup", immediate=True)
    return {"success": True, "status": "hangup_requested", "call_id": call.id, "requestId": call.log_id}


def _hangup_orphan(row: dict[str, Any]) -> dict[str, Any]:
    return {"success": True, "status": "closed", "call_id": row["call_uuid"], "requestId": row["id"],
            "hangup_reason": "node_lost"}


async def _transfer(gw: Gateway, call: Call, args: dict[str, Any]) -> dict[str, Any]:
    number = args.get("number")
    try:
        target = call.transfer_request(number).number
    except TransferRefused as e:
        raise bad("number", f"is required: {e}") from None
    if call.bus is None:
        raise bad("id", f"call {call.log_id} is not connected yet (status {call.status}); transfer needs media",
                  409)
    try:   # wait for the carrier to take it: a refusal is an error here, not a success followed by "failed"
        await call.request_transfer(number, wait=_transfer_wait(gw))
    except CarrierError as e:
        raise carrier_api_error(e, requestId=call.log_id) from None
    except Exception:
        raise ApiError(502, "the transfer failed (logged on the gateway)", None, requestId=call.log_id) from None
    return {"success": True, "status": "transfer_requested", "call_id": call.id, "requestId": call.log_id,
            "number": target}


def _transfer_wait(gw: Gateway) -> float:
    return gw.settings.carrier_timeout + TRANSFER_QUEUE_WAIT


def _hold_op(on: bool) -> Callable[[Gateway, Call, dict[str, Any]], Awaitable[dict[str, Any]]]:
    """POST /calls/{id}/hold|unhold: music on hold and a paused, deaf engine; SIP also re-INVITEs (sendonly)."""
    async def perform(gw: Gateway, call: Call, args: dict[str, Any]) -> dict[str, Any]:
        _needs_media(call, "hold" if on else "unhold")
        try:
            await call.set_hold(on, "api")
        except CarrierError as e:
            raise carrier_api_error(e, requestId=call.log_id) from None
        return _state(call, "held" if on else "resumed")
    return perform


def _mute_op(on: bool) -> Callable[[Gateway, Call, dict[str, Any]], Awaitable[dict[str, Any]]]:
    """POST /calls/{id}/mute|unmute: the caller's audio stops (or resumes) reaching the engine."""
    async def perform(gw: Gateway, call: Call, args: dict[str, Any]) -> dict[str, Any]:
        _needs_media(call, "mute" if on else "unmute")
        await call.set_mute(on, "api")
        return _state(call, "muted" if on else "unmuted")
    return perform


def _needs_media(call: Call, what: str) -> None:
    if call.bus is None:
        raise bad("id", f"call {call.log_id} is not connected yet (status {call.status}); {what} needs media", 409)


def _state(call: Call, status: str) -> dict[str, Any]:
    return {"success": True, "status": status, "call_id": call.id, "requestId": call.log_id, "held": call.held,
            "remote_held": call.remote_held, "muted": call.muted}


def _consult_error(call: Call, e: Exception) -> ApiError:
    """A consultation step refused (409 with the reason), refused by the carrier (its status), or a bug (502)."""
    if isinstance(e, ConsultError):
        return ApiError(e.status, e.message, "id", requestId=call.log_id)
    if isinstance(e, TransferRefused):
        return bad("number", f"is required: {e}")
    if isinstance(e, CarrierError):
        return carrier_api_error(e, requestId=call.log_id)
    log.error("consultation step failed", exc_info=e, extra={"call_id": call.id})
    return ApiError(502, "the consultation step failed (logged on the gateway)", None, requestId=call.log_id)


async def _consult(gw: Gateway, call: Call, args: dict[str, Any]) -> dict[str, Any]:
    try:
        req = call.consult_request(args.get("number"), args.get("message"))
        await call.start_consult(req)
    except Exception as e:
        raise _consult_error(call, e) from None
    return {"success": True, "status": "consult_dialing", "call_id": call.id, "requestId": call.log_id,
            "number": req.number}


async def _consult_complete(gw: Gateway, call: Call, args: dict[str, Any]) -> dict[str, Any]:
    try:
        method = await call.complete_consult()
    except Exception as e:
        raise _consult_error(call, e) from None
    return {"success": True, "status": "transferred", "call_id": call.id, "requestId": call.log_id,
            "number": call.consultation.number if call.consultation else None, "method": method}


async def _consult_cancel(gw: Gateway, call: Call, args: dict[str, Any]) -> dict[str, Any]:
    try:
        await call.cancel_consult()
    except Exception as e:
        raise _consult_error(call, e) from None
    return {"success": True, "status": "consult_cancelled", "call_id": call.id, "requestId": call.log_id}


def _carrier_wait(gw: Gateway) -> float:
    """Hold and unhold wait for one carrier request (a re-INVITE, a REST update)."""
    timeout: float = gw.settings.carrier_timeout
    return timeout


CALL_OPS: list[CallOp] = [
    CallOp("hangup", "Hang up a live call", _hangup, orphan=_hangup_orphan),
    CallOp("transfer", "Transfer a live call (default: the agent's transfer number)", _transfer,
           body=models.Transfer, response=responses.TransferReply, wait=_transfer_wait),
    # attended transfer (gateway/consult.py): consult, then complete or cancel
    CallOp("consult", "Attended transfer, step 1: put the caller on hold and call the target (the engine then "
           "talks to it)", _consult, body=models.Consult, response=responses.ConsultReply),
    CallOp("consult/complete", "Attended transfer, step 2: join the caller and the answered target; the gateway "
           "leaves the call", _consult_complete, response=responses.ConsultReply, wait=_transfer_wait),
    CallOp("consult/cancel", "Attended transfer: end the consultation call; the engine talks to the caller again",
           _consult_cancel, wait=_transfer_wait),
    CallOp("hold", "Put a live call on hold: music on hold, the engine paused (SIP re-INVITEs sendonly)",
           _hold_op(True), response=responses.HoldState, wait=_carrier_wait),
    CallOp("unhold", "Take a live call off hold", _hold_op(False), response=responses.HoldState,
           wait=_carrier_wait),
    CallOp("mute", "Mute the caller: their audio stops reaching the engine", _mute_op(True),
           response=responses.HoldState),
    CallOp("unmute", "Unmute the caller", _mute_op(False), response=responses.HoldState),
]


def _local_call(gw: Gateway, ident: str) -> Call | None:
    log_id = _log_id(ident)
    return gw.calls.get_by_log_id(log_id) if log_id is not None else gw.calls.get(ident)


def _not_live(ident: str, row: dict[str, Any]) -> ApiError:
    return bad("id", f"call {ident} is not live (status {row['call_status']})", 404)


async def run_call_op(gw: Gateway, op: CallOp, ident: str, args: dict[str, Any]) -> Reply:
    """Run `op` where the call lives: here, else on its owner over the control bus (whose answer is returned
    unchanged); an owner that is gone has the call closed as `node_lost` (docs/deploy.md)."""
    call = _local_call(gw, ident)
    if call is not None and not await gw.calls.moved_away(call):
        result = await op.perform(gw, call, args)
        if not call.moved:
            return Reply(200, result)
        # adopted by another process while the op ran (its hang-up lost the row): the op follows the call
    timeout = max(gw.control.timeout, op.wait(gw) + 1.0) if op.wait is not None else None
    for _ in range(2):      # a second look when the call moved to another process (adoption) meanwhile
        row = await _log_row(gw, ident)
        if row is None:
            raise bad("id", f"call {ident} not found", 404)
        owner = row.get("owner")
        if row.get("ended_at") is not None or owner == gw.settings.proc_id:
            raise _not_live(ident, row)
        if owner is None or not await gw.membership.alive(owner):   # (no owner: never alive)
            break
        reply = await gw.control.request(owner, f"call:{op.name}", {"call": row["call_uuid"], "args": args},
                                         timeout=timeout)
        if reply is None:
            if await gw.membership.alive(owner):
                raise ApiError(504, f"the gateway process {owner} that owns call {ident} did not answer", "id")
            break
        if reply.status == 404 and reply.body.get("moved"):
            continue
        return reply
    else:
        assert row is not None   # the loop raised on a missing row
        raise _not_live(ident, row)
    closed = await gw.membership.close_calls("node_lost", owner=owner, call_id=row["id"])
    if op.orphan is not None and closed:
        return Reply(200, op.orphan(closed[0]))
    row = await _log_row(gw, ident) or row
    raise bad("id", f"call {ident} is not live (its gateway process {owner} is gone; status "
                    f"{row['call_status']}, {row.get('hangup_reason')})", 404)


def _route(op: CallOp) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        gw = _gw(request)
        ident = request.match_info["id"]
        _log_id(ident)                       # a malformed id is a 400 before anything else
        args = await op.parse(request)
        reply = await run_call_op(gw, op, ident, args)
        model = op.response if reply.status < 300 else responses.ErrorBody
        return ok(model.model_validate(reply.body), status=reply.status, headers=reply.headers)
    return handler


def _bus_handler(gw: Gateway, op: CallOp) -> Callable[[dict[str, Any]], Awaitable[Reply]]:
    """What the owning process does with a forwarded op: the same `perform`, its ApiError as the reply."""
    async def handler(msg: dict[str, Any]) -> Reply:
        ident = str(msg.get("call") or "")
        call = gw.calls.get(ident)
        moved = Reply(404, error_body(f"call {ident} is not live on {gw.settings.proc_id}", "id", moved=True))
        if call is None or await gw.calls.moved_away(call):
            return moved
        args = msg.get("args")
        try:
            result = await op.perform(gw, call, args if isinstance(args, dict) else {})
        except ApiError as e:
            return Reply(e.status, error_body(e.message, e.field, **e.extra), e.headers)
        return moved if call.moved else Reply(200, result)
    return handler


def add_routes(app: web.Application, prefix: str) -> None:
    tag = "calls"
    api_route(app, "POST", f"{prefix}/calls/dispatch", dispatch, "Place an outbound call (or queue it: `queue`)",
              tag=tag, body=models.Dispatch, response=responses.Dispatched, errors=(400, 401, 404, 409, 429, 502, 503),
              also=((202, responses.Queued, "queued (`queue: true`): it starts when the number has a free channel"),))
    api_route(app, "GET", f"{prefix}/calls/logs", list_logs, "Call log", tag=tag, query=models.LogQuery,
              response=responses.CallLogList, errors=(400, 401, 503))
    api_route(app, "GET", f"{prefix}/calls/logs/{{id}}", get_log, "One call with its events", tag=tag,
              params=models.CallPath, response=responses.CallLogReply, errors=(400, 401, 404, 503))
    api_route(app, "GET", f"{prefix}/calls/live", live, "Live calls (of every live process)", tag=tag,
              response=responses.LiveCalls, errors=(401,))
    gw: Gateway = app["gateway"]
    for op in CALL_OPS:
        api_route(app, "POST", f"{prefix}/calls/{{id}}/{op.name}", _route(op), op.summary, tag=tag,
                  params=models.CallPath, body=op.body, body_required=False, response=op.response,
                  errors=(400, 401, 404, 409, 502, 504))
        gw.control.handle(f"call:{op.name}", _bus_handler(gw, op))
