"""A drain that times out while Twilio runs a transfer's <Dial> leaves the call to Twilio (docs/deploy.md,
"Graceful drain"): the caller may be talking to the human already, and the gateway used to complete the call over
REST under that conversation (hang-up reason `shutdown`). A real `gateway serve` on PostgreSQL with the fake Twilio
REST API; the Media Stream played by a websocket client."""
from __future__ import annotations

from cluster_env import in_progress_on, wait_until
from gateway.store import Store
from test_cluster_nodes import cluster  # noqa: F401  (fixture)


async def test_drain_timeout_during_a_transfer_leaves_the_call_to_twilio(cluster):  # noqa: F811
    start, world, receiver, clients = cluster
    a = start("node-a")
    await a.wait_healthy()
    call_id, call_sid = await world.inbound(a)
    clients.append(await world.stream(a, call_id, call_sid))
    await wait_until(lambda: in_progress_on(a, call_id, "node-a"), 10, "the call to be live on node-a")
    status, body = await a.api("POST", f"/calls/{call_id}/transfer", {"number": "+14155550199"})
    assert status == 200 and body["status"] == "transfer_requested", body
    assert [r for r in world.rest.of("POST", f"/Calls/{call_sid}.json") if "<Dial" in (r.one("Twiml") or "")]

    status, body = await a.api("POST", "/nodes/node-a/drain", {"timeout": 0})
    assert status == 202, body
    await wait_until(lambda: a.proc.poll() is not None, 60, "node-a to finish its drain and exit")
    assert a.proc.returncode == 0, a.log()
    assert [r.one("Status") for r in world.rest.of("POST", f"/Calls/{call_sid}.json") if r.one("Status")] == []
    store = Store(start.db)
    await store.open()
    try:
        row = await store.find_call(call_uuid=call_id)
    finally:
        await store.close()
    assert row is not None and row["ended_at"] is not None
    assert (row["hangup_source"], row["hangup_reason"], row["transfer_outcome"]) == ("system", "shutdown", "unknown")
