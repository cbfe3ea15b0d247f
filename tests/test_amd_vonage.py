"""Gateway AMD on a Vonage outbound call (16 kHz L16 media websocket): greeting + beep → WAV after the beep →
hangup through Vonage's REST API with hangup_reason voicemail."""
from __future__ import annotations

import aiohttp
import numpy as np

from amd_signals import silence, tone, words, write_wav
from exotel_helpers import CallWatch
from test_vonage_rest import _gw, _post, private_pem, vonage_api  # noqa: F401 (fixtures)
from vonage_helpers import FakeVonageSocket, add_vonage_number, signed_headers

SR = 16000


def has_tone(pcm: bytes, freq: int) -> int:
    """Number of loud 20 ms frames (16 kHz) whose dominant frequency is `freq` (±50 Hz)."""
    n = 0
    for i in range(0, len(pcm) - 639, 640):
        x = np.frombuffer(pcm[i:i + 640], "<i2").astype(float)
        if np.abs(x).mean() >= 500:
            spec = np.abs(np.fft.rfft(x * np.hanning(320), 3200))
            n += abs(spec.argmax() * SR / 3200 - freq) <= 50
    return n


async def test_vonage_outbound_machine_beep_voicemail(make_gateway, vonage_api, auth_headers, private_pem, tmp_path):
    wav = tmp_path / "vm.wav"
    write_wav(wav, tone(700, 800, SR), SR)
    gw = await _gw(make_gateway, vonage_api)
    agent = await gw.store.create_agent({"name": "a", "engine": "echo", "settings": {
        "amd": {"enabled": True}, "voicemail": {"enabled": True, "message": str(wav)}}})
    number = await add_vonage_number(gw, private_pem=private_pem)
    watch = CallWatch(gw)
    status, res = await _post(gw, "/api/v1/calls/dispatch", {"agent_id": agent["id"], "to_number": "+447700900321",
                                                             "from_number_id": number["id"]}, auth_headers)
    assert status == 200, res
    call = await watch.next_call()
    created = (await vonage_api.wait_request("POST", "/v1/calls"))[0]
    ep = created["ncco"][0]["endpoint"][0]
    uuid = call.carrier_sid
    async with aiohttp.ClientSession(headers=signed_headers()) as s:
        for st in ("started", "ringing", "answered"):
            async with s.post(gw.url(f"/vonage/events?call_id={call.id}"), json={"uuid": uuid, "status": st}) as r:
                assert r.status == 204
        v = FakeVonageSocket(s, ep, gw_url=gw.url(""))
        await v.connect()
        await v.play(silence(300, SR) + words([260] * 16, gap_ms=90, sr=SR) + silence(400, SR), 640)
        assert has_tone(v.rx.audio, 700) == 0, "no message during the greeting"
        await v.play(tone(1000, 400, SR) + silence(600, SR), 640)
        hang = await vonage_api.wait_request("PUT", f"/v1/calls/{uuid}", timeout=10)
        row = await watch.wait_ended(call)
        await v.close()
    assert hang == [{"action": "hangup"}]
    assert has_tone(v.rx.audio, 700) >= 30                        # ≈ 800 ms of message before the hangup
    assert row["amd_answered_by"] == "machine_end_beep" and row["voicemail_type"] == "audio"
    assert (row["hangup_source"], row["hangup_reason"]) == ("system", "voicemail")
