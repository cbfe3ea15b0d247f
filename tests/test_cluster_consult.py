"""Attended transfer in a cluster (two `gateway serve` processes, or one with `--workers 2`, on one PostgreSQL):
`consult` sent to the process that does not own the call reaches the owner over the control bus, the consultation
call's status callback received by the other process is passed to the owner, which gives the caller back to the
engine, and the target's media stream reaching the other worker is relayed to the owner."""
from __future__ import annotations

import re

import aiohttp

from cluster_env import API_KEY, call_row, direct_urls, ended_row, in_progress_on, wait_until
from fakes.twilio_env import CALLER, NUMBER, recording
from gateway.simulate.twilio_stream import TwilioStreamClient, post_signed, sign
from test_cluster_nodes import call_live_on_a, cluster  # noqa: F401  (fixture)

TARGET = "+14155550166"


async def test_consult_and_its_status_callback_reach_the_owner(cluster):  # noqa: F811
    start, world, receiver, clients = cluster
    a, b, call_id, call_sid = await call_live_on_a(cluster)

    status, body = await b.api("POST", f"/calls/{call_id}/consult", {"number": TARGET})
    assert status == 200 and body["status"] == "consult_dialing", body          # carried out by node-a
    created = [r for r in world.rest.of("POST", "/Calls.json") if r.one("To") == TARGET]
    assert created and f'<Parameter name="call_id" value="{call_id}" />' in created[0].one("Twiml")
    hold = [r for r in world.rest.of("POST", f"/Calls/{call_sid}.json") if "<Conference" in (r.one("Twiml") or "")]
    assert hold and f">gw-{call_id}</Conference>" in hold[0].one("Twiml")
    target_sid = list(world.rest.calls)[-1]

    status, body = await b.api("POST", f"/calls/{call_id}/consult", {"number": TARGET})
    assert status == 409 and "already in progress" in body["error"]              # node-a's answer, unchanged

    # Twilio posts the target's status (busy) to whichever process its balancer picks: here node-b
    status, _ = await post_signed(b.url(f"/twilio/consult_status?call_id={call_id}"), {
        "CallSid": target_sid, "AccountSid": world.account.sid, "CallStatus": "busy"}, world.account.token)
    assert status == 200

    async def caller_back() -> bool:
        updates = world.rest.of("POST", f"/Calls/{call_sid}.json")
        return any("<Connect>" in (r.one("Twiml") or "") for r in updates)
    await wait_until(caller_back, 10, "node-a to take the caller off hold (<Connect><Stream> again)")

    async def failed() -> dict | None:
        row = await call_row(a, call_id)
        consult = ((row or {}).get("extra") or {}).get("consult") or {}
        return row if consult.get("state") == "failed" else None
    row = await wait_until(failed, 10, "the consultation to be logged failed")
    assert row["extra"]["consult"]["reason"] == "busy" and row["ended_at"] is None


async def test_consult_target_stream_on_the_other_worker_is_relayed_to_the_owner(cluster):  # noqa: F811
    """`--workers 2` on one HTTP port: the call and its engine are on worker 1; the consultation target's media
    stream reaches worker 2, which carries it to worker 1 (carriers/streamrelay.py): the engine talks to the
    target through it, and completing the transfer works as on one process."""
    start, world, receiver, clients = cluster
    node = start("node-w", args=("--workers", "2"))
    # start-up took over 60 s on a box at load 35: the bound only stops a node that never comes up
    urls = await wait_until(lambda: direct_urls(start.db, {"node-w.1", "node-w.2"}), 180, "both workers up")
    w1, w2 = urls["node-w.1"], urls["node-w.2"]

    call_sid = world.rest.add_call(world.account)
    status, body = await post_signed(f"{w1}/twilio/voice", {                    # worker 1 answers the webhook…
        "CallSid": call_sid, "AccountSid": world.account.sid, "From": CALLER, "To": NUMBER,
        "CallStatus": "ringing", "Direction": "inbound"}, world.account.token, signed_url=node.url("/twilio/voice"))
    assert status == 200, body
    call_id = re.search(r'<Parameter name="call_id" value="([0-9a-f]+)"', body).group(1)
    signature = {"X-Twilio-Signature": sign(world.account.token, node.ws_url("/twilio/media"))}
    caller = TwilioStreamClient(w1.replace("http://", "ws://") + "/twilio/media", headers=signature)
    clients.append(await caller.__aenter__())
    await caller.start(call_id, call_sid=call_sid, account_sid=world.account.sid)   # …and holds the caller's media
    await wait_until(lambda: in_progress_on(node, call_id, "node-w.1"), 15, "the call to be live on worker 1")

    status, body = await node.api("POST", f"/calls/{call_id}/consult", {"number": TARGET})
    assert status == 200 and body["status"] == "consult_dialing", body
    target_sid = list(world.rest.calls)[-1]

    # the target answers; its stream reaches worker 2. A forged upgrade is refused there, before any relay
    forged = TwilioStreamClient(w2.replace("http://", "ws://") + "/twilio/media",
                                headers={"X-Twilio-Signature": sign("not-the-token", node.ws_url("/twilio/media"))})
    clients.append(await forged.__aenter__())
    await forged.start(call_id, call_sid=target_sid, account_sid=world.account.sid)
    await wait_until(lambda: forged.closed.is_set(), 10, "the forged stream to be closed")
    assert forged.close_code == 4006
    target = TwilioStreamClient(w2.replace("http://", "ws://") + "/twilio/media", headers=signature)
    clients.append(await target.__aenter__())
    await target.start(call_id, call_sid=target_sid, account_sid=world.account.sid)

    async def answered() -> dict | None:
        row = await call_row(node, call_id)
        return row if ((row or {}).get("extra") or {}).get("consult", {}).get("state") == "answered" else None
    row = await wait_until(answered, 15, "worker 1 to take the relayed target stream as the consultation's")
    assert row["owner"] == "node-w.1"                       # the call did not move
    await target.play(recording()[: 160 * 50])               # the engine (echo, on worker 1) answers the target
    await target.wait_for(lambda: len(target.got.media) >= 45, timeout=15)

    # worker 2 drained meanwhile (a rolling restart of that worker) holds no call, but it carries the target's
    # stream: it waits for the relay as for a live call instead of exiting under the consultation
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        async with http.post(f"{w2}/api/v1/nodes/node-w.2/drain") as r:
            assert r.status == 202, await r.text()

    async def w2_draining() -> bool:
        async with aiohttp.ClientSession() as http, http.get(f"{w2}/healthz") as r:
            return r.status == 503 and (await r.json())["status"] == "draining"
    await wait_until(w2_draining, 15, "worker 2 to drain")
    before = len(target.got.media)
    await target.play(recording()[: 160 * 100])
    await target.wait_for(lambda: len(target.got.media) >= before + 90, timeout=15)
    assert not target.closed.is_set() and await w2_draining()      # still relaying, still there

    status, body = await node.api("POST", f"/calls/{call_id}/consult/complete")
    assert status == 200, body
    joined = [r for r in world.rest.of("POST", f"/Calls/{target_sid}.json") if "<Conference" in (r.one("Twiml") or "")]
    assert joined and 'startConferenceOnEnter="true"' in joined[0].one("Twiml")
    row = await wait_until(lambda: ended_row(node, call_id), 15, "the transferred call to end")
    assert row["owner"] == "node-w.1" and row["hangup_reason"].startswith(f"transferred to {TARGET}")
