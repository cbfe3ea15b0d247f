"""gateway.integrations.pipecat with a REAL pipecat pipeline (pipecat-ai from the registry: the [pipecat] extra,
installed by .ci/run): examples/pipecat_echo_bot.py serves the engine websocket, SIPp calls the gateway over SIP,
and the RTP the gateway sends back to SIPp must carry the caller's audio echoed by pipecat; the call log must say
who hung up and why. Events (DTMF, transfer, AMD, hangup) are checked both ways on an in-process call.

The bot runs in its own process, as it would in production: importing pipecat replaces `asyncio.wait_for`
process-wide on Python < 3.12 (pipecat/__init__.py), which must not leak into the gateway or the other tests."""
from __future__ import annotations

import ast
import asyncio
import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import API_KEY
from gateway.frames import AmdResult, AnsweredBy, AudioFrame, Dtmf
from rtp_capture import LoopbackRtpCapture, can_capture
from sipp import call_rows, needs_sipp, sip_gateway, sip_number, sipp_uac, wait_for
from test_api_fakes import FakeLeg
from voicecodecs import alaw_to_pcm16

pytestmark = pytest.mark.timeout(120)
needs_pipecat = pytest.mark.skipif(importlib.util.find_spec("pipecat") is None,
                                   reason="pipecat-ai not installed (pip install -e '.[pipecat]')")

T = 15.0
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pipecat_echo_bot.py"
NUMBER = "15550001111"
PCAP_SSRC = 0xDEE0EE8F          # every packet of sip-test-configs/pcap/g711a.pcap, which SIPp plays as it is


class BotProc:
    """examples/pipecat_echo_bot.py in connect mode on a free port, its log in a file; stopped by PID."""

    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.url = ""

    @classmethod
    def spawn(cls, tmp: Path, *args: str) -> BotProc:
        log = tmp / f"bot-{len(list(tmp.glob('bot-*.log')))}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        with log.open("wb") as out:
            proc = subprocess.Popen([*_python(env), str(EXAMPLE), *args], stdout=out, stderr=subprocess.STDOUT,
                                    env=env)
        return cls(proc, log)

    @classmethod
    async def start(cls, tmp: Path, *args: str) -> BotProc:
        """Connect mode: listening on a free port (`bot.url`)."""
        bot = cls.spawn(tmp, "--listen", "127.0.0.1:0", *args)
        try:
            port = await wait_for(lambda: bot._port(), 60, what="the pipecat bot listening")
        except AssertionError:
            bot.stop()
            raise AssertionError("pipecat bot did not start:\n" + bot.log.read_text()[-3000:]) from None
        bot.url = f"ws://127.0.0.1:{port}"
        return bot

    def _port(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError("pipecat bot exited:\n" + self.log.read_text()[-3000:])
        m = re.search(r"listening on ws://127\.0\.0\.1:(\d+)", self.log.read_text())
        return m.group(1) if m else None

    def lines(self, pattern: str) -> list[re.Match[str]]:
        return list(re.finditer(pattern, self.log.read_text()))

    async def logged(self, pattern: str, what: str) -> list[re.Match[str]]:
        return await wait_for(lambda: self.lines(pattern), T, what=what)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _python(env: dict[str, str]) -> list[str]:
    """The bot's interpreter command. When this run measures coverage (`pytest --cov`, as .ci/run does), the bot
    runs under coverage too, with the same settings, writing a parallel data file beside the run's, which
    pytest-cov combines at the end: gateway/integrations/pipecat.py runs only in the bot's process."""
    import coverage

    cov = coverage.Coverage.current()
    if cov is None:
        return [sys.executable]
    env["COVERAGE_FILE"] = os.path.abspath(cov.config.data_file)
    return [sys.executable, "-m", "coverage", "run", "--parallel-mode", f"--rcfile={cov.config.config_file}"]


@pytest.fixture
async def bot_proc(tmp_path):
    """`await bot_proc(*args)`: a connect-mode bot; `await bot_proc(*args, accept=gw)`: one in accept mode at gw's
    pool `pc` (returns once its idle connection is there, `bot.url` = the agent's engine spec)."""
    started: list[BotProc] = []

    async def start(*args: str, accept=None) -> BotProc:
        if accept is None:
            bot = await BotProc.start(tmp_path, *args)
            started.append(bot)
            return bot
        bot = BotProc.spawn(tmp_path, "--connect", f"ws://127.0.0.1:{accept.http_port}/engine/ws",
                            "--api-key", API_KEY, "--pool", "pc", "--concurrency", "1", *args)
        started.append(bot)
        await wait_for(lambda: bot.proc.poll() is not None or accept.engines.accept_hub.idle_count("pc") == 1, 60,
                       what="the pipecat bot's idle connection")
        assert bot.proc.poll() is None, bot.log.read_text()[-3000:]
        bot.url = "accept:pc"
        return bot

    yield start
    for bot in started:
        bot.stop()


def _loud(payload: bytes) -> bool:
    """A 20 ms PCMA packet with speech in it (the gateway's own fill is A-law silence, ~0)."""
    samples = memoryview(alaw_to_pcm16(payload)).cast("h")
    return sum(abs(v) for v in samples) > 300 * len(samples)


async def _ended_row(gw) -> dict:
    async def ended():
        rows = await call_rows(gw)
        return rows[0] if rows and rows[0].get("ended_at") else None
    return await wait_for(ended, T, what="the call ended in the call log")


@needs_pipecat
@needs_sipp
async def test_sipp_audio_is_echoed_by_pipecat_and_the_bot_hangs_up(make_gateway, bot_proc):
    """PCMA 8 kHz from SIPp → 16 kHz PCM → pipecat echo → back to SIPp as RTP; after 2 s of echo the pipeline's
    EndFrame hangs up with its reason: the gateway sends BYE (SIPp's scenario fails without it)."""
    if not can_capture():
        pytest.skip("capturing RTP on lo needs CAP_NET_RAW (root)")
    bot = await bot_proc("--hangup-after", "2")
    gw = await sip_gateway(make_gateway)
    await sip_number(gw, engine=bot.url)                    # default 16 kHz engine audio: resampled both ways
    gw_ports = range(gw.settings.rtp_port_min, gw.settings.rtp_port_max + 1)
    with LoopbackRtpCapture(gw_ports) as cap:
        res = await sipp_uac("uac_gateway_hangs_up.xml", gw.carriers["sip"].port, service=NUMBER, timeout_s=30)
        res.assert_calls(successful=1)
        row = await _ended_row(gw)
    assert (row["hangup_source"], row["hangup_reason"], row["call_status"]) == ("agent", "echo_done", "completed")
    # on the wire: SIPp's packets into the gateway, and the gateway's back to SIPp carrying the echo
    # (picked out by the pcap's SSRC: SIPp's media port may fall inside the gateway's range, other tests' too)
    into_gw = [p for p in cap.packets if p.ssrc == PCAP_SSRC and p.dst_port in gw_ports]
    assert into_gw, f"no RTP from SIPp was captured ({len(cap.packets)} packets on the gateway's ports)"
    sipp_port, gw_port = into_gw[0].src_port, into_gw[0].dst_port
    into_gw = [p for p in into_gw if (p.src_port, p.dst_port) == (sipp_port, gw_port)]
    back = [p for p in cap.packets if (p.src_port, p.dst_port) == (gw_port, sipp_port)]
    loud = [p for p in back if _loud(p.payload)]
    # 2 s of echo of a recording with pauses in it: ~40 % of the packets carry speech here
    assert len(loud) >= 25, f"{len(loud)} of {len(back)} packets back to SIPp carry audio (want ≥ 0.5 s of echo)"
    first_in = min(p.at for p in into_gw if _loud(p.payload))
    assert loud[0].at > first_in, "audio went back before any came in: not an echo"
    await bot.logged(r"call \S+ finished", "the pipecat pipeline finished")
    assert not bot.lines("gateway hung up")                  # the bot ended the call, not the gateway


@needs_pipecat
@needs_sipp
async def test_caller_hangup_ends_the_pipeline(make_gateway, bot_proc):
    """SIPp sends BYE: the gateway's `hangup` reaches pipecat as GatewayHangupFrame and the pipeline ends."""
    bot = await bot_proc()
    gw = await sip_gateway(make_gateway)
    await sip_number(gw, engine=bot.url + "?sample_rate=8000")
    res = await sipp_uac("uac_pcma_echo.xml", gw.carriers["sip"].port, service=NUMBER, duration_ms=1500)
    res.assert_calls(successful=1)
    row = await _ended_row(gw)
    assert (row["hangup_source"], row["hangup_reason"]) == ("user", "200 Call completed")
    assert row["extra"]["rtp"]["received"] >= 40, row["extra"]["rtp"]
    await bot.logged("gateway hung up: user 200 Call completed", "the hangup reached pipecat")
    await bot.logged(r"call \S+ finished", "the pipecat pipeline finished")


async def _feed(call, frame: bytes) -> None:
    """20 ms of caller audio every 20 ms, as a carrier leg delivers it."""
    while True:
        call.feed_audio(frame)
        await asyncio.sleep(0.02)


async def _drain(call) -> None:
    while True:
        await call.next_outbound()


@needs_pipecat
@pytest.mark.parametrize("mode", ["connect", "accept"])
async def test_dtmf_transfer_amd_and_hangup_map_to_pipecat_frames(make_gateway, bot_proc, mode):
    """DTMF → InputDTMFFrame; `0` → GatewayTransferFrame → the gateway transfers → GatewayTransferResultFrame;
    AMD → GatewayAmdResultFrame; `#` → EndWorkerFrame → EndFrame → hangup with the bot's reason. In both modes:
    the gateway dials the bot (serve) or the bot waits at the gateway (connect)."""
    gw = await make_gateway()
    bot = await (bot_proc() if mode == "connect" else bot_proc(accept=gw))
    agent = await gw.store.create_agent({"name": "pc", "engine": bot.url + "?sample_rate=8000",
                                         "settings": {"transfer": {"number": "+15550009999"}}})
    call = await gw.calls.create(carrier="test", direction="outbound", from_number="+15550001111",
                                 to_number="+15550002222", agent=agent)
    leg = FakeLeg()
    await call.attach(leg, 8000)
    frame = bytes(range(1, 161)) * 2                         # 20 ms at 8 kHz, distinct bytes
    feeding = asyncio.create_task(_feed(call, frame))        # until the pipeline runs, audio has nowhere to go
    drain = None
    try:
        echoed = await asyncio.wait_for(call.next_outbound(), T)
        assert isinstance(echoed, AudioFrame) and echoed.pcm == frame   # same rate both ends: bytes come back
        drain = asyncio.create_task(_drain(call))
        call.feed_event(Dtmf("0"))
        await bot.logged("transfer to \\+15550009999: completed", "the transfer result reached pipecat")
        assert [t.number for t in leg.transfers] == ["+15550009999"]
        call.feed_event(AmdResult(AnsweredBy.HUMAN, 1800))
        await bot.logged("amd: human", "the AMD result reached pipecat")
        call.feed_event(Dtmf("#"))
        await wait_for(lambda: call.id not in gw.calls.active, T, what="the call ended")
    finally:
        feeding.cancel()
        if drain:
            drain.cancel()
    assert [m.group(1) for m in bot.lines(r"dtmf (\S)")] == ["0", "#"]
    row = await gw.store.get_call(call.log_id)
    assert (row["hangup_source"], row["hangup_reason"]) == ("agent", "caller_requested")
    await bot.logged(r"call \S+ finished", "the pipecat pipeline finished")
    assert not bot.lines("gateway hung up")                  # the bot hung up first: no hangup came back to it


@needs_pipecat
def test_serializer_maps_protocol_messages():
    """The mapping table of GatewayFrameSerializer, message by message (tests/pipecat_mapping_check.py, in its own
    process like the bot)."""
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "pipecat_mapping_check.py")], capture_output=True,
                         text=True, timeout=90, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout[-3000:] + out.stderr[-3000:]


@needs_pipecat
async def test_accept_mode_bot_stops_on_a_wrong_key(make_gateway, tmp_path):
    gw = await make_gateway()
    bot = BotProc.spawn(tmp_path, "--connect", f"ws://127.0.0.1:{gw.http_port}/engine/ws", "--api-key", "nope")
    try:
        assert await asyncio.to_thread(bot.proc.wait, 60) == 1
    finally:
        bot.stop()
    assert "gateway refused the engine: 401" in bot.log.read_text()


def test_core_does_not_import_pipecat():
    """pipecat is an optional extra: only gateway/integrations/ may import it (the gateway runs without it)."""
    offenders = []
    for path in (ROOT / "gateway").rglob("*.py"):
        if "integrations" in path.relative_to(ROOT / "gateway").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "pipecat"]
    assert offenders == []
