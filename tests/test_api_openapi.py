"""Issue 14 item 8: the OpenAPI document is generated from the pydantic models the handlers validate with and answer
with. Walking the aiohttp router, every route is in the document with its registered models' schemas; and real
answers of every main endpoint validate against the schema the document gives them."""
from __future__ import annotations

import re
from typing import Any

import aiohttp
import jsonschema
import pytest
from pydantic import ValidationError

from gateway.api import responses
from gateway.api.models import schema_of
from gateway.api.routes import bodies, endpoints
from test_api_fakes import Api, api, sip_body  # noqa: F401
from test_api_misc import api_routes

DOCUMENTED_OUTSIDE_API = ("/healthz", "/metrics")


def component(doc: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    return doc["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]


def own(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's schema without the nested models it carries along (the document has them as components)."""
    return {k: v for k, v in schema.items() if k != "$defs"}


def documented_routes(gw) -> list[tuple[str, str]]:
    out = api_routes(gw)
    for route in gw.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if path in DOCUMENTED_OUTSIDE_API and route.method != "HEAD":
            out.append((route.method, path))
    return out


async def test_every_route_is_documented_with_its_models_schemas(make_gateway):
    gw = await make_gateway(carriers=None)           # every installed carrier: their own /api/v1 routes too
    async with aiohttp.ClientSession() as s:
        status, doc = await Api(gw, s, gw.api_key).get("/openapi.json")
    assert status == 200
    registered = endpoints(gw.app)
    routes = documented_routes(gw)
    assert len(routes) >= 25
    for method, path in routes:
        e = registered.get((method, path))
        assert e is not None, f"{method} {path} was added without api_route(): it has no documented models"
        op = doc["paths"][path][method.lower()]
        # the answer: the response model's schema
        answer = op["responses"][str(e.status)]["content"][e.content_type]["schema"]
        if e.response is None:      # text (metrics) or binary (a recording)
            assert answer == ({"type": "string"} if e.content_type.startswith("text/")
                              else {"type": "string", "format": "binary"}), (method, path)
        else:
            assert component(doc, answer) == own(schema_of(e.response, "serialization")), (method, path)
        for status_code in e.errors:
            err = op["responses"][str(status_code)]["content"]["application/json"]["schema"]
            assert component(doc, err) == schema_of(responses.ErrorBody, "serialization")
        # the body: the model (or, for per-provider bodies, each model) the handler parses with
        models = bodies(e, gw)
        if models:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            refs = schema.get("oneOf", [schema])
            assert [component(doc, r) for r in refs] == [own(schema_of(m)) for m in models], (method, path)
        else:
            assert "requestBody" not in op, (method, path)
        # path and query parameters: the fields of the models the handler parses them with
        params = {(p["in"], p["name"]) for p in op.get("parameters", ())}
        want = {("path", n) for n in (e.params.model_fields if e.params else ())}
        want |= {("query", n) for n in (e.query.model_fields if e.query else ())}
        want |= {("header", n) for n in (e.headers.model_fields if e.headers else ())}
        assert params == want, (method, path)
        assert set(re.findall(r"\{(\w+)\}", path)) == {n for w, n in want if w == "path"}
        assert ("security" in op) == (not e.auth)
    # and nothing is documented that is not served
    served = {(m.lower(), p) for m, p in routes}
    assert {(m, p) for p, item in doc["paths"].items() for m in item} == served


def test_an_answer_with_an_undocumented_field_is_refused():
    """Envelopes name every field: a handler adding one without its model fails at once (in its tests), instead
    of answering something the document does not describe."""
    with pytest.raises(ValidationError):
        responses.Deleted(deleted=1, surprise=True)       # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        responses.AgentReply.model_validate({"agent": {"id": 1}})


class Checker:
    """Validates real answers against the schema the document gives (method, path, status)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.seen: set[tuple[str, str]] = set()

    def check(self, method: str, path: str, status: int, body: Any) -> None:
        op = self.doc["paths"][path][method.lower()]
        assert str(status) in op["responses"], (method, path, status, body)
        schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
        jsonschema.Draft202012Validator({**schema, "components": self.doc["components"]}).validate(body)
        self.seen.add((method, path))


async def test_answers_validate_against_their_documented_schemas(api):
    status, doc = await api.get("/openapi.json")
    c = Checker(doc)
    c.check("GET", "/api/v1/openapi.json", status, doc)
    p = "/api/v1"

    async def call(method: str, template: str, url: str, **kw: Any) -> tuple[int, Any]:
        status, body = await api.request(method, url, **kw)
        c.check(method, p + template if not template.startswith("/healthz") else template, status, body)
        return status, body

    status, body = await call("POST", "/agents", "/agents", json={
        "name": "A", "engine": "echo", "webhook_url": "https://hooks.example.com/x",
        "settings": {"transfer": {"enabled": True, "transfer_options": [
            {"number": "+14155550188", "transfer_message": "One moment"}]},
            "webhook": {"secret": "0123456789abcdef0123"}, "voicemail": {"enabled": True}}})
    assert status == 201
    aid = body["agent"]["id"]
    await call("GET", "/agents", "/agents")
    await call("GET", "/agents/{id}", f"/agents/{aid}")
    await call("PATCH", "/agents/{id}", f"/agents/{aid}", json={"settings": {"amd": {"enabled": True}}})
    await call("PUT", "/agents/{id}", f"/agents/{aid}", json={"name": "A", "engine": "echo", "settings": {
        "transfer": {"number": "+14155550188"}}})
    status, _ = await call("POST", "/phone_number/test/{provider}", "/phone_number/test/sip", json=sip_body())
    assert status == 200
    status, body = await call("POST", "/phone_number/import/{provider}", "/phone_number/import/sip",
                              json=sip_body())
    assert status == 201
    nid = body["id"]
    await call("GET", "/phone_number/list", "/phone_number/list")
    await call("GET", "/phone_number/{id}", f"/phone_number/{nid}")
    await call("PATCH", "/phone_number/{id}", f"/phone_number/{nid}", json={"sip_port": 5080})
    await call("POST", "/phone_number/{id}/test", f"/phone_number/{nid}/test")
    await call("POST", "/phone_number/attach", "/phone_number/attach", json={"phone_number_id": nid, "agent_id": aid})
    status, body = await call("POST", "/calls/dispatch", "/calls/dispatch",
                              json={"agent_id": aid, "to_number": "+14155550123"})
    assert status == 200
    log_id, call_id = body["requestId"], body["call_id"]
    await call("GET", "/calls/live", "/calls/live")
    # attended transfer on a carrier that cannot consult: the documented refusals (their 2xx answers are checked
    # against ConsultReply by the handler in the consultation tests)
    for step in ("consult", "consult/complete", "consult/cancel"):
        status, body = await call("POST", "/calls/{id}/" + step, f"/calls/{log_id}/{step}",
                                  json={"number": "+14155550177"} if step == "consult" else None)
        assert 400 <= status < 500, (step, body)
    for step in ("hold", "unhold", "mute", "unmute"):
        status, body = await call("POST", "/calls/{id}/" + step, f"/calls/{log_id}/{step}")
        assert status < 500, (step, body)
    status, body = await call("POST", "/calls/{id}/transfer", f"/calls/{log_id}/transfer",
                              json={"number": "+14155550177"})
    assert status == 200, body
    await call("POST", "/calls/{id}/hangup", f"/calls/{call_id}/hangup")
    await call("GET", "/calls/logs", "/calls/logs")
    await call("GET", "/calls/logs/{id}", f"/calls/logs/{log_id}")
    # errors are documented too, with the one error model
    status, _ = await call("GET", "/calls/logs", "/calls/logs", params={"call_status": "bogus"})
    assert status == 400
    status, _ = await call("POST", "/calls/dispatch", "/calls/dispatch", json={"agent_id": aid})
    assert status == 400
    status, _ = await call("GET", "/agents/{id}", "/agents/999")
    assert status == 404
    await call("POST", "/phone_number/{id}/health", f"/phone_number/{nid}/health")
    # the dispatch queue and bulk calls
    status, body = await call("POST", "/calls/dispatch", "/calls/dispatch",
                              json={"agent_id": aid, "to_number": "+14155550124", "queue": True})
    assert status == 202, body
    status, body = await call("POST", "/calls/bulk_call/create", "/calls/bulk_call/create", json={
        "name": "b", "phone_number_id": nid, "contact_list": [{"phone_number": "+14155550125", "who": "Dana"}]})
    assert status == 201, body
    bid = body["bulk_call_id"]
    await call("PUT", "/calls/bulk_call/{id}", f"/calls/bulk_call/{bid}", json={"action": "pause"})
    await call("GET", "/calls/bulk_call", "/calls/bulk_call")
    await call("GET", "/calls/bulk_call/{id}", f"/calls/bulk_call/{bid}")
    status, body = await call("GET", "/calls/queue", "/calls/queue")
    qid = body["queue"][0]["id"]
    await call("GET", "/calls/queue/{id}", f"/calls/queue/{qid}")
    await call("DELETE", "/calls/queue/{id}", f"/calls/queue/{qid}")
    await call("DELETE", "/calls/bulk_call/{id}", f"/calls/bulk_call/{bid}")
    await call("POST", "/phone_number/detach", "/phone_number/detach", json={"phone_number_id": nid})
    await call("DELETE", "/phone_number/{id}", f"/phone_number/{nid}")
    await call("DELETE", "/agents/{id}", f"/agents/{aid}")
    status, body = await api.get("/healthz")
    c.check("GET", "/healthz", status, body)
    status, body = await call("POST", "/nodes/{proc}/drain", f"/nodes/{api.gw.settings.proc_id}/drain",
                              json={"timeout": 30})
    assert status == 202
    status, body = await api.get("/healthz")
    assert status == 503
    c.check("GET", "/healthz", status, body)
    # every JSON endpoint of the API was exercised
    registered = endpoints(api.gw.app)
    json_routes = {(m, p) for m, p in documented_routes(api.gw)
                   if registered[(m, p)].content_type == "application/json"}
    assert json_routes - c.seen == set()


async def test_webrtc_token_answer_matches_its_schema(make_gateway):
    gw = await make_gateway(carriers=None)
    async with aiohttp.ClientSession() as s:
        a = Api(gw, s, gw.api_key)
        _, doc = await a.get("/openapi.json")
        c = Checker(doc)
        status, body = await a.post("/webrtc/token", json={"ttl": 60})
        c.check("POST", "/api/v1/webrtc/token", status, body)
        status, body = await a.post("/webrtc/token", json={"ttl": "forever"})
        assert status == 400 and body["field"] == "ttl"
        c.check("POST", "/api/v1/webrtc/token", status, body)

