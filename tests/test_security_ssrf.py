"""SSRF guard on agent webhook URLs: loopback, private, link-local (cloud metadata) and similar destinations are
refused when the URL is saved and again at delivery, after DNS resolution, on a real receiver socket."""
from __future__ import annotations

import ipaddress
import logging

import aiohttp
import pytest

from gateway.frames import HangupSource
from gateway.netguard import forbidden_kind
from test_webhooks import receiver  # noqa: F401 (fixture)

BLOCKED = ["http://127.0.0.1:8080/hook", "http://169.254.169.254/latest/meta-data/", "http://[::1]/hook",
           "http://10.0.0.1/hook", "http://192.168.1.20/hook", "http://172.16.5.5/hook", "http://100.64.0.1/hook",
           "http://0.0.0.0:9/hook", "http://[::ffff:127.0.0.1]/hook", "http://[fd00:ec2::254]/latest/",
           "http://[fe80::1]/hook", "http://localhost:9/hook"]


@pytest.mark.parametrize("url", BLOCKED)
async def test_save_refuses_private_destinations(make_gateway, auth_headers, url):
    gw = await make_gateway()
    async with aiohttp.ClientSession(headers=auth_headers) as s:
        async with s.post(gw.url("/api/v1/agents"), json={"name": "a", "webhook_url": url}) as r:
            body = await r.json()
            assert r.status == 400 and body["field"] == "webhook_url", body
            assert "public addresses only" in body["error"]
        async with s.post(gw.url("/api/v1/agents"), json={"name": "b"}) as r:
            aid = (await r.json())["agent"]["id"]
        async with s.patch(gw.url(f"/api/v1/agents/{aid}"), json={"webhook_url": url}) as r:
            assert r.status == 400
    assert [a["name"] for a in await gw.store.list_agents()] == ["b"]


async def test_public_and_allowed_destinations_are_saved(make_gateway, auth_headers):
    gw = await make_gateway()
    async with aiohttp.ClientSession(headers=auth_headers) as s:
        async with s.post(gw.url("/api/v1/agents"), json={"name": "a", "webhook_url": "https://8.8.8.8/hook"}) as r:
            assert r.status == 201
    open_gw = await make_gateway(allow_private_webhooks=True)
    async with aiohttp.ClientSession(headers=auth_headers) as s, s.post(open_gw.url("/api/v1/agents"),
                      json={"name": "a", "webhook_url": "http://127.0.0.1:9/hook"}) as r:
        assert r.status == 201


def test_address_kinds():
    kind = lambda a: forbidden_kind(ipaddress.ip_address(a))  # noqa: E731
    assert kind("169.254.169.254") == "link-local (cloud metadata)"
    assert kind("::ffff:10.1.2.3") == "private" and kind("127.8.8.8") == "loopback"
    assert kind("224.0.0.1") == "multicast" and kind("240.0.0.1") is not None and kind("192.0.2.1") is not None
    assert kind("93.184.215.14") is None and kind("2606:4700::1111") is None


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_delivery_checks_the_resolved_address(make_gateway, receiver, caplog, host):
    """A URL that got into the store pointing at the gateway's own host (a name re-pointed after the save, an
    older release's row) is refused at delivery: nothing reaches the listening receiver, nothing is retried."""
    caplog.set_level(logging.ERROR, logger="gateway.webhooks")
    gw = await make_gateway(webhook_retries=3)
    url = receiver.url("ok").replace("127.0.0.1", host)
    agent = await gw.store.create_agent({"name": "x", "engine": "echo", "webhook_url": url})
    call = await gw.calls.create(carrier="test", direction="inbound", from_number="+15550001111",
                                 to_number="+15550002222", agent=agent)
    await call.end(HangupSource.USER, "done")
    await gw.webhooks.drain(10)
    assert receiver.requests == [] and gw.webhooks.delivered == 0
    refused = [r for r in caplog.records if r.getMessage() == "webhook destination refused"]
    assert refused and refused[0].host == host and "loopback" in refused[0].reason
    assert gw.webhooks.failures == len(refused)          # one refusal per event: never retried
    assert "secret-token-123" not in caplog.text         # the URL's query is never logged
    # the same receiver is reachable when the operator allows private destinations
    ok_gw = await make_gateway(allow_private_webhooks=True)
    call = await ok_gw.calls.create(carrier="test", direction="inbound", from_number="+15550001111",
                                    to_number="+15550002222", agent=agent)
    await call.end(HangupSource.USER, "done")
    await ok_gw.webhooks.drain(10)
    assert receiver.requests and ok_gw.webhooks.delivered >= 1
