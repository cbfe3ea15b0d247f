"""Two real `gateway serve` processes (node-a, node-b) on one fresh PostgreSQL database, with Twilio Media Streams
played by a websocket client: control reaches the process that owns a call, a stream landing on the other process
is joined to its call, and the calls of a process killed with SIGKILL are closed by the survivor."""
from __future__ import annotations

from types import SimpleNamespace

import aiohttp
import numpy as np
import pytest_asyncio

from cluster_env import (
    STALE,
    call_row,
    create_database,
    drop_database,
    ended_row,
    in_progress_on,
    live_calls,
    start_gateway,
    stop_all,
    twilio_world,
    wait_until,
)
from conftest import SECRET_KEY
from exotel_helpers import API_KEY as EXO_KEY
from exotel_helpers import API_TOKEN as EXO_TOKEN
from exotel_helpers import FakeExotel, add_exophone, call_coming_token
from exotel_helpers import basic as exotel_basic
from exotel_helpers import tone as exotel_tone
from fakes.twilio_env import recording
from gateway.secretbox import SecretBox
from gateway.store import Store
from test_webhooks import Receiver
from vonage_helpers import VONAGE_NUMBER, FakeVonageSocket, add_vonage_number, signed_headers


@pytest_asyncio.fixture
async def cluster(tmp_path):
    db = await create_database()
    receiver = Receiver()
    await receiver.start()
    world = await twilio_world(db, receiver.url("ok"))
    started = []

    def start(node_id: str, args: tuple[str, ...] = (), **env):
        gw = start_gateway(tmp_path, node_id, db, env={**world.env, **env}, args=args)
        started.append(gw)
        return gw

    clients = []
    start.db = db
    yield start, world, receiver, clients
    for c in clients:
        await c.__aexit__()
    await stop_all(started)
    await world.rest.stop()
    receiver.release.set()
    await receiver.runner.cleanup()
    await drop_database(db)


async def call_live_on_a(cluster, **b_env):
    """node-a and node-b up, a Twilio call answered by node-a with its stream on node-a, in progress."""
    start, world, receiver, clients = cluster
    a, b = start("node-a"), start("node-b", **b_env)
    await a.wait_healthy()
    await b.wait_healthy()
    call_id, call_sid = await world.inbound(a)
    clients.append(await world.stream(a, call_id, call_sid))
    await wait_until(lambda: in_progress_on(b, call_id, "node-a"), 10, "the call to be live on node-a")
    return a, b, call_id, call_sid


async def test_api_on_either_node_reaches_the_call_owner(cluster):
    start, world, receiver, clients = cluster
    a, b, call_id, call_sid = await call_live_on_a(cluster)

    listed = {c["call_id"]: c for c in await live_calls(b)}       # b lists a's call from the call log
    assert listed[call_id]["owner"] == "node-a" and listed[call_id]["node"] == "node-a"
    assert listed[call_id]["frames_in"] is None                   # meters live on the owner
    mine = {c["call_id"]: c for c in await live_calls(a)}
    assert mine[call_id]["owner"] == "node-a" and mine[call_id]["frames_in"] is not None
    async with aiohttp.ClientSession() as s:                      # and so does b's live page
        async with s.ws_connect(b.ws_url("/calls/live/ws"), headers=b.headers) as ws:
            async def pushed():
                msg = await ws.receive_json(timeout=10)
                calls = msg["calls"] if msg["type"] == "snapshot" else [msg.get("call") or {}]
                return next((c for c in calls if c.get("call_id") == call_id), None)
            seen = await wait_until(pushed, 15, "node-b's live page to show node-a's call")
    assert seen["owner"] == "node-a" and seen["status"] == "in-progress"

    # the owner's answer comes back unchanged, errors included
    status, body = await b.api("POST", f"/calls/{call_id}/transfer", {})
    assert status == 400 and body["field"] == "number" and "transfer number" in body["error"]
    status, body = await b.api("POST", f"/calls/{call_id}/transfer", {"number": "not a number"})
    assert status == 400 and body["field"] == "number"            # validated where it arrived

    status, body = await b.api("POST", f"/calls/{call_id}/transfer", {"number": "+14155550199"})
    assert status == 200 and body["status"] == "transfer_requested", body          # carried out by node-a
    dial = [r for r in world.rest.of("POST", f"/Calls/{call_sid}.json") if "<Dial" in (r.one("Twiml") or "")]
    assert dial and "+14155550199" in dial[0].one("Twiml")

    # hold and mute from the other node too (control-bus ops call:hold, call:mute…), carried out by node-a
    status, body = await b.api("POST", f"/calls/{call_id}/hold")
    assert status == 200 and body["status"] == "held" and body["held"] is True, body
    status, body = await b.api("POST", f"/calls/{call_id}/mute")
    assert status == 200 and body["muted"] is True and body["held"] is True, body
    mine = {c["call_id"]: c for c in await live_calls(a)}
    assert mine[call_id]["held"] is True and mine[call_id]["muted"] is True
    for op in ("unhold", "unmute"):
        status, body = await b.api("POST", f"/calls/{call_id}/{op}")
        assert status == 200, body
    assert body["held"] is False and body["muted"] is False

    row = await call_row(b, call_id)
    status, body = await b.api("POST", f"/calls/{row['id']}/hangup")
    assert status == 200, body
    assert body["status"] == "hangup_requested" and body["call_id"] == call_id
    row = await wait_until(lambda: ended_row(b, call_id), 10, "the call to end")
    assert (row["hangup_source"], row["hangup_reason"]) == ("system", "api_hangup")
    completed = [r for r in world.rest.of("POST", f"/Calls/{call_sid}.json") if r.one("Status") == "completed"]
    assert completed, "node-a completed the call at Twilio"
    status, body = await b.api("POST", f"/calls/{call_id}/hangup")
    assert status == 404 and body["field"] == "id"


async def test_stream_on_the_other_node_joins_the_same_call(cluster):
    start, world, receiver, clients = cluster
    a, b = start("node-a"), start("node-b")
    await a.wait_healthy()
    await b.wait_healthy()
    call_id, call_sid = await world.inbound(a)                    # a answered the webhook…
    client = await world.stream(b, call_id, call_sid)             # …the media websocket reached b
    clients.append(client)
    row = await wait_until(lambda: in_progress_on(a, call_id, "node-b"), 10, "node-b to adopt the call")
    assert row["carrier_sid"] == call_sid

    audio = recording()[: 160 * 50]
    await client.play(audio)
    await client.wait_for(lambda: len(client.got.media) >= 45, timeout=10)   # echoed by node-b's engine

    assert [c["owner"] for c in await live_calls(a) if c["call_id"] == call_id] == ["node-b"]
    assert [c["owner"] for c in await live_calls(b) if c["call_id"] == call_id] == ["node-b"]
    status, body = await a.api("GET", "/calls/logs?pagesize=50")
    assert [r["carrier_sid"] for r in body["call_log_data"]].count(call_sid) == 1     # one row, one call

    status, body = await a.api("POST", f"/calls/{call_id}/hangup")          # forwarded to the new owner
    assert status == 200, body
    await wait_until(receiver.done(call_id).is_set, 10, "the post_call webhook")
    # two processes delivered this call's webhooks, each in order: the sequence numbers order them all
    events = sorted(receiver.events(call_id), key=lambda e: e["sequence"])
    names = [e["event"] for e in events]
    assert names[0] == "phone_call:connection_requested" and names[-2:] == ["hang_up", "post_call"]
    assert "phone_call:accepted" in names and "conversation:started" in names
    assert sorted(e["sequence"] for e in events) == list(range(1, len(events) + 1))   # one sequence per call
    assert events[-1]["data"]["call_log"]["owner"] == "node-b"
    assert events[-1]["data"]["call_log"]["hangup_reason"] == "api_hangup"


async def test_survivor_closes_the_calls_of_a_killed_node(cluster):
    start, world, receiver, clients = cluster
    store = Store(start.db)          # the receiver holds every delivery: node-a dies with its outbox full
    await store.open()
    try:
        await store.update_agent(world.agent["id"], {"webhook_url": receiver.url("hang")})
    finally:
        await store.close()
    a, b, call_id, call_sid = await call_live_on_a(cluster)
    await wait_until(lambda: receiver.events(call_id), 10, "node-a's first webhook attempt")
    a.kill9()
    row = await wait_until(lambda: ended_row(b, call_id), STALE + 10, "node-b to close node-a's call")
    assert (row["call_status"], row["hangup_source"], row["hangup_reason"]) == ("completed", "system", "node_lost")
    assert await live_calls(b) == []
    receiver.release.set()
    await wait_until(receiver.done(call_id).is_set, 10, "the post_call webhook")
    names = [e["event"] for e in receiver.events(call_id)]
    # node-b delivered what node-a had queued (its outbox), then the closing webhooks
    assert {"phone_call:accepted", "conversation:started"} <= set(names)
    assert names[-3:] == ["conversation:ended", "hang_up", "post_call"]
    assert receiver.events(call_id)[-2]["data"] == {"source": "system", "reason": "node_lost"}


async def test_api_hangup_of_a_call_whose_owner_is_gone_closes_it(cluster):
    # b will not sweep on its own during this test: the API request finds the owner gone
    a, b, call_id, call_sid = await call_live_on_a(cluster, GATEWAY_HEARTBEAT_INTERVAL="60")
    a.kill9()

    async def gone_from_live():
        return call_id not in {c["call_id"] for c in await live_calls(b)}
    await wait_until(gone_from_live, STALE + 10, "node-a's heartbeat to go stale")
    status, body = await b.api("POST", f"/calls/{call_id}/hangup")
    assert status == 200 and body["status"] == "closed" and body["hangup_reason"] == "node_lost", body
    row = await call_row(b, call_id)
    assert row["ended_at"] and row["hangup_reason"] == "node_lost"


async def two_nodes_with(cluster, add_number, **env):
    """Store a number with `add_number(gw, agent_id=…)` (the nodes' secret key: GATEWAY_SECRET_KEY), then start
    node-a and node-b on it (with `env`); both healthy."""
    start, world, _, _ = cluster
    store = Store(start.db, SecretBox([SECRET_KEY], "tests"))
    await store.open()
    try:
        await add_number(SimpleNamespace(store=store), agent_id=world.agent["id"])
    finally:
        await store.close()
    a, b = start("node-a", **env), start("node-b", **env)
    await a.wait_healthy()
    await b.wait_healthy()
    return a, b


async def test_vonage_socket_on_the_other_node_joins_the_same_call(cluster):
    a, b = await two_nodes_with(cluster, add_vonage_number)

    async def answer(uuid: str) -> dict:
        async with aiohttp.ClientSession() as s:
            async with s.get(a.url("/vonage/answer"), params={"to": VONAGE_NUMBER[1:], "from": "447700900999",
                                                               "uuid": uuid, "conversation_uuid": "CON-1"},
                             headers=signed_headers()) as r:
                assert r.status == 200
                ncco = await r.json()
        endpoint = ncco[0]["endpoint"][0]
        assert endpoint["uri"].startswith(a.ws_url("/vonage/media"))        # the NCCO names node-a
        return endpoint

    async with aiohttp.ClientSession() as session:
        forged = await answer("63f61863-4a51-4f6b-86e1-46edebcf0001")
        sock = FakeVonageSocket(session, forged, gw_url=b.url())
        await sock.connect(headers={**forged["headers"], "gw_token": "not-the-token"})
        assert await sock.wait_closed(10) == 4006                           # a wrong token adopts nothing
        forged_row = await call_row(a, forged["headers"]["call_id"])
        assert forged_row["owner"] == "node-a" and forged_row["ended_at"] is None

        endpoint = await answer("63f61863-4a51-4f6b-86e1-46edebcf0002")
        call_id = endpoint["headers"]["call_id"]
        sock = FakeVonageSocket(session, endpoint, gw_url=b.url())             # the socket reached node-b
        await sock.connect()
        await wait_until(lambda: in_progress_on(a, call_id, "node-b"), 10, "node-b to adopt the Vonage call")
        frame = 640                                                           # 20 ms of L16 at 16 kHz
        await sock.play(recording_pcm16(16000, 1.0), frame)
        await sock.wait_for(lambda rx: len(rx.audio) >= 40 * frame, timeout=10)   # echoed by node-b
        await sock.close()
        row = await wait_until(lambda: ended_row(a, call_id), 10, "the call to end on node-b")
        assert (row["owner"], row["hangup_reason"]) == ("node-b", "caller_hangup")
        status, body = await a.api("GET", "/calls/logs?pagesize=50")
        assert [r["call_uuid"] for r in body["call_log_data"]].count(call_id) == 1


def recording_pcm16(rate: int, seconds: float) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


async def test_exotel_stream_on_the_other_node_joins_the_announced_call(cluster):
    a, b = await two_nodes_with(cluster, add_exophone)
    async with aiohttp.ClientSession() as session:
        async with session.get(a.url("/exotel/call_coming"), params={
                "CallSid": "CA-cluster-1", "CallFrom": "09876543210", "CallTo": "08047491899",
                "gw_token": call_coming_token()}) as r:
            assert r.status == 200
        status, body = await a.api("GET", "/calls/logs?pagesize=5")
        announced = next(c for c in body["call_log_data"] if c["carrier_sid"] == "CA-cluster-1")
        assert announced["owner"] == "node-a"

        auth = {"Authorization": exotel_basic(EXO_KEY, EXO_TOKEN)}
        stranger = await FakeExotel(session, b.ws_url("/exotel/media"), headers={
            "Authorization": exotel_basic(EXO_KEY, "wrong")}).connect()
        await stranger.start("CA-cluster-1")
        assert await stranger.wait_closed(10) == 4006              # bad credentials adopt nothing
        assert (await call_row(a, announced["call_uuid"]))["owner"] == "node-a"

        exo = await FakeExotel(session, b.ws_url("/exotel/media"), headers=auth).connect()
        await exo.start("CA-cluster-1")
        row = await wait_until(lambda: in_progress_on(a, announced["call_uuid"], "node-b"), 10,
                               "node-b to adopt the Exotel call")
        assert row["id"] == announced["id"]
        await exo.play(exotel_tone(0.5))
        await exo.wait_for(lambda rx: rx.chunks, timeout=10)       # echoed by node-b
        await exo.stop()
        await exo.close()
    status, body = await a.api("GET", "/calls/logs?pagesize=50")
    assert [c["carrier_sid"] for c in body["call_log_data"]].count("CA-cluster-1") == 1


async def test_a_number_moved_to_another_agent_on_one_node_is_used_at_once_by_the_other(cluster):
    """node-a has the number cached (it just took a call on it); node-b's API attaches the number to another
    agent. node-b's answer comes once node-a has dropped its copy (control op `store:changed`), so node-a's next
    call already goes to the new agent, not to the old one for the rest of the cache's TTL."""
    start, world, receiver, clients = cluster
    a, b = start("node-a"), start("node-b")
    await a.wait_healthy()
    await b.wait_healthy()
    first, _ = await world.inbound(a)
    assert (await call_row(a, first))["agent_id"] == world.agent["id"]
    status, body = await b.api("POST", "/agents", {"name": "second", "engine": "echo"})
    assert status == 201, body
    second = body["agent"]["id"]
    status, body = await b.api("POST", "/phone_number/attach", {"phone_number_id": world.number["id"],
                                                                "agent_id": second})
    assert status == 200, body
    call_id, _ = await world.inbound(a)
    assert (await call_row(a, call_id))["agent_id"] == second
    assert "cache sync: not confirmed" not in b.log()


async def test_a_rotated_auth_token_on_one_node_is_checked_at_once_by_the_other(cluster):
    """A webhook naming no imported number is checked against every token of its account (the Twilio carrier's
    token list, gateway/store/derived.py). node-a holds that list; the operator rotates the account's auth token
    through node-b; node-a checks the next webhook against the new token at once (`store:changed`), instead of
    refusing it (403) for the rest of the list's 60 s."""
    from gateway.simulate.twilio_stream import post_signed
    start, world, receiver, clients = cluster
    a, b = start("node-a"), start("node-b")
    await a.wait_healthy()
    await b.wait_healthy()

    async def unknown_number_webhook(token: str) -> int:
        status, _ = await post_signed(a.url("/twilio/voice"), {
            "CallSid": world.rest.add_call(world.account), "AccountSid": world.account.sid, "From": "+14155550100",
            "To": "+14155550199", "CallStatus": "ringing", "Direction": "inbound"}, token)
        return status
    assert await unknown_number_webhook(world.account.token) != 403      # node-a reads (and keeps) the tokens
    world.account.token = "rotated-" + world.account.token[8:]           # Twilio's side of the rotation
    status, body = await b.api("PATCH", f"/phone_number/{world.number['id']}",
                               {"account_token": world.account.token})
    assert status == 200, body
    assert await unknown_number_webhook(world.account.token) != 403
    assert "cache sync: not confirmed" not in b.log()
