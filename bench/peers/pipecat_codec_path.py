"""pipecat's Twilio serializer path per 20 ms frame, timed inside the pipecat venv (prints JSON).

Same work as our bench: a Twilio `media` message (base64 μ-law 8 kHz) → InputAudioRawFrame PCM16 16 kHz
(TwilioFrameSerializer.deserialize) and an OutputAudioRawFrame 16 kHz → Twilio `media` JSON (serialize).
Also times the bare codec functions pipecat uses (ulaw_to_pcm / pcm_to_ulaw with its soxr stream resampler).
"""
import asyncio
import base64
import json
import math
import struct
import sys
import time
from types import SimpleNamespace

from loguru import logger
from pipecat.audio.utils import create_stream_resampler, pcm_to_ulaw, ulaw_to_pcm
from pipecat.frames.frames import OutputAudioRawFrame
from pipecat.serializers.twilio import TwilioFrameSerializer

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000


def frames_ulaw():
    import audioop
    pcm = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 8000))) for i in range(160 * 50))
    ul = audioop.lin2ulaw(pcm, 2)
    return [ul[i * 160:(i + 1) * 160] for i in range(50)]


async def main():
    logger.remove()
    ul = frames_ulaw()
    ser = TwilioFrameSerializer(stream_sid="MZ1", call_sid="CA1",
                                params=TwilioFrameSerializer.InputParams(auto_hang_up=False, sample_rate=16000))
    await ser.setup(SimpleNamespace(audio_in_sample_rate=16000))  # what the pipeline's setup would pass
    msgs = [json.dumps({"event": "media", "streamSid": "MZ1", "media": {"track": "inbound", "chunk": str(i),
             "timestamp": str(i * 20), "payload": base64.b64encode(f).decode()}}) for i, f in enumerate(ul)]
    pcm16 = []
    for m in msgs:
        fr = await ser.deserialize(m)
        pcm16.append(fr.audio if fr is not None else b"")  # soxr may hold the first chunk back
    t = time.perf_counter()
    for i in range(N):
        await ser.deserialize(msgs[i % 50])
    t_in = (time.perf_counter() - t) / N
    out = [OutputAudioRawFrame(audio=(p + b"\0" * 640)[:640], sample_rate=16000, num_channels=1) for p in pcm16]
    t = time.perf_counter()
    for i in range(N):
        await ser.serialize(out[i % 50])
    t_out = (time.perf_counter() - t) / N
    up, down = create_stream_resampler(), create_stream_resampler()
    t = time.perf_counter()
    for i in range(N):
        p = await ulaw_to_pcm(ul[i % 50], 8000, 16000, up)
        await pcm_to_ulaw((p + b"\0" * 640)[:640], 16000, 8000, down)
    t_codec = (time.perf_counter() - t) / N
    print(json.dumps({"serializer_in_us": t_in * 1e6, "serializer_out_us": t_out * 1e6,
                      "codec_round_trip_us": t_codec * 1e6}))


asyncio.run(main())
