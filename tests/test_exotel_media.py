"""Exotel Voicebot websocket on real sockets: echo chunk sizes, audio formats, marks, clear, DTMF, stop, refusals."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest

from carriers.exotel import CHUNK_MAX, CHUNK_MIN, ChunkPacker, CloseCode, ExotelCarrier, MediaFormat, same_number
from exotel_helpers import API_KEY, API_TOKEN, CallWatch, FakeExotel, Monologue, add_exophone, basic, tone, ws_url
from gateway.engine.base import EngineSession, VoiceEngine
from gateway.frames import AudioFrame, CallStarted, Dtmf, Hangup, Mark
from voicecodecs import ulaw_to_pcm16
from voicecodecs._audioop import audioop


def assert_exotel_chunks(chunks: list[bytes]) -> None:
    """Exotel's documented window, written out here on purpose: at least 3.2 KB, at most 100 KB, 320 B multiples."""
    assert chunks, "no media came back"
    for c in chunks:
        assert len(c) % 320 == 0, len(c)
        assert 3200 <= len(c) <= 100_000, len(c)


# -- pure helpers ------------------------------------------------------------------------------------------------
def test_packer_emits_only_valid_chunks_and_pads_the_tail():
    p = ChunkPacker(b"\x00")
    out = []
    for _ in range(23):                      # 23 × 20 ms at 8 kHz PCM16 = 7360 B
        out += p.push(b"\x01\x00" * 160)
    assert [len(c) for c in out] == [3200, 3200]
    tail = p.flush()
    assert len(tail) == 3200 and tail[:960] == b"\x01\x00" * 480 and tail[960:] == bytes(2240)
    assert p.flush() is None
    big = p.push(b"\x00" * 250_000)
    assert all(len(c) == CHUNK_MAX for c in big[:2]) and p.pending < CHUNK_MIN


def test_media_format_is_read_not_assumed():
    assert MediaFormat.from_start({"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"}, None) \
        == MediaFormat("pcm16", 8000)
    assert MediaFormat.from_start({"encoding": "audio/x-mulaw", "sample_rate": "8000"}, None).codec == "ulaw"
    assert MediaFormat.from_start({"encoding": "audio/L16;rate=16000"}, None) == MediaFormat("pcm16", 16000)
    assert MediaFormat.from_start({"encoding": "audio/x-raw"}, 24000) == MediaFormat("pcm16", 24000)
    assert MediaFormat.from_start(None, None) == MediaFormat("pcm16", 8000)
    # "base64" (several public integrations send it) is the payload's transport: 16-bit PCM at sample_rate
    assert MediaFormat.from_start({"encoding": "base64", "sample_rate": "16000", "bit_rate": "16"}, None) \
        == MediaFormat("pcm16", 16000)
    assert MediaFormat.from_start({"encoding": "audio/x-raw", "bit_rate": "128kbps"}, None).codec == "pcm16"
    for bad in ({"encoding": "audio/opus"}, {"encoding": "audio/x-raw", "sample_rate": "11025"},
                {"encoding": "audio/x-raw", "bit_rate": "8"}, {"encoding": "audio/x-mulaw", "sample_rate": "16000"}):
        with pytest.raises(ValueError):
            MediaFormat.from_start(bad, None)


def test_exophone_number_forms_match():
    assert same_number("+918047491899", "08047491899")
    assert same_number("+918047491899", "918047491899")
    assert not same_number("+918047491899", "08047491898")


# -- echo over a real socket -----------------------------------------------------------------------------------
def rms(pcm: bytes) -> int:
    return audioop.rms(pcm, 2)


async def _echo_run(gw, url: str, *, encoding: str | None, sample_rate: str | None, rate: int, codec: str):
    watch = CallWatch(gw)
    await add_exophone(gw)
    sent = tone(1.0, rate)
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, url).connect()
        await exo.start("CA-echo", encoding=encoding, sample_rate=sample_rate)
        call = await watch.next_call()
        await exo.play(sent, rate)
        # wait until (almost) all of it came back: resampling may hold back a few samples
        bps = 1 if codec == "ulaw" else 2
        want = int(len(sent) / 2 * bps * 0.9)
        await exo.wait_for(lambda rx: len(rx.audio) >= want, timeout=10)
        assert call.bus.carrier_rate == rate
        await exo.stop()
        row = await watch.wait_ended(call)
        await exo.close()
    return exo.rx, row, sent


async def test_pcm_8k_echo_in_exotel_sized_chunks(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    rx, row, sent = await _echo_run(gw, ws_url(gw), encoding="audio/x-raw", sample_rate="8000", rate=8000,
                                    codec="pcm16")
    assert_exotel_chunks(rx.chunks)
    back = rx.audio
    assert abs(rms(back[3200:16000]) - rms(sent[3200:16000])) < 0.2 * rms(sent)   # the tone, not silence
    assert row["hangup_source"] == "user" and row["call_status"] == "completed"
    assert row["carrier_sid"] == "CA-echo" and row["channel_type"] == "exotel"
    assert row["from_number"] == "+919876543210" and row["to_number"] == "+918047491899"


async def test_base64_media_format_is_16_bit_pcm(make_gateway):
    """Regression (issue 14): `media_format.encoding: "base64"` closed the stream with 4007."""
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    rx, row, sent = await _echo_run(gw, ws_url(gw), encoding="base64", sample_rate="16000", rate=16000,
                                    codec="pcm16")
    assert_exotel_chunks(rx.chunks)
    assert abs(rms(rx.audio[6400:32000]) - rms(sent[6400:32000])) < 0.2 * rms(sent)   # the tone, not noise
    assert row["hangup_source"] == "user"


async def test_alias_path_and_mulaw_stream(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    rx, row, sent = await _echo_run(gw, ws_url(gw, "/media_exotel_community"), encoding="audio/x-mulaw",
                                    sample_rate="8000", rate=8000, codec="ulaw")
    assert_exotel_chunks(rx.chunks)
    back = ulaw_to_pcm16(rx.audio)
    assert abs(rms(back[3200:16000]) - rms(sent[3200:16000])) < 0.2 * rms(sent)
    assert row["hangup_source"] == "user"


async def test_sample_rate_from_url_when_media_format_omits_it(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    rx, _row, _ = await _echo_run(gw, ws_url(gw) + "?sample-rate=16000", encoding="audio/x-raw", sample_rate=None,
                                  rate=16000, codec="pcm16")
    assert_exotel_chunks(rx.chunks)


# -- marks, clear, DTMF ----------------------------------------------------------------------------------------
class ScriptEngine(VoiceEngine):
    """Greets, marks, waits for a digit, starts a long answer, barges in on it, marks again."""

    sample_rate = 16000

    def __init__(self) -> None:
        self.events: list[object] = []
        self.got = {name: asyncio.Event() for name in ("m1", "dtmf", "m2")}

    async def _until(self, session: EngineSession, want) -> object:
        while (item := await session.receive()) is not None:
            if not isinstance(item, AudioFrame):
                self.events.append(item)
            if want(item):
                return item
            if isinstance(item, Hangup):
                return None
        return None

    async def handle_call(self, session: EngineSession) -> None:
        if await self._until(session, lambda i: isinstance(i, CallStarted)) is None:
            return
        await session.play(tone(0.5, 16000), end_of_utterance=True)
        await session.mark("m1")
        if await self._until(session, lambda i: isinstance(i, Mark) and i.name == "m1") is None:
            return
        self.got["m1"].set()
        if await self._until(session, lambda i: isinstance(i, Dtmf)) is None:
            return
        self.got["dtmf"].set()
        await session.play(tone(3.0, 16000))
        session.clear()
        await session.mark("m2")
        if await self._until(session, lambda i: isinstance(i, Mark) and i.name == "m2") is None:
            return
        self.got["m2"].set()
        await self._until(session, lambda i: isinstance(i, Hangup))


async def test_marks_clear_and_dtmf(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="script")
    engine = ScriptEngine()
    gw.engines.register("script", engine)
    watch = CallWatch(gw)
    await add_exophone(gw)
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw)).connect()
        await exo.start("CA-marks")
        call = await watch.next_call()
        await exo.wait_for(lambda rx: any(n == "m1" for n, _ in rx.marks))
        name, before = exo.rx.marks[0]
        assert name == "m1" and before >= 8000        # 0.5 s of 8 kHz PCM16 went out before the mark
        await asyncio.wait_for(engine.got["m1"].wait(), 5)
        await exo.dtmf("5", "120")
        await asyncio.wait_for(engine.got["dtmf"].wait(), 5)
        await exo.wait_for(lambda rx: rx.clears and any(n == "m2" for n, _ in rx.marks))
        await asyncio.wait_for(engine.got["m2"].wait(), 5)
        clear_at = exo.rx.clears[0]
        assert clear_at < 8000 + 3 * 16000              # the 3 s answer was cut short, not played out
        assert_exotel_chunks(exo.rx.chunks)
        dtmf = [e for e in engine.events if isinstance(e, Dtmf)]
        assert dtmf == [Dtmf("5", 120)]
        await exo.stop()
        row = await watch.wait_ended(call)
        await exo.close()
    assert row["hangup_source"] == "user"


class MarkAfterOddAudio(VoiceEngine):
    """Streams 0.51 s (not a whole number of 20 ms frames) in 30 ms pieces, no end of utterance, then marks."""

    sample_rate = 16000

    def __init__(self) -> None:
        self.marked = asyncio.Event()

    async def handle_call(self, session: EngineSession) -> None:
        async for item in session:
            if isinstance(item, CallStarted):
                pcm = tone(0.51, 16000)
                for off in range(0, len(pcm), 960):
                    await session.play(pcm[off:off + 960])
                await session.mark("end")
            elif isinstance(item, Mark):
                self.marked.set()


async def test_mark_follows_every_byte_queued_before_it(make_gateway):
    """Regression (issue 14): the last partial frame of the audio before a mark stayed in the re-framer, so the
    mark reached Exotel ahead of it and the engine heard "played" early."""
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="odd")
    engine = MarkAfterOddAudio()
    gw.engines.register("odd", engine)
    watch = CallWatch(gw)
    await add_exophone(gw)
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw)).connect()
        await exo.start("CA-odd")
        call = await watch.next_call()
        await exo.wait_for(lambda rx: rx.marks)
        await asyncio.wait_for(engine.marked.wait(), 5)
        await exo.stop()
        await watch.wait_ended(call)
        await exo.close()
    (name, before), = exo.rx.marks
    tail = exo.rx.audio[8000:8120]            # the last 10 ms of the tone (8 kHz PCM16: 8160 bytes in all)
    assert name == "end" and rms(tail) > 1000, rms(tail)    # went out before the mark, not silence padding
    assert len(exo.rx.audio) == before                      # and nothing of it after the mark
    assert_exotel_chunks(exo.rx.chunks)


class LongAnswer(VoiceEngine):
    """Queues a 10 s answer at once (faster than real time, so the sender paces it)."""

    sample_rate = 16000

    async def handle_call(self, session: EngineSession) -> None:
        async for item in session:
            if isinstance(item, CallStarted):
                asyncio.ensure_future(session.play(tone(10.0, 16000)))


async def test_clear_reaches_the_wire_before_any_more_audio(make_gateway):
    """Regression (issue 14): with pacing on, the sender held a 200 ms chunk through its pacing wait and sent it
    before the clear (the clear ~100 ms late, and audio the engine had cancelled played first). Now the chunk in
    hand is dropped and the clear goes out at once."""
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="long")
    gw.carriers["exotel"].max_ahead = 0.3
    gw.engines.register("long", LongAnswer())
    watch = CallWatch(gw)
    await add_exophone(gw)
    arrived: list[float] = []
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw)).connect()
        await exo.start("CA-barge")
        call = await watch.next_call()
        stream = call.leg.state.stream
        # a chunk just arrived beyond the first max_ahead: the sender gathers the next 200 ms chunk (a few ms)
        # and then waits ~200 ms to send it. 50 ms later it is in that wait, holding the chunk (under heavy load
        # it may not be there yet: the test then passes on any code, it never fails wrongly)
        await exo.wait_for(lambda rx: len(rx.chunks) >= 5, timeout=10)
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        at, sent_then = loop.time(), stream.chunks_sent
        call.bus.clear()                       # what EngineSession.clear() does

        def clear_seen(rx) -> bool:
            if rx.clears and not arrived:
                arrived.append(loop.time())
            return bool(rx.clears)
        await exo.wait_for(clear_seen, timeout=5)
        chunks_before_clear, total = 0, 0
        for c in exo.rx.chunks:
            if total >= exo.rx.clears[0]:
                break
            total += len(c)
            chunks_before_clear += 1
        await exo.stop()
        await watch.wait_ended(call)
        await exo.close()
    assert chunks_before_clear == sent_then    # not one chunk more once the engine had cleared
    print(f"exotel clear latency: {(arrived[0] - at) * 1000:.1f} ms")


# -- refusals ---------------------------------------------------------------------------------------------------
async def _close_code(gw, *, start_kwargs=None, headers=None, raw: object = None) -> int | None:
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw), headers=headers).connect()
        if raw is not None:
            if isinstance(raw, bytes):
                await exo.ws.send_bytes(raw)
            else:
                await exo.ws.send_str(raw)
        else:
            await exo.start("CA-refused", **(start_kwargs or {}))
        code = await exo.wait_closed()
        await exo.close()
        return code


async def test_strangers_and_bad_input_get_close_codes(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    await add_exophone(gw)
    assert await _close_code(gw, start_kwargs={"to": "08000000009"}) == CloseCode.UNKNOWN_NUMBER
    assert await _close_code(gw, start_kwargs={"account_sid": "someone-else"}) == CloseCode.UNKNOWN_NUMBER
    assert await _close_code(gw, start_kwargs={"encoding": "audio/opus"}) == CloseCode.BAD_MEDIA_FORMAT
    assert await _close_code(gw, raw=b"\x00\x01") == CloseCode.BINARY_FRAME
    assert await _close_code(gw, raw="not json") == CloseCode.BAD_MESSAGE
    assert await _close_code(gw, raw=json.dumps({"event": "media", "media": {}})) == CloseCode.BAD_MESSAGE
    non_ascii = json.dumps({"event": "media", "media": {"payload": "\u00e9AAA"}})
    assert await _close_code(gw, raw=non_ascii) == CloseCode.BAD_MESSAGE
    wrong = basic(API_KEY, "nope")
    assert await _close_code(gw, headers={"Authorization": wrong}) == CloseCode.BAD_AUTH
    rows, total = await gw.store.list_calls()
    assert all(r["call_status"] != "in-progress" for r in rows)   # nothing left half-open


async def test_basic_auth_required_and_accepted(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    await add_exophone(gw)
    assert await _close_code(gw, headers={}) == CloseCode.BAD_AUTH
    watch = CallWatch(gw)
    good = basic(API_KEY, API_TOKEN)
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw), headers={"Authorization": good}).connect()
        await exo.start("CA-auth")
        call = await watch.next_call()
        await exo.play(tone(0.5))
        await exo.wait_for(lambda rx: len(rx.chunks) >= 1)
        await exo.stop()
        row = await watch.wait_ended(call)
        await exo.close()
    assert row["answered_at"] is not None


async def test_socket_drop_without_stop_ends_call_as_carrier(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    await add_exophone(gw)
    watch = CallWatch(gw)
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw)).connect()
        await exo.start("CA-drop")
        call = await watch.next_call()
        await exo.close()
        row = await watch.wait_ended(call)
    assert row["hangup_source"] == "carrier" and row["hangup_reason"] == "stream_closed"



class DtmfOut(VoiceEngine):
    sample_rate = 16000

    async def handle_call(self, session: EngineSession) -> None:
        while (item := await session.receive()) is not None:
            if isinstance(item, CallStarted):
                await session.send_dtmf("5")
                await session.mark("dtmf-sent")
            elif isinstance(item, Hangup):
                return


def dominant_freqs(pcm: bytes, rate: int, n: int = 2) -> list[int]:
    x = np.frombuffer(pcm, "<i2").astype(float)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    peaks: list[int] = []
    for i in np.argsort(spec)[::-1]:
        f = int(round(freqs[i]))
        if all(abs(f - p) > 60 for p in peaks):
            peaks.append(f)
        if len(peaks) == n:
            break
    return sorted(peaks)


async def test_engine_dtmf_is_played_in_band(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="dtmf")
    gw.engines.register("dtmf", DtmfOut())
    await add_exophone(gw)
    watch = CallWatch(gw)
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw)).connect()
        await exo.start("CA-dtmf-out")
        call = await watch.next_call()
        await exo.wait_for(lambda rx: any(n == "dtmf-sent" for n, _ in rx.marks))
        assert_exotel_chunks(exo.rx.chunks)
        tone_part = exo.rx.audio[:1600]                              # the first 100 ms: the tone itself
        lo, hi = dominant_freqs(tone_part, 8000)
        assert abs(lo - 770) < 25 and abs(hi - 1336) < 25          # key "5" (Q.23)
        await exo.stop()
        await watch.wait_ended(call)
        await exo.close()


async def test_fast_engine_audio_is_paced_to_playback(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="mono")
    gw.engines.register("mono", Monologue())
    gw.carriers["exotel"].max_ahead = 0.5
    await add_exophone(gw)
    watch = CallWatch(gw)
    arrivals: list[tuple[float, int]] = []
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw)).connect()
        await exo.start("CA-pace")
        call = await watch.next_call()

        def seen(rx) -> bool:
            if not arrivals or arrivals[-1][1] != len(rx.audio):
                arrivals.append((asyncio.get_running_loop().time(), len(rx.audio)))
            return len(rx.audio) >= 32000
        await exo.wait_for(seen, timeout=10)
        await exo.stop()
        await watch.wait_ended(call)
        await exo.close()
    t0 = arrivals[0][0]                          # playback starts with the first chunk
    for t, total in arrivals:
        # never more than max_ahead (+ the chunk in flight) ahead of real-time playback
        assert total / 16000 - (t - t0) <= 0.5 + 0.2 + 0.1, (total, t - t0)
    assert arrivals[-1][0] - arrivals[0][0] >= 2.0 - 0.5 - 0.2 - 0.1


async def test_start_timeout_and_duplicate_start(make_gateway):
    gw = await make_gateway(carriers={"exotel": ExotelCarrier}, engine="echo")
    gw.carriers["exotel"].start_timeout = 0.3
    await add_exophone(gw)
    watch = CallWatch(gw)
    async with aiohttp.ClientSession() as s:
        exo = await FakeExotel(s, ws_url(gw)).connect()            # only `connected`, never `start`
        assert await exo.wait_closed() == CloseCode.START_TIMEOUT
        exo = await FakeExotel(s, ws_url(gw)).connect()
        await exo.start("CA-dup")
        call = await watch.next_call()
        await exo.start("CA-dup")
        assert await exo.wait_closed() == CloseCode.BAD_MESSAGE
        row = await watch.wait_ended(call)
    assert row["hangup_source"] == "carrier" and row["hangup_reason"].startswith("stream_error")
