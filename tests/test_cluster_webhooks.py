"""Carrier webhooks that reach a process which does not hold the call (two `gateway serve` processes on one
PostgreSQL database): node-b authenticates them against the call's number and forwards them to node-a, the owner,
over the control bus (`<carrier>:webhook`); node-a carries them out and its answer (Plivo's next XML, Twilio's
TwiML) comes back through node-b. A forged webhook is refused by node-b and changes nothing."""
from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from html import unescape
from urllib.parse import urlparse

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carriers.telnyx import decode_state, encode_state
from cluster_env import call_row, ended_row, in_progress_on, wait_until
from conftest import SECRET_KEY
from fakes.plivo_rest import FakePlivoRest
from fakes.telnyx_rest import FakeTelnyxRest
from gateway.secretbox import SecretBox
from gateway.simulate import plivo_stream, telnyx_stream
from gateway.simulate.twilio_stream import post_signed as twilio_post
from gateway.store import Store
from test_cluster_nodes import call_live_on_a, cluster, two_nodes_with  # noqa: F401  (fixture)

TELNYX_NUMBER = "+15005550088"
PLIVO_NUMBER = "+15005550077"
TARGET = "+14155550166"
CARRIERS = "twilio,telnyx,plivo"


async def _add_number(db: str, agent_id: int, number: dict, secrets: dict) -> None:
    store = Store(db, SecretBox([SECRET_KEY], "tests"))        # the nodes' key (GATEWAY_SECRET_KEY)
    await store.open()
    try:
        await store.create_number({**number, "agent_id": agent_id}, secrets)
    finally:
        await store.close()


async def _two_nodes(start, **env: str):
    """node-a and node-b with the Telnyx and Plivo carriers too, both healthy."""
    a, b = start("node-a", GATEWAY_CARRIERS=CARRIERS, **env), start("node-b", GATEWAY_CARRIERS=CARRIERS, **env)
    await a.wait_healthy()
    await b.wait_healthy()
    return a, b


def _on(node, url: str, *, ws: bool = False) -> str:
    """The same path and query on another node (the balancer handed the request to it); `ws`: as a websocket."""
    u = urlparse(url)
    return (node.ws_url if ws else node.url)(f"{u.path}?{u.query}")


def stream_of(xml: str) -> str:
    """The `<Stream>` URL of a Plivo XML answer."""
    return unescape(re.search(r"<Stream[^>]*>([^<]+)</Stream>", xml).group(1))


async def plivo_nodes(cluster, rest: FakePlivoRest, agent: dict | None = None):
    """PLIVO_NUMBER on the stand-in's account (its agent updated with `agent` first), node-a and node-b up."""
    start, world, _, _ = cluster

    async def number(gw, agent_id: int) -> None:
        if agent:
            await gw.store.update_agent(agent_id, agent)
        await gw.store.create_number({"phone_number": PLIVO_NUMBER, "provider": "plivo", "agent_id": agent_id,
                                      "config": {"auth_id": rest.auth_id}}, {"auth_token": rest.auth_token})
    return await two_nodes_with(cluster, number, GATEWAY_CARRIERS=CARRIERS, GATEWAY_PLIVO_API_BASE=rest.url)


async def plivo_inbound(a, rest: FakePlivoRest, call_uuid: str) -> tuple[str, str]:
    """Plivo's answer webhook for an inbound call, on `a`: our call id and the media socket URL it answered."""
    status, xml = await plivo_stream.post_signed(a.url("/plivo/answer"), {
        "CallUUID": call_uuid, "From": "14155550100", "To": PLIVO_NUMBER[1:], "Direction": "inbound"},
        rest.auth_token)
    assert status == 200, xml
    url = stream_of(xml)
    return re.search(r"call_id=([0-9a-f]+)", url).group(1), url


@contextlib.asynccontextmanager
async def plivo_call_live_on_a(cluster, rest: FakePlivoRest, agent: dict | None = None) -> AsyncIterator[tuple]:
    """node-a and node-b up, an inbound Plivo call answered by node-a whose media socket has started there and which
    node-b sees live on node-a: yields (a, b, CallUUID, our call id, the caller's stream client)."""
    a, b = await plivo_nodes(cluster, rest, agent)
    call_uuid = rest.add_call()
    call_id, url = await plivo_inbound(a, rest, call_uuid)
    async with plivo_stream.PlivoStreamClient(_on(a, url, ws=True)) as client:
        await client.start(call_uuid)
        await wait_until(lambda: in_progress_on(b, call_id, "node-a"), 10, "the call to be live on node-a")
        yield a, b, call_uuid, call_id, client


async def test_telnyx_event_on_the_other_node_reaches_the_owner(cluster):  # noqa: F811
    start, world, receiver, clients = cluster
    rest = await FakeTelnyxRest().start()
    try:
        rest.add_number(TELNYX_NUMBER)
        key = Ed25519PrivateKey.generate()
        await _add_number(start.db, world.agent["id"], {
            "phone_number": TELNYX_NUMBER, "provider": "telnyx",
            "config": {"public_key": telnyx_stream.public_key_b64(key), "connection_id": "1684641123236054244"}},
            {"api_key": rest.api_key})
        a, b = await _two_nodes(start, GATEWAY_TELNYX_API_BASE=rest.url)

        ccid = rest.add_call()
        status, body = await telnyx_stream.post_webhook(a.url("/telnyx/webhook"), "call.initiated", {
            "call_control_id": ccid, "call_session_id": "sess", "direction": "incoming", "from": "+14155550100",
            "to": TELNYX_NUMBER, "state": "parked"}, key)
        assert status == 200, body
        got, action, answer = await asyncio.wait_for(rest.commands.get(), 10)
        assert (got, action) == (ccid, "answer")
        call_id = decode_state(answer["client_state"])
        u = urlparse(answer["stream_url"])
        async with telnyx_stream.TelnyxStreamClient(a.ws_url(f"{u.path}?{u.query}")) as client:
            await client.start(ccid)
            await wait_until(lambda: in_progress_on(b, call_id, "node-a"), 10, "the call to be live on node-a")

            hangup = {"call_control_id": ccid, "client_state": encode_state(call_id), "hangup_cause": "normal_clearing",
                      "hangup_source": "caller"}
            status, body = await telnyx_stream.post_webhook(b.url("/telnyx/webhook"), "call.hangup", hangup,
                                                            Ed25519PrivateKey.generate())     # not the account's key
            assert status == 403, body
            assert (await call_row(b, call_id))["ended_at"] is None

            status, body = await telnyx_stream.post_webhook(b.url("/telnyx/webhook"), "call.hangup", hangup, key)
            assert status == 200 and body == {"ok": True}, body      # carried out by node-a
            row = await wait_until(lambda: ended_row(b, call_id), 10, "node-a to end the call")
            await asyncio.wait_for(client.closed.wait(), 10)
        assert (row["owner"], row["hangup_source"], row["hangup_reason"]) == ("node-a", "user", "caller_hangup")
        assert row["extra"]["telnyx_hangup_cause"] == "normal_clearing"
    finally:
        await rest.stop()


async def test_plivo_transfer_callbacks_on_the_other_node_are_answered_by_the_owner(cluster):  # noqa: F811
    start, world, receiver, clients = cluster
    rest = await FakePlivoRest().start()
    try:
        async with plivo_call_live_on_a(cluster, rest) as (a, b, call_uuid, call_id, client):
            status, body = await b.api("POST", f"/calls/{call_id}/transfer", {"number": TARGET})
            assert status == 200, body                                  # carried out by node-a (REST transfer)
            kind, got, transfer = await asyncio.wait_for(rest.actions.get(), 10)
            assert (kind, got, transfer["legs"]) == ("transfer", call_uuid, "aleg")
            assert transfer["aleg_url"].startswith(a.url("/plivo/transfer?"))

            # Plivo fetches the transfer XML from whichever process its balancer picks: node-b
            aleg_on_b = _on(b, transfer["aleg_url"])
            status, forged = await plivo_stream.post_signed(aleg_on_b, {"CallUUID": call_uuid}, "not-the-token")
            assert status == 403, forged
            status, dial = await plivo_stream.post_signed(aleg_on_b, {"CallUUID": call_uuid}, rest.auth_token)
            assert status == 200 and f"<Number>{TARGET}</Number>" in dial, dial     # node-a's XML
            callback = unescape(re.search(r'callbackUrl="([^"]+)"', dial).group(1))
            assert callback.startswith(a.url("/plivo/dial_callback?"))

            status, _ = await plivo_stream.post_signed(_on(b, callback), {"CallUUID": call_uuid,
                                                                         "DialAction": "answer"}, rest.auth_token)
            assert status == 200
            row = await wait_until(lambda: ended_row(b, call_id), 10, "node-a to end the transferred call")
        assert (row["owner"], row["hangup_reason"], row["transfer_outcome"]) == ("node-a", "transferred", "completed")
        assert row["transfer_target"] == TARGET
    finally:
        await rest.stop()


async def test_twilio_transfer_callbacks_on_the_other_node_are_answered_by_the_owner(cluster):  # noqa: F811
    """A transfer nobody answers: Twilio's <Dial action> reaches node-b, which passes it to node-a; node-a's
    TwiML (the caller back on a new stream of the same call) is what Twilio gets, not node-b's `<Hangup/>`.
    Then the caller hangs up: the status callback, on node-b too, ends node-a's call."""
    start, world, receiver, clients = cluster
    a, b, call_id, call_sid = await call_live_on_a(cluster)
    status, body = await b.api("POST", f"/calls/{call_id}/transfer", {"number": TARGET})
    assert status == 200, body
    dial = [r for r in world.rest.of("POST", f"/Calls/{call_sid}.json") if "<Dial" in (r.one("Twiml") or "")]
    assert dial, "node-a sent the <Dial> TwiML"
    action = unescape(re.search(r'<Dial action="([^"]+)"', dial[0].one("Twiml")).group(1))
    assert action.startswith(a.url("/twilio/transfer_status?"))

    form = {"CallSid": call_sid, "AccountSid": world.account.sid, "DialCallStatus": "busy"}
    status, twiml = await twilio_post(_on(b, action), form, "not-the-token")
    assert status == 403, twiml
    status, twiml = await twilio_post(_on(b, action), form, world.account.token)
    assert status == 200 and "<Connect>" in twiml and f'value="{call_id}"' in twiml, twiml     # node-a's answer
    async def back_to_the_agent() -> dict | None:
        row = await call_row(b, call_id)
        return row if row and row["transfer_outcome"] == "busy" else None
    row = await wait_until(back_to_the_agent, 10, "node-a to log the failed transfer")
    assert row["owner"] == "node-a" and row["ended_at"] is None

    status, _ = await twilio_post(b.url("/twilio/status"), {"CallSid": call_sid, "AccountSid": world.account.sid,
                                                            "CallStatus": "completed", "CallDuration": "7"},
                                  world.account.token)
    assert status == 200
    row = await wait_until(lambda: ended_row(b, call_id), 10, "node-a to end the call")
    assert (row["owner"], row["hangup_source"], row["hangup_reason"]) == ("node-a", "user", "caller_hangup")
    assert row["extra"]["twilio_call_duration"] == 7
