"""Build the SIPp pcaps for the AMD end-to-end tests: a voicemail greeting + beep, and a person saying "Hello?".

    sip-test-configs/pcap/amd_greeting_beep.pcap   greeting, 1.6 s pause, last sentence, 0.5 s, 150 ms 1000 Hz beep
    sip-test-configs/pcap/amd_human_hello.pcap     0.4 s, "Hello?", 3 s of silence (the person waits)

    python bench/amd/make_pcap.py

SIPp's `play_pcap_audio` replays the RTP packets of a pcap (Ethernet/IPv4/UDP/RTP; addresses and ports are
rewritten by SIPp) with the capture's timing, so this writes one 20 ms PCMU packet every 20 ms. The greeting is
espeak-ng speech band-limited with sox (as in the AMD corpus); the timeline is written next to the pcap as JSON so
the test knows when the beep ends.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from voicecodecs import pcm16_to_ulaw  # noqa: E402

PCAPS = ROOT / "sip-test-configs" / "pcap"
OUT = PCAPS / "amd_greeting_beep.pcap"
HUMAN_OUT = PCAPS / "amd_human_hello.pcap"
SR = 8000
GREETING = "Hi, you've reached Jordan Lee. I can't take your call right now."
TAIL = "Please leave your name and number after the tone."
PAUSE_MS = 1600
BEEP_MS = 150


def greeting_pcm(text: str = GREETING, voice: str = "en-us+f3") -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "165", "--stdout", text],
                         capture_output=True, check=True, timeout=30).stdout
    raw = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", str(SR), "-e", "signed", "-b", "16", "-c", "1",
                          "-", "sinc", "300-3400"], input=wav, capture_output=True, check=True, timeout=30).stdout
    x = np.frombuffer(raw, "<i2").astype(np.float64)
    idx = np.flatnonzero(np.abs(x) > 200)
    return x[idx[0]:idx[-1] + 1] * 0.8


def timeline() -> tuple[np.ndarray, dict]:
    """Greeting, a 1.6 s pause (longer than Twilio's 1.2 s end-of-speech: a detector that ends the greeting on
    that pause starts the message too early), a last sentence, then a short (150 ms) beep."""
    ms = lambda n: np.zeros(SR * n // 1000)  # noqa: E731
    g1, g2 = greeting_pcm(GREETING), greeting_pcm(TAIL)
    t = np.arange(SR * BEEP_MS // 1000) / SR
    beep = 9000 * np.sin(2 * np.pi * 1000 * t)
    parts = [ms(300), g1, ms(PAUSE_MS), g2]
    greeting_end = sum(len(p) for p in parts) * 1000 // SR
    parts.append(ms(500))
    beep_start = sum(len(p) for p in parts) * 1000 // SR
    parts += [beep, ms(2500)]
    x = np.concatenate(parts)
    meta = {"greeting_end_ms": greeting_end, "pause_ms": [(300 + len(g1) * 1000 // SR), PAUSE_MS],
            "beep_start_ms": beep_start, "beep_end_ms": beep_start + BEEP_MS, "beep_hz": 1000,
            "duration_ms": len(x) * 1000 // SR, "codec": "PCMU", "text": [GREETING, TAIL]}
    return np.clip(x, -32768, 32767).astype("<i2"), meta


def packet(payload: bytes, seq: int, ts: int, ssrc: int, marker: bool) -> bytes:
    rtp = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | 0, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload
    udp = struct.pack("!HHHH", 6000, 6002, 8 + len(rtp), 0) + rtp
    ip_hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq & 0xFFFF, 0, 64, 17, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    csum = sum(struct.unpack("!10H", ip_hdr))
    csum = (csum & 0xFFFF) + (csum >> 16)
    csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
    ip_hdr = ip_hdr[:10] + struct.pack("!H", csum) + ip_hdr[12:]
    return b"\x00" * 12 + b"\x08\x00" + ip_hdr + udp


def write_pcap(pcm: np.ndarray, path: Path) -> None:
    ulaw = pcm16_to_ulaw(pcm.tobytes())
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, off in enumerate(range(0, len(ulaw) - 159, 160)):
        pkt = packet(ulaw[off:off + 160], i + 1, i * 160, 0x5EED1234, i == 0)
        t_us = i * 20000
        out.append(struct.pack("<IIII", t_us // 1_000_000, t_us % 1_000_000, len(pkt), len(pkt)) + pkt)
    path.write_bytes(b"".join(out))


def human() -> tuple[np.ndarray, dict]:
    hello = greeting_pcm("Hello?", "en-gb+m3")
    lead = np.zeros(SR * 400 // 1000)
    x = np.concatenate([lead, hello, np.zeros(SR * 3)])
    meta = {"speech_end_ms": (len(lead) + len(hello)) * 1000 // SR, "duration_ms": len(x) * 1000 // SR,
            "codec": "PCMU", "text": "Hello?"}
    return np.clip(x, -32768, 32767).astype("<i2"), meta


def main() -> int:
    for path, (pcm, meta) in ((OUT, timeline()), (HUMAN_OUT, human())):
        write_pcap(pcm, path)
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"{path} ({meta['duration_ms']} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
