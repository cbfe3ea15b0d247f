"""RTP packet, RFC 4733 and jitter-buffer units."""
import pytest
from aiortc.rtp import RtpPacket

from gateway.rtp.dtmf import DtmfReceiver, DtmfSender, decode_event, encode_event
from gateway.rtp.jitter import LOST, JitterBuffer
from gateway.rtp.packet import RtpParseError, build_rtp, is_rtcp, parse_rtp


def test_build_parse_round_trip_matches_aiortc():
    raw = build_rtp(0, True, 65535, 0xFFFFFFF0, 0xDEADBEEF, b"\x7f" * 160)
    ours = parse_rtp(raw)
    ref = RtpPacket.parse(raw)
    assert (ours.payload_type, ours.marker, ours.sequence, ours.timestamp, ours.ssrc) == \
        (ref.payload_type, bool(ref.marker), ref.sequence_number, ref.timestamp, ref.ssrc)
    assert ours.payload == ref.payload == b"\x7f" * 160


def test_parse_with_csrc_uses_full_parser():
    p = RtpPacket(payload_type=8, sequence_number=7, timestamp=99, ssrc=1, payload=b"ab")
    p.csrc = [5, 6]
    h = parse_rtp(p.serialize())
    assert (h.payload_type, h.sequence, h.payload) == (8, 7, b"ab")


def test_parse_rejects_garbage():
    with pytest.raises(RtpParseError):
        parse_rtp(b"\x00" * 20)
    with pytest.raises(RtpParseError):
        parse_rtp(b"\x80")


def test_rtcp_detected():
    assert is_rtcp(bytes([0x80, 200]) + b"\x00" * 26)
    assert not is_rtcp(build_rtp(0, False, 1, 1, 1, b""))


def test_event_payload_rfc4733_layout():
    # RFC 4733 §2.3: event 8 bits, E bit, R bit, 6-bit volume, 16-bit duration
    assert encode_event("#", True, 800, volume=10) == bytes([11, 0x80 | 10, 0x03, 0x20])
    assert decode_event(bytes([5, 10, 0, 160])) == ("5", False, 160)


def test_receiver_reports_once_despite_repeated_end_packets():
    rx = DtmfReceiver()
    out = []
    for dur in (160, 320, 480):
        out += rx.receive(1000, encode_event("7", False, dur))
    for _ in range(3):
        out += rx.receive(1000, encode_event("7", True, 800))
    assert out == [("7", 100)]


def test_receiver_reports_press_whose_end_was_lost():
    rx = DtmfReceiver()
    assert rx.receive(1000, encode_event("1", False, 160)) == []
    assert rx.receive(3000, encode_event("2", False, 160)) == [("1", 0)]
    assert rx.receive(3000, encode_event("2", True, 800)) == [("2", 100)]


def test_sender_plan():
    tx = DtmfSender("1#")
    steps = []
    while not tx.done:
        steps.append(tx.next_step())
    events = [s for s in steps if s is not None]
    assert sum(s.first for s in events) == 2
    assert sum(s.end for s in events) == 6  # three end packets per digit
    assert [decode_event(s.payload)[0] for s in events if s.first] == ["1", "#"]
    with pytest.raises(ValueError):
        DtmfSender("x")


def test_jitter_reorders_and_primes():
    jb = JitterBuffer(target=2)
    jb.put(11, b"b")
    assert jb.pop() is None  # not primed yet
    jb.put(10, b"a")
    assert [jb.pop(), jb.pop(), jb.pop()] == [b"a", b"b", None]


def test_jitter_plays_a_lone_last_packet_after_the_target_delay():
    """Regression (issue 14): the last packet of a talk spurt, arriving after the buffer had run dry, waited for
    a second packet to re-prime and was never played when the far end stopped (one 30 ms packet short)."""
    jb = JitterBuffer(target=2)
    jb.put(1, b"1")
    assert jb.pop() is None                     # held for the target delay (2 ticks) ...
    assert jb.pop() == b"1"                     # ... then played
    assert jb.pop() is None and jb.lost == 0
    jb.put(2, b"2")
    jb.put(3, b"3")                             # a full target primes at once, as before
    assert [jb.pop(), jb.pop(), jb.pop()] == [b"2", b"3", None]


def test_jitter_counts_loss_late_and_duplicates():
    jb = JitterBuffer(target=1)
    jb.put(1, b"1")
    assert jb.pop() == b"1"
    jb.put(3, b"3")
    jb.put(3, b"3")
    assert jb.duplicate == 1
    assert jb.pop() is LOST and jb.lost == 1
    jb.put(2, b"2")  # arrives after its slot was played
    assert jb.late == 1
    assert jb.pop() == b"3"


def test_jitter_sequence_wraps():
    jb = JitterBuffer(target=1)
    for seq in (65534, 65535, 0, 1):
        jb.put(seq, bytes([seq & 0xFF]))
    assert [jb.pop() for _ in range(4)] == [b"\xfe", b"\xff", b"\x00", b"\x01"]


def test_jitter_memory_is_bounded():
    jb = JitterBuffer(target=2, max_depth=5, max_backlog=8)
    for seq in range(20):
        jb.put(seq, b"x")
    assert len(jb) == 8 and jb.overflow == 12


def test_jitter_plays_a_burst_above_the_depth_early_instead_of_dropping_it():
    """A burst read after our loop ran late: every frame is played, the excess over `max_depth` at up to
    `catch_up` extra frames a tick, in order, until the latency is back at the bound."""
    jb = JitterBuffer(target=2, max_depth=5, catch_up=3)
    for seq in range(12):
        jb.put(seq, bytes([seq]))
    played: list[bytes] = []
    ticks = 0
    while len(jb):
        ticks += 1
        frame = jb.pop()
        assert isinstance(frame, bytes)
        played.append(frame)
        for _ in range(jb.extra()):
            extra = jb.pop()
            assert isinstance(extra, bytes)
            played.append(extra)
    assert played == [bytes([i]) for i in range(12)] and jb.overflow == 0 and jb.lost == 0
    # 12 buffered, bound 5: tick 1 plays 1 + 3 (8 left), tick 2 plays 1 + 2 (5 left), then one a tick
    assert jb.drained == 5 and ticks == 2 + 5
