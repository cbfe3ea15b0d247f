"""How an endpoint is added: one `api_route()` call registers the handler on the aiohttp router together with the
pydantic models it validates its input with and answers with. /api/v1/openapi.json is built from these
registrations (gateway/api/openapi.py), so the document cannot drift from what the handlers check and return; a
test walks the router and fails on any route that was added without one.

    api_route(app, "POST", f"{PREFIX}/calls/{{id}}/hold", hold, "Put a live call on hold", tag="calls",
              body=models.Hold, params=models.CallPath, response=responses.CallOpReply)

and in the handler: `req = parse(models.Hold, await read_json(request))` … `return ok(responses.CallOpReply(…))`.
Carriers register their own /api/v1 routes the same way in `setup()` (carriers/webrtc.py).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel

if TYPE_CHECKING:
    from ..runtime import Gateway

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: a body that depends on what is loaded (an import body per carrier): the models it may be, one of them
BodyModels = Callable[["Gateway"], Sequence[type[BaseModel]]]


@dataclass(frozen=True)
class Endpoint:
    """What the OpenAPI document says about one route: every schema is a model's."""
    method: str
    path: str
    summary: str
    tag: str
    #: the 2xx answer's model; None for a non-JSON answer (then `content_type` says what it is)
    response: type[BaseModel] | None
    body: type[BaseModel] | BodyModels | None = None
    query: type[BaseModel] | None = None
    params: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = (400, 401, 404)
    body_required: bool = True
    #: False for the open endpoints (/healthz, /metrics)
    auth: bool = True
    content_type: str = "application/json"
    #: further documented answers: (status, model, description); model None: `content_type` like the 2xx
    #: answer (e.g. /healthz's 503 while draining, a recording's 206 partial content)
    also: tuple[tuple[int, type[BaseModel] | None, str], ...] = ()
    #: request headers the handler reads, as a model (e.g. Range)
    headers: type[BaseModel] | None = None


ENDPOINTS = web.AppKey("api_endpoints", dict)


def endpoints(app: web.Application) -> dict[tuple[str, str], Endpoint]:
    """The registrations so far, by (METHOD, path)."""
    if ENDPOINTS not in app:
        app[ENDPOINTS] = {}
    registered: dict[tuple[str, str], Endpoint] = app[ENDPOINTS]
    return registered


def api_route(app: web.Application, method: str, path: str, handler: Handler, summary: str, *, tag: str,
              response: type[BaseModel] | None, body: type[BaseModel] | BodyModels | None = None,
              query: type[BaseModel] | None = None, params: type[BaseModel] | None = None, status: int = 200,
              errors: tuple[int, ...] = (400, 401, 404), body_required: bool = True, auth: bool = True,
              content_type: str = "application/json",
              also: tuple[tuple[int, type[BaseModel] | None, str], ...] = (),
              headers: type[BaseModel] | None = None) -> None:
    """Add `handler` for `method path` and document it with the models it uses (see the module docstring)."""
    if method.upper() == "GET":
        app.router.add_get(path, handler)        # HEAD too, as aiohttp does for every GET
    else:
        app.router.add_route(method, path, handler)
    endpoints(app)[(method.upper(), path)] = Endpoint(
        method.upper(), path, summary, tag, response, body, query, params, status, errors, body_required, auth,
        content_type, also, headers)


def ok(reply: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """The JSON answer of a handler: the response model it documents, as sent (fields not given stay out;
    values that are not JSON, e.g. a datetime in a carrier's test report, are rendered as strings)."""
    body = reply.model_dump(mode="json", exclude_unset=True, fallback=str)
    if "success" in type(reply).model_fields:
        body = {**reply.model_dump(include={"success"}), **body}
    return web.json_response(body, status=status, headers=headers)


def reply(model: type[BaseModel], /, _status: int = 200, _headers: dict[str, str] | None = None,
          **fields: Any) -> web.Response:
    """`ok(model(**fields))`: the answer built from plain values (rows, dicts), checked against its model."""
    return ok(model.model_validate(fields), _status, _headers)


def bodies(endpoint: Endpoint, gw: Gateway) -> list[type[BaseModel]]:
    """The request body model(s) of an endpoint."""
    if endpoint.body is None:
        return []
    if isinstance(endpoint.body, type):
        return [endpoint.body]
    return list(endpoint.body(gw))

