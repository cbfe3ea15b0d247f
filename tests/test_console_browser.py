"""The web console (`/console`) in headless Chromium against a real gateway: import a SIP trunk through the form and
test its connection against SIPp, attach/detach and delete behind confirmations, edit an agent and read the PATCH
back from the API, filter the call history and open a call's details; at a phone-sized viewport too. Every
request the browser made is checked: the API key is never in a URL."""
from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conftest import API_KEY
from fakes.twilio_env import twilio_env  # noqa: F401  (fixture)
from sipp import api, needs_sipp, rtp_range, sip_number, sipp_uac, sipp_uas, wait_for
from webrtc_browser import TIMEOUT_MS, Browser, expect, skip_without_chromium

pytestmark = pytest.mark.timeout(120)

CREDS = ["-key", "user", "gwuser", "-key", "pass", "s3cret"]


class Watch:
    """Every URL the page requested (HTTP and websockets) and every dialog it opened (answered as told)."""

    def __init__(self, page: Any) -> None:
        self.urls: list[str] = []
        self.dialogs: list[str] = []
        self.answers: list[bool] = []
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("websocket", lambda ws: self.urls.append(ws.url))
        page.on("dialog", self._dialog)

    def _dialog(self, d: Any) -> None:
        self.dialogs.append(d.message)
        accept = self.answers.pop(0) if self.answers else False
        asyncio.ensure_future(d.accept() if accept else d.dismiss())

    def assert_no_key_in_urls(self) -> None:
        assert self.urls, "the page made no requests"
        leaked = [u for u in self.urls if API_KEY in u]
        assert not leaked, leaked


async def sign_in(page: Any, gw: Any, fragment: str = "#/numbers") -> None:
    await page.goto(gw.url("/console" + fragment))
    await page.wait_for_selector("text=Sign in")
    await page.fill("#api-key", API_KEY)
    await page.press("#api-key", "Enter")
    await page.wait_for_selector("#view:not([aria-busy]) h2:not(:text('Sign in'))")


async def view_ready(page: Any) -> None:
    await page.wait_for_selector("#view:not([aria-busy])")


async def full_gateway(make_gateway: Any) -> Any:
    """Every installed carrier (their import forms), the echo engine, a private RTP range."""
    return await make_gateway(carriers=None, engine="echo", **rtp_range())


@needs_sipp
async def test_import_test_connection_attach_and_delete_a_sip_trunk(make_gateway):
    skip_without_chromium()
    gw = await full_gateway(make_gateway)
    agent = (await api(gw, "POST", "/agents", {"name": "Support", "engine": "echo"}, expect=201))["agent"]
    doc = await api(gw, "GET", "/openapi.json", expect=200)
    providers = sorted(k.removeprefix("Import_") for k in doc["components"]["schemas"] if k.startswith("Import_"))
    assert {"sip", "twilio", "exotel", "vonage", "plivo", "telnyx", "signalwire"} <= set(providers)
    async with Browser() as page, sipp_uas("uas_options_auth.xml", calls=2, timeout_s=30, extra=CREDS) as uas:
        watch = Watch(page)
        await sign_in(page, gw)
        await page.click("#import-link")
        await page.wait_for_selector("#providers")
        # one form per carrier, with exactly the fields the API declares for it
        for p in providers:
            await page.click(f"#providers [data-provider='{p}']")
            await page.wait_for_selector(f"#view:not([aria-busy]) h3:text-is('{await provider_label(page, p)}')")
            names = await page.eval_on_selector_all("#import-form [name]", "els => els.map(e => e.name)")
            declared = set(doc["components"]["schemas"][f"Import_{p}"]["properties"])
            assert set(names) == declared, (p, names)
            secret = [k for k, s in doc["components"]["schemas"][f"Import_{p}"]["properties"].items()
                      if s.get("writeOnly")]
            for k in secret:
                assert await page.get_attribute(f"#import-form [name='{k}']", "type") == "password", (p, k)

        await page.click("#providers [data-provider='sip']")
        await page.wait_for_selector("#import-form [name='sip_host']")
        await page.fill("[name='phone_number']", "+15550001111")
        await page.fill("[name='sip_host']", "127.0.0.1")
        await page.fill("[name='sip_port']", str(uas.port))
        await page.fill("[name='sip_trunk_name']", "main")
        await page.fill("[name='sip_username']", "gwuser")
        await page.fill("[name='sip_password']", "s3cret")
        await page.select_option("[name='agent_id']", str(agent["id"]))
        # test before importing: each step with its verdict
        await page.click("#test-connection")
        await page.wait_for_selector("#test-report")
        steps = await report_steps(page)
        assert [s[0] for s in steps] == ["dns", "options", "credentials"], steps
        assert all(s[1] == "ok" for s in steps), steps
        assert "SIP/2.0 200 OK" in steps[2][2]
        assert await page.get_attribute("#test-report", "data-ok") == "true"
        assert (await api(gw, "GET", "/phone_number/list"))["total"] == 0      # a test stores nothing

        await page.click("#import")
        await page.wait_for_selector("#view:not([aria-busy]) #edit-form")
        assert "imported" in await page.text_content("#flash")
        listed = (await api(gw, "GET", "/phone_number/list"))["phone_numbers"]
        assert len(listed) == 1 and listed[0]["agent_id"] == agent["id"]
        number = listed[0]
        assert number["config"]["sip_password"] == "****" and number["sip_trunk_name"] == "main"
        assert await page.input_value("#edit-form [name='sip_password']") == "****"    # never the secret
        assert "s3cret" not in await page.content()

        # the stored trunk tested again, from its page
        await page.click("#test-connection")
        await page.wait_for_selector("#test-report")
        assert [s[1] for s in await report_steps(page)] == ["ok", "ok", "ok"]

        # registration state as the carrier stores it
        await gw.store.update_number(number["id"], status={"registration": "registered",
                                                           "registered_until": "2026-11-30T10:00:00+00:00"})
        await page.goto(gw.url("/console#/numbers"))
        row = f"tr[data-number-id='{number['id']}']"
        await page.wait_for_selector(row)
        assert "Registration: registered" in await page.text_content(row)

        # detach asks first: dismissed → still attached; accepted → detached; then attach again
        watch.answers = [False]
        await page.select_option(f"{row} select.attach", "")
        await wait_for(lambda: len(watch.dialogs) == 1)
        assert "Detach +15550001111" in watch.dialogs[0]
        await expect(page.locator(f"{row} select.attach")).to_have_value(str(agent["id"]))
        assert (await api(gw, "GET", f"/phone_number/{number['id']}"))["phone_number"]["agent_id"] == agent["id"]
        watch.answers = [True]
        await page.select_option(f"{row} select.attach", "")
        await page.wait_for_selector("#flash:text('detached')")
        assert (await api(gw, "GET", f"/phone_number/{number['id']}"))["phone_number"]["agent_id"] is None
        await page.select_option(f"{row} select.attach", str(agent["id"]))
        await page.wait_for_selector("#flash:text('attached to agent')")
        assert (await api(gw, "GET", f"/phone_number/{number['id']}"))["phone_number"]["agent_id"] == agent["id"]

        # edit a setting of the trunk: only the changed field is sent, the password is kept
        await page.click(f"{row} a:text('Open')")
        await page.wait_for_selector("#view:not([aria-busy]) #edit-form")
        await page.fill("#edit-form [name='sip_trunk_name']", "main-2")
        await page.click("#save")
        await page.wait_for_selector("#flash:text('saved: sip_trunk_name')")
        stored = await gw.store.get_number(number["id"], with_secrets=True)
        assert stored["sip_trunk_name"] == "main-2" and stored["secrets"]["sip_password"] == "s3cret"

        # delete asks first
        watch.answers = [False]
        await page.click("#delete")
        await wait_for(lambda: len(watch.dialogs) == 3)
        assert "Delete +15550001111" in watch.dialogs[2]
        assert (await api(gw, "GET", "/phone_number/list"))["total"] == 1
        watch.answers = [True]
        await page.click("#delete")
        await page.wait_for_selector("#view:not([aria-busy]) tr.empty")
        assert (await api(gw, "GET", "/phone_number/list"))["total"] == 0
        watch.assert_no_key_in_urls()
        assert any("/api/v1/phone_number/test/sip" in u for u in watch.urls)
    uas.result.assert_calls(successful=2)


async def provider_label(page: Any, p: str) -> str:
    return (await page.text_content(f"#providers [data-provider='{p}']")) or p


async def report_steps(page: Any) -> list[tuple[str, str, str]]:
    return [tuple(x) for x in await page.eval_on_selector_all(
        "#test-report li", "lis => lis.map(li => [li.dataset.step, li.dataset.verdict, li.textContent])")]


async def test_create_and_edit_an_agent_the_patch_persists(make_gateway):
    skip_without_chromium()
    gw = await full_gateway(make_gateway)
    # a settings section the console has no code for (another feature's, an engine's) is shown and editable
    other = (await api(gw, "POST", "/agents", {"name": "Other", "settings": {
        "analytics": {"enabled": False, "tag": "a"}}}, expect=201))["agent"]
    async with Browser() as page:
        watch = Watch(page)
        await sign_in(page, gw, "#/agents/new")
        await page.wait_for_selector("#agent-form [name='name']")
        await page.fill("[name='name']", "Sales")
        await page.fill("[name='engine']", "echo")
        await page.fill("[name='settings.transfer.number']", "+14155550199")
        await page.check("[name='settings.amd.enabled']")
        await page.check("[name='settings.recording.enabled']")
        await page.click("#save")
        await page.wait_for_selector("#flash:text('created')")
        agents = (await api(gw, "GET", "/agents"))["agents"]
        sales = next(a for a in agents if a["name"] == "Sales")
        assert sales["engine"] == "echo"
        assert sales["settings"]["transfer"]["number"] == "+14155550199"
        assert sales["settings"]["amd"] == {"enabled": True, "provider": "gateway"}
        assert sales["settings"]["recording"] == {"enabled": True, "channels": "dual"}
        assert "voicemail" not in sales["settings"] and "end_call" not in sales["settings"]   # untouched: not sent

        # edit: a wrong number is refused by the API, which names the field; the field is marked
        await page.wait_for_selector("#view:not([aria-busy]) h2:text('Agent: Sales')")
        await page.fill("[name='settings.transfer.number']", "4155550199")
        await page.click("#save")
        await page.wait_for_selector("#flash.error")
        assert "settings.transfer.number" in await page.text_content("#flash")
        assert await page.get_attribute("[data-path='settings.transfer.number']", "class") == "field invalid"

        await page.fill("[name='settings.transfer.number']", "+14155550123")
        await page.fill("[name='settings.transfer.backup_numbers']", "+14155550124\n+14155550125")
        await page.check("[name='settings.voicemail.enabled']")
        await page.fill("[name='settings.voicemail.message']", "Please call us back")
        await page.select_option("[name='settings.amd.provider']", "twilio")
        await page.click("text=Add transfer option")
        await page.fill("[name='settings.transfer.transfer_options[0].number']", "+14155550130")
        await page.fill("[name='settings.transfer.transfer_options[0].transfer_condition']", "caller wants sales")
        await page.click("#save")
        await page.wait_for_selector("#flash:text('agent saved')")
        saved = (await api(gw, "GET", f"/agents/{sales['id']}"))["agent"]["settings"]
        assert saved["transfer"]["number"] == "+14155550123"
        assert saved["transfer"]["backup_numbers"] == ["+14155550124", "+14155550125"]
        assert saved["transfer"]["transfer_options"][0]["number"] == "+14155550130"
        assert saved["transfer"]["transfer_options"][0]["transfer_condition"] == "caller wants sales"
        assert saved["voicemail"] == {"enabled": True, "message": "Please call us back"}
        assert saved["amd"] == {"enabled": True, "provider": "twilio"}
        # the re-rendered form shows what was stored
        await page.wait_for_selector("#view:not([aria-busy]) [name='settings.transfer.transfer_options[0].number']")
        assert await page.input_value("[name='settings.transfer.number']") == "+14155550123"

        # a section of the operator's own (an engine's settings, say): added as JSON, then edited as fields;
        # what was typed in the form before adding it is kept
        await page.fill("[name='name']", "Sales team")
        await page.click("summary:text('Add a settings section')")
        await page.fill("#section-name", "crm")
        await page.fill("#section-json", '{"enabled": true, "list": "vip"}')
        await page.click("#add-section")
        await page.wait_for_selector("[name='settings.crm.list']")
        assert await page.input_value("[name='name']") == "Sales team"
        await page.fill("[name='settings.crm.list']", "gold")
        await page.click("#save")
        await page.wait_for_selector("#flash:text('agent saved')")
        got = (await api(gw, "GET", f"/agents/{sales['id']}"))["agent"]
        assert got["name"] == "Sales team" and got["settings"]["crm"] == {"enabled": True, "list": "gold"}
        assert got["settings"]["voicemail"]["enabled"] is True          # the other sections are unchanged

        # the section the console does not know: rendered from its values, edited, PATCHed
        await page.goto(gw.url(f"/console#/agents/{other['id']}"))
        await page.wait_for_selector("#view:not([aria-busy]) [name='settings.analytics.enabled']")
        await page.check("[name='settings.analytics.enabled']")
        await page.fill("[name='settings.analytics.tag']", "b")
        await page.click("#save")
        await page.wait_for_selector("#flash:text('agent saved')")
        got = (await api(gw, "GET", f"/agents/{other['id']}"))["agent"]["settings"]
        assert got["analytics"] == {"enabled": True, "tag": "b"}

        # delete asks first
        watch.answers = [False]
        await page.click("#delete")
        await wait_for(lambda: len(watch.dialogs) == 1)
        assert "Delete agent “Other”" in watch.dialogs[0]
        assert (await api(gw, "GET", f"/agents/{other['id']}"))["success"] is True
        watch.answers = [True]
        await page.click("#delete")
        await page.wait_for_selector("#view:not([aria-busy]) h2:text('Agents')")
        assert (await api(gw, "GET", f"/agents/{other['id']}")).get("field") == "id"     # 404
        watch.assert_no_key_in_urls()


async def seed_calls(gw: Any) -> dict[str, Any]:
    """Call-log rows as the carriers write them: several carriers, agents, statuses and days; one call with AMD,
    a transfer, media quality and events."""
    store = gw.store
    a1 = (await api(gw, "POST", "/agents", {"name": "Alpha"}, expect=201))["agent"]
    a2 = (await api(gw, "POST", "/agents", {"name": "Beta"}, expect=201))["agent"]
    day = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    rows = {}
    for name, carrier, agent, status, at in (
            ("a", "sip", a1, "completed", day), ("b", "twilio", a1, "no-answer", day + timedelta(hours=2)),
            ("c", "twilio", a2, "completed", day + timedelta(days=1)), ("d", "vonage", a2, "failed",
                                                                         day + timedelta(days=2))):
        rows[name] = await store.create_call({
            "call_uuid": f"uuid-{name}", "channel_type": carrier, "call_direction": "outbound", "agent_id": agent["id"],
            "from_number": "+15550001111", "to_number": "+15550002222", "call_status": status, "created_at": at})
    c = rows["c"]
    await store.update_call(c["id"], answered_at=day + timedelta(days=1, seconds=3),
                            ended_at=day + timedelta(days=1, seconds=65), call_duration_in_seconds=62.0,
                            amd_detected=True, amd_answered_by="human", amd_duration=1.84, is_call_transfer=True,
                            transfer_target="+14155550199", transfer_outcome="answered", hangup_source="user",
                            hangup_reason="caller_hung_up",
                            extra={"rtp_quality": {"packets_lost": 3, "jitter_ms": 4.2, "mos": 4.31}})
    for kind, data in (("phone_call:accepted", {}), ("call:amd_result", {"answered_by": "human", "ms": 1840}),
                       ("call:transfer_requested", {"number": "+14155550199"}),
                       ("call:transfer_result", {"outcome": "answered"}), ("hang_up", {"source": "user"})):
        await store.add_call_event(c["id"], kind, data)
    await store.flush()
    return {"alpha": a1, "beta": a2, **rows}


async def test_call_history_filters_and_call_details(make_gateway):
    skip_without_chromium()
    gw = await full_gateway(make_gateway)
    seeded = await seed_calls(gw)
    async with Browser() as page:
        watch = Watch(page)
        await sign_in(page, gw, "#/calls")
        await page.wait_for_selector("#filters")
        assert await listed_calls(page) == [seeded[k]["id"] for k in "dcba"]

        await page.select_option("#filter-carrier", "twilio")
        await page.click("#apply")
        await expect(page).to_have_url(re.compile(r"#/calls\?.*carrier=twilio"))
        await view_ready(page)
        assert await listed_calls(page) == [seeded["c"]["id"], seeded["b"]["id"]]

        await page.select_option("#filter-agent", str(seeded["alpha"]["id"]))
        await page.click("#apply")
        await expect(page).to_have_url(re.compile(r"#/calls\?.*agent="))
        await view_ready(page)
        assert await listed_calls(page) == [seeded["b"]["id"]]

        await page.goto(gw.url("/console#/calls"))
        await view_ready(page)
        await page.select_option("#filter-status", "completed")
        await page.fill("#filter-since", "2026-11-21")
        await page.fill("#filter-until", "2026-11-21")
        await page.click("#apply")
        await expect(page).to_have_url(re.compile(r"#/calls\?.*since=2026-11-21"))
        await view_ready(page)
        assert await listed_calls(page) == [seeded["c"]["id"]]
        assert (await page.text_content("#total")).startswith("1 call")

        # the call's page: summary, AMD verdict, transfer attempts, media quality, event timeline
        await page.click(f"tr[data-call-id='{seeded['c']['id']}'] a")
        await page.wait_for_selector("#view:not([aria-busy]) #timeline")
        amd = await page.text_content("#amd")
        assert "human" in amd and "1.84" in amd
        transfers = await page.text_content("#transfers")
        assert "+14155550199" in transfers and "answered" in transfers
        assert await page.eval_on_selector_all("#transfers li", "l => l.map(x => x.dataset.event)") == [
            "call:transfer_requested", "call:transfer_result"]
        quality = await page.text_content("#quality")
        assert "4.31" in quality and "Jitter ms" in quality
        assert await page.eval_on_selector_all("#timeline li", "l => l.map(x => x.dataset.event)") == [
            "phone_call:accepted", "call:amd_result", "call:transfer_requested", "call:transfer_result", "hang_up"]
        assert "Alpha" not in await page.text_content("#summary") and "Beta" in await page.text_content("#summary")

        # a call without AMD or transfer says so
        await page.goto(gw.url(f"/console#/calls/{seeded['a']['call_uuid']}"))
        await page.wait_for_selector("#view:not([aria-busy]) #amd")
        assert "no AMD" in await page.text_content("#amd")
        assert "no transfer" in await page.text_content("#transfers")
        watch.assert_no_key_in_urls()


async def listed_calls(page: Any) -> list[int]:
    ids = await page.eval_on_selector_all("#view table tbody tr[data-call-id]", "trs => trs.map(t => t.dataset.callId)")
    return [int(i) for i in ids]


async def test_phone_sized_screen_and_the_live_page_keep_the_key_out_of_urls(make_gateway):
    skip_without_chromium()
    gw = await full_gateway(make_gateway)
    seeded = await seed_calls(gw)
    number = (await api(gw, "POST", "/phone_number/import/sip", {
        "phone_number": "+15550001111", "sip_host": "127.0.0.1", "sip_trunk_name": "t", "auth_type": "ip",
        "allowed_ips": ["127.0.0.1"], "agent_id": seeded["alpha"]["id"]}, expect=201))["phone_number"]
    async with Browser() as page:
        watch = Watch(page)
        await page.set_viewport_size({"width": 390, "height": 844})
        await sign_in(page, gw)
        for fragment in ("#/numbers", f"#/numbers/{number['id']}", "#/numbers/new/sip", "#/agents",
                         f"#/agents/{seeded['alpha']['id']}", "#/agents/new", "#/calls",
                         f"#/calls/{seeded['c']['id']}"):
            await page.goto(gw.url("/console" + fragment))
            await page.wait_for_selector("#view:not([aria-busy]) h2")
            assert not await page.query_selector("#load-error"), fragment
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (fragment, width)         # nothing wider than the phone's screen
            if await page.query_selector("#view table.cards tbody tr:not(.empty)"):
                # rows are cards: the header row is hidden and each cell shows its column's label
                display = await page.eval_on_selector("#view table.cards thead", "t => getComputedStyle(t).display")
                assert display == "none", fragment
                label = await page.eval_on_selector("#view table.cards tbody td",
                                                    "td => getComputedStyle(td, '::before').content")
                assert label not in ("none", "normal", '""'), (fragment, label)
        # the live page reads the same stored key and authenticates its websocket with a message, not the URL
        await page.goto(gw.url("/calls/live"))
        await page.wait_for_selector("#conn.up")
        await page.wait_for_selector("#finished tbody tr")
        watch.assert_no_key_in_urls()
        assert any(u.endswith("/calls/live/ws") for u in watch.urls)


async def test_console_page_headers_and_landing_link(make_gateway):
    import aiohttp

    gw = await make_gateway(carriers={})
    async with aiohttp.ClientSession() as s:
        for path, kind in (("/console", "text/html"), ("/console/console.js", "text/javascript"),
                           ("/console/console.css", "text/css")):
            async with s.get(gw.url(path)) as r:
                assert r.status == 200 and r.content_type == kind, path
                csp = r.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "form-action 'none'" in csp and "frame-ancestors 'none'" in csp
                assert r.headers["Referrer-Policy"] == "no-referrer"
                body = await r.text()
                assert "https://" not in body and "http://" not in body, path     # nothing from elsewhere
        async with s.get(gw.url("/")) as r:
            assert '<a href="/console">Console</a>' in await r.text()


async def test_twilio_number_through_the_form_against_a_twilio_stand_in(twilio_env):
    """A carrier with a REST API: its test connection steps (credentials, number, voice webhook) come from the
    local Twilio stand-in; a wrong token is a failed credentials step, and the token is never shown."""
    skip_without_chromium()
    env = await twilio_env()
    account = env.rest.add_account(numbers=("+15005550007",))
    async with Browser() as page:
        watch = Watch(page)
        await sign_in(page, env.gw, "#/numbers/new/twilio")
        await page.wait_for_selector("#import-form [name='account_sid']")
        await page.fill("[name='phone_number']", "+15005550007")
        await page.fill("[name='account_sid']", account.sid)
        await page.fill("[name='account_token']", "wrong-token-0000")
        await page.click("#test-connection")
        await page.wait_for_selector("#test-report")
        steps = await report_steps(page)
        assert [(s[0], s[1]) for s in steps] == [("credentials", "failed")], steps
        assert await page.get_attribute("#test-report", "data-ok") == "false"

        await page.fill("[name='account_token']", account.token)
        await page.check("[name='configure_webhooks']")
        await page.click("#test-connection")
        await expect(page.locator("#test-report li")).to_have_count(3)
        steps = await report_steps(page)
        assert [(s[0], s[1]) for s in steps[:2]] == [("credentials", "ok"), ("number", "ok")], steps
        assert steps[2][0] == "voice_webhook"

        await page.select_option("[name='agent_id']", str(env.agent["id"]))
        await page.click("#import")
        # Twilio cannot reach a loopback gateway: refused, the field named and marked, nothing stored
        await page.wait_for_selector("#flash.error")
        assert "configure_webhooks: Twilio could not reach" in await page.text_content("#flash")
        assert "invalid" in await page.get_attribute("[data-path='configure_webhooks']", "class")
        assert await env.gw.store.find_number("+15005550007", "twilio") is None
        await page.check("[name='force_webhooks']")
        await page.click("#import")
        await page.wait_for_selector("#view:not([aria-busy]) #edit-form")
        await page.click("#test-connection")
        await page.wait_for_selector("#test-report")
        assert [s[1] for s in await report_steps(page)] == ["ok", "ok", "ok"]   # the import pointed the webhook here
        assert account.token not in await page.content()
        stored = await env.gw.store.find_number("+15005550007", "twilio", with_secrets=True)
        assert stored["agent_id"] == env.agent["id"] and stored["secrets"]["account_token"] == account.token
        watch.assert_no_key_in_urls()


@needs_sipp
async def test_a_real_sip_call_shows_in_the_history_with_its_timeline_and_rtp(make_gateway):
    """Not seeded rows: a recorded SIPp call with RTP into the gateway, then its page as the console shows it; the
    recording comes from the API with the key in a header and plays from a blob: URL."""
    skip_without_chromium()
    gw = await full_gateway(make_gateway)
    await sip_number(gw, agent_settings={"recording": {"enabled": True, "channels": "mono"}})
    res = await sipp_uac("uac_pcma_echo.xml", gw.carriers["sip"].port, service="15550001111", duration_ms=1500)
    res.assert_calls(successful=1)
    row = (await wait_for(lambda: ended_calls(gw), what="the call's log row to end"))[0]
    await wait_for(lambda: recording_stored(gw, row["id"]), what="the recording to be stored")
    async with Browser() as page:
        watch = Watch(page)
        sent: list[dict[str, str]] = []
        page.on("request", lambda r: sent.append(r.headers) if r.url.endswith("/recording") else None)
        await sign_in(page, gw, "#/calls?carrier=sip&status=completed")
        await page.wait_for_selector(f"tr[data-call-id='{row['id']}']")
        assert await listed_calls(page) == [row["id"]]
        await page.click(f"tr[data-call-id='{row['id']}'] a")
        await page.wait_for_selector("#view:not([aria-busy]) #timeline")
        events = await page.eval_on_selector_all("#timeline li", "l => l.map(x => x.dataset.event)")
        assert events[0] == "phone_call:connection_requested" and events[-1] == "hang_up", events
        assert "+15557654321" in await page.text_content("#summary")
        # the RTP counters the SIP carrier keeps in the call log
        received = await page.text_content("#quality [data-key='received']")
        assert int(received) == row["extra"]["rtp"]["received"] > 0
        await page.wait_for_selector("#recording audio")
        assert (await page.get_attribute("#recording audio", "src")).startswith("blob:")
        await metadata_loaded(page.locator("#recording audio"))
        duration = await page.eval_on_selector("#recording audio", "a => a.duration")
        assert 1.0 < duration < 3.0, duration                   # the 1.5 s the call lasted
        assert len(sent) == 1 and sent[0]["authorization"] == f"Bearer {API_KEY}"
        watch.assert_no_key_in_urls()


async def metadata_loaded(audio: Any) -> None:
    """Until the <audio> element knows its duration: one evaluation that resolves on the element's own event (no
    polling predicate: the console's CSP refuses the eval that `wait_for_function` needs for one)."""
    await asyncio.wait_for(audio.evaluate(
        "a => a.readyState >= 1 || new Promise(ok => a.addEventListener('loadedmetadata', () => ok(true), "
        "{once: true}))"), TIMEOUT_MS / 1000)


async def ended_calls(gw: Any) -> list[dict[str, Any]] | None:
    rows, _ = await gw.store.list_calls()
    return rows if rows and rows[0].get("ended_at") else None


async def recording_stored(gw: Any, call_id: int) -> bool:
    row = await gw.store.get_call(call_id)
    return bool(row and row.get("recording_status") == "stored")
