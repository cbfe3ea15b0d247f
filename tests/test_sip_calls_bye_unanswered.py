"""A far end that never answers our BYE (issue 13 item 2): RFC 3261 §15 says the session ends when the BYE is sent,
so the call ends at once (status, live list, active calls, max-calls), RTP stops, the logged duration does not
include the 32 s BYE transaction, and that transaction goes on in the background (retransmitted, unanswered)."""
from __future__ import annotations

import asyncio
import time

import pytest

from sipp import api, call_rows, metric_value, metrics_text, needs_sipp, sip_gateway, sip_number, sipp_uac, wait_for

pytestmark = [needs_sipp, pytest.mark.timeout(120)]


async def test_call_ends_when_bye_is_sent_not_when_answered(make_gateway):
    gw = await sip_gateway(make_gateway, max_calls=1)
    await sip_number(gw)
    sip = gw.carriers["sip"]
    ignoring = asyncio.create_task(sipp_uac("uac_ignore_bye.xml", sip.port, service="15550001111", timeout_s=60))
    call = await wait_for(lambda: next((c for c in gw.calls.active.values() if c.status == "in-progress"
                                        and c.leg is not None and getattr(c.leg, "rtp", None) is not None
                                        and c.leg.rtp.received > 10), None), timeout=30)
    leg, session = call.leg, call.leg.session
    started = time.monotonic()
    await api(gw, "POST", f"/calls/{call.id}/hangup", expect=200)
    await wait_for(lambda: call.ended.is_set(), timeout=5)
    hung_up_after = time.monotonic() - started
    # the call is over while the far end still has not answered: the BYE transaction runs on in the background
    assert sip.ua.pending_byes, "the BYE transaction should still be waiting for its answer"
    assert session.ended.is_set()
    assert call.id not in gw.calls.active and gw.calls.get(call.id) is None
    assert metric_value(await metrics_text(gw), "gateway_active_calls", carrier="sip") == 0
    assert leg.closed and call.id not in sip.legs                      # RTP stopped
    assert sip.rtp.totals()["sessions"] == 0
    assert (await api(gw, "GET", "/calls/live"))["count"] == 0
    row = (await call_rows(gw))[0]
    assert row["call_status"] == "completed" and row["hangup_reason"] == "api_hangup"
    assert row["call_duration_in_seconds"] < (time.monotonic() - call.answered) + 1
    assert hung_up_after < 20   # not the 32 s of Timer F

    # max-calls (1) is free again at once: a new call is answered while the old BYE is still unanswered
    assert sip.ua.pending_byes
    res = await sipp_uac("uac_pcma_echo.xml", sip.port, service="15550001111", duration_ms=500, timeout_s=20)
    res.assert_calls(successful=1)
    (await ignoring).assert_calls(successful=1)   # SIPp got the BYE (and never answered it)
    assert sip.layer.stats["retransmissions"] > 0   # Timer E re-sent the BYE meanwhile, in the background
