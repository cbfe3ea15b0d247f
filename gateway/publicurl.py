"""Whether carriers on the internet can reach the gateway's public URL.

Twilio, Exotel and Vonage fetch our webhooks and open our media websockets from their own clouds: a loopback or
private address, or plain http (Twilio and Exotel media streams need wss), cannot work for a real number.
`gateway serve` warns about it at start, and pointing a real number's webhooks at it is refused unless forced.
"""
from __future__ import annotations

import ipaddress

from yarl import URL


def unreachable_reason(public_url: str) -> str | None:
    """Why carriers could not reach `public_url`, or None when it looks reachable (https, public host)."""
    try:
        url = URL(public_url)
    except ValueError:
        return f"{public_url!r} is not a URL"
    host = (url.host or "").strip("[]").lower()
    if not host:
        return f"{public_url!r} has no host"
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal", ".lan")):
        return f"{host} is a local name"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.is_loopback:
            return f"{host} is a loopback address"
        if ip.is_private or ip.is_link_local or ip.is_unspecified or ip.is_reserved:
            return f"{host} is a private address"
    if url.scheme != "https":
        return f"{public_url} is not https (carriers need https and wss)"
    return None
