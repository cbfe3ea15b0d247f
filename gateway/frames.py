"""The one audio frame type and the typed events that travel on the frame bus.

Every carrier converts its wire format into these; every engine sees only these. Audio is always PCM16
little-endian mono; the sample rate travels with the frame so a consumer never has to guess.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


@dataclass(slots=True)
class AudioFrame:
    pcm: bytes
    sample_rate: int

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate * 1000


class HangupSource(str, Enum):
    USER = "user"        # the caller / callee hung up
    AGENT = "agent"      # the voice engine asked to end the call
    CARRIER = "carrier"  # the carrier ended it (error, timeout, failed leg)
    SYSTEM = "system"    # the gateway (API hangup, shutdown, capacity, AMD voicemail drop)


class AnsweredBy(str, Enum):
    """Twilio's AnsweredBy vocabulary; every AMD source (ours, Twilio, Vonage) maps onto it."""
    HUMAN = "human"
    MACHINE_START = "machine_start"
    MACHINE_END_BEEP = "machine_end_beep"
    MACHINE_END_SILENCE = "machine_end_silence"
    MACHINE_END_OTHER = "machine_end_other"
    FAX = "fax"
    #: special information tones (ITU-T E.180) then a network announcement ("not in service"): not Twilio's
    #: vocabulary (it reports such calls as unknown or machine); ours, so no voicemail is dropped into them
    SIT = "sit"
    UNKNOWN = "unknown"

    @property
    def is_machine(self) -> bool:
        return self.value.startswith("machine")


@dataclass(slots=True)
class CallStarted:
    call_id: str
    carrier: str
    direction: str
    from_number: str
    to_number: str
    agent_id: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Dtmf:
    digit: str
    duration_ms: int | None = None


@dataclass(slots=True)
class Mark:
    """Inbound: the carrier has played all audio queued before the mark of this name. Outbound: place one."""
    name: str


@dataclass(slots=True)
class Clear:
    """Barge-in: drop every queued outbound frame, on our side and in the carrier's buffer."""


@dataclass(slots=True)
class Hangup:
    source: HangupSource
    reason: str = ""


@dataclass(slots=True)
class TransferRequest:
    number: str
    backup_numbers: list[str] = field(default_factory=list)
    message: str | None = None


@dataclass(slots=True)
class TransferResult:
    target: str | None
    outcome: str  # completed | busy | no-answer | failed | ...


@dataclass(slots=True)
class AmdResult:
    answered_by: AnsweredBy
    duration_ms: int
    source: str = "gateway"  # gateway | twilio | vonage
    #: set on a machine_end_* result when the agent's voicemail message is text: the engine speaks it, then hangs up
    voicemail_message: str | None = None


@dataclass(slots=True)
class SendDtmf:
    """Outbound: the engine asks the carrier to send DTMF digits to the far end."""
    digits: str


@dataclass(slots=True)
class SpeechActivity:
    """Caller speech started/ended, as seen by the gateway's VAD (drives speech:* webhooks)."""
    speaking: bool
    at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class ConsultRequest:
    """Attended transfer, first step: place a consultation call to `number` while the caller waits on hold.

    As an outbound bus item (the engine asked) it is carried out behind the audio queued before it, like a
    transfer; `message` is played (WAV path/URL) or handed to the engine (text) once the target answers."""
    number: str
    message: str | None = None


@dataclass(slots=True)
class ConsultEvent:
    """Inbound, to the engine: the consultation call changed `state` (gateway/consult.py: dialing, answered,
    failed, ended, cancelled, completed). While it is `answered` the engine hears the target and speaks to it;
    `message` (text) is on the `answered` event when the request carried one for the engine to say."""
    state: str
    number: str
    reason: str = ""
    message: str | None = None


@dataclass(slots=True)
class SayThenTransfer:
    """Inbound, to engines that speak text (`VoiceEngine.speaks_text`): say `text` (the agent's transfer_message),
    then transfer to `number` with `session.transfer(number)`. The gateway waits for that transfer (bounded)."""
    text: str
    number: str


@dataclass(slots=True)
class HoldRequest:
    """Outbound, from the engine: put the caller on hold once the audio queued before it has been handed on."""
    held: bool = True


@dataclass(slots=True)
class HoldState:
    """Inbound: the call went on hold or came off it. `source`: api, engine, or remote (the far end's re-INVITE).
    While held the engine receives no caller audio; held by the gateway, its output waits and the caller hears
    music on hold."""
    held: bool
    source: str


@dataclass(slots=True)
class MuteState:
    """Inbound: the caller's audio stopped (muted) or resumed reaching the engine; `source`: api or engine."""
    muted: bool
    source: str


@dataclass(slots=True)
class Wake:
    """Outbound, internal: wakes a carrier's sender waiting on an empty queue (a hold began); never sent on."""


Event = (CallStarted | Dtmf | Mark | Clear | Hangup | TransferRequest | TransferResult | AmdResult | SendDtmf
         | SpeechActivity | SayThenTransfer | ConsultRequest | ConsultEvent | HoldRequest | HoldState | MuteState
         | Wake)
BusItem = AudioFrame | Event
