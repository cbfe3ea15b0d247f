"""Agents: a voice-engine profile plus the telephony settings the gateway acts on (transfer, end_call,
voicemail, AMD) and the lifecycle webhook URL."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..amd.settings import PROVIDERS as AMD_PROVIDERS
from ..carrier import CarrierError
from ..netguard import BlockedDestination, check_destination
from ..redact import is_redacted, redact_url
from ..store.store import NotFoundError
from ..wavfetch import is_wav_url
from .errors import ApiError, read_json
from .validation import (
    as_bool,
    as_e164,
    as_http_url,
    as_int,
    as_list,
    as_object,
    as_str,
    bad,
    pagination,
    reject_unknown,
    required,
)

if TYPE_CHECKING:
    from ..runtime import Gateway

FIELDS = {"name", "engine", "webhook_url", "settings"}
TRANSFER_TYPES = ("static", "dynamic")


def _gw(request: web.Request) -> Gateway:
    gw: Gateway = request.app["gateway"]
    return gw


OPTION_FIELDS = ("number", "type", "backup_numbers", "transfer_condition", "transfer_message")


def _transfer_target(t: dict[str, Any], f: str, *, number_required: bool) -> dict[str, Any]:
    """number, backup_numbers, type, condition and message: the fields of the legacy section and of each option."""
    if t.get("number") not in (None, ""):
        t["number"] = as_e164(t["number"], f"{f}.number")
    elif number_required:
        raise bad(f"{f}.number", "is required (an E.164 number such as +14155550100)")
    else:
        t["number"] = None
    t["backup_numbers"] = [as_e164(n, f"{f}.backup_numbers[{i}]")
                           for i, n in enumerate(as_list(t.get("backup_numbers") or [], f"{f}.backup_numbers"))]
    t["type"] = t.get("type") or "static"
    if t["type"] not in TRANSFER_TYPES:
        raise bad(f"{f}.type", f"must be one of {', '.join(TRANSFER_TYPES)} (got {t['type']!r})")
    for key in ("transfer_condition", "transfer_message"):
        if t.get(key) is not None:
            t[key] = as_str(t[key], f"{f}.{key}", max_len=4000)
    message = t.get("transfer_message") or ""
    if is_wav_url(message):            # fetched when a call is transferred; here only its form is checked
        t["transfer_message"] = as_http_url(message, f"{f}.transfer_message")
    elif message.lower().endswith(".wav"):   # a file the gateway plays: it must load
        _check_wav(message, f"{f}.transfer_message")
    return t


def _transfer(v: Any) -> dict[str, Any]:
    """Ours (`number`, …) and the seed API's shape (`enabled`, `transfer_options: [...]`); gateway/transfer.py
    says what each means when a call is transferred."""
    f = "settings.transfer"
    t = _transfer_target(dict(as_object(v, f)), f, number_required=False)
    if "enabled" in t:
        t["enabled"] = as_bool(t["enabled"], f"{f}.enabled")
    if t.get("transfer_options") is not None:
        options = t["transfer_options"]
        if not isinstance(options, list):
            raise bad(f"{f}.transfer_options", "must be a list of {number, type, backup_numbers, "
                                               "transfer_condition, transfer_message}")
        checked = []
        for i, o in enumerate(options):
            of = f"{f}.transfer_options[{i}]"
            o = dict(as_object(o, of))
            reject_unknown(o, OPTION_FIELDS, f"{of}.")
            checked.append(_transfer_target(o, of, number_required=True))
        t["transfer_options"] = checked
    return t


def _check_wav(path: str, field: str) -> None:
    from ..amd.wav import WavError, load_message
    try:
        load_message(path.strip(), 8000)
    except WavError as e:
        raise bad(field, str(e)) from None


def _end_call(v: Any) -> dict[str, Any]:
    f = "settings.end_call"
    e = dict(as_object(v, f))
    if "enabled" in e:
        e["enabled"] = as_bool(e["enabled"], f"{f}.enabled")
    if e.get("phrases") is not None:
        phrases = as_list(e["phrases"], f"{f}.phrases")
        e["phrases"] = [as_str(p, f"{f}.phrases[{i}]") for i, p in enumerate(phrases)]
    if e.get("message") is not None:
        e["message"] = as_str(e["message"], f"{f}.message", max_len=4000)
    return e


def _voicemail(v: Any) -> dict[str, Any]:
    f = "settings.voicemail"
    m = dict(as_object(v, f))
    m["enabled"] = as_bool(m.get("enabled", False), f"{f}.enabled")
    if m.get("message") is not None:
        m["message"] = as_str(m["message"], f"{f}.message", max_len=4000)
        if m["message"].strip().lower().endswith(".wav"):   # the gateway plays it: it must be a WAV it can read
            _check_wav(m["message"], f"{f}.message")
    return m


def _amd(v: Any) -> dict[str, Any]:
    f = "settings.amd"
    a = dict(as_object(v, f))
    a["enabled"] = as_bool(a.get("enabled", False), f"{f}.enabled")
    a["provider"] = a.get("provider") or "gateway"
    if a["provider"] not in AMD_PROVIDERS:
        raise bad(f"{f}.provider", f"must be one of {', '.join(AMD_PROVIDERS)} (got {a['provider']!r})")
    if a.get("params") is not None:                       # detector overrides (docs/amd.md)
        from ..amd.params import AmdParams
        try:
            AmdParams().with_overrides(as_object(a["params"], f"{f}.params"))
        except (TypeError, ValueError) as e:
            raise bad(f"{f}.params", str(e)) from None
    return a


def _recording(v: Any) -> dict[str, Any]:
    """`{enabled, channels: mono|dual}` (docs/recording.md); dispatch may override it per call."""
    f = "settings.recording"
    r = dict(as_object(v, f))
    reject_unknown(r, ["enabled", "channels"], f"{f}.")
    r["enabled"] = as_bool(r.get("enabled", False), f"{f}.enabled")
    r["channels"] = r.get("channels") or "dual"
    if r["channels"] not in ("mono", "dual"):
        raise bad(f"{f}.channels", f"must be mono or dual (got {str(r['channels'])[:40]!r})")
    return r


MASK = "****"


def _webhook(v: Any) -> dict[str, Any]:
    f = "settings.webhook"
    w = dict(as_object(v, f))
    secret = w.get("secret")
    if secret in (None, ""):
        w["secret"] = None  # explicit null clears it (also through PATCH's per-section merge)
    elif secret != MASK and (not isinstance(secret, str) or not 16 <= len(secret) <= 200):
        # (MASK = "keep the stored one": a GET body sent back unchanged)
        raise bad(f"{f}.secret", "must be a string of 16 to 200 characters")
    return w


SECTIONS = {"transfer": _transfer, "end_call": _end_call, "voicemail": _voicemail, "amd": _amd,
            "webhook": _webhook, "recording": _recording}


def agent_json(agent: dict[str, Any]) -> dict[str, Any]:
    """API view of an agent: the webhook signing secret and a password in the engine URL show as "****"."""
    if agent.get("engine"):
        agent = {**agent, "engine": redact_url(agent["engine"])}
    settings = agent.get("settings") or {}
    hook = settings.get("webhook")
    if isinstance(hook, dict) and hook.get("secret"):
        agent = {**agent, "settings": {**settings, "webhook": {**hook, "secret": MASK}}}
    return agent


def _keep_masked_secret(data: dict[str, Any], old: dict[str, Any]) -> None:
    if is_redacted(data.get("engine") or "") and redact_url(old.get("engine") or "") == data["engine"]:
        data["engine"] = old["engine"]  # the client sent back what it was shown: keep the stored password
    hook = (data.get("settings") or {}).get("webhook")
    if isinstance(hook, dict) and hook.get("secret") == MASK:
        old_secret = ((old.get("settings") or {}).get("webhook") or {}).get("secret")
        hook["secret"] = old_secret or None


def check_settings(value: Any) -> dict[str, Any]:
    """Known sections are checked; other sections (engine-specific) must be objects and are kept as given."""
    s = as_object(value, "settings")
    out: dict[str, Any] = {}
    for key, section in s.items():
        if key in SECTIONS:
            out[key] = SECTIONS[key](section)
        else:
            out[key] = as_object(section, f"settings.{key}")
    return out


def check_agent(gw: Gateway, body: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    reject_unknown(body, FIELDS)
    out: dict[str, Any] = {}
    if not partial or "name" in body:
        out["name"] = as_str(required(body, "name"), "name", max_len=200)
    if body.get("engine") not in (None, ""):
        engine = as_str(body["engine"], "engine", max_len=500)
        try:
            gw.engines.validate(engine)
        except ValueError as e:
            raise bad("engine", str(e)) from None
        out["engine"] = engine
    elif "engine" in body or not partial:
        out["engine"] = None
    if body.get("webhook_url") not in (None, ""):
        out["webhook_url"] = as_http_url(body["webhook_url"], "webhook_url")
    elif "webhook_url" in body or not partial:
        out["webhook_url"] = None
    if body.get("settings") is not None:
        out["settings"] = check_settings(body["settings"])
    elif not partial:
        out["settings"] = {}
    return out


async def check_webhook_destination(gw: Gateway, data: dict[str, Any]) -> None:
    """SSRF guard at save time: a webhook_url on a loopback/private/link-local address is a 400 (unless allowed)."""
    if data.get("webhook_url"):
        try:
            await check_destination(data["webhook_url"], gw.settings.allow_private_webhooks)
        except BlockedDestination as e:
            raise bad("webhook_url", str(e)) from None


def check_carrier_settings(gw: Gateway, settings: dict[str, Any] | None) -> None:
    """Each loaded carrier checks the settings it reads (e.g. `settings.vonage`) against its documented ranges, so
    a value the carrier would refuse is a 400 now rather than a failure on every dispatch."""
    for carrier in gw.carriers.values():
        try:
            carrier.check_agent_settings(settings or {})
        except CarrierError as e:
            raise ApiError(e.status, e.message, e.field) from None


async def _agent_or_404(gw: Gateway, request: web.Request) -> dict[str, Any]:
    agent_id = as_int(request.match_info["id"], "id", minimum=1)
    agent = await gw.store.get_agent(agent_id)
    if agent is None:
        raise bad("id", f"agent {agent_id} not found", 404)
    return agent


async def create_agent(request: web.Request) -> web.Response:
    gw = _gw(request)
    data = check_agent(gw, await read_json(request), partial=False)
    await check_webhook_destination(gw, data)
    _keep_masked_secret(data, {})
    check_carrier_settings(gw, data.get("settings"))
    agent = await gw.store.create_agent(data)
    return web.json_response({"success": True, "agent": agent_json(agent)}, status=201)


async def list_agents(request: web.Request) -> web.Response:
    gw = _gw(request)
    reject_unknown(dict(request.query), {"pageno", "pagesize"})
    pageno, pagesize = pagination(request.query)
    agents = await gw.store.list_agents()
    page = agents[(pageno - 1) * pagesize: pageno * pagesize]
    return web.json_response({"success": True, "total": len(agents), "pageno": pageno, "pagesize": pagesize,
                              "agents": [agent_json(a) for a in page]})


async def get_agent(request: web.Request) -> web.Response:
    return web.json_response({"success": True, "agent": agent_json(await _agent_or_404(_gw(request), request))})


async def replace_agent(request: web.Request) -> web.Response:
    gw = _gw(request)
    agent = await _agent_or_404(gw, request)
    data = check_agent(gw, await read_json(request), partial=False)
    await check_webhook_destination(gw, data)
    _keep_masked_secret(data, agent)
    return await _save(gw, agent["id"], data)


async def patch_agent(request: web.Request) -> web.Response:
    gw = _gw(request)
    agent = await _agent_or_404(gw, request)
    body = await read_json(request)
    if isinstance(body.get("settings"), dict):
        body["settings"] = merge_settings(agent.get("settings") or {}, body["settings"])
    data = check_agent(gw, body, partial=True)
    await check_webhook_destination(gw, data)
    _keep_masked_secret(data, agent)
    return await _save(gw, agent["id"], data)


def merge_settings(stored: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """PATCH's per-section merge, on the raw body before any check: a key sent replaces the stored one, a key
    not sent keeps its stored value. (Checking first would fill defaults — type static, enabled false — into the
    patch and silently reset what the client never mentioned.)"""
    merged = dict(stored)
    for key, section in patch.items():
        old = merged.get(key)
        merged[key] = {**old, **section} if isinstance(old, dict) and isinstance(section, dict) else section
    return merged


async def _save(gw: Gateway, agent_id: int, data: dict[str, Any]) -> web.Response:
    if "settings" in data:
        check_carrier_settings(gw, data["settings"])
    try:
        agent = await gw.store.update_agent(agent_id, data)
    except NotFoundError:
        raise bad("id", f"agent {agent_id} not found", 404) from None
    return web.json_response({"success": True, "agent": agent_json(agent)})


async def delete_agent(request: web.Request) -> web.Response:
    gw = _gw(request)
    agent = await _agent_or_404(gw, request)
    try:
        await gw.store.delete_agent(agent["id"])
    except NotFoundError:
        raise bad("id", f"agent {agent['id']} not found", 404) from None
    return web.json_response({"success": True, "deleted": agent["id"]})


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    r.add_post(f"{prefix}/agents", create_agent)
    r.add_get(f"{prefix}/agents", list_agents)
    r.add_get(f"{prefix}/agents/{{id}}", get_agent)
    r.add_put(f"{prefix}/agents/{{id}}", replace_agent)
    r.add_patch(f"{prefix}/agents/{{id}}", patch_agent)
    r.add_delete(f"{prefix}/agents/{{id}}", delete_agent)
