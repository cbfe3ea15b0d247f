"""Who may send us calls: each inbound trunk authenticates by IP allow-list or by digest challenge.

VoipBin-style `auth_type`:
* ``ip`` — the request's source address (the real packet source, not a Via header) must be in the trunk's
  `allowed_ips` (addresses or CIDR ranges). An empty list means "the trunk's own hosts": the addresses that
  `sip_host` and `outbound_proxy` resolve to, which is what a registration-based trunk sends from (the SIP carrier
  resolves them with gateway/sip/locate.py, so a name's SRV-published servers count too).
* ``basic`` — the INVITE must carry a digest `Authorization` for the trunk's `sip_username`/`sip_password`
  (RFC 2617/7616). No header → 401 with a fresh challenge; a stale nonce → 401 ``stale=true``; wrong
  credentials → 403.

A source no trunk knows gets 403 before anything else, so a scanner learns nothing about which numbers exist.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .digest import DigestServer
from .locate import LocateError

log = logging.getLogger("gateway.sip.auth")

Resolver = Callable[[str], Awaitable[list[str]]]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TrunkAuth:
    """The inbound-auth view of one imported SIP number/trunk."""

    number_id: int
    trunk_name: str
    auth_type: str                       # "ip" | "basic"
    allowed: tuple[IPNetwork, ...]
    hosts: tuple[str, ...]               # sip_host, outbound_proxy host (resolved lazily)
    username: str = ""
    password: str = field(default="", repr=False)

    @classmethod
    def from_number(cls, row: dict[str, Any]) -> TrunkAuth:
        cfg = row.get("config") or {}
        sec = row.get("secrets") or {}
        allowed = tuple(ipaddress.ip_network(str(x), strict=False) for x in cfg.get("allowed_ips") or [])
        hosts = [cfg.get("sip_host") or ""]
        proxy = cfg.get("outbound_proxy") or ""
        if proxy:
            p = proxy.split(";", 1)[0].removeprefix("sip:")
            hosts.append(p[1:p.index("]")] if p.startswith("[") else p.rsplit(":", 1)[0] if p.count(":") == 1
                         else p)
        return cls(int(row.get("id") or 0), row.get("sip_trunk_name") or "", (cfg.get("auth_type") or "ip"),
                   allowed, tuple(h for h in hosts if h), cfg.get("sip_username") or "",
                   sec.get("sip_password") or "")


@dataclass(frozen=True)
class AuthVerdict:
    ok: bool
    status: int = 200
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    detail: str = ""                     # for logs only (never sent)
    #: credentials were presented and are wrong: a guess, counted by the per-source throttle
    bad_credentials: bool = False


async def system_resolver(host: str) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    return sorted({str(i[4][0]) for i in infos})


class InboundAuth:
    """Applies a trunk's inbound policy to a request; caches host resolution for `cache_ttl` seconds."""

    def __init__(self, realm: str = "telephony-gateway", resolver: Resolver | None = None,
                 cache_ttl: float = 300.0, nonce_ttl: float = 300.0) -> None:
        self.realm = realm
        self.resolver = resolver or system_resolver
        self.cache_ttl = cache_ttl
        self.digest = DigestServer(nonce_ttl=nonce_ttl)
        self._cache: dict[str, tuple[float, set[str]]] = {}

    async def host_addresses(self, host: str) -> set[str]:
        try:
            return {str(ipaddress.ip_address(host.strip("[]")))}
        except ValueError:
            pass
        now = time.monotonic()
        hit = self._cache.get(host)
        if hit and hit[0] > now:
            return hit[1]
        try:
            addrs = set(await asyncio.wait_for(self.resolver(host), 5.0))
        except (TimeoutError, OSError, LocateError) as e:
            log.warning("trunk host did not resolve", extra={"host": host, "error": str(e)})
            addrs = hit[1] if hit else set()
        self._cache[host] = (now + self.cache_ttl, addrs)
        return addrs

    async def source_allowed(self, trunk: TrunkAuth, source_ip: str) -> bool:
        """Is `source_ip` one of this trunk's sources (allow-list, else its resolved hosts)?"""
        try:
            ip = ipaddress.ip_address(source_ip)
        except ValueError:
            return False
        if trunk.allowed:
            return any(ip in net for net in trunk.allowed)
        for host in trunk.hosts:
            if str(ip) in await self.host_addresses(host):
                return True
        return False

    async def known_source(self, trunks: list[TrunkAuth], source_ip: str) -> bool:
        """Is the source an IP-authenticated source of any trunk? Decides 404 vs 403 for unknown numbers."""
        for t in trunks:
            if t.auth_type == "ip" and await self.source_allowed(t, source_ip):
                return True
            if t.auth_type == "basic" and t.allowed and await self.source_allowed(t, source_ip):
                return True
        return False

    async def check(self, trunk: TrunkAuth, request: Any, source_ip: str) -> AuthVerdict:
        """The verdict for `request` (a SipRequest) arriving from `source_ip` for `trunk`."""
        if trunk.auth_type == "ip":
            if await self.source_allowed(trunk, source_ip):
                return AuthVerdict(True)
            return AuthVerdict(False, 403, "Forbidden", detail=f"source {source_ip} not allowed")
        if trunk.auth_type == "basic":
            return self._check_digest(trunk, request)
        return AuthVerdict(False, 403, "Forbidden", detail=f"unknown auth_type {trunk.auth_type!r}")

    def _check_digest(self, trunk: TrunkAuth, request: Any) -> AuthVerdict:
        if not trunk.username or not trunk.password:
            return AuthVerdict(False, 403, "Forbidden", detail="trunk has no credentials for digest")
        header = request.headers.get("Authorization")
        if not header:
            return self._challenge()

        def lookup(username: str, realm: str) -> str | None:
            return trunk.password if username == trunk.username else None

        result = self.digest.verify_authorization(header, request.method, lookup, realm=self.realm)
        if result.ok:
            return AuthVerdict(True)
        if result.stale:
            return self._challenge(stale=True)
        return AuthVerdict(False, 403, "Forbidden", detail=f"digest rejected: {result.reason}", bad_credentials=True)

    def _challenge(self, stale: bool = False) -> AuthVerdict:
        value = self.digest.make_challenge(self.realm, "MD5", stale=stale)
        return AuthVerdict(False, 401, "Unauthorized", (("WWW-Authenticate", value),), "challenge")
