"""RTP sessions on real loopback sockets, attached to real calls on a real Gateway (echo engine)."""
import asyncio
import itertools
import math
import socket
import struct

from gateway.engine.base import VoiceEngine
from gateway.frames import AudioFrame, Dtmf
from gateway.rtp import RtpEngine
from gateway.rtp.dtmf import DtmfReceiver, encode_event
from gateway.rtp.packet import build_rtp, parse_rtp
from sipp import wait_for
from voicecodecs import pcm16_to_ulaw, ulaw_to_pcm16
from voicecodecs._audioop import audioop


class FakeLeg:
    def __init__(self):
        self.hung_up = asyncio.Event()

    async def hangup(self, call, reason):
        self.hung_up.set()

    async def transfer(self, call, request):
        pass


def tone_ulaw(n_frames, freq=440.0):
    pcm = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / 8000)))
                   for i in range(160 * n_frames))
    ulaw = pcm16_to_ulaw(pcm)
    return [ulaw[i * 160:(i + 1) * 160] for i in range(n_frames)]


class Peer(asyncio.DatagramProtocol):
    """A minimal far-end RTP endpoint on its own socket."""

    def __init__(self):
        self.packets = []
        self.got = asyncio.Event()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.packets.append(parse_rtp(data))
        self.got.set()


async def open_peer():
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    return peer, peer.transport.get_extra_info("sockname")[1]


async def start_call(gw, rtp, peer_port, engine="echo"):
    call = await gw.calls.create(carrier="sip", direction="inbound", from_number="+15550001111",
                                 to_number="+15550002222", agent={"id": 1, "engine": engine, "settings": {}})
    await call.attach(FakeLeg(), 8000)
    session = await rtp.open_session()
    session.configure(("127.0.0.1", peer_port), "PCMU", 0, 101)
    session.attach(call)
    return call, session


async def test_echo_over_rtp(make_gateway):
    gw = await make_gateway(engine="echo")
    rtp = RtpEngine("127.0.0.1", 41000, 41100)
    await rtp.start()
    peer, peer_port = await open_peer()
    call, session = await start_call(gw, rtp, peer_port)
    frames = tone_ulaw(40)
    for i, payload in enumerate(frames):  # 800 ms of tone, paced in real time
        peer.transport.sendto(build_rtp(0, i == 0, 1000 + i, 5000 + 160 * i, 42, payload),
                              ("127.0.0.1", session.local_port))
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    pkts = [p for p in peer.packets if p.payload_type == 0]
    assert len(pkts) >= 40
    assert len({p.ssrc for p in pkts}) == 1
    seqs = [p.sequence for p in pkts]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    stamps = [p.timestamp for p in pkts]
    assert all((b - a) & 0xFFFFFFFF == 160 for a, b in itertools.pairwise(stamps))
    assert pkts[0].marker
    loud = [p for p in pkts if audioop.rms(ulaw_to_pcm16(p.payload), 2) > 2000]
    assert len(loud) >= 30, "the echo engine's audio did not come back"
    assert any(p.marker for p in pkts[1:]), "talk-spurt after silence carries the marker bit"
    assert session.stats["received"] == 40 and session.stats["lost"] == 0
    await call.end("user", "test")
    session.close()
    await rtp.stop()


class RecordingEngine(VoiceEngine):
    sample_rate = 8000

    def __init__(self):
        self.events = []

    async def handle_call(self, session):
        async for item in session:
            if not isinstance(item, AudioFrame):
                self.events.append(item)


async def test_dtmf_in_and_out(make_gateway):
    gw = await make_gateway()
    eng = RecordingEngine()
    gw.engines.register("rec", eng)
    rtp = RtpEngine("127.0.0.1", 41200, 41300)
    await rtp.start()
    peer, peer_port = await open_peer()
    call, session = await start_call(gw, rtp, peer_port, engine="rec")
    dst = ("127.0.0.1", session.local_port)
    seq = 1
    for dur, end in ((160, False), (320, False), (800, True), (800, True), (800, True)):
        peer.transport.sendto(build_rtp(101, seq == 1, seq, 8000, 42, encode_event("5", end, dur)), dst)
        seq += 1
    await session.send_dtmf("9#")
    await asyncio.sleep(0.8)
    assert [e for e in eng.events if isinstance(e, Dtmf)] == [Dtmf("5", 100)]
    rx = DtmfReceiver()
    got = []
    for p in peer.packets:
        if p.payload_type == 101:
            got += [d for d, _ in rx.receive(p.timestamp, p.payload)]
    assert got == ["9", "#"]
    await call.end("user", "test")
    await rtp.stop()


async def test_symmetric_rtp_latches_to_real_source(make_gateway):
    gw = await make_gateway(engine="echo")
    rtp = RtpEngine("127.0.0.1", 41400, 41500)
    await rtp.start()
    peer, peer_port = await open_peer()
    # SDP said a port nobody listens on (a NAT rewrote it); media really comes from peer_port
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    wrong = s.getsockname()[1]
    s.close()
    call, session = await start_call(gw, rtp, wrong)
    for i, payload in enumerate(tone_ulaw(5)):
        peer.transport.sendto(build_rtp(0, False, i, 160 * i, 7, payload), ("127.0.0.1", session.local_port))
    await asyncio.wait_for(peer.got.wait(), 2)
    assert session.remote == ("127.0.0.1", peer_port)
    # a stranger's packets are ignored once latched
    stranger, _ = await open_peer()
    stranger.transport.sendto(build_rtp(0, False, 99, 0, 8, b"\x00" * 160), ("127.0.0.1", session.local_port))
    await asyncio.sleep(0.1)
    assert session.stats["foreign"] == 1
    await call.end("user", "test")
    await rtp.stop()


async def test_hold_stops_sending(make_gateway):
    gw = await make_gateway(engine="echo")
    rtp = RtpEngine("127.0.0.1", 41600, 41700)
    await rtp.start()
    peer, peer_port = await open_peer()
    call, session = await start_call(gw, rtp, peer_port)
    await asyncio.wait_for(peer.got.wait(), 2)
    session.set_direction("inactive")
    await asyncio.sleep(0.05)
    n = len(peer.packets)
    await asyncio.sleep(0.2)
    assert len(peer.packets) == n
    session.set_direction("sendrecv")
    await asyncio.sleep(0.2)
    assert len(peer.packets) > n
    await call.end("user", "test")
    await rtp.stop()


async def test_ports_are_even_and_reused(make_gateway):
    rtp = RtpEngine("127.0.0.1", 41801, 41806)
    await rtp.start()
    sessions = [await rtp.open_session() for _ in range(3)]
    assert [s.local_port for s in sessions] == [41802, 41804, 41806]
    try:
        await rtp.open_session()
        raise AssertionError("range exhausted must raise")
    except RuntimeError as e:
        assert "no free RTP port" in str(e)
    sessions[1].close()
    await asyncio.sleep(0.01)  # the socket closes on the next loop iteration
    again = await rtp.open_session()
    assert again.local_port == 41804
    await rtp.stop()


async def test_pairs_other_programs_hold_are_skipped_and_nothing_leaks():
    # the engine binds its sockets itself (no getaddrinfo round trip through uvloop's thread pool): a pair whose
    # RTP port is taken, then a pair whose RTCP port is taken, are skipped; the half-bound RTP socket of the second
    # pair is closed again; the session's sockets are real and receive
    held = []
    for port in (43502, 43505):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", port))
        held.append(s)
    rtp = RtpEngine("127.0.0.1", 43502, 43510)
    await rtp.start()
    try:
        session = await rtp.open_session()
        assert session.local_port == 43506
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 43504))           # not leaked by the skipped pair
        probe.close()
        peer, _ = await open_peer()
        peer.transport.sendto(build_rtp(0, False, 1, 160, 9, b"\xff" * 160), ("127.0.0.1", 43506))
        peer.transport.sendto(b"\x80\xc9\x00\x01\x00\x00\x00\x09", ("127.0.0.1", 43507))   # an RTCP RR
        await wait_for(lambda: rtp.totals().get("received", 0) >= 1 and rtp.totals().get("rtcp_received", 0) >= 1,
                       5, what="an RTP packet on the session's port and an RTCP report on the one above")
    finally:
        await rtp.stop()
        for s in held:
            s.close()


async def test_engine_totals_survive_closed_sessions():
    rtp = RtpEngine("127.0.0.1", 41900, 41910)
    await rtp.start()
    peer, peer_port = await open_peer()
    s = await rtp.open_session()
    for i, payload in enumerate(tone_ulaw(3)):
        peer.transport.sendto(build_rtp(0, False, i, 160 * i, 9, payload), ("127.0.0.1", s.local_port))
    await asyncio.sleep(0.1)
    s.close()
    assert rtp.totals()["received"] == 3
    await rtp.stop()


async def test_30ms_packets_play_out_at_the_real_rate(make_gateway):
    gw = await make_gateway()
    eng = RecordingEngine()
    gw.engines.register("rec", eng)
    audio = []
    rtp = RtpEngine("127.0.0.1", 42000, 42100)
    await rtp.start()
    peer, peer_port = await open_peer()
    call, session = await start_call(gw, rtp, peer_port, engine="rec")
    call.add_tap(audio.append)
    payload = b"\xff" * 240  # 30 ms of μ-law silence per packet
    for i in range(30):  # 900 ms, paced like the far end would
        peer.transport.sendto(build_rtp(0, False, i, 240 * i, 5, payload), ("127.0.0.1", session.local_port))
        await asyncio.sleep(0.03)
    want = 30 * 240 * 2
    await wait_for(lambda: sum(len(a) for a in audio) >= want, timeout=5)
    assert sum(len(a) for a in audio) == want  # every sample reached the call, none invented
    assert session.stats["lost"] == 0
    await call.end("user", "test")
    await rtp.stop()


async def test_caller_audio_read_after_a_stalled_loop_is_played_not_dropped():
    """A starved box runs our event loop late. A real RTP sender on its own thread keeps sending 20 ms packets in
    real time meanwhile; they wait in our socket and are read in one burst when the loop runs again. They arrived
    in time, so the caller's audio is played whole (early, to bring the latency back down), none dropped as an
    overflow of the jitter buffer's depth."""
    import threading
    import time

    rtp = RtpEngine("127.0.0.1", 41200, 41300)
    await rtp.start()
    peer, peer_port = await open_peer()
    try:
        session = await rtp.open_session()
        session.configure(("127.0.0.1", peer_port), "PCMU", 0, 101)
        heard: list[bytes] = []
        session.on_pcm = heard.append
        frames = tone_ulaw(100)
        done = threading.Event()

        def sender() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                start = time.monotonic()
                for i, payload in enumerate(frames):
                    wait = start + 0.02 * i - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    s.sendto(build_rtp(0, i == 0, 7000 + i, 160 * i, 99, payload), ("127.0.0.1", session.local_port))
            done.set()

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        await wait_for(lambda: len(heard) >= 5, 20, what="play-out to start")
        time.sleep(0.8)       # the loop stalls (blocking on purpose): 40 packets arrive that it cannot read
        await wait_for(done.is_set, 60, what="the sender to finish")
        await wait_for(lambda: len(heard) >= len(frames), 20, what="every frame to be played")
        stats = session.stats
        assert (stats["overflow"], stats["lost"], stats["late"]) == (0, 0, 0), stats
        assert stats["drained"] > 0, stats          # the burst did exceed the depth, and was played early
        assert b"".join(heard) == ulaw_to_pcm16(b"".join(frames))
        thread.join(10)
    finally:
        peer.transport.close()
        await rtp.stop()


async def test_clock_runs_only_while_a_session_is_open():
    """An idle process is not woken 50 times a second: the clock starts with the first session and stops after
    the last one closes, and a session opened later gets a running clock again."""
    rtp = RtpEngine("127.0.0.1", 44100, 44110)
    await rtp.start()
    try:
        assert not rtp.clock_running and rtp.ticks == 0
        for _ in range(2):
            session = await rtp.open_session()
            assert rtp.clock_running
            await wait_for(lambda t=rtp.ticks: rtp.ticks >= t + 3, timeout=10)
            session.close()
            await wait_for(lambda: not rtp.clock_running, timeout=10)
    finally:
        await rtp.stop()
    assert not rtp.clock_running
