"""Typed request bodies, validated with pydantic v2; the OpenAPI document takes their JSON schemas from the same
classes (gateway/api/openapi.py), so what is documented is what is checked.

`parse()` turns pydantic's errors into the API's error shape (`{success: false, error, field}`, 400, the field
named as `a.b[0]`), the same as the hand-written checks in validation.py give.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from ..numbers import typed_e164
from .errors import ApiError
from .validation import MAX_INT

M = TypeVar("M", bound=BaseModel)


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):      # pydantic's lax mode would read true as 1
        raise ValueError("must be an integer")
    return value


Id = Annotated[int, Field(ge=1, le=MAX_INT), BeforeValidator(_not_bool)]
E164 = Annotated[str, Field(pattern=r"^\+[1-9]\d{6,14}$", examples=["+14155550100"]),
                 BeforeValidator(typed_e164)]


class Body(BaseModel):
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


def _problem(err: ErrorDetails) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


def parse(model: type[M], body: dict[str, Any]) -> M:
    """`body` as `model`, or the first problem as a 400 naming its field. Empty strings count as missing."""
    body = {k: v for k, v in body.items() if not (isinstance(v, str) and not v.strip())}
    try:
        return model.model_validate(body)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        field = _field(err["loc"]) or "body"
        raise ApiError(400, f"{field}: {_problem(err)}", field) from None


def schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """The models' JSON schemas as OpenAPI components (pydantic emits JSON Schema 2020-12, OpenAPI 3.1's)."""
    return {m.__name__: m.model_json_schema(ref_template="#/components/schemas/{model}") for m in models}
