"""REGISTER to registration-based trunks (RFC 3261 §10): keep the binding alive and show its state.

One `Registration` per imported number with `register=true`: the first REGISTER goes out at once, digest
challenges are answered (with the separate authorization id when the provider has one), the binding is
refreshed before it expires (half-way for short grants, one minute early for long ones), 423 Interval Too Brief
is honoured, and failures are retried with a capped exponential back-off. Over TCP/TLS the binding's connection is
kept open with CRLF keep-alives between refreshes (RFC 5626 §3.5.1), since the trunk sends our calls down it. The
state — registered / registering / failing, the last SIP status line, when the binding expires — is written to
the phone number's `status` column so `GET /api/v1/phone_number/{id}` shows it.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from .locate import LocateError, Target
from .message import NameAddr, SipRequest, SipResponse, SipUri, new_call_id, new_tag, split_hostport
from .transport import KEEPALIVE_INTERVAL, TlsPeer
from .ua import Credentials, RequestFailed, UserAgent

log = logging.getLogger("gateway.sip.registration")

DEFAULT_EXPIRES = 3600


def refresh_in(granted: int) -> float:
    """Seconds until the next REGISTER: half-way for short bindings, 60 s before expiry for long ones."""
    return granted / 2 if granted < 240 else granted - 60


def _now() -> datetime:
    return datetime.now(UTC)


class Registration:
    def __init__(self, ua: UserAgent, number: dict[str, Any], store: Any, *, expires: int = DEFAULT_EXPIRES,
                 retry: tuple[float, float] = (5.0, 300.0)) -> None:
        cfg = {**(number.get("config") or {}), **(number.get("secrets") or {})}
        self.ua = ua
        self.store = store
        self.number_id = int(number["id"])
        self.status: dict[str, Any] = dict(number.get("status") or {})
        self.transport = (cfg.get("transport") or "udp").lower()
        self.host = cfg["sip_host"]
        #: as configured; without one a host name is located through NAPTR/SRV like calls (RFC 3263)
        self.explicit_port = int(cfg["sip_port"]) if cfg.get("sip_port") else None
        self.port = self.explicit_port or (5061 if self.transport == "tls" else 5060)
        self.username = cfg.get("sip_username") or ""
        self.creds = Credentials(self.username, cfg.get("sip_password") or "", cfg.get("auth_username") or None) \
            if self.username else None
        self.route: list[str] = []
        self.dest = (self.host, self.port, self.transport)
        if cfg.get("outbound_proxy"):
            ph, pp = split_hostport(cfg["outbound_proxy"], 5060)
            self.dest = (ph, pp, self.transport)
            self.route = [f"<sip:{ph}:{pp};lr>"]
        self.tls = TlsPeer(self.dest[0], cfg.get("tls_verify") is not False) if self.transport == "tls" else None
        self.target = ""   # the server that answered the last REGISTER (host:port/transport via …)
        #: that server's address while it keeps answering: refreshes go there first (`_send_located`)
        self._answered: tuple[str, int, str] | None = None
        #: TCP/TLS: the connection the binding lives on, pinged between refreshes (RFC 5626 §3.5.1)
        self.flow: tuple[str, tuple[str, int]] | None = None
        self.keepalive = KEEPALIVE_INTERVAL
        self.expires = expires
        self.retry = retry
        self.call_id = new_call_id(ua.host)
        self.tag = new_tag()
        self.cseq = 0
        self.registered = False
        self.granted: int | None = None
        self.refreshes = 0
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()   # set on every state change (tests await it)

    @property
    def aor(self) -> str:
        port = "" if self.explicit_port in (None, 5060) else f":{self.port}"
        return f"sip:{self.username}@{self.host}{port}"

    @property
    def registrar_uri(self) -> str:
        port = "" if self.explicit_port in (None, 5060) else f":{self.port}"
        t = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"sip:{self.host}{port}{t}"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"sip-register-{self.number_id}")

    async def stop(self, unregister: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass
        if unregister and self.registered:
            try:
                await asyncio.wait_for(self.register_once(0), 5)
            except (TimeoutError, RequestFailed) as e:
                log.info("un-REGISTER not confirmed: %s", e)
            self.registered = False

    async def _run(self) -> None:
        delay = self.retry[0]
        while True:
            await self._set_state("registering")
            resp: SipResponse | None = None
            try:
                resp = await self.register_once(self.expires)
                line = f"{resp.status} {resp.reason}".strip()
            except RequestFailed as e:
                line = "timed out" if e.timed_out else e.reason
            if resp is not None and 200 <= resp.status < 300:
                granted = self._granted(resp)
                self.registered = True
                self.granted = granted
                await self._set_state("registered", line, expires_in=granted)
                delay = self.retry[0]
                self.refreshes += 1
                await self._hold(refresh_in(granted))
                continue
            self.registered = False
            await self._set_state("failing", line)
            log.warning("REGISTER failed: %s", line, extra={"number_id": self.number_id, "registrar": self.host})
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry[1])

    @property
    def contact(self) -> str:
        """The Contact this process registers (its own SIP address)."""
        return self.ua.contact(self.username or "gateway", self.transport)

    async def register_once(self, expires: int, contact: str | None = None) -> SipResponse:
        """One REGISTER (with digest answers and one 423 retry); returns the final response. `contact`: another
        binding of this AOR than ours (with `expires` 0: removing a crashed registrant's binding)."""
        contact = contact or self.contact

        def build(cseq: int, auth: list[tuple[str, str]]) -> SipRequest:
            h = [("Via", self.ua.via(self.transport)), ("Max-Forwards", "70")]
            h += [("Route", r) for r in self.route]
            h += [("From", str(NameAddr(self.aor).with_tag(self.tag))), ("To", f"<{self.aor}>"),
                  ("Call-ID", self.call_id), ("CSeq", f"{cseq} REGISTER"), ("Contact", contact),
                  ("Expires", str(expires)), ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, REFER, NOTIFY"),
                  ("User-Agent", self.ua.user_agent), *auth]
            return SipRequest("REGISTER", self.registrar_uri, h)

        for _ in range(2):
            req, resp = await self._send_located(build)
            if resp.status == 423 and expires:
                min_exp = resp.headers.get("Min-Expires")
                if min_exp and min_exp.strip().isdigit():
                    expires = int(min_exp)
                    continue
            return resp
        return resp

    async def _send_located(self, build: Callable[[int, list[tuple[str, str]]], SipRequest]
                            ) -> tuple[SipRequest, SipResponse]:
        """Send to the registrar located like a trunk's calls (RFC 3263: NAPTR/SRV for a name without a port,
        through the outbound proxy when there is one), failing over to the next server on no answer or 503.

        The server that answered the last REGISTER is tried first while DNS still lists it. RFC 3263 §4.3 makes
        a client go on to the next server when one times out (a timeout is a 408, RFC 3261 §8.1.3.1), but a
        refresh that started over from the top each time would wait out Timer F (64·T1 = 32 s) on a dead primary
        before every refresh: with a short grant (refresh half-way, so any grant under 64 s) the binding would
        lapse before each refresh got through, and incoming calls fail meanwhile. Once that server stops
        answering, the next REGISTER goes back to DNS order."""
        if self.route:
            targets = [Target(self.dest[0], self.dest[1], self.transport, self.dest[0], "outbound_proxy")]
        else:
            try:
                targets = await self.ua.locator.locate(self.host, self.explicit_port, self.transport)
            except LocateError as e:
                raise RequestFailed(f"DNS: {e}") from None
        targets = sorted(targets, key=lambda t: t.dest != self._answered)   # stable: the rest keep DNS order
        self._answered = None
        failure: RequestFailed | None = None
        for i, target in enumerate(targets):
            last = i == len(targets) - 1
            try:
                req, resp = await self.ua.send_authenticated(build, target.dest, self.creds, cseq=self.cseq + 1,
                                                             on_request=self._track, tls=self.tls)
            except RequestFailed as e:
                failure = e
                log.info("REGISTER to %s failed: %s", target.describe(), e.reason)
                continue
            if resp.status == 503 and not last:
                continue
            self.target = target.describe()
            self._answered = target.dest if resp.status != 503 else None
            if self.transport != "udp":
                self.flow = (self.transport, await self.ua.resolve(target.dest))
            return req, resp
        assert failure is not None
        raise failure

    async def _hold(self, seconds: float) -> None:
        """Wait for the next refresh. Over TCP/TLS the trunk sends our calls down the registration's connection,
        so it is pinged meanwhile (CRLF keep-alive, RFC 5626 §3.5.1) and never looks idle to the transport's
        reaper or to a NAT on the way."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(left, self.keepalive))
            if self.flow is not None and end - loop.time() > 0:
                self.ua.transport.ping(*self.flow)

    def _track(self, req: SipRequest) -> None:
        self.cseq = req.cseq[0]

    def _granted(self, resp: SipResponse) -> int:
        ours = SipUri.parse(self.contact.strip("<>"))
        for c in resp.contacts:
            try:
                u = c.parsed_uri
            except Exception:  # noqa: BLE001 - a contact we cannot parse is not ours
                continue
            if (u.host, u.port, u.user) == (ours.host, ours.port, ours.user):
                exp = c.params.get("expires")
                if exp and exp.isdigit():
                    return max(1, int(exp))
        exp = resp.headers.get("Expires")
        if exp and exp.strip().isdigit():
            return max(1, int(exp.strip()))
        return self.expires

    async def _set_state(self, state: str, line: str | None = None, expires_in: int | None = None) -> None:
        """Show the binding's state in the number's `status`. A refresh of a live binding is not shown as
        `registering` (the binding stays valid meanwhile): one status write per refresh, and it tells no other
        process of the cluster anything (`Store.patch_number_status`)."""
        now = _now()
        if state == "registering" and self.registered:
            return
        patch: dict[str, Any] = {"registration": state, "updated_at": now.isoformat()}
        if line is not None:
            patch["sip_status"] = line
        if state == "registered" and expires_in is not None:
            patch["registered_until"] = (now + timedelta(seconds=expires_in)).isoformat()
            patch["contact"] = self.contact     # a registrant that takes the trunk over removes it if we crash
        elif state == "failing":
            patch["registered_until"] = None
        self.status.update(patch)
        try:
            await self.store.patch_number_status(self.number_id, patch)
        except Exception as e:  # noqa: BLE001 - the number may just have been deleted
            log.info("registration status not stored: %s", e)
        self.changed.set()
        self.changed = asyncio.Event()
