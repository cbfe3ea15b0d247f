"""How long the store waits for PostgreSQL before it calls the database away (docs/operations.md, "When the
database does not answer").

A database that refuses connections fails fast, and the write lanes' retries (durable.py) handle it. One that does
not answer at all — its host gone, packets dropped by a firewall or a failed-over address — fails nothing: asyncpg
waits 60 s for a new connection by default and for ever for the answer to a query, so an INVITE or an API request
waiting on it hung for a minute or more. These bounds turn that silence into an error the lanes already treat as
transient (asyncpg raises TimeoutError, an OSError). asyncpg's `connect()` takes `timeout` (seconds for the whole
connection attempt, default 60) and `command_timeout` (the default timeout of every statement on the connection,
default none) — asyncpg API reference, "Connection" (https://magicstack.github.io/asyncpg/current/api/index.html);
SQLAlchemy passes `connect_args` to it and bounds a wait for a free pool connection by `pool_timeout` (default 30 s).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

#: asyncpg's `Connection.close()` waits for the server to end the connection without a bound (`timeout=None`), and
#: SQLAlchemy closes pooled connections that way (a connection the pool discards, a reset that failed, `dispose`):
#: with the server gone silent, whatever closed one — a call set-up cut by its bound, a drain, a shutdown — waited
#: for ever (seen: a test through a black-hole relay never ended). Past this many seconds the connection is
#: aborted instead (asyncpg's own behaviour when its close times out).
CLOSE_SECONDS = 2.0


@functools.cache
def bounded_close_class() -> type:
    """An asyncpg connection class whose `close()` without a timeout waits at most CLOSE_SECONDS (imported late:
    asyncpg is the postgres extra's)."""
    import asyncpg

    class BoundedCloseConnection(asyncpg.Connection):
        async def close(self, *, timeout: float | None = None) -> None:
            await super().close(timeout=CLOSE_SECONDS if timeout is None else timeout)

    return BoundedCloseConnection


@dataclass(frozen=True)
class DbTimeouts:
    """Seconds; 0 turns a bound off. Defaults and the reason for each in docs/operations.md."""

    #: a whole new connection (TCP, TLS, authentication): milliseconds on a LAN, well under a second to a loaded
    #: server; 5 s leaves room for a busy box and still refuses a call before a carrier or caller gives up
    connect: float = 5.0
    #: one statement on a pooled connection: the longest the store runs are the API's call-log pages and counts
    #: (well under a second on millions of rows with the indexes); 30 s cuts a connection whose server vanished
    #: mid-query without cutting an honest slow read. Not for the schema work at start-up (an index built on a big
    #: table, a wait for another worker's schema lock) nor the cluster's LISTEN connection (its own, control.py)
    command: float = 30.0
    #: a free connection of the pool: they are all busy only while statements are slow, and each is bounded above
    pool: float = 10.0


def engine_options(url: str, timeouts: DbTimeouts, *, schema: bool = False) -> dict[str, Any]:
    """`create_async_engine` arguments bounding every wait on a PostgreSQL (asyncpg) database. `schema`: for the
    start-up's schema work, on unpooled connections (NullPool takes no `pool_timeout`) whose statements may run
    long: the connect timeout only. SQLite waits only for its own file: nothing to bound."""
    if not url.startswith("postgresql+asyncpg://"):
        return {}
    args: dict[str, Any] = {"connection_class": bounded_close_class()}
    if timeouts.connect > 0:
        args["timeout"] = timeouts.connect
    if schema:
        return {"connect_args": args}
    if timeouts.command > 0:
        args["command_timeout"] = timeouts.command
    options: dict[str, Any] = {"connect_args": args}
    if timeouts.pool > 0:
        options["pool_timeout"] = timeouts.pool
    return options
