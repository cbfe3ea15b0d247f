"""Typed request bodies and query strings, validated with pydantic v2. The OpenAPI document takes its schemas from
these same classes (gateway/api/routes.py registers each handler with the models it validates with), so what is
documented is what is checked.

`parse()` turns pydantic's errors into the API's error shape (`{success: false, error, field}`, 400, the field
named as `a.b[0]`), the same as the checks in validation.py give. Field types reuse validation.py's converters
(`to_int`, `to_bool`…) as before-validators, so a body field and a query parameter accept the same spellings and
fail with the same words.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode
from pydantic_core import CoreSchema, ErrorDetails

from ..numbers import typed_e164
from ..statuses import CallStatus
from .errors import ApiError
from .validation import MAX_INT, MAX_PAGESIZE, to_bool, to_http_url, to_int, to_list, to_str, to_time_bound

M = TypeVar("M", bound=BaseModel)
REF = "#/components/schemas/{model}"

#: constraints go before the converter (`Annotated[int, Field(ge=1), BeforeValidator(to_int)]`), else pydantic
#: cannot show them as minimum/maximum in the schema
Id = Annotated[int, Field(ge=1, le=MAX_INT), BeforeValidator(to_int)]
Bool = Annotated[bool, BeforeValidator(to_bool)]
Str = Annotated[str, BeforeValidator(to_str)]
E164 = Annotated[str, Field(pattern=r"^\+[1-9]\d{6,14}$", examples=["+14155550100"]),
                 BeforeValidator(typed_e164)]
HttpUrl = Annotated[str, Field(json_schema_extra={"format": "uri"}), BeforeValidator(to_http_url)]
#: a list, or a comma-separated string (a form, a CLI flag)
StrList = Annotated[list[Str], BeforeValidator(to_list)]
E164List = Annotated[list[E164], BeforeValidator(to_list)]


def text(max_len: int) -> Any:
    """A stripped string of at most `max_len` characters (as a before-validator, so the words match as_str's)."""
    return BeforeValidator(lambda v: to_str(v, max_len))


class Body(BaseModel):
    """A request body or query string: unknown fields are refused (a typo must not be silently ignored)."""
    model_config = ConfigDict(extra="forbid")


class Recording(Body):
    """A per-call override of the agent's `settings.recording` (keys not given keep the agent's)."""
    enabled: bool | None = None
    channels: Literal["mono", "dual"] | None = Field(None, description="dual: caller left, agent right")


class Dispatch(Body):
    """POST /calls/dispatch."""
    agent_id: Id
    to_number: E164
    from_number_id: Id | None = Field(None, description="default: the agent's attached number")
    call_context: dict[str, Any] | None = Field(None, description="handed to the engine and webhooks")
    recording: Recording | None = Field(None, description="record this call (or not), overriding the agent")
    queue: bool = Field(False, description="true: put the call in the dispatch queue (202 with `queue_id`); it "
                                           "starts when the number has a free channel and a free slot at its "
                                           "max_cps")


class Attach(Body):
    """POST /phone_number/attach."""
    phone_number_id: Id
    agent_id: Id


class Detach(Body):
    """POST /phone_number/detach."""
    phone_number_id: Id


class Transfer(Body):
    """POST /calls/{id}/transfer."""
    number: E164 | None = Field(None, description="default: the agent's first static transfer option")


class Drain(Body):
    """POST /nodes/{proc}/drain."""
    timeout: Annotated[int, Field(ge=0), BeforeValidator(to_int)] | None = Field(
        None, description="seconds; default the process's --drain-timeout")


# -- query strings -----------------------------------------------------------------------------------------------
class Page(Body):
    pageno: Annotated[int, Field(ge=1, le=10**9), BeforeValidator(to_int)] = 1
    pagesize: Annotated[int, Field(ge=1, le=MAX_PAGESIZE), BeforeValidator(to_int)] = 20


class NumberQuery(Page):
    provider: Str | None = Field(None, description="only this provider's numbers")


class LogQuery(Page):
    agentid: Id | None = Field(None, description="only this agent's calls (also `agent_id`)")
    agent_id: Id | None = None
    call_status: CallStatus | None = None
    carrier_sid: Annotated[str, text(128)] | None = None
    bulk_call_id: Id | None = Field(None, description="calls dispatched with call_context.bulk_call_id = N")
    carrier: Annotated[str, text(32)] | None = Field(None, description="the call's carrier (channel_type), e.g. "
                                                                       "sip, twilio")
    since: Annotated[datetime, BeforeValidator(lambda v: to_time_bound(v, end=False))] | None = Field(
        None, description="created at or after: YYYY-MM-DD (UTC day) or an ISO 8601 date-time (no zone: UTC)")
    until: Annotated[datetime, BeforeValidator(lambda v: to_time_bound(v, end=True))] | None = Field(
        None, description="created up to: YYYY-MM-DD (through that UTC day) or an ISO 8601 date-time (inclusive)")


# -- path parameters ---------------------------------------------------------------------------------------------
class IdPath(Body):
    id: Id


class CallPath(Body):
    id: Annotated[str, Field(description="call log id or call uuid")]


class ProviderPath(Body):
    provider: Annotated[str, Field(description="a loaded carrier's provider (see Import_<provider>)")]


class MetricsQuery(BaseModel):
    """GET /metrics (other parameters a scraper adds are ignored)."""
    scope: Literal["process"] | None = Field(None, description="process: only this process's series, not the "
                                                               "node's workers' (serve --workers N)")


class RangeHeader(BaseModel):
    """HTTP Range (RFC 9110 §14.2) of a download, e.g. `bytes=0-1023`."""
    Range: Annotated[str, text(200)] | None = Field(None, description="e.g. bytes=0-1023; answered 206")


class ProcPath(Body):
    proc: Annotated[str, Field(description="process id (`<node>.<k>`) or node id")]


# -- validation and schemas --------------------------------------------------------------------------------------
class Consult(Body):
    """POST /calls/{id}/consult: attended transfer, first step."""
    number: E164 | None = Field(None, description="the transfer target; default: the agent's first static "
                                                  "transfer option")
    message: str | None = Field(None, min_length=1, max_length=2000,
                                description="played to the target when it answers: a WAV path or URL (played by "
                                            "the gateway), or text (handed to the engine to say)")


def _field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(model: type[BaseModel], err: ErrorDetails) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "missing":
        top = model.model_fields.get(str(err["loc"][0])) if len(err["loc"]) == 1 else None
        return "is required" + (f" ({top.description})" if top is not None and top.description else "")
    if kind == "extra_forbidden":
        known = ", ".join(sorted(model.model_fields)) if len(err["loc"]) == 1 else ""
        return f"unknown field (expected one of: {known})" if known else "unknown field"
    if kind == "value_error":
        return str(msg).removeprefix("Value error, ")
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"must be one of {expected.replace(' or ', ', ')} (got {str(err.get('input'))[:40]!r})"
    return str(msg)[:1].lower() + str(msg)[1:]


def parse(model: type[M], body: Any, *, context: dict[str, Any] | None = None) -> M:
    """`body` (a dict, or a query/path mapping) as `model`, or the first problem as a 400 naming its field.
    Empty strings count as missing."""
    data = {k: v for k, v in dict(body).items() if not (isinstance(v, str) and not v.strip())}
    try:
        return model.model_validate(data, context=context)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        field = _field(err["loc"]) or "body"
        raise ApiError(400, f"{field}: {_problem(model, err)}", field) from None


class Schema(GenerateJsonSchema):
    """pydantic's JSON Schema (2020-12, OpenAPI 3.1's) without a title on every property: the property's name
    says it."""

    def field_title_should_be_set(self, schema: CoreSchema) -> bool:
        return False


def schema_of(model: type[BaseModel], mode: JsonSchemaMode = "validation") -> dict[str, Any]:
    """One model's schema as it appears in the document's components."""
    return model.model_json_schema(ref_template=REF, schema_generator=Schema, mode=mode)

