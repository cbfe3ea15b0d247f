"""The row's owner decides who may end a call (docs/deploy.md, "Ownership of a call"), not a process's memory.

A process that answered a Twilio webhook holds a pending call until its media stream arrives. When the stream
reaches another process, that one adopts the call with a conditional UPDATE of `calls.owner` and then tells the
old owner `released` over the control bus. Until that NOTIFY arrives (a few milliseconds; for ever when the old
owner's bus connection was reconnecting: NOTIFY is not stored) the old owner still lists the call as its own. Its
drain timeout used to hang up everything it listed with reason `shutdown`: the adopted call's row was closed and
Twilio was told to complete the call (REST `Status=completed`), under the process that now carried it. A real
`gateway serve` on a fresh PostgreSQL database; the adopter's half is its very UPDATE (`Store.claim_call`),
whose `released` never comes: the widest form of the window.
"""
from __future__ import annotations

from datetime import datetime

from cluster_env import wait_until
from gateway.store import Store
from test_cluster_nodes import cluster  # noqa: F401  (fixture)


def completions(world, call_sid: str) -> list:
    return [r for r in world.rest.of("POST", f"/Calls/{call_sid}.json") if r.one("Status") == "completed"]


async def test_drain_timeout_hangs_up_only_the_calls_the_process_still_owns(cluster):  # noqa: F811
    start, world, receiver, _ = cluster
    a = start("node-a")
    await a.wait_healthy()
    moved_id, moved_sid = await world.inbound(a)         # both pending on node-a: no stream yet
    kept_id, kept_sid = await world.inbound(a)
    store = Store(start.db)
    await store.open()
    try:
        moved = await store.find_call(call_uuid=moved_id)
        assert moved is not None and moved["owner"] == "node-a"
        # another process adopts it (CallManager.adopt's conditional UPDATE); its `released` has not arrived
        assert await store.claim_call(moved["id"], "node-a", "node-b")

        status, body = await a.api("POST", "/nodes/node-a/drain", {"timeout": 0})
        assert status == 202, body
        await wait_until(lambda: a.proc.poll() is not None, 60, "node-a to finish its drain and exit")
        assert a.proc.returncode == 0, a.log()

        kept = await store.find_call(call_uuid=kept_id)
        assert kept is not None and kept["ended_at"] is not None, kept
        assert (kept["hangup_source"], kept["hangup_reason"]) == ("system", "shutdown")
        assert completions(world, kept_sid), "node-a completes the call it still owned at Twilio"
        assert "hang_up" in [e["event"] for e in receiver.events(kept_id)]     # flushed before the exit

        moved = await store.find_call(call_uuid=moved_id)
        assert moved is not None
        assert moved["ended_at"] is None and moved["owner"] == "node-b", moved     # still live on its adopter
        assert moved["hangup_reason"] is None and moved["call_status"] != "completed"
        assert completions(world, moved_sid) == []                                  # Twilio kept the call up
        assert "hang_up" not in [e["event"] for e in receiver.events(moved_id)]
    finally:
        await store.close()


async def test_an_api_hangup_reaching_the_old_owner_follows_the_row(cluster):  # noqa: F811
    """The API on the old owner finds the call still listed there: it must not answer `hangup_requested` for a
    call it no longer holds (nor complete it at Twilio); the op follows the row to the process that owns it."""
    start, world, receiver, _ = cluster
    a, b = start("node-a"), start("node-b")
    await a.wait_healthy()
    await b.wait_healthy()
    call_id, call_sid = await world.inbound(a)                # pending on node-a
    store = Store(start.db)
    await store.open()
    try:
        row = await store.find_call(call_uuid=call_id)
        assert row is not None and await store.claim_call(row["id"], "node-a", "node-b")   # node-b's adoption
        status, body = await a.api("POST", f"/calls/{call_id}/hangup")
        # node-b was asked (the row names it); it holds no such call in this test, so the answer is a 404 naming
        # the call, where node-a used to answer 200 `hangup_requested` for a call that went on elsewhere
        assert status == 404 and body["field"] == "id", body
        row = await store.find_call(call_uuid=call_id)
        assert row is not None and row["ended_at"] is None and row["owner"] == "node-b", row
        assert completions(world, call_sid) == []
        assert call_id not in {c["call_id"] for c in (await a.api("GET", "/calls/live"))[1]["calls"]
                               if c["owner"] == "node-a"}       # node-a let it go
    finally:
        await store.close()


async def test_an_open_row_no_live_call_holds_is_closed_by_its_owner(cluster):  # noqa: F811
    """A row whose call ended in memory but whose end never reached the database (a call-log batch lost while
    PostgreSQL was away) stayed `in-progress` for as long as its owner ran, and for good once it stopped cleanly.
    The owner now closes such a row (`call_lost`) once it has missed it at two heartbeats; a live call just as old
    is left alone."""
    start, world, receiver, _ = cluster
    a = start("node-a")
    await a.wait_healthy()
    live_id, _ = await world.inbound(a)                  # a pending call node-a holds
    store = Store(start.db)
    await store.open()
    try:
        live = await store.find_call(call_uuid=live_id)
        assert live is not None
        ghost = await store.create_call({**{k: live[k] for k in ("agent_id", "phone_number_id", "channel_type",
                                                                 "call_direction", "from_number", "to_number")},
                                         "call_uuid": "0" * 32, "owner": "node-a", "call_status": "in-progress",
                                         "created_at": datetime.fromisoformat(live["created_at"])})

        async def closed():
            row = await store.find_call(call_uuid=ghost["call_uuid"])
            return row if row and row["ended_at"] else None
        row = await wait_until(closed, 60, "node-a to close the row it holds no call for")
        assert (row["call_status"], row["hangup_source"], row["hangup_reason"]) == ("failed", "system", "call_lost")
        live = await store.find_call(call_uuid=live_id)
        assert live is not None and live["ended_at"] is None              # as old, but held: untouched
    finally:
        await store.close()
    await wait_until(receiver.done(ghost["call_uuid"]).is_set, 20, "the closed row's post_call webhook")
