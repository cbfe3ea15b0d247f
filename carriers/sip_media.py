"""Applying a negotiated SDP to a SIP leg's RTP session (shared by calls, bridged transfer legs and attended
transfers' consultation legs)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.rtp.srtp import SrtpContext
from gateway.sip.sdp import MediaChoice

if TYPE_CHECKING:
    from .sip import SipLeg


def use_media(leg: SipLeg, choice: MediaChoice, direction: bool = True) -> None:
    """Apply a negotiated SDP to a leg's RTP session: where to send, codec, payload types, SRTP keys (unchanged
    keys keep the running SRTP context) and, unless it is early media, our direction."""
    rtp = leg.rtp
    rtp.configure(choice.remote_addr, choice.codec, choice.payload_type, choice.dtmf_payload_type,
                  rtcp_mux=choice.rtcp_mux, rtcp_addr=choice.rtcp_addr)
    if choice.srtp != leg.srtp_keys:
        keys = leg.srtp_keys = choice.srtp
        rtp.set_srtp(SrtpContext(keys.local, keys.remote) if keys is not None else None)
    if direction:
        rtp.set_direction(choice.direction)


def keys_in_clear(transport: str, choice: MediaChoice, log_: Any, **extra: Any) -> None:
    """SDES puts the SRTP keys in the SDP: over UDP or TCP anyone who reads the signalling can decrypt the media,
    so that is said each time it happens (docs/sip-trunks.md, "TLS and SRTP")."""
    if choice.srtp is not None and transport != "tls":
        log_.warning("SRTP keys were exchanged over unencrypted SIP (transport %s): whoever can read the "
                     "signalling can decrypt this call's media; use transport tls", transport, extra=extra)
