"""L16 (RFC 3551: 16-bit linear, network byte order) ⇄ PCM16 little-endian."""
from ._audioop import audioop


def l16_to_pcm16(data: bytes) -> bytes:
    return audioop.byteswap(data, 2)


def pcm16_to_l16(pcm: bytes) -> bytes:
    return audioop.byteswap(pcm, 2)
