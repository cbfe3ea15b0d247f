"""The page at `/`: a link to each page the gateway serves, and every link works."""
import re

import aiohttp

from carriers.webrtc import WebRTCCarrier
from conftest import API_KEY


async def _links(gw) -> tuple[str, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(gw.url("/")) as r:
        assert r.status == 200 and r.content_type == "text/html"
        page = await r.text()
    return page, dict(re.findall(r'<a href="([^"]+)">([^<]+)</a>', page))


async def test_landing_page_links_every_page_and_each_answers(make_gateway):
    gw = await make_gateway(carriers={"webrtc": WebRTCCarrier})
    page, links = await _links(gw)
    assert list(links) == ["/console", "/calls/live", "/call", "/api/v1/openapi.json", "/metrics", "/healthz"]
    async with aiohttp.ClientSession() as s:
        for path in links:
            headers = {"Authorization": f"Bearer {API_KEY}"} if path.startswith("/api/") else {}
            async with s.get(gw.url(path), headers=headers) as r:
                assert r.status == 200, path


async def test_browser_call_link_only_when_webrtc_is_loaded(make_gateway):
    gw = await make_gateway(carriers={})
    _, links = await _links(gw)
    assert "/call" not in links and "/calls/live" in links
