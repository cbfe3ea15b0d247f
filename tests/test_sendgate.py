"""The dispatch queue's per-number pace (gateway/sendgate.py): GCRA arithmetic on a fake clock, so every figure is
exact — on time the calls leave on their slots; late calls catch up at once while they are at most the burst
allowance behind, and no window ever holds more than `cps × w + burst` calls, however bunched they were."""
import asyncio
import bisect
import random

import pytest

from gateway.sendgate import Gcra, SendGate


def most_in(times: list[float], width: float) -> int:
    """The most sends in any window [t, t + width) (a window starting at a send is the worst case)."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + width - 1e-9) - i for i, t in enumerate(times)), default=0)


def run(cps: float, burst: int, ready: list[float], slots: list[float]) -> list[float]:
    """Send times of calls that became ready at `ready[i]` for slot `slots[i]`, reserved in that order."""
    g = Gcra(cps, burst)
    return [g.reserve(r, s) for r, s in zip(ready, slots, strict=True)]


def test_on_time_calls_leave_exactly_on_their_slots():
    cps = 300.0
    slots = [i / cps for i in range(900)]
    sent = run(cps, 30, slots, slots)
    assert sent == slots
    assert most_in(sent, 1.0) == 300


def test_early_calls_wait_for_their_slot():
    cps = 10.0
    slots = [5 + i / cps for i in range(20)]
    sent = run(cps, 3, [0.0] * 20, slots)           # ready long before: each leaves at its slot, not before
    assert sent == slots


@pytest.mark.parametrize("stall", [0.02, 0.05, 0.096])
def test_a_stall_within_the_allowance_costs_nothing(stall):
    """The process stops for `stall` s (≤ tau = (30 − 1)/300 s): the calls due meanwhile leave together when it
    comes back, and from then on every call is back on its slot."""
    cps, burst = 300.0, 30
    slots = [i / cps for i in range(600)]
    back = 0.5 + stall
    ready = [max(s, back) if 0.5 <= s < back else s for s in slots]
    sent = run(cps, burst, ready, slots)
    late = [i for i, s in enumerate(slots) if 0.5 <= s < back]
    assert late and all(sent[i] == pytest.approx(back) for i in late)     # caught up at once
    after = [i for i, s in enumerate(slots) if s >= back]
    assert all(sent[i] == slots[i] for i in after)                         # and on the timeline again
    assert most_in(sent, 1.0) <= cps + burst


def test_a_long_stall_loses_only_what_is_beyond_the_allowance():
    cps, burst = 300.0, 30
    tau = (burst - 1) / cps
    slots = [i / cps for i in range(1500)]
    stall_from, stall = 1.0, 0.5
    back = stall_from + stall
    ready = [max(s, back) if s >= stall_from else s for s in slots]
    sent = run(cps, burst, ready, slots)
    # the calls due in the stall and after it leave `stall − tau` late from then on: never more at once
    assert sent[-1] - slots[-1] == pytest.approx(stall - tau)
    assert sum(1 for t in sent if back - 1e-9 <= t < back + 1e-9) == burst
    assert most_in(sent, 1.0) <= cps + burst
    assert most_in(sent, 0.1) <= 0.1 * cps + burst


def test_random_bunching_holds_the_rate_and_never_breaks_the_bound():
    """Calls ready in bunches (a batch of writes committing together, a busy loop), late by up to 80 ms against
    tau ≈ 97 ms: over 60 s every call leaves, the last one within tau of its slot, and no second, 100 ms or
    10 ms window holds more than its share plus the burst."""
    rnd = random.Random(16)
    cps, burst = 300.0, 30
    slots = [i / cps for i in range(int(cps * 60))]
    ready, t = [], 0.0
    for s in slots:
        if s >= t:                                  # the next bunch is released 0–80 ms after its first slot
            t = s + rnd.uniform(0.0, 0.08)
        ready.append(t)
    sent = run(cps, burst, ready, slots)
    assert all(x >= r for x, r in zip(sent, ready, strict=True))
    assert sent[-1] - slots[-1] <= (burst - 1) / cps + 1e-9    # the rate over the window is the limit's
    for width in (1.0, 0.1, 0.01):
        assert most_in(sent, width) <= int(width * cps) + burst, width


def test_the_bound_holds_for_adversarial_arrivals():
    """Whatever the readiness pattern, no window of w seconds sees more than floor(w × cps) + burst sends."""
    rnd = random.Random(7)
    cps, burst = 50.0, 5
    ready = sorted(rnd.uniform(0, 20) for _ in range(2000))   # 100 calls/s offered against 50/s allowed
    sent = run(cps, burst, ready, [0.0] * len(ready))
    for width in (1.0, 0.5, 0.05):
        assert most_in(sent, width) <= int(width * cps) + burst
    assert sent == sorted(sent)                                # first ready, first sent


def test_idle_then_a_crowd_sends_the_burst_then_the_pace():
    cps, burst = 20.0, 2
    sent = run(cps, burst, [10.0] * 6, [0.0] * 6)
    assert sent == pytest.approx([10.0, 10.0, 10.05, 10.1, 10.15, 10.2])


async def test_send_gate_sleeps_until_the_reserved_time():
    gate = SendGate(20.0)
    assert gate.burst == 2
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await gate.wait(t0 + 0.05)                  # a slot 50 ms ahead: not before it
    assert loop.time() >= t0 + 0.05


async def test_a_starved_loop_never_lets_more_than_cps_plus_burst_leave_in_a_second():
    """The loop is blocked for 1.5 s while calls wait for their reserved times: when it runs again they are all
    due at once, but the calls that really leave in any second stay within cps + burst."""
    import time as wallclock
    gate = SendGate(20.0)                       # burst 2: at most 22 in any second
    loop = asyncio.get_running_loop()
    left: list[float] = []

    async def call() -> None:
        await gate.wait()
        left.append(loop.time())
    tasks = [asyncio.create_task(call()) for _ in range(50)]
    await asyncio.sleep(0.3)                    # a few leave on the pace
    wallclock.sleep(1.5)                        # then the loop is starved (a busy box) …
    await asyncio.gather(*tasks)                # … and everything reserved meanwhile is due at once
    assert len(left) == 50
    assert most_in(left, 1.0) <= 22
