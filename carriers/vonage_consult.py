"""Attended transfer on Vonage (carriers/socket_consult.py supplies the flow): the Voice API steps.

* dial: `POST /v1/calls` to the target with an inline NCCO `connect` to our media websocket, as for an outbound call
  of ours; the websocket's headers carry `gw_leg: consult` and the consultation's one-time token, its events come
  to `/vonage/events?leg=consult` (https://developer.vonage.com/en/voice/voice-api/ncco-reference#connect).
* join: both calls are transferred (`PUT /v1/calls/{uuid}` `{"action": "transfer", "destination": {"type": "ncco",
  …}}`) to an NCCO `conversation` named after the call, `endOnExit` for both, so the conversation ends when either
  leaves (https://developer.vonage.com/en/voice/voice-api/ncco-reference#conversation). The transfer ends each
  call's `connect` to our websocket; the gateway is out of the call. A refused first transfer leaves both calls as
  they were, and the gateway bridges them itself.
* hangup: `PUT /v1/calls/{uuid}` `{"action": "hangup"}` of the target (it cancels one still ringing).
"""
from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from gateway.carrier import CarrierError

from .mediasocket import StreamClosed
from .socket_consult import SocketConsultation, consult_row, relay_target

if TYPE_CHECKING:
    from .vonage import VonageCallState, VonageCarrier, VonageStream


class VonageConsults:
    """The ConsultCarrier of Vonage calls (one per carrier)."""

    def __init__(self, carrier: VonageCarrier) -> None:
        self.carrier = carrier
        self.name = carrier.name
        self.gateway = carrier.gateway

    async def consult_dial(self, c: SocketConsultation) -> None:
        from vonage_voice import CreateCallRequest, Phone, ToPhone

        from .vonage import VonageCallState, _ncco_models, creds_of, websocket_ncco

        vc = self.carrier
        st: VonageCallState = c.host
        call = st.call
        creds = creds_of(st.number)
        if not creds.has_app:
            raise CarrierError("a consultation call needs the number's vonage_application_id and "
                               "vonage_private_key", 409)
        ours = str((st.number or {}).get("phone_number") or "")
        headers = {"call_id": call.id, "gw_token": c.token, "gw_leg": "consult"}
        ncco = websocket_ncco(vc.ws_url(f"/vonage/media?call_id={call.id}"), st.rate, headers,
                              vc.url(f"/vonage/events?call_id={call.id}&leg=consult_ws"), from_number=ours)
        opts = ((call.agent or {}).get("settings") or {}).get("transfer") or {}
        body = CreateCallRequest(
            to=[ToPhone(number=c.number.lstrip("+"))], from_=Phone(number=ours.lstrip("+")), ncco=_ncco_models(ncco),
            event_url=[vc.url(f"/vonage/events?call_id={call.id}&leg=consult")],
            ringing_timer=int(opts.get("ring_timeout") or vc.ring_timeout),
        ).model_dump(by_alias=True, exclude_none=True, mode="json")
        _status, resp = await vc.rest(creds, "POST", "/v1/calls", json=body)
        uuid = str((resp or {}).get("uuid") or "")
        if not uuid:
            raise CarrierError("Vonage accepted the consultation call but returned no uuid", 502)
        # the target's own call state: its REST requests (DTMF, hangup) name its uuid; it is not one of our calls
        c.target_state = VonageCallState(call, st.number, secrets.token_urlsafe(18), st.rate, uuid, state="consult")
        c.target_id = uuid

    async def consult_hangup(self, c: SocketConsultation) -> None:
        if c.target_state is not None:
            await self.carrier.rest_hangup(c.target_state)     # (logs, never raises)

    async def consult_join(self, c: SocketConsultation) -> str | None:
        from vonage_voice import Conversation

        from .vonage import creds_of

        st: VonageCallState = c.host
        ncco = [Conversation(name=c.room, startOnEnter=True, endOnExit=True).model_dump(
            by_alias=True, exclude_none=True, mode="json")]
        for uuid in (c.target_id, st.uuid):
            await self.carrier.rest(creds_of(st.number), "PUT", f"/v1/calls/{uuid}", call_gone=True,
                                    json={"action": "transfer", "destination": {"type": "ncco", "ncco": ncco}})
        return "conversation"

    def consult_released(self, c: SocketConsultation) -> None:
        c.host.state = "released"

    # -- the target's socket and events --------------------------------------------------------------------------
    async def claim(self, stream: VonageStream, call_id: str, token: str) -> None:
        """A websocket with `gw_leg: consult`: the target's leg of the call's consultation."""
        from .vonage import CloseCode

        st = self.carrier.states.get(call_id)
        if st is None:      # another process of the cluster runs the consultation: relayed there once checked
            row = await consult_row(self.gateway, self.name, call_id, token, stream, CloseCode.BAD_TOKEN)
            raise await relay_target(self.gateway, row, stream)
        c = st.consultation
        if c is None:
            raise StreamClosed(CloseCode.UNKNOWN_CALL, "no consultation is waiting for this stream")
        if not c.token_ok(token):
            raise StreamClosed(CloseCode.BAD_TOKEN, "stream token does not match")
        stream.st = c.target_state
        await c.attach_target(stream, stream.rate)
        if c.target_state is not None:
            c.target_state.stream = stream

    async def event(self, st: VonageCallState, params: dict[str, Any], leg: str) -> None:
        """Events of the consultation call (`leg=consult`, authenticated): busy / unanswered / failed before its
        socket came, or the target hung up. The websocket leg's own events (`consult_ws`) change nothing."""
        from .vonage import TERMINAL

        c = st.consultation
        status = str(params.get("status") or "").lower()
        if leg != "consult" or c is None or str(params.get("uuid") or "") != c.target_id:
            return
        await st.call.record(extra={"vonage_consult_event": status[:40]})
        if status in TERMINAL:
            await c.dial_failed(TERMINAL[status])
