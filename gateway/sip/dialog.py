"""SIP dialogs (RFC 3261 §12): the state two user agents share for one call, and requests built inside it.

A dialog is identified by Call-ID + local tag + remote tag. It remembers the route set (Record-Route, reversed
on the UAC side), the remote target (the peer's Contact, refreshed by re-INVITE/UPDATE), our CSeq counter and
the highest CSeq seen from the peer (out-of-order requests get 500, §12.2.2). In-dialog requests use loose
routing when the first route has `;lr` and strict routing otherwise (§12.2.1.1, §16.12.1.2).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .message import NameAddr, SipRequest, SipResponse, SipUri, Via, new_branch

#: methods whose request (and 2xx answer) refreshes the remote target (§12.2, RFC 3311, RFC 3515)
TARGET_REFRESH = ("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER")


class DialogError(ValueError):
    pass


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local: NameAddr                # our From (requests we send)
    remote: NameAddr               # their address (To of requests we send), without tag
    remote_target: str             # peer Contact URI
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 0
    remote_cseq: int | None = None
    transport: str = "udp"
    #: where the peer's messages really come from (NAT): used when the target cannot be reached directly
    source: tuple[str, int] | None = None
    state: str = "confirmed"       # early | confirmed | terminated

    @property
    def id(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    # -- creation -----------------------------------------------------------------------------------------------
    @classmethod
    def as_uas(cls, invite: SipRequest, local_tag: str, source: tuple[str, int] | None = None,
               transport: str = "udp") -> Dialog:
        """Dialog for an INVITE we answer: route set = Record-Route in order, target = their Contact."""
        contacts = invite.contacts
        if not contacts:
            raise DialogError("INVITE without Contact")
        return cls(call_id=invite.call_id, local_tag=local_tag, remote_tag=invite.from_tag or "",
                   local=NameAddr(invite.to.uri, invite.to.display), remote=NameAddr(invite.from_.uri,
                                                                                    invite.from_.display),
                   remote_target=contacts[0].uri, route_set=list(invite.headers.getlist("Record-Route")),
                   local_cseq=random.randint(1, 2 ** 16), remote_cseq=invite.cseq[0], transport=transport,
                   source=source)

    @classmethod
    def as_uac(cls, request: SipRequest, response: SipResponse, source: tuple[str, int] | None = None,
               transport: str = "udp") -> Dialog:
        """Dialog from our INVITE (or SUBSCRIBE/REFER) and the peer's 1xx-with-tag / 2xx answer."""
        contacts = response.contacts
        if not contacts:
            raise DialogError(f"{response.status} response without Contact")
        return cls(call_id=request.call_id, local_tag=request.from_tag or "", remote_tag=response.to_tag or "",
                   local=NameAddr(request.from_.uri, request.from_.display),
                   remote=NameAddr(request.to.uri, request.to.display), remote_target=contacts[0].uri,
                   route_set=list(reversed(response.headers.getlist("Record-Route"))),
                   local_cseq=request.cseq[0], transport=transport, source=source,
                   state="confirmed" if 200 <= response.status < 300 else "early")

    def confirm(self, response: SipResponse) -> None:
        """An early dialog got its 2xx: the route set and target are taken from it (§13.2.2.4)."""
        self.route_set = list(reversed(response.headers.getlist("Record-Route")))
        if response.contacts:
            self.remote_target = response.contacts[0].uri
        self.state = "confirmed"

    # -- requests we send ---------------------------------------------------------------------------------------
    def next_cseq(self) -> int:
        self.local_cseq += 1
        return self.local_cseq

    def new_request(self, method: str, via: tuple[str, int], *, cseq: int | None = None,
                    headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                    content_type: str | None = None, branch: str | None = None) -> SipRequest:
        """A request inside this dialog (ACK and CANCEL pass the INVITE's `cseq`; others get the next one)."""
        if cseq is None:
            cseq = self.next_cseq()
        uri, routes = self._request_uri_and_routes()
        h: list[tuple[str, str]] = [
            ("Via", str(Via(self.transport.upper(), via[0], via[1], {"branch": branch or new_branch(),
                                                                     "rport": None}))),
            ("Max-Forwards", "70"),
        ]
        h += [("Route", r) for r in routes]
        h += [("From", str(self.local.with_tag(self.local_tag))),
              ("To", str(self.remote.with_tag(self.remote_tag) if self.remote_tag else self.remote)),
              ("Call-ID", self.call_id), ("CSeq", f"{cseq} {method}")]
        h += list(headers or [])
        if body and content_type:
            h.append(("Content-Type", content_type))
        h.append(("Content-Length", str(len(body))))
        return SipRequest(method, uri, h, body)

    def _request_uri_and_routes(self) -> tuple[str, list[str]]:
        if not self.route_set:
            return self.remote_target, []
        first = NameAddr.parse(self.route_set[0])
        if "lr" in SipUri.parse(first.uri).params:
            return self.remote_target, list(self.route_set)
        # strict router: its URI becomes the Request-URI, the remote target goes last in Route
        return first.uri, list(self.route_set[1:]) + [f"<{self.remote_target}>"]

    def next_hop_uri(self) -> str:
        """The URI the next request goes to first (§8.1.2): the first route, else the remote target."""
        return NameAddr.parse(self.route_set[0]).uri if self.route_set else self.remote_target

    def next_hop(self) -> tuple[str, int, str]:
        """(host, port, transport) of the first hop: the first route, else the remote target (§8.1.2)."""
        uri = NameAddr.parse(self.route_set[0]).uri if self.route_set else self.remote_target
        u = SipUri.parse(uri)
        transport = str(u.params.get("transport") or self.transport).lower()
        port = u.port or (5061 if u.scheme == "sips" or transport == "tls" else 5060)
        return u.host.strip("[]"), port, transport

    # -- requests we receive ------------------------------------------------------------------------------------
    def accept_request(self, request: SipRequest, source: tuple[str, int] | None = None) -> bool:
        """Check and record the CSeq of an in-dialog request; False means answer 500 (§12.2.2)."""
        cseq, method = request.cseq
        if method not in ("ACK", "CANCEL"):
            if self.remote_cseq is not None and cseq <= self.remote_cseq:
                return False
            self.remote_cseq = cseq
        if method in TARGET_REFRESH and request.contacts:
            self.remote_target = request.contacts[0].uri
        if source is not None:
            self.source = source
        return True

    def matches(self, msg: SipRequest | SipResponse) -> bool:
        return msg.call_id == self.call_id


def dialog_id_for_request(request: SipRequest) -> tuple[str, str, str]:
    """The id of the dialog an incoming request belongs to, from our side (To tag is ours)."""
    return (request.call_id, request.to_tag or "", request.from_tag or "")
