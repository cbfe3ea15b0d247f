"""A number's channel limit on the webhook / websocket carriers, on real sockets against each carrier's stand-in:
over the limit every carrier turns the call away in its own protocol, and the call log keeps a closed row saying
why (`rejected`, hangup_reason `channel_limit`). SIP and Twilio: tests/test_dispatch_queue.py.

What each carrier allows (their docs):
* Plivo: the answer XML `<Hangup reason="busy"/>` ends an unanswered call with a busy tone (Plivo XML reference,
  "Hangup": reason rejected | busy).
* Telnyx: the Call Control `reject` command with `cause: USER_BUSY` (API reference, "Reject a call":
  POST /v2/calls/{call_control_id}/actions/reject, cause CALL_REJECTED | USER_BUSY).
* Vonage: there is no reject action in an NCCO; the answer NCCO is a `talk` and "when all the actions in the NCCO
  are complete, the Call ends" (Vonage NCCO reference).
* Exotel: the Voicebot applet has no refusal message; closing the stream makes the flow go on to the next applet
  (Exotel "Working with the Voicebot applet"), so the socket is closed with 1013 (try again later). The optional
  `call_coming` Passthru before it answers 302, the flow's second branch (Exotel "Passthru Applet": 200 → first
  branch, 302 → second), so the flow's fallback takes the call instead of the Voicebot.
"""
from __future__ import annotations

import asyncio

import aiohttp

from carriers.exotel import CloseCode as ExotelClose
from carriers.exotel import ExotelCarrier
from carriers.vonage import VonageCarrier
from exotel_helpers import FakeExotel, add_exophone, call_coming_token, ws_url
from sipp import api, wait_for
from test_plivo import plivo_env  # noqa: F401  (fixture)
from test_telnyx import telnyx_env  # noqa: F401  (fixture)
from test_vonage_media import answer, inbound
from vonage_helpers import VONAGE_NUMBER, add_vonage_number


async def one_channel(gw, number_id: int) -> None:
    got = await api(gw, "PATCH", f"/phone_number/{number_id}", {"channels": 1}, expect=200)
    assert got["phone_number"]["channels"] == 1


async def refusals(gw) -> list[dict]:
    rows, _ = await gw.store.list_calls(1, 50)
    return [r for r in rows if r["call_status"] == "rejected"]


def refused_for_channels(row: dict, carrier: str, sid: str | None) -> bool:
    return (row["channel_type"] == carrier and row["call_direction"] == "inbound" and row["carrier_sid"] == sid
            and row["hangup_reason"] == "channel_limit" and row["hangup_source"] == "system"
            and row["ended_at"] is not None and row["extra"]["channel_limit"] == 1)


async def test_plivo_over_the_limit_hangs_up_busy(plivo_env):  # noqa: F811
    env = await plivo_env()
    await one_channel(env.gw, env.number["id"])
    first, _, _ = await env.inbound()                       # takes the one channel
    second = env.rest.add_call()
    status, xml = await env.post("/plivo/answer", {"CallUUID": second, "From": "14155550101",
                                                    "To": env.number["phone_number"][1:]})
    assert status == 200 and "<Hangup" in xml and 'reason="busy"' in xml and "<Stream" not in xml, xml
    [row] = await refusals(env.gw)
    assert refused_for_channels(row, "plivo", second), row
    assert list(env.gw.calls.active) == [first]
    await env.gw.calls.get(first).end("user", "done")
    _, _, url = await env.inbound()                         # the channel is free again
    assert "/plivo/media" in url


async def test_telnyx_over_the_limit_rejects_with_user_busy(telnyx_env):  # noqa: F811
    env = await telnyx_env()
    await one_channel(env.gw, env.number["id"])
    first, _, _ = await env.inbound()
    second = env.rest.add_call()
    status, body = await env.webhook("call.initiated", {
        "call_control_id": second, "call_leg_id": "leg2", "call_session_id": "sess2", "direction": "incoming",
        "from": "+14155550101", "to": env.number["phone_number"], "state": "parked"})
    assert status == 200 and body == {"rejected": "busy"}, body
    ccid, action, command = await asyncio.wait_for(env.rest.commands.get(), 5)
    assert (ccid, action, command["cause"]) == (second, "reject", "USER_BUSY"), command
    [row] = await refusals(env.gw)
    assert refused_for_channels(row, "telnyx", second), row
    assert list(env.gw.calls.active) == [first]


async def test_vonage_over_the_limit_answers_a_busy_talk_that_ends_the_call(make_gateway):
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    agent = await gw.store.create_agent({"name": "a", "engine": "echo", "settings": {}})
    number = await add_vonage_number(gw, agent_id=agent["id"])
    # (this stand-in number has no REST credentials, which an API update insists on: set the limit in the store)
    await gw.store.update_number(number["id"], config={**number["config"], "channels": 1})
    ncco = await inbound(gw)
    assert ncco[0]["action"] == "connect"
    second = "5b4c2a10-0f6e-4d7a-9a51-2f0c7e1d9b33"
    status, ncco = await answer(gw, to=VONAGE_NUMBER[1:], **{"from": "447700900998"}, uuid=second,
                                conversation_uuid="CON-2")
    # a talk alone: Vonage ends the call when its NCCO is done; no websocket, no connect
    assert status == 200 and [a["action"] for a in ncco] == ["talk"] and "busy" in ncco[0]["text"], ncco
    [row] = await refusals(gw)
    assert refused_for_channels(row, "vonage", second), row
    assert len(gw.calls.active) == 1


async def test_exotel_over_the_limit_closes_the_stream_try_again(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    agent = await gw.store.create_agent({"name": "a", "engine": "echo", "settings": {}})
    number = await add_exophone(gw, agent_id=agent["id"])
    # (an API update checks the credentials against Exotel itself, unreachable here: set the limit in the store)
    await gw.store.update_number(number["id"], config={**number["config"], "channels": 1})
    async with aiohttp.ClientSession() as s:
        first = await FakeExotel(s, ws_url(gw)).connect()
        await first.start("CA-first")
        await wait_for(lambda: len(gw.calls.active) == 1, 5, 0.02)
        second = await FakeExotel(s, ws_url(gw)).connect()
        await second.start("CA-second")
        assert await second.wait_closed() == ExotelClose.TRY_AGAIN == 1013
        await second.close()
        [row] = await refusals(gw)
        assert refused_for_channels(row, "exotel", "CA-second"), row
        assert len(gw.calls.active) == 1                    # the first call goes on
        await first.stop()
        await first.close()


async def test_exotel_call_coming_refused_takes_the_flows_second_branch(make_gateway):
    """A full number, then a draining gateway: `call_coming` answers 302 (never the 200 that sends the flow on to
    a Voicebot that would be refused), and opens no call."""
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    agent = await gw.store.create_agent({"name": "a", "engine": "echo", "settings": {}})
    number = await add_exophone(gw, agent_id=agent["id"])
    await gw.store.update_number(number["id"], config={**number["config"], "channels": 1})

    async def call_coming(sid: str) -> int:
        async with aiohttp.ClientSession() as s, s.get(gw.url("/exotel/call_coming"), allow_redirects=False, params={
                "CallSid": sid, "CallFrom": "09876543210", "CallTo": "08047491899",
                "gw_token": call_coming_token()}) as r:
            return r.status

    assert await call_coming("CA-coming-1") == 200                   # takes the one channel
    assert await call_coming("CA-coming-2") == 302                   # the number is full
    await gw.store.update_number(number["id"], config={**number["config"], "channels": 5})
    gw.begin_drain(timeout=60)
    assert await call_coming("CA-coming-3") == 302                   # the gateway is draining
    assert [c.carrier_sid for c in gw.calls.active.values()] == ["CA-coming-1"]
