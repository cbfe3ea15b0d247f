"""pipecat's standard Twilio setup with an echo in place of the bot, for side-by-side benchmarks.

Runs ONLY inside the benchmark's own virtualenv (bench/.venv-pipecat, created by bench/pipecat_env.py); pipecat
is never a dependency of the gateway. FastAPI websocket transport + TwilioFrameSerializer (μ-law 8 kHz ⇄ PCM16
16 kHz with pipecat's soxr stream resampler) + a processor that turns each input audio frame into output audio.

    bench/.venv-pipecat/bin/python bench/peers/pipecat_twilio_echo.py --port 8766
"""
import argparse
import json
import sys

import uvicorn
from fastapi import FastAPI, WebSocket
from loguru import logger
from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport


class Echo(FrameProcessor):
    async def process_frame(self, frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self.push_frame(OutputAudioRawFrame(audio=frame.audio, sample_rate=frame.sample_rate,
                                                      num_channels=frame.num_channels))
        else:
            await self.push_frame(frame, direction)


app = FastAPI()


@app.websocket("/twilio/media")
async def media(websocket: WebSocket):
    await websocket.accept()
    # Twilio sends `connected` then `start`; pipecat's examples read them before building the serializer.
    start = None
    for _ in range(2):
        msg = json.loads(await websocket.receive_text())
        if msg.get("event") == "start":
            start = msg
            break
    if start is None:
        await websocket.close(1008)
        return
    serializer = TwilioFrameSerializer(
        stream_sid=start["start"]["streamSid"], call_sid=start["start"]["callSid"],
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False))
    transport = FastAPIWebsocketTransport(websocket, FastAPIWebsocketParams(
        audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer))
    task = PipelineTask(Pipeline([transport.input(), Echo(), transport.output()]),
                        params=PipelineParams(audio_in_sample_rate=16000, audio_out_sample_rate=16000))

    @transport.event_handler("on_client_disconnected")
    async def _gone(_transport, _client):
        await task.cancel()

    await PipelineRunner(handle_sigint=False).run(task)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    logger.remove()  # pipecat logs every frame at DEBUG by default; production runs at WARNING
    logger.add(sys.stderr, level="WARNING")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", ws="websockets")
