"""The dispatch queue and bulk calls over the API (docs/api.md, "Dispatch queue and bulk calls").

`POST /calls/dispatch` with `"queue": true` queues one call (gateway/api/calls.py); the routes here list and cancel
queued calls and manage bulk calls in OmniDimension's shape (`POST /calls/bulk_call/create` with a
`contact_list`, `GET /calls/bulk_call`, `GET|PUT|DELETE /calls/bulk_call/{id}`). Every queued call is placed by
gateway/dispatcher.py; its outcome is the call-log row it became (`call_log_id`; bulk calls also carry
`call_context.bulk_call_id`, the call-log filter) and that call's lifecycle webhooks.

Scheduling and retries follow OmniDimension's createBulkCall (docs.omnidim.io, *Bulk calls*; its SDKs'
`create_bulk_calls` / generated types): `is_scheduled` + `scheduled_datetime` ("YYYY-MM-DD HH:MM:SS") + `timezone`
(IANA, default UTC), and `retry_config` {auto_retry, auto_retry_schedule: immediately | next_day |
scheduled_time, retry_schedule_days, retry_schedule_hours, retry_limit 0–5}; `reschedule` with
`new_scheduled_datetime` / `new_timezone`. Our own spelling beside it: `scheduled_at` (ISO 8601) and `retry`
{max_attempts, delay_seconds, on}.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from pydantic import ConfigDict, Field, field_validator

from ..retries import DEFAULT_ON, MAX_ATTEMPTS, RetryOn, RetryPolicy
from ..statuses import ITEM_STATUSES
from . import responses
from .errors import read_json
from .models import E164, Body, Id, IdPath, Page, parse
from .routes import api_route, reply
from .validation import bad

if TYPE_CHECKING:
    from ..runtime import Gateway

#: contacts one bulk-call request may carry
MAX_CONTACTS = 10_000
#: bulk-call states an operator sets; `scheduled` is reported while its start is ahead, `completed` when
#: nothing is left to dial
BULK_STATES = ("in_progress", "paused", "cancelled")
#: seconds a scheduled start may lie in the past (clock skew) before it is refused as a mistake
PAST_SLACK = 60.0
#: the longest wait a retry may ask for
MAX_RETRY_DELAY = 7 * 86400
OMNI_FORMAT = "%Y-%m-%d %H:%M:%S"


class Contact(Body):
    """One row of a bulk call's `contact_list`: `phone_number` and any other keys, which become that call's
    `call_context` (OmniDimension: "passed to the agent as a context variable for that specific call")."""
    model_config = ConfigDict(extra="allow")
    phone_number: E164


class Retry(Body):
    """Calls that end with one of `on` are placed again `delay_seconds` after they ended, until `max_attempts`
    calls were placed for the contact."""
    max_attempts: int = Field(ge=1, le=MAX_ATTEMPTS, description="calls per contact in all, the first included")
    delay_seconds: float = Field(0.0, ge=0, le=MAX_RETRY_DELAY)
    on: list[RetryOn] = Field(list(DEFAULT_ON), min_length=1, description="call statuses that are retried")


class OmniRetryConfig(Body):
    """OmniDimension's `retry_config`: `retry_limit` retries (so 1 + retry_limit calls) of no-answer, busy and
    failed calls, at once, the next day, or after `retry_schedule_days` days + `retry_schedule_hours` hours."""
    auto_retry: bool = False
    auto_retry_schedule: Literal["immediately", "next_day", "scheduled_time"] = "immediately"
    retry_schedule_days: int = Field(0, ge=0, le=6)
    retry_schedule_hours: int = Field(0, ge=0, le=23)
    retry_limit: int = Field(0, ge=0, le=5)

    def policy(self) -> RetryPolicy | None:
        if not self.auto_retry or not self.retry_limit:
            return None
        delay = {"immediately": 0, "next_day": 86400}.get(
            self.auto_retry_schedule, self.retry_schedule_days * 86400 + self.retry_schedule_hours * 3600)
        return RetryPolicy(1 + self.retry_limit, float(delay), DEFAULT_ON)


class BulkCreate(Body):
    """POST /calls/bulk_call/create (OmniDimension's createBulkCall)."""
    name: str = Field(min_length=1, max_length=200)
    phone_number_id: Id
    contact_list: list[Contact] = Field(min_length=1, max_length=MAX_CONTACTS)
    agent_id: Id | None = Field(None, description="default: the agent attached to the phone number")
    bot_id: Id | None = Field(None, description="OmniDimension's name for agent_id")
    scheduled_at: datetime | None = Field(None, description="ISO 8601 (no zone: UTC): its calls start then")
    is_scheduled: bool = Field(False, description="OmniDimension's scheduling: with scheduled_datetime")
    scheduled_datetime: str | None = Field(None, max_length=40, description="YYYY-MM-DD HH:MM:SS in `timezone`")
    timezone: str = Field("UTC", max_length=64, description="IANA zone of scheduled_datetime")
    retry: Retry | None = None
    retry_config: OmniRetryConfig | None = Field(None, description="OmniDimension's auto-retry settings")


class BulkAction(Body):
    """PUT /calls/bulk_call/{id} (OmniDimension's bulkCallActions; cancel is also DELETE)."""
    action: Literal["pause", "resume", "cancel", "reschedule"]
    scheduled_at: datetime | None = Field(None, description="reschedule: the new start (ISO 8601)")
    new_scheduled_datetime: str | None = Field(None, max_length=40, description="reschedule: YYYY-MM-DD "
                                                                                "HH:MM:SS in new_timezone")
    new_timezone: str = Field("UTC", max_length=64)


class QueueQuery(Page):
    status: str | None = Field(None, description="one of " + ", ".join(ITEM_STATUSES))
    bulk_call_id: Id | None = None

    @field_validator("status")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        if value is not None and value not in ITEM_STATUSES:
            raise ValueError(f"must be one of {', '.join(ITEM_STATUSES)} (got {value[:40]!r})")
        return value


def _gw(request: web.Request) -> Gateway:
    gw: Gateway = request.app["gateway"]
    return gw


def _id(request: web.Request) -> int:
    return parse(IdPath, request.match_info).id


# -- queued calls ---------------------------------------------------------------------------------------------
async def list_queue(request: web.Request) -> web.Response:
    gw = _gw(request)
    q = parse(QueueQuery, request.query)
    rows, total = await gw.store.list_queue(q.pageno, q.pagesize, status=q.status, bulk_call_id=q.bulk_call_id)
    return reply(responses.QueueList, total=total, total_records=total, pageno=q.pageno, pagesize=q.pagesize,
                                  queue=[responses.QueuedCall.model_validate(r) for r in rows])


async def get_queued(request: web.Request) -> web.Response:
    item_id = _id(request)
    row = await _gw(request).store.get_item(item_id)
    if row is None:
        raise bad("id", f"queued call {item_id} not found", 404)
    return reply(responses.QueuedCallReply, queued_call=responses.QueuedCall.model_validate(row))


async def cancel_queued(request: web.Request) -> web.Response:
    gw = _gw(request)
    item_id = _id(request)
    if not await gw.store.cancel_item(item_id):
        row = await gw.store.get_item(item_id)
        if row is None:
            raise bad("id", f"queued call {item_id} not found", 404)
        raise bad("id", f"queued call {item_id} is {row['status']}: only a call still queued can be cancelled "
                        "(hang up a placed call with POST /calls/{id}/hangup)", 409)
    return reply(responses.QueueCancelled, id=item_id, status="cancelled")


# -- bulk calls -------------------------------------------------------------------------------------------------
def _zone(name: str, field: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise bad(field, f"unknown IANA time zone {name[:64]!r} (e.g. UTC, Asia/Kolkata)") from None


def _when(at: datetime | None, local: str | None, zone: str, fields: tuple[str, str, str],
          required: bool) -> tuple[datetime | None, str | None]:
    """A start time from `scheduled_at` (ISO 8601, no zone: UTC) or OmniDimension's local `YYYY-MM-DD HH:MM:SS`
    in `zone`: (aware UTC time, zone name). Refused when it lies more than PAST_SLACK seconds in the past."""
    at_field, local_field, zone_field = fields
    if at is not None and local is not None:
        raise bad(at_field, f"give either {at_field} or {local_field}, not both")
    if local is not None:
        tz = _zone(zone, zone_field)
        try:
            at = datetime.strptime(local.strip(), OMNI_FORMAT).replace(tzinfo=tz)
        except ValueError:
            raise bad(local_field, f"must be YYYY-MM-DD HH:MM:SS (got {local[:40]!r})") from None
        field = local_field
    elif at is not None:
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        zone, field = "UTC", at_field
    elif required:
        raise bad(at_field, f"is required: the new start ({at_field} or {local_field})")
    else:
        return None, None
    if at < datetime.now(UTC) - timedelta(seconds=PAST_SLACK):
        raise bad(field, f"{at.isoformat()} is in the past")
    return at.astimezone(UTC), zone


def bulk_json(row: dict[str, Any]) -> dict[str, Any]:
    """A bulk call with OmniDimension's names beside ours: `bot_id`; `status` (`scheduled` while its start is
    ahead and nothing was placed, `completed` once nothing is left to dial); progress `counts` (queued, dialing,
    retrying, completed, failed, cancelled) with OmniDimension's `total_calls`, `completed_calls` (contacts
    done, whatever their outcome), `pending_calls`, `failed_calls` and `call_status_counts` (how the done
    contacts' last calls ended); the schedule and the retry policy in both spellings."""
    counts, status = row["counts"], row["status"]
    pending = counts["queued"] + counts["dialing"] + counts["retrying"]
    start = datetime.fromisoformat(row["scheduled_at"]) if row.get("scheduled_at") else None
    placed = pending - counts["queued"] + counts["completed"] + counts["failed"]
    if status == "in_progress" and not pending:
        status = "completed"
    elif status == "in_progress" and start is not None and start > datetime.now(UTC) and not placed:
        status = "scheduled"
    zone = row.get("timezone") or "UTC"
    policy = RetryPolicy.of(row.get("retry"))
    try:
        local = start.astimezone(ZoneInfo(zone)).strftime(OMNI_FORMAT) if start else None
    except (ZoneInfoNotFoundError, ValueError):
        local = None
    return {**{k: v for k, v in row.items() if k not in ("counts", "outcomes", "retry")}, "status": status,
            "bot_id": row["agent_id"], "total_calls": sum(counts.values()), "counts": counts,
            "outcomes": row["outcomes"], "call_status_counts": row["outcomes"],
            "completed_calls": counts["completed"] + counts["failed"], "pending_calls": pending,
            "failed_calls": counts["failed"], "is_scheduled": start is not None, "scheduled_datetime": local,
            "timezone": zone, "retry": policy.as_dict() if policy else None, "auto_retry": policy is not None,
            "retry_limit": policy.max_attempts - 1 if policy else 0}


async def create_bulk(request: web.Request) -> web.Response:
    gw = _gw(request)
    req = parse(BulkCreate, await read_json(request))
    if req.is_scheduled and req.scheduled_datetime is None:
        raise bad("scheduled_datetime", "is required when is_scheduled is true (YYYY-MM-DD HH:MM:SS)")
    when, zone = _when(req.scheduled_at, req.scheduled_datetime if req.is_scheduled else None, req.timezone,
                       ("scheduled_at", "scheduled_datetime", "timezone"), required=False)
    if req.retry is not None and req.retry_config is not None:
        raise bad("retry", "give either retry or retry_config, not both")
    policy = (RetryPolicy(req.retry.max_attempts, req.retry.delay_seconds, tuple(req.retry.on))
              if req.retry is not None else req.retry_config.policy() if req.retry_config is not None else None)
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
                                                     "status": "in_progress", "scheduled_at": when,
                                                     "timezone": zone,
                                                     "retry": policy.as_dict() if policy else None})
    gw.dispatcher.wake()
    assert bulk is not None
    return reply(responses.BulkCreated, status="success", message="bulk call created", bulk_call_id=bulk["id"],
                                    id=bulk["id"], total_contacts=len(ids), queue_ids=ids,
                                    is_scheduled=when is not None,
                                    current_status="scheduled" if when is not None else "in_progress",
                                    _status=201)


async def list_bulk(request: web.Request) -> web.Response:
    gw = _gw(request)
    q = parse(Page, request.query)
    rows, total = await gw.store.list_bulks(q.pageno, q.pagesize)
    bulks = [responses.BulkCall.model_validate(bulk_json(r)) for r in rows]
    return reply(responses.BulkList, status="success", total=total, total_records=total, pageno=q.pageno,
                                 pagesize=q.pagesize, bulk_calls=bulks)


async def _bulk_or_404(gw: Gateway, bulk_id: int) -> dict[str, Any]:
    row = await gw.store.get_bulk(bulk_id)
    if row is None:
        raise bad("id", f"bulk call {bulk_id} not found", 404)
    return row


async def get_bulk(request: web.Request) -> web.Response:
    row = await _bulk_or_404(_gw(request), _id(request))
    return reply(responses.BulkReply, status="success", details=responses.BulkCall.model_validate(bulk_json(row)))


#: action → (new state, states it may come from, past tense for the message)
_ACTIONS = {"pause": ("paused", ("in_progress",), "paused"),
            "resume": ("in_progress", ("paused",), "resumed"),
            "cancel": ("cancelled", ("in_progress", "paused"), "cancelled")}


async def _act(request: web.Request, req: BulkAction) -> web.Response:
    gw = _gw(request)
    bulk_id = _id(request)
    await _bulk_or_404(gw, bulk_id)
    if req.action == "reschedule":
        when, zone = _when(req.scheduled_at, req.new_scheduled_datetime, req.new_timezone,
                           ("scheduled_at", "new_scheduled_datetime", "new_timezone"), required=True)
        assert when is not None
        if not await gw.store.reschedule_bulk(bulk_id, when, zone):
            raise bad("action", f"bulk call {bulk_id} is cancelled: cannot reschedule it", 409)
        now = bulk_json(await _bulk_or_404(gw, bulk_id))
        return reply(responses.BulkActed, status="success", message="Bulk call rescheduled successfully",
                                      current_status=now["status"], scheduled_datetime=now["scheduled_datetime"],
                                      timezone=now["timezone"])
    state, allowed, done = _ACTIONS[req.action]
    if not await gw.store.set_bulk_status(bulk_id, state, only_from=allowed):
        now_status = bulk_json(await _bulk_or_404(gw, bulk_id))["status"]
        raise bad("action", f"bulk call {bulk_id} is {now_status}: cannot {req.action} it", 409)
    if req.action == "resume":
        gw.dispatcher.wake()
    else:       # calls this process claimed ahead of their slots go back (others notice within a second)
        await gw.dispatcher.drop_bulk(bulk_id, cancelled=req.action == "cancel")
    return reply(responses.BulkActed, status="success", message=f"Bulk call {done} successfully",
                                  current_status=state)


async def bulk_action(request: web.Request) -> web.Response:
    return await _act(request, parse(BulkAction, await read_json(request)))


async def cancel_bulk(request: web.Request) -> web.Response:
    return await _act(request, BulkAction(action="cancel", scheduled_at=None, new_scheduled_datetime=None,
                                          new_timezone="UTC"))


def add_routes(app: web.Application, prefix: str) -> None:
    tag, q, b = "calls", f"{prefix}/calls/queue", f"{prefix}/calls/bulk_call"
    api_route(app, "GET", q, list_queue, "The dispatch queue", tag=tag, query=QueueQuery,
              response=responses.QueueList, errors=(400, 401))
    api_route(app, "GET", f"{q}/{{id}}", get_queued, "One queued call", tag=tag, params=IdPath,
              response=responses.QueuedCallReply)
    api_route(app, "DELETE", f"{q}/{{id}}", cancel_queued, "Cancel a call still queued", tag=tag, params=IdPath,
              response=responses.QueueCancelled, errors=(400, 401, 404, 409))
    api_route(app, "POST", f"{b}/create", create_bulk, "Create a bulk call (OmniDimension's createBulkCall)",
              tag=tag, body=BulkCreate, response=responses.BulkCreated, status=201, errors=(400, 401, 404, 409))
    api_route(app, "GET", b, list_bulk, "Bulk calls", tag=tag, query=Page, response=responses.BulkList,
              errors=(400, 401))
    api_route(app, "GET", f"{b}/{{id}}", get_bulk, "One bulk call with its counts", tag=tag, params=IdPath,
              response=responses.BulkReply)
    api_route(app, "PUT", f"{b}/{{id}}", bulk_action, "Pause, resume, cancel or reschedule a bulk call", tag=tag,
              params=IdPath, body=BulkAction, response=responses.BulkActed, errors=(400, 401, 404, 409))
    api_route(app, "DELETE", f"{b}/{{id}}", cancel_bulk, "Cancel a bulk call", tag=tag, params=IdPath,
              response=responses.BulkActed, errors=(400, 401, 404, 409))
