"""The page at `/`: a link to each page the gateway serves, and every link works."""
import json
import re
from pathlib import Path

import aiohttp
import pytest

from carriers.webrtc import WebRTCCarrier
from conftest import API_KEY
from gateway import dashboards as gateway_dashboards


async def _links(gw) -> tuple[str, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(gw.url("/")) as r:
        assert r.status == 200 and r.content_type == "text/html"
        page = await r.text()
    return page, dict(re.findall(r'<a href="([^"]+)">([^<]+)</a>', page))


@pytest.fixture
def dashboards(tmp_path, monkeypatch):
    """A dashboards folder of our own (not the repository's), so the links are known."""
    folder = tmp_path / "grafana"
    folder.mkdir()
    (folder / "gateway.json").write_text(json.dumps({"title": "Telephony gateway", "panels": []}))
    monkeypatch.setattr(gateway_dashboards, "SEARCH", [tmp_path / "missing", folder])
    return folder


async def test_landing_page_links_every_page_and_each_answers(make_gateway, dashboards):
    gw = await make_gateway(carriers={"webrtc": WebRTCCarrier})
    page, links = await _links(gw)
    assert list(links) == ["/console", "/calls/live", "/call", "/api/v1/openapi.json", "/dashboards", "/metrics",
                           "/healthz"]
    async with aiohttp.ClientSession() as s:
        for path in links:
            headers = {"Authorization": f"Bearer {API_KEY}"} if path.startswith("/api/") else {}
            async with s.get(gw.url(path), headers=headers) as r:
                assert r.status == 200, path


async def test_browser_call_link_only_when_webrtc_is_loaded(make_gateway):
    gw = await make_gateway(carriers={})
    _, links = await _links(gw)
    assert "/call" not in links and "/calls/live" in links


async def test_dashboards_are_listed_and_served(make_gateway, dashboards):
    gw = await make_gateway(carriers={})
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url("/dashboards")) as r:
            assert r.status == 200
            files = re.findall(r'<a href="(/dashboards/[^"]+)" download>', await r.text())
        assert files == ["/dashboards/gateway.json"]
        async with s.get(gw.url(files[0])) as r:
            assert r.status == 200 and r.content_type == "application/json"
            assert await r.json() == {"title": "Telephony gateway", "panels": []}
        async with s.get(gw.url("/dashboards/..%2Fsecret_key")) as r:
            assert r.status == 404


async def test_no_dashboards_no_link(make_gateway, tmp_path, monkeypatch):
    monkeypatch.setattr(gateway_dashboards, "SEARCH", [tmp_path / "none"])
    gw = await make_gateway(carriers={})
    _, links = await _links(gw)
    assert "/dashboards" not in links
    async with aiohttp.ClientSession() as s, s.get(gw.url("/dashboards")) as r:
        assert r.status == 404


async def test_the_repository_dashboards_are_found():
    """deploy/grafana/ of this checkout is where the gateway looks first."""
    repo = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
    if not any(repo.glob("*.json")):
        pytest.skip("no dashboard in deploy/grafana/ yet")
    assert gateway_dashboards.find() == {f.name: f for f in sorted(repo.glob("*.json"))}
