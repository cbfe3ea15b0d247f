"""Agent API refuses AMD / voicemail settings the gateway could not act on, with a message naming the field."""
from __future__ import annotations

import aiohttp

from amd_signals import tone, write_wav


async def _post(gw, body, headers):
    async with aiohttp.ClientSession(headers=headers) as s, s.post(gw.url("/api/v1/agents"), json=body) as r:
        return r.status, await r.json()


async def test_agent_amd_settings_are_validated(make_gateway, auth_headers, tmp_path):
    gw = await make_gateway()
    wav = tmp_path / "vm.wav"
    write_wav(wav, tone(700, 300))
    ok = {"name": "a", "settings": {"amd": {"enabled": True, "params": {"greeting": 1800, "beep": False}},
                                    "voicemail": {"enabled": True, "message": str(wav)}}}
    status, body = await _post(gw, ok, auth_headers)
    assert status in (200, 201), body

    status, body = await _post(gw, {"name": "b", "settings": {"amd": {"enabled": True, "params": {"greting": 1}}}},
                               auth_headers)
    assert status == 400 and "settings.amd.params" in str(body) and "greting" in str(body)

    status, body = await _post(gw, {"name": "c", "settings": {"amd": {"params": {"greeting": "long"}}}},
                               auth_headers)
    assert status == 400 and "greeting must be an integer" in str(body)

    status, body = await _post(gw, {"name": "d", "settings": {"voicemail": {
        "enabled": True, "message": str(tmp_path / "missing.wav")}}}, auth_headers)
    assert status == 400 and "settings.voicemail.message" in str(body) and "cannot be read" in str(body)

    status, body = await _post(gw, {"name": "e", "settings": {"voicemail": {
        "enabled": True, "message": "Hi, please call us back."}}}, auth_headers)
    assert status in (200, 201), body                       # text: handed to the engine, nothing to check here
