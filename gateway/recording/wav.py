"""A call recording on disk: a canonical 44-byte PCM16 WAV header followed by the samples, written as the call goes.

The header's two sizes (RIFF chunk size at byte 4, data chunk size at byte 40) can only be exact once the call is
over, so the writer keeps them up to date every few seconds (`pwrite`, no seek of the buffered stream) and once
more at the end, and `fix_header()` sets them from the file's length for a file whose writer died (gateway crash,
`kill -9`): at the next start, when it is served, or by the periodic sweep. A recording cut short is therefore
always playable up to its last written sample.

Layout (Microsoft RIFF / WAVE, "canonical" PCM form): `RIFF <size-8> WAVE`, `fmt ` chunk of 16 bytes (format tag
1 = PCM, channels, rate, byte rate, block align, 16 bits), `data <size>`.
"""
from __future__ import annotations

import os
import struct
from typing import BinaryIO

HEADER_BYTES = 44
_MAX_DATA = 0xFFFFFFFF - 36


def header(rate: int, channels: int, data_bytes: int = 0) -> bytes:
    """The 44-byte header of a PCM16 WAV holding `data_bytes` of samples."""
    data_bytes = min(data_bytes, _MAX_DATA)
    block = 2 * channels
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16)
            + b"data" + struct.pack("<I", data_bytes))


def sizes(data_bytes: int) -> tuple[bytes, bytes]:
    """The RIFF and data size fields for `data_bytes` of samples (written at offsets 4 and 40)."""
    data_bytes = min(data_bytes, _MAX_DATA)
    return struct.pack("<I", 36 + data_bytes), struct.pack("<I", data_bytes)


def patch_sizes(fd: int, data_bytes: int) -> None:
    """Write the two size fields in place (positional writes: the file offset of `fd` is not moved)."""
    riff, data = sizes(data_bytes)
    os.pwrite(fd, riff, 4)
    os.pwrite(fd, data, 40)


def read_header(f: BinaryIO) -> tuple[int, int, int] | None:
    """(rate, channels, data size field) of one of our recordings, or None when the first 44 bytes are not one."""
    f.seek(0)
    head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[:4] != b"RIFF" or head[8:16] != b"WAVEfmt " or head[36:40] != b"data":
        return None
    _, tag, channels, rate, _, _, bits = struct.unpack("<IHHIIHH", head[16:36])
    if tag != 1 or bits != 16:
        return None
    return rate, channels, struct.unpack("<I", head[40:44])[0]


def fix_header(path: str) -> bool:
    """Make the header's sizes match the samples on disk (a whole number of sample frames); True when it changed
    anything. A file that is not one of our recordings is left alone (False)."""
    with open(path, "r+b") as f:
        info = read_header(f)
        if info is None:
            return False
        _, channels, stored = info
        length = os.fstat(f.fileno()).st_size - HEADER_BYTES
        length -= length % (2 * channels)       # a sample frame cut by the crash is not counted
        if length < 0 or stored == min(length, _MAX_DATA):
            return False
        patch_sizes(f.fileno(), length)
        return True
