#!/usr/bin/env python3
"""A pipecat bot as a gateway engine: a real pipecat pipeline that echoes the caller (no cloud keys needed).

    pip install 'telephony-gateway[pipecat]'

Connect mode — the gateway dials the bot for every call:

    python examples/pipecat_echo_bot.py --listen 127.0.0.1:9000
    gateway serve --engine ws://127.0.0.1:9000

Accept mode — the bot dials the gateway and keeps N idle connections:

    gateway serve --engine accept
    python examples/pipecat_echo_bot.py --connect ws://127.0.0.1:8080/engine/ws \
        --api-key "$(cat ~/.telephony-gateway/api_key)" --concurrency 4

The pipeline is `transport.input() → EchoProcessor → transport.output()`: caller audio comes back to the caller,
DTMF `#` ends the call (EndWorkerFrame → hangup `caller_requested`), `0` transfers to the agent's number
(GatewayTransferFrame), an answering machine gets its voicemail hangup. Replace EchoProcessor with STT → LLM → TTS
services to make a real bot; the gateway side stays the same (docs/pipecat.md).
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import sys
import time

from loguru import logger
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    EndWorkerFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    OutputAudioRawFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from gateway.integrations.pipecat import (
    GatewayAmdResultFrame,
    GatewayHangupFrame,
    GatewayRefused,
    GatewayTransferFrame,
    GatewayTransferResultFrame,
    GatewayTransport,
    connect,
    run_pipeline,
    serve,
)

log = logging.getLogger("pipecat-echo-bot")


class EchoProcessor(FrameProcessor):
    """Caller audio back out; `#` ends the call, `0` transfers; optionally ends by itself after `hangup_after_s`
    seconds of echo (reason `echo_done`)."""

    def __init__(self, hangup_after_s: float | None = None) -> None:
        super().__init__()
        self._hangup_after_s = hangup_after_s
        self._first_audio: float | None = None
        self._ending = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self.push_frame(OutputAudioRawFrame(audio=frame.audio, sample_rate=frame.sample_rate,
                                                      num_channels=frame.num_channels))
            self._first_audio = self._first_audio or time.monotonic()
            if (self._hangup_after_s is not None and not self._ending
                    and time.monotonic() - self._first_audio >= self._hangup_after_s):
                await self._end("echo_done")
        elif isinstance(frame, InputDTMFFrame):
            log.info("dtmf %s", frame.button.value)
            if frame.button == KeypadEntry.POUND:
                await self._end("caller_requested")
            elif frame.button == KeypadEntry.ZERO:
                await self.push_frame(GatewayTransferFrame())          # the agent's configured number
        elif isinstance(frame, GatewayAmdResultFrame):
            log.info("amd: %s", frame.answered_by)
            if frame.answered_by.startswith("machine_end") and not self._ending:
                await self._end("voicemail")                            # a real bot would leave a message first
        elif isinstance(frame, GatewayTransferResultFrame):
            log.info("transfer to %s: %s", frame.target, frame.outcome)
        elif isinstance(frame, GatewayHangupFrame):                     # the call is over; the pipeline ends
            log.info("gateway hung up: %s %s", frame.source, frame.reason)
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _end(self, reason: str) -> None:
        """Ask the pipeline to end: its EndFrame plays out what is queued, then hangs up with this reason."""
        self._ending = True
        await self.push_frame(EndWorkerFrame(reason=reason), FrameDirection.UPSTREAM)


async def echo_bot(transport: GatewayTransport, hangup_after_s: float | None = None) -> None:
    """One call: the whole pipecat side of it."""
    log.info("call %s from %s to %s at %d Hz", transport.call.call_id, transport.call.from_number,
             transport.call.to_number, transport.call.sample_rate)
    # no idle timeout: pipecat counts a pipeline idle without TTS or transcription frames (an echo has neither) and
    # would cancel it after 5 minutes; a bot with STT/TTS keeps the default
    await run_pipeline(transport, EchoProcessor(hangup_after_s), idle_timeout_secs=None)
    log.info("call %s finished", transport.call.call_id)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:9000", metavar="HOST:PORT", help="connect mode (default)")
    p.add_argument("--connect", metavar="URL", help="accept mode: the gateway's ws://…/engine/ws URL")
    p.add_argument("--api-key", help="the gateway's API key (accept mode)")
    p.add_argument("--pool", default="default", help="engine pool (agent engine spec accept:<pool>)")
    p.add_argument("--concurrency", type=int, default=4, help="calls served at once (accept mode)")
    p.add_argument("--hangup-after", type=float, metavar="SECONDS", help="end each call after this much echo")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logger.remove()                                   # pipecat logs through loguru, at DEBUG by default
    logger.add(sys.stderr, level="INFO")
    bot = functools.partial(echo_bot, hangup_after_s=args.hangup_after)
    if args.connect:
        if not args.api_key:
            p.error("--connect needs --api-key")
        sep = "&" if "?" in args.connect else "?"
        await connect(f"{args.connect}{sep}pool={args.pool}", args.api_key, bot, concurrency=args.concurrency)
    else:
        host, _, port = args.listen.rpartition(":")
        server = await serve(bot, host or "127.0.0.1", int(port))
        log.info("pipecat echo bot listening on ws://%s:%s", host, server.sockets[0].getsockname()[1])
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except GatewayRefused as e:
        raise SystemExit(str(e)) from None
    except KeyboardInterrupt:
        pass
