"""Attended transfer on the media-socket carriers in a cluster (two `gateway serve` processes on one PostgreSQL
database): the call and its engine are on node-a; the consultation target's socket reaches node-b, which checks it
against the call's row (the consultation token's hash; Exotel: the consultation call's CallSid and the ExoPhone's
Basic auth) and relays it to node-a (carriers/socket_consult.py, carriers/streamrelay.py). The engine on node-a
talks to the target through the relay; a forged socket is refused by node-b before any relay."""
from __future__ import annotations

import asyncio
from urllib.parse import urlparse

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carriers.telnyx import decode_state
from cluster_env import call_row, ended_row, in_progress_on, wait_until
from exotel_helpers import API_KEY as EXO_KEY
from exotel_helpers import FakeExotel, add_exophone
from exotel_helpers import basic as exotel_basic
from exotel_helpers import tone as exotel_tone
from fakes.exotel_rest import FakeExotelApi
from fakes.plivo_rest import FakePlivoRest
from fakes.telnyx_rest import FakeTelnyxRest
from fakes.twilio_env import recording
from fakes.vonage_rest import FakeVonageApi
from gateway.simulate import plivo_stream, telnyx_stream
from test_cluster_nodes import cluster, recording_pcm16, two_nodes_with  # noqa: F401  (fixture)
from test_cluster_webhooks import CARRIERS, TELNYX_NUMBER, _on, plivo_call_live_on_a, stream_of
from vonage_helpers import VONAGE_NUMBER, FakeVonageSocket, add_vonage_number, rsa_private_pem, signed_headers

TARGET = "+14155550188"
TRANSFER = {"settings": {"transfer": {"number": TARGET}}}


async def consult_state(node, call_id: str, state: str) -> dict | None:
    row = await call_row(node, call_id)
    return row if ((row or {}).get("extra") or {}).get("consult", {}).get("state") == state else None


def on(node, url: str) -> str:
    """The same websocket path and query on another node (the carrier's balancer picked it)."""
    return _on(node, url, ws=True)


async def test_plivo_consult_target_socket_on_the_other_node_is_relayed_to_the_owner(cluster):  # noqa: F811
    start, world, receiver, clients = cluster
    rest = await FakePlivoRest().start()
    try:
        async with plivo_call_live_on_a(cluster, rest, TRANSFER) as (a, b, call_uuid, call_id, caller):
            status, body = await b.api("POST", f"/calls/{call_id}/consult", {})
            assert status == 200 and body["status"] == "consult_dialing", body       # carried out by node-a
            kind, request_uuid, made = await asyncio.wait_for(rest.actions.get(), 10)
            assert kind == "call" and made["to"] == TARGET[1:]
            target_uuid = rest.add_call()
            answer = urlparse(made["answer_url"])
            status, xml = await plivo_stream.post_signed(b.url(f"{answer.path}?{answer.query}"), {  # node-b: forwarded
                "CallUUID": target_uuid, "RequestUUID": request_uuid, "Direction": "outbound"}, rest.auth_token)
            assert status == 200 and "leg=consult" in xml, xml
            consult_url = stream_of(xml)

            async with plivo_stream.PlivoStreamClient(on(b, consult_url).replace("token=", "token=x")) as forged:
                await forged.start(target_uuid)
                await wait_until(lambda: forged.closed.is_set(), 10, "the forged socket to be closed")
                assert forged.close_code == 4006
            async with plivo_stream.PlivoStreamClient(on(b, consult_url)) as target:   # the target reached node-b
                await target.start(target_uuid)
                row = await wait_until(lambda: consult_state(a, call_id, "answered"), 15,
                                       "node-a to take the relayed target socket as the consultation's")
                assert row["owner"] == "node-a"
                await target.play(recording()[: 160 * 50])        # the engine (echo, on node-a) answers the target
                await target.wait_for(lambda: len(target.got.media) >= 40, timeout=15)

                status, body = await b.api("POST", f"/calls/{call_id}/consult/complete")
                assert status == 200 and body["method"] == "conference", body
                row = await wait_until(lambda: ended_row(b, call_id), 15, "the transferred call to end")
        assert (row["owner"], row["transfer_outcome"]) == ("node-a", "completed")
    finally:
        await rest.stop()


async def test_vonage_consult_target_socket_on_the_other_node_is_relayed_to_the_owner(cluster):  # noqa: F811
    start, world, receiver, clients = cluster
    pem = rsa_private_pem()
    api = await FakeVonageApi(pem).start()
    try:
        async def number(gw, agent_id):
            await gw.store.update_agent(agent_id, TRANSFER)
            await add_vonage_number(gw, agent_id=agent_id, private_pem=pem)
        a, b = await two_nodes_with(cluster, number, GATEWAY_VONAGE_API_BASE=api.url)
        uuid = "63f61863-4a51-4f6b-86e1-46edebcf00cc"
        api.register({"status": "answered"}, uuid)
        async with aiohttp.ClientSession() as s:
            async with s.get(a.url("/vonage/answer"), params={"to": VONAGE_NUMBER[1:], "from": "447700900999",
                                                               "uuid": uuid}, headers=signed_headers()) as r:
                endpoint = (await r.json())[0]["endpoint"][0]
            call_id = endpoint["headers"]["call_id"]
            caller = FakeVonageSocket(s, endpoint, gw_url=a.url())
            await caller.connect()
            await wait_until(lambda: in_progress_on(b, call_id, "node-a"), 10, "the call to be live on node-a")
            status, body = await a.api("POST", f"/calls/{call_id}/consult", {})
            assert status == 200, body
            create = (await api.wait_request("POST", "/v1/calls", timeout=10))[-1]
            target_endpoint = create["ncco"][0]["endpoint"][0]
            assert target_endpoint["headers"]["gw_leg"] == "consult"

            forged = FakeVonageSocket(s, target_endpoint, gw_url=b.url())
            await forged.connect(headers={**target_endpoint["headers"], "gw_token": "not-the-token"})
            assert await forged.wait_closed(10) == 4006
            target = FakeVonageSocket(s, target_endpoint, gw_url=b.url())     # the target reached node-b
            await target.connect()
            row = await wait_until(lambda: consult_state(a, call_id, "answered"), 15,
                                   "node-a to take the relayed target socket as the consultation's")
            assert row["owner"] == "node-a"
            frame = 640
            await target.play(recording_pcm16(16000, 1.0), frame)
            await target.wait_for(lambda rx: len(rx.audio) >= 40 * frame, timeout=15)    # echoed by node-a
            await target.close()                 # the target hangs up: the caller is back with the engine
            row = await wait_until(lambda: consult_state(a, call_id, "ended"), 15, "the consultation to end")
            assert row["ended_at"] is None
            await caller.close()
    finally:
        await api.stop()


async def test_exotel_consult_target_socket_on_the_other_node_is_relayed_to_the_owner(cluster):  # noqa: F811
    start, world, receiver, clients = cluster
    rest = await FakeExotelApi().start()
    try:
        async def number(gw, agent_id):
            await gw.store.update_agent(agent_id, TRANSFER)
            await add_exophone(gw, agent_id=agent_id)
        a, b = await two_nodes_with(cluster, number, GATEWAY_EXOTEL_API_BASE=rest.url)
        target_sid = "c0ffee0ae5bc2bd1bd7fd1d4b5f8abcd"
        async with aiohttp.ClientSession() as s:
            caller = await FakeExotel(s, a.ws_url("/exotel/media")).connect()
            await caller.start("CA-consult-caller")

            async def live() -> dict | None:
                status, body = await a.api("GET", "/calls/logs?pagesize=20")
                return next((c for c in body["call_log_data"] if c["carrier_sid"] == "CA-consult-caller"
                             and c["call_status"] == "in-progress"), None)
            call_id = (await wait_until(live, 10, "the call to be live on node-a"))["call_uuid"]
            rest.next_sid = target_sid
            status, body = await b.api("POST", f"/calls/{call_id}/consult", {})
            assert status == 200, body                                         # carried out by node-a

            stranger = await FakeExotel(s, b.ws_url("/exotel/media"),
                                        headers={"Authorization": exotel_basic(EXO_KEY, "wrong")}).connect()
            await stranger.start(target_sid)
            assert await stranger.wait_closed(10) == 4006          # bad credentials: refused before any relay
            target = await FakeExotel(s, b.ws_url("/exotel/media")).connect()    # the target reached node-b
            await target.start(target_sid)
            row = await wait_until(lambda: consult_state(a, call_id, "answered"), 15,
                                   "node-a to take the relayed target socket as the consultation's")
            assert row["owner"] == "node-a"
            await target.play(exotel_tone(0.5))
            await target.wait_for(lambda rx: rx.chunks, timeout=15)             # echoed by node-a's engine
            status, body = await b.api("POST", f"/calls/{call_id}/consult/cancel")
            assert status == 200, body
            assert await target.wait_closed(10) == 1000            # node-a closed it, through the relay
            row = await wait_until(lambda: consult_state(a, call_id, "cancelled"), 15, "the consultation to end")
            assert row["ended_at"] is None
            await caller.close()
            await target.close()
    finally:
        await rest.stop()


async def test_telnyx_consult_target_socket_on_the_other_node_is_relayed_to_the_owner(cluster):  # noqa: F811
    start, world, receiver, clients = cluster
    rest = await FakeTelnyxRest().start()
    try:
        rest.add_number(TELNYX_NUMBER)
        key = Ed25519PrivateKey.generate()

        async def number(gw, agent_id):
            await gw.store.update_agent(agent_id, TRANSFER)
            await gw.store.create_number({
                "phone_number": TELNYX_NUMBER, "provider": "telnyx", "agent_id": agent_id,
                "config": {"public_key": telnyx_stream.public_key_b64(key), "connection_id": "1684641123236054244"}},
                {"api_key": rest.api_key})
        a, b = await two_nodes_with(cluster, number, GATEWAY_CARRIERS=CARRIERS, GATEWAY_TELNYX_API_BASE=rest.url)
        ccid = rest.add_call()
        status, body = await telnyx_stream.post_webhook(a.url("/telnyx/webhook"), "call.initiated", {
            "call_control_id": ccid, "call_session_id": "sess", "direction": "incoming", "from": "+14155550100",
            "to": TELNYX_NUMBER, "state": "parked"}, key)
        assert status == 200, body
        _, _, answer = await asyncio.wait_for(rest.commands.get(), 10)
        call_id = decode_state(answer["client_state"])
        async with telnyx_stream.TelnyxStreamClient(on(a, answer["stream_url"])) as caller:
            await caller.start(ccid)
            await wait_until(lambda: in_progress_on(b, call_id, "node-a"), 10, "the call to be live on node-a")
            status, body = await b.api("POST", f"/calls/{call_id}/consult", {})
            assert status == 200 and body["status"] == "consult_dialing", body       # carried out by node-a
            dial = [body for _, path, body in rest.requests if path == "/v2/calls"][-1]
            assert "leg=consult" in dial["stream_url"]
            target_ccid = next(k for k, v in rest.calls.items() if v.get("dial") is dial)

            async with telnyx_stream.TelnyxStreamClient(on(b, dial["stream_url"]).replace("token=", "token=x")) \
                    as forged:
                await forged.start(target_ccid)
                await wait_until(lambda: forged.closed.is_set(), 10, "the forged socket to be closed")
                assert forged.close_code == 4006
            async with telnyx_stream.TelnyxStreamClient(on(b, dial["stream_url"])) as target:   # reached node-b
                await target.start(target_ccid)
                row = await wait_until(lambda: consult_state(a, call_id, "answered"), 15,
                                       "node-a to take the relayed target socket as the consultation's")
                assert row["owner"] == "node-a"
                await target.play(recording()[: 160 * 50])        # the engine (echo, on node-a) answers the target
                await target.wait_for(lambda: len(target.got.media) >= 40, timeout=15)
            row = await wait_until(lambda: consult_state(a, call_id, "ended"), 15,
                                   "the target's hang-up to end the consultation")
            assert row["ended_at"] is None                          # the caller is back with the engine
    finally:
        await rest.stop()
