"""A throwaway PostgreSQL server a test owns: its own data directory, port and socket directory, started, stopped
and started again with `pg_ctl`, so a test can take the database away under a running store and bring it back.

The server binds 127.0.0.1 only, trusts local connections (nothing else can reach it) and skips fsync (its data
is thrown away; see `start`). PostgreSQL refuses to run as root: under root the commands run as the `postgres` user
(`runuser`), whose data directory is then made under /tmp, not in pytest's root-only tmp_path.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

from gateway.loadtest.command import free_port


def _binary(name: str) -> str | None:
    """`name` from PATH, else from the newest /usr/lib/postgresql/N/bin (Debian keeps initdb off PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]), reverse=True):
        if os.access(os.path.join(bindir, name), os.X_OK):
            return os.path.join(bindir, name)
    return None


def _run_as() -> tuple[list[str], str | None]:
    """The command prefix that runs PostgreSQL's tools as a non-root user, and that user (None: ourselves)."""
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run a throwaway PostgreSQL server as")
    if shutil.which("runuser") is None:
        pytest.skip("running as root without `runuser` to start a throwaway PostgreSQL server as `postgres`")
    return ["runuser", "-u", "postgres", "--"], "postgres"


class ThrowawayCluster:
    """One PostgreSQL server: `start()`, `stop()` (fast shutdown: every backend ends, new connections refused
    until `start()` again, on the same port), `close()` stops it for good and deletes its files."""

    def __init__(self) -> None:
        initdb, self.pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if initdb is None or self.pg_ctl is None:
            pytest.skip("PostgreSQL's initdb/pg_ctl not installed (a throwaway server is needed)")
        self.prefix, user = _run_as()
        self.root = tempfile.mkdtemp(prefix="gw-pg-")
        self.data, self.sockets, self.logfile = (os.path.join(self.root, n) for n in ("data", "sock", "server.log"))
        os.mkdir(self.sockets)
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (self.root, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.port = free_port()
        self.url = f"postgresql://gw@127.0.0.1:{self.port}/postgres"
        self._cmd([initdb, "-D", self.data, "-U", "gw", "--auth=trust", "-N", "-E", "UTF8", "--locale=C"])
        self.running = False

    def _cmd(self, argv: list[str]) -> None:
        done = subprocess.run(self.prefix + argv, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(argv[:2])} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
                                 f"{self.log()}")

    def log(self) -> str:
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        """Start the server and wait (pg_ctl -w) until it accepts connections."""
        # fsync off: the files need not survive the machine, only the server (a commit is still written to the
        # OS before it is acknowledged; synchronous_commit=off would lose acknowledged commits in an `immediate`
        # stop, which is a crash)
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} -c fsync=off "
                   "-c full_page_writes=off -c max_connections=40 -c shared_buffers=16MB")
        self._cmd([self.pg_ctl, "-D", self.data, "-l", self.logfile, "-o", options, "-w", "-t", "120", "start"])
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and wait until it is down: `fast` ends every session (admin_shutdown), `immediate`
        is a crash (no shutdown at all; the next start recovers)."""
        self._cmd([self.pg_ctl, "-D", self.data, "-m", mode, "-w", "-t", "120", "stop"])
        self.running = False

    def close(self) -> None:
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
