"""The dispatch queue's worker: places queued calls as their number's channels free up and at its pace.

Every process runs one. Each turn it looks for numbers with queued calls that are due (not waiting out a retry, in
no paused or cancelled bulk call), and for each takes a turn at the number's shared pace row
(gateway/store/dispatchq.py): it gets the slots that start within the next `HORIZON` seconds at the number's
`max_cps` (all at once without one), capped by the number's free channels (live calls and calls being placed, by
any process) and by this process's own room under `max_calls`, and claims that many queued calls for them. Each
claimed call is placed at its slot with the same code as `POST /calls/dispatch` (gateway/outbound.py). A call
refused because the number or the gateway filled up meanwhile goes back to the queue for `RETRY_FULL` seconds;
one the carrier refuses is `failed`, with its call-log row. Calls a dead process had claimed but not placed are
queued again (those it placed, found by their call-log row, are `dispatched`), so a crash neither loses nor
doubles a call.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, Any

from .callmanager import CapacityError
from .carrier import CarrierError
from .channels import Limits
from .outbound import DispatchFailed, place_call
from .sendgate import SendGate

if TYPE_CHECKING:
    from .runtime import Gateway

log = logging.getLogger("gateway.dispatcher")


class Dispatcher:
    #: seconds of slots handed out per turn at a number's pace row (shorter: more database turns per second)
    HORIZON = 0.25
    #: at most this many calls claimed per number per turn
    BATCH = 200
    #: seconds between turns while calls are waiting, and while the queue is empty (an enqueue wakes it at once)
    BUSY_POLL, IDLE_POLL = 0.05, 1.0
    #: seconds a call refused because its number or the gateway was full waits before it is tried again
    RETRY_FULL = 1.0
    DEPTH_EVERY = 2.0

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: claimed here, not yet placed: number id → count; item ids; per number the calls waiting for their start
        #: (slot time, item, number) and the task starting them in order; the placements under way
        self._pending: dict[int, int] = {}
        self._claimed: set[int] = set()
        self._starts: dict[int, collections.deque[tuple[float, dict[str, Any], dict[str, Any]]]] = {}
        self._pacers: dict[int, asyncio.Task[None]] = {}
        #: per number with a max_cps, the gate its calls pass just before the carrier (outlives pacer tasks)
        self._gates: dict[int, SendGate] = {}
        self._placing: set[asyncio.Task[None]] = set()
        self._last_recovery = 0.0
        self.counts = {"dispatched": 0, "failed": 0, "requeued": 0}
        #: calls in the store's queue per status, refreshed at most every DEPTH_EVERY seconds (for /metrics)
        self.depth: dict[str, int] = {}
        self._depth_at = 0.0

    async def start(self) -> None:
        await self._recover(mine=self.gateway.settings.proc_id)   # what this process's previous run left
        self._task = asyncio.create_task(self._run(), name="dispatch-queue")

    async def stop(self) -> None:
        """Stop claiming; calls claimed here but not yet placed go back to the queue for another process (or
        the next start)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        tasks = [*self._pacers.values(), *self._placing]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        claimed, self._claimed = list(self._claimed), set()
        if claimed:     # a call placed just before the cancel has its row: it stays dispatched, never twice
            try:
                await self.gateway.store.recover_items(self.gateway.settings.stale_after, ids=claimed)
            except Exception:
                log.exception("could not give claimed calls back to the queue", extra={"calls": len(claimed)})

    def wake(self) -> None:
        """Calls were queued: take a turn now instead of at the next poll."""
        self._wake.set()

    @property
    def pending(self) -> int:
        return sum(self._pending.values())

    async def _run(self) -> None:
        while True:
            busy = False
            try:
                busy = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatch queue turn failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.BUSY_POLL if busy else self.IDLE_POLL)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _recover(self, mine: str | None = None) -> None:
        placed, requeued = await self.gateway.store.recover_items(self.gateway.settings.stale_after, mine=mine)
        self._last_recovery = time.monotonic()
        if placed or requeued:
            log.warning("dispatch queue: calls of a stopped process recovered",
                        extra={"dispatched": placed, "requeued": requeued})

    async def tick(self) -> bool:
        """One turn over every number with due calls; True when calls are waiting (poll again soon)."""
        gw = self.gateway
        if gw.draining:
            return False
        if time.monotonic() - self._last_recovery > gw.settings.stale_after:
            await self._recover()
        if time.monotonic() - self._depth_at > self.DEPTH_EVERY:
            self.depth = await gw.store.queue_depth()
            self._depth_at = time.monotonic()
        numbers = await gw.store.due_numbers()
        for number_id in numbers:
            room = gw.settings.max_calls - len(gw.calls.active) - self.pending
            if room <= 0:
                break
            await self._turn(number_id, room)
        return bool(numbers)

    async def _turn(self, number_id: int, room: int) -> None:
        gw, store = self.gateway, self.gateway.store
        number = await store.get_number(number_id, with_secrets=True)
        if number is None:
            failed = await store.fail_queued(number_id, "phone number deleted")
            log.warning("queued calls of a deleted number failed", extra={"number_id": number_id, "calls": failed})
            return
        if gw.carrier_for(number["provider"]) is None:
            return      # this process has no carrier for it: a process that has one will place them
        limits = Limits.of(number)
        free = room
        if limits.channels is not None:
            live = (await store.live_calls_by_number(gw.settings.stale_after, [number_id])).get(number_id, 0)
            free = min(free, limits.channels - live - await store.dispatching_on(number_id))
            if free <= 0:
                return
        slots = await store.take_slots(number_id, cps=limits.max_cps, want=min(self.BATCH, free),
                                       horizon=self.HORIZON, me=gw.settings.proc_id, free=free,
                                       catch_up=self.HORIZON)
        if slots is None or not slots.items:
            return
        offset = asyncio.get_running_loop().time() - slots.now      # database clock → this loop's clock
        starts = self._starts.setdefault(number_id, collections.deque())
        for item, at in zip(slots.items, slots.times, strict=True):
            self._pending[number_id] = self._pending.get(number_id, 0) + 1
            self._claimed.add(item["id"])
            starts.append((at + offset, item, number))
        pacer = self._pacers.get(number_id)
        if pacer is None or pacer.done():
            self._pacers[number_id] = asyncio.create_task(self._pace(number_id, limits.max_cps),
                                                          name=f"dispatch-pace-{number_id}")

    async def _pace(self, number_id: int, cps: float | None) -> None:
        """Start the number's claimed calls at their slots, in order; each then waits at the number's send gate
        (gateway/sendgate.py) just before it reaches the carrier."""
        loop = asyncio.get_running_loop()
        starts = self._starts[number_id]
        gate = self._gates.get(number_id)
        if cps and (gate is None or gate.cps != cps):      # first calls of the number, or its max_cps changed
            gate = self._gates[number_id] = SendGate(cps)
        while starts:
            at, item, number = starts.popleft()
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._place(item, number, gate if cps else None),
                                       name=f"queued-call-{item['id']}")
            self._placing.add(task)
            task.add_done_callback(self._placing.discard)

    async def _place(self, item: dict[str, Any], number: dict[str, Any], gate: SendGate | None) -> None:
        store = self.gateway.store
        try:
            status, call_log_id, error = await self._placed(item, number, gate)
            if status == "queued":
                await store.requeue_item(item["id"], time.time() + self.RETRY_FULL, error)
                self.counts["requeued"] += 1
            else:
                store.finish_item(item["id"], status, call_log_id=call_log_id, error=error)
                self.counts[status] += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("queued call could not be placed", extra={"queue_id": item["id"]})
        finally:
            self._claimed.discard(item["id"])
            self._pending[number["id"]] -= 1

    async def _placed(self, item: dict[str, Any], number: dict[str, Any],
                      gate: SendGate | None) -> tuple[str, int | None, str | None]:
        """Place one claimed call: (item status, call-log id, error)."""
        agent = await self.gateway.store.get_agent(item["agent_id"])
        if agent is None:
            return "failed", None, f"agent {item['agent_id']} not found"
        try:
            call = await place_call(self.gateway, number=number, agent=agent, to_number=item["to_number"],
                                    call_context=item.get("call_context") or {}, queue_item_id=item["id"],
                                    recording=item.get("recording"), before_send=gate.wait if gate else None)
        except CapacityError as e:     # the number's channels or the gateway filled up since the claim
            return "queued", None, str(e)
        except DispatchFailed as e:
            return "failed", e.call.log_id, e.error.message if e.error else "dispatch_error"
        except CarrierError as e:
            return "failed", None, e.message
        return "dispatched", call.log_id, None
