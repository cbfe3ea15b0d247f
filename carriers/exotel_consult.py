"""Attended transfer on Exotel (carriers/socket_consult.py supplies the flow): the Exotel steps.

* dial: `POST /v1/Accounts/{sid}/Calls/connect` to the target with the number's App Bazaar flow (`exotel_app_id`,
  the flow with our Voicebot applet) as `Url`, exactly as the gateway places an outbound call
  (https://developer.exotel.com/api/make-a-call-and-connect-to-a-flow); the flow's Voicebot opens a socket to
  `/exotel/media` whose `start.call_sid` is the consultation call's Sid (or, as for outbound calls, whose two
  numbers are the target's and the ExoPhone). Its status callback comes with `consult=1`.
* join: Exotel has no API that joins two live calls (nor one that moves a call, only the flow's Connect applet
  dials from a flow), so the gateway bridges the two Voicebot sockets itself (`method: "bridge"`).
* hangup: closing the target's socket moves its flow on to the Passthru, which answers "hang up" for a CallSid
  that is not a call of ours. A call still ringing cannot be cancelled through Exotel's API: it is remembered, and
  its socket, should it be answered, is closed at once (CALL_ENDED).
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from aiohttp import web

from gateway.carrier import CarrierError

from .mediasocket import StreamClosed
from .numberfields import number_setting
from .socket_consult import TARGET_KEY, SocketConsultation, relay_target
from .streamrelay import RelayStream

if TYPE_CHECKING:
    from .exotel import ExotelCarrier, VoicebotStream

log = logging.getLogger("carriers.exotel")

#: seconds a finished consultation's CallSid is remembered (its late socket is refused, its callbacks ignored)
REMEMBER = 900.0


class ExotelConsults:
    """The ConsultCarrier of Exotel calls (one per carrier), and the consultation calls by CallSid."""

    def __init__(self, carrier: ExotelCarrier) -> None:
        self.carrier = carrier
        self.name = carrier.name
        self.gateway = carrier.gateway
        self.by_sid: dict[str, SocketConsultation] = {}

    async def consult_dial(self, c: SocketConsultation) -> None:
        from .exotel import _SID, FLOW_URL, call_options

        ex = self.carrier
        number = c.host.number or {}
        creds = ex._creds(number)
        if not creds.get("exotel_app_id"):
            raise CarrierError("this ExoPhone has no exotel_app_id (the flow with the Voicebot applet) to place "
                               "the consultation call through", 409)
        sid = creds["exotel_account_sid"]
        call = c.call
        opts = call_options(((call.agent or {}).get("settings") or {}).get("exotel"))
        ring = int((((call.agent or {}).get("settings") or {}).get("transfer") or {}).get("timeout")
                   or opts["ring_timeout"])
        data = {
            "From": c.number, "CallerId": number_setting(number, "exotel_exophone") or number.get("phone_number"),
            "Url": FLOW_URL.format(sid=sid, app_id=creds["exotel_app_id"]), "CallType": "trans",
            "TimeLimit": str(opts["time_limit"]), "TimeOut": str(ring),
            "StatusCallback": f"{ex.gateway.settings.public_base}/exotel/status_callback?call_id={call.id}&consult=1",
            "StatusCallbackEvents[0]": "terminal", "StatusCallbackEvents[1]": "answered",
            "CustomField": f"consult:{call.id}",
        }
        body = await ex._api("POST", creds, f"/v1/Accounts/{quote(sid, safe='')}/Calls/connect.json", data=data)
        exo: dict[str, Any] = body["Call"] if isinstance(body.get("Call"), dict) else {}
        call_sid = str(exo.get("Sid") or "")
        if not _SID.match(call_sid):
            raise CarrierError("Exotel accepted the consultation call but returned no Call Sid", 502)
        c.target_id = call_sid
        self.by_sid[call_sid] = c
        asyncio.get_running_loop().call_later(float(opts["time_limit"]) + REMEMBER, self.by_sid.pop, call_sid, None)

    async def consult_hangup(self, c: SocketConsultation) -> None:
        target = c.target
        if target is not None:
            await cast("VoicebotStream", target).close_for("hangup", drain=False)
        else:
            c.call.log.info("exotel cannot cancel a ringing call: the consultation call's socket will be closed "
                            "if it is answered", extra={"call_sid": c.target_id})

    async def consult_join(self, c: SocketConsultation) -> str | None:
        """No Exotel API joins two live calls: the gateway bridges them."""
        return None

    def consult_released(self, c: SocketConsultation) -> None:
        """Never called: Exotel has no join of its own."""

    # -- the target's socket and callbacks -----------------------------------------------------------------------
    def find(self, call_sid: str, start: dict[str, Any]) -> SocketConsultation | None:
        """The consultation a Voicebot `start` belongs to: by CallSid, else by its two numbers (the target's and
        the ExoPhone, either way round) among those still waiting for their socket."""
        from .exotel import same_number

        c = self.by_sid.get(call_sid)
        if c is not None:
            return c
        frm, to = str(start.get("from") or ""), str(start.get("to") or "")
        for c in self.by_sid.values():
            host = c.host.number
            ours = str(number_setting(host, "exotel_exophone") or (host or {}).get("phone_number") or "")
            if c.target is None and not c.over and (
                    (same_number(frm, c.number) and same_number(to, ours))
                    or (same_number(to, c.number) and same_number(frm, ours))):
                return c
        return None

    async def elsewhere(self, stream: VoicebotStream, call_sid: str) -> RelayStream | None:
        """In a cluster, a Voicebot socket whose CallSid is the consultation call of a call another live process
        holds (`extra.consult_carrier_id` in its row): checked with the ExoPhone's Basic auth, then relayed to that
        process with the same header (carriers/streamrelay.py). None when there is no such call."""
        gw = self.gateway
        if not gw.control.clustered or not call_sid:
            return None
        me = gw.settings.proc_id
        owners = [p for p in await gw.membership.alive_procs() if p != me]
        row = await gw.store.find_open_call_by_extra(self.name, TARGET_KEY, call_sid, owners)
        if row is None:
            return None
        number = await gw.store.get_number(row["phone_number_id"], with_secrets=True) \
            if row["phone_number_id"] else None
        self.carrier._check_auth(stream.request, number or {})
        auth = stream.request.headers.get("Authorization")
        return await relay_target(gw, row, stream, {"Authorization": auth} if auth else {})

    async def claim(self, stream: VoicebotStream, c: SocketConsultation, rate: int) -> None:
        from .exotel import CloseCode

        if c.over or c.host.consultation is not c:
            raise StreamClosed(CloseCode.CALL_ENDED, "this consultation call is over")
        self.carrier._check_auth(stream.request, c.host.number or {})
        await c.attach_target(stream, rate)
        c.call.log.info("exotel consultation stream started", extra={"stream_sid": stream.stream_sid})

    async def status(self, params: dict[str, str]) -> web.Response:
        """Status callback of a consultation call (`consult=1`): busy / no-answer / failed, or it ended."""
        from .exotel import TERMINAL_STATUSES

        c = self.by_sid.get((params.get("CallSid") or "").strip())
        status = (params.get("Status") or params.get("CallStatus") or "").strip().lower()
        if c is None or c.call.id != params.get("call_id"):
            return web.Response(status=200, text="unknown")
        if status in TERMINAL_STATUSES and not c.over:
            await c.dial_failed(status)
        return web.Response(status=200, text="ok")
