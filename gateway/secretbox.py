"""Secrets at rest: carrier credentials are stored encrypted with a key kept apart from the database.

A stolen `gateway.db` (or a PostgreSQL dump) must not hand out trunk passwords and carrier tokens. The `secrets`
column of a phone number therefore holds ``{"$fernet": "<token>"}``: the JSON of the secrets encrypted with
`cryptography`'s Fernet (AES-128-CBC + HMAC-SHA256, with a timestamp; https://cryptography.io/en/latest/fernet/).

The key comes from `GATEWAY_SECRET_KEY` (setting `secret_key`), else from `<data dir>/secret_key`, a file created
0600 next to the API key on first start. Several keys may be given, newest first (comma-separated in the setting,
one per line in the file): MultiFernet decrypts with any of them and encrypts with the first, which is how keys
rotate — `gateway secrets rotate` (or putting a new key first and starting the gateway) re-encrypts every row with
the newest key. Rows written by older releases in plaintext are encrypted when the store opens.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

MARK = "$fernet"
KEY_FILE = "secret_key"


class SecretKeyError(RuntimeError):
    """The configured key(s) cannot decrypt what the database holds, or a key is malformed."""


class SecretBox:
    """Seal and open the secrets dict of one row; `keys` newest first."""

    def __init__(self, keys: Sequence[bytes | str], source: str = "") -> None:
        if not keys:
            raise SecretKeyError("no secret key configured")
        try:
            self._fernets = [Fernet(k) for k in keys]
        except (ValueError, TypeError):
            raise SecretKeyError(f"malformed secret key in {source or 'the configuration'}: expected Fernet keys "
                                 "(32 url-safe base64 bytes, e.g. from `gateway secrets rotate`)") from None
        self._multi = MultiFernet(self._fernets)
        self.source = source

    @classmethod
    def generate(cls) -> SecretBox:
        """A box with a fresh key held only in memory (a throw-away store: benchmarks, tests)."""
        return cls([Fernet.generate_key()], "memory")

    @classmethod
    def load(cls, secret_key: str, data_dir: str) -> SecretBox:
        """The configured keys (`secret_key`, comma-separated), else the key file, created 0600 when missing."""
        if secret_key.strip():
            return cls([k.strip() for k in secret_key.split(",") if k.strip()], "GATEWAY_SECRET_KEY")
        path = key_file(data_dir)
        if not os.path.exists(path):
            create_key_file(path)
        return cls(read_key_file(path), path)

    @staticmethod
    def is_sealed(stored: Any) -> bool:
        return isinstance(stored, dict) and set(stored) == {MARK}

    def seal(self, secrets: dict[str, Any] | None) -> dict[str, str]:
        token = self._multi.encrypt(json.dumps(secrets or {}, separators=(",", ":")).encode())
        return {MARK: token.decode()}

    def open(self, stored: Any) -> dict[str, Any]:
        """The secrets of a row: decrypted, or as they are for a plaintext row an older release wrote."""
        if not self.is_sealed(stored):
            return dict(stored or {})
        try:
            opened: dict[str, Any] = json.loads(self._multi.decrypt(stored[MARK].encode()))
            return opened
        except InvalidToken:
            raise SecretKeyError(f"stored secrets cannot be decrypted with the key(s) from {self.source}: "
                                 "was the key changed without `gateway secrets rotate`?") from None

    def current(self, stored: Any) -> bool:
        """Is `stored` sealed with the newest key (nothing to re-encrypt)?"""
        if not self.is_sealed(stored):
            return False
        try:
            self._fernets[0].decrypt(stored[MARK].encode())
            return True
        except InvalidToken:
            return False

    def reseal(self, stored: Any) -> dict[str, str]:
        """`stored` (plaintext, or sealed with any known key) sealed again with the newest key."""
        return self.seal(self.open(stored))


def key_file(data_dir: str) -> str:
    return os.path.join(os.path.expanduser(data_dir), KEY_FILE)


def read_key_file(path: str) -> list[str]:
    with open(path) as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]


def write_key_file(path: str, keys: list[str]) -> None:
    """Replace the key file atomically, 0600 from the first byte (never world-readable, even briefly)."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# Fernet keys for the gateway's stored secrets, newest first. Keep apart from the database.\n")
        f.write("\n".join(keys) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def create_key_file(path: str) -> None:
    """Create the key file with a new key unless it exists: workers of one node starting together must all end up
    with the one key that won (a hard link to the final name fails when another process got there first)."""
    tmp = f"{path}.{os.getpid()}.new"
    write_key_file(tmp, [new_key()])
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def new_key() -> str:
    return Fernet.generate_key().decode()
