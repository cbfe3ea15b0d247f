"""The OpenAPI 3.1 document served at /api/v1/openapi.json, built by walking the aiohttp router: each route's
registration (gateway/api/routes.py `api_route`) names the pydantic models its handler validates with and answers
with, and their JSON schemas (pydantic emits JSON Schema 2020-12, OpenAPI 3.1's dialect) are the document's.

Import bodies are the models built from the loaded carriers' `import_fields` (gateway/api/import_models.py), so a
new carrier shows up with no edit here. A route registered without `api_route` is missing from the document, and
the test that walks the router fails.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .models import REF, Schema
from .numbers import providers
from .responses import ErrorBody
from .routes import Endpoint, bodies, endpoints

if TYPE_CHECKING:
    from ..runtime import Gateway

ERRORS = {400: "Invalid input", 401: "Missing or wrong API key", 404: "Not found", 409: "Conflict",
          416: "Range not satisfiable", 429: "Too many requests (Retry-After says when to retry)",
          502: "Carrier error", 503: "Unavailable (at capacity, or a resource that cannot be read now)",
          504: "No answer in time"}
_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


def _content(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {"content": {media: {"schema": schema}}}


def _parameters(schema: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """A query or path model's fields as OpenAPI parameters."""
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        if "anyOf" in prop:                   # `X | None` in a query: absent is the null
            kinds = [k for k in prop.pop("anyOf") if k != {"type": "null"}]
            prop.update(kinds[0] if len(kinds) == 1 else {"anyOf": kinds})
        if prop.get("default", 0) is None:
            del prop["default"]
        p: dict[str, Any] = {"name": name, "in": where, "required": where == "path" or name in required,
                             "schema": prop}
        if description:
            p["description"] = description
        out.append(p)
    return out


class _Models:
    """Every model the document names, resolved to `$ref`s into one components section."""

    def __init__(self) -> None:
        self.wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = []

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        if (model, mode) not in self.wanted:
            self.wanted.append((model, mode))
        return {"$ref": (model, mode)}        # replaced by the real reference in `resolve`

    def resolve(self, doc: Any, refs: dict[Any, dict[str, Any]]) -> Any:
        if isinstance(doc, dict):
            if set(doc) == {"$ref"} and isinstance(doc["$ref"], tuple):
                return refs[doc["$ref"]]
            return {k: self.resolve(v, refs) for k, v in doc.items()}
        if isinstance(doc, list):
            return [self.resolve(v, refs) for v in doc]
        return doc


def _operation(e: Endpoint, gw: Gateway, models: _Models) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": e.summary, "tags": [e.tag], "responses": {}}
    raw = {"type": "string"} if e.content_type.startswith("text/") else {"type": "string", "format": "binary"}
    ok = models.ref(e.response, "serialization") if e.response is not None else raw
    op["responses"][str(e.status)] = {"description": "OK", **_content(ok, e.content_type)}
    for status, model, description in e.also:
        other = _content(models.ref(model, "serialization")) if model is not None else _content(raw, e.content_type)
        op["responses"][str(status)] = {"description": description, **other}
    for status in e.errors:
        op["responses"][str(status)] = {"description": ERRORS[status],
                                        **_content(models.ref(ErrorBody, "serialization"))}
    params: list[dict[str, Any]] = []
    if e.params is not None:
        params += _parameters(e.params.model_json_schema(schema_generator=Schema), "path")
    if e.query is not None:
        params += _parameters(e.query.model_json_schema(schema_generator=Schema), "query")
    if e.headers is not None:
        params += _parameters(e.headers.model_json_schema(schema_generator=Schema), "header")
    if params:
        op["parameters"] = params
    body = bodies(e, gw)
    if body:
        refs = [models.ref(m, "validation") for m in body]
        op["requestBody"] = {"required": e.body_required,
                             **_content(refs[0] if len(refs) == 1 else {"oneOf": refs})}
    if not e.auth:
        op["security"] = []
    return op


def _path_params(path: str, e: Endpoint | None) -> None:
    named = set(_PARAM.findall(path))
    given = set(e.params.model_fields if e is not None and e.params is not None else {})
    if named != given:
        raise ValueError(f"{path}: path parameters {sorted(named)} but `params` model has {sorted(given)}")


def build(gw: Gateway, app: web.Application) -> dict[str, Any]:
    registered = endpoints(app)
    models = _Models()
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        e = registered.get((route.method, path))
        if e is None:
            continue       # not an API route (carrier webhooks, pages) or not registered: the router test says which
        _path_params(path, e)
        paths.setdefault(path, {})[route.method.lower()] = _operation(e, gw, models)
    refs, top = models_json_schema(models.wanted, ref_template=REF, schema_generator=Schema)
    names = providers(gw)
    for item in paths.values():
        for op in item.values():
            for p in op.get("parameters", ()):
                if p["name"] == "provider" and p["in"] == "path":
                    p["schema"] = {"type": "string", "enum": names}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Telephony gateway API", "version": "1.0.0",
                 "description": "Phone numbers and trunks, agents, calls. Every /api/v1 request needs "
                                "`Authorization: Bearer <api key>`. Errors: {success: false, error, field}."},
        "servers": [{"url": gw.settings.public_base}],
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": dict(top.get("$defs", {}))},
        "paths": models.resolve(paths, refs),
    }
