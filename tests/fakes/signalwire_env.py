"""The Twilio test set-up (tests/fakes/twilio_env.py) with SignalWire's carrier, stand-in and account shape."""
from __future__ import annotations

from carriers.signalwire import SIGNATURE_HEADER, SignalWireCarrier

from .signalwire_rest import FakeSignalWireRest
from .twilio_env import Flavour, env_fixture

SIGNALWIRE = Flavour(
    "signalwire", SignalWireCarrier, FakeSignalWireRest,
    lambda acc, key: ({"project_id": acc.sid, "space_url": "example.signalwire.com"},
                      {"api_token": acc.token, **({"signing_key": key} if key else {})}),
    signature_header=SIGNATURE_HEADER)

signalwire_env = env_fixture(SIGNALWIRE)
