"""A real dnsmasq on 127.0.0.1 serving only the records a test gives it (no upstream, no hosts file), stopped by
PID; tests using it skip when dnsmasq (Debian package dnsmasq) is not installed.

    async with Dnsmasq(["--srv-host=_sip._udp.trunk.test,uas1.trunk.test,5071,10,60",
                        "--host-record=uas1.trunk.test,127.0.0.1"]) as dns:
        ... Locator(dns.server) / make_gateway(dns_server=dns.server) ...
"""
from __future__ import annotations

import asyncio
import shutil

import dns.asyncresolver
import dns.exception
import dns.resolver
import pytest

from sipp import free_port

needs_dnsmasq = pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq (Debian dnsmasq) not installed")


class Dnsmasq:
    """dnsmasq in the foreground, authoritative (``--local``) for the `.test` names it is given."""

    def __init__(self, records: list[str], domain: str = "test") -> None:
        self.records = records
        self.domain = domain
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> Dnsmasq:
        for _ in range(3):   # another process may take the port between free_port() and dnsmasq's bind
            self.port = free_port()
            self.proc = await asyncio.create_subprocess_exec(
                "dnsmasq", "--no-daemon", f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                "--no-resolv", "--no-hosts", "--conf-file=/dev/null", f"--local=/{self.domain}/",
                *self.records, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            if await self._ready():
                return self
            await self._stop()
        raise RuntimeError("dnsmasq did not start")

    async def _ready(self) -> bool:
        """Ready once it answers a query (NXDOMAIN for an unknown name is an answer)."""
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers, r.port, r.lifetime = ["127.0.0.1"], self.port, 0.5
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while loop.time() < end and self.proc is not None and self.proc.returncode is None:
            try:
                await r.resolve(f"ready.{self.domain}", "A")
                return True
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                return True
            except (dns.exception.Timeout, dns.resolver.NoNameservers):
                await asyncio.sleep(0.05)
        return False

    async def _stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), 5)

    async def __aexit__(self, *exc) -> None:
        await self._stop()
