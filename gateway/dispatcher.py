"""The dispatch queue's worker: places queued calls as their number's channels free up and at its pace.

Every process runs one. It keeps, per number with due calls (not waiting out a retry or a scheduled start, in no
paused or cancelled bulk call), the calls it claimed for the next `LOOKAHEAD` seconds: when what it holds covers
less than `REFILL` seconds it takes a turn at the number's shared pace row (gateway/store/dispatchq.py) for the
slots up to `LOOKAHEAD` ahead at the number's `max_cps` (all at once without one), capped by the number's free
channels (live calls and calls being placed, by any process) and by this process's own room under `max_calls`,
and claims that many queued calls for them — one database turn per second or so per number, never one per call
(the agents of a turn's calls are read once per turn too), so the queue feeding the pace never runs dry while
the database is slow for a moment. Each claimed call is opened at its slot (its call-log row written) and then
passes the number's send gate (gateway/sendgate.py), which lets it reach the carrier at once while the process is
less than the gate's burst allowance behind the number's timeline and holds the pace otherwise. Placing uses the
same code as `POST /calls/dispatch` (gateway/outbound.py). A call refused because the number or the gateway
filled up meanwhile goes back to the queue for `RETRY_FULL` seconds (no attempt used). A placed call — one the
carrier refused outright included: its call-log row is ended and failed — is `dispatched`; once its call ended,
`settle` makes it completed (answered), failed, or queued again when its bulk call retries that outcome
(gateway/retries.py). Calls a dead process had claimed but not placed are queued again (those it placed, found
by their call-log row, are `dispatched`), so a crash neither loses nor doubles a call. A bulk call paused or
cancelled gives back the calls claimed for it and not started yet, in every process within `DISCOVER` seconds.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import time
from dataclasses import dataclass
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
    #: seconds of slots claimed ahead per number, and how little of them may be left before the next claim
    LOOKAHEAD, REFILL = 2.0, 1.0
    #: at most this many calls claimed per number per turn without a max_cps (with one: LOOKAHEAD of its slots)
    BATCH = 200
    #: seconds between turns while calls are waiting, and while the queue is empty (an enqueue wakes it at once)
    BUSY_POLL, IDLE_POLL = 0.05, 1.0
    #: seconds between looks for numbers with due calls while some are being placed (a wake looks at once)
    DISCOVER = 0.5
    #: seconds a call refused because its number or the gateway was full waits before it is tried again
    RETRY_FULL = 1.0
    #: seconds between settling placed calls whose call ended (sooner after a call of this process ended)
    SETTLE_EVERY, SETTLE_SOON = 5.0, 0.3
    #: seconds a stop waits for the calls being placed to reach their carrier
    STOP_WAIT = 5.0
    DEPTH_EVERY = 2.0

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: claimed here, not yet placed: number id → count; item ids; per number the calls waiting for their slot
        #: (on the loop's clock, with item, number, agent) and the task starting them in order; placements under way
        self._pending: dict[int, int] = {}
        self._claimed: set[int] = set()
        self._starts: dict[int, collections.deque[Start]] = {}
        self._pacers: dict[int, asyncio.Task[None]] = {}
        #: per number with a max_cps, the gate its calls pass just before the carrier (outlives pacer tasks)
        self._gates: dict[int, SendGate] = {}
        self._placing: set[asyncio.Task[None]] = set()
        #: numbers with due calls (found by the last look), and when to look again
        self._active: set[int] = set()
        self._discover_at = 0.0
        self._last_recovery = 0.0
        #: a call ended here since the last settle; when that was
        self._ended = False
        self._settled_at = 0.0
        self.counts = {"dispatched": 0, "failed": 0, "requeued": 0}
        #: queued calls settled by this process: answered, given up, queued again for a retry
        self.settled = {"completed": 0, "failed": 0, "retry": 0}
        #: calls in the store's queue per status, refreshed at most every DEPTH_EVERY seconds (for /metrics)
        self.depth: dict[str, int] = {}
        self._depth_at = 0.0

    async def start(self) -> None:
        await self._recover(mine=self.gateway.settings.proc_id)   # what this process's previous run left
        self.gateway.calls.subscribe(self._on_call)
        self._task = asyncio.create_task(self._run(), name="dispatch-queue")

    def _on_call(self, kind: str, call: Any) -> None:
        if kind == "call_ended":
            self._ended = True

    async def stop(self) -> None:
        """Stop claiming; calls claimed here but not yet started go back to the queue for another process (or
        the next start). Calls being placed are given `STOP_WAIT` seconds to reach their carrier first: one
        stopped between its call-log row and its carrier would count as placed and never be dialled."""
        self.gateway.calls.unsubscribe(self._on_call)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        pacers = list(self._pacers.values())
        for task in pacers:
            task.cancel()
        await asyncio.gather(*pacers, return_exceptions=True)
        if self._placing:
            await asyncio.wait(list(self._placing), timeout=self.STOP_WAIT)
        placing = list(self._placing)
        for task in placing:
            task.cancel()
        await asyncio.gather(*placing, return_exceptions=True)
        self._starts.clear()
        self._pending.clear()
        claimed, self._claimed = list(self._claimed), set()
        if claimed:     # a call placed just before the cancel has its row: it stays dispatched, never twice
            try:
                await self.gateway.store.recover_items(self.gateway.settings.stale_after, ids=claimed)
            except Exception:
                log.exception("could not give claimed calls back to the queue", extra={"calls": len(claimed)})

    def wake(self) -> None:
        """Calls were queued (or a bulk call resumed): look for due calls now instead of at the next poll."""
        self._discover_at = 0.0
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
        """One turn over the numbers with due calls; True when calls are waiting (poll again soon)."""
        gw = self.gateway
        if gw.draining:
            return False
        if time.monotonic() - self._last_recovery > gw.settings.stale_after:
            await self._recover()
        if time.monotonic() - self._depth_at > self.DEPTH_EVERY:
            self.depth = await gw.store.queue_depth()
            self._depth_at = time.monotonic()
        await self._settle()
        loop = asyncio.get_running_loop()
        if loop.time() >= self._discover_at or not self._active:
            self._active.update(await gw.store.due_numbers())
            self._discover_at = loop.time() + self.DISCOVER
            bulks = sorted({s.item["bulk_call_id"] for starts in self._starts.values() for s in starts
                            if s.item.get("bulk_call_id") is not None})
            for bulk_id, status in (await gw.store.stopped_bulks(bulks)).items():
                await self.drop_bulk(bulk_id, cancelled=status == "cancelled")
        for number_id in sorted(self._active):
            room = gw.settings.max_calls - len(gw.calls.active) - self.pending
            if room <= 0:
                break
            starts = self._starts.get(number_id)
            if starts and starts[-1].at - loop.time() >= self.REFILL:
                continue            # what is claimed here covers the next second: no database turn needed
            if not await self._turn(number_id, room) and not starts:
                self._active.discard(number_id)     # nothing due on it now: the next look finds it again
        return bool(self._active)

    async def _settle(self) -> None:
        """Settle queued calls whose call ended (gateway/retries.py): soon after a call of this process ended,
        and every SETTLE_EVERY seconds for the calls of other or crashed processes."""
        since = time.monotonic() - self._settled_at
        if not (self._ended and since >= self.SETTLE_SOON) and since < self.SETTLE_EVERY:
            return
        if self._ended:
            await self.gateway.store.flush()        # the ends are written behind: settle what just ended too
        self._ended = False
        self._settled_at = time.monotonic()
        done = await self.gateway.store.settle_items()
        for fate, n in done.items():
            self.settled[fate] += n
        if done["retry"]:
            self.wake()

    async def drop_bulk(self, bulk_id: int, *, cancelled: bool) -> None:
        """A bulk call was paused or cancelled: its calls claimed here and not started yet go back to the queue
        (cancelled, when it was)."""
        dropped: list[int] = []
        for number_id, starts in self._starts.items():
            keep = [s for s in starts if s.item.get("bulk_call_id") != bulk_id]
            gone = [s.item["id"] for s in starts if s.item.get("bulk_call_id") == bulk_id]
            if gone:
                starts.clear()
                starts.extend(keep)
                self._pending[number_id] -= len(gone)
                dropped += gone
        self._claimed.difference_update(dropped)
        store = self.gateway.store
        if dropped:
            await store.recover_items(self.gateway.settings.stale_after, ids=dropped)
        if cancelled:
            await store.cancel_queued_of_bulk(bulk_id)

    async def _turn(self, number_id: int, room: int) -> int:
        """Claim the number's slots up to LOOKAHEAD ahead; how many calls were claimed."""
        gw, store = self.gateway, self.gateway.store
        number = await store.get_number(number_id, with_secrets=True)
        if number is None:
            failed = await store.fail_queued(number_id, "phone number deleted")
            log.warning("queued calls of a deleted number failed", extra={"number_id": number_id, "calls": failed})
            return 0
        if gw.carrier_for(number["provider"]) is None:
            return 0    # this process has no carrier for it: a process that has one will place them
        limits = Limits.of(number)
        free = room
        if limits.channels is not None:
            live = (await store.live_calls_by_number(gw.settings.stale_after, [number_id])).get(number_id, 0)
            free = min(free, limits.channels - live - await store.dispatching_on(number_id))
            if free <= 0:
                return 0
        want = math.ceil(limits.max_cps * self.LOOKAHEAD) + 1 if limits.max_cps else self.BATCH
        slots = await store.take_slots(number_id, cps=limits.max_cps, want=min(want, free),
                                       horizon=self.LOOKAHEAD, me=gw.settings.proc_id, free=free,
                                       catch_up=SendGate.BURST_S)
        if slots is None or not slots.items:
            return 0
        offset = asyncio.get_running_loop().time() - slots.now      # database clock → this loop's clock
        agents: dict[int, dict[str, Any] | None] = {}
        for agent_id in sorted({it["agent_id"] for it in slots.items}):     # one read per agent, not per call
            agents[agent_id] = await store.get_agent(agent_id)
        starts = self._starts.setdefault(number_id, collections.deque())
        for item, at in zip(slots.items, slots.times, strict=True):
            self._pending[number_id] = self._pending.get(number_id, 0) + 1
            self._claimed.add(item["id"])
            starts.append(Start(at + offset, item, number, agents[item["agent_id"]]))
        pacer = self._pacers.get(number_id)
        if pacer is None or pacer.done():
            self._pacers[number_id] = asyncio.create_task(self._pace(number_id, limits.max_cps),
                                                          name=f"dispatch-pace-{number_id}")
        return len(slots.items)

    async def _pace(self, number_id: int, cps: float | None) -> None:
        """Start the number's claimed calls at their slots, in order; each then passes the number's send gate
        (gateway/sendgate.py) just before it reaches the carrier."""
        loop = asyncio.get_running_loop()
        starts = self._starts[number_id]
        gate = self._gates.get(number_id)
        if cps and (gate is None or gate.cps != cps):      # first calls of the number, or its max_cps changed
            gate = self._gates[number_id] = SendGate(cps)
        while starts:
            delay = starts[0].at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            start = starts.popleft()
            task = asyncio.create_task(self._place(start, gate if cps else None),
                                       name=f"queued-call-{start.item['id']}")
            self._placing.add(task)
            task.add_done_callback(self._placing.discard)

    async def _place(self, start: Start, gate: SendGate | None) -> None:
        store, item, number = self.gateway.store, start.item, start.number
        try:
            outcome, call_log_id, error = await self._placed(start, gate)
            if outcome == "requeued":
                await store.requeue_item(item["id"], time.time() + self.RETRY_FULL, error)
            else:
                # a call the carrier refused has its ended call-log row: settled (maybe retried) like any call
                store.finish_item(item["id"], "dispatched" if call_log_id is not None else "failed",
                                  call_log_id=call_log_id, error=error)
            self.counts[outcome] += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("queued call could not be placed", extra={"queue_id": item["id"]})
        finally:
            self._claimed.discard(item["id"])
            self._pending[number["id"]] -= 1

    async def _placed(self, start: Start, gate: SendGate | None) -> tuple[str, int | None, str | None]:
        """Place one claimed call: (dispatched | failed | requeued, call-log id, error)."""
        item, agent = start.item, start.agent
        if agent is None:
            return "failed", None, f"agent {item['agent_id']} not found"
        try:
            call = await place_call(self.gateway, number=start.number, agent=agent, to_number=item["to_number"],
                                    call_context=item.get("call_context") or {}, queue_item_id=item["id"],
                                    bulk_call_id=item.get("bulk_call_id"), attempt=item["attempts"],
                                    recording=item.get("recording"),
                                    before_send=functools.partial(gate.wait, start.at) if gate else None)
        except CapacityError as e:     # the number's channels or the gateway filled up since the claim
            return "requeued", None, str(e)
        except DispatchFailed as e:
            return "failed", e.call.log_id, e.error.message if e.error else "dispatch_error"
        except CarrierError as e:
            return "failed", None, e.message
        return "dispatched", call.log_id, None


@dataclass
class Start:
    """A claimed call waiting for its slot: `at` on the event loop's clock."""
    at: float
    item: dict[str, Any]
    number: dict[str, Any]
    agent: dict[str, Any] | None
