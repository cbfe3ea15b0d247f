"""The client side of RFC 6455 websockets, cut to what a load generator needs and cheap per frame.

A load generator that plays hundreds of Twilio streams runs on the same cores as the gateway it measures, so every
microsecond it spends per frame is taken from the gateway (BENCHMARKS.md, "Where the two cores go"). A general
client (websockets' sans-I/O protocol: 45 µs of generator CPU per frame with its events, frame objects and a fresh
os.urandom mask per frame) does far more than a caller that sends one text frame and reads one back every 20 ms
needs. Here:

* `MaskPool.frame` builds a client frame (RFC 6455 §5.2: FIN, opcode, MASK bit, 7/16/64-bit length, masking key,
  masked payload). The masking keys come from os.urandom up front, a pool of them, each stored with its
  repetition as one integer, so masking (§5.3: payload XOR the key repeated) is one big-integer XOR in C; the key of
  each frame is drawn at random from the pool. §5.3 asks for a fresh unpredictable key per frame so a script in a
  browser cannot choose the bytes a proxy sees; a generator that sends only its own messages to 127.0.0.1 has no
  such adversary, and the server sees keys it cannot tell from fresh ones.
* `FrameReader` splits the server's (unmasked, §5.1) frames from a byte stream, reassembles fragmented messages
  (§5.4) and hands back (opcode, payload) pairs; control frames may arrive between fragments.
* `handshake_request` / `handshake_response` do the opening handshake (§4.1, §4.2.2): the GET with
  `Sec-WebSocket-Key`, and the check that the answer is `101` with the matching `Sec-WebSocket-Accept`.
"""
from __future__ import annotations

import base64
import hashlib
import os
import random
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"     # RFC 6455 §1.3

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0

_HEAD7 = struct.Struct("!BB4s").pack
_HEAD16 = struct.Struct("!BBH4s").pack
_HEAD64 = struct.Struct("!BBQ4s").pack


class HandshakeError(ConnectionError):
    """The server did not accept the websocket upgrade."""


def accept_key(key: bytes) -> bytes:
    """The `Sec-WebSocket-Accept` a server must answer for `key` (§4.2.2 step 5.4)."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def handshake_request(host: str, path: str, key: bytes, headers: dict[str, str] | None = None) -> bytes:
    """The opening GET (§4.1): `key` is base64 of 16 random bytes (`new_key()`)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key.decode()}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def new_key() -> bytes:
    return base64.b64encode(os.urandom(16))


def handshake_response(buf: bytes, key: bytes) -> int:
    """How many bytes of `buf` the server's answer takes (the rest is already websocket frames), or 0 while the
    header is incomplete. HandshakeError unless it is `101` with the right `Sec-WebSocket-Accept` (§4.1, the
    client's checks)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0
    status, *header_lines = buf[:end].decode("latin-1").split("\r\n")
    parts = status.split(" ", 2)
    if len(parts) < 2 or parts[1] != "101":
        raise HandshakeError(f"websocket upgrade refused: {status!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    if headers.get("upgrade", "").lower() != "websocket" or "upgrade" not in headers.get("connection", "").lower():
        raise HandshakeError("101 without Upgrade: websocket / Connection: Upgrade")
    if headers.get("sec-websocket-accept", "").encode() != accept_key(key):
        raise HandshakeError("Sec-WebSocket-Accept does not match the key")
    return end + 4


class MaskPool:
    """Masked client frames with keys drawn from a pool of `2**bits` random keys (see the module's docstring)."""

    def __init__(self, bits: int = 12, span: int = 1024) -> None:
        self.bits, self.span = bits, span
        self.keys = [os.urandom(4) for _ in range(1 << bits)]
        # each key repeated over `span` bytes as one big-endian integer: its first L bytes are `rep >> 8 * (span-L)`
        self.reps = [int.from_bytes(k * (span // 4), "big") for k in self.keys]
        self.rand = random.Random(os.urandom(16)).getrandbits

    def frame(self, payload: bytes, opcode: int = TEXT) -> bytes:
        n = len(payload)
        k = self.rand(self.bits)
        key = self.keys[k]
        rep = (self.reps[k] >> (8 * (self.span - n)) if n <= self.span
               else int.from_bytes((key * (n // 4 + 1))[:n], "big"))
        masked = (int.from_bytes(payload, "big") ^ rep).to_bytes(n, "big")
        if n < 126:
            return _HEAD7(0x80 | opcode, 0x80 | n, key) + masked
        if n < 65536:
            return _HEAD16(0x80 | opcode, 0xFE, n, key) + masked
        return _HEAD64(0x80 | opcode, 0xFF, n, key) + masked

    def close(self, code: int = 1000, reason: bytes = b"") -> bytes:
        return self.frame(code.to_bytes(2, "big") + reason, CLOSE)


def unmask(payload: bytes, key: bytes) -> bytes:
    """The payload of a masked frame (what a server does, §5.3): for tests of `MaskPool`."""
    n = len(payload)
    return (int.from_bytes(payload, "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")


class ProtocolError(ConnectionError):
    """The server broke RFC 6455 (a masked frame, a reserved bit, a continuation with nothing to continue)."""


class FrameReader:
    """The server's messages from a byte stream: `feed(data)` returns every (opcode, payload) completed by `data`.
    Data messages come whole (fragments joined, §5.4); control frames (close, ping, pong) as they arrive."""

    def __init__(self) -> None:
        self.buf = b""
        self.frag_op = -1
        self.frags: list[bytes] = []

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.buf + data if self.buf else data
        out: list[tuple[int, bytes]] = []
        i, end = 0, len(buf)
        while end - i >= 2:
            b0, b1 = buf[i], buf[i + 1]
            if b1 & 0x80 or b0 & 0x70:
                raise ProtocolError("masked or reserved-bit frame from the server")
            n = b1 & 0x7F
            h = i + 2
            if n == 126:
                if end - i < 4:
                    break
                n, h = (buf[i + 2] << 8) | buf[i + 3], i + 4
            elif n == 127:
                if end - i < 10:
                    break
                n, h = int.from_bytes(buf[i + 2:i + 10], "big"), i + 10
            if end - h < n:
                break
            i = h + n
            op = b0 & 0x0F
            if b0 & 0x80 and op:                  # a whole frame: the common case
                if op < 8 and self.frag_op >= 0:
                    raise ProtocolError("new data frame inside a fragmented message")
                out.append((op, buf[h:i]))
            elif op >= 8:
                raise ProtocolError("fragmented control frame")
            elif op:                              # first fragment
                if self.frag_op >= 0:
                    raise ProtocolError("new data frame inside a fragmented message")
                self.frag_op, self.frags = op, [buf[h:i]]
            else:                                 # continuation
                if self.frag_op < 0:
                    raise ProtocolError("continuation frame with no message to continue")
                self.frags.append(buf[h:i])
                if b0 & 0x80:
                    out.append((self.frag_op, b"".join(self.frags)))
                    self.frag_op, self.frags = -1, []
        self.buf = buf[i:] if i < end else b""
        return out
