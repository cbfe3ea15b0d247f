"""Locating a SIP trunk's servers from its host name (RFC 3263 §4), so a trunk named only by its domain reaches
the servers its DNS publishes, in their order, and a call fails over when one of them is down or overloaded.

For a host that is a name with no explicit port:

1. NAPTR records of the name whose service matches the trunk's transport (``SIP+D2U`` udp, ``SIP+D2T`` tcp,
   ``SIPS+D2T`` tls; RFC 3263 §4.1), lowest order/preference first, give the SRV name to look up;
2. else the SRV name ``_sip._udp.`` / ``_sip._tcp.`` / ``_sips._tcp.`` + host (§4.2);
3. SRV records are ordered by priority, and within one priority weighted-randomly by weight (RFC 2782, "Usage
   rules"); each target's A/AAAA records give the addresses;
4. no SRV record at all: the host's own A/AAAA on 5060 (5061 for tls).

An IP address or an explicit port skips NAPTR/SRV (§4.2). `locate_uri` starts from a URI (an in-dialog next hop,
a registrar): a ``sips:`` URI is reached over TLS through ``_sips._tcp`` (RFC 3261 §26.2.2, RFC 3263 §4.1), else
its ``transport`` parameter, else the caller's transport, picks the lookup.

Lookups go to `GATEWAY_DNS_SERVER` (``ip[:port]``) when
set, else to the system's resolvers; a name the DNS does not know is still tried with getaddrinfo (/etc/hosts).
Uses dnspython's asyncio resolver (https://dnspython.readthedocs.io/en/latest/async-resolver-class.html).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver

from .message import SipUri

log = logging.getLogger("gateway.sip.locate")

SRV_PREFIX = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp."}
NAPTR_SERVICE = {"udp": "SIP+D2U", "tcp": "SIP+D2T", "tls": "SIPS+D2T"}
LOOKUP_TIMEOUT = 3.0   # seconds for one name's lookup, all nameservers and retries included


class LocateError(Exception):
    """The host has no usable address (the message says which name failed and why)."""


@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True)
class Target:
    """One place to send a request: an address, and how it was found (for logs and `test connection`)."""

    address: str
    port: int
    transport: str
    name: str           # the SRV target or host name the address belongs to
    via: str            # "SRV _sip._udp.example.com", "NAPTR … → SRV …", "A/AAAA" or "literal"

    @property
    def dest(self) -> tuple[str, int, str]:
        return self.address, self.port, self.transport

    def describe(self) -> str:
        name = self.name if self.name == self.address else f"{self.name} ({self.address})"
        return f"{name}:{self.port}/{self.transport} via {self.via}"


def order_srv(records: Iterable[SrvRecord], rng: random.Random | None = None) -> list[SrvRecord]:
    """RFC 2782 order: ascending priority; within a priority, repeatedly pick one at random with probability
    proportional to its weight (weight-0 records are placed first so they get a small chance, as the RFC says)."""
    rng = rng or random.Random()
    out: list[SrvRecord] = []
    by_prio: dict[int, list[SrvRecord]] = {}
    for r in records:
        if r.target in ("", "."):   # "service decidedly not available at this domain"
            continue
        by_prio.setdefault(r.priority, []).append(r)
    for prio in sorted(by_prio):
        left = sorted(by_prio[prio], key=lambda r: r.weight)   # zero weights first
        while left:
            total = sum(r.weight for r in left)
            pick = rng.randint(0, total)
            running = 0
            for i, r in enumerate(left):
                running += r.weight
                if running >= pick:
                    out.append(left.pop(i))
                    break
    return out


def parse_server(value: str) -> tuple[str, int]:
    """`ip[:port]` or `[v6]:port` of GATEWAY_DNS_SERVER, port 53 by default."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":") or "53"
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, "53"
    try:   # a bad setting fails the start, naming itself, not the first call
        ipaddress.ip_address(host)
        return host, int(port)
    except ValueError:
        raise ValueError(f"dns_server (GATEWAY_DNS_SERVER): {value!r} is not ip[:port]") from None


def is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class Locator:
    """RFC 3263 server location with one dnspython resolver (system or `server`)."""

    def __init__(self, server: str = "", rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.resolver: dns.asyncresolver.Resolver | None
        if server:
            ip, port = parse_server(server)
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            self.resolver.nameservers = [ip]
            self.resolver.port = port
        else:
            try:
                self.resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                self.resolver = None   # no resolv.conf: getaddrinfo only
        if self.resolver is not None:
            self.resolver.lifetime = LOOKUP_TIMEOUT

    async def _query(self, name: str, rdtype: str) -> list[Any]:
        if self.resolver is None:
            return []
        try:
            return list(await self.resolver.resolve(name, rdtype, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return []
        except dns.exception.Timeout:
            log.warning("DNS %s lookup of %s timed out", rdtype, name)
            return []

    async def addresses(self, name: str) -> list[str]:
        """A then AAAA of `name` from our resolver; getaddrinfo when the DNS knows none (hosts file, mDNS)."""
        if is_literal(name):
            return [name.strip("[]")]
        found = [r.address for t in ("A", "AAAA") for r in await self._query(name, t)]
        if found:
            return found
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM), LOOKUP_TIMEOUT)
        except (TimeoutError, OSError) as e:
            raise LocateError(f"{name} does not resolve: {e}") from None
        return list(dict.fromkeys(str(i[4][0]) for i in infos))

    async def srv_records(self, host: str, transport: str) -> tuple[list[SrvRecord], str]:
        """The SRV records for the trunk's transport, found through NAPTR when published, and how."""
        host = host.rstrip(".")
        via = ""
        srv_name = SRV_PREFIX[transport] + host
        naptrs = [r for r in await self._query(host, "NAPTR")
                  if r.service.decode().upper() == NAPTR_SERVICE[transport] and r.flags.decode().lower() == "s"]
        if naptrs:
            best = min(naptrs, key=lambda r: (r.order, r.preference))
            srv_name = best.replacement.to_text().rstrip(".")
            via = f"NAPTR {NAPTR_SERVICE[transport]} → "
        records = [SrvRecord(r.priority, r.weight, r.port, r.target.to_text().rstrip("."))
                   for r in await self._query(srv_name, "SRV")]
        return records, f"{via}SRV {srv_name}"

    async def locate(self, host: str, port: int | None, transport: str) -> list[Target]:
        """Every target for a trunk, in the order to try them (never empty; LocateError when nothing resolves)."""
        transport = transport.lower()
        default_port = 5061 if transport == "tls" else 5060
        if is_literal(host):
            return [Target(host.strip("[]"), port or default_port, transport, host, "literal")]
        if port is None and transport in SRV_PREFIX and host.lower() != "localhost":
            records, via = await self.srv_records(host, transport)
            targets: list[Target] = []
            for r in order_srv(records, self.rng):
                try:
                    targets += [Target(a, r.port, transport, r.target, via) for a in await self.addresses(r.target)]
                except LocateError as e:
                    log.warning("SRV target skipped: %s", e)
            if targets:
                return targets
            if records:
                raise LocateError(f"no SRV target of {host} resolves")
        return [Target(a, port or default_port, transport, host, "A/AAAA") for a in await self.addresses(host)]

    async def locate_uri(self, uri: str, transport: str = "udp") -> list[Target]:
        """Every target for a SIP/SIPS URI (``maddr`` is not used): sips → TLS, else ;transport=, else
        `transport`; the URI's port, when it has one, skips NAPTR/SRV as in `locate`."""
        u = SipUri.parse(uri)
        chosen = "tls" if u.scheme == "sips" else str(u.params.get("transport") or transport).lower()
        if chosen not in SRV_PREFIX:
            raise LocateError(f"{uri}: unsupported transport {chosen!r}")
        return await self.locate(u.host.strip("[]"), u.port, chosen)

    async def trunk_addresses(self, host: str) -> list[str]:
        """Every address a trunk named `host` may send from: the servers its NAPTR/SRV records publish for any
        transport, and its own A/AAAA (inbound `auth_type: ip` with no allow-list; a trunk calls from the servers
        it publishes). Raises LocateError when none resolves."""
        if is_literal(host):
            return [host.strip("[]")]
        found = await asyncio.gather(*(self.locate(host, None, t) for t in SRV_PREFIX), self.addresses(host),
                                     return_exceptions=True)
        addrs: dict[str, None] = {}
        for result in found:
            if isinstance(result, list):
                addrs.update((t.address if isinstance(t, Target) else t, None) for t in result)
        if not addrs:
            raise LocateError(f"{host} does not resolve")
        return list(addrs)
