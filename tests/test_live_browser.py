"""The live calls page in headless Chromium while a simulated Twilio Media Stream call is up."""
from __future__ import annotations

import asyncio

from conftest import API_KEY
from fakes.twilio_env import CALLER, recording, twilio_env  # noqa: F401  (fixture)
from webrtc_browser import Browser, skip_without_chromium


async def test_live_page_lists_a_twilio_call_shows_meters_and_hangs_it_up(twilio_env):
    skip_without_chromium()
    env = await twilio_env()
    call_id, call_sid, _ = await env.inbound()
    client = env.stream()
    await client.__aenter__()
    player = None
    try:
        await client.start(call_id, call_sid=call_sid, account_sid=env.account.sid, agent_id=str(env.agent["id"]))
        player = asyncio.create_task(client.play(recording() * 20))          # the caller talks, in real time
        async with Browser() as page:
            await page.goto(env.gw.url("/calls/live"))
            await page.fill("#api-key", API_KEY)
            await page.click("#connect")
            row = f"#active tr[data-call-id='{call_id}']"
            await page.wait_for_selector(row)
            cells = await page.eval_on_selector_all(f"{row} td", "tds => tds.map(td => td.textContent)")
            assert cells[1] == "twilio" and cells[2] == "inbound" and cells[3] == CALLER
            # levels and frame counters arrive over the websocket (no polling in the page)
            await page.wait_for_function(
                f"document.querySelector(\"{row} .meter.in div\").style.width !== '0%'"
                f" && document.querySelector(\"{row} .meter.in div\").style.width !== ''")
            await page.wait_for_function(
                f"parseInt(document.querySelector(\"{row}\").children[12].textContent) > 0")

            # transfer: the page asks for the number, calls the REST API, and the pushed update shows it pending
            page.once("dialog", lambda d: asyncio.ensure_future(d.accept("+14155550199")))
            await page.click(f"{row} button.transfer")
            await page.wait_for_function(
                f"document.querySelector(\"{row}\").children[9].textContent.startsWith('+14155550199')")

            await page.click(f"{row} button.hangup")
            await page.wait_for_selector(row, state="detached")
            finished = f"#finished tr[data-call-id='{call_id}']"
            await page.wait_for_selector(finished)
            cells = await page.eval_on_selector_all(f"{finished} td", "tds => tds.map(td => td.textContent)")
            assert cells[1] == "twilio" and cells[7] == "system" and cells[8] == "api_hangup"
        row = await env.wait_row(call_id, lambda r: r.get("ended_at"))
        assert row["hangup_source"] == "system" and not env.gw.calls.active
        assert env.rest.calls[call_sid]["status"] == "completed"        # the gateway told Twilio to hang up
    finally:
        if player is not None:
            player.cancel()
        await client.__aexit__()
