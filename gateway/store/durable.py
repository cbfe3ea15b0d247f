"""Which database failures are worth retrying, and the retry pacing of the store's write lanes (store.py).

A call-log write that failed because the database was briefly away (a restart, a failover, a killed backend, a
full pool) succeeds if tried again a little later with the very same rows; one that failed because of the rows
themselves (a value too long, a constraint) fails again however often it is tried. The first kind is kept and
retried, in order, for up to `--store-retry-seconds`; the second is narrowed down to the bad item, which alone is
dropped (docs/operations.md, "When the database blips").

Classified by the SQLSTATE the server sent when there is one, else by the kind of error the driver or the pool
raised. SQLSTATE classes from the PostgreSQL documentation, Appendix A "PostgreSQL Error Codes"
(https://www.postgresql.org/docs/current/errcodes-appendix.html):

- transient: class 08 "Connection Exception", 40 "Transaction Rollback" (40001 serialization_failure, 40P01
  deadlock_detected), 53 "Insufficient Resources" (disk full, out of memory, too many connections), and in class 57
  "Operator Intervention" 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now (the server is
  starting up or shutting down). 57014 query_canceled is not among them: someone cancelled it on purpose;
- permanent: everything else, in particular class 22 "Data Exception" and 23 "Integrity Constraint Violation".
"""
from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

TRANSIENT_CLASSES = ("08", "40", "53")
TRANSIENT_CODES = ("57P01", "57P02", "57P03")
#: SQLite's own "try again" answers (another writer holds the file): SQLITE_BUSY, SQLITE_LOCKED
_SQLITE_BUSY = (5, 6)

#: first pause after a failed attempt, and the longest one (seconds): a restart of a few seconds is noticed within
#: a second or two of its end, and a database that stays away is asked at most every `BACKOFF_CAP` seconds
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 2.0

#: seconds call set-up waits for its call-log row at most, however the database fails: a connect or a statement
#: to a database that does not answer is cut here (the call refused, SIP 503) rather than at the driver's timeouts
#: (connect.py); a carrier retries a refused call elsewhere far sooner than a caller waits on silence
SETUP_SECONDS = 2.0


class StoreUnavailableError(RuntimeError):
    """A call-log row could not be inserted within the set-up budget because the database is away (transient):
    call set-up is refused (SIP 503 + Retry-After, an API 503) rather than left waiting."""


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, the driver error SQLAlchemy wrapped (`orig`), and their causes, each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        orig = getattr(e, "orig", None)
        todo += [orig if isinstance(orig, BaseException) else None, e.__cause__, e.__context__]


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE the server answered with (asyncpg's `sqlstate`, psycopg's `pgcode`), if any."""
    for e in _chain(error):
        for attr in ("sqlstate", "pgcode"):
            code = getattr(e, attr, None)
            if isinstance(code, str) and len(code) == 5:
                return code
    return None


def is_transient(error: BaseException) -> bool:
    """Would the same write succeed once the database is back? (Module docstring for the classes.)"""
    code = sqlstate(error)
    if code is not None:
        return code[:2] in TRANSIENT_CLASSES or code in TRANSIENT_CODES
    for e in _chain(error):
        # no pool slot in time; a connect refused, reset, timed out or unresolved (OSError and its subclasses)
        if isinstance(e, PoolTimeoutError | OSError):
            return True
        if isinstance(e, DBAPIError) and e.connection_invalidated:   # SQLAlchemy saw the connection drop
            return True
        if isinstance(e, sqlite3.OperationalError) and getattr(e, "sqlite_errorcode", None) in _SQLITE_BUSY:
            return True
    return False


def reason(error: BaseException) -> str:
    """What went wrong, for a log line: the driver error's kind, SQLSTATE and message — never SQLAlchemy's text,
    which quotes the statement's parameters (the rows themselves)."""
    orig = getattr(error, "orig", None)
    e = orig if isinstance(orig, BaseException) else error
    code = sqlstate(error)
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}{f' [{code}]' if code else ''}: {text}" if text else type(e).__name__


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, …): doubling from BACKOFF_FIRST up to BACKOFF_CAP,
    each drawn between half and all of that so the workers of a node do not all reconnect at the same instant."""
    full = min(BACKOFF_CAP, BACKOFF_FIRST * 2.0 ** max(0, attempt - 1))
    return full * random.uniform(0.5, 1.0)
