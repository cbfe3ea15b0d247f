"""SDES-SRTP without a network: a=crypto lines (RFC 4568), libsrtp protect/unprotect, the offer/answer rules of
each trunk `media_encryption`, and keys never reaching a log line."""
import base64
import logging

import pytest

from gateway.logsetup import JsonFormatter, TextFormatter
from gateway.rtp.packet import build_rtp
from gateway.rtp.srtp import CryptoAttribute, SrtpContext
from gateway.sip.sdp import EncryptionMismatch, NoCommonCodec, answer_offer, make_offer, parse_answer

KEY = base64.b64encode(bytes(range(30))).decode()


def test_crypto_attribute_parse_and_print_without_the_key():
    a = CryptoAttribute.parse(f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20")
    assert a is not None and (a.tag, a.suite, a.key) == (1, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    assert KEY not in repr(a) and KEY not in str(a) and a.to_sdp().endswith(KEY)
    assert CryptoAttribute.parse(f"2 AES_CM_128_HMAC_SHA1_32 inline:{KEY}").suite == "AES_CM_128_HMAC_SHA1_32"
    assert CryptoAttribute.parse(f"1 AES_256_CM_HMAC_SHA1_80 inline:{KEY}") is None       # a suite we lack
    assert CryptoAttribute.parse(f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20|1:4") is None   # MKI
    assert CryptoAttribute.parse(f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} UNENCRYPTED_SRTP") is None
    for bad in ("x AES_CM_128_HMAC_SHA1_80 inline:" + KEY, "1 AES_CM_128_HMAC_SHA1_80 inline:!!!",
                "1 AES_CM_128_HMAC_SHA1_80 inline:" + KEY[:20], "1 AES_CM_128_HMAC_SHA1_80 uri:x"):
        with pytest.raises(ValueError):
            CryptoAttribute.parse(bad)
    assert CryptoAttribute.generate().key != CryptoAttribute.generate().key


def test_srtp_round_trip_and_tampering_is_dropped():
    ours, theirs = CryptoAttribute.generate(), CryptoAttribute.generate()
    a, b = SrtpContext(ours, theirs), SrtpContext(theirs, ours)
    rtp = build_rtp(0, True, 7, 160, 0x1234, b"\x55" * 160)
    protected = a.protect(rtp)
    assert protected != rtp and len(protected) == len(rtp) + 10          # 80-bit auth tag
    assert b.unprotect(protected) == rtp
    tampered = protected[:-1] + bytes([protected[-1] ^ 1])
    assert b.unprotect(tampered) is None and b.failed == 1
    assert b.unprotect(protected) is None and b.failed == 2              # a replay
    assert a.protect(rtp) is None                                        # never the same index twice
    later = build_rtp(0, False, 8, 320, 0x1234, b"\x55" * 160)
    assert SrtpContext(ours, CryptoAttribute.generate()).unprotect(a.protect(later)) is None   # another key


def offer_of(proto: str, crypto: bool) -> bytes:
    lines = ["v=0", "o=- 1 1 IN IP4 10.0.0.9", "s=-", "c=IN IP4 10.0.0.9", "t=0 0",
             f"m=audio 4000 {proto} 0 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000"]
    if crypto:
        lines += [f"a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{KEY}",
                  f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{KEY}"]
    return ("\r\n".join(lines) + "\r\n").encode()


@pytest.mark.parametrize("mode,proto,crypto,outcome", [
    ("none", "RTP/AVP", False, "plain"),
    ("none", "RTP/AVP", True, "plain"),              # best-effort keys ignored: plain answer
    ("none", "RTP/SAVP", True, "refused"),
    ("srtp", "RTP/SAVP", True, "srtp"),
    ("srtp", "RTP/AVP", False, "refused"),
    ("srtp", "RTP/AVP", True, "refused"),            # RTP/AVP is not SRTP, keys or not
    ("srtp", "RTP/SAVP", False, "refused"),          # SAVP without a usable key
    ("optional", "RTP/AVP", False, "plain"),
    ("optional", "RTP/AVP", True, "srtp"),           # best effort accepted
    ("optional", "RTP/SAVP", True, "srtp"),
])
def test_answer_to_each_offer_per_media_encryption(mode, proto, crypto, outcome):
    if outcome == "refused":
        with pytest.raises(EncryptionMismatch) as e:
            answer_offer(offer_of(proto, crypto), "10.0.0.1", 20000, media_encryption=mode)
        assert isinstance(e.value, NoCommonCodec)     # the carrier answers 488
        return
    answer, choice = answer_offer(offer_of(proto, crypto), "10.0.0.1", 20000, media_encryption=mode)
    m = answer.media[0]
    assert m.proto == proto
    if outcome == "plain":
        assert choice.srtp is None and not m.attrs("crypto")
        return
    # the answer keeps the tag and suite we prefer (80-bit tag) with a fresh key of ours
    (line,) = m.attrs("crypto")
    assert line.startswith("2 AES_CM_128_HMAC_SHA1_80 inline:") and KEY not in line
    assert choice.srtp.remote.key == bytes(range(30)) and choice.srtp.local.to_sdp() == line


@pytest.mark.parametrize("mode", ["srtp", "optional"])
def test_our_offer_and_the_answers_it_accepts(mode):
    offer = make_offer("10.0.0.1", 20000, media_encryption=mode)
    m = offer.media[0]
    assert m.proto == ("RTP/SAVP" if mode == "srtp" else "RTP/AVP")
    ours = CryptoAttribute.parse(m.attrs("crypto")[0])
    # the peer answers with SRTP under our tag: both keys are known
    answer, _ = answer_offer(offer.to_bytes(), "10.0.0.2", 30000, media_encryption="srtp" if mode == "srtp"
                             else "optional")
    choice = parse_answer(answer.to_bytes(), offer, media_encryption=mode)
    assert choice.srtp is not None and choice.srtp.local == ours
    # a plain answer: refused when SRTP is required, plain RTP when optional
    plain, _ = answer_offer(offer_of("RTP/AVP", False), "10.0.0.2", 30000)
    if mode == "srtp":
        with pytest.raises(EncryptionMismatch, match="requires SRTP"):
            parse_answer(plain.to_bytes(), offer, media_encryption=mode)
    else:
        assert parse_answer(plain.to_bytes(), offer, media_encryption=mode).srtp is None


def test_an_answer_with_a_key_we_never_offered_is_refused():
    offer = make_offer("10.0.0.1", 20000, media_encryption="srtp")
    forged = offer_of("RTP/SAVP", True).replace(b"a=crypto:1 ", b"a=crypto:7 ").replace(b"a=crypto:2 ", b"a=crypto:9 ")
    with pytest.raises(EncryptionMismatch, match="none we offered"):
        parse_answer(forged, offer, media_encryption="srtp")
    with pytest.raises(EncryptionMismatch, match="we offered plain RTP"):
        parse_answer(offer_of("RTP/SAVP", True), make_offer("10.0.0.1", 20000))


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_keys_never_reach_a_log_line(formatter):
    sdp = offer_of("RTP/SAVP", True).decode()
    record = logging.LogRecord("gateway.sip", logging.INFO, __file__, 1, "offer: %s", (sdp,), None)
    record.sdp = sdp
    line = formatter.format(record)
    assert KEY not in line and "inline:****" in line


def test_a_re_offer_with_the_same_key_keeps_ours():
    _, first = answer_offer(offer_of("RTP/SAVP", True), "10.0.0.1", 20000, media_encryption="srtp")
    _, again = answer_offer(offer_of("RTP/SAVP", True), "10.0.0.1", 20000, media_encryption="srtp", keys=first.srtp)
    assert again.srtp == first.srtp                   # a refresh or hold changes nothing on the wire
    rekeyed = offer_of("RTP/SAVP", True).replace(KEY.encode(), base64.b64encode(bytes(30)))
    _, new = answer_offer(rekeyed, "10.0.0.1", 20000, media_encryption="srtp", keys=first.srtp)
    assert new.srtp.local.key != first.srtp.local.key and new.srtp.remote.key == bytes(30)


async def test_rtp_session_drops_forged_packets_and_latches_only_to_authentic_ones():
    import asyncio
    import socket

    from gateway.rtp import RtpEngine
    from sipp import rtp_range

    ports = rtp_range(10)
    engine = RtpEngine("127.0.0.1", ports["rtp_port_min"], ports["rtp_port_max"])
    await engine.start()
    session = await engine.open_session()
    ours, theirs = CryptoAttribute.generate(), CryptoAttribute.generate()
    session.set_srtp(SrtpContext(ours, theirs))
    peer = SrtpContext(theirs, ours)
    heard: list[bytes] = []
    session.on_pcm = heard.append
    forger, sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    forger.bind(("127.0.0.1", 0))
    sender.bind(("127.0.0.1", 0))
    try:
        target = ("127.0.0.1", session.local_port)
        forged = build_rtp(0, True, 1, 160, 0x99, b"\x00" * 160) + b"\x00" * 10     # a plausible tag, wrong key
        loop = asyncio.get_running_loop()

        async def until(condition) -> None:
            end = loop.time() + 5
            while not condition() and loop.time() < end:
                await asyncio.sleep(0.01)

        forger.sendto(forged, target)
        await until(lambda: session.srtp.failed)
        assert session.received == 0 and not session.latched      # dropped before anything else looked at it
        for seq in range(1, 6):
            sender.sendto(peer.protect(build_rtp(0, seq == 1, seq, seq * 160, 0x1234, b"\xff" * 160)), target)
        await until(lambda: session.received >= 5)
        assert session.received == 5 and session.srtp.failed == 1
        assert session.remote == ("127.0.0.1", sender.getsockname()[1])   # the authentic sender, not the forger
        assert session.stats["srtp_failed"] == 1
        await until(lambda: heard)                          # and the decrypted audio is played out
        assert len(heard[0]) == 320
    finally:
        forger.close()
        sender.close()
        session.close()
        await engine.stop()
