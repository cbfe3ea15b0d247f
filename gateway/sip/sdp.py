"""SDP (RFC 4566/8866) parse/serialize and offer/answer (RFC 3264) for G.711 + telephone-event (RFC 4733).

API::

    SessionDescription.parse(bytes | str) -> SessionDescription    (raises SdpError)
        .origin (Origin) .name .connection (str | None) .media: list[MediaDescription] .attributes
        .to_bytes() / bytes(sd) / str(sd)
    MediaDescription: .media .port .proto .formats (list[str]) .connection .attributes [(name, value|None)]
        .rtpmap -> {pt: (encoding, clock_rate, channels)} (static PTs 0/8/13/18/9 filled in)
        .fmtp -> {pt: str}  .ptime  .direction ("sendrecv" default)
    make_offer(ip, port, codecs=("PCMU", "PCMA"), dtmf=True, ptime=20, direction="sendrecv", *,
               session_id=None, version=1, dtmf_payload_type=101, media_encryption="none") -> SessionDescription
    answer_offer(offer, ip, port, supported=("PCMU", "PCMA"), *, direction="sendrecv", session_id=None,
                 version=1, ptime=20, media_encryption="none", keys=None) -> (answer: SessionDescription, MediaChoice)
        raises NoCommonCodec (send 488 Not Acceptable Here) when no audio stream has a codec we support.
    parse_answer(answer, offer=None, supported=("PCMU", "PCMA"), *, media_encryption="none") -> MediaChoice
        (our offer, their answer)
    MediaChoice(codec, payload_type, dtmf_payload_type, remote_addr, direction, ptime, remote_direction, srtp)
        .direction is OUR direction for RtpSession.set_direction(); .on_hold is True when the peer put the call
        on hold (a=sendonly / a=inactive / c=0.0.0.0, RFC 3264 §8.4).
    answer_direction(offer_direction, wanted="sendrecv") -> str   (RFC 3264 §6.1 table)

SRTP (RFC 4568 SDES, gateway/rtp/srtp.py) per trunk `media_encryption`: "none" answers RTP/AVP only; "srtp"
offers RTP/SAVP with a=crypto and accepts nothing else; "optional" offers RTP/AVP with a=crypto ("best-effort
SRTP": RFC 4568 defines a=crypto for RTP/SAVP, Asterisk, FreeSWITCH and many SBCs also read it on RTP/AVP) and
accepts a plain or a keyed answer, and answers RTP/SAVP offers with SRTP and RTP/AVP offers with or without keys
as offered. `MediaChoice.srtp` then holds both keys. An offer or answer that does not fit raises
`EncryptionMismatch` (a NoCommonCodec: 488) naming why.

Not supported (answered with port 0 for that stream, 488 if nothing is left): DTLS-SRTP, video, codecs other than
PCMU/PCMA, telephone-event at a rate other than 8000, ICE.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ..rtp.srtp import CryptoAttribute, choose

__all__ = [
    "SdpError", "NoCommonCodec", "EncryptionMismatch", "SrtpKeys", "Origin", "MediaDescription",
    "SessionDescription", "MediaChoice",
    "make_offer", "answer_offer", "parse_answer", "answer_direction", "STATIC_PAYLOADS",
]

STATIC_PAYLOADS = {0: ("PCMU", 8000, 1), 8: ("PCMA", 8000, 1), 9: ("G722", 8000, 1), 13: ("CN", 8000, 1),
                   18: ("G729", 8000, 1), 3: ("GSM", 8000, 1), 4: ("G723", 8000, 1)}
_CODEC_PT = {"PCMU": 0, "PCMA": 8}
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class SdpError(ValueError):
    pass


class NoCommonCodec(SdpError):
    """No acceptable audio codec in the offer: answer 488 Not Acceptable Here (RFC 3261 §13.3.1.3)."""


class EncryptionMismatch(NoCommonCodec):
    """The offer or answer does not meet the trunk's media_encryption (plain RTP where SRTP is required, SRTP
    where none is allowed, no usable a=crypto): 488 as well."""


MEDIA_ENCRYPTION = ("none", "srtp", "optional")
SAVP = ("RTP/SAVP", "RTP/SAVPF")
AVP = ("RTP/AVP", "RTP/AVPF")


@dataclass(frozen=True)
class SrtpKeys:
    """The negotiated SDES keys: ours protects what we send, theirs what we receive."""

    local: CryptoAttribute
    remote: CryptoAttribute

    @property
    def suite(self) -> str:
        return self.local.suite


@dataclass
class Origin:
    username: str = "-"
    session_id: str = "0"
    version: int = 0
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"

    def __str__(self) -> str:
        return (f"{self.username} {self.session_id} {self.version} {self.nettype} {self.addrtype} "
                f"{self.address}")


def _conn_addr(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"unsupported c= line {value!r}")
    return parts[2].split("/")[0]  # drop multicast TTL / count


def _conn_line(addr: str) -> str:
    return f"IN {'IP6' if ':' in addr else 'IP4'} {addr}"


@dataclass
class MediaDescription:
    media: str
    port: int
    proto: str
    formats: list[str]
    num_ports: int | None = None
    connection: str | None = None
    bandwidth: list[str] = field(default_factory=list)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)

    def attr(self, name: str) -> str | None:
        for k, v in self.attributes:
            if k == name:
                return v if v is not None else ""
        return None

    def attrs(self, name: str) -> list[str]:
        return [v or "" for k, v in self.attributes if k == name]

    @property
    def rtpmap(self) -> dict[int, tuple[str, int, int]]:
        out: dict[int, tuple[str, int, int]] = {}
        for f in self.formats:
            if f.isdigit() and int(f) in STATIC_PAYLOADS:
                out[int(f)] = STATIC_PAYLOADS[int(f)]
        for v in self.attrs("rtpmap"):
            pt, _, enc = v.partition(" ")
            bits = enc.strip().split("/")
            if not pt.isdigit() or len(bits) < 2 or not bits[1].isdigit():
                continue  # tolerate a broken rtpmap line: that payload just is not usable
            out[int(pt)] = (bits[0], int(bits[1]), int(bits[2]) if len(bits) > 2 and bits[2].isdigit() else 1)
        return out

    @property
    def fmtp(self) -> dict[int, str]:
        out = {}
        for v in self.attrs("fmtp"):
            pt, _, params = v.partition(" ")
            if pt.isdigit():
                out[int(pt)] = params.strip()
        return out

    @property
    def ptime(self) -> int | None:
        v = self.attr("ptime")
        try:
            return int(float(v)) if v else None
        except ValueError:
            return None

    @property
    def direction(self) -> str:
        for k, _ in self.attributes:
            if k in DIRECTIONS:
                return k
        return ""  # unset at media level: the session-level value (or sendrecv) applies

    def lines(self) -> list[str]:
        ports = f"{self.port}/{self.num_ports}" if self.num_ports else str(self.port)
        out = [f"m={self.media} {ports} {self.proto} {' '.join(self.formats)}"]
        if self.connection:
            out.append(f"c={_conn_line(self.connection)}")
        out += [f"b={b}" for b in self.bandwidth]
        out += [f"a={k}" if v is None else f"a={k}:{v}" for k, v in self.attributes]
        return out


@dataclass
class SessionDescription:
    origin: Origin = field(default_factory=Origin)
    name: str = "-"
    connection: str | None = None
    timing: str = "0 0"
    bandwidth: list[str] = field(default_factory=list)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    version: int = 0

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else data
        sd = cls()
        cur: MediaDescription | None = None
        seen_v = False
        for raw in text.replace("\r\n", "\n").split("\n"):
            line = raw.strip()
            if not line:
                continue
            if len(line) < 2 or line[1] != "=":
                raise SdpError(f"malformed SDP line {line[:40]!r}")
            t, v = line[0], line[2:]
            if t == "v":
                if v.strip() != "0":
                    raise SdpError(f"unsupported SDP version {v!r}")
                seen_v = True
            elif t == "o":
                p = v.split()
                if len(p) != 6:
                    raise SdpError(f"malformed o= line {v!r}")
                try:
                    ver = int(p[2])
                except ValueError:
                    raise SdpError(f"malformed o= version {p[2]!r}") from None
                sd.origin = Origin(p[0], p[1], ver, p[3], p[4], p[5])
            elif t == "s":
                sd.name = v
            elif t == "t" and cur is None:
                sd.timing = v
            elif t == "c":
                addr = _conn_addr(v)
                if cur is None:
                    sd.connection = addr
                else:
                    cur.connection = addr
            elif t == "b":
                (sd.bandwidth if cur is None else cur.bandwidth).append(v)
            elif t == "m":
                p = v.split()
                if len(p) < 3:
                    raise SdpError(f"malformed m= line {v!r}")
                port_s, _, n = p[1].partition("/")
                if not port_s.isdigit() or int(port_s) > 65535:
                    raise SdpError(f"invalid media port {p[1]!r}")
                cur = MediaDescription(p[0], int(port_s), p[2], p[3:], int(n) if n.isdigit() else None)
                sd.media.append(cur)
            elif t == "a":
                k, sep, val = v.partition(":")
                (sd.attributes if cur is None else cur.attributes).append((k, val if sep else None))
            # i=, u=, e=, p=, z=, k=, r= lines are accepted and not kept
        if not seen_v:
            raise SdpError("SDP without v= line")
        return sd

    @property
    def session_direction(self) -> str:
        for k, _ in self.attributes:
            if k in DIRECTIONS:
                return k
        return "sendrecv"

    def media_direction(self, m: MediaDescription) -> str:
        return m.direction or self.session_direction

    def media_address(self, m: MediaDescription) -> str | None:
        return m.connection or self.connection

    def lines(self) -> list[str]:
        out = [f"v={self.version}", f"o={self.origin}", f"s={self.name or '-'}"]
        if self.connection:
            out.append(f"c={_conn_line(self.connection)}")
        out += [f"b={b}" for b in self.bandwidth]
        out.append(f"t={self.timing}")
        out += [f"a={k}" if v is None else f"a={k}:{v}" for k, v in self.attributes]
        for m in self.media:
            out += m.lines()
        return out

    def __str__(self) -> str:
        return "\r\n".join(self.lines()) + "\r\n"

    def to_bytes(self) -> bytes:
        return str(self).encode("utf-8")

    def __bytes__(self) -> bytes:
        return self.to_bytes()


@dataclass
class MediaChoice:
    codec: str
    payload_type: int
    dtmf_payload_type: int | None
    remote_addr: tuple[str, int]
    direction: str = "sendrecv"          # ours, for RtpSession.set_direction
    ptime: int = 20                      # the peer's packetisation time (we always send 20 ms)
    remote_direction: str = "sendrecv"   # as the peer declared it (c=0.0.0.0 counts as "inactive")
    srtp: SrtpKeys | None = None         # SDES-SRTP keys when the media is encrypted
    rtcp_mux: bool = False               # RTCP on the RTP port (RFC 5761: offered, and we answered it)
    rtcp_addr: tuple[str, int] | None = None   # the peer's a=rtcp (RFC 3605), else its RTP port + 1

    @property
    def on_hold(self) -> bool:
        return self.remote_direction in ("sendonly", "inactive")


def answer_direction(offer_direction: str, wanted: str = "sendrecv") -> str:
    """RFC 3264 §6.1: what we may answer to `offer_direction`, intersected with what we want."""
    remote_sends = offer_direction in ("sendrecv", "sendonly")
    remote_recvs = offer_direction in ("sendrecv", "recvonly")
    we_send = wanted in ("sendrecv", "sendonly") and remote_recvs
    we_recv = wanted in ("sendrecv", "recvonly") and remote_sends
    return {(True, True): "sendrecv", (True, False): "sendonly", (False, True): "recvonly",
            (False, False): "inactive"}[(we_send, we_recv)]


def _rtcp_addr(m: MediaDescription, media_addr: str) -> tuple[str, int] | None:
    """The peer's RTCP address from `a=rtcp:port [IN IP4 addr]` (RFC 3605); None when absent or unreadable."""
    value = m.attr("rtcp")
    if not value:
        return None
    parts = value.split()
    try:
        port = int(parts[0])
    except ValueError:
        return None
    addr = parts[3] if len(parts) >= 4 and parts[0] and parts[1] == "IN" else media_addr
    return (addr, port) if 0 < port < 65536 else None


def _new_session_id() -> str:
    return str(int(time.time()) * 1000 + int.from_bytes(os.urandom(2), "big") % 1000)


def make_offer(ip: str, port: int, codecs: tuple[str, ...] | list[str] = ("PCMU", "PCMA"), dtmf: bool = True,
               ptime: int = 20, direction: str = "sendrecv", *, session_id: str | None = None, version: int = 1,
               dtmf_payload_type: int = 101, media_encryption: str = "none") -> SessionDescription:
    """Our offer (initial INVITE, or a re-INVITE with direction="sendonly"/"inactive" for hold and
    "sendrecv" to resume; pass the same session_id and version+1 for a re-offer, RFC 3264 §8).
    media_encryption "srtp": RTP/SAVP with a fresh a=crypto key; "optional": RTP/AVP with one (best effort)."""
    if direction not in DIRECTIONS:
        raise SdpError(f"unknown direction {direction!r}")
    if media_encryption not in MEDIA_ENCRYPTION:
        raise SdpError(f"unknown media_encryption {media_encryption!r}")
    fmts: list[str] = []
    attrs: list[tuple[str, str | None]] = []
    for c in codecs:
        pt = _CODEC_PT.get(c.upper())
        if pt is None:
            raise SdpError(f"unsupported codec {c!r}")
        fmts.append(str(pt))
        attrs.append(("rtpmap", f"{pt} {c.upper()}/8000"))
    if dtmf:
        fmts.append(str(dtmf_payload_type))
        attrs += [("rtpmap", f"{dtmf_payload_type} telephone-event/8000"), ("fmtp", f"{dtmf_payload_type} 0-16")]
    attrs += [("ptime", str(ptime)), (direction, None)]
    if media_encryption != "none":
        attrs.append(("crypto", CryptoAttribute.generate().to_sdp()))
    sid = session_id or _new_session_id()
    proto = "RTP/SAVP" if media_encryption == "srtp" else "RTP/AVP"
    return SessionDescription(origin=Origin("-", sid, version, "IN", "IP6" if ":" in ip else "IP4", ip),
                              name="-", connection=ip,
                              media=[MediaDescription("audio", port, proto, fmts, attributes=attrs)])


def _pick(m: MediaDescription, supported: tuple[str, ...] | list[str]) -> tuple[str, int, int | None] | None:
    rtpmap = m.rtpmap
    sup = [s.upper() for s in supported]
    codec = None
    for f in m.formats:  # the offerer's preference order
        if not f.isdigit():
            continue
        enc = rtpmap.get(int(f))
        if enc and enc[0].upper() in sup and enc[1] == 8000 and enc[2] == 1:
            codec = (enc[0].upper(), int(f))
            break
    if codec is None:
        return None
    dtmf = None
    for f in m.formats:
        enc = rtpmap.get(int(f)) if f.isdigit() else None
        if enc and enc[0].lower() == "telephone-event" and enc[1] == 8000:
            dtmf = int(f)
            break
    return codec[0], codec[1], dtmf


def _effective_remote_direction(sd: SessionDescription, m: MediaDescription) -> str:
    d = sd.media_direction(m)
    addr = sd.media_address(m)
    if addr in ("0.0.0.0", "::") and d in ("sendrecv", "recvonly"):
        # RFC 2543-style hold: "do not send to me" (RFC 3264 §8.4).
        d = "sendonly" if d == "sendrecv" else "inactive"
    return d


def _offered_keys(m: MediaDescription, mode: str) -> tuple[bool, CryptoAttribute | None, str]:
    """Whether an offered audio stream's transport suits the trunk's media_encryption, the peer's a=crypto we
    would answer (None: plain RTP), and why not when it does not suit."""
    proto = m.proto.upper()
    offered = m.attrs("crypto")
    if proto in SAVP:
        if mode == "none":
            return False, None, "SRTP (RTP/SAVP) offered; this trunk's media_encryption is none"
        try:
            theirs = choose(offered)
        except ValueError as e:
            return False, None, f"unusable a=crypto: {e}"
        if theirs is None:
            return False, None, "no a=crypto with a suite we support (AES_CM_128_HMAC_SHA1_80 or _32)"
        return True, theirs, ""
    if proto in AVP:
        if mode == "srtp":
            return False, None, "plain RTP offered; this trunk requires SRTP (media_encryption srtp)"
        if mode == "optional" and offered:   # best-effort SRTP: keys if we can use them, plain RTP otherwise
            try:
                return True, choose(offered), ""
            except ValueError:
                return True, None, ""
        return True, None, ""
    return False, None, f"media transport {m.proto} is not supported"


def answer_offer(offer: SessionDescription | bytes | str, ip: str, port: int,
                 supported: tuple[str, ...] | list[str] = ("PCMU", "PCMA"), *, direction: str = "sendrecv",
                 session_id: str | None = None, version: int = 1, ptime: int = 20,
                 media_encryption: str = "none",
                 keys: SrtpKeys | None = None) -> tuple[SessionDescription, MediaChoice]:
    """Answer the first usable audio stream; every other m-line is rejected with port 0 (RFC 3264 §6). `keys`:
    the SRTP keys in use (a re-offer): when the peer keeps its key we keep ours, so a refresh changes nothing."""
    if not isinstance(offer, SessionDescription):
        offer = SessionDescription.parse(offer)
    if not offer.media:
        raise NoCommonCodec("offer has no media stream")
    answer_media: list[MediaDescription] = []
    choice: MediaChoice | None = None
    offered: list[str] = []
    refused: list[str] = []
    for m in offer.media:
        picked = None
        theirs: CryptoAttribute | None = None
        if choice is None and m.media == "audio" and m.port:
            fits, theirs, why = _offered_keys(m, media_encryption)
            if fits:
                picked = _pick(m, supported)
                offered += [v[0] for v in m.rtpmap.values()]
            elif m.proto.upper() in SAVP + AVP:
                refused.append(why)
        if picked is None:
            answer_media.append(MediaDescription(m.media, 0, m.proto, m.formats[:1] or ["0"]))
            continue
        codec, pt, dtmf_pt = picked
        remote_dir = _effective_remote_direction(offer, m)
        ours = answer_direction(remote_dir, direction)
        fmts = [str(pt)]
        attrs: list[tuple[str, str | None]] = [("rtpmap", f"{pt} {codec}/8000")]
        if dtmf_pt is not None:
            fmts.append(str(dtmf_pt))
            attrs += [("rtpmap", f"{dtmf_pt} telephone-event/8000"), ("fmtp", f"{dtmf_pt} 0-16")]
        attrs += [("ptime", str(ptime)), (ours, None)]
        mux = m.attr("rtcp-mux") is not None
        if mux:
            attrs.append(("rtcp-mux", None))      # RFC 5761 §5.1.1: RTP and RTCP share the port
        agreed = None
        if theirs is not None:   # our own key, under the tag and suite we accept (RFC 4568 §7.1.2)
            if keys is not None and keys.remote.key == theirs.key and keys.local.suite == theirs.suite:
                mine = CryptoAttribute(theirs.tag, theirs.suite, keys.local.key)
            else:
                mine = CryptoAttribute.generate(theirs.tag, theirs.suite)
            attrs.append(("crypto", mine.to_sdp()))
            agreed = SrtpKeys(mine, theirs)
        answer_media.append(MediaDescription("audio", port, m.proto, fmts, attributes=attrs))
        addr = offer.media_address(m)
        if addr is None:
            raise SdpError("audio stream without a connection address")
        choice = MediaChoice(codec, pt, dtmf_pt, (addr, m.port), ours, m.ptime or 20, remote_dir, agreed, mux,
                             _rtcp_addr(m, addr))
    if choice is None:
        if refused and not offered:
            raise EncryptionMismatch("; ".join(dict.fromkeys(refused)))
        listed = ", ".join(dict.fromkeys(offered)) or "none"
        raise NoCommonCodec(f"no common codec (offered: {listed}; supported: {', '.join(supported)})")
    answer = SessionDescription(
        origin=Origin("-", session_id or _new_session_id(), version, "IN", "IP6" if ":" in ip else "IP4", ip),
        name="-", connection=ip, media=answer_media)
    return answer, choice


def _our_keys(offer: SessionDescription | None) -> dict[int, CryptoAttribute]:
    out: dict[int, CryptoAttribute] = {}
    for m in offer.media if offer is not None else []:
        for v in m.attrs("crypto"):
            a = CryptoAttribute.parse(v)
            if a is not None:
                out[a.tag] = a
    return out


def _answered_keys(offer: SessionDescription | None, m: MediaDescription, mode: str) -> SrtpKeys | None:
    """The keys an answer to our offer settles on, None for plain RTP; EncryptionMismatch when it breaks the
    trunk's media_encryption or names a key we never offered."""
    ours = _our_keys(offer)
    answered = m.attrs("crypto")
    savp = m.proto.upper() in SAVP
    if not ours:
        if savp or answered:
            raise EncryptionMismatch("the answer uses SRTP; we offered plain RTP")
        return None
    if answered:
        try:
            theirs = choose(answered)
        except ValueError as e:
            raise EncryptionMismatch(f"unusable a=crypto in the answer: {e}") from None
        mine = ours.get(theirs.tag) if theirs is not None else None
        if theirs is None or mine is None or mine.suite != theirs.suite:
            raise EncryptionMismatch("the answer's a=crypto matches none we offered")
        return SrtpKeys(mine, theirs)
    if mode == "srtp" or savp:
        raise EncryptionMismatch("the answer has no a=crypto; this trunk requires SRTP (media_encryption srtp)")
    return None   # optional: the peer chose plain RTP


def parse_answer(answer: SessionDescription | bytes | str, offer: SessionDescription | None = None,
                 supported: tuple[str, ...] | list[str] = ("PCMU", "PCMA"), *,
                 media_encryption: str = "none") -> MediaChoice:
    """The peer's answer to our offer: which codec it kept, where to send, its direction and SRTP keys."""
    if not isinstance(answer, SessionDescription):
        answer = SessionDescription.parse(answer)
    for m in answer.media:
        if m.media != "audio" or not m.port:
            continue
        picked = _pick(m, supported)
        if picked is None:
            continue
        codec, pt, dtmf_pt = picked
        if offer is not None and not any(codec == c[0].upper() for om in offer.media
                                         for c in om.rtpmap.values()):
            raise NoCommonCodec(f"answer chose {codec}, which was not in our offer")
        keys = _answered_keys(offer, m, media_encryption)
        addr = answer.media_address(m)
        if addr is None:
            raise SdpError("audio stream without a connection address")
        remote_dir = _effective_remote_direction(answer, m)
        ours = answer_direction(remote_dir, "sendrecv")
        return MediaChoice(codec, pt, dtmf_pt, (addr, m.port), ours, m.ptime or 20, remote_dir, keys,
                           rtcp_addr=_rtcp_addr(m, addr))
    raise NoCommonCodec("answer has no audio stream with a supported codec")
