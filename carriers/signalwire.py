"""SignalWire through its Twilio-compatible LaML (cXML) API: the Twilio carrier with SignalWire's account shape.

SignalWire's Compatibility API answers the 2010-04-01 REST resources Twilio's SDK speaks (Calls, Accounts,
IncomingPhoneNumbers) under `https://{space}.signalwire.com/api/laml`, with Basic auth project id : API token; its
voice webhooks POST Twilio's form fields and expect LaML (TwiML) back, and `<Connect><Stream>` opens a bidirectional
media stream with Twilio's Media Streams messages. So everything here is carriers/twilio.py and
carriers/twilio_media.py; this module only says what differs:

* credentials: a project id (a UUID), an API token, the space host, and optionally the project's Signing Key;
* the REST base is per space (`GATEWAY_SIGNALWIRE_API_BASE` points every space at a stand-in in tests);
* webhooks are signed like Twilio's (HMAC-SHA1 over URL + sorted form parameters, base64) in
  `X-SignalWire-Signature` (also sent as `X-Twilio-Signature`), keyed with the Signing Key (older projects: the
  API token);
* URLs live under /signalwire/…; `settings.amd.provider: "signalwire"` asks SignalWire's compatible AMD.

Sources: see docs/signalwire.md.
"""
from __future__ import annotations

import re
from typing import Any

from yarl import URL

from gateway.carrier import CarrierError, ImportField

from .numberfields import number_settings
from .twilio import TwilioCarrier, TwilioCreds

SIGNATURE_HEADER = "X-SignalWire-Signature"
COMPAT_SIGNATURE_HEADER = "X-Twilio-Signature"
_PROJECT_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$")


def space_host(space: Any) -> str | None:
    """`example.signalwire.com`, `https://example.signalwire.com/` → `example.signalwire.com`; None if not a host."""
    text = str(space or "").strip().lower()
    host = URL(text).host if "://" in text else text.rstrip("/")
    return host if host and _HOST.match(host) else None


def signalwire_creds(number: dict[str, Any] | None) -> TwilioCreds | None:
    merged = number_settings(number)
    project, token, space = merged.get("project_id"), merged.get("api_token"), space_host(merged.get("space_url"))
    if not (project and token and space):
        return None
    return TwilioCreds(str(project), str(token), str(merged.get("signing_key") or "") or None, space)


class SignalWireCarrier(TwilioCarrier):
    name = "signalwire"
    providers = ("signalwire",)
    import_fields = (
        ImportField("phone_number", str, required=True, e164=True, help="the SignalWire number, E.164"),
        ImportField("project_id", str, required=True, help="SignalWire Project ID (a UUID)"),
        ImportField("api_token", str, required=True, secret=True, help="SignalWire API token of the project"),
        ImportField("space_url", str, required=True, help="the Space host, e.g. example.signalwire.com"),
        ImportField("signing_key", str, secret=True,
                    help="the project's Signing Key (webhook signatures); without it the API token is used"),
        *TwilioCarrier.import_fields[3:],     # name, configure_webhooks, force_webhooks
    )

    label = "SignalWire"
    amd_provider = "signalwire"
    account_sid_pattern = _PROJECT_ID
    account_sid_rule = "project_id must be a SignalWire Project ID (a UUID)"
    sid_field, token_field = "project_id", "api_token"
    credentials_label = "project id / API token"
    signature_headers = (SIGNATURE_HEADER, COMPAT_SIGNATURE_HEADER)
    api_base_env = "GATEWAY_SIGNALWIRE_API_BASE"

    def creds_of(self, number: dict[str, Any] | None) -> TwilioCreds | None:
        return signalwire_creds(number)

    def rest_base(self, creds: TwilioCreds) -> str | None:
        if self.api_base_url:
            return self.api_base_url.rstrip("/")
        return f"https://{creds.space}/api/laml"

    async def validate_import(self, fields: dict[str, Any]) -> dict[str, Any]:
        space = space_host(fields.get("space_url"))
        if space is None:
            raise CarrierError("space_url: not a host name (give your Space, e.g. example.signalwire.com)", 422,
                               "space_url")
        return await super().validate_import({**fields, "space_url": space})
