"""The dispatch queue's per-number send gate: calls that become ready all at once still leave at the pace."""
import asyncio
import bisect

from gateway.sendgate import SendGate


async def test_a_crowd_leaves_at_most_cps_in_any_second_in_order():
    gate = SendGate(20.0)
    loop = asyncio.get_running_loop()
    left: list[tuple[int, float]] = []

    async def call(n: int) -> None:
        await gate.wait()
        left.append((n, loop.time()))
    await asyncio.gather(*(call(n) for n in range(30)))        # 30 calls ready in the same instant
    assert [n for n, _ in left] == list(range(30))              # first come, first sent
    times = [t for _, t in left]
    most = max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))
    assert most <= 20                                           # never above the pace in any second
    burst = max(bisect.bisect_left(times, t + 0.02) - i for i, t in enumerate(times))
    assert burst <= gate.burst                                  # and never a pile-up: at most the small burst
    assert times[-1] - times[0] >= 1.0                          # 30 calls at 20/s take over a second
