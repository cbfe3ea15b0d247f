"""Cross-cutting API behaviour: Bearer auth on every /api/v1 route, JSON errors everywhere (404/405/500 with no
traceback), the OpenAPI document covering every route, /healthz and Prometheus /metrics."""
from __future__ import annotations

import asyncio
import logging
import re

import aiohttp
import pytest

from gateway.carrier import ImportField
from gateway.engine.base import EngineSession, VoiceEngine
from sipp import metric_value
from test_api_fakes import Api, FakeSipCarrier, api, sip_body  # noqa: F401


def api_routes(gw) -> list[tuple[str, str]]:
    out = []
    for route in gw.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if path.startswith("/api/v1") and route.method != "HEAD":
            out.append((route.method, path))
    return out


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: "sip" if m.group(1) == "provider" else "1", path)


async def test_every_api_route_requires_the_key(api):
    routes = api_routes(api.gw)
    assert len(routes) >= 20
    api.gw.api_throttle.max_failures = 0   # ~100 wrong keys on purpose; the ban has its own test (test_security_*)
    async with aiohttp.ClientSession() as s:
        for headers, msg in (({}, "missing API key"), ({"Authorization": "Bearer wrong"}, "invalid API key"),
                             ({"Authorization": f"Basic {api.gw.api_key}"}, "invalid API key"),
                             ({"Authorization": "Bearer "}, "invalid API key")):
            for method, path in routes:
                async with s.request(method, api.gw.url(concrete(path)), headers=headers, json={}) as r:
                    body = await r.json()
                    assert r.status == 401, (method, path, headers)
                    assert body["success"] is False and body["field"] == "Authorization"
                    assert body["error"].startswith(msg)
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
        # unknown routes under the prefix do not reveal themselves without a key
        async with s.get(api.gw.url("/api/v1/nope")) as r:
            assert r.status == 401
    # nothing was written by the unauthenticated requests
    assert (await api.gw.store.list_numbers())[1] == 0 and await api.gw.store.list_agents() == []


async def test_healthz_and_metrics_are_open(api):
    async with aiohttp.ClientSession() as s:
        async with s.get(api.gw.url("/healthz")) as r:
            assert r.status == 200
            body = await r.json()
            assert body["status"] == "ok" and body["active_calls"] == 0
        async with s.get(api.gw.url("/metrics")) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await r.text()
    assert 'gateway_active_calls{carrier="sip"} 0' in text
    assert "# TYPE gateway_frames_in_total counter" in text
    # every line is valid text exposition: HELP/TYPE comments, or `name{label="v",…} value`
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
                        r'(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\})? -?[0-9.eE+-]+$')
    typed = set()
    for line in text.rstrip("\n").split("\n"):
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind in ("counter", "gauge", "histogram") and name not in typed
            typed.add(name)
            if kind == "histogram":
                typed.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
        elif not line.startswith("# HELP "):
            assert sample.match(line), line
            assert line.split("{")[0].split(" ")[0] in typed, line
    assert text.endswith("\n")


async def test_json_errors_for_unknown_endpoint_and_method(api):
    status, body = await api.get("/nope")
    assert status == 404 and body["success"] is False and "no such endpoint" in body["error"]
    status, body = await api.request("PUT", "/phone_number/list")
    assert status == 405 and body["success"] is False


async def test_openapi_describes_every_route_and_provider_bodies(api):
    status, doc = await api.get("/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    for method, path in api_routes(api.gw):
        assert path in doc["paths"], path
        assert method.lower() in doc["paths"][path], (method, path)
    schemas = doc["components"]["schemas"]
    sip = schemas["Import_sip"]
    assert set(sip["required"]) == {"phone_number", "sip_host", "sip_trunk_name"}
    assert sip["properties"]["sip_port"] == {"type": "integer", "default": 5060}
    assert sip["properties"]["sip_password"]["writeOnly"] is True
    assert sip["properties"]["transport"]["enum"] == ["udp", "tcp", "tls"]
    assert set(schemas["Import_exotel"]["properties"]) >= {"exotel_phone_number", "exotel_api_token", "name"}
    assert "Import_twilio" in schemas
    params = doc["paths"]["/api/v1/phone_number/import/{provider}"]["post"]["parameters"]
    assert params[0]["schema"]["enum"] == ["exotel", "sip", "twilio"]


class ExplodingCarrier(FakeSipCarrier):
    name = "boom"
    providers = ("boom",)
    import_fields = (ImportField("phone_number", required=True, e164=True),
                     ImportField("password", secret=True))

    async def test_connection(self, fields):
        raise RuntimeError("unexpected failure")


async def test_unexpected_exception_is_a_json_500_without_traceback(make_gateway, caplog):
    gw = await make_gateway(carriers={"boom": ExplodingCarrier})
    caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as s:
        a = Api(gw, s, gw.api_key)
        status, body = await a.post("/phone_number/test/boom", json={"phone_number": "+14155550100",
                                                                     "password": "hunter22"})
    assert status == 500
    assert body == {"success": False, "error": "internal error (logged on the gateway)", "field": None}
    assert "RuntimeError" in caplog.text and "hunter22" not in caplog.text


@pytest.mark.parametrize("path", ["/phone_number/import/sip", "/agents", "/calls/dispatch",
                                  "/phone_number/attach"])
async def test_invalid_json_everywhere(api, path):
    status, body = await api.post(path, data=b'{"a": ', headers={"Content-Type": "application/json"})
    assert status == 400 and body["field"] == "body" and "JSON" in body["error"]


async def test_installed_carriers_show_in_openapi(make_gateway):
    """Whatever carriers are installed (entry points), their import bodies are documented from import_fields."""
    gw = await make_gateway(carriers=None)
    async with aiohttp.ClientSession() as s:
        status, doc = await Api(gw, s, gw.api_key).get("/openapi.json")
    assert status == 200
    for carrier in gw.carriers.values():
        for provider in carrier.providers:
            schema = doc["components"]["schemas"][f"Import_{provider}"]
            assert set(schema["required"]) == {f.name for f in carrier.import_fields if f.required}
            assert carrier.number_field in schema["properties"]
            for f in carrier.import_fields:
                assert schema["properties"][f.name].get("writeOnly", False) == f.secret


@pytest.mark.parametrize("method, path, kwargs, field", [
    ("GET", "/phone_number/list", {"params": {"pageno": "99999999999999999999999"}}, "pageno"),
    ("GET", "/phone_number/99999999999999999999999", {}, "id"),
    ("GET", "/phone_number/²", {}, "id"),
    ("GET", "/agents/99999999999999999999999", {}, "id"),
    ("GET", "/calls/logs/99999999999999999999999", {}, "id"),
    ("POST", "/calls/99999999999999999999999/hangup", {}, "id"),
    ("POST", "/agents", {"data": b"[" * 100000 + b"]" * 100000}, "body"),
    ("POST", "/agents", {"data": b'{"name": "x", "settings": {"x": {"v": NaN}}}'}, "body"),
    ("POST", "/phone_number/import/sip", {"data": b"\xff\xfe{}"}, "body"),
    ("POST", "/phone_number/import/sip", {"json": sip_body(sip_port=10**30)}, "sip_port"),
])
async def test_hostile_input_is_a_4xx_not_a_500(api, method, path, kwargs, field):
    status, body = await api.request(method, path, **kwargs)
    assert 400 <= status < 500 and body["field"] == field, body


async def test_openapi_document_is_valid_openapi_31(api):
    validator = pytest.importorskip("openapi_spec_validator")
    status, doc = await api.get("/openapi.json")
    assert status == 200
    validator.validate(doc)   # raises with the offending path when the document is not OpenAPI 3.1


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


class StalledEngine(VoiceEngine):
    """Never reads the call: its inbound queue fills and the bus drops the oldest audio."""

    async def handle_call(self, session: EngineSession) -> None:
        await asyncio.Event().wait()


async def test_metrics_count_live_and_ended_calls(api):
    api.gw.engines.register("stalled", StalledEngine())
    status, body = await api.post("/agents", json={"name": "m", "engine": "stalled"})
    aid = body["agent"]["id"]
    status, body = await api.post("/phone_number/import/sip", json=sip_body())
    nid = body["phone_number"]["id"]
    status, body = await api.post("/calls/dispatch", json={"agent_id": aid, "to_number": "+14155550123",
                                                           "from_number_id": nid})
    assert status == 200, body
    call = api.gw.calls.get(body["call_id"])
    for _ in range(10):
        call.feed_audio(b"\x10\x00" * 160)              # 10 frames of 20 ms at 8 kHz
    _, text = await api.get("/metrics")
    assert metric(text, 'gateway_active_calls{carrier="sip"}') == 1
    assert metric(text, 'gateway_active_calls{carrier="twilio"}') == 0
    assert metric_value(text, "gateway_calls_total", carrier="sip", direction="outbound") == 1
    assert metric(text, "gateway_frames_in_total") == 10
    call.bus.inbound.maxsize = 1                            # the engine does not read: the oldest audio goes
    for _ in range(5):
        call.bus.feed_audio(b"\x10\x00" * 160)
    _, text = await api.get("/metrics")
    dropped = metric(text, "gateway_dropped_frames_total")
    assert dropped == call.bus.counters.dropped_in and dropped >= 1
    call.bus.inbound.maxsize = 50                           # (room for the hangup event: no further drop)
    await api.post(f"/calls/{body['requestId']}/hangup")
    _, text = await api.get("/metrics")
    assert metric(text, 'gateway_active_calls{carrier="sip"}') == 0
    assert metric(text, "gateway_frames_in_total") == 15   # ended calls' counters stay in the totals
    assert metric(text, "gateway_dropped_frames_total") == dropped


class MeteredCarrier(FakeSipCarrier):
    name = "metered"
    providers = ("metered",)

    def metrics(self):
        return {"gateway_rtp_packets_sent_total": 1234567890, "gateway_rtp_jitter_seconds": 0.0123456789,
                "gateway_calls_total": 99, "bad name!": 1}


class BrokenMetricsCarrier(FakeSipCarrier):
    name = "broken"
    providers = ("broken",)

    def metrics(self):
        raise RuntimeError("metrics hook bug")


async def test_carrier_metrics_are_exact_and_cannot_break_the_scrape(make_gateway):
    gw = await make_gateway(carriers={"metered": MeteredCarrier, "broken": BrokenMetricsCarrier})
    async with aiohttp.ClientSession() as s, s.get(gw.url("/metrics")) as r:
        assert r.status == 200
        text = await r.text()
    assert metric_value(text, "gateway_rtp_packets_sent_total") == 1234567890
    assert metric_value(text, "gateway_rtp_jitter_seconds") == 0.0123456789
    # the core's own gateway_calls_total (labelled, no calls yet: no sample) is not replaced by the carrier's
    assert text.count("# TYPE gateway_calls_total ") == 1 and metric_value(text, "gateway_calls_total") is None
    assert "bad name!" not in text
    assert metric_value(text, "gateway_active_calls", carrier="broken") == 0


async def test_openapi_matches_what_every_installed_carrier_serves(make_gateway):
    """Regression (issue 14): the document offered importing a `webrtc` number (the endpoint refuses: the browser
    carrier takes no numbers) and lacked POST /api/v1/webrtc/token. Carriers now describe their own routes."""
    gw = await make_gateway(carriers=None)
    assert "webrtc" in gw.carriers
    async with aiohttp.ClientSession() as s:
        a = Api(gw, s, gw.api_key)
        status, doc = await a.get("/openapi.json")
        for method, path in api_routes(gw):
            assert method.lower() in doc["paths"].get(path, {}), (method, path)
        offered = doc["paths"]["/api/v1/phone_number/import/{provider}"]["post"]["parameters"][0]["schema"]["enum"]
        assert "webrtc" not in offered and "Import_webrtc" not in doc["components"]["schemas"]
        token = doc["paths"]["/api/v1/webrtc/token"]["post"]
        ref = token["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert set(doc["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]) == {"agent_id", "ttl"}
        status, body = await a.post("/phone_number/import/webrtc", json={"phone_number": "+14155550100"})
        assert status == 404 and body["field"] == "provider" and "webrtc" not in body["error"].split("available")[1]
        status, body = await a.post("/webrtc/token", json={"ttl": 60})
        assert status == 200 and body["token"]
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(doc)


async def test_bodies_are_documented_from_the_models_that_check_them(api):
    """Issue 14: dispatch / attach / detach / transfer bodies are pydantic models; the document's schemas are
    theirs, and a bad body gets the same error shape naming the field."""
    from gateway.api import models
    status, doc = await api.get("/openapi.json")
    schemas = doc["components"]["schemas"]
    for model in (models.Dispatch, models.Attach, models.Detach, models.Transfer):
        own = {k: v for k, v in models.schema_of(model).items() if k != "$defs"}   # nested models: components
        assert schemas[model.__name__] == own
    assert set(schemas["Dispatch"]["required"]) == {"agent_id", "to_number"}   # from_number_id is optional
    assert schemas["Dispatch"]["properties"]["to_number"]["pattern"] == r"^\+[1-9]\d{6,14}$"
    for body, field in (({"phone_number_id": True, "agent_id": 1}, "phone_number_id"),
                        ({"phone_number_id": 1}, "agent_id"), ({"phone_number_id": 1, "agent_id": 0}, "agent_id"),
                        ({"phone_number_id": 1, "agent_id": 1, "x": 1}, "x")):
        status, err = await api.post("/phone_number/attach", json=body)
        assert status == 400 and err["success"] is False and err["field"] == field and field in err["error"], err
