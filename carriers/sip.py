"""Plain SIP trunks (Twilio Elastic SIP, RingCentral, Vonage, any other): the carrier that owns the SIP transport,
the transaction layer, the user agent and the RTP engine, and turns SIP calls into gateway calls.

Inbound: INVITE → trunk found by the called number (Request-URI user, else To user, normalised to E.164) →
the trunk's auth policy (IP allow-list or digest; unknown sources 403 before anything else) → 404 unknown number /
480 no agent / 503 + Retry-After at capacity / 488 no common codec → 100, 180, 200 + SDP → ACK → RTP ↔ call bus.
Outbound (`dispatch`): number formatting (E.164 → strip + → prefix), outbound proxy, digest on 401/407, early
media (183) into AMD, outcome busy / no-answer / rejected / failed in the call log. Transfer: REFER first, and a
gateway-side bridge to a new outbound leg when the trunk refuses REFER or for backup numbers.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.call import Call
from gateway.callmanager import CapacityError
from gateway.carrier import Carrier, CarrierError, ImportField
from gateway.consult import DelegatingConsultLeg
from gateway.frames import ConsultRequest, HangupSource, TransferRequest, TransferResult
from gateway.rtp import NoFreePort, RtpEngine
from gateway.sip.bridge import MediaBridge
from gateway.sip.dialog import DialogError
from gateway.sip.inbound_auth import InboundAuth, TrunkAuth
from gateway.sip.locate import LocateError, Locator
from gateway.sip.message import NameAddr, SipResponse
from gateway.sip.numbering import DialFormatError, DialPlan, called_number_candidates, inbound_number, sip_uri, uri_user
from gateway.sip.origin import TrustedProxies
from gateway.sip.registration import Registration
from gateway.sip.sdp import (
    NoCommonCodec,
    SdpError,
    SessionDescription,
    SrtpKeys,
    answer_offer,
    make_offer,
    parse_answer,
)
from gateway.sip.testconn import test_trunk
from gateway.sip.tls import client_context, server_context
from gateway.sip.transaction import TransactionLayer
from gateway.sip.transport import SipTransport, TlsPeer
from gateway.sip.ua import (
    Credentials,
    IncomingInvite,
    InviteResult,
    OutgoingInvite,
    RequestFailed,
    SipSession,
    UserAgent,
    outcome_for,
    parse_reason,
    reason_header,
)
from gateway.store.derived import DerivedCache
from gateway.throttle import FailureThrottle

from .numberfields import number_settings
from .sip_consult import SipConsultation
from .sip_media import keys_in_clear, use_media
from .sip_presets import MEDIA_ENCRYPTION, PRESETS, PresetError, apply_preset, parse_hostport

log = logging.getLogger("carriers.sip")

CARRIER_RATE = 8000
RETRY_AFTER_S = 5            # 503 at capacity: when the carrier may try this gateway again
DEFAULT_RING_TIMEOUT = 45.0  # seconds an outbound INVITE may ring before we CANCEL (no-answer)
TRANSFER_RING_TIMEOUT = 30.0
#: seconds the trunk list is kept when no write invalidates it (bounds a missed cluster notification, as the
#: store's own cache TTL does)
TRUNK_CACHE_S = 5.0
#: Retry-After (s) of a call refused because every RTP port of this process is in use
RTP_FULL_RETRY_AFTER = 5


def _reg_key(number: dict[str, Any]) -> str:
    """What a registration is built from (settings and secrets): when it changes the REGISTER is redone."""
    return json.dumps([number.get("config") or {}, number.get("secrets") or {}], sort_keys=True, default=str)


def _reject_rtp_full(inv: IncomingInvite, e: CarrierError) -> None:
    """An INVITE refused because every RTP port of this process is in use (`SipCarrier._open_rtp`): 503 with
    Retry-After and a Warning naming the limit, so a proxy in front (Kamailio) tries the next worker."""
    inv.reject(503, "Service Unavailable", [("Retry-After", str(e.retry_after or RTP_FULL_RETRY_AFTER)),
                                            ("Warning", f'399 gateway "{str(e)[:120]}"')])


@dataclass
class TrunkTarget:
    """Where and how to send requests for one trunk."""

    host: str
    port: int
    transport: str
    dest: tuple[str, int, str]
    route: list[str]
    creds: Credentials | None
    plan: DialPlan
    from_user: str
    sip_port: int | None = None     # as configured: without one, a host name is located through DNS SRV
    #: transport tls: the name the trunk's certificate must carry (RFC 5922 §4: the host we were given, not one
    #: DNS returned) and whether it is checked at all (a trunk's `tls_verify: false`, self-signed test peers)
    tls: TlsPeer | None = None
    media_encryption: str = "none"  # none | srtp | optional

    @classmethod
    def of(cls, number: dict[str, Any]) -> TrunkTarget:
        f = number_settings(number)
        transport = (f.get("transport") or "udp").lower()
        port = int(f.get("sip_port") or (5061 if transport == "tls" else 5060))
        host = f["sip_host"]
        route: list[str] = []
        dest = (host, port, transport)
        if f.get("outbound_proxy"):
            phost, pport = parse_hostport(f["outbound_proxy"], "outbound_proxy")
            dest = (phost, pport, transport)
            route = [f"<sip:{phost}:{pport};lr>"]
        tls = TlsPeer(dest[0], f.get("tls_verify") is not False) if transport == "tls" else None
        creds = None
        if f.get("sip_username") and f.get("sip_password"):
            creds = Credentials(f["sip_username"], f["sip_password"], f.get("auth_username") or None)
        plan = DialPlan.from_config(f)
        phone = f.get("phone_number") or ""
        from_user = f["sip_username"] if f.get("register") and f.get("sip_username") else (
            phone[1:] if plan.strip_plus and phone.startswith("+") else phone) or "gateway"
        return cls(host, port, transport, dest, route, creds, plan, from_user,
                   int(f["sip_port"]) if f.get("sip_port") else None, tls,
                   str(f.get("media_encryption") or "none").lower())

    def uri_for(self, e164: str) -> str:
        # no port unless configured: a port in the URI would tell the next hop not to use DNS SRV (RFC 3263 §4.2)
        return sip_uri(self.plan.user_part(e164), self.host, self.sip_port if self.sip_port != 5060 else None,
                       transport=self.transport)

    def from_addr(self, display: str = "") -> NameAddr:
        return NameAddr(sip_uri(self.from_user, self.host), display)


class SipLeg(DelegatingConsultLeg):
    """The SIP side of one live gateway call: its dialog, its RTP session, hangup and transfer (blind, attended)."""

    def __init__(self, carrier: SipCarrier, call: Call, number: dict[str, Any], rtp: Any) -> None:
        self.carrier = carrier
        self.call = call
        self.number = number
        self.rtp = rtp
        self.session: SipSession | None = None
        self.invite: OutgoingInvite | None = None
        self.bridge: MediaBridge | None = None
        self.sdp_version = 1
        self.sdp_session_id: str | None = None
        self.on_hold = False
        self.closed = False
        #: the attended transfer's consultation call while one runs (carriers/sip_consult.py)
        self.consultation: SipConsultation | None = None
        self.srtp_keys: SrtpKeys | None = None   # the SDES keys in use (None: plain RTP)

    # -- CallLeg -----------------------------------------------------------------------------------------------
    async def hangup(self, call: Call, reason: str) -> None:
        if self.session is None:
            if self.invite is not None:
                self.invite.cancel()
            return
        # the call ends now, RTP stops now; the BYE's transaction finishes in the background (RFC 3261 §15)
        self.session.send_bye(reason_header(q850=16, text=reason or "Normal call clearing"))
        if self.bridge is not None:
            await self.bridge.hangup_other(self, reason)
        await self.finish()

    async def transfer(self, call: Call, request: TransferRequest) -> None:
        await self.carrier.transfer(self, request)

    async def set_hold(self, call: Call, on: bool) -> None:
        """We put the caller on hold (RFC 3264 §8.4, RFC 6337 §5.3): re-INVITE offering a=sendonly — we keep sending
        (music on hold) and stop playing out what arrives — and a=sendrecv to resume. CarrierError when the far
        end refuses or does not answer (the call stays as it was)."""
        session = self.session
        if session is None or session.ended.is_set():
            raise CarrierError("the SIP call is not established", 409)
        self.sdp_version += 1
        encryption = TrunkTarget.of(self.number).media_encryption
        offer = make_offer(self.carrier.advertised_ip, self.rtp.local_port, direction="sendonly" if on else "sendrecv",
                           session_id=self.sdp_session_id, version=self.sdp_version, media_encryption=encryption)
        previous = session.local_sdp        # what session refreshes re-offer if this one is refused
        try:
            resp = await session.reinvite(offer.to_bytes())
            if resp.status >= 300:
                raise CarrierError(f"the far end refused the hold re-INVITE: {resp.status} {resp.reason}", 502)
            choice = parse_answer(resp.body or session.remote_sdp or b"", offer, media_encryption=encryption)
        except RequestFailed as e:
            session.local_sdp = previous
            raise CarrierError(f"hold re-INVITE not answered: {e.reason}", 504) from None
        except (NoCommonCodec, SdpError) as e:
            session.local_sdp = previous
            raise CarrierError(f"the far end's answer to the hold re-INVITE is unusable: {e}", 502) from None
        except CarrierError:
            session.local_sdp = previous
            raise
        use_media(self, choice)
        call.log.info("SIP hold" if on else "SIP resume", extra={"direction": choice.direction})

    # -- ConsultingLeg (gateway/consult.py) ----------------------------------------------------------------------
    async def consult(self, call: Call, request: ConsultRequest) -> None:
        await self.carrier.consult(self, request)

    # -- media -------------------------------------------------------------------------------------------------
    def offer_answer(self, offer: bytes) -> bytes | None:
        """A re-INVITE/UPDATE offer (hold, resume, codec change): our answer, or None for 488."""
        try:
            self.sdp_version += 1
            # while we hold the caller we keep sending music and stop listening, whatever the far end re-offers
            answer, choice = answer_offer(offer, self.carrier.advertised_ip, self.rtp.local_port,
                                          direction="sendonly" if self.call.held else "sendrecv",
                                          session_id=self.sdp_session_id, version=self.sdp_version,
                                          media_encryption=TrunkTarget.of(self.number).media_encryption,
                                          keys=self.srtp_keys)
        except (NoCommonCodec, SdpError) as e:
            self.call.log.info("re-offer refused: %s", e)
            return None
        use_media(self, choice)
        if choice.on_hold != self.on_hold:
            # the far end holds us (a=sendonly/inactive): we answered recvonly/inactive, so RTP stops going out and
            # the engine's audio waits; the engine is told and hears nothing until the far end resumes (sendrecv)
            self.on_hold = choice.on_hold
            self.call.log.info("held by the far end" if choice.on_hold else "resumed by the far end",
                               extra={"direction": choice.direction})
            self.carrier._spawn(self.call.remote_hold(choice.on_hold), "sip-remote-hold")
        return answer.to_bytes()

    def close(self) -> None:
        if self.consultation is not None:
            consult, self.consultation = self.consultation, None
            consult.abandon(self.call.hangup.reason if self.call.hangup else "call ended")
        if not self.closed:
            self.closed = True
            self.rtp.close()
        if self.session is not None:
            # the ended session stays findable for 32·T1 (a crossing BYE still gets its 200): it must not keep
            # this leg, the call, its bus and its engine alive that long through its callbacks
            self.session.release_callbacks()
        if self.carrier.legs.get(self.call.id) is self:
            del self.carrier.legs[self.call.id]

    async def finish(self) -> None:
        """Close the media and keep its counters in the call log (`extra.rtp`)."""
        if self.closed:
            return
        self.close()
        stats: dict[str, Any] = dict(self.rtp.stats)
        stats["after_end"] = self.call.audio_after_end     # frames played out after the call ended: heard by no one
        quality = self.rtp.quality()
        stats["quality"] = quality
        if self.bridge is not None:
            stats["bridge"] = self.bridge.stats
        self.carrier.gateway.metrics.observe_rtp_quality(self.call.carrier, str(self.number.get("sip_trunk_name")
                                                                               or ""), quality)
        await self.call.record(extra={"rtp": stats})


class SipCarrier(Carrier):
    name = "sip"
    providers = ("sip",)
    import_fields = (
        ImportField("phone_number", str, required=True, e164=True, help="the trunk's number in E.164, e.g. "
                                                                        "+14155550100"),
        ImportField("sip_host", str, required=True, help="trunk host or IP (e.g. mytrunk.pstn.twilio.com)"),
        ImportField("sip_trunk_name", str, required=True, help="a unique name for this trunk"),
        ImportField("name", str),
        ImportField("sip_port", int, help="empty: DNS SRV for a host name, else 5060 (5061 tls; 5090 ringcentral)"),
        ImportField("sip_username", str),
        ImportField("sip_password", str, secret=True),
        ImportField("sip_dial_prefix", str, help="prepended to every dialled number, e.g. 9"),
        ImportField("sip_strip_plus", bool, help="dial 15551234567 instead of +15551234567"),
        ImportField("preset", str, choices=tuple(PRESETS), help="provider defaults: twilio, ringcentral, vonage, "
                                                                "other"),
        ImportField("transport", str, choices=("udp", "tcp", "tls")),
        ImportField("outbound_proxy", str, help="host[:port] every request is sent through"),
        ImportField("auth_username", str, help="authorization id when it differs from sip_username"),
        ImportField("auth_type", str, choices=("basic", "ip"), help="inbound: ip allow-list or digest (basic)"),
        ImportField("allowed_ips", list, help="inbound sources (IPs / CIDR); empty = the trunk's own hosts"),
        ImportField("register", bool, help="REGISTER to the trunk (registration-based providers)"),
        ImportField("tls_verify", bool, help="transport tls: check the trunk's certificate (default true; false "
                                             "only for a self-signed test peer)"),
        ImportField("media_encryption", str, choices=MEDIA_ENCRYPTION,
                    help="none (RTP), srtp (SDES-SRTP required) or optional (SRTP offered, RTP accepted)"),
    )

    def __init__(self, gateway: Any) -> None:
        super().__init__(gateway)
        self.transport: SipTransport | None = None
        self.layer: TransactionLayer | None = None
        self.ua: UserAgent | None = None
        self.rtp: RtpEngine | None = None
        self.auth = InboundAuth(realm="telephony-gateway")
        st = gateway.settings
        #: password guessing: a source with repeated wrong digest credentials is refused for a while
        self.auth_throttle = FailureThrottle("SIP", log, st.auth_max_failures, st.auth_failure_window,
                                             st.auth_ban_seconds)
        self.registrations: dict[int, Registration] = {}
        self.legs: dict[str, SipLeg] = {}
        self.ring_timeout = DEFAULT_RING_TIMEOUT
        self.transfer_ring_timeout = TRANSFER_RING_TIMEOUT
        self.registration_retry = (5.0, 300.0)   # first retry, cap (seconds) after a failed REGISTER
        #: every SIP trunk with its secrets, for sources and REGISTERs that name no imported number; dropped with the
        #: store's cached numbers, also when another process of the cluster wrote one (gateway/store/derived.py)
        self._trunks: DerivedCache[list[dict[str, Any]]] = DerivedCache(self._load_trunks, TRUNK_CACHE_S)
        self._tasks: set[asyncio.Task[None]] = set()
        #: the settings each running registration was built from (a change restarts it: `sync_registrations`)
        self._reg_keys: dict[int, str] = {}
        self._resync = asyncio.Event()      # a number or a trunk's registrant changed, here or elsewhere
        self._sync_lock = asyncio.Lock()
        self._stopping = False              # stop() began: no trunk is claimed or registered again

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @property
    def port(self) -> int | None:
        return self.transport.port if self.transport is not None else None

    @property
    def advertised_ip(self) -> str:
        return self.gateway.settings.sip_contact_host

    def waiting_for(self) -> list[str]:
        """SIP and RTP listen once `start()` returns."""
        return [] if self.up else ["sip", "rtp"]

    async def start(self) -> None:
        s = self.gateway.settings
        if not s.enable_sip:
            return
        self.transport = SipTransport(
            s.sip_host, s.sip_port, advertised_host=self.advertised_ip,
            tls_context=server_context(s.tls_cert, s.tls_key) if s.tls_enabled else None,
            tls_port=s.tls_port if s.tls_enabled else None, tls_client_context=client_context(s.tls_ca_file))
        self.transport.on_response = self.gateway.metrics.sip_response
        self.layer = TransactionLayer(self.transport)
        self.layer.refuse_source = self._refuse_banned
        if s.trusted_proxies:       # Kamailio in front: it names each request's real sender (docs/deploy.md)
            self.layer.origin_of = TrustedProxies(s.trusted_proxies).origin
        await self.transport.start()
        self.ua = UserAgent(self.transport, self.layer)
        self.ua.on_invite = self._on_invite
        self.ua.on_register = self._on_register
        self.ua.draining = lambda: self.gateway.draining
        self.ua.retry_after = RETRY_AFTER_S
        self.ua.locator = Locator(s.dns_server)
        # an IP-authenticated trunk without an allow-list may call from any server its DNS publishes
        self.auth.resolver = self.ua.locator.trunk_addresses
        self.rtp = RtpEngine(s.sip_host, s.rtp_port_min, s.rtp_port_max, self.advertised_ip)
        await self.rtp.start()
        self.log.info("SIP listening", extra={"port": self.transport.port, "tls_port": self.transport.tls_port,
                                              "rtp": f"{s.rtp_port_min}-{s.rtp_port_max}"})
        self.gateway.store.watchers.append(self._numbers_changed)
        await self.sync_registrations()
        self._spawn(self._sync_loop(), "sip-registrations")

    async def stop(self) -> None:
        if self._numbers_changed in self.gateway.store.watchers:
            self.gateway.store.watchers.remove(self._numbers_changed)
        self._stopping = True
        async with self._sync_lock:
            await self._unregister_all()
        for leg in list(self.legs.values()):
            if leg.session is not None:  # ua.close() below gives the BYEs a moment for their answers
                leg.session.send_bye(reason_header(q850=16, text="gateway shutting down"))
            leg.close()
        for t in list(self._tasks):
            t.cancel()
        if self.ua is not None:
            await self.ua.close()
        if self.layer is not None and hasattr(self.layer, "close"):
            res = self.layer.close()
            if asyncio.iscoroutine(res):
                await res
        if self.rtp is not None:
            await self.rtp.stop()
        if self.transport is not None:
            await self.transport.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("SIP task %s failed", task.get_name(), exc_info=task.exception())

    # -- import / numbers ----------------------------------------------------------------------------------------
    async def validate_import(self, fields: dict[str, Any]) -> dict[str, Any]:
        try:
            return apply_preset(fields)
        except PresetError as e:
            raise CarrierError(e.message if e.message.startswith(e.field) else f"{e.field}: {e.message}", 400,
                               field=e.field) from None

    async def on_number_imported(self, number: dict[str, Any]) -> None:
        if (number.get("config") or {}).get("register") and self.ua is not None:
            await self.sync_registrations()

    async def on_number_deleted(self, number: dict[str, Any]) -> None:
        if int(number["id"]) in self.registrations:
            await self.sync_registrations()

    def on_drain(self) -> None:
        self._resync.set()      # hand the trunks this process REGISTERs over to a running one

    # -- REGISTER to registration-based trunks: one process of the cluster per trunk (docs/deploy.md) -------------
    def _numbers_changed(self, kind: str) -> None:
        """A number was written (here or, announced by the cache sync, elsewhere) or a trunk changed hands."""
        if kind == "registration":
            self._trunks.clear()    # who registers is not behind the store's cache epoch: read it again
        if kind in ("number", "registration"):
            self._resync.set()

    async def _sync_loop(self) -> None:
        """Look again whenever a number changes, and every heartbeat interval: a trunk whose registrant stopped
        heartbeating (crashed) is claimed by a running process within about `stale_after`."""
        while True:
            try:
                await asyncio.wait_for(self._resync.wait(), self.gateway.settings.heartbeat_interval)
            except TimeoutError:
                pass
            self._resync.clear()
            try:
                await self.sync_registrations()
            except Exception:
                self.log.exception("registrations not synced")

    async def sync_registrations(self) -> None:
        """Make this process's REGISTERs match the stored trunks. For each trunk with `register`, exactly one
        process of the cluster registers it (`phone_numbers.registered_by`, claimed with a conditional UPDATE):
        the holder re-registers with new settings when an operator edits the trunk on any node, un-registers
        (Expires: 0) when it is deleted or stops registering, and a draining or stopping holder un-registers and
        lets a running process take the trunk over. Why one and not one per process: RFC 3261 §10.3 keeps a
        binding per Contact, so processes registering the same Contact replace each other's binding and the
        first to stop removes it for all; each registering its own Contact gives the registrar N bindings, and a
        proxy forks an INVITE to all of them (§16.6), so every process would take the same call."""
        if self.ua is None:
            return
        async with self._sync_lock:
            if self.gateway.draining or self._stopping:
                await self._unregister_all()
                return
            trunks = {int(n["id"]): n for n in await self._sip_trunks() if (n.get("config") or {}).get("register")}
            me = self.gateway.settings.proc_id
            for nid, reg in list(self.registrations.items()):
                n = trunks.get(nid)
                if n is not None and n.get("registered_by") in (me, None) and self._reg_keys.get(nid) == _reg_key(n):
                    continue
                # deleted, no longer registering, edited, or taken over by another process (this one was lost)
                self.registrations.pop(nid, None)
                self._reg_keys.pop(nid, None)
                await reg.stop(unregister=True)
                if n is None:       # an edited trunk stays with this process: registered again just below
                    await self.gateway.store.release_registration(nid, me)
            wanted = [n for nid, n in trunks.items() if nid not in self.registrations]
            if not wanted:
                return
            running = {p["proc"] for p in await self.gateway.store.list_nodes(self.gateway.settings.stale_after)
                       if p["alive"] and p["state"] == "running"}
            for n in wanted:
                holder = n.get("registered_by")
                if holder not in (None, me) and holder in running:
                    continue
                if await self.gateway.store.claim_registration(int(n["id"]), me, self.gateway.settings.stale_after):
                    started = self._start_registration(n)
                    self._trunks.clear()    # the kept list predates the claim: the next look reads who holds what
                    left = (n.get("status") or {}).get("contact")
                    if started is not None and holder not in (None, me) and left and left != started.contact:
                        self._spawn(self._remove_binding(n, left), f"sip-unregister-{n['id']}")

    async def _unregister_all(self) -> None:
        """Un-REGISTER every trunk this process registers and let the others take them (draining, stopping)."""
        regs = list(self.registrations.items())
        self.registrations.clear()
        self._reg_keys.clear()
        if not regs:
            return
        await asyncio.gather(*(r.stop(unregister=True) for _, r in regs), return_exceptions=True)
        me = self.gateway.settings.proc_id
        try:
            for nid, _ in regs:
                await self.gateway.store.release_registration(nid, me)
            await self.gateway.store.announce("registration")     # a running process takes them now
        except Exception:
            self.log.exception("trunk registrations not handed over (the others take them once this one is gone)")

    def _start_registration(self, number: dict[str, Any]) -> Registration | None:
        nid = int(number["id"])
        try:
            reg = Registration(self.live_ua, number, self.gateway.store, retry=self.registration_retry)
        except (KeyError, ValueError) as e:
            self.log.error("trunk registration settings unusable: %s", e, extra={"number_id": nid})
            return None
        self.registrations[nid] = reg
        self._reg_keys[nid] = _reg_key(number)
        reg.start()
        return reg

    async def _remove_binding(self, number: dict[str, Any], contact: str) -> None:
        """A trunk taken over from a registrant that stopped heartbeating (crashed, cut off): its binding would
        stay at the registrar until it expired (up to an hour), and a registrar that forks would keep trying a dead
        Contact. Remove it (Expires: 0 for that Contact, from a Call-ID of our own: RFC 3261 §10.2.2 and §10.3
        step 7, the registrar removes a binding whatever Call-ID set it up)."""
        try:
            resp = await Registration(self.live_ua, number, self.gateway.store).register_once(0, contact=contact)
            self.log.info("crashed registrant's binding removed: %s %s", resp.status, resp.reason,
                          extra={"number_id": number["id"], "contact": contact})
        except (RequestFailed, KeyError, ValueError) as e:
            self.log.warning("crashed registrant's binding not removed: %s", e,
                             extra={"number_id": number["id"], "contact": contact})

    @property
    def live_ua(self) -> UserAgent:
        """The user agent of a started carrier (requests and calls arrive only after start())."""
        if self.ua is None:
            raise RuntimeError("SIP carrier not started")
        return self.ua

    @property
    def live_rtp(self) -> RtpEngine:
        if self.rtp is None:
            raise RuntimeError("SIP carrier not started")
        return self.rtp

    def _refuse_banned(self, source_ip: str) -> int | None:
        """New requests from a source banned for password guessing: 403, or silence (`sip_ban_response`)."""
        if not self.auth_throttle.banned(source_ip):
            return None
        return 0 if self.gateway.settings.sip_ban_response == "silent" else 403

    def _auth_refused(self, verdict: Any, source_ip: str, **fields: Any) -> None:
        if verdict.bad_credentials:
            self.auth_throttle.failure(source_ip, **fields)

    def metrics(self) -> dict[str, float]:
        """RTP packet counters (every session since start; SRTP packets dropped for failed authentication or
        replay), the shared clock's health and the digest-auth throttle, for /metrics."""
        throttle = self.auth_throttle.metrics("gateway_sip")
        if self.rtp is None:
            return throttle
        t = self.rtp.totals()
        return {**throttle, "gateway_rtp_packets_sent_total": t.get("sent", 0),
                "gateway_rtp_packets_received_total": t.get("received", 0),
                "gateway_rtp_packets_lost_total": t.get("lost", 0),
                "gateway_rtp_packets_late_total": t.get("late", 0),
                "gateway_srtp_packets_failed_total": t.get("srtp_failed", 0),
                "gateway_rtp_sessions": t["sessions"],
                "gateway_rtcp_reports_sent_total": t.get("rtcp_sent", 0),
                "gateway_rtcp_reports_received_total": t.get("rtcp_received", 0),
                "gateway_rtp_clock_late_ticks_total": t["late_ticks"]}

    async def test_connection(self, fields: dict[str, Any]) -> dict[str, Any]:
        checked = await self.validate_import(dict(fields))
        return await test_trunk(self.ua, checked)

    async def probe(self, number: dict[str, Any]) -> dict[str, Any] | None:
        """Health probe: DNS and an OPTIONS ping to where the trunk's calls would go (any SIP answer proves it is
        reachable; its round-trip time is measured), and the registration state when the trunk registers."""
        if self.ua is None:
            return None
        config = number.get("config") or {}
        fields = {**config, **(number.get("secrets") or {}), "phone_number": number["phone_number"]}
        report = await test_trunk(self.ua, fields, reachability_only=True)
        steps = {s["step"]: s for s in report["steps"]}
        options = steps.get("options")
        failed = next((s for s in report["steps"] if s["verdict"] != "ok"), None)
        return {"reachable": bool(options and options["verdict"] == "ok"),
                "rtt_ms": options.get("rtt_ms") if options else None,
                "sip_status": options.get("status_line") if options else None,
                "detail": (failed or options or {}).get("detail", ""),
                "registration": (number.get("status") or {}).get("registration") if config.get("register")
                else None}

    async def _sip_trunks(self) -> list[dict[str, Any]]:
        return await self._trunks.get(self.gateway.store)

    async def _load_trunks(self) -> list[dict[str, Any]]:
        rows, _ = await self.gateway.store.list_numbers(1, 1_000_000, provider="sip", with_secrets=True)
        return rows

    # -- inbound -------------------------------------------------------------------------------------------------
    async def _on_invite(self, inv: IncomingInvite) -> None:
        req = inv.request
        # No 100 Trying of our own: the transaction layer sends one when the INVITE is still unanswered after
        # 200 ms (RFC 3261 §17.2.1: a UAS that will send a provisional or final response within 200 ms need not).
        # Our 200 (or the refusal) nearly always goes first, and building and sending a 100 for every INVITE was
        # 6 % of a worker's CPU at 300 calls/s (py-spy), plus one more message per call through Kamailio.
        if inv.replaces is not None:
            await self._on_replacing_invite(inv, inv.replaces)
            return
        number = None
        for e164 in called_number_candidates(req.uri, req.to.uri):
            number = await self.gateway.store.find_number(e164, "sip", with_secrets=True)
            if number is not None:
                break
        extra = {"sip_call_id": req.call_id, "source": inv.source_ip}
        if number is None:
            trunks = await self._sip_trunks()
            known = await self.auth.known_source([TrunkAuth.from_number(n) for n in trunks], inv.source_ip)
            if not known:
                self.log.info("INVITE from unknown source refused", extra=extra)
                inv.reject(403, "Forbidden")
            else:
                self.log.info("INVITE for a number not imported", extra={**extra, "uri": req.uri})
                inv.reject(404, "Not Found")
            return
        verdict = await self.auth.check(TrunkAuth.from_number(number), req, inv.source_ip)
        if not verdict.ok:
            self.log.info("INVITE refused by trunk auth: %s", verdict.detail,
                          extra={**extra, "trunk": number.get("sip_trunk_name")})
            self._auth_refused(verdict, inv.source_ip, method="INVITE", trunk=number.get("sip_trunk_name"))
            inv.reject(verdict.status, verdict.reason, list(verdict.headers))
            return
        if not number.get("agent_id"):
            inv.reject(480, "Temporarily Unavailable", [("Warning", '399 gateway "no agent attached to this '
                                                                   'number"')])
            return
        if not req.body:
            inv.reject(488, "Not Acceptable Here", [("Warning", '399 gateway "an SDP offer is required"')])
            return
        try:
            SessionDescription.parse(req.body)
        except SdpError as e:
            inv.reject(400, f"Bad SDP: {e}"[:100])
            return
        caller = inbound_number(uri_user(req.from_.uri)) or uri_user(req.from_.uri) or "anonymous"
        try:
            # before the call exists: a process whose RTP ports are all in use is full, like one at --max-calls
            # (503 + Retry-After, no call-log row), and Kamailio's failure_route tries the next worker
            rtp = await self._open_rtp()
        except CarrierError as e:
            self.log.warning("INVITE refused: %s", e, extra=extra)
            _reject_rtp_full(inv, e)
            return
        try:
            call = await self.gateway.calls.create(
                carrier=self.name, direction="inbound", from_number=caller, to_number=number["phone_number"],
                number=number, carrier_sid=req.call_id, status="ringing",
                metadata={"sip": {"call_id": req.call_id, "source": inv.source_ip, "request_uri": req.uri,
                                  "trunk": number.get("sip_trunk_name"),
                                  "user_agent": req.headers.get("User-Agent") or ""}})
        except CapacityError as e:
            rtp.close()
            # 503 when the gateway is full or draining, 486 when the number's channels are all in use
            # (RFC 3261 §21.4.24 / §21.5.4: either may carry Retry-After); the Warning says which limit it was
            inv.reject(e.sip_status, e.sip_reason, [("Retry-After", str(e.retry_after)),
                                                    ("Warning", f'399 gateway "{str(e)[:120]}"')])
            return
        except BaseException:
            rtp.close()
            raise
        if call.agent is None:
            rtp.close()
            inv.reject(480, "Temporarily Unavailable")
            await call.end(HangupSource.SYSTEM, "agent not found", status="failed")
            return
        try:
            await self._answer(inv, call, number, rtp)
        except Exception:
            rtp.close()                     # (a no-op when the leg closed it already)
            self.log.exception("inbound call setup failed", extra={"call_id": call.id})
            if not inv.finished:
                inv.reject(500, "Server Internal Error")
            await call.end(HangupSource.SYSTEM, "setup failed", status="failed")

    async def _open_rtp(self) -> Any:
        """A new RTP session of this process; every port in use is a CarrierError 503 (full: try again later or
        elsewhere), not a crash of the request."""
        try:
            return await self.live_rtp.open_session()
        except NoFreePort as e:
            raise CarrierError(str(e), 503, retry_after=RTP_FULL_RETRY_AFTER) from None

    async def _answer(self, inv: IncomingInvite, call: Call, number: dict[str, Any], rtp: Any) -> None:
        req = inv.request
        leg = SipLeg(self, call, number, rtp)
        try:
            answer, choice = answer_offer(req.body, self.advertised_ip, rtp.local_port,
                                          media_encryption=TrunkTarget.of(number).media_encryption)
        except (NoCommonCodec, SdpError) as e:
            leg.close()
            inv.reject(488, "Not Acceptable Here", [("Warning", f'305 gateway "{str(e)[:80]}"')])
            await call.end(HangupSource.SYSTEM, f"488 {e}"[:200], status="failed")
            return
        leg.sdp_session_id = answer.origin.session_id
        use_media(leg, choice)
        keys_in_clear(inv.transport, choice, call.log, call_id=call.id)
        if choice.srtp is not None:
            await call.record(extra={"srtp": choice.srtp.suite})
        # No 180 Ringing: the 200 below leaves in this same step of the event loop, so a 180 would reach the caller
        # microseconds before it and ring nobody; it was 5 % of a worker's CPU at 300 calls/s (py-spy), and one more
        # reply per call for Kamailio to relay. An INVITE slow to get here got the 100 Trying (RFC 3261 §17.2.1).
        if inv.cancelled.is_set():
            leg.close()
            await call.end(HangupSource.USER, "caller cancelled", status="canceled")
            return
        attaching: asyncio.Future[None] | None = None

        def media_up() -> None:
            # RFC 3264 §6: once our answer is sent the caller may send RTP at once, and its ACK can come much
            # later (a busy proxy or box): the call's bus takes the caller's audio from now on (synchronously, so
            # not one packet is played to nobody) and the engine starts without waiting for the ACK
            nonlocal attaching
            call.open_media(leg, CARRIER_RATE)
            rtp.attach(call)
            attaching = asyncio.ensure_future(call.attach(leg, CARRIER_RATE))

        try:
            session = await inv.accept(answer.to_bytes(), on_sent=media_up)
        except (RequestFailed, DialogError) as e:
            if attaching is not None:   # no ACK (the UA sent its BYE): the media ran since the 200, keep its counters
                await asyncio.gather(attaching, return_exceptions=True)
                await leg.finish()
            else:
                leg.close()
            await call.end(HangupSource.CARRIER, getattr(e, "reason", str(e)), status="failed")
            return
        leg.session = session
        trunk = TrunkTarget.of(number)
        session.creds = trunk.creds
        if trunk.tls is not None and not trunk.tls.verify:   # a self-signed test trunk: BYE over a new connection too
            session.tls = TlsPeer(None, verify=False)
        self._wire(leg, session)
        self.legs[call.id] = leg
        if attaching is not None:   # (always: the 200 went out)
            await attaching
        if session.ended.is_set():  # the BYE came right behind the ACK, before we listened for it
            await self._ended(leg, HangupSource.USER, session.end_reason or "BYE")
            return
        if call.ended.is_set():  # hung up while the engine was starting
            if not leg.closed:
                # ...before the ACK came (the engine failed, an API hangup): the leg had no confirmed dialog to end
                # and RFC 3261 §15 holds a callee's BYE until the ACK; it goes now, and the media stops
                reason = call.hangup.reason if call.hangup is not None else ""
                session.send_bye(reason_header(q850=16, text=reason or "Normal call clearing"))
                await leg.finish()
            return
        self.log.info("inbound call answered", extra={"call_id": call.id, "codec": choice.codec,
                                                      "sip_call_id": req.call_id})

    async def _on_replacing_invite(self, inv: IncomingInvite, replaced: SipSession) -> None:
        """An INVITE whose Replaces names the dialog of a live call (RFC 3891 §3): the far end moved its side of
        the call (its own attended transfer, a call pickup). After the trunk's own inbound policy, the new dialog
        takes over the call (same engine, same call log row), and the replaced dialog ends with BYE."""
        req = inv.request
        old = next((leg for leg in self.legs.values() if leg.session is replaced), None)
        if old is None or old.call.ended.is_set() or old.bridge is not None or old.consultation is not None:
            inv.reject(481, "Call/Transaction Does Not Exist", [("Warning", '399 gateway "that dialog carries no '
                                                                            'call that can be handed over"')])
            return
        call = old.call
        verdict = await self.auth.check(TrunkAuth.from_number(old.number), req, inv.source_ip)
        if not verdict.ok:      # RFC 3891 §3: only who may call this trunk may replace its dialog
            self._auth_refused(verdict, inv.source_ip, method="INVITE", trunk=old.number.get("sip_trunk_name"))
            inv.reject(verdict.status, verdict.reason, list(verdict.headers))
            return
        if not req.body:
            inv.reject(488, "Not Acceptable Here", [("Warning", '399 gateway "an SDP offer is required"')])
            return
        try:
            new = SipLeg(self, call, old.number, await self._open_rtp())
        except CarrierError as e:
            _reject_rtp_full(inv, e)
            return
        try:
            answer, choice = answer_offer(req.body, self.advertised_ip, new.rtp.local_port,
                                          media_encryption=TrunkTarget.of(old.number).media_encryption)
        except (NoCommonCodec, SdpError) as e:
            new.close()
            inv.reject(488, "Not Acceptable Here", [("Warning", f'305 gateway "{str(e)[:80]}"')])
            return
        new.sdp_session_id = answer.origin.session_id
        use_media(new, choice)
        keys_in_clear(inv.transport, choice, call.log, call_id=call.id)

        def media_up() -> None:
            # as on any INVITE (_on_invite): the new far end may send RTP as soon as it has our 200 (RFC 3264 §6)
            # and its ACK can come much later, so the call's media moves to the new session now
            if not call.ended.is_set() and not old.closed:
                old.rtp.detach()
                new.rtp.attach(call)

        try:
            session = await inv.accept(answer.to_bytes(), on_sent=media_up)
        except (RequestFailed, DialogError) as e:
            new.close()
            if not old.closed and not call.ended.is_set():
                old.rtp.attach(call)            # no ACK: the replaced dialog still carries the call
            call.log.info("replacing INVITE not completed: %s", getattr(e, "reason", e))
            return
        if call.ended.is_set() or old.closed:   # the call ended while we answered: end the new dialog too
            session.send_bye(reason_header(q850=16, text="call ended"))
            new.close()
            return
        new.session = session
        session.creds = old.session.creds if old.session is not None else None
        self._wire(new, session)
        call.leg = new
        self.legs[call.id] = new
        replaced.send_bye(reason_header(q850=16, text="replaced"))
        old.close()
        call.set_carrier_sid(req.call_id)
        await call.record(carrier_sid=req.call_id, extra={"replaced_sip_call_id": replaced.call_id})
        await call.emit("call:replaced", {"sip_call_id": req.call_id, "replaced_sip_call_id": replaced.call_id})
        self.log.info("dialog replaced", extra={"call_id": call.id, "sip_call_id": req.call_id})
        if session.ended.is_set():
            await self._ended(new, HangupSource.USER, session.end_reason or "BYE")

    def _wire(self, leg: SipLeg, session: SipSession) -> None:
        session.on_offer = leg.offer_answer
        session.on_bye = lambda bye: self._remote_bye(leg, bye)
        session.on_timer_expired = lambda: self._ended(leg, HangupSource.CARRIER, "408 Session timer expired")
        session.on_dtmf = lambda digit, ms: self._info_dtmf(leg, digit, ms)

    def _info_dtmf(self, leg: SipLeg, digit: str, ms: int) -> None:
        from gateway.frames import Dtmf
        leg.call.feed_event(Dtmf(digit, ms))

    async def _remote_bye(self, leg: SipLeg, bye: Any) -> None:
        reason = parse_reason(bye.headers.get("Reason")) or "BYE"
        if leg.bridge is not None:
            await leg.bridge.hangup_other(leg, reason)
        await self._ended(leg, HangupSource.USER, reason)

    async def _ended(self, leg: SipLeg, source: HangupSource, reason: str) -> None:
        await leg.finish()
        await leg.call.end(source, reason)

    # -- REGISTER from a trunk (a PBX or phone that registers to us) ---------------------------------------------
    async def _on_register(self, req: Any, txn: Any) -> None:
        """Accept a binding from a trunk that passes its own inbound policy; show it in the number's status.

        The AOR user is the trunk's `sip_username` or its number. Calls to the trunk still go to
        sip_host:sip_port; the binding tells the operator (and `test connection`) that the far end is alive.
        """
        user = uri_user(req.to.uri)
        e164 = inbound_number(user)
        number = next((n for n in await self._sip_trunks()
                       if user and ((n.get("config") or {}).get("sip_username") == user or n["phone_number"] == e164)),
                      None)
        source, source_port = txn.origin
        if number is None:
            self.live_ua.respond(txn, req, 404, "Not Found")
            return
        verdict = await self.auth.check(TrunkAuth.from_number(number), req, source)
        if not verdict.ok:
            self._auth_refused(verdict, source, method="REGISTER", trunk=number.get("sip_trunk_name"))
            self.live_ua.respond(txn, req, verdict.status, verdict.reason, headers=list(verdict.headers))
            return
        contacts = req.contacts
        exp_hdr = (req.headers.get("Expires") or "").strip()
        expires = int(exp_hdr) if exp_hdr.isdigit() else 3600
        if contacts and (contacts[0].params.get("expires") or "").isdigit():
            expires = int(contacts[0].params["expires"])
        expires = min(expires, 3600)
        binding: dict[str, Any] | None = None
        headers: list[tuple[str, str]] = []
        if expires and contacts:
            until = datetime.now(UTC) + timedelta(seconds=expires)
            binding = {"contact": contacts[0].uri, "source": f"{source}:{source_port}",
                       "expires_at": until.isoformat()}
            headers = [("Contact", f"<{contacts[0].uri}>;expires={expires}"), ("Expires", str(expires))]
        # shown by the API only: no cluster-wide cache drop for each refresh of the trunk's binding
        await self.gateway.store.patch_number_status(number["id"], {"inbound_registration": binding})
        self.live_ua.respond(txn, req, 200, "OK", headers=headers)

    # -- outbound ------------------------------------------------------------------------------------------------
    async def dispatch(self, call: Call, number: dict[str, Any], to_number: str) -> None:
        if self.ua is None:
            raise CarrierError("SIP is disabled on this gateway (enable_sip=false)", 503)
        try:
            target = TrunkTarget.of(number)
            uri = target.uri_for(to_number)
        except (DialFormatError, PresetError, KeyError) as e:
            raise CarrierError(f"cannot dial {to_number} on this trunk: {e}", 400) from None
        if target.transport == "tls" and not self.live_ua.transport.tls_port:
            call.log.warning("calling a TLS trunk without a TLS listener (--tls-cert/--tls-key): the trunk can "
                             "reach us back only over the connection we open", extra={"call_id": call.id})
        rtp = await self._open_rtp()
        leg = SipLeg(self, call, number, rtp)
        call.leg = leg  # so a hangup while ringing CANCELs the INVITE
        self.legs[call.id] = leg
        await call.record(call_status="initiated", extra={"sip_request_uri": uri})
        self._spawn(self._outbound(leg, target, uri, to_number), f"sip-out-{call.id}")

    def _early_media(self, leg: SipLeg, resp: SipResponse, state: dict[str, Any]) -> None:
        call = leg.call
        if resp.status in (180, 181, 182, 183) and not state.get("ringing"):
            state["ringing"] = True
            self._spawn(call.record(call_status="ringing"), "sip-ringing")
            self._spawn(call.emit("call:ringing", {"status": resp.status}), "sip-ringing-ev")
        if resp.body and (resp.content_type or "") == "application/sdp" and not state.get("early"):
            try:
                choice = parse_answer(resp.body, state["offer"], media_encryption=state["media_encryption"])
            except (NoCommonCodec, SdpError) as e:
                call.log.info("early media SDP ignored: %s", e)
                return
            state["early"] = True
            use_media(leg, choice, direction=False)
            detector = self._early_detector(call)
            if detector is not None:
                state["detector"] = detector
                leg.rtp.on_pcm = detector.feed
            call.log.info("early media", extra={"status": resp.status, "codec": choice.codec})

    @staticmethod
    def _early_detector(call: Call) -> Any:
        """An AMD detector fed with 183 early media when the agent enables AMD (the answer continues it)."""
        try:
            from gateway.amd import AmdDetector, amd_settings
            settings = amd_settings(call.agent)
            if not settings.enabled:
                return None
            # early_media: before the answer only a greeting counts (ringback is not a beep, silence means nothing)
            return AmdDetector(settings.params, CARRIER_RATE, early_media=True)
        except Exception as e:  # noqa: BLE001 - AMD is optional for the call to proceed
            call.log.info("no AMD on early media: %s", e)
            return None

    async def place(self, leg: SipLeg, target: TrunkTarget, uri: str, to_e164: str, *, ring_timeout: float,
                    state: dict[str, Any]) -> InviteResult:
        offer = make_offer(self.advertised_ip, leg.rtp.local_port, media_encryption=target.media_encryption)
        leg.sdp_session_id = offer.origin.session_id
        state["offer"] = offer
        state["media_encryption"] = target.media_encryption
        dests = [target.dest]
        if not target.route:   # through an outbound proxy the proxy locates the trunk
            try:
                dests = [t.dest for t in await self.live_ua.locator.locate(target.host, target.sip_port,
                                                                      target.transport)]
            except LocateError as e:
                return InviteResult(error=f"DNS: {e}")
        leg.invite = OutgoingInvite(
            self.live_ua, request_uri=uri, from_addr=target.from_addr(), to_addr=NameAddr(uri), sdp=offer.to_bytes(),
            dest=dests[0], alternates=dests[1:], creds=target.creds, route=target.route, tls=target.tls,
            on_provisional=lambda r: self._early_media(leg, r, state))
        return await leg.invite.run(ring_timeout)

    async def _outbound(self, leg: SipLeg, target: TrunkTarget, uri: str, to_number: str) -> None:
        call = leg.call
        state: dict[str, Any] = {}
        try:
            result = await self.place(leg, target, uri, to_number, ring_timeout=self.ring_timeout, state=state)
        except Exception as e:  # noqa: BLE001 - recorded as a failed call, never a leaked one
            self.log.exception("outbound INVITE failed", extra={"call_id": call.id})
            result = InviteResult(error=f"{type(e).__name__}: {e}")
        if result.session is None:
            await self._outbound_failed(leg, result)
            return
        session = result.session
        if call.ended.is_set():  # hung up while it rang, and the 2xx arrived anyway
            session.send_bye(reason_header(q850=16, text=call.hangup.reason if call.hangup else "hung up"))
            leg.close()
            return
        try:
            choice = parse_answer(session.remote_sdp or b"", state["offer"],
                                  media_encryption=target.media_encryption)
        except (NoCommonCodec, SdpError) as e:
            session.send_bye(reason_header(488, f"Not Acceptable Here: {e}"))
            leg.close()
            self.legs.pop(call.id, None)
            await call.end(HangupSource.SYSTEM, f"488 {e}"[:200], status="failed")
            return
        leg.session = session
        session.creds = target.creds
        self._wire(leg, session)
        use_media(leg, choice)
        keys_in_clear(target.transport, choice, call.log, call_id=call.id)
        if choice.srtp is not None:
            await call.record(extra={"srtp": choice.srtp.suite})
        leg.rtp.on_pcm = None
        call.set_carrier_sid(session.call_id)
        if state.get("early"):
            await call.record(extra={"early_media": {"packets": leg.rtp.received,
                                                     "amd_fed": "detector" in state}})
        try:
            from gateway.amd import maybe_start_amd
            maybe_start_amd(call, detector=state.get("detector"))
        except Exception:  # noqa: BLE001
            call.log.exception("AMD could not start")
        await call.attach(leg, CARRIER_RATE)
        leg.rtp.attach(call)
        self.log.info("outbound call answered", extra={"call_id": call.id, "codec": choice.codec})

    async def _outbound_failed(self, leg: SipLeg, result: InviteResult) -> None:
        call = leg.call
        leg.close()
        self.legs.pop(call.id, None)
        if call.ended.is_set():
            return
        if result.response is not None:
            status = outcome_for(result.response.status)
            reason = result.status_line
            if result.cancelled and call.hangup is not None:
                return
            if result.timed_out:
                status, reason = "no-answer", f"no answer within {int(self.ring_timeout)} s"
        elif result.timed_out:
            status, reason = "no-answer", result.error or "no answer"
        else:
            status, reason = "failed", result.error or "no response"
        source = HangupSource.CARRIER if status == "failed" else HangupSource.USER
        await call.record(extra={"sip_status": result.status_line})
        await call.end(source, reason, status=status)

    # -- transfer ------------------------------------------------------------------------------------------------
    async def transfer(self, leg: SipLeg, request: TransferRequest) -> None:
        """REFER to the first number; if the trunk refuses REFER (or the target fails), bridge new legs in order."""
        call = leg.call
        if leg.session is None:
            await call.transfer_finished(TransferResult(request.number, "failed: call not answered"))
            return
        targets = [request.number, *request.backup_numbers]
        target = TrunkTarget.of(leg.number)
        try:
            refer_to = target.uri_for(targets[0])
        except DialFormatError as e:
            await call.transfer_finished(TransferResult(targets[0], f"failed: {e}"))
            return
        await call.record(extra={"refer_to": refer_to})
        status, text = await leg.session.refer(refer_to, timeout=self.transfer_ring_timeout + 10)
        call.log.info("REFER outcome %s %s", status, text, extra={"target": targets[0]})
        if 200 <= status < 300:
            await call.transfer_finished(TransferResult(targets[0], "completed"))
            await call.record(extra={"transfer_method": "refer"})
            leg.session.send_bye(reason_header(q850=16, text="transferred"))
            await self._ended(leg, HangupSource.SYSTEM, f"transferred to {targets[0]}")
            return
        refer_refused = status in (400, 403, 405, 420, 489, 501, 603) and not leg.session.ended.is_set()
        remaining = targets if refer_refused else targets[1:]
        last = (targets[0], outcome_for(status) if status >= 300 else "failed")
        for number in remaining:
            if leg.session.ended.is_set() or call.ended.is_set():
                return
            outcome = await self._bridge_to(leg, target, number)
            if outcome == "completed":
                await call.transfer_finished(TransferResult(number, "completed"))
                return
            last = (number, outcome)
        await call.transfer_finished(TransferResult(last[0], last[1]))

    # -- attended transfer (carriers/sip_consult.py) ---------------------------------------------------------------
    async def consult(self, leg: SipLeg, request: ConsultRequest) -> None:
        """Hold the caller and dial the consultation call through the same trunk."""
        if leg.session is None or leg.session.ended.is_set() or leg.bridge is not None:
            raise CarrierError("the call has no SIP dialog of its own to transfer (not answered, or already "
                               "bridged)", 409)
        target = TrunkTarget.of(leg.number)
        try:
            uri = target.uri_for(request.number)
        except DialFormatError as e:
            raise CarrierError(f"cannot dial {request.number} on this trunk: {e}", 400, field="number") from None
        other = SipLeg(self, leg.call, leg.number, await self._open_rtp())
        leg.consultation = SipConsultation(self, leg, other, target, uri, request.number)
        leg.consultation.start()

    async def _bridge_to(self, leg: SipLeg, target: TrunkTarget, number: str) -> str:
        """A new outbound leg to `number` through the same trunk, bridged to `leg` by the gateway."""
        call, session = leg.call, leg.session
        if session is None:   # the caller's dialog is gone: nothing to bridge
            return "failed"
        try:
            uri = target.uri_for(number)
        except DialFormatError as e:
            return f"failed: {e}"
        try:
            rtp = await self._open_rtp()
        except CarrierError as e:
            return f"failed: {e}"
        other = SipLeg(self, call, leg.number, rtp)
        state: dict[str, Any] = {}
        result = await self.place(other, target, uri, number, ring_timeout=self.transfer_ring_timeout, state=state)
        if result.session is None:
            other.close()
            if result.response is not None:
                return outcome_for(result.response.status)
            return "no-answer" if result.timed_out else "failed"
        try:
            choice = parse_answer(result.session.remote_sdp or b"", state["offer"],
                                  media_encryption=target.media_encryption)
        except (NoCommonCodec, SdpError):
            result.session.send_bye(reason_header(488, "Not Acceptable Here"))
            other.close()
            return "failed"
        other.session = result.session
        other.session.creds = target.creds
        use_media(other, choice)
        bridge = MediaBridge(leg, other)
        leg.bridge = other.bridge = bridge
        self._wire(leg, session)
        other.session.on_offer = other.offer_answer
        other.session.on_bye = lambda bye: self._bridged_bye(other, bye)
        bridge.start()
        await call.record(extra={"transfer_method": "bridge", "bridged_sip_call_id": other.session.call_id})
        return "completed"

    async def _bridged_bye(self, other: SipLeg, bye: Any) -> None:
        """The transfer target hung up: the caller's leg ends too."""
        reason = parse_reason(bye.headers.get("Reason")) or "BYE"
        other.close()
        bridge = other.bridge
        if bridge is not None:
            await bridge.hangup_other(other, reason)
            await self._ended(bridge.a, HangupSource.USER, f"transfer target hung up: {reason}")
