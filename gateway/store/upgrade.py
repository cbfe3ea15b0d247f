"""Rebuild SQLite tables made before ids were declared never-reused (AUTOINCREMENT).

Without AUTOINCREMENT SQLite hands out max(rowid)+1, so deleting the newest agent or number and creating
another reuses its id, and the old calls' logs and webhooks read as the new one's. SQLite cannot add
AUTOINCREMENT to an existing table, so the table is rebuilt the way SQLite documents for schema changes it has
no ALTER for (https://www.sqlite.org/lang_altertable.html#otheralter): foreign keys off, new table, copy, drop,
rename, indexes, foreign_key_check, commit. The id counter then starts above every id the table ever gave out
that anything still remembers: its own rows and the call log's references to it. Ids deleted before the upgrade
and referenced nowhere cannot be known, and reusing one of those harms nothing.

Only agents and phone_numbers are rebuilt: they are the tables whose rows are deleted. Call-log rows and call
events are never deleted, so max(rowid)+1 never repeats an id there, and copying a large call log at start-up
would cost minutes for nothing. New databases get AUTOINCREMENT on every table from the models.
"""
from __future__ import annotations

import logging
from typing import Any, cast

from sqlalchemy import MetaData, Table
from sqlalchemy.schema import CreateTable

from .models import Agent, PhoneNumber

log = logging.getLogger("gateway.store")

#: table → the (table, column) pairs elsewhere that remember its ids
REBUILT: dict[Table, tuple[tuple[str, str], ...]] = {
    cast(Table, Agent.__table__): (("calls", "agent_id"), ("phone_numbers", "agent_id")),
    cast(Table, PhoneNumber.__table__): (("calls", "phone_number_id"),),
}


def _needs_rebuild(sync_conn: Any, name: str) -> bool:
    sql = sync_conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                                    (name,)).scalar()
    return sql is not None and "AUTOINCREMENT" not in sql.upper()


def _columns(sync_conn: Any, name: str) -> set[str]:
    return {row[1] for row in sync_conn.exec_driver_sql(f'PRAGMA table_info("{name}")')}


def _rebuild(sync_conn: Any, table: Table, refs: tuple[tuple[str, str], ...]) -> None:
    name, tmp = table.name, f"{table.name}__rebuild"
    common = [c.name for c in table.columns if c.name in _columns(sync_conn, name)]
    cols = ", ".join(f'"{c}"' for c in common)
    sync_conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{tmp}"')
    scratch = MetaData()   # the models' tables, so the copy's foreign keys resolve, plus the copy itself
    for t in table.metadata.sorted_tables:
        t.to_metadata(scratch)
    new = table.to_metadata(scratch, name=tmp)
    sync_conn.exec_driver_sql(str(CreateTable(new).compile(dialect=sync_conn.dialect)))
    sync_conn.exec_driver_sql(f'INSERT INTO "{tmp}" ({cols}) SELECT {cols} FROM "{name}"')
    high = sync_conn.exec_driver_sql(f'SELECT COALESCE(MAX(id), 0) FROM "{name}"').scalar()
    for other, column in refs:
        if column in _columns(sync_conn, other):
            high = max(high, sync_conn.exec_driver_sql(
                f'SELECT COALESCE(MAX("{column}"), 0) FROM "{other}"').scalar())
    sync_conn.exec_driver_sql(f'DROP TABLE "{name}"')
    sync_conn.exec_driver_sql(f'ALTER TABLE "{tmp}" RENAME TO "{name}"')
    for index in table.indexes:
        index.create(sync_conn)
    sync_conn.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name IN (?, ?)", (name, tmp))
    sync_conn.exec_driver_sql("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (name, high))
    log.warning("database upgraded: ids are never reused", extra={"table": name, "next_id": high + 1})


def never_reuse_ids(sync_conn: Any) -> None:
    """Rebuild every table of REBUILT that lacks AUTOINCREMENT (SQLite only; run outside a transaction)."""
    if sync_conn.dialect.name != "sqlite":
        return
    todo = [(t, refs) for t, refs in REBUILT.items() if _needs_rebuild(sync_conn, t.name)]
    if not todo:
        return
    # Dropping `agents` with foreign keys on would run its ON DELETE SET NULL and detach every number. The pragma
    # only takes effect outside a transaction, so it comes first on this connection, and is checked.
    sync_conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
    if sync_conn.exec_driver_sql("PRAGMA foreign_keys").scalar() != 0:
        raise RuntimeError("cannot turn SQLite foreign keys off for the id upgrade (inside a transaction?)")
    try:
        sync_conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            for table, refs in todo:
                _rebuild(sync_conn, table, refs)
            broken = sync_conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"id upgrade would break foreign keys: {broken[:3]}")
            sync_conn.exec_driver_sql("COMMIT")
        except BaseException:
            sync_conn.exec_driver_sql("ROLLBACK")
            raise
    finally:
        sync_conn.exec_driver_sql("PRAGMA foreign_keys=ON")
