"""What the API answers, as pydantic models: every handler builds its answer from one of these (`routes.ok()`), and
the OpenAPI document shows their schemas, so a field added to an answer without its model fails at once (the
envelopes refuse unknown fields) instead of going undocumented.

Rows read from the store (agent, phone number, call log, live call) keep fields the model does not name (a new
store column reaches clients at once); the envelopes around them name every field.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..statuses import CALL_STATUSES


class Reply(BaseModel):
    """A successful answer: `success: true` and exactly the fields its model names."""
    model_config = ConfigDict(extra="forbid")
    success: Literal[True] = True


class Row(BaseModel):
    """A record from the store: the fields named are typed; further columns pass through."""
    model_config = ConfigDict(extra="allow")


class ErrorBody(BaseModel):
    """Every error (4xx/5xx): `field` names the input at fault (dotted, e.g. `settings.transfer.number`)."""
    model_config = ConfigDict(extra="allow")
    success: Literal[False] = False
    error: str
    field: str | None = None


class Paged(Reply):
    total: int
    pageno: int
    pagesize: int


# -- phone numbers -----------------------------------------------------------------------------------------------
class PhoneNumber(Row):
    """A phone number / trunk; the trunk and Exotel settings also appear flat beside `config` (`sip_host`,
    `exotel_*`…), as OmniDimension clients read them."""
    id: int
    phone_number: str
    provider: str
    name: str | None
    sip_trunk_name: str | None
    agent_id: int | None
    status: dict[str, Any]
    config: dict[str, Any] = Field(description="carrier settings; secret fields show \"****\" when set")
    created_at: str | None
    number_provider: str
    active_bot_id: int | Literal[False] = Field(description="the attached agent, false when none")


class HealthCheck(Reply):
    """A number's health record (gateway/health.py): OmniDimension's three fields and ours under `health`."""
    phone_number_id: int
    health_score: float | None
    health_status: str
    health_score_updated_at: Any = Field(description="when the score was computed (ISO 8601), null before")
    health: dict[str, Any] | None


class PhoneNumberReply(Reply):
    phone_number: PhoneNumber


class Imported(PhoneNumberReply):
    message: str
    id: int


class Attached(PhoneNumberReply):
    phone_number_id: int
    message: str


class PhoneNumberList(Paged):
    total_records: int
    phone_numbers: list[PhoneNumber]


class TestReport(Reply):
    provider: str
    phone_number_id: int | None = Field(None, description="when an imported number was tested")
    report: dict[str, Any] = Field(description="the carrier's verdict per step")


class Deleted(Reply):
    deleted: int


# -- agents ------------------------------------------------------------------------------------------------------
class Agent(Row):
    id: int
    name: str
    engine: str | None = Field(description="a password in a ws(s):// URL shows as \"****\"")
    webhook_url: str | None
    settings: dict[str, Any] = Field(description="as in AgentInput; settings.webhook.secret shows as \"****\"")
    created_at: str | None


class AgentReply(Reply):
    agent: Agent


class AgentList(Paged):
    agents: list[Agent]


# -- calls -------------------------------------------------------------------------------------------------------
class Dispatched(Reply):
    status: Literal["dispatched"]
    requestId: int = Field(description="the call log id")
    call_id: str


class Queued(Reply):
    status: Literal["queued"]
    queue_id: int = Field(description="the dispatch queue item (GET /calls/queue/{id})")


class QueuedCall(Row):
    """An item of the dispatch queue (gateway/store/dispatchq.py)."""
    id: int
    status: str
    to_number: str


class QueueList(Paged):
    total_records: int
    queue: list[QueuedCall]


class QueuedCallReply(Reply):
    queued_call: QueuedCall


class QueueCancelled(Reply):
    id: int
    status: Literal["cancelled"]


class BulkCall(Row):
    """A bulk call with OmniDimension's names beside ours (`bot_id`, `total_calls`, `completed_calls`…)."""
    id: int
    name: str
    status: str = Field(description="scheduled (its start is ahead), in_progress, paused, cancelled, or "
                                    "completed once nothing is left to dial")
    bot_id: int | None
    total_calls: int
    counts: dict[str, int] = Field(description="contacts per progress state: queued, dialing, retrying, "
                                               "completed (answered), failed (not answered after its attempts, "
                                               "or never placed), cancelled")
    outcomes: dict[str, int] = Field(description="done contacts per call_status of their last call")
    completed_calls: int = Field(description="contacts done, whatever the outcome (OmniDimension)")
    pending_calls: int
    failed_calls: int
    is_scheduled: bool
    scheduled_at: str | None = Field(description="when its calls start (ISO 8601, UTC)")
    scheduled_datetime: str | None = Field(description="the same in `timezone`, YYYY-MM-DD HH:MM:SS")
    timezone: str
    retry: dict[str, Any] | None = Field(description="{max_attempts, delay_seconds, on}; null: no retries")


class BulkCreated(Reply):
    status: Literal["success"]
    message: str
    bulk_call_id: int
    id: int
    total_contacts: int
    queue_ids: list[int]
    is_scheduled: bool
    current_status: Literal["scheduled", "in_progress"]


class BulkList(Paged):
    status: Literal["success"]
    total_records: int
    bulk_calls: list[BulkCall]


class BulkReply(Reply):
    status: Literal["success"]
    details: BulkCall


class BulkActed(Reply):
    status: Literal["success"]
    message: str
    current_status: str
    scheduled_datetime: str | None = Field(None, description="reschedule: the new start in `timezone`")
    timezone: str | None = None


class CallLog(Row):
    """A call-log row with the seed (OmniDimension) API's fields beside ours (docs/omnidimension-compat.md)."""
    id: int
    call_log_id: int
    call_uuid: str
    call_direction: str
    channel_type: str
    from_number: str | None
    to_number: str | None
    call_status: str = Field(description="one of " + ", ".join(CALL_STATUSES) + " (a row from an older version "
                                         "may hold another word: it is shown as stored)")
    created_at: str | None
    time_of_call: str = Field(description="MM/DD/YYYY HH:MM:SS, UTC")
    call_duration: str = Field(description="M:SS")
    call_duration_in_seconds: int
    call_duration_in_minutes: float
    is_call_transfer: bool
    amd_detected: bool
    amd_answered_by: str | None
    amd_duration: float | None
    is_voicemail: bool
    voicemail_type: str | None
    is_fax: bool
    hangup_source: str | None
    hangup_reason: str | None
    recording_url: str | Literal[False] = Field(description="false when there is none")
    timing: dict[str, Any] | None = Field(description="conversation timing summary (gateway/turns.py)")
    recording_status: str | None = Field(None, description="when the call was recorded (docs/recording.md)")
    recording: dict[str, Any] | None = Field(None, description="what was recorded and where (no local paths)")
    bulk_call_id: int | None = Field(None, description="the bulk call it was placed for")
    attempt: int | None = Field(None, description="a queued call's attempt: 1, then 2… when retried")


class CallLogList(Paged):
    total_records: int
    call_log_data: list[CallLog]


class CallEvent(BaseModel):
    at: str | None
    event: str
    data: dict[str, Any]


class CallLogReply(Reply):
    call_log: CallLog
    call_log_data: list[CallLog] = Field(description="the same log as a one-item list (OmniDimension's shape)")
    total_records: int
    events: list[CallEvent]


class LiveCall(Row):
    call_id: str
    id: int
    carrier: str | None
    direction: str | None
    from_number: str | None
    to_number: str | None
    agent_id: int | None
    status: str
    owner: str | None = Field(description="the process holding the call's media")
    node: str | None


class LiveCalls(Reply):
    count: int
    calls: list[LiveCall]


class CallOpReply(Reply):
    """The answer of a control action on a live call (hangup, transfer…)."""
    status: str = Field(description="e.g. hangup_requested, transfer_requested; closed when the call's process "
                                    "was gone and the call was closed on its behalf")
    call_id: str
    requestId: int = Field(description="the call log id")
    hangup_reason: str | None = Field(None, description="set when status is closed (node_lost)")


class TransferReply(CallOpReply):
    number: str = Field(description="the number the call is being transferred to")


class HoldState(CallOpReply):
    """hold / unhold / mute / unmute: the call's state after the action (docs/hold.md)."""
    held: bool = Field(description="the gateway holds the call (music on hold)")
    remote_held: bool = Field(description="the far end holds the call")
    muted: bool = Field(description="the caller's audio does not reach the engine")


class ConsultReply(CallOpReply):
    """Attended transfer steps (gateway/consult.py)."""
    number: str | None = Field(description="the consultation's target")
    method: str | None = Field(None, description="how caller and target were joined (refer_replaces, bridge, "
                                                 "conference), once completed")


# -- nodes, health, this document --------------------------------------------------------------------------------
class Draining(Reply):
    proc: str
    state: Literal["draining"]
    live_calls: int | None = Field(None, description="calls still live on that process")
    workers: int | None = Field(None, description="worker processes of the node (a whole-node drain)")
    processes: list[str] | None = Field(None, description="the processes asked to drain")


class Health(Row):
    status: Literal["ok", "draining", "starting"]
    http_port: int
    carriers: list[str]
    active_calls: int
    proc: str
    node: str
    waiting_for: list[str] = Field(default_factory=list, description="while `starting`: what is not up yet "
                                   "(sip, rtp, control_bus, carriers)")
    store: Literal["ok", "degraded"] = Field("ok", description="`degraded` while call-log writes are held for a "
                                             "database that is away and being retried (docs/operations.md)")


class OpenApiDocument(Row):
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]
