"""Attended transfer in a cluster (two `gateway serve` processes on one PostgreSQL): `consult` sent to the process
that does not own the call reaches the owner over the control bus, and the consultation call's status callback,
received by the other process, is passed to the owner, which gives the caller back to the engine."""
from __future__ import annotations

from cluster_env import call_row, wait_until
from gateway.simulate.twilio_stream import post_signed
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
