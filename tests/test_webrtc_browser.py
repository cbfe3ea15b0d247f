"""A real browser (headless Chromium, fake microphone) calls the echo engine through /call."""
from __future__ import annotations

import asyncio

import aiohttp

from carriers.webrtc import WebRTCCarrier
from conftest import API_KEY
from gateway.engine.echo import EchoEngine
from gateway.frames import Dtmf
from voicecodecs._audioop import audioop
from webrtc_browser import Browser, skip_without_chromium

AUTH = {"Authorization": f"Bearer {API_KEY}"}


class RecordingEcho(EchoEngine):
    """The built-in echo engine, noting the DTMF events it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.digits: list[str] = []

    async def handle_call(self, session) -> None:
        async def receive(**kw):       # (the echo engine passes on_audio: frames may come through it instead)
            item = await original(**kw)
            if isinstance(item, Dtmf):
                self.digits.append(item.digit)
            return item
        original, session.receive = session.receive, receive
        await super().handle_call(session)


async def wait_logged(http, gw, timeout=15.0) -> dict:
    async def loop():
        while True:
            async with http.get(gw.url("/api/v1/calls/logs"), headers=AUTH) as r:
                rows = (await r.json())["call_log_data"]
            if rows and rows[0].get("ended_at"):
                return rows[0]
            await asyncio.sleep(0.1)
    return await asyncio.wait_for(loop(), timeout)


async def test_browser_calls_echo_engine_hears_itself_and_hangs_up(make_gateway):
    skip_without_chromium()
    gw = await make_gateway(carriers={"webrtc": lambda g: WebRTCCarrier(g, host_addresses=["127.0.0.1"])})
    echo = RecordingEcho()
    gw.engines.register("echo", echo)
    async with Browser() as page, aiohttp.ClientSession() as http:
        await page.goto(gw.url("/call"))
        await page.fill("#api-key", API_KEY)
        await page.click("#use-key")
        await page.wait_for_selector("#call:not([disabled])")
        await page.click("#call")
        await page.wait_for_function("window.callState.state === 'connected'")
        # Audio came back: the echo of the fake microphone's beeps adds up in the inbound RTP stats.
        await page.wait_for_function("window.callState.rxEnergy > 0.01", timeout=20000)
        assert gw.calls.active, "call is live on the gateway"
        call = next(iter(gw.calls.active.values()))
        assert call.carrier == "webrtc"
        for _ in range(100):  # under a loaded machine the counters can trail the page's first energy reading
            if call.describe()["frames_in"] > 10:
                break
            await asyncio.sleep(0.05)
        assert call.describe()["frames_in"] > 10
        # the fake microphone beeps once a second with silence between: watch the inbound audio for a beep
        heard = asyncio.Event()
        call.add_tap(lambda pcm: audioop.rms(pcm, 2) > 300 and heard.set())
        await asyncio.wait_for(heard.wait(), 5)

        await page.wait_for_function("window.callState.messages.some(m => m.type === 'call')")
        for key in ("1", "#"):
            await page.click(f"#keypad button:text-is('{key}')")
        for _ in range(100):
            if echo.digits == ["1", "#"]:
                break
            await asyncio.sleep(0.05)
        assert echo.digits == ["1", "#"]

        await page.click("#hangup")
        row = await wait_logged(http, gw)
        assert await page.text_content("#status") == "ended"
    assert row["channel_type"] == "webrtc"
    assert row["hangup_source"] == "user" and row["hangup_reason"] == "browser_hangup"
    assert row["call_status"] == "completed"
    assert not gw.calls.active
