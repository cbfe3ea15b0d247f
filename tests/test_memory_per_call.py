"""Nothing of a finished call stays in memory (issue 13 item 1): after real SIPp calls with RTP and delivered
lifecycle webhooks have ended — and the protocol's own lingering windows (Timer J, the crossing-BYE window, the
webhook worker) have passed — no Call, SIP session, dialog, transaction, RTP session, leg, bus or webhook delivery
is alive, and every per-call table is empty. Counts live objects (not RSS), so a busy machine cannot fool it."""
from __future__ import annotations

import asyncio
import collections
import gc
import weakref

import pytest

from carriers.sip import SipLeg
from gateway.bus import CallBus
from gateway.call import Call
from gateway.rtp.session import RtpSession
from gateway.sip.dialog import Dialog
from gateway.sip.transaction import ClientTransaction, ServerTransaction
from gateway.sip.ua import IncomingInvite, SipSession
from gateway.webhooks import Delivery
from sipp import api, needs_sipp, sip_gateway, sip_number, sipp_uac, wait_for
from test_webhooks import receiver  # noqa: F401  (fixture)

pytestmark = [needs_sipp, pytest.mark.timeout(180)]

PER_CALL_TYPES = (Call, SipSession, Dialog, ServerTransaction, ClientTransaction, RtpSession, SipLeg, CallBus,
                  IncomingInvite, Delivery)


def live_objects(baseline: dict[str, int] | None = None) -> dict[str, int]:
    """Live objects of the per-call types, beyond `baseline` (what other tests of this process left alive)."""
    gc.collect()
    counts = {t.__name__: 0 for t in PER_CALL_TYPES}
    for o in gc.get_objects():
        if isinstance(o, PER_CALL_TYPES):
            counts[type(o).__name__] += 1
    base = baseline or {}
    return {k: v - base.get(k, 0) for k, v in counts.items() if v > base.get(k, 0)}


def per_call_tables(gw) -> dict[str, int]:
    sip, wh = gw.carriers["sip"], gw.webhooks
    tables = {"calls.active": gw.calls.active, "calls._by_sid": gw.calls._by_sid, "sip.legs": sip.legs,
              "ua.sessions": sip.ua.sessions, "ua.invites": sip.ua.invites, "ua._acked": sip.ua._acked,
              "ua._ack_waiters": sip.ua._ack_waiters, "ua.pending_byes": sip.ua.pending_byes,
              "layer._servers": sip.layer._servers, "layer._clients": sip.layer._clients,
              "layer._awaiting_ack": sip.layer._awaiting_ack, "rtp.sessions": sip.rtp.sessions,
              "webhooks._queues": wh._queues, "webhooks._workers": wh._workers, "webhooks._seq": wh._seq,
              "webhooks._items": wh._items}
    return {k: len(v) for k, v in tables.items() if len(v)}


async def test_finished_calls_leave_nothing_behind(make_gateway, receiver):
    # no cluster heartbeat during the test: its periodic statements are not per call and would blur the count;
    # the webhook receiver listens on 127.0.0.1
    gw = await sip_gateway(make_gateway, heartbeat_interval=3600, allow_private_webhooks=True)
    number = await sip_number(gw)
    await api(gw, "PATCH", f"/agents/{number['agent_id']}", {"webhook_url": receiver.url("ok")}, expect=200)
    sip = gw.carriers["sip"]
    # RFC 3261 timers scaled down (T1 = 20 ms) so the lingering windows (64*T1) pass in 1.3 s, not 32 s
    sip.layer.t1 = sip.ua.t1 = 0.02
    refs: list[weakref.ref] = []
    gw.calls.subscribe(lambda kind, call: refs.append(weakref.ref(call)) if kind == "call_started" else None)

    baseline = live_objects()
    gc.disable()   # as rare as `gateway serve` makes them (cli.py): calls must be freed without the collector
    try:
        for _ in range(2):   # two rounds: the second proves the first left nothing the second piles onto
            res = await sipp_uac("uac_pcma_echo.xml", sip.port, service="15550001111", duration_ms=300,
                                 calls=12, rate=12, timeout_s=60)
            res.assert_calls(successful=12)
            await wait_for(lambda: not gw.calls.active and not gw.webhooks.pending, timeout=30)
            await wait_for(lambda: not per_call_tables(gw), timeout=30)
            # freed by reference counting alone: no cycle keeps a finished call for the collector
            await wait_for(lambda: all(r() is None for r in refs), timeout=10)
        # and calls leave no other cyclic garbage of ours (or of the store's SQLAlchemy statements) to pile up
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        ours = collections.Counter(type(o).__qualname__ for o in gc.garbage
                                   if type(o).__module__.startswith(("gateway", "carriers", "sqlalchemy")))
        assert not ours, ours.most_common(10)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert len(refs) == 24
    await wait_for(lambda: not live_objects(baseline), timeout=30)
    assert len(receiver.requests) >= 24 * 6   # every call's lifecycle webhooks were delivered meanwhile


async def test_session_of_an_ended_call_does_not_keep_the_call(make_gateway):
    """The crossing-BYE window keeps the SIP session for 32·T1; it must not keep the call with it."""
    gw = await sip_gateway(make_gateway)
    await sip_number(gw)
    sip = gw.carriers["sip"]
    refs: list[weakref.ref] = []
    gw.calls.subscribe(lambda kind, call: refs.append(weakref.ref(call)) if kind == "call_started" else None)
    res = await sipp_uac("uac_pcma_echo.xml", sip.port, service="15550001111", duration_ms=300, timeout_s=30)
    res.assert_calls(successful=1)
    await wait_for(lambda: not gw.calls.active and not sip.legs, timeout=20)
    assert len(sip.ua.sessions) == 1          # still findable (T1 = 0.5 s: for 16 s)
    await asyncio.sleep(0)
    gc.collect()
    assert refs and refs[0]() is None, [type(r).__name__ for r in gc.get_referrers(refs[0]())][:10]
