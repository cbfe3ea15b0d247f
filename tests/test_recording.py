"""Call recording: the recorder's alignment and WAV files, then real Twilio Media Streams calls recorded end to end
(served by GET /api/v1/calls/{id}/recording with Range), a disk that is full (the kernel's /dev/full), a recording
left open by a dead process and repaired at the next start, retention, and the settings' checks."""
from __future__ import annotations

import asyncio
import io
import os
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from conftest import API_KEY
from fakes.twilio_env import twilio_env  # noqa: F401  (fixture)
from gateway.config import Settings
from gateway.recording.recorder import Recorder
from gateway.recording.wav import HEADER_BYTES, fix_header, read_header
from gateway.runtime import Gateway
from sipp import metric_value
from voicecodecs import pcm16_to_ulaw

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def tone(seconds: float, rate: int = 8000, freq: float = 440.0, amp: int = 8000) -> bytes:
    n = int(seconds * rate)
    return (np.sin(2 * np.pi * freq * np.arange(n) / rate) * amp).astype("<i2").tobytes()


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(float) ** 2))) if len(samples) else 0.0


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def read_wav(data: bytes) -> tuple[int, int, np.ndarray]:
    with wave.open(io.BytesIO(data)) as w:
        return w.getframerate(), w.getnchannels(), np.frombuffer(w.readframes(w.getnframes()), "<i2")


# -- the recorder --------------------------------------------------------------------------------------------------
def test_dual_puts_caller_left_and_agent_right_on_one_clock(tmp_path):
    clock, errors = Clock(), []
    path = str(tmp_path / "a" / "call.wav")
    rec = Recorder(path, 8000, "dual", clock, errors.append)
    caller, agent = tone(0.02, freq=300), tone(0.02, freq=1000)
    for i in range(100):                  # 2 s: the caller talks the first second, the agent the second
        clock.t += 0.02
        rec.caller(caller if i < 50 else bytes(320))
        if i >= 50:
            rec.agent(agent)
    rec.close()
    rate, channels, s = read_wav(Path(path).read_bytes())
    assert (rate, channels, errors) == (8000, 2, [])
    left, right = s[0::2], s[1::2]
    assert abs(len(left) - 16000) <= 160
    assert rms(left[:7000]) > 4000 and rms(left[9000:]) < 10
    assert rms(right[:7000]) < 10 and rms(right[9000:15000]) > 4000
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_mono_mixes_and_a_clear_drops_agent_audio_not_yet_played(tmp_path):
    clock = Clock()
    path = str(tmp_path / "m.wav")
    rec = Recorder(path, 8000, "mono", clock, lambda e: None)
    rec.agent(tone(3.0, freq=700))        # a media-socket carrier is handed 3 s at once, plays it in real time
    for _ in range(50):                   # 1 s later the caller barges in
        clock.t += 0.02
        rec.caller(bytes(320))
    rec.clear_agent()
    for _ in range(100):
        clock.t += 0.02
        rec.caller(bytes(320))
    rec.close()
    _, channels, s = read_wav(Path(path).read_bytes())
    assert channels == 1
    assert rms(s[800:7200]) > 4000       # the first second of the agent's audio was played
    assert rms(s[8800:]) < 10            # the 2 s the clear dropped are not in the recording


def test_the_caller_silent_on_the_wire_still_lets_agent_audio_through(tmp_path):
    """On hold the caller sends nothing: the agent's side (music) is written with the caller's channel silent."""
    clock = Clock()
    path = str(tmp_path / "h.wav")
    rec = Recorder(path, 8000, "dual", clock, lambda e: None)
    for _ in range(150):
        clock.t += 0.02
        rec.agent(tone(0.02, freq=500))
    rec.close()
    _, _, s = read_wav(Path(path).read_bytes())
    assert len(s) // 2 >= 8000 * 2.9
    assert rms(s[1::2]) > 4000 and rms(s[0::2]) == 0


def test_a_recording_whose_writer_died_is_repaired_to_its_length(tmp_path):
    clock = Clock()
    path = str(tmp_path / "crash.wav")
    rec = Recorder(path, 8000, "dual", clock, lambda e: None)
    for _ in range(200):
        clock.t += 0.02
        rec.caller(tone(0.02))
    rec._file.flush()                     # what a killed process leaves: the samples, a header behind them
    os.truncate(path, os.path.getsize(path) - 1)     # and half a sample frame
    with open(path, "rb") as f:
        assert read_header(f)[2] < os.path.getsize(path) - HEADER_BYTES - 4
    assert fix_header(path) is True
    assert fix_header(path) is False      # idempotent
    rate, channels, s = read_wav(Path(path).read_bytes())
    assert (rate, channels) == (8000, 2) and len(s) * 2 == (os.path.getsize(path) - HEADER_BYTES) // 4 * 4


# -- end to end over Twilio Media Streams -----------------------------------------------------------------------------
async def _get(gw: Gateway, path: str, **headers: str) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as s, s.get(gw.url(path), headers={**AUTH, **headers}) as r:
        return r.status, dict(r.headers), await r.read()


async def test_a_recorded_twilio_call_is_served_as_dual_channel_wav_with_ranges(twilio_env):
    env = await twilio_env(settings={"recording": {"enabled": True, "channels": "dual"}})
    call_id, call_sid, _ = await env.inbound()
    async with env.stream() as client:
        await client.start(call_id, call_sid=call_sid, account_sid=env.account.sid, agent_id=str(env.agent["id"]))
        await client.play(pcm16_to_ulaw(tone(1.0, freq=400)))
        await client.play(pcm16_to_ulaw(bytes(16000)))           # a second of silence: the echo comes back
        await client.wait_for(lambda: len(client.got.media) >= 80, timeout=5)
        row = await env.wait_row(call_id, lambda r: r["recording_status"] == "recording")
        url = row["recording_url"]
        assert url == f"{env.gw.settings.public_base}/api/v1/calls/{row['id']}/recording"
        status, _, live = await _get(env.gw, f"/api/v1/calls/{row['id']}/recording")    # served while live
        assert status == 200 and live[:4] == b"RIFF"
        await client.stop(call_sid=call_sid, account_sid=env.account.sid)
    row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
    assert row["recording_status"] == "stored", row
    status, headers, body = await _get(env.gw, f"/api/v1/calls/{call_id}/recording")
    assert status == 200 and headers["Content-Type"] == "audio/wav"
    rate, channels, s = read_wav(body)
    assert (rate, channels) == (8000, 2)
    left, right = s[0::2], s[1::2]
    assert 1.8 <= len(left) / 8000 <= 4.0
    assert rms(left[: 6000]) > 2000                  # the caller's tone, left
    assert rms(right) > 500                          # the echo of it, right
    assert rms(left[10000:]) < 200                   # the caller's silence
    status, headers, part = await _get(env.gw, f"/api/v1/calls/{row['id']}/recording", Range="bytes=0-99")
    assert status == 206 and part == body[:100] and headers["Content-Range"] == f"bytes 0-99/{len(body)}"
    async with aiohttp.ClientSession() as s, s.get(env.gw.url(f"/api/v1/calls/{row['id']}/recording")) as r:
        assert r.status == 401                       # the API key is required
    async with aiohttp.ClientSession() as s, s.get(env.gw.url("/api/v1/calls/logs"), headers=AUTH) as r:
        logs = (await r.json())["call_log_data"]
    assert logs[0]["recording_url"] == url and logs[0]["recording"]["channels"] == "dual"
    assert "path" not in logs[0]["recording"]


async def test_calls_without_recording_have_recording_url_false_and_404(twilio_env):
    env = await twilio_env()
    call_id, call_sid, _ = await env.inbound()
    async with env.stream() as client:
        await client.start(call_id, call_sid=call_sid, account_sid=env.account.sid, agent_id=str(env.agent["id"]))
        await client.play(pcm16_to_ulaw(tone(0.2)))
        await client.stop(call_sid=call_sid, account_sid=env.account.sid)
    row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
    assert row["recording_status"] is None
    status, _, body = await _get(env.gw, f"/api/v1/calls/{row['id']}/recording")
    assert status == 404 and b"has no recording" in body
    assert os.listdir(env.gw.settings.data_dir).count("recordings") == 0


async def test_a_full_disk_stops_the_recording_not_the_call(twilio_env):
    env = await twilio_env(settings={"recording": {"enabled": True}})
    call_id, call_sid, _ = await env.inbound()
    # the recording's path is known from the call id: make it the kernel's always-full device (ENOSPC on write)
    day = datetime.now(UTC)
    path = os.path.join(env.gw.settings.recordings_path, f"{day:%Y/%m/%d}", f"{call_id}.wav")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink("/dev/full", path)
    async with env.stream() as client:
        await client.start(call_id, call_sid=call_sid, account_sid=env.account.sid, agent_id=str(env.agent["id"]))
        await client.play(pcm16_to_ulaw(tone(3.0)))          # 64 KiB of stereo: the buffer flushes, ENOSPC
        await client.wait_for(lambda: env.gw.recordings.write_failures == 1, timeout=5)
        before = len(client.got.media)
        await client.play(pcm16_to_ulaw(tone(0.5)))
        await client.wait_for(lambda: len(client.got.media) >= before + 20, timeout=5)   # the echo goes on
        await client.stop(call_sid=call_sid, account_sid=env.account.sid)
    row = await env.wait_row(call_id, lambda r: r["ended_at"] is not None)
    assert row["recording_status"] == "failed" and "No space left" in row["recording"]["error"]
    assert row["call_status"] == "completed"
    async with aiohttp.ClientSession() as s, s.get(env.gw.url("/metrics")) as r:
        text = await r.text()
    assert metric_value(text, "gateway_recording_write_failures_total") == 1


async def test_a_recording_left_open_by_a_dead_process_is_repaired_and_served_after_restart(tmp_path):
    settings = dict(host="127.0.0.1", http_port=0, sip_host="127.0.0.1", sip_port=0, data_dir=str(tmp_path),
                    api_key=API_KEY, engine="echo", enable_sip=False, node_id="gw-a")
    # what a killed process leaves: a call-log row still recording, and a WAV whose header is behind its samples
    gw = Gateway(Settings(**settings), carriers={})
    await gw.store.open()
    path = os.path.join(gw.settings.recordings_path, "2026/01/02/dead.wav")
    rec = Recorder(path, 8000, "dual", Clock(), lambda e: None)
    for _ in range(150):
        rec.caller(tone(0.02))
    rec._file.flush()
    row = await gw.store.create_call({"call_uuid": "dead", "channel_type": "twilio", "call_direction": "inbound",
                                      "call_status": "in-progress", "owner": "gw-a", "recording_status": "recording",
                                      "recording": {"store": "file", "path": path, "node": "gw-a",
                                                    "relative": "2026/01/02/dead.wav"},
                                      "recording_url": "http://x/api/v1/calls/1/recording"})
    await gw.store.close()
    with open(path, "rb") as f:
        assert read_header(f)[2] == 0
    gw = Gateway(Settings(**settings), carriers={})
    await gw.start()                       # closes the orphan call, then the sweep finishes its recording
    try:
        async def stored() -> dict:
            while (r := await gw.store.get_call(row["id"]))["recording_status"] != "stored":
                await asyncio.sleep(0.02)
            return r
        done = await asyncio.wait_for(stored(), 5)
        assert done["hangup_reason"] == "gateway_restart"
        rate, channels, s = read_wav(Path(path).read_bytes())
        assert (rate, channels) == (8000, 2) and len(s) // 2 == 150 * 160
        status, _, body = await _get(gw, f"/api/v1/calls/{row['id']}/recording")
        assert status == 200 and read_wav(body)[2].tobytes() == s.tobytes()
    finally:
        await gw.stop()


async def test_retention_deletes_old_recordings_and_clears_their_url(make_gateway):
    gw = await make_gateway(recording_retention_days=30, enable_sip=False)
    rows = []
    for age, name in ((40, "old"), (1, "new")):
        path = os.path.join(gw.settings.recordings_path, f"{name}.wav")
        rec = Recorder(path, 8000, "mono", Clock(), lambda e: None)
        rec.caller(tone(0.5))
        rec.close()
        rows.append(await gw.store.create_call({
            "call_uuid": name, "channel_type": "sip", "call_direction": "inbound", "call_status": "completed",
            "created_at": datetime.now(UTC) - timedelta(days=age), "ended_at": datetime.now(UTC),
            "recording_status": "stored", "recording_url": f"http://x/{name}",
            "recording": {"store": "file", "path": path, "node": gw.settings.node_id}}))
    await gw.recordings.sweep()
    old, new = [await gw.store.get_call(r["id"]) for r in rows]
    assert old["recording_status"] == "expired" and old["recording_url"] is None
    assert not os.path.exists(os.path.join(gw.settings.recordings_path, "old.wav"))
    assert new["recording_status"] == "stored" and os.path.exists(new["recording"]["path"])
    status, _, body = await _get(gw, f"/api/v1/calls/{old['id']}/recording")
    assert status == 404 and b"retention" in body
    assert gw.recordings.expired == 1


@pytest.mark.parametrize("body, field", [
    ({"recording": {"enabled": "maybe"}}, "settings.recording.enabled"),
    ({"recording": {"enabled": True, "channels": "quad"}}, "settings.recording.channels"),
    ({"recording": {"enabled": True, "format": "mp3"}}, "settings.recording.format"),
])
async def test_recording_settings_are_checked_naming_the_field(make_gateway, body, field):
    gw = await make_gateway(enable_sip=False)
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url("/api/v1/agents"), json={"name": "a", "settings": body}, headers=AUTH) as r:
            assert r.status == 400 and (await r.json())["field"] == field


async def test_recording_settings_patch_merges_per_section(make_gateway):
    gw = await make_gateway(enable_sip=False)
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url("/api/v1/agents"), headers=AUTH, json={
                "name": "a", "settings": {"recording": {"enabled": True, "channels": "mono"}}}) as r:
            agent = (await r.json())["agent"]
        async with s.patch(gw.url(f"/api/v1/agents/{agent['id']}"), headers=AUTH,
                           json={"settings": {"recording": {"enabled": False}}}) as r:
            assert (await r.json())["agent"]["settings"]["recording"] == {"enabled": False, "channels": "mono"}


async def test_cli_downloads_a_recording_and_leaves_no_file_on_error(make_gateway, monkeypatch, tmp_path, capsys):
    from gateway.cli import main
    gw = await make_gateway(enable_sip=False)
    monkeypatch.setenv("GATEWAY_URL", gw.url())
    monkeypatch.setenv("GATEWAY_API_KEY", API_KEY)
    path = os.path.join(gw.settings.recordings_path, "c.wav")
    rec = Recorder(path, 8000, "dual", Clock(), lambda e: None)
    rec.caller(tone(1.0))
    rec.close()
    row = await gw.store.create_call({"call_uuid": "c", "channel_type": "sip", "call_direction": "inbound",
                                      "call_status": "completed", "ended_at": datetime.now(UTC),
                                      "recording_status": "stored", "recording": {"store": "file", "path": path}})
    out = str(tmp_path / "got.wav")
    code = await asyncio.wait_for(asyncio.to_thread(main, ["calls", "recording", str(row["id"]), "-o", out]), 30)
    assert code == 0 and Path(out).read_bytes() == Path(path).read_bytes()
    missing = str(tmp_path / "none.wav")
    code = await asyncio.wait_for(asyncio.to_thread(main, ["calls", "recording", "999", "-o", missing]), 30)
    assert code == 1 and "not found" in capsys.readouterr().err
    assert not os.path.exists(missing) and not os.path.exists(missing + ".part")


# -- an S3-compatible bucket: moto's S3 server on loopback stands in for MinIO/AWS ----------------------------------
@pytest.fixture
def s3_server(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    for k, v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                 ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(k, v)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    yield endpoint, boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    server.stop()


async def test_recordings_go_to_the_bucket_and_failed_uploads_are_retried(twilio_env, s3_server):
    endpoint, s3 = s3_server
    env = await twilio_env(settings={"recording": {"enabled": True, "channels": "mono"}},
                           recording_s3_bucket="calls", recording_s3_endpoint=endpoint, recording_s3_prefix="rec/")
    # first call: the bucket does not exist yet, the upload fails, the file stays for the sweep
    call_id, call_sid, _ = await env.inbound()
    async with env.stream() as client:
        await client.start(call_id, call_sid=call_sid, account_sid=env.account.sid, agent_id=str(env.agent["id"]))
        await client.play(pcm16_to_ulaw(tone(1.0)))
        await client.stop(call_sid=call_sid, account_sid=env.account.sid)
    row = await env.wait_row(call_id, lambda r: r["recording_status"] == "upload_failed", timeout=30)
    assert os.path.exists(row["recording"]["path"]) and env.gw.recordings.upload_failures == 1
    s3.create_bucket(Bucket="calls")
    await env.gw.recordings.sweep()
    row = await env.wait_row(call_id, lambda r: r["recording_status"] == "stored", timeout=30)
    info = row["recording"]
    assert info["store"] == "s3" and info["key"] == f"rec/{datetime.now(UTC):%Y/%m/%d}/{call_id}.wav"
    assert "path" not in info
    local = os.path.join(env.gw.settings.recordings_path, f"{datetime.now(UTC):%Y/%m/%d}", f"{call_id}.wav")
    assert not os.path.exists(local)
    obj = s3.get_object(Bucket="calls", Key=info["key"])
    stored = obj["Body"].read()
    assert obj["ContentType"] == "audio/wav"
    status, headers, body = await _get(env.gw, f"/api/v1/calls/{row['id']}/recording")
    assert status == 200 and body == stored
    rate, channels, s = read_wav(body)
    assert (rate, channels) == (8000, 1) and rms(s[:6000]) > 2000
    status, headers, part = await _get(env.gw, f"/api/v1/calls/{row['id']}/recording", Range="bytes=4-11")
    assert status == 206 and part == stored[4:12] and headers["Content-Range"] == f"bytes 4-11/{len(stored)}"
    # retention deletes the object too
    env.gw.settings.recording_retention_days = 1e-9
    await env.gw.recordings.sweep()
    assert (await env.row(call_id))["recording_status"] == "expired"
    assert s3.list_objects_v2(Bucket="calls").get("KeyCount") == 0
