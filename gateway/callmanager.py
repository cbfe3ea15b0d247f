"""All live calls of this process: creation (with its call-log row), lookup by id or carrier sid, capacity."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .call import Call, new_call_uuid
from .channels import CHANNEL_RETRY_AFTER, Limits
from .cluster import Reply
from .frames import HangupSource
from .store.durable import StoreUnavailableError, is_transient, reason

if TYPE_CHECKING:
    from .engine import EngineRegistry
    from .runtime import Gateway
    from .store import Store

log = logging.getLogger("gateway.calls")


#: hangup reasons that mean the voice engine failed the call (counted in gateway_engine_failures_total)
ENGINE_FAILURES = ("engine_error", "engine_unavailable", "engine_unreachable")


class CapacityError(RuntimeError):
    """The gateway is at `max_calls`; carriers answer busy (SIP 503 + Retry-After, TwiML reject…)."""

    #: what SIP answers an INVITE refused for this reason, and the Retry-After it gives (seconds)
    sip_status, sip_reason, retry_after = 503, "Service Unavailable", 5


class DrainingError(CapacityError):
    """The gateway is draining (docs/deploy.md): every carrier refuses new calls exactly as when it is full."""


class ChannelLimitError(CapacityError):
    """The call's phone number has as many live calls as its `channels` allow (gateway/channels.py): carriers
    refuse it as busy (SIP 486), `POST /calls/dispatch` answers 429."""

    sip_status, sip_reason, retry_after = 486, "Busy Here", CHANNEL_RETRY_AFTER

    def __init__(self, number: dict[str, Any], limit: int) -> None:
        super().__init__(f"phone number {number.get('phone_number')} has all its {limit} channels in use")
        self.number_id = number.get("id")
        self.limit = limit


class CallLogUnavailableError(CapacityError):
    """The call's call-log row could not be written: the database is away (a restart, a failover) and stayed away
    past the insert lane's short retries. No call runs without its row, so carriers refuse it as unavailable (SIP
    503 + Retry-After; the `--workers` proxy and Kamailio try elsewhere), never leave it hanging."""

    retry_after = 5

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause) if isinstance(cause, StoreUnavailableError)
                         else f"the call log is unavailable ({reason(cause)})")


class CallManager:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.active: dict[str, Call] = {}
        self._by_sid: dict[str, Call] = {}
        self.totals = {"calls": 0, "frames_in": 0, "frames_out": 0, "dropped_in": 0}
        self._listeners: list[Any] = []
        self.metrics = gateway.metrics
        self.timing = gateway.metrics.timing
        self._idle = asyncio.Event()      # set while no call is live and no stream relayed: what a drain waits for
        self._idle.set()
        #: media sockets this process carries to the process that owns their call (an attended transfer's target
        #: stream that reached the wrong worker: carriers/streamrelay.py). Not calls of this process, but the call
        #: needs them: a drain waits for them as for its own calls (`relaying`)
        self.relays = 0
        self._releases: set[asyncio.Task[None]] = set()    # adoptions telling the old owner (CallManager.adopt)

    @property
    def store(self) -> Store:
        return self.gateway.store

    @property
    def engines(self) -> EngineRegistry:
        return self.gateway.engines

    @property
    def at_capacity(self) -> bool:
        """No new call fits: `max_calls` reached, or the gateway is draining."""
        return self.gateway.draining or len(self.active) >= self.gateway.settings.max_calls

    def refuse_if_full(self, carrier: str) -> None:
        """Raise DrainingError / CapacityError when no new call of `carrier` fits (counted as a refusal)."""
        if self.gateway.draining:
            self.metrics.refused.labels(carrier, "draining").inc()
            raise DrainingError("gateway draining: new calls go to other workers or nodes")
        if self.at_capacity:
            self.metrics.refused.labels(carrier, "capacity").inc()
            raise CapacityError(f"gateway at capacity ({self.gateway.settings.max_calls} calls)")

    def _maybe_idle(self) -> None:
        if not self.active and not self.relays:
            self._idle.set()

    @contextlib.contextmanager
    def relaying(self) -> Iterator[None]:
        """While a media socket is relayed to its call's owner: a drain of this process waits for it to end (up to
        the drain timeout) instead of exiting under a live consultation (the target's stream would be cut)."""
        self.relays += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.relays -= 1
            self._maybe_idle()

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no call is live and no stream relayed (or `timeout` seconds); True when idle."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def create(self, *, carrier: str, direction: str, from_number: str, to_number: str,
                     number: dict[str, Any] | None = None, agent: dict[str, Any] | None = None,
                     carrier_sid: str | None = None, call_context: dict[str, Any] | None = None,
                     metadata: dict[str, Any] | None = None, status: str = "ringing",
                     queue_item_id: int | None = None, bulk_call_id: int | None = None, attempt: int | None = None,
                     recording: dict[str, Any] | None = None) -> Call:
        """Open a call-log row and a live Call; raises CapacityError when full (DrainingError when draining,
        ChannelLimitError when the number's channels are all in use). `recording`: a per-call override of the
        agent's recording settings ({enabled, channels})."""
        self.refuse_if_full(carrier)
        if agent is None and number is not None and number.get("agent_id"):
            agent = await self.store.get_agent(number["agent_id"])
        fields = {
            "call_uuid": new_call_uuid(), "carrier_sid": carrier_sid,
            "agent_id": (agent or {}).get("id"), "phone_number_id": (number or {}).get("id"),
            "channel_type": carrier, "call_direction": direction, "from_number": from_number,
            "to_number": to_number, "call_status": status, "call_context": call_context or {},
            "owner": self.gateway.settings.proc_id, "queue_item_id": queue_item_id, "bulk_call_id": bulk_call_id,
            "attempt": attempt,
            "recording": {"request": recording} if recording else None,
        }
        row = await self._open_row(fields, number, carrier, direction)
        call = Call(self, row, carrier=carrier, direction=direction, from_number=from_number, to_number=to_number,
                    agent=agent, number=number, metadata={**(metadata or {}), **({"call_context": call_context}
                                                                                 if call_context else {})})
        self.active[call.id] = call
        self._idle.clear()
        if carrier_sid:
            self._by_sid[carrier_sid] = call
        self.totals["calls"] += 1
        self.metrics.child(self.metrics.calls, carrier, direction).inc()
        self.gateway.tracing.call_created(call, self.gateway.settings.proc_id)
        await call.emit("phone_call:connection_requested")
        self._notify("call_started", call)
        return call

    async def _open_row(self, fields: dict[str, Any], number: dict[str, Any] | None, carrier: str,
                        direction: str) -> dict[str, Any]:
        """The new call's call-log row, inserted within its number's channel limit when it has one. A database
        that is away refuses the call (`CallLogUnavailableError`), counted like the gateway's other refusals."""
        channels = Limits.of(number).channels
        try:
            if channels is None or number is None or not number.get("id"):
                return await self.store.create_call(fields)
            limited = await self.store.create_call_within(fields, number["id"], channels,
                                                          self.gateway.settings.stale_after)
        except Exception as e:
            if not isinstance(e, StoreUnavailableError) and not is_transient(e):
                raise
            self.metrics.refused.labels(carrier, "call_log").inc()
            raise CallLogUnavailableError(e) from e
        if limited is None:
            self.metrics.refused.labels(carrier, "channels").inc()
            error = ChannelLimitError(number, channels)
            if direction == "inbound":
                await self._log_refusal(fields, error)
            raise error
        return limited

    async def _log_refusal(self, fields: dict[str, Any], error: ChannelLimitError) -> None:
        """An inbound call refused because its number's channels are all in use still gets its call-log row,
        closed at once: `rejected`, hangup_source system, hangup_reason `channel_limit` (the limit in `extra`), so
        the operator sees who was turned away and why. No webhooks: no call ever started. (Outbound refusals are
        answered to the client instead: a 429, or the queue tries again.)"""
        try:
            await self.store.create_call({**fields, "owner": None, "call_status": "rejected",
                                          "ended_at": datetime.now(UTC), "call_duration_in_seconds": 0.0,
                                          "hangup_source": HangupSource.SYSTEM.value, "hangup_reason": "channel_limit",
                                          "extra": {"channel_limit": error.limit, "refused": str(error)}})
        except Exception:
            log.exception("refused call not logged", extra={"carrier": fields.get("channel_type")})

    # -- ownership moves (docs/deploy.md, "Ownership of a call") -------------------------------------------------
    async def adopt(self, row: dict[str, Any]) -> Call | None:
        """A media stream arrived here for a call another process answered: take its call-log row over (conditional
        update of `owner`), build the live call from the row (agent, number, call context) and tell the old owner
        it is `released`. The carrier has found the row and checked the stream's credentials against it. None
        when the call is over or another process took it first.

        The media does not wait for the old owner: the conditional update alone decides who owns the call, so the
        call is returned (and attached by the carrier) at once, while `released` goes out in the background. Only
        this call's webhooks wait for its answer (the number of sequence numbers the old owner used), so they go
        on from there in order (docs/deploy.md)."""
        me = self.gateway.settings.proc_id
        if row["ended_at"] is not None or row["owner"] == me:
            return None
        old = row["owner"]
        if not await self.store.claim_call(row["id"], old, me, flush=False):   # another process's row
            return None
        agent = await self.store.get_agent(row["agent_id"]) if row.get("agent_id") else None
        number = await self.store.get_number(row["phone_number_id"]) if row.get("phone_number_id") else None
        ctx = row.get("call_context") or {}
        carrier = row["channel_type"]
        call = Call(self, {**row, "owner": me}, carrier=carrier, direction=row["call_direction"],
                    from_number=row.get("from_number") or "", to_number=row.get("to_number") or "", agent=agent,
                    number=number, metadata={"call_context": ctx} if ctx else None)
        age = (datetime.now(UTC) - datetime.fromisoformat(row["created_at"])).total_seconds()
        call.created = time.monotonic() - max(0.0, age)
        self.gateway.webhooks.hold(call)
        task = asyncio.create_task(self._take_over(call, old), name=f"release-{call.id}")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
        self.active[call.id] = call
        self._idle.clear()
        if call.carrier_sid:
            self._by_sid[call.carrier_sid] = call
        log.info("call adopted", extra={"call_id": call.id, "carrier": carrier, "from_owner": old})
        self._notify("call_started", call)
        return call

    async def _take_over(self, call: Call, old: str | None) -> None:
        """Tell the old owner its call is `released`; its answer says how many webhook sequence numbers it used,
        and the events this process held meanwhile go out numbered from there. An old owner that does not answer
        (gone, or a version without the count): the stored events of the call, less those held here, count."""
        sent: Any = None
        try:
            reply = await self.gateway.control.request(old, "released", {"call": call.id}) if old else None
            if old and reply is None:
                log.warning("previous owner did not confirm the release", extra={"call_id": call.id, "owner": old})
            sent = reply.body.get("sent") if reply is not None and reply.ok else None
            if not isinstance(sent, int):
                sent = await self.store.count_call_events(call.log_id) - self.gateway.webhooks.held(call.id)
        except Exception:
            log.exception("adopted call: the release was not confirmed", extra={"call_id": call.id})
        finally:
            self.gateway.webhooks.resume_sequence(call, sent if isinstance(sent, int) else 0)

    async def _on_released(self, msg: dict[str, Any]) -> Reply:
        """Control op `released`: another process adopted this call and holds its media now. Forget it here
        without ending it (no call-log update, no webhook); carriers drop their per-call state on
        `call_released`. The answer says how many webhook sequence numbers this process used for the call, so
        the adopter's go on from there; it is immediate (nothing to wait for)."""
        call_id = str(msg.get("call") or "")
        call = self.active.get(call_id)
        if call is not None:
            self._let_go(call)
        sent = {"sent": self.gateway.webhooks.sequence(call_id)} if call is not None else {}
        return Reply(200, {"success": True, "released": call is not None, **sent})

    def _let_go(self, call: Call) -> None:
        """Forget a call another process holds now, without ending it (no call-log update, no webhook, nothing
        sent to the carrier); carriers drop their per-call state on `call_released`."""
        if self.active.get(call.id) is not call:
            return
        call.moved = True
        call.ended.set()            # nothing here acts on it any more (watchdogs, API, engine)
        self.active.pop(call.id, None)
        self._maybe_idle()
        if call.carrier_sid and self._by_sid.get(call.carrier_sid) is call:
            self._by_sid.pop(call.carrier_sid, None)
        log.info("call released to another process", extra={"call_id": call.id})
        self._notify("call_released", call)

    async def moved_away(self, call: Call) -> bool:
        """Before an API op on a call listed here: has another process adopted it? Only a call whose media is not
        here yet can have moved (its stream reached another worker), so only such a call of a carrier whose
        calls move costs a read of its row, in a cluster. A call found moved is let go here (as on `released`,
        which may still be on its way), and the op follows the row to the new owner."""
        if call.moved:
            return True
        carrier = self.gateway.carriers.get(call.carrier)
        if call.bus is not None or not self.gateway.control.clustered or carrier is None or not carrier.calls_move:
            return False
        row = await self.store.find_call(call_uuid=call.id, flush=False)
        if row is None or row.get("owner") in (None, self.gateway.settings.proc_id):
            return False
        self._let_go(call)
        return True

    async def owns(self, call: Call, source: str, reason: str) -> bool:
        """May this process end `call` (hang it up at the carrier, close its row, send its closing webhooks)? The
        store decides, not this process's memory: a call whose media can reach another process (`calls_move`)
        may have been adopted a moment ago, and the adopter's `released` is a NOTIFY still on its way (or lost:
        NOTIFY is not durable). So the end is claimed in the row first (`Store.claim_end`, conditional on
        `owner`); when the call moved, it is let go here as on `released` and False is returned. One claim per
        call; single processes (SQLite) and carriers whose calls never move skip it."""
        if call.end_claimed:
            return True
        carrier = self.gateway.carriers.get(call.carrier)
        if not self.gateway.control.clustered or carrier is None or not carrier.calls_move:
            return True
        try:
            mine = await self.store.claim_end(call.log_id, self.gateway.settings.proc_id, source, reason[:200])
        except Exception:
            # the database is unreachable: end the call as before rather than leave it up for good
            log.exception("ownership not checked before ending the call", extra={"call_id": call.id})
            mine = True
        if mine:
            call.end_claimed = True
            return True
        log.warning("call not ended here: another process owns it now", extra={"call_id": call.id,
                                                                               "reason": reason})
        self._let_go(call)
        return False

    def register_control(self) -> None:
        self.gateway.control.handle("released", self._on_released)

    async def forward_to_owner(self, call_uuid: str, op: str, args: dict[str, Any],
                               row: dict[str, Any] | None = None) -> Reply | None:
        """A carrier webhook (already authenticated here) about a call this process does not hold: run control op
        `op` on the process that owns it and return its reply. The owner's handler answers 404 with `moved` when
        the call left it meanwhile (adoption): the row is then read once more and the op follows the call. None
        when the call is not open, has no live owner other than this process, or the owner did not answer. `row`:
        the call's row when the caller has just read it (the first attempt does not read it again)."""
        if not call_uuid:
            return None
        me = self.gateway.settings.proc_id
        for attempt in range(2):
            if attempt or row is None:
                row = await self.store.find_call(call_uuid=call_uuid)
            owner = row.get("owner") if row is not None and row.get("ended_at") is None else None
            if not owner or owner == me or not await self.gateway.membership.alive(owner):
                return None
            reply = await self.gateway.control.request(owner, op, {**args, "call": call_uuid})
            if reply is None or not (reply.status == 404 and reply.body.get("moved")):
                return reply
        return None

    def not_here(self, call_uuid: str) -> Reply:
        """What a forwarded op answers when this process no longer holds the call (forward_to_owner follows it)."""
        return Reply(404, {"success": False, "error": f"call {call_uuid} is not live on "
                                                      f"{self.gateway.settings.proc_id}", "field": None,
                           "moved": True})

    def get(self, call_id: str) -> Call | None:
        return self.active.get(call_id)

    def get_by_log_id(self, log_id: int) -> Call | None:
        return next((c for c in self.active.values() if c.log_id == log_id), None)

    def find_by_sid(self, sid: str) -> Call | None:
        return self._by_sid.get(sid)

    def index_sid(self, call: Call, sid: str, old: str | None = None) -> None:
        """Find `call` by `sid` from now on; a sid it had before is forgotten (else it stayed for ever)."""
        if old and old != sid and self._by_sid.get(old) is call:
            del self._by_sid[old]
        self._by_sid[sid] = call

    async def emit(self, call: Call, event: str, data: dict[str, Any]) -> None:
        try:
            await self.store.add_call_event(call.log_id, event, data)
        except Exception:
            call.log.exception("call event not stored", extra={"event": event})
        self.gateway.webhooks.emit(call, event, data)
        self._notify("call_updated", call)

    def observe_timing(self, timing: dict[str, Any]) -> None:
        """An answered call ended: its turns join the /metrics histograms."""
        self.timing.observe(timing)

    async def finished(self, call: Call) -> None:
        self.active.pop(call.id, None)
        self._maybe_idle()
        if call.carrier_sid:
            self._by_sid.pop(call.carrier_sid, None)
        if call.bus is not None:
            c = call.bus.counters
            self.totals["frames_in"] += c.frames_in
            self.totals["frames_out"] += c.frames_out
            self.totals["dropped_in"] += c.dropped_in
        source = call.hangup.source.value if call.hangup is not None else "unknown"
        self.metrics.child(self.metrics.calls_ended, call.carrier, call.direction, call.status, source).inc()
        reason = call.hangup.reason if call.hangup is not None else ""
        if reason in ENGINE_FAILURES:
            self.metrics.engine_failures.labels(reason).inc()
        if ((call.agent or {}).get("webhook_url") or "").strip():  # reading the row back costs a flush
            row = await self.store.get_call(call.log_id)
            self.gateway.webhooks.emit(call, "post_call", {"call_log": row})
        self._notify("call_ended", call)

    async def hangup_all(self, reason: str = "shutdown") -> None:
        """Hang up every live call (drain timeout, stop); one call that fails to hang up does not keep the others
        up, nor the drain or stop waiting on it from finishing."""
        for call in list(self.active.values()):
            try:
                await call.request_hangup(HangupSource.SYSTEM, reason, immediate=True)
            except Exception:
                log.exception("hangup failed", extra={"call_id": call.id, "reason": reason})

    # -- observers (live calls page) ----------------------------------------------------------------------------
    def subscribe(self, listener: Any) -> None:
        """`listener(kind, call)` is called synchronously on call_started / call_updated / call_ended, and
        call_released when another process adopted the call (it goes on there: nothing to end here)."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Any) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self, kind: str, call: Call) -> None:
        for listener in list(self._listeners):
            try:
                listener(kind, call)
            except Exception:
                log.exception("call listener failed")
