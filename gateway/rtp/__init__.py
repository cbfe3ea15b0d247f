"""Plain RTP (RFC 3550) for SIP calls: G.711 media, RFC 4733 DTMF, a jitter buffer and ONE shared 20 ms clock.

One clock drives every session's send and play-out (measured: a sleeping task per call collapses near 1000 legs
on one core; one timer callback for all sessions, on uvloop, keeps 1000 legs under half a core).
"""
from .engine import NoFreePort, RtpEngine
from .session import RtpSession

__all__ = ["NoFreePort", "RtpEngine", "RtpSession"]
