"""A process says it is ready only when it can take calls: the HTTP port is bound before the carriers start, so
/healthz answers 503 `starting` (naming what is not up: sip, rtp, a carrier, the control bus) until SIP, RTP and
every carrier are up; and the `--workers N` supervisor says its node is ready only once every worker is."""
from __future__ import annotations

import asyncio
import socket
import uuid

import aiohttp

from carriers.sip import SipCarrier
from conftest import API_KEY, SECRET_KEY
from gateway.carrier import Carrier
from gateway.config import Settings
from gateway.runtime import Gateway
from procs import NODE, GatewayProc, fresh_postgres, until
from sipp import wait_for


class HeldCarrier(Carrier):
    """A carrier whose start-up waits until the test lets it finish."""

    name = "held"

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        self.release = asyncio.Event()

    async def start(self) -> None:
        await self.release.wait()


async def _health(port: int) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as r:
        return r.status, await r.json()


async def test_healthz_says_starting_until_sip_rtp_and_every_carrier_are_up(tmp_path):
    gw = Gateway(Settings(host="127.0.0.1", http_port=0, sip_host="127.0.0.1", sip_port=0, data_dir=str(tmp_path),
                          api_key=API_KEY, engine="echo", advertised_ip="127.0.0.1", secret_key=SECRET_KEY),
                 carriers={})
    held = HeldCarrier(gw)
    gw.carriers = {"held": held, "sip": SipCarrier(gw)}
    starting = asyncio.create_task(gw.start())
    try:
        await wait_for(lambda: gw.http_port is not None, 20, 0.01, what="the HTTP port to be bound")
        status, body = await _health(gw.http_port)
        assert (status, body["status"]) == (503, "starting"), body
        assert body["waiting_for"] == ["held", "sip", "rtp"]      # nothing that takes calls is up yet
        assert gw.carriers["sip"].ua is None                       # …and indeed SIP does not listen
        held.release.set()
        await asyncio.wait_for(starting, 20)
        status, body = await _health(gw.http_port)
        assert (status, body["status"], body.get("waiting_for", [])) == (200, "ok", []), body
    finally:
        held.release.set()
        if not starting.done():
            starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await gw.stop()


def _options(port: int) -> str:
    """One SIP OPTIONS to 127.0.0.1:port, sent once: the status line of the answer (ConnectionRefusedError when
    nothing listens there: loopback answers ICMP port unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        local = s.getsockname()
        s.send((f"OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local[1]};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
                f"From: <sip:probe@127.0.0.1:{local[1]}>;tag={uuid.uuid4().hex[:8]}\r\n"
                f"To: <sip:ping@127.0.0.1:{port}>\r\nCall-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\n"
                "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode())
        return s.recv(65535).decode(errors="replace").split("\r\n", 1)[0]


async def test_supervisor_says_ready_once_every_worker_takes_calls(tmp_path):
    pg = await fresh_postgres()
    gw = await GatewayProc.start(tmp_path, "--workers", "2", "--db", pg)
    try:
        await until(lambda: "ready: 2 workers take calls" in gw.output(), 90, "the supervisor's ready line")
        for port in (gw.sip_port + 1, gw.sip_port + 2):          # both workers' SIP answers at that moment
            assert await asyncio.to_thread(_options, port) == "SIP/2.0 200 OK"
        seen: set[str] = set()

        async def both_healthy() -> bool:
            h = await gw.health()
            assert h is None or h[0] == 200, h                   # no worker answers `starting` any more
            if h:
                seen.add(h[1]["proc"])
            return seen == {f"{NODE}.1", f"{NODE}.2"}
        await until(both_healthy, 30, "/healthz 200 from both workers")
    finally:
        await gw.close()
