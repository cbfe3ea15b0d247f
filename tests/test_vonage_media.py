"""Vonage answer NCCO and media websocket on real sockets: binary L16 echo at the right frame size, DTMF, notify
(marks), clear, clean close, refusals, signed webhooks."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import jwt
import pytest

from carriers.vonage import CloseCode, VonageCarrier, amd_result
from exotel_helpers import CallWatch, Monologue, tone
from gateway.engine.base import EngineSession, VoiceEngine
from gateway.frames import AnsweredBy, AudioFrame, CallStarted, Dtmf, Hangup, Mark
from sipp import wait_for
from voicecodecs._audioop import audioop
from vonage_helpers import VONAGE_NUMBER, FakeVonageSocket, add_vonage_number, signed_headers


async def answer(gw, **params) -> tuple[int, object]:
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        async with s.get(gw.url("/vonage/answer"), params=params) as r:
            return r.status, await r.json()


async def inbound(gw, uuid: str = "63f61863-4a51-4f6b-86e1-46edebcf9356"):
    status, ncco = await answer(gw, to=VONAGE_NUMBER[1:], **{"from": "447700900999"}, uuid=uuid,
                                conversation_uuid="CON-1")
    assert status == 200
    return ncco


async def test_answer_ncco_shape(make_gateway):
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    agent = await gw.store.create_agent({"name": "a", "engine": "echo", "settings": {}})
    await add_vonage_number(gw, agent_id=agent["id"])
    watch = CallWatch(gw)
    ncco = await inbound(gw)
    call = await watch.next_call()
    assert isinstance(ncco, list) and len(ncco) == 1
    action = ncco[0]
    assert action["action"] == "connect" and action["from"] == VONAGE_NUMBER[1:]
    ep = action["endpoint"][0]
    assert ep["type"] == "websocket" and ep["content-type"] == "audio/l16;rate=16000"
    assert ep["uri"] == f"ws://127.0.0.1:{gw.http_port}/vonage/media?call_id={call.id}"
    assert ep["headers"]["call_id"] == call.id and ep["headers"]["agent_id"] == str(agent["id"])
    assert len(ep["headers"]["gw_token"]) >= 20
    assert len(str(ep["headers"]).encode()) < 512           # Vonage's limit on the headers data
    row = await gw.store.get_call(call.log_id)
    assert row["carrier_sid"] == "63f61863-4a51-4f6b-86e1-46edebcf9356" and row["call_status"] == "ringing"
    assert row["from_number"] == "+447700900999" and row["to_number"] == VONAGE_NUMBER


async def test_answer_rate_8000_and_unknown_number(make_gateway):
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    await add_vonage_number(gw, rate=8000)
    ncco = await inbound(gw)
    assert ncco[0]["endpoint"][0]["content-type"] == "audio/l16;rate=8000"
    status, ncco = await answer(gw, to="447700900111", **{"from": "447700900999"}, uuid="u-unknown-0001")
    assert status == 200 and ncco[0]["action"] == "talk"          # refused: no stream, no call
    assert len(gw.calls.active) == 1


@pytest.mark.parametrize("rate", [16000, 8000])
async def test_binary_l16_echo_frame_sizes(make_gateway, rate):
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    await add_vonage_number(gw, rate=rate)
    watch = CallWatch(gw)
    ncco = await inbound(gw)
    call = await watch.next_call()
    frame = rate // 50 * 2
    sent = tone(1.0, rate)
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        v = FakeVonageSocket(s, ncco[0]["endpoint"][0], gw_url=gw.url(""))
        await v.connect()
        await v.play(sent, frame)
        await v.wait_for(lambda rx: len(rx.audio) >= len(sent) * 0.9, timeout=10)
        assert {len(f) for f in v.rx.frames} == {frame}             # 640 B at 16 kHz, 320 B at 8 kHz, always
        back = v.rx.audio
        assert abs(audioop.rms(back[frame * 10:frame * 40], 2) - audioop.rms(sent[frame * 10:frame * 40], 2)) \
            < 0.2 * audioop.rms(sent, 2)
        assert call.bus.carrier_rate == rate
        await v.close()                                             # Vonage closes cleanly when the caller leaves
        row = await watch.wait_ended(call)
    assert row["hangup_source"] == "user" and row["call_status"] == "completed"


class MarkDtmfEngine(VoiceEngine):
    sample_rate = 16000

    def __init__(self) -> None:
        self.seen: list[object] = []
        self.marked = asyncio.Event()
        self.digit = asyncio.Event()

    async def handle_call(self, session: EngineSession) -> None:
        while (item := await session.receive()) is not None:
            if isinstance(item, AudioFrame):
                continue
            self.seen.append(item)
            if isinstance(item, CallStarted):
                await session.play(tone(0.4, 16000), end_of_utterance=True)
                await session.mark("hello-done")
            elif isinstance(item, Mark):
                self.marked.set()
            elif isinstance(item, Dtmf):
                self.digit.set()
                await session.play(tone(2.0, 16000))
                session.clear()
            elif isinstance(item, Hangup):
                return


async def test_notify_marks_clear_and_dtmf(make_gateway):
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="md")
    engine = MarkDtmfEngine()
    gw.engines.register("md", engine)
    await add_vonage_number(gw)
    watch = CallWatch(gw)
    ncco = await inbound(gw)
    call = await watch.next_call()
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        v = FakeVonageSocket(s, ncco[0]["endpoint"][0], gw_url=gw.url(""))
        await v.connect()
        await v.wait_for(lambda rx: any(n == "hello-done" for n, _ in rx.notifies))
        name, before = v.rx.notifies[0]
        assert before >= int(0.4 * 16000 * 2)                      # the notify followed the 0.4 s greeting
        await asyncio.wait_for(engine.marked.wait(), 5)             # websocket:notify came back as Mark
        await v.dtmf("7", 300)
        await asyncio.wait_for(engine.digit.wait(), 5)
        await v.wait_for(lambda rx: rx.clears)
        assert Dtmf("7", 300) in engine.seen
        await v.close()
        await watch.wait_ended(call)


async def test_refusals_close_codes(make_gateway):
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    await add_vonage_number(gw)
    watch = CallWatch(gw)
    ncco = await inbound(gw)
    call = await watch.next_call()
    ep = ncco[0]["endpoint"][0]
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        v = FakeVonageSocket(s, ep, gw_url=gw.url(""))
        await v.connect(headers={**ep["headers"], "gw_token": "guess"})
        assert await v.wait_closed() == CloseCode.BAD_TOKEN
        v = FakeVonageSocket(s, ep, gw_url=gw.url(""))
        await v.connect(headers={**ep["headers"], "call_id": "nope"})
        assert await v.wait_closed() == CloseCode.UNKNOWN_CALL
        v = FakeVonageSocket(s, ep, gw_url=gw.url(""))
        await v.connect(content_type="audio/pcmu;rate=8000")
        assert await v.wait_closed() == CloseCode.BAD_MEDIA_FORMAT
        ws = await s.ws_connect(gw.url("/vonage/media").replace("http", "ws"))
        await ws.send_bytes(b"\x00" * 640)
        await ws.receive()
        assert ws.close_code == CloseCode.BAD_MESSAGE
        # the real one still gets in, once
        v = FakeVonageSocket(s, ep, gw_url=gw.url(""))
        await v.connect()
        await v.play(tone(0.3, 16000), 640)
        await v.wait_for(lambda rx: rx.frames)
        v2 = FakeVonageSocket(s, ep, gw_url=gw.url(""))
        await v2.connect()
        assert await v2.wait_closed() in (CloseCode.BAD_TOKEN, CloseCode.UNKNOWN_CALL)
        await v.close()
        await watch.wait_ended(call)


async def test_signed_webhooks_required_when_configured(make_gateway):
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    secret = "0123456789abcdef0123456789abcdef"
    await add_vonage_number(gw, signature_secret=secret)
    q = {"to": VONAGE_NUMBER[1:], "from": "447700900999", "uuid": "11111111-2222-4333-8444-555555555555"}
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url("/vonage/answer"), params=q) as r:
            assert r.status == 401
        bad = jwt.encode({"iat": int(time.time()), "api_key": "k"}, "wrong-secret-wrong-secret-wrong!", "HS256")
        async with s.get(gw.url("/vonage/answer"), params=q, headers={"Authorization": f"Bearer {bad}"}) as r:
            assert r.status == 401
        good = jwt.encode({"iat": int(time.time()), "api_key": "k"}, secret, "HS256")
        async with s.get(gw.url("/vonage/answer"), params=q, headers={"Authorization": f"Bearer {good}"}) as r:
            assert r.status == 200 and (await r.json())[0]["action"] == "connect"
        call = next(iter(gw.calls.active.values()))
        body = {"status": "ringing", "uuid": q["uuid"]}
        async with s.post(gw.url(f"/vonage/events?call_id={call.id}"), json=body) as r:
            assert r.status == 401
        async with s.post(gw.url(f"/vonage/events?call_id={call.id}"), json=body,
                          headers={"Authorization": f"Bearer {good}"}) as r:
            assert r.status == 204


async def test_event_webhooks_update_the_call_log(make_gateway):
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    await add_vonage_number(gw)
    watch = CallWatch(gw)
    uuid = "63f61863-4a51-4f6b-86e1-46edebcf9356"
    await inbound(gw, uuid)
    call = await watch.next_call()

    async def event(**body):
        async with aiohttp.ClientSession(headers=signed_headers()) as s:
            async with s.post(gw.url("/vonage/events"), json={"uuid": uuid, **body}) as r:
                assert r.status == 204

    await event(status="started", timestamp="2026-11-23T10:00:00.000Z")
    await event(status="ringing")
    assert (await gw.store.get_call(call.log_id))["call_status"] == "ringing"
    await event(status="busy", detail="busy")                     # never answered: closed as busy
    row = await watch.wait_ended(call)
    assert row["call_status"] == "busy" and row["hangup_source"] == "carrier"
    await event(status="completed", duration="0", price="0")      # late event for an ended call: logged
    row = await gw.store.get_call(call.log_id)
    assert row["extra"]["vonage_event"]["status"] == "completed"
    events = [e["kind"] for e in await gw.store.list_call_events(call.log_id)]
    assert "phone_call:connection_requested" in events and "vonage:event" in events


def test_amd_mapping():
    assert amd_result("human", None, 900).answered_by is AnsweredBy.HUMAN
    assert amd_result("machine", None, 1200).answered_by is AnsweredBy.MACHINE_START
    assert amd_result("machine", "beep_start", 9000).answered_by is AnsweredBy.MACHINE_END_BEEP
    assert amd_result("machine", "beep_timeout", 45000).answered_by is AnsweredBy.MACHINE_END_OTHER
    assert amd_result("answered", None, 0) is None
    assert amd_result("machine", None, 1).source == "vonage"


async def post_event(gw, path: str, **body) -> tuple[int, object]:
    """A signed event webhook: (status, JSON body or None)."""
    async with aiohttp.ClientSession(headers=signed_headers()) as s, s.post(gw.url(path), json=body) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else None)


async def waiting_call(make_gateway, uuid: str = "63f61863-4a51-4f6b-86e1-46edebcf9356"):
    """A gateway with the Vonage number, and the call its answer webhook created (its socket not yet open)."""
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    await add_vonage_number(gw)
    watch = CallWatch(gw)
    await inbound(gw, uuid)
    return gw, watch, await watch.next_call()


async def test_websocket_leg_failure_closes_the_waiting_call(make_gateway):
    gw, watch, call = await waiting_call(make_gateway)
    assert (await post_event(gw, f"/vonage/events?call_id={call.id}&leg=websocket", uuid="ws-leg-1",
                             status="failed"))[0] == 204
    row = await watch.wait_ended(call)
    assert row["hangup_source"] == "carrier" and row["hangup_reason"] == "stream_failed"


async def test_fast_engine_audio_is_paced_to_playback(make_gateway):
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="mono")
    gw.engines.register("mono", Monologue())
    gw.carriers["vonage"].max_ahead = 0.5
    await add_vonage_number(gw)
    watch = CallWatch(gw)
    ncco = await inbound(gw)
    call = await watch.next_call()
    arrivals: list[tuple[float, int]] = []
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        v = FakeVonageSocket(s, ncco[0]["endpoint"][0], gw_url=gw.url(""))
        await v.connect()

        def seen(rx) -> bool:
            if not arrivals or arrivals[-1][1] != len(rx.audio):
                arrivals.append((asyncio.get_running_loop().time(), len(rx.audio)))
            return len(rx.audio) >= 64000
        await v.wait_for(seen, timeout=10)
        await v.close()
        await watch.wait_ended(call)
    t0 = arrivals[0][0]
    for t, total in arrivals:
        assert total / 32000 - (t - t0) <= 0.5 + 0.02 + 0.1, (total, t - t0)
    assert arrivals[-1][0] - t0 >= 2.0 - 0.5 - 0.1


async def test_connect_timeout(make_gateway):
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    gw.carriers["vonage"].connect_timeout = 0.3
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        ws = await s.ws_connect(gw.url("/vonage/media").replace("http", "ws"))
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == CloseCode.CONNECT_TIMEOUT


async def test_event_about_a_call_no_longer_here_reads_its_row_once(make_gateway):
    """A late event about a call this process no longer holds: its row is read once (the number that
    authenticates it, the owner to pass it to, the row that records it), not once per step."""
    uuid = "63f61863-4a51-4f6b-86e1-46edebcf9357"
    gw, watch, call = await waiting_call(make_gateway, uuid)
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        async with s.post(gw.url("/vonage/events"), json={"uuid": uuid, "status": "busy"}) as r:
            assert r.status == 204
    await watch.wait_ended(call)
    await wait_for(lambda: gw.calls.find_by_sid(uuid) is None, 10, what="the call to leave the process")

    reads: list[dict] = []
    find_call = gw.store.find_call

    async def counted(**kw):
        reads.append(kw)
        return await find_call(**kw)
    gw.store.find_call = counted
    assert (await post_event(gw, "/vonage/events", uuid=uuid, status="completed", duration="7"))[0] == 204
    assert reads == [{"carrier_sid": uuid}]
    assert (await gw.store.get_call(call.log_id))["extra"]["vonage_event"]["duration"] == "7"


async def test_event_with_an_unknown_leg_is_refused_naming_it(make_gateway):
    gw, _, call = await waiting_call(make_gateway)
    status, body = await post_event(gw, f"/vonage/events?call_id={call.id}&leg=conversation", uuid="x-1",
                                    status="completed")
    assert status == 400 and body["field"] == "leg", body
    assert not call.ended.is_set()         # the bad event changed nothing
