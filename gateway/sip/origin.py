"""Who really sent a SIP request that a proxy in front of the gateway forwarded (docs/deploy.md, Kamailio).

Behind Kamailio every request arrives from Kamailio's own address, so a trunk authenticated by its source IP (and
the password-guessing ban, which is per source) would see only the proxy. deploy/kamailio/kamailio.cfg therefore
removes any `X-Gateway-Source` header a request brings from outside and adds its own, `X-Gateway-Source:
<ip>:<port>` (`[<ipv6>]:<port>`), from the address it received the request from. The gateway believes that header
only when the request comes from an address of `trusted_proxies` (`--trusted-proxy`); from anyone else it is
ignored, so a peer cannot claim to be a trunk by writing the header itself.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .message import SipRequest

HEADER = "X-Gateway-Source"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_proxies(specs: Iterable[str]) -> list[Network]:
    """Addresses or CIDR networks; ValueError naming the first entry that is neither."""
    nets: list[Network] = []
    for spec in specs:
        try:
            nets.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{spec!r} is not an IP address or network") from None
    return nets


def parse_source(value: str) -> tuple[str, int] | None:
    """`ip:port` or `[ipv6]:port` → (ip, port); None when it is not exactly that."""
    value = value.strip()
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return None


class TrustedProxies:
    """The proxies whose `X-Gateway-Source` names a request's original sender."""

    def __init__(self, specs: Iterable[str]) -> None:
        self.networks = parse_proxies(specs)

    def trusts(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)

    def origin(self, request: SipRequest, peer: tuple[str, int]) -> tuple[str, int]:
        """Where `request` really came from: the header's address when `peer` is a trusted proxy
        and the header is well-formed, else `peer` itself."""
        if not self.trusts(peer[0]):
            return peer
        value = request.headers.get(HEADER)
        found = parse_source(value) if value is not None else None
        return found or peer
