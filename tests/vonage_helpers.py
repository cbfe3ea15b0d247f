"""Test doubles for Vonage: the Voice API's media websocket client (gateway/simulate/vonage_stream.py, shared with
`gateway simulate`; the REST stand-in is tests/fakes/vonage_rest.py).

The websocket side follows Vonage's protocol: the first text message is `websocket:connected` with the NCCO's
content-type and headers, then binary 16-bit PCM frames of 20 ms; `notify` is answered with `websocket:notify`
(payload echoed) and `clear` with `websocket:cleared`.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fakes.vonage_rest import API_KEY, API_SECRET, APP_ID, VONAGE_NUMBER, FakeVonageApi  # noqa: F401
from gateway.simulate.vonage_stream import VonageStreamClient as FakeVonageSocket  # noqa: F401


def rsa_private_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


#: the account's signature secret: numbers in tests are imported with it, as the gateway requires by default
SIGNATURE_SECRET = "vonage-signature-secret-0123456789"


def signed_headers(secret: str = SIGNATURE_SECRET) -> dict[str, str]:
    """What Vonage sends with a signed webhook: `Authorization: Bearer <JWT>`, HS256 with the signature secret."""
    token = jwt.encode({"iat": int(time.time()), "jti": str(uuid.uuid4()), "api_key": API_KEY}, secret, "HS256")
    return {"Authorization": f"Bearer {token}"}


async def add_vonage_number(gw, *, agent_id: int | None = None, private_pem: str | None = None,
                            signature_secret: str | None = SIGNATURE_SECRET, rate: int = 16000,
                            allow_unsigned: bool = False) -> dict[str, Any]:
    """A Vonage number as an import stores it: signed webhooks (SIGNATURE_SECRET) unless `signature_secret=None`;
    `allow_unsigned` is the explicit opt-out."""
    secrets = {}
    if private_pem:
        secrets["vonage_private_key"] = private_pem
    if signature_secret:
        secrets["vonage_signature_secret"] = signature_secret
    config = {"vonage_application_id": APP_ID if private_pem else None, "vonage_audio_rate": rate}
    if allow_unsigned:
        config["vonage_allow_unsigned_webhooks"] = True
    return await gw.store.create_number(
        {"phone_number": VONAGE_NUMBER, "provider": "vonage", "agent_id": agent_id, "name": "v", "config": config},
        secrets)
