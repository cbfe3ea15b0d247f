"""G.711 and L16 against the ITU-T G.711 tables and RFC 3551 byte order.

The reference decoders below are written from the G.711 definitions (segment/quantisation fields of the code
word, μ-law bias 33, A-law even-bit inversion 0x55) and scaled to 16 bits the way every PCM16 implementation
does (μ-law 14-bit × 4, A-law 13-bit × 8); they are independent of audioop.
"""
from __future__ import annotations

import struct

import pytest

from voicecodecs import alaw_to_pcm16, l16_to_pcm16, pcm16_to_alaw, pcm16_to_l16, pcm16_to_ulaw, ulaw_to_pcm16


def ref_ulaw(code: int) -> int:
    """G.711 μ-law decoding (Table 2a), 14-bit value × 4."""
    c = ~code & 0xFF
    seg, quant = (c >> 4) & 0x7, c & 0xF
    magnitude = (((quant << 1) + 33) << seg) - 33          # 14-bit units, 0..8031
    return (-magnitude if c & 0x80 else magnitude) * 4


def ref_alaw(code: int) -> int:
    """G.711 A-law decoding (Table 1a), sign + 12-bit magnitude, × 8."""
    c = code ^ 0x55
    seg, quant = (c >> 4) & 0x7, c & 0xF
    magnitude = (quant << 1) + 1 if seg == 0 else ((quant << 1) + 33) << (seg - 1)   # 12-bit units, 1..4032
    return (magnitude if c & 0x80 else -magnitude) * 8


def decode_all(fn) -> list[int]:
    return list(struct.unpack("<256h", fn(bytes(range(256)))))


# Points straight from the G.711 tables: zero codes, the largest step of each law, a few mid-segment values.
ULAW_POINTS = {0xFF: 0, 0x7F: 0, 0x80: 32124, 0x00: -32124, 0xF0: 120, 0xEF: 132, 0xCF: 924, 0x9F: 8316,
               0x8F: 16764, 0x1F: -8316}
ALAW_POINTS = {0xD5: 8, 0x55: -8, 0xAA: 32256, 0x2A: -32256, 0xD4: 24, 0xC5: 264, 0xF5: 528, 0xA5: 16896}


@pytest.mark.parametrize("code,value", sorted(ULAW_POINTS.items()))
def test_ulaw_table_points(code, value):
    assert struct.unpack("<h", ulaw_to_pcm16(bytes([code])))[0] == value


@pytest.mark.parametrize("code,value", sorted(ALAW_POINTS.items()))
def test_alaw_table_points(code, value):
    assert struct.unpack("<h", alaw_to_pcm16(bytes([code])))[0] == value


def test_ulaw_decoder_matches_reference_for_all_codes():
    assert decode_all(ulaw_to_pcm16) == [ref_ulaw(c) for c in range(256)]


def test_alaw_decoder_matches_reference_for_all_codes():
    assert decode_all(alaw_to_pcm16) == [ref_alaw(c) for c in range(256)]


def test_encoder_reference_values():
    pcm = struct.pack("<6h", 0, 1, -8, 32767, -32768, 1000)
    # μ-law: 0 → 0xFF; tiny magnitudes stay in the zero step; full scale → 0x80 / 0x00; 1000 → segment 3.
    assert pcm16_to_ulaw(pcm) == bytes([0xFF, 0xFF, 0x7E, 0x80, 0x00, 0xCE])
    # A-law: 0 and +1 → 0xD5, −8 → 0x55, full scale → 0xAA / 0x2A; 1000 → segment 3.
    assert pcm16_to_alaw(pcm) == bytes([0xD5, 0xD5, 0x55, 0xAA, 0x2A, 0xFA])


@pytest.mark.parametrize("enc,dec", [(pcm16_to_ulaw, ulaw_to_pcm16), (pcm16_to_alaw, alaw_to_pcm16)])
def test_code_round_trip(enc, dec):
    codes = bytes(range(256))
    again = enc(dec(codes))
    if enc is pcm16_to_ulaw:   # μ-law has two zeros; both encode back to the positive one
        codes = codes.replace(b"\x7f", b"\xff")
    assert again == codes


@pytest.mark.parametrize("enc,dec", [(pcm16_to_ulaw, ulaw_to_pcm16), (pcm16_to_alaw, alaw_to_pcm16)])
def test_pcm_round_trip_error_is_within_one_quantisation_step(enc, dec):
    values = list(range(-32768, 32768, 37))
    pcm = struct.pack(f"<{len(values)}h", *values)
    back = struct.unpack(f"<{len(values)}h", dec(enc(pcm)))
    for v, b in zip(values, back, strict=True):
        # G.711 is logarithmic: the step is ~1/16 of the value (so error ≤ 1/32) above the linear segment(s).
        assert abs(v - b) <= max(abs(v) / 32, 64), (v, b)


def test_l16_is_network_byte_order():
    assert l16_to_pcm16(b"\x12\x34\xff\xfe") == struct.pack("<2h", 0x1234, -2)
    assert pcm16_to_l16(struct.pack("<2h", 0x1234, -2)) == b"\x12\x34\xff\xfe"
    data = bytes(range(200))
    assert l16_to_pcm16(pcm16_to_l16(data)) == data
