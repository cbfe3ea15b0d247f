"""Vonage and Exotel callbacks, and Plivo hangups that name no call of ours, reaching a process that does not hold
the call (two `gateway serve` processes on one PostgreSQL database): node-b authenticates them against the call's
number where the carrier signs them and passes them to node-a, the owner, over the control bus
(carriers/forwarding.py); node-a carries them out and its answer (an NCCO, Exotel's 302 / numbers) comes back
through node-b. A forged webhook is refused by node-b and changes nothing."""
from __future__ import annotations

import asyncio
from urllib.parse import urlparse

import aiohttp

from cluster_env import call_row, ended_row, in_progress_on, wait_until
from exotel_helpers import API_KEY as EXO_KEY
from exotel_helpers import API_TOKEN as EXO_TOKEN
from exotel_helpers import FakeExotel, add_exophone, call_coming_token
from exotel_helpers import basic as exotel_basic
from fakes.plivo_rest import FakePlivoRest
from fakes.vonage_rest import FakeVonageApi
from gateway.simulate import plivo_stream
from test_cluster_nodes import cluster, two_nodes_with  # noqa: F401  (fixture)
from test_cluster_webhooks import TARGET, plivo_call_live_on_a
from vonage_helpers import VONAGE_NUMBER, FakeVonageSocket, add_vonage_number, rsa_private_pem, signed_headers

BACKUP = "+14155550177"
FORGED = signed_headers("not-the-number's-signature-secret")


async def test_plivo_hangup_without_call_id_is_matched_by_its_call_uuid(cluster):  # noqa: F811
    """An inbound call's hangup_url is the Plivo application's: no `call_id`, only CallUUID. node-b finds the call
    by it in the call log, checks the signature against its number and node-a ends the call."""
    start, world, receiver, clients = cluster
    rest = await FakePlivoRest().start()
    try:
        async with plivo_call_live_on_a(cluster, rest) as (a, b, call_uuid, call_id, client):
            hangup = {"CallUUID": call_uuid, "HangupCauseName": "Normal Hangup", "Direction": "inbound"}
            status, _ = await plivo_stream.post_signed(b.url("/plivo/hangup"), hangup, "not-the-token")
            assert status == 403
            assert (await call_row(b, call_id))["ended_at"] is None
            status, _ = await plivo_stream.post_signed(b.url("/plivo/hangup"), hangup, rest.auth_token)
            assert status == 200
            row = await wait_until(lambda: ended_row(b, call_id), 10, "node-a to end the call")
            await asyncio.wait_for(client.closed.wait(), 10)
        assert (row["owner"], row["hangup_source"], row["hangup_reason"]) == ("node-a", "user", "caller_hangup")
        assert row["extra"]["plivo_hangup_cause"] == "Normal Hangup"
        # a late repeat, now that the call has ended: authenticated against the row's number, nothing to do
        status, _ = await plivo_stream.post_signed(b.url("/plivo/hangup"), hangup, rest.auth_token)
        assert status == 200
    finally:
        await rest.stop()


async def _vonage_event(node, path: str, body: dict, headers: dict) -> tuple[int, object]:
    async with aiohttp.ClientSession() as s, s.post(node.url(path), json=body, headers=headers) as r:
        return r.status, (await r.json() if r.status == 200 else None)


async def vonage_call_live_on_a(s: aiohttp.ClientSession, a, b, uuid: str):
    """Vonage's answer webhook for call `uuid` on node-a, its media socket opened there, the call in progress
    as node-b reads it: (call id, the socket, the row)."""
    async with s.get(a.url("/vonage/answer"), params={"to": VONAGE_NUMBER[1:], "from": "447700900999",
                                                       "uuid": uuid}, headers=signed_headers()) as r:
        assert r.status == 200
        endpoint = (await r.json())[0]["endpoint"][0]
    call_id = endpoint["headers"]["call_id"]
    sock = FakeVonageSocket(s, endpoint, gw_url=a.url())
    await sock.connect()
    row = await wait_until(lambda: in_progress_on(b, call_id, "node-a"), 10, "the call to be live on node-a")
    return call_id, sock, row


async def test_vonage_transfer_steps_and_events_on_the_other_node_reach_the_owner(cluster):  # noqa: F811
    start, world, receiver, clients = cluster
    pem = rsa_private_pem()
    api = await FakeVonageApi(pem).start()
    try:
        async def number(gw, agent_id):
            await gw.store.update_agent(agent_id, {"settings": {"transfer": {"number": TARGET,
                                                                             "backup_numbers": [BACKUP]}}})
            await add_vonage_number(gw, agent_id=agent_id, private_pem=pem)
        a, b = await two_nodes_with(cluster, number, GATEWAY_VONAGE_API_BASE=api.url)
        uuid = "63f61863-4a51-4f6b-86e1-46edebcf00aa"
        api.register({"inbound": True}, uuid)
        async with aiohttp.ClientSession() as s:
            call_id, sock, _ = await vonage_call_live_on_a(s, a, b, uuid)

            status, body = await b.api("POST", f"/calls/{call_id}/transfer", {"number": TARGET})
            assert status == 200, body                                  # carried out by node-a (REST transfer)
            put = (await api.wait_request("PUT", f"/v1/calls/{uuid}", timeout=10))[0]
            event_url = put["destination"]["ncco"][0]["eventUrl"][0]
            assert event_url.startswith(a.url("/vonage/transfer_event?"))
            await sock.close()          # Vonage drops the websocket leg when the call moves to the transfer NCCO

            # Vonage asks whichever process its balancer picks what to do after the busy target: node-b
            u = urlparse(event_url)
            path = f"{u.path}?{u.query}"
            busy = {"uuid": "leg-0", "status": "busy"}
            assert (await _vonage_event(b, path, busy, FORGED))[0] == 401
            status, ncco = await _vonage_event(b, path, busy, signed_headers())
            assert status == 200 and ncco[0]["endpoint"] == [{"number": BACKUP[1:], "type": "phone"}], ncco
            status, ncco = await _vonage_event(b, path.replace("attempt=0", "attempt=1"),
                                               {"uuid": "leg-1", "status": "timeout"}, signed_headers())
            assert status == 200 and ncco[0]["endpoint"][0]["type"] == "websocket", ncco    # back to the agent
            row = await call_row(b, call_id)
            assert row["owner"] == "node-a" and row["ended_at"] is None and row["transfer_outcome"] == "no-answer"

            # the caller hangs up before the new socket comes: the call's event, on node-b too, ends it on node-a
            completed = {"uuid": uuid, "status": "completed", "duration": "31"}
            assert (await _vonage_event(b, "/vonage/events", completed, FORGED))[0] == 401
            assert (await call_row(b, call_id))["ended_at"] is None
            assert (await _vonage_event(b, "/vonage/events", completed, signed_headers()))[0] == 204
            row = await wait_until(lambda: ended_row(b, call_id), 10, "node-a to end the call")
        assert (row["owner"], row["hangup_source"], row["hangup_reason"]) == ("node-a", "user", "caller_hangup")
        assert row["extra"]["vonage_event"]["duration"] == "31"
    finally:
        await api.stop()


async def test_exotel_transfer_callbacks_on_the_other_node_are_answered_by_the_owner(cluster):  # noqa: F811
    start, world, receiver, clients = cluster
    a, b = await two_nodes_with(cluster, add_exophone)
    sid = "CA-forward-1"
    async with aiohttp.ClientSession() as s:
        async with s.get(a.url("/exotel/call_coming"), params={
                "CallSid": sid, "CallFrom": "09876543210", "CallTo": "08047491899",
                "gw_token": call_coming_token()}) as r:
            assert r.status == 200
        exo = await FakeExotel(s, a.ws_url("/exotel/media"),
                               headers={"Authorization": exotel_basic(EXO_KEY, EXO_TOKEN)}).connect()
        await exo.start(sid)
        row = await wait_until(lambda: _by_sid(b, sid), 10, "the call to be live on node-a")
        call_id = row["call_uuid"]
        await wait_until(lambda: in_progress_on(b, call_id, "node-a"), 10, "the call to be live on node-a")

        status, body = await b.api("POST", f"/calls/{call_id}/transfer", {"number": TARGET})
        assert status == 200, body                       # node-a closes the socket: Exotel's flow moves on
        await exo.wait_closed(10)
        await exo.close()

        async def get(path: str, **params) -> tuple[int, bytes]:
            async with s.get(b.url(path), params=params, allow_redirects=False) as r:
                return r.status, await r.read()

        status, _ = await get("/exotel/should_end_the_call", CallSid=sid, CallStatus="in-progress")
        assert status == 302                             # node-a's answer: the Connect branch
        status, text = await get("/exotel/call_transfer", CallSid=sid)
        assert status == 200 and f'"{TARGET}"' in text.decode(), text
        status, _ = await get("/exotel/should_end_the_call", CallSid=sid, omni_status="call_end",
                              DialWhomNumber=TARGET, DialCallDuration="42")
        assert status == 200
        row = await wait_until(lambda: ended_row(b, call_id), 10, "node-a to end the transferred call")
    assert (row["owner"], row["hangup_reason"], row["transfer_outcome"]) == ("node-a", "call_end", "completed")
    assert row["extra"]["exotel_dial_call_duration"] == "42"


async def _by_sid(node, sid: str) -> dict | None:
    status, body = await node.api("GET", "/calls/logs?pagesize=20")
    return next((c for c in body["call_log_data"] if c["carrier_sid"] == sid), None)


async def test_vonage_webhook_of_an_unknown_kind_is_refused_cleanly(cluster):  # noqa: F811
    """An event URL with a `leg` we never give Vonage is refused on the receiving node (400 naming `leg`), and a
    forwarded webhook of a kind the owner does not know (another version's) gets the owner's 400 naming `kind`,
    not a handler traceback and a 500."""
    from gateway.cluster.control import PgControl
    start, world, receiver, clients = cluster
    a, b = await two_nodes_with(cluster, add_vonage_number)
    uuid = "63f61863-4a51-4f6b-86e1-46edebcf00ab"
    async with aiohttp.ClientSession() as s:
        call_id, sock, row = await vonage_call_live_on_a(s, a, b, uuid)

        status, body = await _vonage_json(b, f"/vonage/events?call_id={call_id}&leg=conversation",
                                          {"uuid": uuid, "status": "completed"})
        assert (status, body["field"]) == (400, "leg"), body

        bus = PgControl(start.db, "test-sender", timeout=30)
        await bus.start()
        try:
            reply = await bus.request(row["owner"], "vonage:webhook", {
                "call": call_id, "kind": "conversation", "params": {"uuid": uuid, "status": "completed"},
                "query": {}})
        finally:
            await bus.stop()
        assert reply is not None and (reply.status, reply.body["field"]) == (400, "kind"), reply
        assert "control handler failed" not in a.log() and "Traceback" not in a.log()
        assert (await call_row(b, call_id))["ended_at"] is None            # neither changed the call
        await sock.close()


async def _vonage_json(node, path: str, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(node.url(path), json=body, headers=signed_headers()) as r:
        return r.status, await r.json(content_type=None)
