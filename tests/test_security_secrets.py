"""Secrets at rest: trunk passwords and carrier tokens never sit in the database in plaintext (raw SQLite file
bytes, raw PostgreSQL rows), database and key files are 0600, old plaintext rows are encrypted on start, a wrong key
stops the start, and `gateway secrets rotate` re-encrypts everything under a new key."""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import sys

import pytest
from cryptography.fernet import Fernet, InvalidToken

from conftest import reset_postgres_schema
from gateway.secretbox import MARK, SecretBox, SecretKeyError, key_file, read_key_file
from gateway.store import Store
from sipp import sip_gateway, sip_number

PASSWORD = "TrunkPass-8842-zz"
PG_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL")


def raw_bytes(db: str) -> bytes:
    return b"".join(open(p, "rb").read() for p in (db, db + "-wal", db + "-shm") if os.path.exists(p))


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_imported_password_is_encrypted_in_the_sqlite_file(make_gateway, tmp_path):
    old_umask = os.umask(0o022)                     # what a default shell gives: files would be 0644
    try:
        gw = await sip_gateway(make_gateway, secret_key="")       # the key file in the data dir
        await sip_number(gw, auth_type="basic", allowed_ips=[], sip_username="carrier", sip_password=PASSWORD)
    finally:
        os.umask(old_umask)
    db = gw.settings.db_url
    await gw.store.flush()
    data = raw_bytes(db)
    assert data and PASSWORD.encode() not in data and b"sip_password" not in data
    assert MARK.encode() in data
    for p in (db, db + "-wal", db + "-shm", key_file(str(tmp_path))):
        if os.path.exists(p):
            assert mode(p) == 0o600, p
    # the gateway itself still reads it (inbound digest auth needs the password)
    n = await gw.store.find_number("+15550001111", "sip", with_secrets=True)
    assert n["secrets"]["sip_password"] == PASSWORD
    # and a key from elsewhere cannot
    with sqlite3.connect(db) as con:
        (stored,) = con.execute("SELECT secrets FROM phone_numbers").fetchone()
    with pytest.raises(SecretKeyError):
        SecretBox.generate().open(json.loads(stored))


async def _legacy_db(path: str) -> None:
    """A database as an older release left it: secrets in plaintext JSON, file 0644."""
    s = Store(path)
    await s.open()
    await s.close()
    with sqlite3.connect(path) as con:
        con.execute("INSERT INTO phone_numbers (phone_number, provider, config, secrets, status, created_at) VALUES "
                    "('+15550002222', 'sip', '{}', ?, '{}', '2025-01-01 00:00:00')",
                    (json.dumps({"sip_password": PASSWORD}),))
    os.chmod(path, 0o644)


async def test_plaintext_rows_are_encrypted_on_start_and_files_made_private(tmp_path):
    path = str(tmp_path / "gateway.db")
    await _legacy_db(path)
    assert PASSWORD.encode() in raw_bytes(path)
    box = SecretBox.load("", str(tmp_path))
    s = Store(path, box)
    await s.open()
    try:
        assert (await s.find_number("+15550002222", with_secrets=True))["secrets"] == {"sip_password": PASSWORD}
    finally:
        await s.close()
    assert PASSWORD.encode() not in raw_bytes(path)
    assert mode(path) == 0o600 and mode(key_file(str(tmp_path))) == 0o600
    # a tool that opens the store without the key reads the call log and numbers, never the secrets
    keyless = Store(path)
    await keyless.open()
    try:
        assert (await keyless.list_numbers())[1] == 1
        with pytest.raises(SecretKeyError):
            await keyless.find_number("+15550002222", with_secrets=True)
    finally:
        await keyless.close()
    # a different key cannot open that database: the start fails instead of running without credentials
    wrong = Store(path, SecretBox([Fernet.generate_key()], "test"))
    with pytest.raises(SecretKeyError, match="cannot be decrypted"):
        await wrong.open()
    await wrong.close()


async def test_gateway_secrets_rotate(tmp_path):
    path = str(tmp_path / "gateway.db")
    await _legacy_db(path)
    s = Store(path, SecretBox.load("", str(tmp_path)))
    await s.open()
    await s.close()
    (old_key,) = read_key_file(key_file(str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "secrets", "rotate", "--data-dir",
                                                str(tmp_path), env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    assert proc.returncode == 0, out
    assert "1 old key(s) retired" in out and old_key not in out
    (new_key,) = read_key_file(key_file(str(tmp_path)))
    assert new_key != old_key and mode(key_file(str(tmp_path))) == 0o600
    with sqlite3.connect(path) as con:
        (stored,) = con.execute("SELECT secrets FROM phone_numbers").fetchone()
    token = json.loads(stored)[MARK].encode()
    with pytest.raises(InvalidToken):
        Fernet(old_key).decrypt(token)
    assert json.loads(Fernet(new_key).decrypt(token)) == {"sip_password": PASSWORD}
    # the settings key (GATEWAY_SECRET_KEY) rotates by listing the new key first: the start re-encrypts
    newer = Fernet.generate_key().decode()
    s = Store(path, SecretBox.load(f"{newer},{new_key}", str(tmp_path)))
    await s.open()
    await s.close()
    with sqlite3.connect(path) as con:
        (stored,) = con.execute("SELECT secrets FROM phone_numbers").fetchone()
    assert json.loads(Fernet(newer).decrypt(json.loads(stored)[MARK].encode())) == {"sip_password": PASSWORD}


@pytest.mark.skipif(not PG_URL, reason="GATEWAY_TEST_POSTGRES_URL not set (no PostgreSQL server for this run)")
async def test_postgresql_rows_hold_no_plaintext(tmp_path):
    from sqlalchemy import text

    await reset_postgres_schema(PG_URL)
    s = Store(PG_URL, SecretBox.load("", str(tmp_path)))
    await s.open()
    try:
        n = await s.create_number({"phone_number": "+15550003333", "provider": "exotel", "config": {}},
                                  {"exotel_api_token": PASSWORD})
        async with s.engine.connect() as conn:
            raw = (await conn.execute(text("SELECT secrets::text FROM phone_numbers"))).scalar_one()
        assert PASSWORD not in raw and MARK in raw
        assert (await s.get_number(n["id"], with_secrets=True))["secrets"] == {"exotel_api_token": PASSWORD}
        await s.update_number(n["id"], secrets={"exotel_api_token": PASSWORD + "-2"})
        async with s.engine.connect() as conn:
            raw = (await conn.execute(text("SELECT secrets::text FROM phone_numbers"))).scalar_one()
        assert PASSWORD not in raw
    finally:
        await s.close()
