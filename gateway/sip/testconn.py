"""`test connection` for a SIP trunk: can we find it, reach it, and do our credentials work?

Steps, each with a plain verdict and the SIP status line the carrier sent:

1. ``dns`` — the trunk host (and outbound proxy) resolve: ok / not found. A host name without a port is located
   like calls locate it (RFC 3263 NAPTR/SRV, gateway/sip/locate.py): the detail lists the targets in order.
2. ``tls`` (transport tls) — the TLS handshake and the trunk's certificate: ok (with the name it was checked
   against, issuer and expiry) / certificate expired / certificate name mismatch / certificate from an unknown
   CA / self-signed certificate / TLS handshake failed (gateway/sip/tls.py). A failed handshake ends the test.
3. ``options`` — an OPTIONS ping to where calls would go, with the round-trip time: ok (any SIP answer proves a
   SIP server is there) / timed out / unreachable. Like calls, it fails over to the next SRV target on a timeout
   or a 503; ``target`` names the one that answered and ``tried`` the ones that did not.
4. ``credentials`` — for registration trunks a REGISTER (then an un-REGISTER); otherwise an OPTIONS answered with
   our digest credentials when the trunk challenges it, else an INVITE to the trunk's own number that is
   CANCELled at its first 18x answer (nothing rings for long; a 2xx is ended at once): ok / credentials
   rejected (401/403 after our credentials) / not found (404/484) / timed out / unreachable.
   IP-authenticated trunks without credentials skip it.
5. ``srtp`` (media_encryption srtp / optional) — what the trunk answered to our SRTP offer, from the INVITE probe
   (run for this alone when step 4 did not send one; cancelled at the first answer with SDP): ok with the suite
   / plain RTP accepted (optional) / srtp refused (488, or an answer without usable keys) / skipped (no SDP
   answer came). Over udp/tcp the detail warns that the keys crossed in clear.

The report never contains a secret (the API scrubs it again anyway).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from . import digest
from .locate import LocateError, Target
from .message import NameAddr, SipRequest, SipResponse, new_call_id, new_tag, split_hostport
from .numbering import DialPlan, sip_uri
from .sdp import EncryptionMismatch, SdpError, SessionDescription, make_offer, parse_answer
from .transport import TlsPeer
from .ua import Credentials, InviteResult, OutgoingInvite, RequestFailed, UserAgent, reason_header

STEP_TIMEOUT = 8.0

OK, UNREACHABLE, TIMED_OUT, REJECTED, NOT_FOUND, SKIPPED, FAILED, SRTP_REFUSED = (
    "ok", "unreachable", "timed out", "credentials rejected", "not found", "skipped", "failed", "srtp refused")


def verdict_for(status: int) -> str:
    if status < 300:
        return OK
    if status in (401, 403, 407):
        return REJECTED
    if status in (404, 484, 604):
        return NOT_FOUND
    return FAILED


def _step(name: str, verdict: str, detail: str = "", status_line: str | None = None,
          ms: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"step": name, "verdict": verdict, "detail": detail}
    if status_line is not None:
        out["status_line"] = status_line
    if ms is not None:
        out["rtt_ms"] = round(ms, 1)
    return out


def _line(resp: SipResponse | None) -> str:
    return "" if resp is None else f"SIP/2.0 {resp.status} {resp.reason}".strip()


async def test_trunk(ua: UserAgent | None, fields: dict[str, Any], *, reachability_only: bool = False
                     ) -> dict[str, Any]:
    """Run every step for an import-shaped `fields` dict (preset already applied). `reachability_only`: DNS and
    the OPTIONS ping, no credentials step (the periodic health probe, gateway/health.py: it must not REGISTER
    beside a live registration or place test calls)."""
    if ua is None:
        from ..carrier import CarrierError
        raise CarrierError("SIP is disabled on this gateway: cannot test a trunk", 503)
    transport = (fields.get("transport") or "udp").lower()
    host = fields["sip_host"]
    port = int(fields.get("sip_port") or (5061 if transport == "tls" else 5060))
    dest = (host, port, transport)
    route: list[str] = []
    if fields.get("outbound_proxy"):
        ph, pp = split_hostport(fields["outbound_proxy"], 5060)
        dest = (ph, pp, transport)
        route = [f"<sip:{ph}:{pp};lr>"]
    steps: list[dict[str, Any]] = []
    tls = TlsPeer(dest[0], fields.get("tls_verify") is not False) if transport == "tls" else None

    # 1. DNS
    targets: list[Target] = []
    t0 = time.monotonic()
    try:
        if route:
            steps.append(_step("dns", OK, f"sip_host {host} → {', '.join(await ua.locator.addresses(host))}"))
            addrs = await ua.locator.addresses(dest[0])
            steps.append(_step("dns", OK, f"outbound_proxy {dest[0]} → {', '.join(addrs)}",
                               ms=(time.monotonic() - t0) * 1000))
            targets = [Target(addrs[0], dest[1], transport, dest[0], "outbound_proxy")]
        else:
            targets = await ua.locator.locate(host, int(fields["sip_port"]) if fields.get("sip_port") else None,
                                              transport)
            steps.append(_step("dns", OK, f"sip_host {host} → {'; '.join(t.describe() for t in targets)}",
                               ms=(time.monotonic() - t0) * 1000))
    except LocateError as e:
        steps.append(_step("dns", NOT_FOUND, str(e)))
        return _report(steps)

    # 2. OPTIONS ping
    creds = None
    if fields.get("sip_username") and fields.get("sip_password"):
        creds = Credentials(fields["sip_username"], fields["sip_password"], fields.get("auth_username") or None)
    ruri = sip_uri(fields.get("sip_username") or "ping", host, _uri_port(fields), transport=transport)
    call_id, tag = new_call_id(ua.host), new_tag()

    def options(cseq: int, auth: list[tuple[str, str]]) -> SipRequest:
        h = [("Via", ua.via(transport)), ("Max-Forwards", "70"), *[("Route", r) for r in route],
             ("From", f"<sip:gateway@{ua.host}>;tag={tag}"), ("To", f"<{ruri}>"), ("Call-ID", call_id),
             ("CSeq", f"{cseq} OPTIONS"), ("Contact", ua.contact(transport=transport)),
             ("Accept", "application/sdp"),
             ("User-Agent", ua.user_agent), *auth]
        return SipRequest("OPTIONS", ruri, h)

    tried: list[str] = []
    tls_failures: list[tuple[str, str]] = []      # (verdict, detail) of TLS handshakes that failed
    first: SipResponse | None = None
    timed_out = False
    for target in targets:
        t0 = time.monotonic()
        try:
            first = await asyncio.wait_for(ua.send(options(1, []), target.dest, tls=tls), STEP_TIMEOUT)
        except TimeoutError:
            timed_out = True
            tried.append(f"{target.describe()}: timed out")
            continue
        except RequestFailed as e:
            timed_out = e.timed_out
            tried.append(f"{target.describe()}: " + ("timed out" if timed_out else e.reason))
            if isinstance(e, RequestFailed) and e.tls_verdict:
                tls_failures.append((e.tls_verdict, f"{target.describe()}: {_tls_reason(e.reason)}"))
            continue
        if first.status == 503 and target is not targets[-1]:   # overloaded: calls would go on to the next one
            tried.append(f"{target.describe()}: {_line(first)}")
            first = None
            continue
        dest = target.dest
        break
    if first is None:
        if tls_failures:   # a certificate or handshake problem is the news, not "unreachable"
            verdict, detail = tls_failures[0]
            steps.append(_step("tls", verdict, "; ".join(d for _, d in tls_failures)))
            return _report(steps)
        steps.append(_step("options", TIMED_OUT if timed_out else UNREACHABLE,
                           "no SIP answer from " + "; ".join(tried)))
        return _report(steps)
    rtt = (time.monotonic() - t0) * 1000
    if tls is not None:
        steps.append(_tls_step(ua, tls, target))
    step = _step("options", OK, f"{target.describe()} answered", _line(first), rtt)
    step["target"] = target.describe()
    if tried:
        step["tried"] = tried
    steps.append(step)
    if reachability_only:
        return _report(steps)

    # 3. credentials
    if fields.get("register"):
        steps.append(await _register_probe(ua, fields, dest, route, creds))
    elif creds is None:
        steps.append(_step("credentials", SKIPPED, "no credentials: the trunk authenticates this gateway by IP"))
    elif first.status in (401, 407):
        try:
            name, value = digest.authorize(options(1, []), first, creds.auth_user, creds.password)
        except digest.DigestError as e:
            steps.append(_step("credentials", FAILED, f"unusable challenge: {e}", _line(first)))
            return _report(steps)
        try:
            resp = await asyncio.wait_for(ua.send(options(2, [(name, value)]), dest, tls=tls), STEP_TIMEOUT)
            steps.append(_step("credentials", verdict_for(resp.status), "authenticated OPTIONS", _line(resp)))
        except (TimeoutError, RequestFailed) as e:
            steps.append(_step("credentials", TIMED_OUT, f"authenticated OPTIONS not answered: {e}"))
    else:
        cred_step, srtp_step = await _invite_probe(ua, fields, dest, route, creds, tls)
        steps.append(cred_step)
        if srtp_step is not None:
            steps.append(srtp_step)
    if (fields.get("media_encryption") or "none") != "none" and not any(x["step"] == "srtp" for x in steps):
        _, srtp_step = await _invite_probe(ua, fields, dest, route, creds, tls)
        if srtp_step is not None:
            steps.append(srtp_step)
    return _report(steps)


async def _register_probe(ua: UserAgent, fields: dict[str, Any], dest: tuple[str, int, str], route: list[str],
                          creds: Credentials | None) -> dict[str, Any]:
    from .registration import Registration

    class _NoStore:
        async def patch_number_status(self, *_: Any) -> None:
            return None

    number = {"id": 0, "config": dict(fields), "secrets": {}}
    reg = Registration(ua, number, _NoStore(), expires=60)
    try:
        resp = await asyncio.wait_for(reg.register_once(60), STEP_TIMEOUT)
    except (TimeoutError, RequestFailed) as e:
        return _step("credentials", TIMED_OUT, f"REGISTER not answered: {e}")
    if resp.status < 300:
        try:
            await asyncio.wait_for(reg.register_once(0), STEP_TIMEOUT)
        except (TimeoutError, RequestFailed):
            pass
    return _step("credentials", verdict_for(resp.status), "REGISTER" + (" (then un-REGISTER)" if resp.status < 300
                                                                        else ""), _line(resp))


async def _invite_probe(ua: UserAgent, fields: dict[str, Any], dest: tuple[str, int, str], route: list[str],
                        creds: Credentials | None, tls: TlsPeer | None
                        ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """An INVITE to the trunk's own number, cancelled at its first provisional answer — or, when the trunk's media
    is encrypted, at the first answer carrying SDP (183 or 200), which says what became of our SRTP offer.
    Returns the credentials step and the srtp step (None for media_encryption none)."""
    mode = str(fields.get("media_encryption") or "none")
    plan = DialPlan.from_config(fields)
    number = fields.get("phone_number") or "+10000000000"
    host = fields["sip_host"]
    uri = sip_uri(plan.user_part(number), host, _uri_port(fields), transport=(fields.get("transport") or "udp"))
    caller = number[1:] if plan.strip_plus else number
    offer = make_offer(ua.host, 9, media_encryption=mode)
    probe = OutgoingInvite(ua, request_uri=uri, from_addr=NameAddr(sip_uri(caller, host)), to_addr=NameAddr(uri),
                           sdp=offer.to_bytes(), dest=dest, creds=creds, route=route, tls=tls,
                           headers=[("Subject", "connection test")])
    seen: list[SipResponse] = []
    answers: list[bytes] = []

    def provisional(resp: SipResponse) -> None:
        # a 100 Trying is hop-by-hop and may precede the 401/407: only a 18x proves the trunk took the call
        if resp.status > 100:
            seen.append(resp)
            if resp.body and (resp.content_type or "") == "application/sdp":
                answers.append(resp.body)
            if mode == "none" or answers:
                probe.cancel()

    probe.on_provisional = provisional
    result = await probe.run(ring_timeout=STEP_TIMEOUT)
    if result.session is not None:
        answers.append(result.session.remote_sdp or b"")
        await result.session.bye(reason_header(200, "connection test"))
    srtp = _srtp_step(offer, answers, result, mode, dest[2]) if mode != "none" else None
    if result.session is not None:
        return _step("credentials", OK, "INVITE probe answered (ended at once)", _line(result.response)), srtp
    resp = result.response
    if resp is None:
        if seen:
            return _step("credentials", OK, "INVITE probe accepted, then cancelled", _line(seen[-1])), srtp
        return _step("credentials", TIMED_OUT if result.timed_out else UNREACHABLE,
                     f"INVITE probe: {result.error}"), srtp
    if resp.status == 487 and seen:
        return _step("credentials", OK, "INVITE probe accepted, then cancelled", _line(seen[-1])), srtp
    return _step("credentials", verdict_for(resp.status), "INVITE probe (cancelled)", _line(resp)), srtp


def _srtp_step(offer: SessionDescription, answers: list[bytes], result: InviteResult, mode: str,
               transport: str) -> dict[str, Any]:
    """What the trunk made of our SRTP offer (RTP/SAVP for srtp, RTP/AVP + a=crypto for optional)."""
    proto = offer.media[0].proto
    clear = "" if transport == "tls" else (f"; warning: the keys travel in clear SIP over {transport}, so anyone "
                                           "reading the signalling can decrypt the media: use transport tls")
    if answers:
        try:
            choice = parse_answer(answers[-1], offer, media_encryption=mode)
        except EncryptionMismatch as e:
            return _step("srtp", SRTP_REFUSED, f"{proto} offer: {e}")
        except SdpError as e:
            return _step("srtp", FAILED, f"unusable SDP answer: {e}")
        if choice.srtp is not None:
            return _step("srtp", OK, f"{proto} offer accepted with {choice.srtp.suite}{clear}")
        return _step("srtp", OK, "the trunk answered plain RTP to our best-effort offer: calls fall back to RTP "
                                 "(media_encryption optional)")
    resp = result.response
    if resp is not None and resp.status in (488, 606):
        return _step("srtp", SRTP_REFUSED, f"the trunk refused our {proto} offer", _line(resp))
    return _step("srtp", SKIPPED, "no SDP answer before the probe ended: "
                                  + (_line(resp) if resp is not None else result.error))


def _uri_port(fields: dict[str, Any]) -> int | None:
    """The port for the trunk's URIs: as configured, except 5060 (a port in a URI stops the next hop's SRV)."""
    port = int(fields.get("sip_port") or 0)
    return port if port and port != 5060 else None


def _tls_reason(reason: str) -> str:
    """The TLS part of a transport error ("TransactionTransportError: TLS connect to …: certificate expired: …")."""
    return reason.split(": ", 1)[-1] if reason.startswith("TransactionTransportError") else reason


def _tls_step(ua: UserAgent, tls: TlsPeer, target: Target) -> dict[str, Any]:
    """The certificate the trunk presented, as checked (or, with tls_verify false, not checked)."""
    conn = ua.transport.connection("tls", (target.address, target.port))
    cert = conn.transport.get_extra_info("peercert") if conn is not None and conn.transport is not None else None
    version = conn.transport.get_extra_info("ssl_object").version() if conn is not None and conn.transport else ""
    # without a listener of ours the trunk can reach us only over connections we opened: say so
    listener = "" if getattr(ua.transport, "tls_port", None) else (
        "; warning: this gateway has no TLS listener (--tls-cert/--tls-key), so the trunk can send requests "
        "(its BYE, re-INVITE) only over the connection we opened")
    if not tls.verify:
        return _step("tls", OK, f"{version} to {target.describe()}; certificate NOT checked (tls_verify false: "
                                f"encrypted, not authenticated){listener}")
    subject = dict(x[0] for x in (cert or {}).get("subject", ()) if x)
    issuer = dict(x[0] for x in (cert or {}).get("issuer", ()) if x)
    return _step("tls", OK, f"{version}; certificate valid for {tls.name} (subject {subject.get('commonName', '?')}, "
                            f"issuer {issuer.get('commonName', '?')}, expires {(cert or {}).get('notAfter', '?')})"
                            f"{listener}")


def _report(steps: list[dict[str, Any]]) -> dict[str, Any]:
    bad = next((s for s in steps if s["verdict"] not in (OK, SKIPPED)), None)
    return {"ok": bad is None, "verdict": OK if bad is None else bad["verdict"], "steps": steps}
