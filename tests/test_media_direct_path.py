"""Exotel and Vonage media sockets on the direct path (carriers/wsdirect.py) with real websocket clients speaking
each carrier's published protocol: once a stream is live its messages are handled where aiohttp parses them (the
handlers are installed), and what the handlers refuse mid-stream still becomes the carrier's close code; Vonage's
binary L16 audio is carried across frames of odd length; nothing is lost or reordered on the way."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from carriers.exotel import CloseCode as ExotelCode
from carriers.exotel import ExotelCarrier
from carriers.vonage import CloseCode as VonageCode
from carriers.vonage import VonageCarrier
from direct_path import on_direct_path
from exotel_helpers import CallWatch, FakeExotel, add_exophone, tone, ws_url
from test_vonage_media import inbound
from vonage_helpers import FakeVonageSocket, add_vonage_number, signed_headers


async def wait_until(pred, timeout: float = 10.0) -> None:
    async def loop() -> None:
        while not pred():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(loop(), timeout)


# -- Exotel ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, code", [
    (b"\x00\x01", ExotelCode.BINARY_FRAME),                                     # the protocol is JSON text only
    ("not json", ExotelCode.BAD_MESSAGE),
    (json.dumps({"event": "media", "media": {"payload": "%%%"}}), ExotelCode.BAD_MESSAGE),
    (json.dumps({"event": "transcript"}), ExotelCode.UNKNOWN_EVENT),
    (json.dumps({"event": "start", "start": {}}), ExotelCode.BAD_MESSAGE),      # a second start
])
async def test_exotel_live_stream_is_direct_and_mid_stream_errors_keep_their_close_codes(make_gateway, bad, code):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    await add_exophone(gw)
    watch = CallWatch(gw)
    carrier = gw.carriers["exotel"]
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw)).connect()
        await exo.start("CA-direct")
        call = await watch.next_call()
        await exo.play(tone(0.5, 8000), 8000)
        await exo.wait_for(lambda rx: len(rx.audio) >= 3200, timeout=10)     # echoed: the stream is live
        stream = carrier._calls["CA-direct"].stream
        assert stream is not None and on_direct_path(stream.ws)
        frames_in = call.bus.counters.frames_in
        assert frames_in >= 20                                               # 0.5 s of 20 ms frames reached the call
        if isinstance(bad, bytes):
            await exo.conn.send_bytes(bad)
        else:
            await exo.conn.send_str(bad)
        assert await exo.wait_closed() == code
        row = await watch.wait_ended(call)
        await exo.close()
    assert row["hangup_source"] == "carrier" and row["hangup_reason"].startswith("stream_error")


async def test_exotel_messages_queued_before_the_handlers_are_handled_first_and_in_order(make_gateway):
    """`start`, media, a digit and `stop` sent in one burst: what was queued while the start was claimed is read
    with receive(), the rest by the handlers, in the order Exotel sent it (the stop last: the caller hung up)."""
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    await add_exophone(gw)
    watch = CallWatch(gw)
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw)).connect()
        await exo.start("CA-burst")
        await exo.play(tone(0.4, 8000), 8000, pace=0)
        await exo.dtmf("7")
        await exo.stop()
        call = await watch.next_call()
        row = await watch.wait_ended(call)
        frames_in = call.bus.counters.frames_in
        await exo.close()
    assert frames_in == 20                  # 0.4 s of 8 kHz audio: every 20 ms frame arrived before the stop
    assert row["hangup_source"] == "user" and row["call_status"] == "completed"


# -- Vonage ---------------------------------------------------------------------------------------------------------
async def _vonage_live(gw, s: aiohttp.ClientSession):
    """An inbound Vonage call whose media socket is live (its first echo came back) and on the direct path."""
    watch = CallWatch(gw)
    ncco = await inbound(gw)
    call = await watch.next_call()
    v = FakeVonageSocket(s, ncco[0]["endpoint"][0], gw_url=gw.url(""))
    await v.connect()
    await v.play(tone(0.2, 16000), 640)
    await v.wait_for(lambda rx: rx.frames, timeout=10)
    stream = gw.carriers["vonage"].states[call.id].stream
    assert stream is not None and on_direct_path(stream.ws)
    return watch, call, v


async def test_vonage_binary_audio_of_odd_lengths_is_carried_whole_on_the_direct_path(make_gateway):
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    await add_vonage_number(gw)
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        watch, call, v = await _vonage_live(gw, s)
        before = call.bus.counters.frames_in
        sent = tone(1.0, 16000)
        # 1 s of 16 kHz L16 cut at odd byte counts: 641 + 639 + 641 + … (a sample split across two messages)
        cuts, off, odd = [], 0, True
        while off < len(sent):
            n = 641 if odd else 639
            cuts.append(sent[off:off + n])
            off, odd = off + n, not odd
        for i, piece in enumerate(cuts):
            await v.conn.send_bytes(piece)
            if i % 5 == 4:
                await asyncio.sleep(0.01)
        await wait_until(lambda: call.bus.counters.frames_in - before >= 50)
        await v.wait_for(lambda rx: len(rx.audio) >= (len(sent) + 6400) * 0.9, timeout=10)
        assert {len(f) for f in v.rx.frames} == {640}        # Vonage's 20 ms frame, always
        await v.close()
        row = await watch.wait_ended(call)
    assert call.bus.counters.frames_in - before == 50       # every sample arrived, split or not
    assert row["hangup_source"] == "user"


async def test_vonage_text_that_is_not_json_mid_stream_closes_with_bad_message(make_gateway):
    gw = await make_gateway(carriers={"vonage": VonageCarrier}, engine="echo")
    await add_vonage_number(gw)
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        watch, call, v = await _vonage_live(gw, s)
        await v.dtmf("5")                                     # a well-formed text message is fine
        await v.conn.send_str("{not json")
        assert await v.wait_closed() == VonageCode.BAD_MESSAGE
        await v.close()
