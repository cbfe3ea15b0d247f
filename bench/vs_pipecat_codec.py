"""Codec path per 20 ms frame, ours vs pipecat's TwilioFrameSerializer, as a ratio.

Both sides do the same work on the same audio: a Twilio `media` message (JSON, base64 μ-law 8 kHz) → PCM16 16 kHz
for the engine, and engine PCM16 16 kHz → a Twilio `media` message. pipecat runs in its own venv (created on first
use by bench/pipecat_env.py); ours runs here doing the steps carriers/twilio_media.py takes per frame (json.loads
and base64 in; μ-law, base64 and a prebuilt message prefix out).

    python bench/vs_pipecat_codec.py [--frames 20000]
"""
from __future__ import annotations

import argparse
import base64
import json
import math
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import write_section  # noqa: E402
from bench.pipecat_env import pipecat_python, pipecat_version  # noqa: E402
from voicecodecs import StreamResampler, pcm16_to_ulaw, ulaw_to_pcm16  # noqa: E402

HERE = Path(__file__).resolve().parent


def ours(n: int) -> dict[str, float]:
    pcm8 = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 8000))) for i in range(160 * 50))
    ul = pcm16_to_ulaw(pcm8)
    frames = [ul[i * 160:(i + 1) * 160] for i in range(50)]
    msgs = [json.dumps({"event": "media", "streamSid": "MZ1", "media": {"track": "inbound", "chunk": str(i),
             "timestamp": str(i * 20), "payload": base64.b64encode(f).decode()}}) for i, f in enumerate(frames)]
    up, down = StreamResampler(8000, 16000), StreamResampler(16000, 8000)
    pcm16 = [up.process(ulaw_to_pcm16(f)) for f in frames]
    loads, b64d, b64e = json.loads, base64.b64decode, base64.b64encode
    t = time.perf_counter()
    for i in range(n):
        m = loads(msgs[i % 50])
        up.process(ulaw_to_pcm16(b64d(m["media"]["payload"])))
    t_in = (time.perf_counter() - t) / n
    prefix = '{"event":"media","streamSid":"%s","media":{"payload":"' % "MZ1"  # as carriers/twilio_media.py
    t = time.perf_counter()
    for i in range(n):
        prefix + b64e(pcm16_to_ulaw(down.process(pcm16[i % 50]))).decode("ascii") + '"}}'
    t_out = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for i in range(n):
        pcm16_to_ulaw(down.process(up.process(ulaw_to_pcm16(frames[i % 50]))))
    t_codec = (time.perf_counter() - t) / n
    return {"serializer_in_us": t_in * 1e6, "serializer_out_us": t_out * 1e6, "codec_round_trip_us": t_codec * 1e6}


def theirs(n: int) -> tuple[dict[str, float], str]:
    py = pipecat_python()
    out = subprocess.run([py, str(HERE / "peers" / "pipecat_codec_path.py"), str(n)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), pipecat_version(py)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    # best of several runs on each side, interleaved: this machine's timings vary by ±30 % from run to run
    runs_a, runs_b = [], []
    for _ in range(args.runs):
        runs_a.append(ours(args.frames))
        b, version = theirs(args.frames)
        runs_b.append(b)
    a = {k: min(r[k] for r in runs_a) for k in runs_a[0]}
    b = {k: min(r[k] for r in runs_b) for k in runs_b[0]}
    rows = [("Twilio message in → PCM16 16 kHz", "serializer_in_us"),
            ("PCM16 16 kHz → Twilio message out", "serializer_out_us"),
            ("codec only: μ-law 8k → 16k → μ-law 8k", "codec_round_trip_us")]
    lines = [f"Per 20 ms frame: mean over {args.frames} frames, best of {args.runs} interleaved runs per side; "
             f"pipecat-ai {version} (soxr stream resampler) in its "
             "own venv vs this gateway (voicecodecs polyphase FIR + audioop G.711). Ratio = pipecat / ours "
             "(higher is better for us).", "",
             "| path | ours (µs) | pipecat (µs) | ratio |", "|---|---|---|---|"]
    total_a = a["serializer_in_us"] + a["serializer_out_us"]
    total_b = b["serializer_in_us"] + b["serializer_out_us"]
    for label, key in rows:
        lines.append(f"| {label} | {a[key]:.1f} | {b[key]:.1f} | {b[key] / a[key]:.2f}× |")
    lines.append(f"| **round trip with serializer** | **{total_a:.1f}** | **{total_b:.1f}** | "
                 f"**{total_b / total_a:.2f}×** |")
    text = "\n".join(lines)
    print(text)
    write_section("vs_pipecat_codec", "Codec path vs pipecat", text, command="python bench/vs_pipecat_codec.py")


if __name__ == "__main__":
    main()
