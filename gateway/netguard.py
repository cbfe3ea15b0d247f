"""SSRF guard for URLs an API user gives the gateway to call (agent `webhook_url`).

Without it, whoever may create an agent could make the gateway POST to `http://169.254.169.254/` (cloud metadata),
`http://127.0.0.1:…` (the gateway's own or a neighbour's admin port) or anything on the private network behind it.
The rule: the destination must be a public address — not loopback, private (RFC 1918, ULA), link-local (which holds
the metadata address), carrier-grade NAT, multicast, unspecified or reserved — unless the operator sets
`allow_private_webhooks` (`--allow-private-webhooks`).

It is checked twice:

* **when the URL is saved** (`check_destination`): an IP literal, or a name resolving to a forbidden address, is
  refused with a 400 that names the field; a name that does not resolve yet is accepted (it is checked again at
  every delivery);
* **at every delivery, after DNS resolution** (`GuardedResolver`, the resolver of the webhook HTTP client): every
  address the name resolves to must be allowed, and aiohttp connects to exactly the addresses this resolver
  returned, so a name that answers a public address at save time and 127.0.0.1 later (DNS rebinding) is refused at
  connection time, with no second lookup in between. IP-literal URLs never reach a resolver, so `check_url`
  refuses them before the request.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class BlockedDestination(OSError):
    """The URL points at an address outbound requests may not reach (an OSError so aiohttp reports it as a
    connection error of that request)."""


def forbidden_kind(ip: IPAddress) -> str | None:
    """Why outbound requests may not go to `ip` ("loopback", "private"…), or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (cloud metadata)"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "shared (carrier-grade NAT)"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


def _refuse(host: str, address: str) -> None:
    kind = forbidden_kind(ipaddress.ip_address(address.split("%", 1)[0]))
    if kind is not None:
        shown = host if host == address else f"{host} ({address})"
        raise BlockedDestination(f"{shown} is a {kind} address; webhooks go to public addresses only "
                                 "(--allow-private-webhooks lifts this)")


def check_url(url: str, allow_private: bool) -> None:
    """Refuse an IP-literal URL host that is not public (names are checked by the resolver)."""
    if allow_private:
        return
    host = (URL(url).host or "").strip("[]")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return
    _refuse(host, host)


async def check_destination(url: str, allow_private: bool, timeout: float = 3.0) -> None:
    """Save-time check of a URL: raises BlockedDestination when its host is, or resolves to, a forbidden address."""
    if allow_private:
        return
    check_url(url, allow_private)
    host = (URL(url).host or "").strip("[]")
    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM),
                                       timeout)
    except (TimeoutError, OSError, UnicodeError):
        return              # does not resolve (yet): refused at delivery if it ever resolves to a forbidden address
    for info in infos:
        _refuse(host, str(info[4][0]))


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that returns a name's addresses only when every one of them is allowed. The connector
    connects to these very addresses (Host header and TLS SNI keep the name), which pins the checked IPs."""

    def __init__(self, allow_private: bool = False) -> None:
        self.allow_private = allow_private
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        infos = await self._inner.resolve(host, port, family)
        if not self.allow_private:
            for info in infos:
                _refuse(host, info["host"])
        return infos

    async def close(self) -> None:
        await self._inner.close()
