"""One call's recording: the caller's audio and the audio the gateway sends to the caller, lined up on one clock
and streamed to a WAV file as the call goes (never held whole in memory).

Both sides arrive at the carrier's rate, at their own pace: the caller's frames in real time as the carrier
delivers them (RTP play-out, media-socket messages), the agent's frames when they are handed to the carrier —
for media-socket carriers often ahead of real time, since the carrier buffers and plays them in turn. Each side is
placed on a sample clock that runs with the event loop: a caller frame goes right after the previous one (or at
"now" after a gap such as a hold), an agent frame right after the previous one or at "now", whichever is later,
which is when the carrier plays it. A barge-in `clear` drops the agent audio not yet due, as the carrier does.
Samples are written once both sides are known up to a point: at the caller's position, or one `GAP` behind the
clock when the caller is silent on the wire (hold, a carrier that stops sending).

`dual` writes a stereo file, caller left and agent right; `mono` mixes both (saturating add). A write error
(disk full, quota, I/O error) stops this recording only: `on_error` is called once and the call goes on.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

from voicecodecs._audioop import audioop

from . import wav

#: seconds the caller's side may be silent on the wire before its channel is written as silence up to the clock
GAP = 1.0
#: seconds of agent audio that may wait ahead of the clock (a carrier buffers what it has been sent)
MAX_AHEAD = 60.0
#: seconds of audio gathered before a write (fewer, larger writes; the file is buffered as well)
COMMIT_EVERY = 0.1
#: seconds of audio between header updates, so a process that dies leaves a nearly exact header behind
HEADER_EVERY = 5.0
CHANNELS = {"mono": 1, "dual": 2}


class Recorder:
    """Mixes or interleaves the two sides of one call into a WAV file at `path`; `clock` is the event loop's."""

    def __init__(self, path: str, rate: int, channels: str, clock: Callable[[], float],
                 on_error: Callable[[OSError], None]) -> None:
        self.path = path
        self.rate = rate
        self.channels = CHANNELS[channels]
        self._clock = clock
        self._on_error = on_error
        self._t0 = clock()
        self._w = 0            # samples written
        self._c = 0            # caller's next sample
        self._a = 0            # agent's next sample
        self._cbuf = bytearray()     # caller samples [w, c)
        self._abuf = bytearray()     # agent samples [w, a)
        self._gap = int(GAP * rate)
        self._ahead = int(MAX_AHEAD * rate)
        self._commit_min = int(COMMIT_EVERY * rate)
        self._header_every = int(HEADER_EVERY * rate)
        self._next_header = self._header_every
        self.data_bytes = 0
        self.failed: OSError | None = None
        self.closed = False
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._file: BinaryIO | None = os.fdopen(fd, "wb", buffering=64 * 1024)
        try:
            self._file.write(wav.header(rate, self.channels))
        except OSError as e:
            self._fail(e)

    @property
    def duration(self) -> float:
        """Seconds of audio written so far."""
        return self._w / self.rate

    def _now(self) -> int:
        return int((self._clock() - self._t0) * self.rate)

    # -- the two sides --------------------------------------------------------------------------------------------
    def caller(self, pcm: bytes) -> None:
        """Caller audio, PCM16 at the carrier's rate, as it arrives."""
        if self._file is None:
            return
        n = len(pcm) >> 1
        now = self._now()
        if self._c < now - self._gap:                # the caller was silent on the wire: resume at "now"
            self._c = now - n
        if self._c < self._w:
            self._c = self._w
        self._put(self._cbuf, self._c, pcm)
        self._c += n
        if self._c - self._w >= self._commit_min:
            self._commit(self._c)

    def agent(self, pcm: bytes) -> None:
        """Audio handed to the carrier for the caller (engine audio, prompts, music on hold)."""
        if self._file is None:
            return
        n = len(pcm) >> 1
        now = self._now()
        at = max(self._a, self._w, now - n)
        if at - now > self._ahead:
            return
        self._put(self._abuf, at, pcm)
        self._a = at + n
        if now - self._gap - self._w >= self._commit_min:
            self._commit(now - self._gap)

    def clear_agent(self) -> None:
        """Barge-in: the carrier drops what it has not played yet, so the recording does too."""
        cut = max(self._now(), self._w)
        if self._a > cut:
            del self._abuf[(cut - self._w) * 2:]
            self._a = cut

    # -- writing --------------------------------------------------------------------------------------------------
    def _put(self, buf: bytearray, at: int, pcm: bytes) -> None:
        off = (at - self._w) * 2
        if len(buf) < off:
            buf.extend(bytes(off - len(buf)))        # silence up to `at`
        buf[off:off + len(pcm)] = pcm

    @staticmethod
    def _take(buf: bytearray, nbytes: int) -> bytes:
        out = bytes(buf[:nbytes])
        del buf[:nbytes]
        return out + bytes(nbytes - len(out)) if len(out) < nbytes else out

    def _commit(self, upto: int) -> None:
        if upto <= self._w or self._file is None:
            return
        nbytes = (upto - self._w) * 2
        caller = self._take(self._cbuf, nbytes)
        agent = self._take(self._abuf, nbytes)
        if self.channels == 1:
            frames = audioop.add(caller, agent, 2)
        else:       # interleave L R L R: numpy's strided copy is ~5x audioop.tostereo + add
            stereo = np.empty(nbytes, "<i2")
            stereo[0::2] = np.frombuffer(caller, "<i2")
            stereo[1::2] = np.frombuffer(agent, "<i2")
            frames = stereo.tobytes()
        self._w = upto
        self._write(frames)
        if self._w >= self._next_header:
            self._next_header = self._w + self._header_every
            self._update_header()

    def _write(self, data: bytes) -> None:
        f = self._file
        if f is None:
            return
        try:
            f.write(data)
        except OSError as e:
            self._fail(e)
            return
        self.data_bytes += len(data)

    def sync(self) -> None:
        """Put what has been written so far on disk with a header that says so (a live recording being served)."""
        self._update_header()

    def _update_header(self) -> None:
        f = self._file
        if f is None:
            return
        try:
            f.flush()
            wav.patch_sizes(f.fileno(), self.data_bytes)
        except OSError as e:
            self._fail(e)

    def _fail(self, error: OSError) -> None:
        """Stop writing (the file keeps what reached the disk, with a header fixed later); report once."""
        f, self._file = self._file, None
        self._cbuf.clear()
        self._abuf.clear()
        if f is not None:
            try:
                f.close()
            except OSError:
                pass
        if self.failed is None:
            self.failed = error
            self._on_error(error)

    def close(self) -> None:
        """Write what is due (the caller's audio, and the agent's up to now), fix the header and close."""
        if self.closed:
            return
        self.closed = True
        if self._file is None:
            return
        self._commit(max(self._c, min(self._a, self._now())))
        if self._file is None:
            return
        self._update_header()
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError as e:
                self._fail(e)
        self._cbuf.clear()
        self._abuf.clear()
