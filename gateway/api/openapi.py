"""The OpenAPI 3.1 document served at /api/v1/openapi.json, written as data.

Import and test bodies are derived from the loaded carriers' `import_fields`, so a new carrier shows up in the
document with no edit here. A test checks that every registered /api/v1 route is described.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..amd.settings import PROVIDERS as AMD_PROVIDERS
from ..call import CALL_STATUSES
from ..carrier import ImportField
from ..store.dispatchq import ITEM_STATUSES
from . import models, queue
from .numbers import fields_of, providers
from .validation import MAX_PAGESIZE

if TYPE_CHECKING:
    from ..runtime import Gateway

PREFIX = "/api/v1"
_KIND = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _param(name: str, where: str = "path", schema: dict[str, Any] | None = None, required: bool | None = None,
           description: str = "") -> dict[str, Any]:
    p = {"name": name, "in": where, "required": where == "path" if required is None else required,
         "schema": schema or {"type": "string"}}
    if description:
        p["description"] = description
    return p


def _op(summary: str, *, tag: str, body: dict[str, Any] | None = None, params: list[dict[str, Any]] | None = None,
        ok: dict[str, Any] | None = None, status: str = "200", errors: tuple[int, ...] = (400, 401, 404)
        ) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag],
                          "responses": {status: _json(ok or _ref("Success"))}}
    for code in errors:
        op["responses"][str(code)] = _json(_ref("Error"), {400: "Invalid input", 401: "Missing or wrong API key",
                                                          404: "Not found", 409: "Conflict",
                                                          429: "Over a limit (see Retry-After)",
                                                          502: "Carrier error", 503: "At capacity",
                                                          504: "The process owning the call did not answer"}[code])
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _recording_op(cid: dict[str, Any]) -> dict[str, Any]:
    """GET /calls/{id}/recording answers audio, not JSON (docs/recording.md)."""
    op = _op("The call's recording (WAV; Range requests answered 206)", tag="calls", params=[cid])
    wav = {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}
    op["responses"]["200"] = {"description": "the recording", "content": wav}
    op["responses"]["206"] = {"description": "the byte range asked for", "content": wav}
    op["parameters"] = [cid, _param("Range", "header", description="e.g. bytes=0-1023", required=False)]
    return op


def field_schema(f: ImportField) -> dict[str, Any]:
    s: dict[str, Any] = {"type": _KIND.get(f.kind, "string")}
    if f.kind is list:
        s["items"] = {"type": "string"}
    if f.e164:
        s["pattern"] = r"^\+[1-9]\d{6,14}$"
    if f.choices:
        s["enum"] = list(f.choices)
    if f.default is not None:
        s["default"] = f.default
    if f.secret:
        s["writeOnly"] = True
        s["format"] = "password"
    if f.help:
        s["description"] = f.help
    return s


def import_schema(fields: tuple[ImportField, ...]) -> dict[str, Any]:
    props = {f.name: field_schema(f) for f in fields}
    props["agent_id"] = {"type": "integer", "description": "attach the number to this agent"}
    return {"type": "object", "additionalProperties": False, "properties": props,
            "required": [f.name for f in fields if f.required]}


PAGE = [_param("pageno", "query", {"type": "integer", "minimum": 1, "default": 1}),
        _param("pagesize", "query", {"type": "integer", "minimum": 1, "maximum": MAX_PAGESIZE, "default": 20})]


def _schemas(gw: Gateway) -> dict[str, Any]:
    target = {
        "number": {"type": "string", "pattern": r"^\+[1-9]\d{6,14}$"},
        "backup_numbers": {"type": "array", "items": {"type": "string"}},
        "type": {"type": "string", "enum": ["static", "dynamic"], "default": "static"},
        "transfer_condition": {"type": "string"},
        "transfer_message": {"type": "string", "description": "said before transferring: text, or a WAV path or "
                                                              "http(s) URL ending .wav"}}
    transfer = {"type": "object", "properties": {
        "enabled": {"type": "boolean", "default": True, "description": "false: the engine's transfers are refused"},
        **target,
        "transfer_options": {"type": "array", "description": "several targets the engine chooses between",
                             "items": {"type": "object", "required": ["number"], "properties": target}}}}
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["success", "error"], "properties": {
            "success": {"const": False}, "error": {"type": "string"}, "field": {"type": ["string", "null"]}}},
        "Success": {"type": "object", "properties": {"success": {"const": True}}},
        "PhoneNumber": {"type": "object", "properties": {
            "id": {"type": "integer"}, "phone_number": {"type": "string"}, "provider": {"type": "string"},
            "name": {"type": ["string", "null"]}, "sip_trunk_name": {"type": ["string", "null"]},
            "agent_id": {"type": ["integer", "null"]}, "status": {"type": "object"},
            "config": {"type": "object", "description": "carrier settings; secret fields show \"****\" when set"},
            "channels": {"type": ["integer", "null"], "description": "at most this many live calls"},
            "max_cps": {"type": ["number", "null"], "description": "outbound calls started per second"},
            "health_score": {"type": ["integer", "null"], "minimum": 0, "maximum": 100},
            "health_status": {"type": "string", "enum": ["healthy", "degraded", "unhealthy", "unknown"]},
            "health_score_updated_at": {"type": ["string", "null"], "format": "date-time"},
            "health": {"type": ["object", "null"], "description": "reasons, probe, attempts, answered, asr, "
                                                                  "top_failures, window_s, checked_by"},
            "created_at": {"type": "string", "format": "date-time"}}},
        "PhoneNumberResponse": {"type": "object", "properties": {"success": {"const": True},
                                                                 "phone_number": _ref("PhoneNumber")}},
        "PhoneNumberList": {"type": "object", "properties": {
            "success": {"const": True}, "total": {"type": "integer"}, "pageno": {"type": "integer"},
            "pagesize": {"type": "integer"}, "phone_numbers": {"type": "array", "items": _ref("PhoneNumber")}}},
        "TestReport": {"type": "object", "properties": {"success": {"const": True}, "report": {
            "type": "object", "description": "the carrier's verdict per step"}}},
        "AgentInput": {"type": "object", "additionalProperties": False, "required": ["name"], "properties": {
            "name": {"type": "string"},
            "engine": {"type": "string", "description": "echo | greeting | ws://… | wss://…"},
            "webhook_url": {"type": "string", "format": "uri"},
            "settings": {"type": "object", "properties": {
                "transfer": transfer,
                "end_call": {"type": "object", "properties": {"enabled": {"type": "boolean"},
                                                              "phrases": {"type": "array",
                                                                          "items": {"type": "string"}},
                                                              "message": {"type": "string"}}},
                "voicemail": {"type": "object", "properties": {"enabled": {"type": "boolean", "default": False},
                                                               "message": {"type": "string"}}},
                "webhook": {"type": "object", "properties": {"secret": {
                    "type": ["string", "null"], "minLength": 16, "maxLength": 200, "writeOnly": True,
                    "description": "signs each delivery (X-Gateway-Signature); shown as \"****\""}}},
                "amd": {"type": "object", "properties": {"enabled": {"type": "boolean", "default": False},
                                                         "provider": {"type": "string", "default": "gateway",
                                                                      "enum": list(AMD_PROVIDERS)}}},
                "recording": {"type": "object", "additionalProperties": False, "description":
                              "record the call's audio (docs/recording.md); dispatch may override it per call",
                              "properties": {"enabled": {"type": "boolean", "default": False},
                                             "channels": {"type": "string", "enum": ["mono", "dual"],
                                                          "default": "dual"}}}}}}},
        "Agent": {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                                                   "engine": {"type": ["string", "null"]},
                                                   "webhook_url": {"type": ["string", "null"]},
                                                   "settings": {"type": "object"},
                                                   "created_at": {"type": "string"}}},
        "AgentResponse": {"type": "object", "properties": {"success": {"const": True}, "agent": _ref("Agent")}},
        # the bodies the handlers validate with pydantic: their schemas come from the same classes
        **models.schemas(models.Dispatch, models.Recording, models.Attach, models.Detach, models.Transfer,
                         models.Consult, queue.BulkCreate, queue.Contact, queue.BulkAction),
        "Dispatched": {"type": "object", "properties": {
            "success": {"const": True}, "status": {"const": "dispatched"}, "requestId": {"type": "integer"},
            "call_id": {"type": "string"}}},
        "HoldMuteState": {"type": "object", "properties": {
            "success": {"const": True}, "status": {"enum": ["held", "resumed", "muted", "unmuted"]},
            "call_id": {"type": "string"}, "requestId": {"type": "integer"}, "held": {"type": "boolean"},
            "remote_held": {"type": "boolean"}, "muted": {"type": "boolean"}}},
        "CallLog": {"type": "object", "properties": {k: {"type": t} for k, t in {
            "id": "integer", "call_uuid": "string", "call_direction": "string", "from_number": "string",
            "to_number": "string", "call_status": "string", "call_duration": "string",
            "call_duration_in_seconds": "number", "is_call_transfer": "boolean", "amd_detected": "boolean",
            "amd_answered_by": ["string", "null"], "amd_duration": ["number", "null"], "is_voicemail": "boolean",
            "voicemail_type": ["string", "null"], "is_fax": "boolean", "hangup_source": ["string", "null"],
            "hangup_reason": ["string", "null"], "recording_url": ["string", "boolean"],
            "recording_status": ["string", "null"], "recording": ["object", "null"],
            "channel_type": "string", "timing": ["object", "null"]}.items()}},
    }
    for provider in providers(gw):
        carrier = gw.carrier_for(provider)
        if carrier is not None:   # providers() lists only providers of loaded carriers
            schemas[f"Import_{provider}"] = import_schema(fields_of(carrier))
    return schemas


def build(gw: Gateway) -> dict[str, Any]:
    schemas = _schemas(gw)
    names = sorted(k.removeprefix("Import_") for k in schemas if k.startswith("Import_"))
    import_body = {"oneOf": [_ref(f"Import_{p}") for p in names]} if names else {"type": "object"}
    pid = _param("provider", schema={"type": "string", "enum": names} if names else None)
    nid = _param("id", schema={"type": "integer"})
    aid = _param("id", schema={"type": "integer"})
    cid = _param("id", description="call log id or call uuid")
    p = PREFIX
    paths: dict[str, Any] = {
        f"{p}/openapi.json": {"get": _op("This document", tag="meta", ok={"type": "object"}, errors=(401,))},
        f"{p}/phone_number/import/{{provider}}": {"post": _op(
            "Import a phone number / trunk (body per provider: see Import_<provider>)", tag="phone numbers",
            params=[pid], body=import_body, ok=_ref("PhoneNumberResponse"), status="201",
            errors=(400, 401, 404, 409, 502))},
        f"{p}/phone_number/test/{{provider}}": {"post": _op(
            "Test a trunk / account before importing it (same body as import)", tag="phone numbers",
            params=[pid], body=import_body, ok=_ref("TestReport"), errors=(400, 401, 404, 502))},
        f"{p}/phone_number/list": {"get": _op(
            "List phone numbers", tag="phone numbers", ok=_ref("PhoneNumberList"),
            params=PAGE + [_param("provider", "query")], errors=(400, 401))},
        f"{p}/phone_number/attach": {"post": _op(
            "Attach a phone number to an agent", tag="phone numbers", ok=_ref("PhoneNumberResponse"),
            body=_ref("Attach"))},
        f"{p}/phone_number/detach": {"post": _op(
            "Detach a phone number from its agent", tag="phone numbers", ok=_ref("PhoneNumberResponse"),
            body=_ref("Detach"))},
        f"{p}/phone_number/{{id}}": {
            "get": _op("Show a phone number", tag="phone numbers", params=[nid], ok=_ref("PhoneNumberResponse")),
            "patch": _op("Change some import fields of a number (\"****\" keeps a secret); checked like an import",
                         tag="phone numbers", params=[nid], body={"type": "object"}, ok=_ref("PhoneNumberResponse"),
                         errors=(400, 401, 404, 409, 502)),
            "delete": _op("Delete a phone number", tag="phone numbers", params=[nid])},
        f"{p}/phone_number/{{id}}/test": {"post": _op(
            "Test an imported trunk / account", tag="phone numbers", params=[nid], ok=_ref("TestReport"),
            errors=(400, 401, 404, 409, 502))},
        f"{p}/phone_number/{{id}}/health": {"post": _op(
            "Check a number's health now (carrier probe + call log): health_score, health_status, "
            "health_score_updated_at and the reasons", tag="phone numbers", params=[nid])},
        f"{p}/agents": {
            "post": _op("Create an agent", tag="agents", body=_ref("AgentInput"), ok=_ref("AgentResponse"),
                        status="201", errors=(400, 401)),
            "get": _op("List agents", tag="agents", params=PAGE, errors=(400, 401))},
        f"{p}/agents/{{id}}": {
            "get": _op("Show an agent", tag="agents", params=[aid], ok=_ref("AgentResponse")),
            "put": _op("Replace an agent", tag="agents", params=[aid], body=_ref("AgentInput"),
                       ok=_ref("AgentResponse")),
            "patch": _op("Update some fields of an agent (settings merged per section)", tag="agents",
                         params=[aid], body={"type": "object"}, ok=_ref("AgentResponse")),
            "delete": _op("Delete an agent (its numbers are detached)", tag="agents", params=[aid])},
        f"{p}/calls/dispatch": {"post": _op(
            "Place an outbound call (or queue it: `queue: true` answers 202 with `queue_id`)", tag="calls",
            body=_ref("Dispatch"), ok=_ref("Dispatched"), errors=(400, 401, 404, 409, 429, 502, 503))},
        f"{p}/calls/queue": {"get": _op(
            "Queued calls (dispatch queue and bulk calls)", tag="dispatch queue", errors=(400, 401),
            params=PAGE + [_param("status", "query", {"type": "string", "enum": list(ITEM_STATUSES)}),
                           _param("bulk_call_id", "query", {"type": "integer"})],
            ok={"type": "object", "properties": {"success": {"const": True}, "total": {"type": "integer"},
                                                 "queue": {"type": "array", "items": {"type": "object"}}}})},
        f"{p}/calls/queue/{{id}}": {
            "get": _op("One queued call (its status, and `call_log_id` once placed)", tag="dispatch queue",
                       params=[nid]),
            "delete": _op("Cancel a call still queued (409 once it is being placed)", tag="dispatch queue",
                          params=[nid], errors=(400, 401, 404, 409))},
        f"{p}/calls/bulk_call/create": {"post": _op(
            "Create a bulk call: one queued call per contact (other contact keys become its call_context)",
            tag="dispatch queue", body=_ref("BulkCreate"), status="201", errors=(400, 401, 404, 409))},
        f"{p}/calls/bulk_call": {"get": _op("List bulk calls", tag="dispatch queue", params=PAGE,
                                            errors=(400, 401))},
        f"{p}/calls/bulk_call/{{id}}": {
            "get": _op("A bulk call with its counts per status", tag="dispatch queue", params=[nid]),
            "put": _op("Pause, resume or cancel a bulk call", tag="dispatch queue", params=[nid],
                       body=_ref("BulkAction"), errors=(400, 401, 404, 409)),
            "delete": _op("Cancel a bulk call (queued calls are cancelled; placed calls go on)",
                          tag="dispatch queue", params=[nid], errors=(400, 401, 404, 409))},
        f"{p}/calls/logs": {"get": _op(
            "Call log", tag="calls", errors=(400, 401), params=PAGE + [
                _param("agentid", "query", {"type": "integer"}),
                _param("call_status", "query", {"type": "string", "enum": list(CALL_STATUSES)}),
                _param("carrier_sid", "query"), _param("bulk_call_id", "query", {"type": "integer"}),
                _param("carrier", "query", description="the call's carrier (channel_type), e.g. sip, twilio"),
                _param("since", "query", {"type": "string"}, description="created at or after: YYYY-MM-DD "
                       "(UTC day) or an ISO 8601 date-time (no zone: UTC)"),
                _param("until", "query", {"type": "string"}, description="created up to: YYYY-MM-DD (through "
                       "that UTC day) or an ISO 8601 date-time (inclusive)")],
            ok={"type": "object", "properties": {"success": {"const": True}, "total": {"type": "integer"},
                                                 "call_log_data": {"type": "array", "items": _ref("CallLog")}}})},
        f"{p}/calls/logs/{{id}}": {"get": _op(
            "One call with its events", tag="calls", params=[cid],
            ok={"type": "object", "properties": {"call_log": _ref("CallLog"),
                                                 "events": {"type": "array", "items": {"type": "object"}}}})},
        f"{p}/calls/live": {"get": _op("Live calls", tag="calls", errors=(401,))},
        f"{p}/calls/{{id}}/hangup": {"post": _op("Hang up a live call", tag="calls", params=[cid])},
        f"{p}/calls/{{id}}/transfer": {"post": _op(
            "Transfer a live call (default: the agent's transfer number)", tag="calls", params=[cid],
            body=_ref("Transfer"), errors=(400, 401, 404, 409))},
        f"{p}/calls/{{id}}/consult": {"post": _op(
            "Attended transfer, step 1: put the caller on hold and call the target (the engine then talks to it)",
            tag="calls", params=[cid], body=_ref("Consult"), errors=(400, 401, 404, 409, 502))},
        f"{p}/calls/{{id}}/consult/complete": {"post": _op(
            "Attended transfer, step 2: join the caller and the answered target; the gateway leaves the call",
            tag="calls", params=[cid], errors=(401, 404, 409, 502, 504))},
        f"{p}/calls/{{id}}/consult/cancel": {"post": _op(
            "Attended transfer: end the consultation call; the engine talks to the caller again", tag="calls",
            params=[cid], errors=(401, 404, 409, 502))},
        f"{p}/calls/{{id}}/recording": {"get": _recording_op(cid)},
        **{f"{p}/calls/{{id}}/{op}": {"post": _op(summary, tag="calls", params=[cid], ok=_ref("HoldMuteState"),
                                                  errors=(400, 401, 404, 409, 502))}
           for op, summary in (("hold", "Put a live call on hold: music on hold, the engine paused and hearing "
                                        "nothing (SIP: re-INVITE a=sendonly; docs/hold.md)"),
                               ("unhold", "Take a live call off hold"),
                               ("mute", "Stop the caller's audio reaching the engine"),
                               ("unmute", "Let the caller's audio reach the engine again"))},
        f"{p}/nodes/{{proc}}/drain": {"post": _op(
            "Drain a process (`<node>.<k>`) or, under `serve --workers N`, its whole node: new calls refused, live "
            "calls go on up to the drain timeout, then the process exits (docs/deploy.md)", tag="nodes",
            params=[_param("proc", description="process id or node id")], status="202",
            body={"type": "object", "properties": {"timeout": {
                "type": "integer", "minimum": 0, "description": "seconds; default the process's --drain-timeout"}}},
            ok={"type": "object", "properties": {"success": {"const": True}, "proc": {"type": "string"},
                                                 "state": {"const": "draining"}}})},
    }
    for carrier in gw.carriers.values():     # the /api/v1 routes carriers add themselves
        for path, item in carrier.openapi_paths().items():
            paths.setdefault(path, {}).update(item)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Telephony gateway API", "version": "1.0.0",
                 "description": "Phone numbers and trunks, agents, calls. Every /api/v1 request needs "
                                "`Authorization: Bearer <api key>`. Errors: {success: false, error, field}."},
        "servers": [{"url": gw.settings.public_base}],
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": schemas},
        "paths": paths,
    }
