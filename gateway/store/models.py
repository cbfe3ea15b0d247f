"""SQLAlchemy 2 table definitions. Carrier-specific settings live in JSON columns so a new carrier needs no
migration; secrets sit in their own column so no query that feeds the API can return them by accident."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def row_dict(obj: Any, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """A loaded row as a plain dict (datetimes as ISO strings, UTC when the driver returned them naive)."""
    out = {}
    for col in obj.__table__.columns:
        if col.key in exclude:
            continue
        v = getattr(obj, col.key)
        if isinstance(v, datetime):
            v = (v if v.tzinfo else v.replace(tzinfo=UTC)).isoformat()
        out[col.key] = v
    return out


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


#: SQLite reuses the highest rowid after that row is deleted unless the table says AUTOINCREMENT; a reused agent
#: or number id would attribute old call logs and webhooks to the new one. (PostgreSQL sequences never go back.)
#: Databases made before this was set are rebuilt once: gateway/store/upgrade.py.
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


class Agent(Base):
    __tablename__ = "agents"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    engine: Mapped[str | None] = mapped_column(String(500), nullable=True)
    webhook_url: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PhoneNumber(Base):
    __tablename__ = "phone_numbers"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    phone_number: Mapped[str] = mapped_column(String(32), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    sip_trunk_name: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"), nullable=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    secrets: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: the process (`proc`) that REGISTERs this trunk to its carrier: one per cluster (docs/deploy.md,
    #: "Registration-based SIP trunks in a cluster"); None while nobody does
    registered_by: Mapped[str | None] = mapped_column(String(200), nullable=True)


#: PostgreSQL fills a new page of the call log up to this percentage and leaves the rest for updates of its rows: an
#: update whose new version fits on the row's own page and changes no indexed column is HOT (no index entry at all)
CALLS_FILLFACTOR = 80
_OPEN = text("ended_at IS NULL")                      # a call-log row whose call has not ended
_DISPATCHED = text("queue_item_id IS NOT NULL")       # a call placed for a dispatch-queue item


class CallLog(Base):
    __tablename__ = "calls"
    # Every index of this table costs every call: one entry when its row is inserted and one more for each update
    # that is not HOT (an update of an indexed column, or one whose new row version does not fit on its page:
    # PostgreSQL then writes the row again and an entry into every index). A call's answer (`call_status`,
    # `answered_at`) and its end (`call_status`, `ended_at`, …) are updates, so only what a query needs is indexed
    # (BENCHMARKS.md, "What o costs per call now"):
    # - "calls of proc P still open" (every start, every lost process, adoption) and "live calls on number N" (call
    #   set-up on a number with a channel limit, store/channels.py) ask for open rows only: the owner index holds
    #   open rows alone (partial: the end's update adds no entry to it, and it stays as small as the live calls).
    #   The number index keeps ended rows too: number health counts a number's ended calls (store/health.py).
    # - `call_status` is not indexed: the call log's status filter reads the newest rows first and counts like the
    #   unfiltered list does, and without it the answer's update is HOT (with the room `fillfactor` leaves).
    # - `queue_item_id` (recovering dispatch items) is indexed where set: a call that was not dispatched costs none.
    # - nothing asks for `bulk_call_id` alone (the bulk-call filter also matches `call_context`, which no index
    #   serves).
    # The names of the indexes whose definition changed are kept: a database made by an older release keeps its
    # full indexes of those names (they answer the same queries) and the ones no longer declared, since the store
    # only ever adds (`_add_missing_columns`); docs/deploy.md gives the statements that bring one up to this.
    __table_args__ = (Index("ix_calls_owner_ended_at", "owner", postgresql_where=_OPEN, sqlite_where=_OPEN),
                      Index("ix_calls_number_ended_at", "phone_number_id", "ended_at"),
                      Index("ix_calls_queue_item_id", "queue_item_id", postgresql_where=_DISPATCHED,
                            sqlite_where=_DISPATCHED),
                      {**NEVER_REUSE_IDS, "postgresql_with": {"fillfactor": CALLS_FILLFACTOR}})
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_uuid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    carrier_sid: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    agent_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    phone_number_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    channel_type: Mapped[str] = mapped_column(String(32))
    call_direction: Mapped[str] = mapped_column(String(16))
    from_number: Mapped[str | None] = mapped_column(String(64), nullable=True)
    to_number: Mapped[str | None] = mapped_column(String(64), nullable=True)
    call_status: Mapped[str] = mapped_column(String(32), default="queued")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    call_duration_in_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    is_call_transfer: Mapped[bool] = mapped_column(Boolean, default=False)
    transfer_target: Mapped[str | None] = mapped_column(String(64), nullable=True)
    transfer_outcome: Mapped[str | None] = mapped_column(String(64), nullable=True)
    amd_detected: Mapped[bool] = mapped_column(Boolean, default=False)
    amd_answered_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    amd_duration: Mapped[float | None] = mapped_column(Float, nullable=True)
    is_voicemail: Mapped[bool] = mapped_column(Boolean, default=False)
    voicemail_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    is_fax: Mapped[bool] = mapped_column(Boolean, default=False)
    hangup_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    hangup_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    recording_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: recording | stored | failed | upload_failed | expired (gateway/recording/service.py); null: not recorded
    recording_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: where the recording is and what it is: {request, channels, sample_rate, store, path | bucket+key, node, bytes,
    #: duration, error}; `request` is a per-call override given to dispatch
    recording: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    call_context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: the process id (`Settings.proc_id`) holding the call's media; only it changes the live call (docs/deploy.md)
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: conversation timing summary (gateway/turns.py): turns, latency p50/p95/max, barge-ins, clear reaction
    timing: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: the dispatch-queue item this call was placed for (gateway/dispatcher.py): how a restart tells a placed
    #: item from one that never reached a carrier
    queue_item_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: the bulk call it belongs to, and which attempt of its queue item it is (1, then 2… for retries)
    bulk_call_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)


class CallEvent(Base):
    __tablename__ = "call_events"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Node(Base):
    """One gateway process of the cluster: its heartbeat tells the others it still owns its calls."""
    __tablename__ = "nodes"
    proc: Mapped[str] = mapped_column(String(128), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(128))
    public_url: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    sip_uri: Mapped[str | None] = mapped_column(String(300), nullable=True)
    #: the URL that reaches this process and no other (`Gateway.direct_url`): a worker's private HTTP port, read
    #: by its siblings to cover the whole node in /metrics (gateway/metrics_workers.py)
    direct_url: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="running")   # running | draining | stopped | lost
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookOutbox(Base):
    """Lifecycle webhooks not yet delivered (gateway/webhooks.py): a row is written when the webhook is queued and
    deleted when it is delivered, given up or dropped, so a restart delivers what is left, in `id` order per
    call. `owner` is the process id (docs/deploy.md) that queued it. The agent's signing secret is not copied
    here: it is read from the agent when the webhook is sent."""

    __tablename__ = "webhook_outbox"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    call_id: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    agent_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BulkCall(Base):
    """A bulk call (OmniDimension's campaign): a named list of numbers dialled from one phone number through the
    dispatch queue. `status` is what an operator set (in_progress, paused, cancelled); `completed` is derived
    when no item is left to dial (gateway/api/bulk.py)."""

    __tablename__ = "bulk_calls"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    agent_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    phone_number_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="in_progress")
    #: at most this many of its calls live at once (OmniDimension's concurrent_call_limit); None: the number's
    concurrent_call_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: when its first calls may start (its items' `not_before`); None: at once. `timezone`: the IANA zone it was
    #: given in (shown back, OmniDimension's `timezone`)
    scheduled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: retries of calls that were not answered: {max_attempts, delay_seconds, on: [call statuses]}; None: none
    retry: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class QueuedCall(Base):
    """One call waiting in the dispatch queue (gateway/dispatcher.py). `status`: queued → dispatching (claimed by
    process `owner`) → dispatched (placed: `call_log_id` is the call) → completed (answered) | failed (not
    answered, no retry left: `outcome` says how; or never placed: `error`) | queued again for a retry (`attempts`
    so far, `not_before`); or cancelled while queued. Claims are conditional (PostgreSQL: `FOR UPDATE SKIP
    LOCKED`), so one process of a cluster places each item once."""

    __tablename__ = "dispatch_queue"
    __table_args__ = (Index("ix_dispatch_queue_status_number", "status", "from_number_id"), NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bulk_call_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    agent_id: Mapped[int] = mapped_column(Integer)
    from_number_id: Mapped[int] = mapped_column(Integer)
    to_number: Mapped[str] = mapped_column(String(64))
    call_context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: the dispatch's per-call recording override ({enabled, channels}), handed to the call when it is placed
    recording: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: epoch seconds before which it is not tried again (after the gateway or the number was full)
    not_before: Mapped[float] = mapped_column(Float, default=0.0)
    call_log_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(String(300), nullable=True)
    #: the call_status its last call ended with (completed, busy, no-answer, failed…)
    outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DispatchPace(Base):
    """The outbound pace of one number / trunk, shared by every process: the epoch second of its next free slot
    at its `max_cps`. Locked (`FOR UPDATE SKIP LOCKED`) while a process hands out slots."""

    __tablename__ = "dispatch_pace"
    number_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    next_at: Mapped[float] = mapped_column(Float, default=0.0)


class NumberHealth(Base):
    """The latest health record of a number / trunk (gateway/health.py), shared by every process."""

    __tablename__ = "number_health"
    number_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    health_score: Mapped[int] = mapped_column(Integer, default=100)
    health_status: Mapped[str] = mapped_column(String(16), default="unknown")
    health_score_updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
