"""Phone numbers and trunks: generic import for every carrier, list/show/attach/detach/delete, connection tests.

A carrier declares its import body as `import_fields`; nothing here knows a provider by name. Secret fields go to
the store's `secrets` column and come back only as "****".
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel

from ..carrier import Carrier, CarrierError, ImportField
from ..channels import LIMIT_FIELDS
from ..health import health_json
from ..outbound import scrub
from ..store.store import DuplicateError, NotFoundError
from . import models, responses
from .errors import ApiError, carrier_api_error, read_json
from .import_models import import_model
from .models import parse
from .routes import api_route, ok, reply
from .validation import bad

if TYPE_CHECKING:
    from ..runtime import Gateway

log = logging.getLogger("gateway.api")

MASK = "****"
#: serialises the duplicate check and the insert of imports (validate_import, often a carrier REST call, runs
#: outside it), so two racing imports of one number cannot both pass
IMPORT_LOCK = web.AppKey("phone_number_import_lock", asyncio.Lock)
#: store columns filled from import fields of the same name (besides the carrier's number_field)
TOP_LEVEL = ("name", "sip_trunk_name")


def gw_of(request: web.Request) -> Gateway:
    gw: Gateway = request.app["gateway"]
    return gw


def providers(gw: Gateway) -> list[str]:
    """The providers numbers can be imported for: carriers that declare import fields (the browser carrier,
    webrtc, takes no numbers and is not offered)."""
    return sorted({p for c in gw.carriers.values() if c.import_fields for p in (*c.providers, c.name) if p})


def carrier_or_404(gw: Gateway, provider: str, field: str = "provider") -> Carrier:
    carrier = gw.carrier_for(provider)
    if carrier is None or not carrier.import_fields:
        known = ", ".join(providers(gw)) or "none loaded"
        raise ApiError(404, f"{field}: unknown provider {provider!r} (available: {known})", field)
    return carrier


def fields_of(carrier: Carrier) -> tuple[ImportField, ...]:
    """What an import / update of this carrier's numbers takes: its own fields and the channel / pace limits
    every number has (gateway/channels.py)."""
    return carrier.import_fields + LIMIT_FIELDS


def _check_limits(fields: dict[str, Any]) -> None:
    channels, cps = fields.get("channels"), fields.get("max_cps")
    if channels is not None and not 1 <= channels <= 100_000:
        raise bad("channels", "must be between 1 and 100000 live calls (leave it out for no limit)")
    if cps is not None and not 0 < cps <= 10_000:
        raise bad("max_cps", "must be above 0 and at most 10000 calls per second (leave it out for no limit)")


def secret_names(carrier: Carrier | None, stored: dict[str, Any] | None = None) -> set[str]:
    names = {f.name for f in carrier.import_fields if f.secret} if carrier else set()
    return names | set(stored or {})


def number_json(gw: Gateway, row: dict[str, Any], health: dict[str, Any] | None = None) -> dict[str, Any]:
    """API view of a phone number: store columns, non-secret carrier settings, secrets masked, its limits and its
    health record (gateway/health.py; OmniDimension's health_score / health_status / health_score_updated_at)."""
    carrier = gw.carrier_for(row["provider"])
    stored = row.get("secrets") or {}
    config = dict(row.get("config") or {})
    for name in secret_names(carrier, stored):
        config[name] = MASK if stored.get(name) not in (None, "") else None
    out = {
        "id": row["id"], "phone_number": row["phone_number"], "provider": row["provider"], "name": row.get("name"),
        "sip_trunk_name": row.get("sip_trunk_name"), "agent_id": row.get("agent_id"),
        "status": {**(row.get("status") or {}), **({"registered_by": row["registered_by"]}
                                                   if row.get("registered_by") else {})},
        "config": config, "created_at": row.get("created_at"),
        # what OmniDimension clients read (docs/omnidimension-compat.md): the provider, the attached agent or
        # false, and the trunk / Exotel settings flat beside `config` (secrets masked the same way)
        "number_provider": row["provider"], "active_bot_id": row.get("agent_id") or False,
        "channels": config.get("channels"), "max_cps": config.get("max_cps"),
        **health_json(health if health is not None else gw.health.latest.get(row["id"])),
    }
    for key, value in config.items():
        if key.startswith(("sip_", "exotel_")) and key not in out:
            out[key] = value
    return out


def flatten(carrier: Carrier, row: dict[str, Any]) -> dict[str, Any]:
    """A stored number as the field dict its carrier's import took (secrets included): for test_connection."""
    fields = {**(row.get("config") or {}), **(row.get("secrets") or {})}
    fields[carrier.number_field] = row["phone_number"]
    for name in TOP_LEVEL:
        fields[name] = row.get(name)
    return fields


def import_bodies(gw: Gateway) -> list[type[BaseModel]]:
    """The import body of every provider (the document's `oneOf`)."""
    return [import_model(p, carrier_or_404(gw, p).import_fields) for p in providers(gw)]


def patch_bodies(gw: Gateway) -> list[type[BaseModel]]:
    return [import_model(p, carrier_or_404(gw, p).import_fields, partial=True) for p in providers(gw)]


async def _checked_import(request: web.Request, provider: str) -> tuple[Carrier, dict[str, Any], int | None]:
    gw = gw_of(request)
    carrier = carrier_or_404(gw, provider)
    body = {k: v for k, v in (await read_json(request)).items() if v is not None}   # null: the default
    fields = parse(import_model(provider, fields_of(carrier)), body).model_dump()
    agent_id = fields.pop("agent_id")
    if agent_id is not None and await gw.store.get_agent(agent_id) is None:
        raise bad("agent_id", f"agent {agent_id} not found", 404)
    if not fields.get(carrier.number_field):
        raise bad(carrier.number_field, "is required")
    _check_limits(fields)
    for f in carrier.import_fields:
        if f.secret and fields.get(f.name) == MASK:
            raise bad(f.name, f"{MASK!r} is the mask the API shows, not a value: send the real secret")
    return carrier, fields, agent_id


def _secrets(carrier: Carrier, fields: dict[str, Any]) -> dict[str, Any]:
    return {f.name: fields[f.name] for f in carrier.import_fields if f.secret and fields.get(f.name) is not None}


async def _check_unique(gw: Gateway, carrier: Carrier, provider: str, phone: str, trunk: str | None,
                        exclude: int | None = None) -> None:
    if trunk:
        existing, _ = await gw.store.list_numbers(1, 1_000_000)
        if any(n.get("sip_trunk_name") == trunk and n["id"] != exclude for n in existing):
            raise bad("sip_trunk_name", f"{trunk!r} is already used by another trunk", 409)
    other = await gw.store.find_number(phone, provider)
    if other is not None and other["id"] != exclude:
        raise bad(carrier.number_field, f"{phone} is already imported for provider {provider}", 409)


def _carrier_error(e: CarrierError, secrets: dict[str, Any]) -> ApiError:
    return carrier_api_error(e, scrub(e.message, secrets))


async def _validated_columns(carrier: Carrier, provider: str, fields: dict[str, Any]
                             ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Let the carrier check the fields, then split them into store columns, `config` and `secrets` (the limits
    every number has go to `config`, past the carrier, which does not know them)."""
    limits = {f.name: fields.get(f.name) for f in LIMIT_FIELDS}
    fields = {k: v for k, v in fields.items() if k not in limits}
    try:
        checked = await carrier.validate_import(dict(fields))
    except CarrierError as e:
        raise _carrier_error(e, _secrets(carrier, fields)) from None
    checked = dict(checked if checked is not None else fields)
    secret_fields = {f.name for f in carrier.import_fields if f.secret}
    secrets = {k: v for k, v in checked.items() if k in secret_fields and v is not None}
    top = {"phone_number": checked.get(carrier.number_field) or fields[carrier.number_field], "provider": provider,
           **{k: checked.get(k) for k in TOP_LEVEL}}
    config = {k: v for k, v in checked.items()
              if k not in secret_fields and k not in TOP_LEVEL and k != carrier.number_field}
    return top, {**config, **{k: v for k, v in limits.items() if v is not None}}, secrets


async def import_number(request: web.Request) -> web.Response:
    gw = gw_of(request)
    provider = request.match_info["provider"]
    carrier, fields, agent_id = await _checked_import(request, provider)
    await _check_unique(gw, carrier, provider, fields[carrier.number_field], fields.get("sip_trunk_name"))
    top, config, secrets = await _validated_columns(carrier, provider, fields)
    async with request.app[IMPORT_LOCK]:
        await _check_unique(gw, carrier, provider, top["phone_number"], top.get("sip_trunk_name"))
        try:
            row = await gw.store.create_number({**top, "agent_id": agent_id, "config": config}, secrets)
        except DuplicateError as e:
            raise bad("sip_trunk_name", str(e).removeprefix("sip_trunk_name "), 409) from None
    try:
        await carrier.on_number_imported(await _number_or_404(gw, row["id"]))
    except Exception as e:
        # the carrier could not take the number on (e.g. bad registration settings): undo the import
        await gw.store.delete_number(row["id"])
        if isinstance(e, CarrierError):
            raise _carrier_error(e, secrets) from None
        raise
    log.info("phone number imported", extra={"number_id": row["id"], "provider": provider,
                                             "carrier": carrier.name})
    full = await _number_or_404(gw, row["id"])
    return reply(responses.Imported, message=f"phone number {full['phone_number']} imported", id=row["id"],
                                 phone_number=number_json(gw, full), _status=201)


async def update_number(request: web.Request) -> web.Response:
    """Change some fields of an imported number (rotate a password, move a trunk): the merged fields go through
    the same checks as an import; the carrier sees it as the old number removed and the new one imported."""
    gw = gw_of(request)
    number_id = _number_id(request)
    old = await _number_or_404(gw, number_id)
    carrier = gw.carrier_for(old["provider"])
    if carrier is None:
        raise bad("provider", f"no carrier for provider {old['provider']!r} is loaded on this gateway", 409)
    body = await read_json(request)
    parse(import_model(old["provider"], fields_of(carrier), partial=True), body)   # types, unknown fields
    declared = {f.name: f for f in fields_of(carrier)}
    current = flatten(carrier, old)
    merged = {name: current.get(name) for name in declared}
    for name, value in body.items():
        if declared[name].secret and value == MASK:
            continue  # "****" as shown by GET: keep the stored secret
        merged[name] = value
    merged = {k: v for k, v in merged.items() if v is not None}
    fields = parse(import_model(old["provider"], fields_of(carrier)), merged).model_dump()
    fields.pop("agent_id")
    if not fields.get(carrier.number_field):
        raise bad(carrier.number_field, "is required")
    _check_limits(fields)
    await _check_unique(gw, carrier, old["provider"], fields[carrier.number_field], fields.get("sip_trunk_name"),
                        exclude=number_id)
    top, config, secrets = await _validated_columns(carrier, old["provider"], fields)
    columns = {**top, "config": config, "secrets": secrets}
    async with request.app[IMPORT_LOCK]:
        await _check_unique(gw, carrier, old["provider"], top["phone_number"], top.get("sip_trunk_name"),
                            exclude=number_id)
        await gw.store.update_number(number_id, **columns)
    new = await _number_or_404(gw, number_id)
    await _safe_hook(carrier.on_number_deleted, old, number_id, carrier)
    try:
        await carrier.on_number_imported(new)
    except Exception as e:
        # put the old settings back and hand them to the carrier again
        await gw.store.update_number(number_id, **{k: old[k] for k in columns})
        await _safe_hook(carrier.on_number_imported, await _number_or_404(gw, number_id),
                         number_id, carrier)
        if isinstance(e, CarrierError):
            raise _carrier_error(e, secrets) from None
        raise
    log.info("phone number updated", extra={"number_id": number_id, "carrier": carrier.name,
                                            "fields": sorted(body)})
    return reply(responses.PhoneNumberReply, phone_number=number_json(gw, new))


async def _safe_hook(hook: Callable[[dict[str, Any]], Awaitable[None]], number: dict[str, Any], number_id: int,
                     carrier: Carrier) -> None:
    try:
        await hook(number)
    except Exception:
        log.exception("carrier number hook failed", extra={"number_id": number_id, "carrier": carrier.name})


async def test_before_import(request: web.Request) -> web.Response:
    provider = request.match_info["provider"]
    carrier, fields, _ = await _checked_import(request, provider)
    return await _run_test(carrier, fields, provider)


async def _run_test(carrier: Carrier, fields: dict[str, Any], provider: str,
                    number_id: int | None = None) -> web.Response:
    secrets = _secrets(carrier, fields)
    try:
        report = await carrier.test_connection(dict(fields))
    except CarrierError as e:
        raise _carrier_error(e, secrets) from None
    about = {"phone_number_id": number_id} if number_id is not None else {}
    return ok(responses.TestReport.model_validate({"provider": provider, **about, "report": scrub(report, secrets)}))


async def list_numbers(request: web.Request) -> web.Response:
    gw = gw_of(request)
    q = parse(models.NumberQuery, request.query)
    rows, total = await gw.store.list_numbers(q.pageno, q.pagesize, provider=q.provider, with_secrets=True)
    health = await gw.store.health_records([r["id"] for r in rows])
    return reply(responses.PhoneNumberList, total=total, total_records=total, pageno=q.pageno, pagesize=q.pagesize,
                                        phone_numbers=[number_json(gw, r, health.get(r["id"])) for r in rows])


def _number_id(request: web.Request) -> int:
    return parse(models.IdPath, request.match_info).id


async def _number_or_404(gw: Gateway, number_id: int, field: str = "id", fresh: bool = False) -> dict[str, Any]:
    row = await gw.store.get_number(number_id, with_secrets=True, fresh=fresh)
    if row is None:
        raise bad(field, f"phone number {number_id} not found", 404)
    return row


async def get_number(request: web.Request) -> web.Response:
    gw = gw_of(request)
    # read, not cached: its `status` (registrations) changes on any process without a cache notification
    row = await _number_or_404(gw, _number_id(request), fresh=True)
    health = (await gw.store.health_records([row["id"]])).get(row["id"])
    return reply(responses.PhoneNumberReply, phone_number=number_json(gw, row, health))


async def attach(request: web.Request) -> web.Response:
    gw = gw_of(request)
    req = parse(models.Attach, await read_json(request))
    number_id, agent_id = req.phone_number_id, req.agent_id
    await _number_or_404(gw, number_id, "phone_number_id")
    if await gw.store.get_agent(agent_id) is None:
        raise bad("agent_id", f"agent {agent_id} not found", 404)
    await gw.store.update_number(number_id, agent_id=agent_id)
    row = await _number_or_404(gw, number_id)
    return reply(responses.Attached, phone_number_id=number_id, message=f"phone number {number_id} attached to agent "
                                                                    f"{agent_id}", phone_number=number_json(gw, row))


async def detach(request: web.Request) -> web.Response:
    gw = gw_of(request)
    number_id = parse(models.Detach, await read_json(request)).phone_number_id
    await _number_or_404(gw, number_id, "phone_number_id")
    await gw.store.update_number(number_id, agent_id=None)
    row = await _number_or_404(gw, number_id)
    return reply(responses.Attached, phone_number_id=number_id, message=f"phone number {number_id} detached",
                                 phone_number=number_json(gw, row))


async def delete_number(request: web.Request) -> web.Response:
    gw = gw_of(request)
    number_id = _number_id(request)
    row = await _number_or_404(gw, number_id)
    try:
        await gw.store.delete_number(number_id)
    except NotFoundError:
        raise bad("id", f"phone number {number_id} not found", 404) from None
    carrier = gw.carrier_for(row["provider"])
    if carrier is not None:
        await _safe_hook(carrier.on_number_deleted, row, number_id, carrier)
    return reply(responses.Deleted, deleted=number_id)


async def test_number(request: web.Request) -> web.Response:
    gw = gw_of(request)
    number_id = _number_id(request)
    row = await _number_or_404(gw, number_id)
    carrier = gw.carrier_for(row["provider"])
    if carrier is None:
        raise bad("provider", f"no carrier for provider {row['provider']!r} is loaded on this gateway", 409)
    return await _run_test(carrier, flatten(carrier, row), row["provider"], number_id)


async def check_health(request: web.Request) -> web.Response:
    """Check a number's health now (probe + call log), instead of waiting for the next round."""
    gw = gw_of(request)
    row = await _number_or_404(gw, _number_id(request))
    record = await gw.health.check(row)
    return reply(responses.HealthCheck, phone_number_id=row["id"], **health_json(record))


def add_routes(app: web.Application, prefix: str) -> None:
    tag, p, one = "phone numbers", f"{prefix}/phone_number", models.IdPath
    api_route(app, "POST", f"{p}/import/{{provider}}", import_number, "Import a phone number / trunk (body per "
              "provider: see Import_<provider>)", tag=tag, params=models.ProviderPath, body=import_bodies,
              response=responses.Imported, status=201, errors=(400, 401, 404, 409, 502))
    api_route(app, "POST", f"{p}/test/{{provider}}", test_before_import, "Test a trunk / account before "
              "importing it (same body as import)", tag=tag, params=models.ProviderPath, body=import_bodies,
              response=responses.TestReport, errors=(400, 401, 404, 502))
    api_route(app, "GET", f"{p}/list", list_numbers, "List phone numbers", tag=tag, query=models.NumberQuery,
              response=responses.PhoneNumberList, errors=(400, 401))
    api_route(app, "POST", f"{p}/attach", attach, "Attach a phone number to an agent", tag=tag,
              body=models.Attach, response=responses.Attached)
    api_route(app, "POST", f"{p}/detach", detach, "Detach a phone number from its agent", tag=tag,
              body=models.Detach, response=responses.Attached)
    api_route(app, "GET", f"{p}/{{id}}", get_number, "Show a phone number", tag=tag, params=one,
              response=responses.PhoneNumberReply)
    api_route(app, "PATCH", f"{p}/{{id}}", update_number, "Change some import fields of a number (\"****\" "
              "keeps a secret); checked like an import (body per provider: see ImportPatch_<provider>)", tag=tag,
              params=one, body=patch_bodies, response=responses.PhoneNumberReply, errors=(400, 401, 404, 409, 502))
    api_route(app, "DELETE", f"{p}/{{id}}", delete_number, "Delete a phone number", tag=tag, params=one,
              response=responses.Deleted)
    api_route(app, "POST", f"{p}/{{id}}/test", test_number, "Test an imported trunk / account", tag=tag,
              params=one, response=responses.TestReport, errors=(400, 401, 404, 409, 502))
    api_route(app, "POST", f"{p}/{{id}}/health", check_health, "Check a number's health now (probe + call log) "
              "instead of waiting for the next round", tag=tag, params=one, response=responses.HealthCheck)
