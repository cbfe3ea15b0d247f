"""The agent body (`POST/PUT/PATCH /api/v1/agents`) as pydantic models: the handlers validate with them and the
OpenAPI document shows their schemas.

Each settings section keeps keys it does not know (engines read their own), and what a section always had after
the checks (transfer `number`/`backup_numbers`/`type`, voicemail and AMD `enabled`, AMD `provider`, webhook
`secret`) is filled in before validation, so `model_dump(exclude_unset=True)` is exactly what is stored.
gateway/transfer.py says what the transfer fields mean on a call.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    model_validator,
)

from ..amd.settings import AmdProvider
from ..wavfetch import is_wav_url
from .models import E164, Body, Bool, E164List, HttpUrl, StrList, text
from .validation import to_http_url

MASK = "****"
Text4000 = Annotated[str, text(4000)]


def check_wav(path: str) -> str:
    """A WAV the gateway plays must load now, not fail on a call."""
    from ..amd.wav import WavError, load_message
    try:
        load_message(path.strip(), 8000)
    except WavError as e:
        raise ValueError(str(e)) from None
    return path


def _message(message: str) -> str:
    if is_wav_url(message):            # fetched when a call is transferred; here only its form is checked
        return to_http_url(message)
    if message.lower().endswith(".wav"):   # a file the gateway plays: it must load
        return check_wav(message)
    return message


Message = Annotated[str, text(4000), AfterValidator(_message),
                    Field(description="said before the transfer: text (spoken by the engine, or by the gateway's "
                                      "own text-to-speech), or a WAV path / http(s) URL the gateway plays")]


def _static(value: Any) -> Any:
    return value or "static"


def _none_is_empty(value: Any) -> Any:
    return [] if value is None else value


class _Filled(BaseModel):
    """Keys in ALWAYS are filled in when absent (they were always present after the checks), so they are stored."""
    ALWAYS: ClassVar[dict[str, Any]] = {}

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, value: Any) -> Any:
        return {**cls.ALWAYS, **value} if isinstance(value, dict) else value


class _Section(_Filled):
    """A settings section: known keys checked, others kept for the engine."""
    model_config = ConfigDict(extra="allow")


class TransferTarget(_Filled):
    """The fields of the transfer section and of each transfer option."""
    ALWAYS = {"number": None, "backup_numbers": [], "type": "static"}
    number: E164 | None = None
    backup_numbers: Annotated[E164List, BeforeValidator(_none_is_empty)] = []
    type: Annotated[Literal["static", "dynamic"], BeforeValidator(_static),
                    Field(description="dynamic: the engine names the number (one of the options')")] = "static"
    transfer_condition: Text4000 | None = Field(None, description="handed to the engine to decide which option "
                                                                  "applies")
    transfer_message: Message | None = None


class TransferOption(TransferTarget):
    """One of the seed API's `transfer_options`."""
    model_config = ConfigDict(extra="forbid")
    number: E164


class TransferSettings(TransferTarget, _Section):
    """`settings.transfer`: ours (`number`, …), the seed API's (`enabled`, `transfer_options`), or both (ours is
    then the first option)."""
    enabled: Bool | None = None
    transfer_options: list[TransferOption] | None = None


class EndCall(_Section):
    enabled: Bool | None = None
    phrases: StrList | None = None
    message: Text4000 | None = None


def _voicemail_message(message: str) -> str:
    return check_wav(message) if message.strip().lower().endswith(".wav") else message


class Voicemail(_Section):
    ALWAYS = {"enabled": False}
    enabled: Bool = False
    message: Annotated[Text4000, AfterValidator(_voicemail_message)] | None = Field(
        None, description="a WAV path the gateway plays, or text for the engine to speak")


def _amd_params(params: dict[str, Any]) -> dict[str, Any]:
    from ..amd.params import AmdParams
    try:
        AmdParams().with_overrides(params)
    except (TypeError, ValueError) as e:
        raise ValueError(str(e)) from None
    return params


class Amd(_Section):
    ALWAYS = {"enabled": False, "provider": "gateway"}
    enabled: Bool = False
    provider: Annotated[AmdProvider, BeforeValidator(lambda v: v or "gateway")] = "gateway"
    params: Annotated[dict[str, Any], AfterValidator(_amd_params)] | None = Field(
        None, description="detector overrides (docs/amd.md)")


def _secret(value: Any) -> Any:
    if value in (None, ""):
        return None       # explicit null clears it (also through PATCH's per-section merge)
    if value != MASK and (not isinstance(value, str) or not 16 <= len(value) <= 200):
        raise ValueError("must be a string of 16 to 200 characters")
    return value          # MASK = "keep the stored one" (a GET body sent back unchanged)


class Webhook(_Section):
    ALWAYS = {"secret": None}
    secret: Annotated[str | None, BeforeValidator(_secret), Field(
        json_schema_extra={"minLength": 16, "maxLength": 200, "writeOnly": True},
        description="signs each delivery (X-Gateway-Signature); shown as \"****\"")] = None


class RecordingSettings(_Section):
    """`settings.recording` (docs/recording.md); a dispatch may override it per call."""
    model_config = ConfigDict(extra="forbid")
    ALWAYS = {"enabled": False, "channels": "dual"}
    enabled: Bool = False
    channels: Annotated[Literal["mono", "dual"], BeforeValidator(lambda v: v or "dual"),
                        Field(description="dual: caller left, agent right")] = "dual"


class Settings(BaseModel):
    """Known sections are checked; other sections (engine-specific) must be objects and are kept as given."""
    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, dict[str, Any]] = Field(init=False)
    transfer: TransferSettings | None = None
    end_call: EndCall | None = None
    voicemail: Voicemail | None = None
    amd: Amd | None = None
    webhook: Webhook | None = None
    recording: RecordingSettings | None = None



def _engine(value: str, info: ValidationInfo) -> str:
    gw = (info.context or {}).get("gateway")
    if gw is not None:
        gw.engines.validate(value)     # ValueError says which engines exist
    return value


class AgentInput(Body):
    """An agent: a voice-engine profile plus the telephony settings the gateway acts on."""
    name: Annotated[str, text(200)]
    engine: Annotated[str, text(500), AfterValidator(_engine)] | None = Field(
        None, description="echo | greeting | ws://… | wss://… | accept[:pool] | package.module:factory (allowed)")
    webhook_url: HttpUrl | None = Field(None, description="lifecycle webhooks go here")
    settings: Settings | None = None


def _plain_string(schema: dict[str, Any]) -> None:
    schema.pop("default", None)
    schema.pop("anyOf", None)
    schema["type"] = "string"


def _not_null(value: str | None) -> str:
    if value is None:
        raise ValueError("must be a string")
    return value


#: PATCH: only what is sent changes; settings are merged per section, key by key. `name` is not required here
#: (absent: unchanged) but a null name is refused, so the schema says string with no default. (Built with
#: create_model: a subclass may not loosen a field's type.)
AgentPatch = create_model(
    "AgentPatch", __base__=AgentInput, __doc__="PATCH: only what is sent changes; settings merged per section.",
    name=(Annotated[str | None, text(200), AfterValidator(_not_null)], Field(None, json_schema_extra=_plain_string)))
