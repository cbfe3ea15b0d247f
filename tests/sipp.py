"""SIPp as the peer in tests: bounded in calls (-m) and time (-timeout AND our own deadline, killed by PID),
results read from SIPp's own counters (-trace_stat) and unexpected messages (-trace_err), never the exit code alone.

    result = await sipp_uac("uac_pcma_echo.xml", gw_port, service="15550001111", duration_ms=3000)
    result.assert_calls(successful=1)

    async with sipp_uas("uas_busy.xml") as uas:      # UAS listening on uas.port; ends after -m calls
        ... let the gateway call 127.0.0.1:uas.port ...
    uas.result.assert_calls(successful=1)

Built on gateway.loadtest.sipp.run_sipp (the same runner `gateway loadtest` uses), which refuses any target but
127.0.0.0/8.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.loadtest.command import port_free
from gateway.loadtest.sipp import SippResult, run_sipp

SCENARIOS = Path(__file__).resolve().parent.parent / "sip-test-configs"

needs_sipp = pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) not installed")


def free_port(kind: int = socket.SOCK_DGRAM, even: bool = False) -> int:
    """A port that was free a moment ago on 127.0.0.1 for UDP and TCP (SIPp binds both for -t u1)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if even and port % 2:
            continue
        if not (port_free(port, socket.SOCK_DGRAM) and port_free(port, socket.SOCK_STREAM)):
            continue  # SIPp binds the other kind too (and TCP ports linger in TIME_WAIT)
        if even and not all(port_free(p) for p in (port, port + 1, port + 2, port + 3)):
            continue  # RTP + RTCP (+2 for SIPp's video echo)
        return port
    raise RuntimeError("no free port")


@dataclass
class Outcome:
    """What SIPp itself counted, plus the raw material for a useful failure message."""

    result: SippResult

    @property
    def successful(self) -> int:
        return self.result.stats.successful

    @property
    def failed(self) -> int:
        return self.result.stats.failed

    def explain(self) -> str:
        r = self.result
        return (f"sipp: successful={r.stats.successful} failed={r.stats.failed} created={r.stats.created} "
                f"rc={r.returncode} killed={r.killed} breakdown={r.stats.failed_breakdown}\n{r.errors[-3000:]}")

    def assert_calls(self, successful: int, failed: int = 0) -> None:
        assert not self.result.killed, "SIPp hit the harness deadline and was killed\n" + self.explain()
        assert (self.successful, self.failed) == (successful, failed), self.explain()


def _args(scenario: str, *, calls: int, timeout_s: float, service: str | None, duration_ms: int | None,
          media_port: int | None, extra: list[str]) -> list[str]:
    args = ["-sf", str(SCENARIOS / scenario), "-m", str(calls), "-timeout", f"{int(timeout_s)}s", "-timeout_error",
            "-recv_timeout", f"{int(timeout_s * 1000)}", "-max_recv_loops", "1000"]
    if service:
        args += ["-s", service]
    if duration_ms is not None:
        args += ["-d", str(duration_ms)]
    args += ["-mp", str(media_port or free_port(even=True)), "-mi", "127.0.0.1"]
    return args + list(extra)


async def sipp_uac(scenario: str, target_port: int, *, calls: int = 1, rate: float = 10, service: str | None = None,
                   duration_ms: int | None = None, timeout_s: float = 20, extra: list[str] = (),
                   workdir: str | None = None) -> Outcome:
    """Run a client scenario against 127.0.0.1:target_port; returns when SIPp ends or our deadline kills it."""
    args = _args(scenario, calls=calls, timeout_s=timeout_s, service=service, duration_ms=duration_ms,
                 media_port=None, extra=["-r", str(rate), "-l", str(max(calls, 1)), "-p",
                                         str(free_port()), *extra])
    result = await run_sipp(f"127.0.0.1:{target_port}", args, deadline_s=timeout_s + 10, cwd=workdir)
    return Outcome(result)


class _PortTaken(RuntimeError):
    """SIPp could not bind the port we picked: someone else got it first."""


class SippUas:
    """A SIPp server scenario running in the background; `await uas.wait()` for its counters."""

    def __init__(self, scenario: str, *, calls: int = 1, timeout_s: float = 20, duration_ms: int | None = None,
                 extra: list[str] = (), workdir: str | None = None, rtp_echo: bool = False) -> None:
        self.port = free_port()
        self.media_port = free_port(even=True)
        self._build = lambda: _args(scenario, calls=calls, timeout_s=timeout_s, service=None,
                                    duration_ms=duration_ms, media_port=self.media_port,
                                    extra=["-p", str(self.port), *(["-rtp_echo"] if rtp_echo else []), *extra])
        self._deadline = timeout_s + 10
        tcp = any(a in ("t1", "tn") for a in extra)
        self._kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
        self._workdir = workdir
        self._task: asyncio.Task | None = None
        self.result: Outcome | None = None

    async def start(self) -> SippUas:
        for _ in range(3):
            try:
                return await self._start_once()
            except _PortTaken:
                # another process took the port between our check and SIPp's bind: new ports, same scenario
                self.port, self.media_port = free_port(), free_port(even=True)
        return await self._start_once()

    async def _start_once(self) -> SippUas:
        # the "target" is unused by a UAS but the runner insists on loopback anyway
        self._task = asyncio.create_task(run_sipp("127.0.0.1:9", self._build(), deadline_s=self._deadline,
                                                  cwd=self._workdir))
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while port_free(self.port, self._kind):  # SIPp has bound its port once we can no longer bind it
            if self._task.done():
                explained = Outcome(self._task.result()).explain()
                if "Address already in use" in explained:
                    raise _PortTaken(explained)
                raise RuntimeError("SIPp UAS exited at start:\n" + explained)
            if loop.time() > end:
                raise RuntimeError("SIPp UAS did not bind its port within 5 s")
            await asyncio.sleep(0.02)
        return self

    async def wait(self) -> Outcome:
        assert self._task is not None
        self.result = Outcome(await self._task)
        return self.result

    async def __aenter__(self) -> SippUas:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.wait()


def sipp_uas(scenario: str, **kw) -> SippUas:
    return SippUas(scenario, **kw)




# -- the gateway side of SIP tests ---------------------------------------------------------------------------------

_rtp_cursor = [40000 + (os.getpid() % 200) * 100]


def rtp_range(span: int = 60) -> dict[str, int]:
    """A private RTP port range per gateway (even start), so parallel tests and helpers do not collide."""
    start = _rtp_cursor[0]
    _rtp_cursor[0] = start + span + 2 if start + 2 * span < 60000 else 40000
    return {"rtp_port_min": start, "rtp_port_max": start + span}


async def sip_gateway(make_gateway, **settings):
    """A started gateway with only the SIP carrier, the echo engine and private ports; returns it."""
    from carriers.sip import SipCarrier

    kw = {"engine": "echo", **rtp_range(), **settings}
    return await make_gateway(carriers={"sip": SipCarrier}, **kw)


async def api(gw, method: str, path: str, body: dict | None = None, expect: int | None = None) -> dict:
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": "Bearer test-api-key"}) as http:
        async with http.request(method, gw.url("/api/v1" + path), json=body) as r:
            data = await r.json()
            if expect is not None:
                assert r.status == expect, (r.status, data)
            return data


async def sip_number(gw, *, phone: str = "+15550001111", agent: bool = True, engine: str = "echo",
                     agent_settings: dict | None = None, **fields) -> dict:
    """Import a SIP number through the API (and attach a new agent); returns the number JSON."""
    body = {"phone_number": phone, "sip_host": "127.0.0.1", "sip_trunk_name": f"trunk-{phone[1:]}",
            "auth_type": "ip", "allowed_ips": ["127.0.0.1"], **fields}
    num = (await api(gw, "POST", "/phone_number/import/sip", body, expect=201))["phone_number"]
    if agent:
        a = await api(gw, "POST", "/agents", {"name": "sip test agent", "engine": engine,
                                               **({"settings": agent_settings} if agent_settings else {})})
        agent_id = (a.get("agent") or a)["id"]
        await api(gw, "POST", "/phone_number/attach", {"phone_number_id": num["id"], "agent_id": agent_id},
                  expect=200)
        num["agent_id"] = agent_id
    return num


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll an (async or sync) predicate until it returns something truthy; fail naming `what` after
    `timeout`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(interval)


async def registrar_gone(gw) -> None:
    """The registrar (a SIPp scenario) has ended: stop the gateway's registrations without their un-REGISTER, which
    nobody would answer now (the gateway's stop waits up to 5 s for it)."""
    regs = gw.carriers["sip"].registrations
    while regs:
        await regs.popitem()[1].stop(unregister=False)


async def metrics_text(gw) -> str:
    """The gateway's /metrics page, as Prometheus would read it."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(gw.url("/metrics")) as r:
        return await r.text()


async def serve_app(app):
    """Run an aiohttp application on 127.0.0.1, ephemeral port (a webhook receiver, a collector stand-in):
    returns (its runner, for `await runner.cleanup()`, and the port)."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of sample `name` with exactly `labels` in a /metrics page (parsed with prometheus_client's own
    parser), or None when the page has no such sample."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


async def call_rows(gw) -> list[dict]:
    rows, _ = await gw.store.list_calls(1, 100)
    return rows

__all__ = ["SCENARIOS", "Outcome", "SippUas", "api", "call_rows", "free_port", "metric_value", "metrics_text",
           "needs_sipp", "rtp_range", "serve_app", "sip_gateway", "sip_number", "sipp_uac", "sipp_uas", "wait_for"]
