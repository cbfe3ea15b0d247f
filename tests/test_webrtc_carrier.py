"""WebRTC carrier, aiortc to aiortc (no browser): a client peer plays a tone, talks to an engine over the
gateway's real HTTP signalling and real ICE/DTLS/SRTP on 127.0.0.1, and gets the echo back."""
from __future__ import annotations

import asyncio
import fractions
import json
import math
import time

import aiohttp
import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from carriers.webrtc import EngineTrack, WebRTCCarrier, issue_token, verify_token
from conftest import API_KEY
from gateway.engine.base import VoiceEngine
from gateway.frames import AudioFrame, CallStarted, Dtmf, Hangup, Mark

AUTH = {"Authorization": f"Bearer {API_KEY}"}


class ToneTrack(MediaStreamTrack):
    """A microphone stand-in: a 1 kHz tone at 48 kHz, paced like a real capture device."""

    kind = "audio"

    def __init__(self, freq: float = 1000.0) -> None:
        super().__init__()
        self.freq, self._n, self._t0 = freq, 0, None

    async def recv(self):
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            await asyncio.sleep(max(0, self._t0 + self._n / 48000 - time.monotonic()))
        t = (self._n + np.arange(960)) / 48000
        pcm = (8000 * np.sin(2 * math.pi * self.freq * t)).astype("<i2").tobytes()
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(pcm)
        frame.sample_rate, frame.pts, frame.time_base = 48000, self._n, fractions.Fraction(1, 48000)
        self._n += 960
        return frame


class ProbeEngine(VoiceEngine):
    """Echoes audio; records events; '9' → send_dtmf('42'); '#' → hang up; marks its first reply."""

    sample_rate = 16000

    def __init__(self) -> None:
        self.events: list = []
        self.changed = asyncio.Event()

    def _note(self, item) -> None:
        self.events.append(item)
        self.changed.set()

    async def handle_call(self, session) -> None:
        marked = False
        while (item := await session.receive()) is not None:
            if isinstance(item, AudioFrame):
                await session.play(item.pcm)
                if not marked:
                    await session.mark("first-echo")
                    marked = True
                continue
            self._note(item)
            if isinstance(item, Dtmf) and item.digit == "9":
                await session.send_dtmf("42")
            elif isinstance(item, Dtmf) and item.digit == "#":
                await session.hangup("probe_hangup")
            elif isinstance(item, Hangup):
                return

    async def wait_for(self, pred, timeout: float = 10.0):
        async def loop():
            while True:
                for e in self.events:
                    if pred(e):
                        return e
                self.changed.clear()
                await self.changed.wait()
        return await asyncio.wait_for(loop(), timeout)


class Client:
    """The browser's side, in aiortc: offer with a tone track and a `control` data channel."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(ToneTrack())
        self.channel = self.pc.createDataChannel("control")
        self.messages: list[dict] = []
        self.got_message = asyncio.Event()
        self.channel.on("message", self._on_message)
        self.received: list[np.ndarray] = []
        self.audio = asyncio.Event()
        self.opened = asyncio.Event()
        self.channel.on("open", self.opened.set)
        self.pc.on("track", lambda track: asyncio.ensure_future(self._read(track)))
        self.answer: dict = {}

    def _on_message(self, text: str) -> None:
        self.messages.append(json.loads(text))
        self.got_message.set()

    async def _read(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            x = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0].astype(np.float64)
            self.received.append(x)
            if np.sqrt(np.mean(x**2)) > 1000:
                self.audio.set()

    async def offer(self, http: aiohttp.ClientSession, url: str, headers=AUTH, **extra) -> aiohttp.ClientResponse:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", **extra}
        resp = await http.post(url + "/webrtc/offer", json=body, headers=headers)
        if resp.status == 200:
            self.answer = await resp.json()
            await self.pc.setRemoteDescription(RTCSessionDescription(self.answer["sdp"], "answer"))
        return resp

    async def message(self, kind: str, timeout: float = 10.0) -> dict:
        async def loop():
            while True:
                for m in self.messages:
                    if m.get("type") == kind:
                        return m
                self.got_message.clear()
                await self.got_message.wait()
        return await asyncio.wait_for(loop(), timeout)

    def send(self, msg: dict) -> None:
        self.channel.send(json.dumps(msg))


@pytest.fixture
async def webrtc_gateway(make_gateway):
    gw = await make_gateway(carriers={"webrtc": lambda g: WebRTCCarrier(g, host_addresses=["127.0.0.1"])})
    probe = ProbeEngine()
    gw.engines.register("probe", probe)
    gw.engines.default = "probe"
    return gw, probe


async def call_row(http, gw, call_log_id, want_ended=True, timeout=10.0):
    async def loop():
        while True:
            async with http.get(gw.url(f"/api/v1/calls/logs/{call_log_id}"), headers=AUTH) as r:
                row = (await r.json())["call_log"]
            if row.get("ended_at") or not want_ended:
                return row
            await asyncio.sleep(0.05)
    return await asyncio.wait_for(loop(), timeout)


def dominant_hz(chunks: list[np.ndarray], rate: int = 48000) -> float:
    x = np.concatenate(chunks)[-rate // 2:]
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


async def test_tone_is_echoed_dtmf_reaches_engine_and_browser_hangup_is_logged(webrtc_gateway):
    gw, probe = webrtc_gateway
    client = Client()
    async with aiohttp.ClientSession() as http:
        resp = await client.offer(http, gw.url())
        assert resp.status == 200, await resp.text()
        await asyncio.wait_for(client.opened.wait(), 10)
        started = await probe.wait_for(lambda e: isinstance(e, CallStarted))
        assert started.carrier == "webrtc"
        await asyncio.wait_for(client.audio.wait(), 10)          # the echo came back through the engine
        await asyncio.sleep(0.6)                                   # collect half a second of it
        assert abs(dominant_hz(client.received) - 1000) < 20       # and it is our tone, not noise
        await probe.wait_for(lambda e: isinstance(e, Mark) and e.name == "first-echo")

        client.send({"type": "dtmf", "digit": "5"})
        assert (await probe.wait_for(lambda e: isinstance(e, Dtmf))).digit == "5"
        client.send({"type": "dtmf", "digit": "9"})                # engine answers with send_dtmf("42")
        assert (await client.message("dtmf"))["digits"] == "42"
        client.send({"type": "dtmf", "digit": "x"})
        assert "invalid DTMF" in (await client.message("error"))["error"]

        live = gw.calls.get(client.answer["call_id"])
        assert live is not None and live.describe()["frames_in"] > 10 and live.describe()["level_out"] > 0

        client.send({"type": "hangup"})
        row = await call_row(http, gw, client.answer["call_log_id"])
        await client.pc.close()
    assert row["channel_type"] == "webrtc"
    assert row["hangup_source"] == "user" and row["hangup_reason"] == "browser_hangup"
    assert row["call_status"] == "completed" and row["call_duration_in_seconds"] > 0.5
    assert not gw.calls.active and not gw.carriers["webrtc"].legs


async def test_engine_hangup_reaches_the_browser(webrtc_gateway):
    gw, probe = webrtc_gateway
    client = Client()
    closed = asyncio.Event()
    client.pc.on("connectionstatechange", lambda: client.pc.connectionState == "closed" and closed.set())
    async with aiohttp.ClientSession() as http:
        assert (await client.offer(http, gw.url())).status == 200
        await asyncio.wait_for(client.opened.wait(), 10)
        await probe.wait_for(lambda e: isinstance(e, CallStarted))
        client.send({"type": "dtmf", "digit": "#"})
        msg = await client.message("hangup")
        assert msg["reason"] == "probe_hangup"
        row = await call_row(http, gw, client.answer["call_log_id"])
    await client.pc.close()
    assert row["hangup_source"] == "agent" and row["channel_type"] == "webrtc"


async def test_api_hangup_of_a_webrtc_call(webrtc_gateway):
    gw, probe = webrtc_gateway
    client = Client()
    async with aiohttp.ClientSession() as http:
        assert (await client.offer(http, gw.url())).status == 200
        await asyncio.wait_for(client.opened.wait(), 10)
        await probe.wait_for(lambda e: isinstance(e, CallStarted))
        r = await http.post(gw.url(f"/api/v1/calls/{client.answer['call_log_id']}/hangup"), headers=AUTH)
        assert r.status == 200
        assert (await client.message("hangup"))["reason"] == "api_hangup"
        row = await call_row(http, gw, client.answer["call_log_id"])
    await client.pc.close()
    assert row["hangup_source"] == "system"


async def test_signalling_auth_and_bad_offers(webrtc_gateway):
    gw, _ = webrtc_gateway
    async with aiohttp.ClientSession() as http:
        offer = gw.url("/webrtc/offer")
        r = await http.post(offer, json={"sdp": "v=0", "type": "offer"})
        assert r.status == 401 and "missing credentials" in (await r.json())["error"]
        r = await http.post(offer, json={"sdp": "v=0"}, headers={"Authorization": "Bearer nope"})
        assert r.status == 401
        r = await http.post(offer, json={"type": "offer"}, headers=AUTH)
        assert r.status == 400 and (await r.json())["field"] == "sdp"
        r = await http.post(offer, json={"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}, headers=AUTH)
        assert r.status == 400 and "unusable SDP" in (await r.json())["error"]
        r = await http.post(offer, data=b"{not json", headers=AUTH)
        assert r.status == 400 and (await r.json())["field"] == "body"
        r = await http.post(offer, json={"sdp": "v=0\r\nm=audio 9 x 0\r\n", "agent_id": 999}, headers=AUTH)
        assert r.status == 404 and (await r.json())["field"] == "agent_id"
        # tokens: only with the API key, bounded lifetime
        r = await http.post(gw.url("/api/v1/webrtc/token"), json={})
        assert r.status == 401
        r = await http.post(gw.url("/api/v1/webrtc/token"), json={"ttl": 10**6}, headers=AUTH)
        assert r.status == 400 and (await r.json())["field"] == "ttl"
        r = await http.post(gw.url("/api/v1/webrtc/token"), json={"ttl": 60}, headers=AUTH)
        body = await r.json()
        assert r.status == 200 and body["call_url"].endswith(body["token"]) and API_KEY not in body["token"]
        r = await http.get(gw.url("/webrtc/agents"), headers={"Authorization": f"Bearer {body['token']}"})
        assert r.status == 200
        # nothing half-made: no call-log rows from the refused offers
        r = await http.get(gw.url("/api/v1/calls/logs"), headers=AUTH)
        assert (await r.json())["total"] == 0


async def test_call_with_a_token_scoped_to_an_agent(webrtc_gateway):
    gw, probe = webrtc_gateway
    agent = await gw.store.create_agent({"name": "Probe", "engine": "probe"})
    other = await gw.store.create_agent({"name": "Other", "engine": "echo"})
    async with aiohttp.ClientSession() as http:
        r = await http.post(gw.url("/api/v1/webrtc/token"), json={"agent_id": agent["id"]}, headers=AUTH)
        token = (await r.json())["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        r = await http.get(gw.url("/webrtc/agents"), headers=bearer)
        assert [a["id"] for a in (await r.json())["agents"]] == [agent["id"]]
        refused = Client()
        r = await refused.offer(http, gw.url(), headers=bearer, agent_id=other["id"])
        assert r.status == 403
        await refused.pc.close()
        client = Client()
        r = await client.offer(http, gw.url(), headers={}, token=token)      # token in the body works too
        assert r.status == 200, await r.text()
        started = await probe.wait_for(lambda e: isinstance(e, CallStarted))
        assert started.agent_id == agent["id"]
        await asyncio.wait_for(client.opened.wait(), 10)
        client.send({"type": "hangup"})
        row = await call_row(http, gw, client.answer["call_log_id"])
    await client.pc.close()
    assert row["agent_id"] == agent["id"]


def test_tokens_expire_and_are_bound_to_the_api_key():
    token, exp = issue_token("key-1", ttl=60, agent_id=3, now=1000.0)
    assert exp == 1060
    assert verify_token("key-1", token, now=1059.0)["agent_id"] == 3
    assert verify_token("key-1", token, now=1061.0) is None          # expired
    assert verify_token("key-2", token, now=1001.0) is None          # API key rotated
    payload, sig = token.split(".")
    assert verify_token("key-1", payload + "." + sig[:-2] + "AA", now=1001.0) is None
    assert verify_token("key-1", "garbage", now=1001.0) is None


async def test_engine_track_paces_frames_in_real_time():
    class Leg:
        def next_48k_frame(self):
            return b"\x01\x00" * 960
    track = EngineTrack(Leg())
    t0 = time.monotonic()
    frames = [await track.recv() for _ in range(11)]
    elapsed = time.monotonic() - t0
    assert [f.pts for f in frames] == [i * 960 for i in range(11)]
    assert all(f.sample_rate == 48000 and f.samples == 960 and f.time_base == fractions.Fraction(1, 48000)
               for f in frames)
    assert elapsed >= 0.19                                              # 10 intervals of 20 ms, not a burst
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_peer_that_never_connects_is_given_up(webrtc_gateway, monkeypatch):
    import carriers.webrtc as webrtc

    gw, _ = webrtc_gateway
    monkeypatch.setattr(webrtc, "CONNECT_TIMEOUT", 0.5)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(ToneTrack())
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        r = await http.post(gw.url("/webrtc/offer"), json={"sdp": pc.localDescription.sdp, "type": "offer"},
                            headers=AUTH)
        assert r.status == 200
        answer = await r.json()                 # …but the answer is never applied: ICE cannot complete
        row = await call_row(http, gw, answer["call_log_id"])
    await pc.close()
    assert row["call_status"] == "failed" and row["hangup_source"] == "carrier"
    assert row["hangup_reason"] == "connect_timeout"
    assert not gw.calls.active and not gw.carriers["webrtc"].legs


def test_decoded_frames_are_downmixed_to_mono_pcm16():
    from carriers.webrtc import to_mono_pcm16

    stereo = av.AudioFrame(format="s16", layout="stereo", samples=4)
    stereo.planes[0].update(np.array([100, 300, -200, -400, 0, 0, 32767, 32767], "<i2").tobytes())
    assert np.frombuffer(to_mono_pcm16(stereo), "<i2").tolist() == [200, -300, 0, 32767]
    mono = av.AudioFrame(format="s16", layout="mono", samples=3)
    mono.planes[0].update(np.array([1, 2, 3], "<i2").tobytes())
    assert np.frombuffer(to_mono_pcm16(mono), "<i2").tolist() == [1, 2, 3]
    planar = av.AudioFrame.from_ndarray(np.array([[0.5, -0.5], [0.5, -0.5]], np.float32), format="fltp",
                                        layout="stereo")
    planar.sample_rate = 48000
    assert np.allclose(np.frombuffer(to_mono_pcm16(planar), "<i2"), [16384, -16384], atol=2)
