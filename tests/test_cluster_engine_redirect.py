"""Accept-mode engines in a cluster: an engine idle on node-b is redirected to node-a, whose call found no engine
of its own (docs/deploy.md, "Accept-mode engines in a cluster"). Real `gateway serve` processes on a fresh
PostgreSQL database, the example engine (examples/engine_client.py) and a Twilio Media Stream as the caller."""
from __future__ import annotations

import asyncio
import json
import logging

from cluster_env import API_KEY, ended_row, in_progress_on, wait_until
from fakes.twilio_env import recording
from gateway.store import Store
from test_cluster_nodes import cluster  # noqa: F401  (the fixture: a fresh database and the Twilio world)
from test_engine_example import example  # noqa: F401  (the fixture: examples/engine_client.py as a module)


def test_redirect_message_is_parsed(example):
    url = "ws://10.0.0.7:41234/engine/ws?pool=sales"
    assert example.redirect_target(json.dumps({"type": "redirect", "url": url})) == url
    assert example.redirect_target(json.dumps({"type": "redirect", "url": "wss://gw.example.com/engine/ws"}))
    for bad in (json.dumps({"type": "redirect", "url": "http://10.0.0.7/engine/ws"}),   # not a websocket URL
                json.dumps({"type": "redirect", "url": "ws:///engine/ws"}),              # no host
                json.dumps({"type": "redirect"}), json.dumps({"type": "redirect", "url": 7}),
                json.dumps({"type": "start", "url": url}), json.dumps(["redirect", url]), "not json",
                json.dumps({"type": "redirect", "url": url}).encode()):                   # binary is audio
        assert example.redirect_target(bad) is None, bad


class EngineLog(logging.Handler):
    """What the example engine logged (its logger `echo-engine`)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def count(self, prefix: str) -> int:
        return sum(line.startswith(prefix) for line in self.lines)


async def two_nodes(cluster):
    """node-a and node-b healthy; the world's agent is served by accept-mode engines of pool `default`."""
    start, world, receiver, clients = cluster
    store = Store(start.db)
    await store.open()
    try:
        await store.update_agent(world.agent["id"], {"engine": "accept"})     # calls wait for an accepted engine
    finally:
        await store.close()
    a, b = start("node-a"), start("node-b")
    await a.wait_healthy()
    await b.wait_healthy()
    return a, b, world, clients


async def test_idle_engine_on_the_other_node_is_redirected_to_the_call(cluster, example):
    a, b, world, clients = await two_nodes(cluster)
    engine_log = EngineLog()
    logger = logging.getLogger("echo-engine")
    logger.addHandler(engine_log)
    logger.setLevel(logging.DEBUG)
    engine = asyncio.create_task(example.accept_worker(b.ws_url("/engine/ws?pool=default"), API_KEY, 1))
    try:
        await wait_until(lambda: engine_log.count("worker 1 waiting") == 1, 20, "the engine to wait on node-b")
        call_id, call_sid = await world.inbound(a)
        client = await world.stream(a, call_id, call_sid)          # the call and its media are on node-a
        clients.append(client)
        await wait_until(lambda: in_progress_on(b, call_id, "node-a"), 15, "the call to be live on node-a")
        await wait_until(lambda: engine_log.count(f"call {call_id} ") == 1, 15, "the engine to get `start`")
        assert engine_log.count("redirected to ws://127.0.0.1:%d/engine/ws" % a.port) == 1

        await client.play(recording()[: 160 * 50])                  # 1 s of the caller
        await client.wait_for(lambda: len(client.got.media) >= 45, timeout=15)   # echoed by the engine

        status, body = await a.api("POST", f"/calls/{call_id}/hangup")
        assert status == 200, body
        row = await wait_until(lambda: ended_row(b, call_id), 15, "the call to end")
        assert (row["owner"], row["hangup_source"], row["hangup_reason"]) == ("node-a", "system", "api_hangup")
        await wait_until(lambda: engine_log.count("call ended by system: api_hangup") == 1, 15,
                         "the engine to be told the call ended")
        # afterwards the engine offers itself at its configured URL (node-b) again
        await wait_until(lambda: engine_log.count("worker 1 waiting") == 3, 15, "the engine to wait again")
    finally:
        engine.cancel()
        await asyncio.gather(engine, return_exceptions=True)
        logger.removeHandler(engine_log)


async def test_no_engine_anywhere_still_ends_the_call_unavailable(cluster):
    a, b, world, clients = await two_nodes(cluster)
    call_id, call_sid = await world.inbound(a)
    clients.append(await world.stream(a, call_id, call_sid))
    row = await wait_until(lambda: ended_row(b, call_id), 20, "the call to end without an engine")
    assert (row["hangup_source"], row["hangup_reason"]) == ("agent", "engine_unavailable")
