"""A database made by an older release (a table without a column added since) is brought up to the models."""
import sqlite3

import sqlalchemy
from sqlalchemy import MetaData, create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from cluster_env import db_url  # noqa: F401  (db_url: the shared two-backend fixture)
from gateway.store import Store
from gateway.store.models import Base
from gateway.store.store import _add_missing_columns, database_url


async def test_missing_column_is_added_and_rows_kept(tmp_path):
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE agents (id INTEGER PRIMARY KEY AUTOINCREMENT, name VARCHAR(200) NOT NULL, "
                "engine VARCHAR(500), settings JSON, created_at DATETIME)")  # no webhook_url: an older schema
    con.execute("INSERT INTO agents (name, settings) VALUES ('old', '{}')")
    con.commit()
    con.close()

    store = Store(str(path))
    await store.open()
    try:
        agents = await store.list_agents()
        assert [a["name"] for a in agents] == ["old"]
        assert agents[0]["webhook_url"] is None
        await store.update_agent(agents[0]["id"], {"webhook_url": "https://example.com/hook"})
        assert (await store.get_agent(agents[0]["id"]))["webhook_url"] == "https://example.com/hook"
    finally:
        await store.close()


async def test_tables_without_autoincrement_are_rebuilt_so_ids_are_never_reused(tmp_path):
    """Regression (issue 14): an SQLite database made before AUTOINCREMENT reused the newest deleted id, so old
    call logs read as the new agent's. The upgrade keeps every row and attachment, and starts ids above every id
    still remembered anywhere (here agent 3 survives only in the call log)."""
    path = tmp_path / "old.db"
    old = MetaData()   # the schema an older release made: the same tables without AUTOINCREMENT
    for table in Base.metadata.sorted_tables:
        table.to_metadata(old).dialect_options["sqlite"]["autoincrement"] = False
    engine = create_engine(f"sqlite:///{path}")
    old.create_all(engine)
    engine.dispose()
    con = sqlite3.connect(path)
    at = "2026-01-01 00:00:00.000000"
    con.execute("INSERT INTO agents (id, name, settings, created_at) VALUES (1, 'one', '{}', ?), (2, 'two', '{}', ?)",
                (at, at))
    con.execute("INSERT INTO phone_numbers (id, phone_number, provider, agent_id, config, secrets, status, "
                "created_at) VALUES (1, '+14155550100', 'sip', 2, '{}', '{}', '{}', ?)", (at,))
    # agent 3 and number 5 were deleted long ago: only the call log remembers them
    con.execute("INSERT INTO calls (id, call_uuid, channel_type, call_direction, call_status, created_at, "
                "is_call_transfer, amd_detected, is_voicemail, is_fax, call_context, extra, agent_id, "
                "phone_number_id) VALUES (1, 'u1', 'sip', 'inbound', 'completed', ?, 0, 0, 0, 0, '{}', '{}', 3, 5)",
                (at,))
    con.commit()
    con.close()

    store = Store(str(path))
    await store.open()
    await store.close()
    store = Store(str(path))
    await store.open()   # a second open finds nothing to do
    try:
        assert [a["name"] for a in await store.list_agents()] == ["one", "two"]
        assert (await store.get_number(1))["agent_id"] == 2            # attachment kept through the rebuild
        await store.delete_agent(2)
        assert (await store.get_number(1))["agent_id"] is None          # foreign keys still enforced
        # a row inserted after the first upgrade: next ids continue the sequence, deleted ones never return
        new = await store.create_agent({"name": "new", "settings": {}})
        assert new["id"] == 4
        await store.delete_agent(new["id"])
        assert (await store.create_agent({"name": "newer", "settings": {}}))["id"] == 5
        await store.delete_number(1)
        n = await store.create_number({"phone_number": "+14155550101", "provider": "sip"}, {})
        assert n["id"] == 6
    finally:
        await store.close()
    con = sqlite3.connect(path)
    ddl = dict(con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
    indexes = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    con.close()
    assert "AUTOINCREMENT" in ddl["agents"] and "AUTOINCREMENT" in ddl["phone_numbers"]
    assert "agents__rebuild" not in ddl and "ix_phone_numbers_phone_number" in indexes


async def test_index_made_by_a_racing_worker_is_not_created_twice(db_url, monkeypatch):
    """The workers of `serve --workers N` upgrade the same database together: one may find an index missing
    while another creates it. Replayed deterministically: every index exists, but the inspector (this worker's
    earlier look) reports none, so the upgrade must create them only if they still do not exist."""
    engine = create_async_engine(database_url(db_url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        real_inspect = sqlalchemy.inspect

        def stale_inspect(conn: object) -> object:
            inspector = real_inspect(conn)
            monkeypatch.setattr(inspector, "get_indexes", lambda table_name: [])
            return inspector

        monkeypatch.setattr(sqlalchemy, "inspect", stale_inspect)
        async with engine.begin() as conn:
            await conn.run_sync(_add_missing_columns)   # raised "index already exists" before IF NOT EXISTS
        monkeypatch.undo()
        async with engine.connect() as conn:
            indexes = await conn.run_sync(lambda c: sqlalchemy.inspect(c).get_indexes("phone_numbers"))
        names = {i["name"] for i in indexes}
        assert "ix_phone_numbers_phone_number" in names
    finally:
        await engine.dispose()
