"""baresip (Debian package) as an independent SIP peer on loopback: SIP over TLS and SDES-SRTP, playing a WAV
into the call and dumping the audio it decoded (its sndfile module), so a test can check that audio made it
through the encryption both ways. Bounded in time (`-t`), stopped by PID.

    async with Baresip(tmp_path, cert=issued, ca_file=ca.cert_path, user="15559876543",
                       mediaenc="srtp-mand") as bs:          # listens: bs.tls_port (SIP/TLS), auto-answers
        ...
    async with Baresip(tmp_path, ..., dial="sip:15550001111@127.0.0.1:5061;transport=tls") as bs:
        ...                                                   # calls the gateway at once
    bs.heard_tone(440)   # the decoded received audio holds the 440 Hz tone it sent (the echo engine's echo)
"""
from __future__ import annotations

import asyncio
import shutil
import socket
import wave
from pathlib import Path

import numpy as np
import pytest

from sipp import free_port, port_free

needs_baresip = pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip (Debian baresip) not installed")
MODULES = "/usr/lib/baresip/modules"
RATE = 8000


def tone_wav(path: Path, freq: float = 440.0, seconds: float = 20.0) -> Path:
    """A mono 8 kHz S16LE sine: what baresip's aufile source needs for G.711 calls."""
    t = np.arange(int(RATE * seconds)) / RATE
    pcm = (0.4 * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return path


class Baresip:
    def __init__(self, workdir: Path, *, cert_pem: str | None = None, ca_file: str | None = None,
                 user: str = "bs", mediaenc: str = "srtp-mand", transport: str = "tls", dial: str | None = None,
                 seconds: int = 30, tone_hz: float = 440.0) -> None:
        self.dir = Path(workdir) / f"baresip-{user}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert_pem, self.ca_file = cert_pem, ca_file
        self.user, self.mediaenc, self.transport, self.dial = user, mediaenc, transport, dial
        self.seconds = seconds
        self.tone_hz = tone_hz
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.output = b""

    @property
    def tls_port(self) -> int:
        """baresip listens for TLS one above its UDP/TCP port."""
        return self.port + 1

    def _write_config(self) -> None:
        wav = tone_wav(self.dir / "tone.wav", self.tone_hz, self.seconds)
        rtp = free_port(even=True)
        lines = [
            # net_interface (same as `-n`) takes an interface name or an address: without it baresip picks the
            # host's default-route address (e.g. eth0's) as its local address and advertises it in its SDP/Contact
            "poll_method epoll", "net_interface 127.0.0.1", f"sip_listen 127.0.0.1:{self.port}",
            "audio_player alsa,null", f"audio_source aufile,{wav}", "audio_alert alsa,null",
            f"rtp_ports {rtp}-{rtp + 3}", f"module_path {MODULES}",
            "module g711.so", "module aufile.so", "module alsa.so", "module srtp.so", "module sndfile.so",
            "module_app account.so", "module_app menu.so", f"snd_path {self.dir}",
        ]
        if self.cert_pem:
            lines.append(f"sip_certificate {self.cert_pem}")
        if self.ca_file:
            lines.append(f"sip_cafile {self.ca_file}")
        (self.dir / "config").write_text("\n".join(lines) + "\n")
        params = ";".join(p for p in (f"transport={self.transport}" if self.transport != "udp" else "",) if p)
        account = f"<sip:{self.user}@127.0.0.1{';' + params if params else ''}>;regint=0;answermode=auto"
        if self.mediaenc:
            account += f";mediaenc={self.mediaenc}"
        (self.dir / "accounts").write_text(account + "\n")

    async def start(self) -> Baresip:
        for _ in range(5):   # another process may take the ports between free_port() and baresip's bind
            self.port = free_port()
            if not port_free(self.port + 1, socket.SOCK_STREAM):   # its TLS listener
                continue
            self.output = b""
            self._write_config()
            args = ["baresip", "-f", str(self.dir), "-t", str(self.seconds)]
            if self.dial:
                args += ["-e", f"/dial {self.dial}"]
            self.proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL,
                                                             stdout=asyncio.subprocess.PIPE,
                                                             stderr=asyncio.subprocess.STDOUT, cwd=str(self.dir))
            self._reader = asyncio.create_task(self._read())
            if await self._ready():
                return self
            await self.stop()
        raise RuntimeError("baresip did not start:\n" + self.output.decode(errors="replace")[-2000:])

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(4096):
            self.output += chunk

    async def _ready(self) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while loop.time() < end:
            if b"baresip is ready" in self.output:
                return True
            if self.proc is None or self.proc.returncode is not None or b"Address already in use" in self.output:
                return False
            await asyncio.sleep(0.05)
        return False

    def log(self) -> str:
        return self.output.decode(errors="replace")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), 5)
        if getattr(self, "_reader", None) is not None:
            await asyncio.wait_for(self._reader, 5)

    async def __aenter__(self) -> Baresip:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def decoded(self) -> np.ndarray:
        """What baresip decoded from the gateway's media (sndfile's `dump-…-dec.wav`), as float samples."""
        dumps = sorted(self.dir.glob("dump-*-dec.wav"))
        if not dumps:
            return np.zeros(0)
        # read while baresip still writes it: libsndfile fills in the chunk sizes only at close, so take the
        # samples after the "data" chunk header (mono S16LE, as configured) rather than trusting the header
        raw = dumps[-1].read_bytes()
        at = raw.find(b"data")
        if at < 0:
            return np.zeros(0)
        body = raw[at + 8:]
        return np.frombuffer(body[:len(body) // 2 * 2], dtype="<i2").astype(np.float64) / 32768.0

    def heard_tone(self, min_seconds: float = 1.0) -> bool:
        """Whether the decoded audio holds at least `min_seconds` of our tone (20 ms blocks whose strongest
        frequency is the tone and whose level is well above silence)."""
        x = self.decoded()
        block = RATE // 50
        hits = 0
        for i in range(0, len(x) - block + 1, block):
            seg = x[i:i + block]
            if np.sqrt(np.mean(seg ** 2)) < 0.02:
                continue
            spectrum = np.abs(np.fft.rfft(seg * np.hanning(block)))
            peak = np.argmax(spectrum) * RATE / block
            hits += abs(peak - self.tone_hz) <= 60
        return hits * 0.02 >= min_seconds
