"""Agents: a voice-engine profile plus the telephony settings the gateway acts on (transfer, end_call,
voicemail, AMD) and the lifecycle webhook URL."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..carrier import CarrierError
from ..netguard import BlockedDestination, check_destination
from ..redact import is_redacted, redact_url
from ..store.store import NotFoundError
from . import models, responses
from .agent_models import MASK, AgentInput, AgentPatch
from .errors import ApiError, read_json
from .models import parse
from .routes import api_route, reply
from .validation import bad

if TYPE_CHECKING:
    from ..runtime import Gateway


def _gw(request: web.Request) -> Gateway:
    gw: Gateway = request.app["gateway"]
    return gw


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


def check_agent(gw: Gateway, body: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    """The body as the store takes it: for PUT/POST every field (absent ones cleared), for PATCH what was sent."""
    # an empty engine / webhook_url clears it (parse() would read "" as absent)
    body = {k: None if k in ("engine", "webhook_url") and v == "" else v for k, v in body.items()}
    model = AgentPatch if partial else AgentInput
    data = parse(model, body, context={"gateway": gw}).model_dump(exclude_unset=True)
    if not partial:
        data = {"engine": None, "webhook_url": None, **data}
        data["settings"] = data.get("settings") or {}
    elif data.get("settings", {}) is None:
        del data["settings"]
    return data


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
    agent_id = parse(models.IdPath, request.match_info).id
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
    return reply(responses.AgentReply, agent=agent_json(agent), _status=201)


async def list_agents(request: web.Request) -> web.Response:
    gw = _gw(request)
    q = parse(models.Page, request.query)
    agents = await gw.store.list_agents()
    page = agents[(q.pageno - 1) * q.pagesize: q.pageno * q.pagesize]
    return reply(responses.AgentList, total=len(agents), pageno=q.pageno, pagesize=q.pagesize,
                                  agents=[agent_json(a) for a in page])


async def get_agent(request: web.Request) -> web.Response:
    return reply(responses.AgentReply, agent=agent_json(await _agent_or_404(_gw(request), request)))


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
    return reply(responses.AgentReply, agent=agent_json(agent))


async def delete_agent(request: web.Request) -> web.Response:
    gw = _gw(request)
    agent = await _agent_or_404(gw, request)
    try:
        await gw.store.delete_agent(agent["id"])
    except NotFoundError:
        raise bad("id", f"agent {agent['id']} not found", 404) from None
    return reply(responses.Deleted, deleted=agent["id"])


def add_routes(app: web.Application, prefix: str) -> None:
    tag, one = "agents", f"{prefix}/agents/{{id}}"
    api_route(app, "POST", f"{prefix}/agents", create_agent, "Create an agent", tag=tag, body=AgentInput,
              response=responses.AgentReply, status=201, errors=(400, 401))
    api_route(app, "GET", f"{prefix}/agents", list_agents, "List agents", tag=tag, query=models.Page,
              response=responses.AgentList, errors=(400, 401))
    api_route(app, "GET", one, get_agent, "Show an agent", tag=tag, params=models.IdPath,
              response=responses.AgentReply)
    api_route(app, "PUT", one, replace_agent, "Replace an agent", tag=tag, params=models.IdPath, body=AgentInput,
              response=responses.AgentReply)
    api_route(app, "PATCH", one, patch_agent, "Update some fields of an agent (settings merged per section)",
              tag=tag, params=models.IdPath, body=AgentPatch, response=responses.AgentReply)
    api_route(app, "DELETE", one, delete_agent, "Delete an agent (its numbers are detached)", tag=tag,
              params=models.IdPath, response=responses.Deleted)
