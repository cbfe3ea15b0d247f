"""Attended transfer on SIP trunks (gateway/consult.py): the consultation call and how it is completed.

* consult: the caller's RTP session is moved to a hold port (silence, or music on hold when the call has it) and
  a second INVITE goes to the target through the same trunk. Once answered, that leg's RTP session is attached to
  the call, so the engine hears and speaks to the target.
* complete (RFC 5589 §7, "Transfer with consultation hold"): REFER on the caller's dialog with
  `Refer-To: <target?Replaces=consultation dialog>` (RFC 3515 + RFC 3891). The trunk sends the caller's side an
  INVITE with that Replaces to the target, the target takes the caller in place of us and ends our consultation
  dialog with BYE; the final NOTIFY (sipfrag 200) tells us, and we end the caller's dialog with BYE. A target
  that has not sent its BYE within a moment gets ours. When the trunk refuses the REFER, or the transfer fails
  while both our dialogs are still up, the gateway bridges them itself (gateway/sip/bridge.py) — the call then
  stays on this gateway until either side hangs up.
* cancel: CANCEL while the target rings, BYE once it answered; the caller's RTP goes back to the call.
The caller hanging up ends the consultation call too (SipLeg.close).
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from gateway.carrier import CarrierError
from gateway.consult import ANSWERED, CANCELLED, ENDED, FAILED
from gateway.frames import HangupSource
from gateway.sip.bridge import HoldPort, MediaBridge
from gateway.sip.replaces import Replaces
from gateway.sip.sdp import NoCommonCodec, SdpError, parse_answer
from gateway.sip.ua import InviteResult, outcome_for, parse_reason, reason_header

from .sip_media import keys_in_clear, use_media

if TYPE_CHECKING:
    from .sip import SipCarrier, SipLeg, TrunkTarget

#: seconds the target has, after the final NOTIFY of a REFER with Replaces, to end our consultation dialog itself
REPLACED_BYE_WAIT = 2.0


class SipConsultation:
    """The consultation call of one SIP leg: `other` dials the target while `leg`'s caller is on hold."""

    def __init__(self, carrier: SipCarrier, leg: SipLeg, other: SipLeg, target: TrunkTarget, uri: str,
                 number: str) -> None:
        self.carrier = carrier
        self.leg = leg
        self.other = other
        self.target = target
        self.uri = uri
        self.number = number
        self.cancelled = False
        self.completing = False
        self.task: asyncio.Task[None] | None = None

    # -- dialling ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.leg.rtp.attach(HoldPort(self.leg.call.hold_frames()))     # the caller is on hold from now on
        self.task = self.carrier._spawn(self._dial(), f"sip-consult-{self.leg.call.id}")

    async def _dial(self) -> None:
        call, other = self.leg.call, self.other
        state: dict[str, Any] = {}
        try:
            result = await self.carrier.place(other, self.target, self.uri, self.number,
                                              ring_timeout=self.carrier.transfer_ring_timeout, state=state)
        except asyncio.CancelledError:      # cancelled before the INVITE went out
            result = InviteResult(error="cancelled", cancelled=True)
        except Exception as e:  # noqa: BLE001 - reported as a failed consultation, never a leaked leg
            call.log.exception("consultation INVITE failed")
            result = InviteResult(error=f"{type(e).__name__}: {e}")
        session = result.session
        if session is not None and (self.cancelled or call.ended.is_set()):
            session.send_bye(reason_header(q850=16, text="consultation cancelled"))
            session = None
        choice = None
        if session is not None:
            try:
                choice = parse_answer(session.remote_sdp or b"", state["offer"],
                                      media_encryption=self.target.media_encryption)
            except (NoCommonCodec, SdpError) as e:
                session.send_bye(reason_header(488, "Not Acceptable Here"))
                result, session = InviteResult(error=f"488 {e}"), None
        if session is None or choice is None:
            await self._failed(result)
            return
        other.session = session
        session.creds = self.target.creds
        session.on_offer = other.offer_answer
        session.on_bye = self._target_bye
        use_media(other, choice)
        keys_in_clear(self.target.transport, choice, call.log, call_id=call.id)
        await call.record(extra={"consult_sip_call_id": session.call_id})
        other.rtp.attach(call)                # the engine now hears the target, and speaks to it
        await call.consult_update(ANSWERED)

    async def _failed(self, result: InviteResult) -> None:
        self.other.close()
        if self.leg.consultation is self:
            self.leg.consultation = None
        if self.leg.call.ended.is_set():
            return
        self._unhold()
        if self.cancelled:
            await self.leg.call.consult_update(CANCELLED)
            return
        if result.response is not None:
            reason = outcome_for(result.response.status) + f" ({result.status_line})"
        else:
            reason = "no-answer" if result.timed_out else result.error or "failed"
        await self.leg.call.consult_update(FAILED, reason)

    def _unhold(self) -> None:
        """The caller's audio goes back to the call (and the engine's audio to the caller)."""
        if not self.leg.closed and self.leg.bridge is None:
            self.leg.rtp.attach(self.leg.call)

    async def _target_bye(self, bye: Any) -> None:
        """The target hung up: during the consultation the caller is back with the engine; while completing it is
        the expected end of the replaced dialog (RFC 5589 §7)."""
        self.other.close()
        if self.completing:
            return
        if self.leg.consultation is self:
            self.leg.consultation = None
        if not self.leg.call.ended.is_set():
            self._unhold()
            await self.leg.call.consult_update(ENDED, parse_reason(bye.headers.get("Reason")) or "target hung up")

    # -- cancel ------------------------------------------------------------------------------------------------
    async def cancel(self) -> None:
        self.cancelled = True
        session = self.other.session
        if session is None:                   # still ringing: CANCEL; the dial task reports `cancelled`
            if self.other.invite is not None:
                self.other.invite.cancel()
            elif self.task is not None:
                self.task.cancel()
            if self.task is not None:
                await asyncio.wait({self.task}, timeout=32 * self.carrier.live_ua.t1 + 2)
            return
        session.send_bye(reason_header(q850=16, text="consultation cancelled"))
        self.other.close()
        self.leg.consultation = None
        self._unhold()
        await self.leg.call.consult_update(CANCELLED)

    def abandon(self, reason: str) -> None:
        """The caller's leg is closing: end the consultation call with it."""
        self.cancelled = True
        session = self.other.session
        if session is not None:
            session.send_bye(reason_header(q850=16, text=reason or "Normal call clearing"))
        elif self.other.invite is not None:
            self.other.invite.cancel()
        elif self.task is not None:
            self.task.cancel()
        self.other.close()

    # -- complete ----------------------------------------------------------------------------------------------
    async def complete(self) -> None:
        leg, other, call = self.leg, self.other, self.leg.call
        target_session = other.session
        if target_session is None or leg.session is None:
            raise CarrierError("the consultation call has not been answered", 409)
        self.completing = True
        d = target_session.dialog
        refer_to = Replaces.naming(d.call_id, d.local_tag, d.remote_tag).in_uri(self.uri)
        await call.record(extra={"refer_to": refer_to})
        status, text = await leg.session.refer(refer_to, timeout=self.carrier.transfer_ring_timeout + 10)
        call.log.info("REFER with Replaces outcome %s %s", status, text, extra={"target": self.number})
        if 200 <= status < 300:
            await call.consult_completed("refer_replaces")
            try:
                await asyncio.wait_for(target_session.ended.wait(), REPLACED_BYE_WAIT)
            except TimeoutError:
                target_session.send_bye(reason_header(q850=16, text="transferred"))
            other.close()
            leg.consultation = None
            leg.session.send_bye(reason_header(q850=16, text="transferred"))
            await self.carrier._ended(leg, HangupSource.SYSTEM, f"transferred to {self.number} (attended)")
            return
        if not leg.session.ended.is_set() and not target_session.ended.is_set():
            # the trunk will not (or could not) join them: the gateway relays their audio itself
            bridge = MediaBridge(leg, other)
            leg.bridge = other.bridge = bridge
            target_session.on_bye = lambda bye: self.carrier._bridged_bye(other, bye)
            leg.consultation = None
            bridge.start()
            await call.record(extra={"bridged_sip_call_id": target_session.call_id,
                                     "refer_status": f"{status} {text}".strip()})
            await call.consult_completed("bridge")
            return
        self.completing = False
        if target_session.ended.is_set():
            other.close()
            leg.consultation = None
            self._unhold()
            await call.consult_update(ENDED, "target hung up while being transferred")
        raise CarrierError(f"the transfer failed: REFER answered {status} {text}".strip(), 502)
