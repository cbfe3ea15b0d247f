"""Lifecycle webhooks against a real local aiohttp receiver: order per call, retry with backoff, give-up counted
in /metrics, and a hanging receiver never holding up a call's audio."""
from __future__ import annotations

import asyncio
import logging
import struct

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.frames import AudioFrame, HangupSource
from gateway.webhooks import sign, verify
from sipp import metric_value, serve_app
from test_api_fakes import FakeLeg

LIFECYCLE = ["phone_call:connection_requested", "phone_call:accepted", "conversation:started",
             "conversation:ended", "hang_up", "post_call"]


class Receiver:
    """Records every request; behaviour per path: /ok, /slow-first, /flaky (2 failures), /fail, /hang."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.post_calls: dict[str, asyncio.Event] = {}
        self.flaky_failures = 0
        app = web.Application()
        app.router.add_post("/{kind}", self.handle)
        self.runner = web.AppRunner(app)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}?token=secret-token-123"

    def done(self, call_id: str) -> asyncio.Event:
        return self.post_calls.setdefault(call_id, asyncio.Event())

    async def handle(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        raw = await request.read()
        body = await request.json()
        self.requests.append({"kind": kind, "body": body, "headers": dict(request.headers), "raw": raw})
        self.arrived.set()
        if kind == "hang":
            await self.release.wait()
        if kind == "slow-first" and body["sequence"] == 1:
            await asyncio.sleep(0.3)
        if kind == "fail" or (kind == "flaky" and self.flaky_failures < 2):
            if kind == "flaky":
                self.flaky_failures += 1
            return web.Response(status=500, text="nope")
        if body["event"] == "post_call":
            self.done(body["call_id"]).set()
        return web.json_response({"ok": True})

    def events(self, call_id: str, kind: str | None = None) -> list[dict]:
        return [r["body"] for r in self.requests if r["body"]["call_id"] == call_id
                and (kind is None or r["kind"] == kind)]


@pytest_asyncio.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    r.release.set()
    await r.runner.cleanup()


async def start_call(gw, url: str, settings: dict | None = None):
    agent = await gw.store.create_agent({"name": "hooked", "engine": "echo", "webhook_url": url,
                                         "settings": settings or {}})
    call = await gw.calls.create(carrier="test", direction="inbound", from_number="+14155550100",
                                 to_number="+14155550101", agent=agent)
    await call.attach(FakeLeg(), carrier_rate=8000)
    return call


async def test_events_of_a_call_arrive_in_order(make_gateway, receiver):
    gw = await make_gateway(allow_private_webhooks=True)   # the receiver listens on 127.0.0.1
    calls = [await start_call(gw, receiver.url("slow-first")) for _ in range(3)]
    for call in reversed(calls):
        await call.end(HangupSource.USER, "caller_hung_up")
    for call in calls:
        await asyncio.wait_for(receiver.done(call.id).wait(), 10)
        got = receiver.events(call.id)
        assert [e["event"] for e in got] == LIFECYCLE
        assert [e["sequence"] for e in got] == list(range(1, len(LIFECYCLE) + 1))
        assert {e["call_log_id"] for e in got} == {call.log_id}
        assert got[4]["data"] == {"source": "user", "reason": "caller_hung_up"}
        log = got[-1]["data"]["call_log"]
        assert log["call_status"] == "completed" and log["hangup_source"] == "user"
        assert log["call_direction"] == "inbound" and log["from_number"] == "+14155550100"
    heads = receiver.requests[0]["headers"]
    assert heads["Content-Type"] == "application/json" and heads["X-Gateway-Attempt"] == "1"
    assert gw.webhooks.delivered == 3 * len(LIFECYCLE) and gw.webhooks.failures == 0


async def test_held_events_wait_for_the_sequence_of_the_previous_owner(make_gateway, receiver):
    """An adopted call (gateway/callmanager.py) holds its webhooks until the old owner says how many sequence
    numbers it used: nothing is sent before, then everything in order, numbered on from there."""
    gw = await make_gateway(allow_private_webhooks=True)
    agent = await gw.store.create_agent({"name": "hooked", "engine": "echo", "webhook_url": receiver.url("ok")})
    call = await gw.calls.create(carrier="test", direction="inbound", from_number="+14155550100",
                                 to_number="+14155550101", agent=agent)
    await asyncio.wait_for(_until(lambda: len(receiver.events(call.id)) == 1), 10)   # connection_requested
    gw.webhooks.hold(call)
    gw.webhooks.emit(call, "call:first", {"n": 1})
    gw.webhooks.emit(call, "call:second", {"n": 2})
    assert gw.webhooks.held(call.id) == 2
    gw.webhooks.resume_sequence(call, 5)          # the old owner had numbered five
    gw.webhooks.emit(call, "call:third", {"n": 3})
    await asyncio.wait_for(_until(lambda: len(receiver.events(call.id)) == 4), 10)
    got = receiver.events(call.id)[1:]
    assert [(e["event"], e["sequence"]) for e in got] == [("call:first", 6), ("call:second", 7), ("call:third", 8)]
    assert gw.webhooks.held(call.id) == 0


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.02)


async def test_failed_delivery_is_retried(make_gateway, receiver):
    gw = await make_gateway(allow_private_webhooks=True)   # the receiver listens on 127.0.0.1
    gw.webhooks.backoff = 0.01
    call = await start_call(gw, receiver.url("flaky"))
    await call.end(HangupSource.AGENT, "done")
    await asyncio.wait_for(receiver.done(call.id).wait(), 10)
    first = [r for r in receiver.requests if r["body"]["sequence"] == 1]
    assert [r["headers"]["X-Gateway-Attempt"] for r in first] == ["1", "2", "3"]
    assert len({r["headers"]["X-Gateway-Delivery"] for r in first}) == 1   # one id across retries
    delivered = [r["body"]["event"] for r in receiver.requests if r["headers"]["X-Gateway-Attempt"] == "1"]
    assert delivered == LIFECYCLE                                          # still in order after the retries
    assert gw.webhooks.failures == 0 and gw.webhooks.delivered == len(LIFECYCLE)


async def test_give_up_after_retries_counts_failure_and_never_logs_url(make_gateway, receiver, caplog):
    caplog.set_level(logging.DEBUG, logger="gateway.webhooks")
    gw = await make_gateway(allow_private_webhooks=True)   # the receiver listens on 127.0.0.1
    gw.webhooks.backoff, gw.webhooks.retries = 0.01, 3
    call = await start_call(gw, receiver.url("fail"))
    await call.end(HangupSource.USER, "bye")
    await asyncio.wait_for(gw.webhooks.drain(10), 11)
    assert len(receiver.requests) == 3 * len(LIFECYCLE)
    assert gw.webhooks.failures == len(LIFECYCLE) and gw.webhooks.delivered == 0
    async with aiohttp.ClientSession() as s, s.get(gw.url("/metrics")) as r:
        text = await r.text()
    assert metric_value(text, "gateway_webhook_failures_total") == len(LIFECYCLE)
    assert metric_value(text, "gateway_webhooks_delivered_total") == 0
    assert "webhook dropped after retries" in caplog.text
    assert "secret-token-123" not in caplog.text and "/fail" not in caplog.text


def tone_frame(n: int) -> bytes:
    return struct.pack("<160h", *[(1000 if (i // 20) % 2 else -1000) for i in range(160)])


async def test_hanging_receiver_never_delays_audio(make_gateway, receiver):
    gw = await make_gateway(allow_private_webhooks=True)   # the receiver listens on 127.0.0.1
    gw.webhooks.timeout = 30
    call = await start_call(gw, receiver.url("hang"))
    await asyncio.wait_for(receiver.arrived.wait(), 5)   # the first webhook is stuck in the receiver
    assert gw.webhooks.pending >= 3
    frames = 0
    for n in range(50):
        call.feed_audio(tone_frame(n))
        item = await asyncio.wait_for(call.next_outbound(), 1.0)
        frames += isinstance(item, AudioFrame)
    assert frames == 50
    assert len(receiver.requests) == 1                  # nothing else got through meanwhile
    await asyncio.wait_for(call.end(HangupSource.USER, "bye"), 2.0)
    receiver.release.set()
    await asyncio.wait_for(receiver.done(call.id).wait(), 10)
    got = receiver.events(call.id)
    assert [e["sequence"] for e in got] == list(range(1, len(got) + 1))
    # the gateway's VAD may add speech:* events for the tone; the lifecycle stays in order around them
    assert [e["event"] for e in got if not e["event"].startswith("speech:")] == LIFECYCLE


async def test_no_webhook_url_sends_nothing(make_gateway, receiver):
    gw = await make_gateway(allow_private_webhooks=True)   # the receiver listens on 127.0.0.1
    agent = await gw.store.create_agent({"name": "quiet"})
    call = await gw.calls.create(carrier="test", direction="inbound", from_number="+14155550100",
                                 to_number="+14155550101", agent=agent)
    await call.end(HangupSource.USER, "bye")
    await gw.webhooks.drain(1)
    assert receiver.requests == [] and gw.webhooks.pending == 0


@pytest.mark.parametrize("status", [301, 404])
async def test_non_2xx_is_not_success(make_gateway, status):
    """Redirects are not followed and 4xx counts as failure (retried, then given up)."""
    hits = []

    async def handler(request):
        hits.append(request.path)
        raise web.HTTPMovedPermanently("/elsewhere") if status == 301 else web.HTTPNotFound()

    app = web.Application()
    app.router.add_post("/hook", handler)
    app.router.add_post("/elsewhere", handler)
    runner, port = await serve_app(app)
    try:
        gw = await make_gateway(allow_private_webhooks=True)   # the receiver listens on 127.0.0.1
        gw.webhooks.backoff, gw.webhooks.retries = 0.01, 2
        agent = await gw.store.create_agent({"name": "x", "webhook_url": f"http://127.0.0.1:{port}/hook"})
        call = await gw.calls.create(carrier="test", direction="inbound", from_number="+14155550100",
                                     to_number="+14155550101", agent=agent)
        await call.end(HangupSource.USER, "bye")
        await asyncio.wait_for(gw.webhooks.drain(5), 6)
        assert set(hits) == {"/hook"} and gw.webhooks.failures == 3   # connection_requested, hang_up, post_call
    finally:
        await runner.cleanup()


SECRET = "whsec-0123456789abcdef"


async def test_deliveries_are_signed_with_the_agents_secret(make_gateway, receiver):
    gw = await make_gateway(allow_private_webhooks=True)   # the receiver listens on 127.0.0.1
    gw.webhooks.backoff = 0.01
    call = await start_call(gw, receiver.url("flaky"), {"webhook": {"secret": SECRET}})
    await call.end(HangupSource.USER, "bye")
    await asyncio.wait_for(receiver.done(call.id).wait(), 10)
    assert len(receiver.requests) == len(LIFECYCLE) + 2
    for r in receiver.requests:                       # every attempt, retries included
        assert verify(SECRET, r["raw"], r["headers"]["X-Gateway-Signature"])
        assert not verify("another-secret-value", r["raw"], r["headers"]["X-Gateway-Signature"])
        assert not verify(SECRET, r["raw"] + b" ", r["headers"]["X-Gateway-Signature"])


def test_signature_scheme():
    body = b'{"event":"hang_up"}'
    header = sign(SECRET, body, timestamp=1_700_000_000)
    t, v1 = header.split(",")
    assert t == "t=1700000000" and len(v1) == len("v1=") + 64
    assert verify(SECRET, body, header, now=1_700_000_100)
    assert not verify(SECRET, body, header, now=1_700_000_000 + 301)   # replayed too late
    assert not verify(SECRET, body, "garbage")


async def test_unsigned_without_secret(make_gateway, receiver):
    gw = await make_gateway(allow_private_webhooks=True)   # the receiver listens on 127.0.0.1
    call = await start_call(gw, receiver.url("ok"))
    await call.end(HangupSource.USER, "bye")
    await asyncio.wait_for(receiver.done(call.id).wait(), 10)
    assert all("X-Gateway-Signature" not in r["headers"] for r in receiver.requests)
