"""Seed-shaped transfer settings (issue 14): several options, `enabled`, dynamic numbers checked against the
options, conditions handed to the engine, and the transfer_message said before the transfer on any carrier (the
engine protocol's `say`, or a WAV the gateway plays)."""
from __future__ import annotations

import asyncio
import json
import wave

import pytest
from aiohttp import web

from gateway import speech
from gateway.engine.base import VoiceEngine
from gateway.frames import AudioFrame, CallStarted, HangupSource, TransferRequest, TransferResult
from gateway.transfer import TransferRefused, resolve
from test_api_fakes import api  # noqa: F401
from test_engine_ws import Engine, FakeLeg, next_out, recv_json

T = 5.0
SALES, SUPPORT, SUPPORT_B, OTHER = "+14155550101", "+14155550102", "+14155550103", "+14155550199"


def seed_settings(**over) -> dict:
    transfer = {"enabled": True, "transfer_options": [
        {"number": SALES, "type": "static", "transfer_condition": "caller wants to buy",
         "transfer_message": "Connecting you to sales"},
        {"number": SUPPORT, "type": "dynamic", "backup_numbers": [SUPPORT_B],
         "transfer_condition": "caller has a problem", "transfer_message": "One moment, support is coming"}]}
    transfer.update(over)
    return {"transfer": transfer}


# -- what a request means ---------------------------------------------------------------------------------------
def test_resolve_options():
    agent = {"settings": seed_settings()}
    assert resolve(agent, None, by_engine=True) == TransferRequest(SALES, [], "Connecting you to sales")
    assert resolve(agent, SUPPORT, by_engine=True) == \
        TransferRequest(SUPPORT, [SUPPORT_B], "One moment, support is coming")
    with pytest.raises(TransferRefused, match="not one of the agent's transfer options"):
        resolve(agent, OTHER, by_engine=True)             # a dynamic option binds the engine to the list
    assert resolve(agent, OTHER, by_engine=False).number == OTHER    # an operator (API) may send anywhere
    off = {"settings": seed_settings(enabled=False)}
    with pytest.raises(TransferRefused, match="disabled"):
        resolve(off, None, by_engine=True)
    dynamic_only = {"settings": {"transfer": {"transfer_options": [{"number": SUPPORT, "type": "dynamic"}]}}}
    with pytest.raises(TransferRefused, match="engine must name the number"):
        resolve(dynamic_only, None, by_engine=True)
    legacy = {"settings": {"transfer": {"number": SALES, "backup_numbers": [SUPPORT]}}}
    assert resolve(legacy, None, by_engine=True) == TransferRequest(SALES, [SUPPORT], None)
    assert resolve(legacy, OTHER, by_engine=True).number == OTHER    # static only: as before


# -- the API accepts and checks the shape ----------------------------------------------------------------------
async def test_api_accepts_seed_shape_and_names_bad_fields(api):
    status, body = await api.post("/agents", json={"name": "a", "settings": seed_settings()})
    assert status == 201, body
    opts = body["agent"]["settings"]["transfer"]["transfer_options"]
    assert [o["number"] for o in opts] == [SALES, SUPPORT] and opts[1]["backup_numbers"] == [SUPPORT_B]
    for options, field in (([{"type": "static"}], "settings.transfer.transfer_options[0].number"),
                           ([{"number": "4155550101"}], "settings.transfer.transfer_options[0].number"),
                           ([{"number": SALES, "type": "psychic"}], "settings.transfer.transfer_options[0].type"),
                           ([{"number": SALES, "colour": "red"}], "settings.transfer.transfer_options[0].colour"),
                           ([{"number": SALES, "transfer_message": "/nope/missing.wav"}],
                            "settings.transfer.transfer_options[0].transfer_message"),
                           ("x", "settings.transfer.transfer_options")):
        status, body = await api.post("/agents", json={"name": "a", "settings": {"transfer": {
            "transfer_options": options}}})
        assert status == 400 and body["field"] == field, (options, body)


# -- on a call --------------------------------------------------------------------------------------------------
async def _call(gw, engine: str, settings: dict, leg_class: type = FakeLeg):
    agent = await gw.store.create_agent({"name": "bot", "engine": engine, "settings": settings})
    call = await gw.calls.create(carrier="test", direction="inbound", from_number="+15550001111",
                                 to_number="+15550002222", agent=agent)
    leg = leg_class()
    await call.attach(leg, 8000)
    return call, leg


async def test_engine_gets_conditions_and_says_the_message_before_the_transfer(make_gateway):
    got: dict = {}

    async def script(ws, engine):
        got["start"] = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "transfer", "number": OTHER}))          # not an option: refused
        got["refused"] = await recv_json(ws, "transfer_result")
        await ws.send(json.dumps({"type": "transfer", "number": SUPPORT}))        # the dynamic option
        got["say"] = await recv_json(ws, "say")
        await ws.send(bytes(320 * 3))                                             # speaks it…
        await ws.send(json.dumps({"type": "transfer", "number": got["say"]["number"]}))   # …then transfers
        got["result"] = await recv_json(ws, "transfer_result")

    async with Engine(script) as engine:
        gw = await make_gateway()
        call, leg = await _call(gw, engine.url("?sample_rate=8000"), seed_settings())
        for _ in range(3):   # the spoken message goes out before the transfer is carried out
            assert isinstance(await next_out(call), AudioFrame)
        drain = asyncio.ensure_future(next_out(call))    # carries the transfer out through the leg
        for _ in range(500):
            if "result" in got:
                break
            await asyncio.sleep(0.01)
        drain.cancel()
        await call.end(HangupSource.USER, "done")
        await asyncio.wait_for(engine.done.wait(), T)
    t = got["start"]["transfer"]
    assert t["enabled"] is True and [o["transfer_condition"] for o in t["options"]] == \
        ["caller wants to buy", "caller has a problem"]
    assert got["refused"]["outcome"].startswith("failed") and "not one of" in got["refused"]["outcome"]
    assert got["say"] == {"type": "say", "text": "One moment, support is coming", "then": "transfer",
                          "number": SUPPORT}
    assert [(r.number, r.backup_numbers, r.message) for r in leg.transfers] == [(SUPPORT, [SUPPORT_B], None)]
    assert got["result"]["outcome"] == "completed"


async def carry_out_until(call, done) -> list:
    """Act as the carrier's sender (next_outbound carries transfers out through the leg) until `done()`; the
    items it was handed, in order."""
    items: list = []

    async def sender():
        while True:
            items.append(await call.next_outbound())
    task = asyncio.ensure_future(sender())
    try:
        for _ in range(int(T / 0.01)):
            if done():
                return items
            await asyncio.sleep(0.01)
        raise AssertionError("condition not met")
    finally:
        task.cancel()


class Transferrer(VoiceEngine):
    """Cannot speak text; transfers (to the first static option) as soon as the call starts."""

    sample_rate = 8000

    def __init__(self) -> None:
        self.results: list[TransferResult] = []

    async def handle_call(self, session) -> None:
        async for item in session:
            if isinstance(item, CallStarted):
                await session.transfer()
            elif isinstance(item, TransferResult):
                self.results.append(item)


def one_second_wav(path) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x10\x00" * 16000)


@pytest.mark.parametrize("where", ["path", "url", "url-not-allowed"])
async def test_wav_message_is_played_by_the_gateway_before_the_transfer(make_gateway, tmp_path, where):
    path = tmp_path / "connecting.wav"
    one_second_wav(path)
    runner = None
    message = str(path)
    if where.startswith("url"):   # a WAV URL is fetched (here from a loopback server) and played the same way
        app = web.Application()
        async def serve_wav(request: web.Request) -> web.FileResponse:
            return web.FileResponse(path)
        app.router.add_get("/prompts/connecting.wav", serve_wav)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        message = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/prompts/connecting.wav"
    try:
        # the loopback server is only reachable with the SSRF guard lifted (gateway/netguard.py)
        gw = await make_gateway(allow_private_webhooks=where != "url-not-allowed")
        gw.engines.register("t", Transferrer())
        settings = {"transfer": {"transfer_options": [{"number": SALES, "transfer_message": message}]}}
        call, leg = await _call(gw, "t", settings)
        items = await carry_out_until(call, lambda: leg.transfers)
    finally:
        if runner is not None:
            await runner.cleanup()
    played = [i for i in items if isinstance(i, AudioFrame)]
    if where == "url-not-allowed":   # not fetched: nothing played, the transfer still happens
        assert played == []
    else:
        assert len(items) == 50 and len(played) == 50   # 1 s, all before the transfer
    assert leg.transfers[0] == TransferRequest(SALES, [], None)


class SayingLeg(FakeLeg):
    says_text = True        # like Twilio's leg: <Say> before <Dial>


async def test_a_carrier_that_says_text_gets_the_message(make_gateway):
    gw = await make_gateway()
    gw.engines.register("t", Transferrer())
    call, leg = await _call(gw, "t", seed_settings(), SayingLeg)
    items = await carry_out_until(call, lambda: leg.transfers)
    assert leg.transfers[0] == TransferRequest(SALES, [], "Connecting you to sales")   # Twilio <Say>s it
    assert not [i for i in items if isinstance(i, AudioFrame)]


@pytest.mark.skipif(speech.synthesizer() is None, reason="espeak-ng or flite not installed")
async def test_text_message_is_spoken_by_the_gateway_when_engine_and_carrier_cannot(make_gateway):
    """Issue 14: on SIP, Exotel, Vonage… with the echo/greeting engines the text used to be dropped."""
    gw = await make_gateway()
    gw.engines.register("t", Transferrer())
    call, leg = await _call(gw, "t", seed_settings())
    items = await carry_out_until(call, lambda: leg.transfers)
    spoken = await speech.synthesize("Connecting you to sales", 8000)
    frames = [i for i in items if isinstance(i, AudioFrame)]
    assert items[:len(frames)] == frames                 # all of it before the transfer
    assert abs(len(frames) - len(spoken) / 320) <= 1      # 20 ms frames at 8 kHz
    assert b"".join(f.pcm for f in frames)[:len(spoken)] == spoken
    assert leg.transfers[0] == TransferRequest(SALES, [], None)   # said here, not again by the carrier


async def test_disabled_transfers_are_refused_to_the_engine(make_gateway):
    gw = await make_gateway()
    engine = Transferrer()
    gw.engines.register("t", engine)
    call, leg = await _call(gw, "t", seed_settings(enabled=False))
    for _ in range(200):
        if engine.results:
            break
        await asyncio.sleep(0.01)
    assert engine.results and "disabled" in engine.results[0].outcome and leg.transfers == []
