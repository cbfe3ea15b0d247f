"""Phone-number import bodies as pydantic models built from a carrier's declared `import_fields`: the import, test
and PATCH handlers validate with them and the OpenAPI document shows them (`Import_<provider>`,
`ImportPatch_<provider>`), so a new carrier is documented by declaring its fields, with no edit here.
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model

from ..carrier import ImportField
from ..numbers import typed_e164
from .models import Body, Id
from .validation import to_bool, to_float, to_int, to_list, to_str


def _number_text(value: Any) -> Any:
    # a number sent as a JSON number still gets typed_e164's message (it must carry its +)
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _secret_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value      # a password may start or end with a space: kept byte for byte


def _list_item(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("must be a string")
    return str(value).strip()


def _choice(f: ImportField) -> AfterValidator:
    def check(value: Any) -> Any:
        if value not in f.choices:
            got = "" if f.secret else f" (got {value!r})"
            raise ValueError(f"must be one of {', '.join(map(str, f.choices))}{got}")
        return value
    return AfterValidator(check)


def _annotation(f: ImportField) -> Any:
    extra: dict[str, Any] = {}
    parts: list[Any] = []
    if f.kind is bool:
        kind: Any = bool
        parts.append(BeforeValidator(to_bool))
    elif f.kind is int:
        kind = int
        parts.append(BeforeValidator(to_int))
    elif f.kind is float:
        kind = float
        parts.append(BeforeValidator(to_float))
    elif f.kind is list:
        item: Any = str
        if f.e164:
            item = Annotated[str, Field(pattern=r"^\+[1-9]\d{6,14}$"), BeforeValidator(typed_e164),
                             BeforeValidator(_number_text)]
        kind = list[Annotated[item, BeforeValidator(_list_item)]]
        parts.append(BeforeValidator(to_list))
    else:
        kind = str
        if f.e164:
            parts += [BeforeValidator(typed_e164), BeforeValidator(_number_text)]
            extra["pattern"] = r"^\+[1-9]\d{6,14}$"
        else:
            parts.append(BeforeValidator(_secret_text if f.secret else to_str))
    if f.choices:
        parts.append(_choice(f))
        extra["enum"] = list(f.choices)
    if f.secret:
        extra.update(writeOnly=True, format="password")
    return Annotated[(kind, *parts, Field(json_schema_extra=extra or None))]


def _field(f: ImportField, partial: bool) -> tuple[Any, Any]:
    described = f.help or None
    if partial:
        return _annotation(f) | None, Field(None, description=described)
    if f.required:
        return _annotation(f), Field(..., description=described)
    return _annotation(f) | None, Field(f.default, description=described)


def _plain_optional(schema: dict[str, Any]) -> None:
    """A field that is not required takes its default when absent or null (a PATCH field: keeps the stored
    value), so the document shows the value's type only, and no `default: null`."""
    for prop in schema.get("properties", {}).values():
        if "anyOf" in prop:
            kinds = [k for k in prop.pop("anyOf") if k != {"type": "null"}]
            prop.update(kinds[0] if len(kinds) == 1 else {"anyOf": kinds})
        if "default" in prop and prop["default"] is None:
            del prop["default"]


class ImportBody(Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_plain_optional)


@lru_cache(maxsize=256)
def import_model(provider: str, fields: tuple[ImportField, ...], *, partial: bool = False) -> type[BaseModel]:
    """`Import_<provider>` (every declared field, defaults filled in, plus `agent_id`) or, with `partial`,
    `ImportPatch_<provider>` (only the fields sent; PATCH merges them into the stored ones)."""
    spec: dict[str, Any] = {f.name: _field(f, partial) for f in fields}
    if not partial:
        spec["agent_id"] = (Id | None, Field(None, description="attach the number to this agent"))
    name = f"ImportPatch_{provider}" if partial else f"Import_{provider}"
    with warnings.catch_warnings():   # a field named `register` (SIP) shadows ABCMeta.register: harmless here
        warnings.filterwarnings("ignore", "Field name .* shadows an attribute", UserWarning)
        return create_model(name, __base__=ImportBody, **spec)
