"""JSON no handler can digest (issue 13 item 10): deep nesting and lone UTF-16 surrogates get a 400 over real
HTTP, on the REST API and on a carrier webhook, and nothing reaches the SQLite file."""
from __future__ import annotations

import aiohttp
import pytest

from carriers.vonage import VonageCarrier
from gateway import safejson

NESTED = b"[" * 100_000 + b"]" * 100_000      # RecursionError inside json.loads
DEEP_DICT = ("{\"a\":" * 200 + "1" + "}" * 200).encode()  # parses, but too deep to serialise safely
SURROGATE_NAME = b'{"name": "agent \\ud800 one", "engine": "echo"}'


def test_loads_refuses_what_would_crash_later():
    for bad in (NESTED, DEEP_DICT, SURROGATE_NAME, b'{"\\udfff": 1}', b'[NaN]', b"{"):
        with pytest.raises(safejson.BadJson):
            safejson.loads(bad)
    # a surrogate pair is one valid character, and ordinary nesting is fine
    assert safejson.loads(b'{"name": "\\ud83d\\ude00", "a": [[{"b": 1}]]}') == {"name": "\U0001F600",
                                                                                "a": [[{"b": 1}]]}



def test_depth_limit_is_exact_and_a_bom_is_refused_as_json_loads_does():
    ok, deep = "[" * safejson.MAX_DEPTH + "]" * safejson.MAX_DEPTH, "[" * (safejson.MAX_DEPTH + 1) + "]" * (
        safejson.MAX_DEPTH + 1)
    assert safejson.loads(ok) == safejson.loads(ok.encode())
    for bad in (deep, deep.encode(), "\ufeff{}", b"\xff{}"):
        with pytest.raises(safejson.BadJson):
            safejson.loads(bad)
    assert safejson.loads(b"\xef\xbb\xbf{\"a\": 1}") == {"a": 1}      # bytes with a UTF-8 BOM: as json.loads
    with pytest.raises(TypeError):
        safejson.loads(None)  # type: ignore[arg-type]  # (what json.loads raises for a non-text argument)


MEDIA = ('{"event":"media","sequenceNumber":"3","streamSid":"MZ1","media":{"track":"inbound","chunk":"2",'
         '"timestamp":"20","payload":"%s"}}')


def test_loads_media_parses_and_refuses_as_loads_does():
    """The media sockets' orjson path: the same value for a media event, and whatever loads() refuses or reads
    differently (other events, NaN, 1e400, lone surrogates, nesting past the limit, a BOM) gives loads()'s answer."""
    media = MEDIA % ("/w" * 80)
    assert safejson.loads_media(media) == safejson.loads(media)
    start = '{"event":"start","start":{"customParameters":{"n":123456789012345678901234567890}}}'
    assert safejson.loads_media(start)["start"]["customParameters"]["n"] == 123456789012345678901234567890
    big = '{"event":"media","media":{"payload":"AA=="},"n":1e400}'      # json reads inf; orjson refuses
    assert safejson.loads_media(big) == safejson.loads(big)
    deep = '{"event":"media","x":' + "[" * safejson.MAX_DEPTH + "]" * safejson.MAX_DEPTH + "}"
    for bad in ('{"event":"media","x":NaN}', '{"event":"media","x":"\\ud800"}', deep, "\ufeff" + media,
                '{"event":"media"', "[NaN]"):
        with pytest.raises(safejson.BadJson):
            safejson.loads_media(bad)
    assert safejson.loads_media("[1]") == [1]


async def _post(gw, path, raw: bytes, headers=None):
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url(path), data=raw, headers={"Content-Type": "application/json", **(headers or {})}) as r:
            return r.status, await r.json(content_type=None)


async def test_api_refuses_nested_and_surrogate_bodies(make_gateway, auth_headers):
    gw = await make_gateway()
    for raw in (NESTED, DEEP_DICT, SURROGATE_NAME):
        status, body = await _post(gw, "/api/v1/agents", raw, auth_headers)
        assert status == 400, body
        assert body["field"] == "body" and "JSON" in body["error"]
    assert await gw.store.list_agents() == []
    # the same name with a real character in it is stored
    status, body = await _post(gw, "/api/v1/agents", '{"name": "agent \u00e9", "engine": "echo"}'.encode(),
                               auth_headers)
    assert status in (200, 201), body


async def test_vonage_events_refuse_nested_and_surrogate_bodies(make_gateway):
    gw = await make_gateway(carriers={"vonage": VonageCarrier})
    for raw in (NESTED, DEEP_DICT, b'{"uuid": "\\ud800", "status": "answered"}'):
        status, body = await _post(gw, "/vonage/events", raw)
        assert status == 400, body
        assert "JSON" in body["error"]
    status, _ = await _post(gw, "/vonage/events", b'{"uuid": "abc", "status": "started"}')
    assert status < 300
