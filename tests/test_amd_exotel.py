"""AMD on an Exotel outbound call, end to end over a real Voicebot websocket (Exotel has no AMD of its own).

A loopback Exotel REST fake takes the dispatch; a websocket client speaking Exotel's protocol plays a voicemail
greeting and a beep; the gateway must detect the machine, send the voicemail WAV after the beep and end the call
with hangup_reason voicemail.
"""
from __future__ import annotations

import aiohttp
import numpy as np
import pytest

from amd_signals import silence, tone, words, write_wav
from carriers.exotel import ExotelCarrier
from exotel_helpers import CallWatch, FakeExotel, FakeExotelApi, ws_url
from test_exotel_rest import _post, import_body


@pytest.fixture
async def exotel_api():
    api = await FakeExotelApi().start()
    yield api
    await api.stop()


def dominant(pcm: bytes) -> list[int]:
    """Dominant frequency (100 Hz steps) of each loud 20 ms frame."""
    out = []
    for i in range(0, len(pcm) - 319, 320):
        x = np.frombuffer(pcm[i:i + 320], "<i2").astype(float)
        if np.abs(x).mean() >= 500:
            spec = np.abs(np.fft.rfft(x * np.hanning(160), 1600))
            out.append(int(round(spec.argmax() * 5 / 100) * 100))
    return out


async def test_exotel_outbound_machine_beep_voicemail(make_gateway, exotel_api, auth_headers, tmp_path):
    wav = tmp_path / "vm.wav"
    write_wav(wav, tone(700, 800))
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    gw.carriers["exotel"].base_url = exotel_api.url
    agent = await gw.store.create_agent({"name": "a", "engine": "echo", "settings": {
        "amd": {"enabled": True}, "voicemail": {"enabled": True, "message": str(wav)}}})
    status, body = await _post(gw, "/api/v1/phone_number/import/exotel", import_body(), auth_headers)
    assert status == 201, body
    watch = CallWatch(gw)
    status, body = await _post(gw, "/api/v1/calls/dispatch", {"agent_id": agent["id"], "to_number": "+919876543210",
                                                              "from_number_id": body["phone_number"]["id"]},
                               auth_headers)
    assert status == 200, body
    call = await watch.next_call()
    greeting = silence(300) + words([260] * 16, gap_ms=90) + silence(400)
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw)).connect()
        await exo.start(call.carrier_sid, frm="09876543210", to="08047491899")
        await exo.play(greeting)
        assert 700 not in dominant(exo.rx.audio), "no message during the greeting"
        assert not exo.rx.audio or max(abs(v) for v in np.frombuffer(exo.rx.audio, "<i2")) < 500, \
            "the echo engine's audio is held while AMD decides, then dropped for a machine"
        await exo.play(tone(1000, 400) + silence(600))
        row = await watch.wait_ended(call)
        await exo.close()
    assert dominant(exo.rx.audio).count(700) >= 30
    assert row["amd_answered_by"] == "machine_end_beep" and row["is_voicemail"] and row["voicemail_type"] == "audio"
    assert row["hangup_reason"] == "voicemail" and row["hangup_source"] == "system"
