"""Attended transfer on Twilio and SignalWire (gateway/consult.py), with a conference as the join.

A Twilio call's media stream cannot be moved to another call, and two existing calls are joined by putting them
in one conference (https://www.twilio.com/docs/voice/twiml/conference). So:

* consult: the caller's call gets `<Dial><Conference startConferenceOnEnter="false">gw-<call id></Conference>`:
  its media stream ends and the caller waits in the conference with the carrier's hold music (the conference's
  `waitUrl`). A second call goes to the target with `<Connect><Stream>` to our media route; its stream (known by
  its CallSid) becomes the call's stream, so the engine hears and speaks to the target.
* complete: the target's call gets `<Dial><Conference startConferenceOnEnter="true">` for the same room: its
  stream ends, the conference starts, caller and target talk; `endConferenceOnExit` on both ends it when either
  leaves. The gateway is out of the call.
* cancel, or the target busy / not answering / hanging up: the target's call is completed over REST and the
  caller's call gets `<Connect><Stream>` again: a new stream of the same call, the engine talks to the caller.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from twilio.base.exceptions import TwilioRestException
from twilio.twiml.voice_response import Dial, VoiceResponse

from gateway.carrier import CarrierError
from gateway.consult import ANSWERED, CANCELLED, ENDED, FAILED
from gateway.frames import HangupSource

if TYPE_CHECKING:
    from gateway.call import Call

    from .twilio import TwilioLeg
    from .twilio_media import MediaStream

log = logging.getLogger("carriers.twilio")

#: Twilio's CallStatus values that end a call that never talked to us
_NOT_ANSWERED = ("busy", "no-answer", "failed", "canceled")


def room_of(call: Call) -> str:
    return f"gw-{call.id}"


def conference_twiml(call: Call, *, start: bool) -> VoiceResponse:
    """Join the call's conference; `start=False` waits (hold music) until a participant with `start=True` joins."""
    resp = VoiceResponse()
    dial = Dial()
    dial.conference(room_of(call), start_conference_on_enter=start, end_conference_on_exit=True, beep=False)
    resp.append(dial)
    return resp


class TwilioConsultation:
    """The consultation call of one Twilio leg."""

    def __init__(self, leg: TwilioLeg, number: str) -> None:
        self.leg = leg
        self.number = number
        self.sid: str | None = None
        self.stream: MediaStream | None = None
        self.cancelled = False
        self.completing = False

    @property
    def carrier(self) -> Any:
        return self.leg.carrier

    # -- dialling ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        leg, call = self.leg, self.leg.call
        if leg.stream is None or leg.state != "live" or not leg.sid:
            raise CarrierError(f"the {self.carrier.label} call has no live media stream to consult from", 409)
        from_number = (call.number or {}).get("phone_number")
        if not from_number:
            raise CarrierError("the call has no number of ours to call the target from", 409)
        leg.state = "consulting"        # the caller's stream ends now: that is the hold, not a hangup
        try:
            await leg.update_twiml(conference_twiml(call, start=False))
        except Exception:
            leg.state = "live"
            raise
        q = f"?call_id={call.id}"
        try:
            created = await self.carrier.client(leg.creds).calls.create_async(
                to=self.number, from_=from_number, twiml=str(self.carrier.stream_twiml(call)),
                timeout=self.carrier.dial_timeout,
                status_callback=self.carrier.url(self.carrier.path("consult_status") + q),
                status_callback_method="POST", status_callback_event=["answered", "completed"])
        except (TwilioRestException, CarrierError) as e:
            await self._caller_back()
            raise (self.carrier.refusal(e) if isinstance(e, TwilioRestException) else e) from None
        self.sid = created.sid
        await call.record(extra={"consult_call_sid": created.sid})
        if self.carrier.gateway.control.clustered:
            # committed before the target can answer: its stream may reach another process, which recognises it
            # by this CallSid and relays it here (carriers/streamrelay.py)
            await self.carrier.gateway.store.flush()
        log.info("consultation call placed", extra={"carrier": self.carrier.name, "call_id": call.id,
                                                    "call_sid": created.sid})

    async def answered(self, stream: MediaStream) -> None:
        """The target's media stream arrived: it is the call's stream now."""
        self.stream = stream
        await self.leg.call.consult_update(ANSWERED)

    # -- the target's call ends ------------------------------------------------------------------------------
    async def status(self, status: str) -> None:
        """The consultation call's status callback."""
        call = self.leg.call
        if status in _NOT_ANSWERED and self.stream is None:
            await self._caller_back()
            await call.consult_update(CANCELLED if self.cancelled else FAILED, status)
        elif status == "completed" and not self.completing:
            await self.target_gone()

    async def target_gone(self) -> None:
        """The target hung up during the consultation (or its stream ended without a transfer)."""
        if self.completing or self.leg.consultation is not self:
            return
        await self._caller_back()
        await self.leg.call.consult_update(CANCELLED if self.cancelled else ENDED,
                                           "" if self.cancelled else "target hung up")

    async def _caller_back(self) -> None:
        """The caller's call leaves the conference for a new media stream of the same call."""
        leg = self.leg
        if leg.consultation is self:
            leg.consultation = None
        stream, self.stream = self.stream, None
        if stream is not None:
            if leg.stream is stream:
                leg.stream = None
            await stream.ws.close()       # its reader must not feed the caller's engine any more
        if not leg.call.is_active:
            return
        leg.state = "reconnecting"
        leg.arm_watchdog(self.carrier.connect_timeout, "stream_not_reconnected")
        try:
            await leg.update_twiml(self.carrier.stream_twiml(leg.call))
        except CarrierError as e:
            log.warning("could not take the caller off hold: %s", e.message,
                        extra={"carrier": self.carrier.name, "call_id": leg.call.id})

    async def end_target_call(self) -> None:
        """Complete the target's call over REST (cancel, or the caller's call ended)."""
        if not self.sid:
            return
        try:
            await self.carrier.client(self.leg.creds).calls(self.sid).update_async(status="completed")
        except TwilioRestException as e:
            if not (e.status == 404 or e.code == 20404):
                log.warning("%s refused to end the consultation call: %s", self.carrier.label, e.msg,
                            extra={"carrier": self.carrier.name, "call_id": self.leg.call.id})
        except CarrierError as e:
            log.warning("ending the consultation call failed: %s", e.message,
                        extra={"carrier": self.carrier.name, "call_id": self.leg.call.id})

    # -- cancel / complete -------------------------------------------------------------------------------------
    async def cancel(self) -> None:
        self.cancelled = True
        await self.end_target_call()
        await self._caller_back()
        await self.leg.call.consult_update(CANCELLED)

    async def complete(self) -> None:
        leg, call = self.leg, self.leg.call
        if self.stream is None or not self.sid:
            raise CarrierError("the consultation call has not been answered", 409)
        self.completing = True
        try:
            await self.carrier.client(leg.creds).calls(self.sid).update_async(
                twiml=str(conference_twiml(call, start=True)))
        except (TwilioRestException, CarrierError) as e:
            self.completing = False
            raise (self.carrier.refusal(e) if isinstance(e, TwilioRestException) else e) from None
        leg.released = True     # caller and target talk in the conference; the gateway is done
        leg.consultation = None
        await call.consult_completed("conference")
        await call.end(HangupSource.SYSTEM, f"transferred to {self.number} (attended)")
