"""Attended (consultative) transfer: the states of a consultation call and what a carrier leg must offer.

An attended transfer has three steps. `consult`: the gateway places a second call (the *consultation*) to the
transfer target while the caller waits on hold (silence, or music on hold where the gateway has it); the
engine's audio path moves to the target, so the agent can introduce the caller or play a message. Then either
`complete`: caller and target are joined — by the carrier's own primitive where it has one (SIP REFER with
Replaces, RFC 3891 / RFC 5589 §7; a Twilio conference), else by the gateway relaying audio between the two legs —
and the gateway leaves the call; or `cancel`: the consultation call ends and the engine talks to the caller again.
A consultation that fails (busy, no answer) or that the target hangs up also returns the caller to the engine.

The core tracks the state, tells the engine (`ConsultEvent`), the webhooks (`call:consult`) and the call log
(`extra.consult`); the carrier leg (`ConsultingLeg`) does the telephony and reports back through
`Call.consult_update()` / `Call.consult_completed()`. Each switch of the audio path drops the engine audio still
queued for the previous party, so nothing meant for the target reaches the caller or the other way round.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .frames import ConsultRequest

if TYPE_CHECKING:
    from .call import Call

DIALING = "dialing"
ANSWERED = "answered"
FAILED = "failed"
ENDED = "ended"          # the target hung up during the consultation
CANCELLED = "cancelled"
COMPLETED = "completed"
#: states in which a consultation is in progress (a second one is refused, the caller is on hold)
ACTIVE = (DIALING, ANSWERED)
STATES = (DIALING, ANSWERED, FAILED, ENDED, CANCELLED, COMPLETED)


class ConsultError(Exception):
    """A consultation step that cannot be taken now (no media, one already running, nothing to complete, or the
    carrier has no way to do it); `status` is the API status (409), the message says why."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@runtime_checkable
class ConsultingLeg(Protocol):
    """A carrier leg that can run an attended transfer. Carriers without these methods refuse `consult`."""

    async def consult(self, call: Call, request: ConsultRequest) -> None:
        """Put the caller on hold and start dialling `request.number`; return once the dial has started (raise
        CarrierError when it cannot). Report `answered` / `failed` through `call.consult_update()`; on `answered`
        the target's audio feeds the call's bus and the bus's outbound audio goes to the target."""

    async def consult_complete(self, call: Call) -> None:
        """Join caller and target; call `call.consult_completed(method)` once they are joined, then leave the
        call as the carrier requires. Raise CarrierError when they could not be joined (the consultation then
        stays as it was, or is reported `ended` when the target is gone)."""

    async def consult_cancel(self, call: Call) -> None:
        """End the consultation call (CANCEL while it rings, BYE once answered), take the caller off hold and
        give the caller's audio back to the bus; report `cancelled` through `call.consult_update()`."""


class RunningConsultation(Protocol):
    """A carrier's own object for one consultation call (SIP dialog, Twilio call …)."""

    async def complete(self) -> None: ...

    async def cancel(self) -> None: ...


class DelegatingConsultLeg:
    """The complete / cancel half of ConsultingLeg for a leg that keeps its running consultation (if any) in
    `self.consultation`; the leg writes `consult()` itself."""

    consultation: RunningConsultation | None

    def _running(self) -> RunningConsultation:
        if self.consultation is None:      # e.g. the target hung up a moment ago
            raise ConsultError("no consultation call on this call")
        return self.consultation

    async def consult_complete(self, call: Call) -> None:
        await self._running().complete()

    async def consult_cancel(self, call: Call) -> None:
        await self._running().cancel()


@dataclass
class Consultation:
    """The consultation call of one live call (at most one at a time)."""

    number: str
    message: str | None = None
    state: str = DIALING
    reason: str = ""
    #: how the transfer was completed: refer_replaces | bridge | conference
    method: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def describe(self) -> dict[str, Any]:
        return {"number": self.number, "state": self.state, "reason": self.reason, "method": self.method}


def is_wav(message: str | None) -> bool:
    """Whether a transfer/consult message names a WAV file or URL (played by the gateway) rather than text."""
    return bool(message) and (message or "").strip().lower().split("?", 1)[0].endswith(".wav")
