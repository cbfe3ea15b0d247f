"""Two `gateway serve` processes on one PostgreSQL database: a Plivo Audio Stream whose answer XML node-a handed
out but whose socket reached node-b is adopted by node-b once its one-time token matches the hash node-a recorded
(carriers/restcall.py, shared with Telnyx); a wrong token adopts nothing."""
from __future__ import annotations

import re
from html import unescape
from urllib.parse import urlparse

from cluster_env import call_row, ended_row, in_progress_on, wait_until
from conftest import SECRET_KEY
from gateway.secretbox import SecretBox
from gateway.simulate.plivo_stream import PlivoStreamClient, post_signed
from gateway.store import Store
from test_cluster_nodes import cluster  # noqa: F401  (fixture)

PLIVO_NUMBER = "+15005550077"
AUTH_ID = "MA" + "A1" * 9
TOKEN = "plivo-cluster-token"


async def test_plivo_stream_on_the_other_node_is_adopted_with_its_token(cluster):
    start, world, receiver, clients = cluster
    store = Store(start.db, SecretBox([SECRET_KEY], "tests"))      # the nodes' key (GATEWAY_SECRET_KEY)
    await store.open()
    try:
        await store.create_number({"phone_number": PLIVO_NUMBER, "provider": "plivo", "agent_id": world.agent["id"],
                                   "config": {"auth_id": AUTH_ID}}, {"auth_token": TOKEN})
    finally:
        await store.close()
    carriers = {"GATEWAY_CARRIERS": "twilio,vonage,exotel,plivo"}
    a, b = start("node-a", **carriers), start("node-b", **carriers)
    await a.wait_healthy()
    await b.wait_healthy()

    async def answer(call_uuid: str) -> tuple[str, str]:
        status, xml = await post_signed(a.url("/plivo/answer"), {
            "CallUUID": call_uuid, "From": "14155550100", "To": PLIVO_NUMBER[1:], "Direction": "inbound"}, TOKEN)
        assert status == 200, xml
        url = unescape(re.search(r"<Stream[^>]*>([^<]+)</Stream>", xml).group(1))
        assert url.startswith(a.ws_url("/plivo/media"))                       # the XML names node-a
        u = urlparse(url)
        return re.search(r"call_id=([0-9a-f]+)", url).group(1), b.ws_url(f"{u.path}?{u.query}")

    forged_id, forged_url = await answer("c1a0b2c3-0000-4000-8000-000000000001")
    async with PlivoStreamClient(forged_url.replace("token=", "token=x")) as client:
        await client.start("c1a0b2c3-0000-4000-8000-000000000001")
        await wait_until(lambda: client.closed.is_set(), 10, "the forged socket to be closed")
        assert client.close_code == 4006
    row = await call_row(a, forged_id)
    assert row["owner"] == "node-a" and row["ended_at"] is None

    call_uuid = "c1a0b2c3-0000-4000-8000-000000000002"
    call_id, url_on_b = await answer(call_uuid)
    async with PlivoStreamClient(url_on_b) as client:                         # the socket reached node-b
        await client.start(call_uuid)
        await wait_until(lambda: in_progress_on(a, call_id, "node-b"), 10, "node-b to adopt the Plivo call")
        await client.play(b"\xff" * 8000)
        await client.wait_for(lambda: len(client.got.media) >= 40, timeout=10)   # echoed by node-b
    row = await wait_until(lambda: ended_row(a, call_id), 10, "the call to end on node-b")
    assert (row["owner"], row["hangup_reason"]) == ("node-b", "caller_hangup")
