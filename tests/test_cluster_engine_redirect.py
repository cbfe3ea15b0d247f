"""Accept-mode engines in a cluster: an engine idle on node-b is redirected to node-a, whose call found no engine
of its own (docs/deploy.md, "Accept-mode engines in a cluster"). Real `gateway serve` processes on a fresh
PostgreSQL database, the example engines (examples/engine_client.py, examples/realtime_bridge.py) and a Twilio
Media Stream as the caller."""
from __future__ import annotations

import asyncio
import json
import logging

import pytest

from cluster_env import API_KEY, ended_row, in_progress_on, wait_until
from conftest import load_example
from fakes.realtime_server import RealtimeStandIn
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


async def two_nodes(cluster, engine: str = "accept"):
    """node-a and node-b healthy; the world's agent is served by accept-mode engines (`engine`: of pool
    `default`)."""
    start, world, receiver, clients = cluster
    store = Store(start.db)
    await store.open()
    try:
        await store.update_agent(world.agent["id"], {"engine": engine})     # calls wait for an accepted engine
    finally:
        await store.close()
    a, b = start("node-a"), start("node-b")
    await a.wait_healthy()
    await b.wait_healthy()
    return a, b, world, clients


async def call_redirected_to_a(a, b, world, clients, waiting: EngineLog, serving: EngineLog) -> str:
    """The engine waits on node-b (`waiting`: its accept loop's log); a call with its stream on node-a gets it
    redirected there (`serving`: the log of whoever handles the call). The call's id, once the engine has answered
    a second of the caller."""
    await wait_until(lambda: waiting.count("worker 1 waiting") == 1, 20, "the engine to wait on node-b")
    call_id, call_sid = await world.inbound(a)
    client = await world.stream(a, call_id, call_sid)          # the call and its media are on node-a
    clients.append(client)
    await wait_until(lambda: in_progress_on(b, call_id, "node-a"), 15, "the call to be live on node-a")
    await wait_until(lambda: serving.count(f"call {call_id} ") == 1, 15, "the engine to get `start`")
    assert serving.count("redirected to ws://127.0.0.1:%d/engine/ws" % a.port) == 1
    await client.play(recording()[: 160 * 50])                  # 1 s of the caller…
    await client.wait_for(lambda: len(client.got.media) >= 45, timeout=15)   # …answered by the engine
    return call_id


async def test_idle_engine_on_the_other_node_is_redirected_to_the_call(cluster, example):
    a, b, world, clients = await two_nodes(cluster)
    engine_log = EngineLog()
    logger = logging.getLogger("echo-engine")
    logger.addHandler(engine_log)
    logger.setLevel(logging.DEBUG)
    engine = asyncio.create_task(example.accept_worker(b.ws_url("/engine/ws?pool=default"), API_KEY, 1))
    try:
        call_id = await call_redirected_to_a(a, b, world, clients, engine_log, engine_log)
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


@pytest.fixture(scope="module")
def realtime_bridge():
    """examples/realtime_bridge.py as a module (it runs its accept-mode slots in engine_client.py's loop)."""
    return load_example("realtime_bridge")


async def test_realtime_bridge_follows_a_redirect_to_the_call(cluster, realtime_bridge):
    a, b, world, clients = await two_nodes(cluster, "accept:rt?sample_rate=24000")
    bridge_log, engine_log = EngineLog(), EngineLog()
    loggers = [(logging.getLogger("realtime-bridge"), bridge_log), (logging.getLogger("echo-engine"), engine_log)]
    for logger, handler in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    async with RealtimeStandIn(barge_after=10_000) as model:
        slot = asyncio.create_task(realtime_bridge.accept_worker(b.ws_url("/engine/ws?pool=rt"), API_KEY, model.url))
        try:
            call_id = await call_redirected_to_a(a, b, world, clients, engine_log, bridge_log)
            assert model.appended and all(len(pcm) == 960 for pcm in model.appended)   # 20 ms at 24 kHz

            status, body = await a.api("POST", f"/calls/{call_id}/hangup")
            assert status == 200, body
            await wait_until(lambda: ended_row(b, call_id), 15, "the call to end")
            await wait_until(lambda: engine_log.count("worker 1 waiting") == 3, 15, "the bridge back on node-b")
        finally:
            slot.cancel()
            await asyncio.gather(slot, return_exceptions=True)
            for logger, handler in loggers:
                logger.removeHandler(handler)
