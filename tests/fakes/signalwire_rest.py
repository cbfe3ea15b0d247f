"""SignalWire's Compatibility (LaML) REST API as a local stand-in: the Twilio stand-in under /api/laml, with
project ids (UUIDs) for account SIDs (https://developer.signalwire.com/compatibility-api/rest/)."""
from __future__ import annotations

import uuid

from .twilio_rest import FakeTwilioRest


class FakeSignalWireRest(FakeTwilioRest):
    prefix = "/api/laml"

    def new_account_sid(self) -> str:
        return str(uuid.uuid4())
