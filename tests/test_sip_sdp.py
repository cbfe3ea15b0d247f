"""SDP offer/answer: codec choice, telephone-event, 488 cases, hold directions (RFC 3264, RFC 4733)."""
from __future__ import annotations

import pytest

from gateway.sip.sdp import (
    MediaChoice,
    NoCommonCodec,
    SdpError,
    SessionDescription,
    answer_direction,
    answer_offer,
    make_offer,
    parse_answer,
)

# A typical carrier offer (Twilio-like ordering: PCMU first, then PCMA, telephone-event at 101).
CARRIER_OFFER = (b"v=0\r\n"
                 b"o=root 1234 5678 IN IP4 203.0.113.5\r\n"
                 b"s=Twilio Media Gateway\r\n"
                 b"c=IN IP4 203.0.113.5\r\n"
                 b"t=0 0\r\n"
                 b"m=audio 14000 RTP/AVP 18 0 8 101\r\n"
                 b"a=rtpmap:18 G729/8000\r\n"
                 b"a=rtpmap:0 PCMU/8000\r\n"
                 b"a=rtpmap:8 PCMA/8000\r\n"
                 b"a=rtpmap:101 telephone-event/8000\r\n"
                 b"a=fmtp:101 0-16\r\n"
                 b"a=ptime:20\r\n"
                 b"a=sendrecv\r\n")


def test_make_offer_serializes_and_parses_back():
    sd = make_offer("192.0.2.10", 20000, session_id="42")
    text = str(sd)
    assert "m=audio 20000 RTP/AVP 0 8 101\r\n" in text
    assert "a=rtpmap:101 telephone-event/8000\r\n" in text and "a=ptime:20\r\n" in text
    assert "c=IN IP4 192.0.2.10\r\n" in text and text.startswith("v=0\r\no=- 42 1 IN IP4 192.0.2.10\r\n")
    back = SessionDescription.parse(sd.to_bytes())
    m = back.media[0]
    assert m.rtpmap == {0: ("PCMU", 8000, 1), 8: ("PCMA", 8000, 1), 101: ("telephone-event", 8000, 1)}
    assert m.ptime == 20 and back.media_direction(m) == "sendrecv" and back.origin.version == 1


def test_answer_follows_offerer_preference_and_keeps_dtmf_pt():
    answer, choice = answer_offer(CARRIER_OFFER, "192.0.2.10", 20002)
    assert choice == MediaChoice("PCMU", 0, 101, ("203.0.113.5", 14000), "sendrecv", 20, "sendrecv")
    m = answer.media[0]
    assert m.port == 20002 and m.formats == ["0", "101"] and m.direction == "sendrecv"
    assert answer.connection == "192.0.2.10"
    # PCMA-only gateway configuration picks PCMA from the same offer.
    _, choice = answer_offer(CARRIER_OFFER, "192.0.2.10", 20002, supported=("PCMA",))
    assert (choice.codec, choice.payload_type) == ("PCMA", 8)


def test_static_payload_without_rtpmap_and_dynamic_dtmf_pt():
    offer = (b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\n"
             b"m=audio 5004 RTP/AVP 8 96\r\nc=IN IP4 10.0.0.2\r\na=rtpmap:96 telephone-event/8000\r\n"
             b"a=ptime:30\r\n")
    _, choice = answer_offer(offer, "10.0.0.9", 30000)
    assert choice.codec == "PCMA" and choice.dtmf_payload_type == 96
    assert choice.remote_addr == ("10.0.0.2", 5004)  # media-level c= wins
    assert choice.ptime == 30


def test_no_common_codec_is_488_worthy():
    offer = CARRIER_OFFER.replace(b"18 0 8 101", b"18 101")
    with pytest.raises(NoCommonCodec, match="G729"):
        answer_offer(offer, "192.0.2.10", 20002)
    # telephone-event at 16 kHz and SRTP streams are not usable either
    with pytest.raises(NoCommonCodec):
        answer_offer(CARRIER_OFFER.replace(b"RTP/AVP", b"RTP/SAVP"), "192.0.2.10", 20002)
    assert issubclass(NoCommonCodec, SdpError)


def test_extra_streams_rejected_with_port_zero():
    offer = CARRIER_OFFER + b"m=video 14002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    answer, choice = answer_offer(SessionDescription.parse(offer), "192.0.2.10", 20002)
    assert [m.port for m in answer.media] == [20002, 0] and answer.media[1].media == "video"
    assert "m=video 0 RTP/AVP 96" in str(answer)


@pytest.mark.parametrize("line,remote,ours,hold", [
    (b"a=sendonly", "sendonly", "recvonly", True),
    (b"a=inactive", "inactive", "inactive", True),
    (b"a=recvonly", "recvonly", "sendonly", False),
    (b"a=sendrecv", "sendrecv", "sendrecv", False),
])
def test_hold_directions(line, remote, ours, hold):
    offer = CARRIER_OFFER.replace(b"a=sendrecv", line)
    answer, choice = answer_offer(offer, "192.0.2.10", 20002)
    assert (choice.remote_direction, choice.direction, choice.on_hold) == (remote, ours, hold)
    assert answer.media[0].direction == ours


def test_rfc2543_hold_with_zero_connection():
    offer = CARRIER_OFFER.replace(b"c=IN IP4 203.0.113.5", b"c=IN IP4 0.0.0.0")
    _, choice = answer_offer(offer, "192.0.2.10", 20002)
    assert choice.on_hold and choice.direction == "recvonly"


def test_answer_direction_table():
    assert answer_direction("sendonly") == "recvonly"
    assert answer_direction("sendrecv", "sendonly") == "sendonly"   # we put the peer on hold
    assert answer_direction("recvonly", "recvonly") == "inactive"


def test_parse_answer_to_our_offer():
    offer = make_offer("192.0.2.10", 20000)
    ans = (b"v=0\r\no=- 9 9 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
           b"m=audio 40000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
           b"a=sendrecv\r\n")
    choice = parse_answer(ans, offer)
    assert (choice.codec, choice.payload_type, choice.dtmf_payload_type) == ("PCMA", 8, 101)
    assert choice.remote_addr == ("198.51.100.7", 40000)
    assert parse_answer(ans.replace(b" 8 101", b" 8")).dtmf_payload_type is None
    with pytest.raises(NoCommonCodec):
        parse_answer(ans.replace(b"m=audio 40000", b"m=audio 0"))
    with pytest.raises(NoCommonCodec):
        parse_answer(ans, make_offer("192.0.2.10", 20000, codecs=("PCMU",)))


@pytest.mark.parametrize("bad", [
    b"o=- 1 1 IN IP4 x\r\n",                       # no v=
    b"v=1\r\n",                                      # wrong version
    b"v=0\r\nm=audio notaport RTP/AVP 0\r\n",
    b"v=0\r\nc=IN XYZ 1.2.3.4\r\n",
    b"v=0\r\nthis is not sdp\r\n",
])
def test_malformed_sdp(bad):
    with pytest.raises(SdpError):
        SessionDescription.parse(bad)


def test_tolerates_lf_and_unknown_lines():
    sd = SessionDescription.parse(CARRIER_OFFER.replace(b"\r\n", b"\n") + b"a=rtcp:14001\nz=0 0\n")
    assert sd.media[0].attr("rtcp") == "14001" and sd.name == "Twilio Media Gateway"


def test_fuzzed_offers_only_raise_sdp_errors():
    import random

    from test_sip_transport import mutate

    rng = random.Random(3264)
    answered = 0
    for _ in range(5000):
        data = mutate(rng, CARRIER_OFFER)
        try:
            answer_offer(data, "192.0.2.10", 20002)
            parse_answer(data)
            answered += 1
        except SdpError:
            pass
    assert answered > 100  # plenty of mutations stay valid SDP and are still answered
