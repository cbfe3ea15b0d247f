"""Provider presets for SIP trunks: the defaults each provider needs, filled in only where the operator left a
field empty, plus the shape checks that catch the usual mistakes at import time (no network call).

Sources (looked up for this module, see docs/sip-trunks.md):
* Twilio Elastic SIP Trunking — termination URI ``<name>.pstn.twilio.com`` or a localized
  ``<name>.pstn.<edge>.twilio.com`` (twilio.com/docs/global-infrastructure/localized-uris/termination), Request-URI
  host must be that domain, numbers in E.164 with ``+``; termination authenticates by credential list (digest) or
  IP ACL, no REGISTER; origination INVITEs come from Twilio's signalling ranges
  (twilio.com/docs/sip-trunking/ip-addresses).
* RingCentral "existing phone" SIP credentials — registrar ``sip.ringcentral.com:5090``, an outbound proxy such as
  ``sip60.ringcentral.com:5090`` (region-specific), user name = the phone number, a separate *Authorization ID*
  for digest.
* Vonage (Nexmo) SIP — ``sip.nexmo.com`` or the regional ``sip-us1|us2|eu1|eu2|ap1|ap2.nexmo.com``; digest with the
  API key as user name and the API secret as password; numbers in E.164 without ``+``
  (developer.nexmo.com/voice/sip/overview).
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.sip.locate import is_literal
from gateway.sip.numbering import DialFormatError, check_dial_prefix

TRANSPORTS = ("udp", "tcp", "tls")
#: RTP protection per trunk (docs/sip-trunks.md "TLS and SRTP"): plain RTP, SDES-SRTP required, or SRTP offered
#: best effort (RFC 4568 §7.1.1: RTP/AVP with a=crypto) and plain RTP accepted
MEDIA_ENCRYPTION = ("none", "srtp", "optional")
AUTH_TYPES = ("basic", "ip")
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}

#: Twilio's regional SIP signalling ranges for origination (twilio.com/docs/sip-trunking/ip-addresses): one /30 per
#: region, all to be allowed because a trunk fails over across regions. Cross-checked on 2026-11-23 against several
#: public deployment configs quoting that page (the page itself was not in the search index): the same eight /30s.
TWILIO_SIGNALING_IPS = (
    "54.172.60.0/30", "54.244.51.0/30", "54.171.127.192/30", "35.156.191.128/30",
    "54.65.63.192/30", "54.169.127.128/30", "54.252.254.64/30", "177.71.206.192/30",
)
VONAGE_HOSTS = ("sip.nexmo.com", "sip-us1.nexmo.com", "sip-us2.nexmo.com", "sip-eu1.nexmo.com",
                "sip-eu2.nexmo.com", "sip-ap1.nexmo.com", "sip-ap2.nexmo.com")

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                       r"[A-Za-z0-9])?)*\.?$")
_TWILIO_HOST = re.compile(r"^[a-z0-9][a-z0-9-]*\.pstn(\.[a-z0-9-]+)?\.twilio\.com$", re.I)
_VONAGE_HOST = re.compile(r"^([a-z0-9-]+\.)*(sip(-[a-z]{2}\d?)?)\.nexmo\.com$", re.I)
_RC_HOST = re.compile(r"^([a-z0-9-]+\.)*ringcentral\.com$", re.I)


class PresetError(ValueError):
    """A field does not fit (`field` names it; the message never contains a secret)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Preset:
    name: str
    label: str
    defaults: dict[str, Any]
    check: Callable[[dict[str, Any]], None] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def _check_twilio(f: dict[str, Any]) -> None:
    if not _TWILIO_HOST.match(f["sip_host"]):
        raise PresetError("sip_host", f"{f['sip_host']!r} is not a Twilio termination URI; expected your trunk's "
                                      "domain such as mytrunk.pstn.twilio.com or mytrunk.pstn.ashburn.twilio.com")
    if f.get("register"):
        raise PresetError("register", "Twilio Elastic SIP trunks do not accept REGISTER; use a credential list "
                                      "(sip_username/sip_password) or an IP ACL")


def _check_ringcentral(f: dict[str, Any]) -> None:
    if not f.get("sip_username") or not f.get("sip_password"):
        raise PresetError("sip_username", "RingCentral needs the SIP user name (the phone number) and password "
                                          "from the device's SIP credentials")
    if not f.get("auth_username"):
        raise PresetError("auth_username", "RingCentral needs the Authorization ID from the device's SIP "
                                           "credentials (it differs from the user name)")
    if not _RC_HOST.match(f["sip_host"]):
        raise PresetError("sip_host", f"{f['sip_host']!r} is not a RingCentral host (e.g. sip.ringcentral.com)")


def _check_vonage(f: dict[str, Any]) -> None:
    if not _VONAGE_HOST.match(f["sip_host"]):
        raise PresetError("sip_host", f"{f['sip_host']!r} is not a Vonage SIP endpoint; use one of "
                                      f"{', '.join(VONAGE_HOSTS)}")
    if not f.get("sip_username") or not f.get("sip_password"):
        raise PresetError("sip_username", "Vonage authenticates every INVITE with your API key (sip_username) and "
                                          "API secret (sip_password)")


PRESETS: dict[str, Preset] = {
    "twilio": Preset("twilio", "Twilio Elastic SIP Trunking", {
        "sip_port": 5060, "transport": "udp", "register": False, "sip_strip_plus": False,
        "auth_type": "ip", "allowed_ips": list(TWILIO_SIGNALING_IPS),
    }, _check_twilio, ("Request-URI host must be the trunk's termination domain",)),
    "ringcentral": Preset("ringcentral", "RingCentral (registered SIP device)", {
        "sip_port": 5090, "transport": "udp", "register": True, "sip_strip_plus": True,
        "outbound_proxy": "sip60.ringcentral.com:5090", "auth_type": "ip",
    }, _check_ringcentral, ("inbound calls arrive on the registration; the registrar is the allowed source",)),
    "vonage": Preset("vonage", "Vonage SIP (API key / secret)", {
        "sip_port": 5060, "transport": "udp", "register": False, "sip_strip_plus": True, "auth_type": "ip",
    }, _check_vonage),
    "other": Preset("other", "Any SIP trunk (user name / password or IP)", {
        "sip_port": None, "transport": "udp", "register": False, "sip_strip_plus": False, "auth_type": "ip",
    }),
}

#: Fields a preset may fill (everything else comes from the operator only).
PRESET_FIELDS = ("sip_port", "transport", "register", "sip_strip_plus", "outbound_proxy", "auth_type",
                 "allowed_ips")


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v)


def apply_preset(fields: dict[str, Any]) -> dict[str, Any]:
    """Fill the preset's defaults where a field is empty, then the generic defaults, then check shapes.

    Explicit fields always win. Returns a new dict; raises PresetError naming the first bad field.
    """
    out = dict(fields)
    name = (out.get("preset") or "other")
    if name not in PRESETS:
        raise PresetError("preset", f"must be one of {', '.join(PRESETS)} (got {name!r})")
    preset = PRESETS[name]
    out["preset"] = name
    for key, value in preset.defaults.items():
        if _empty(out.get(key)) and value is not None:
            out[key] = list(value) if isinstance(value, list) else value
    out["transport"] = str(out.get("transport") or "udp").lower()
    if out["transport"] not in TRANSPORTS:
        raise PresetError("transport", f"must be one of {', '.join(TRANSPORTS)} (got {out['transport']!r})")
    if _empty(out.get("sip_port")):
        # a host name without a port is located through DNS NAPTR/SRV when calls are placed (RFC 3263 §4.2,
        # gateway/sip/locate.py), falling back to 5060/5061 there; an IP address gets the transport's port now
        out["sip_port"] = None if _is_name(out.get("sip_host")) else DEFAULT_PORTS[out["transport"]]
    out["register"] = _as_bool(out.get("register"), "register")
    # verification of the trunk's TLS certificate is on unless switched off (self-signed test peers only)
    out["tls_verify"] = True if out.get("tls_verify") is None else _as_bool(out.get("tls_verify"), "tls_verify")
    out["media_encryption"] = str(out.get("media_encryption") or "none").lower()
    if out["media_encryption"] not in MEDIA_ENCRYPTION:
        raise PresetError("media_encryption", f"must be one of {', '.join(MEDIA_ENCRYPTION)} "
                                              f"(got {out['media_encryption']!r})")
    out["sip_strip_plus"] = _as_bool(out.get("sip_strip_plus"), "sip_strip_plus")
    out["auth_type"] = (out.get("auth_type") or "ip").lower()
    if out["auth_type"] not in AUTH_TYPES:
        raise PresetError("auth_type", f"must be basic (digest challenge) or ip (allow-list) "
                                       f"(got {out['auth_type']!r})")
    check_shapes(out)
    if preset.check is not None:
        preset.check(out)
    return out


def _as_bool(v: Any, name: str) -> bool:
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return v.strip().lower() in ("true", "1", "yes")
    raise PresetError(name, "must be true or false")


def check_host(value: str, name: str = "sip_host") -> str:
    v = (value or "").strip()
    if not v:
        raise PresetError(name, "is required")
    try:
        ipaddress.ip_address(v.strip("[]"))
        return v
    except ValueError:
        pass
    if not _HOSTNAME.match(v):
        raise PresetError(name, f"{v!r} is not a host name or IP address (give the host only, without sip: or a "
                                "port)")
    return v


def _is_name(host: Any) -> bool:
    """A host name (not an IP address): its servers may be published through DNS SRV."""
    return isinstance(host, str) and bool(host.strip()) and not is_literal(host.strip())


def parse_hostport(value: str, name: str, default_port: int = 5060) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or ``sip:host:port`` → (host, port)."""
    v = re.sub(r"^sips?:", "", (value or "").strip(), flags=re.I).split(";", 1)[0]
    if v.startswith("["):
        host, _, rest = v[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif v.count(":") == 1:
        host, port_s = v.split(":")
    else:
        host, port_s = v, ""
    check_host(host, name)
    if port_s:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise PresetError(name, f"port {port_s!r} must be a number from 1 to 65535")
        return host, int(port_s)
    return host, default_port


def check_shapes(f: dict[str, Any]) -> None:
    f["sip_host"] = check_host(f.get("sip_host", ""))
    port = f.get("sip_port")
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port)
    srv = port is None and _is_name(f["sip_host"])   # located through DNS SRV
    if not srv and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
        raise PresetError("sip_port", "must be a port number from 1 to 65535")
    f["sip_port"] = port
    if not _empty(f.get("outbound_proxy")):
        parse_hostport(f["outbound_proxy"], "outbound_proxy")
    try:
        f["sip_dial_prefix"] = check_dial_prefix(f.get("sip_dial_prefix") or "")
    except DialFormatError as e:
        raise PresetError("sip_dial_prefix", str(e)) from None
    ips = f.get("allowed_ips") or []
    if isinstance(ips, str):
        ips = [x.strip() for x in ips.split(",") if x.strip()]
    clean = []
    for i, ip in enumerate(ips):
        try:
            clean.append(str(ipaddress.ip_network(str(ip).strip(), strict=False)))
        except ValueError:
            raise PresetError(f"allowed_ips[{i}]", f"{ip!r} is not an IP address or CIDR range") from None
    f["allowed_ips"] = clean
    for name in ("sip_username", "auth_username"):
        v = f.get(name)
        if v and (any(c in v for c in " \t\r\n\"<>@") or len(v) > 128):
            raise PresetError(name, "must not contain spaces, quotes, <, > or @ (give the user only, not user@host)")
    if f.get("auth_username") and not f.get("sip_username"):
        raise PresetError("sip_username", "is required when auth_username is given")
    if f.get("sip_username") and not f.get("sip_password"):
        raise PresetError("sip_password", "is required when sip_username is given")
    if f.get("register") and not f.get("sip_username"):
        raise PresetError("sip_username", "is required to register (register=true)")
    if f["auth_type"] == "basic" and not f.get("sip_username"):
        raise PresetError("sip_username", "auth_type basic challenges the carrier's INVITEs with digest and needs "
                                          "sip_username/sip_password")
