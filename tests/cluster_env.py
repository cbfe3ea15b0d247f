"""Real `gateway serve` processes for the cluster tests, a fresh PostgreSQL database per test, and polling.

Each process gets free loopback ports, its own data dir and `--node-id`, short heartbeat settings (0.5 s beat,
5 s stale: a lost process is noticed in seconds, while a live one starved of CPU on a busy test box is not
declared lost), and the fake Twilio REST API of the test.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from conftest import SECRET_KEY
from gateway.loadtest.command import free_port
from sipp import wait_for

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL")
API_KEY = "cluster-test-key"
HEARTBEAT = 0.5
STALE = 5.0


def require_pg() -> str:
    if not PG_URL:
        pytest.skip("GATEWAY_TEST_POSTGRES_URL not set (no PostgreSQL server for this run)")
    return PG_URL


def _with_db(url: str, db: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{db}"


async def create_database(prefix: str = "gw_cluster") -> str:
    """A new empty database next to GATEWAY_TEST_POSTGRES_URL's (the user has CREATEDB); returns its URL."""
    import asyncpg
    url = require_pg()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_db(url, name)


async def drop_database(db_url: str) -> None:
    import asyncpg
    name = db_url.rpartition("/")[2]
    conn = await asyncpg.connect(require_pg())
    try:
        for _ in range(50):
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except asyncpg.exceptions.InsufficientPrivilegeError:
                # a superuser's session is in it (autovacuum): not ours to end; it leaves within moments
                await asyncio.sleep(0.1)
    finally:
        await conn.close()


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A store URL on each backend: a SQLite file, then a fresh PostgreSQL database (skipped without a server)."""
    if request.param == "sqlite":
        yield str(tmp_path / "gw.db")
        return
    if not PG_URL:
        pytest.skip("GATEWAY_TEST_POSTGRES_URL not set (no PostgreSQL server for this run)")
    url = await create_database()
    yield url
    await drop_database(url)


async def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `check()` (plain or async) until it returns something truthy (tests/sipp.py's poller)."""
    return await wait_for(check, timeout, interval, what=what)


@dataclass
class GatewayProc:
    node_id: str
    port: int
    data_dir: str
    proc: subprocess.Popen
    log_path: str
    headers: dict[str, str] = field(default_factory=lambda: {"Authorization": f"Bearer {API_KEY}"})

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s:
            async with s.request(method, self.url("/api/v1" + path), json=body, headers=self.headers) as r:
                return r.status, await r.json()

    async def wait_healthy(self, timeout: float = 180) -> None:
        """Until /healthz answers 200. Start-up alone took over 60 s at load 35 on the 2-core box (a full-suite
        run with other suites beside it): the bound only stops a gateway that never comes up."""
        async def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway {self.node_id} exited ({self.proc.returncode}):\n{self.log()}")
            try:
                async with aiohttp.ClientSession() as s, s.get(self.url("/healthz")) as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False
        await wait_until(healthy, timeout, f"gateway {self.node_id} to answer /healthz", interval=0.1)

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")[-4000:]

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM (a graceful stop); `stop()` waits for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    async def stop(self, grace: float = 3) -> None:
        """SIGTERM (drain), and once the gateway has taken it (healthz no longer 200) a second SIGTERM (hang live
        calls up now: a test's teardown has no use for the drain's 300 s); SIGKILL 15 s later. Waiting for the first
        signal to be taken, not a fixed `grace`, keeps the two from merging into one pending signal on a busy box
        without costing every teardown the grace. The exit is waited for without blocking the event loop: the
        gateway's shutdown talks to the test's own stand-ins (webhook receiver, fake carrier REST API) in this loop,
        and a blocking wait left it waiting out its webhook and REST timeouts (10-15 s a teardown)."""
        self.terminate()

        async def taken() -> bool:
            if self.proc.poll() is not None:
                return True
            try:
                async with aiohttp.ClientSession() as s, s.get(self.url("/healthz")) as r:
                    return r.status != 200          # draining (or still starting: it stops starting)
            except aiohttp.ClientError:
                return True                         # its HTTP side is closing
        try:
            await wait_until(taken, grace, f"gateway {self.node_id} to take its SIGTERM")
        except AssertionError:
            pass
        if self.proc.poll() is not None:
            return
        self.terminate()
        try:
            await wait_until(lambda: self.proc.poll() is not None, 15, f"gateway {self.node_id} to exit")
        except AssertionError:
            self.proc.kill()
            self.proc.wait(5)


async def stop_all(procs: list[GatewayProc]) -> None:
    """Stop several gateways at once (their shutdowns overlap instead of adding up)."""
    for p in procs:
        p.terminate()
    await asyncio.gather(*(p.stop() for p in procs))


def start_gateway(tmp: Path, node_id: str, db: str, *, env: dict[str, str] | None = None,
                  port: int | None = None, args: tuple[str, ...] = ()) -> GatewayProc:
    """`gateway serve` with the echo engine, no SIP, Twilio/Vonage/Exotel carriers, `--node-id node_id`, and
    `args` (e.g. `--workers 2`)."""
    data_dir = tmp / node_id
    data_dir.mkdir(exist_ok=True)
    port = port or free_port()
    log_path = str(data_dir / "gateway.log")
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "GATEWAY_ENABLE_SIP": "false",
               "GATEWAY_CARRIERS": "twilio,vonage,exotel", "GATEWAY_HEARTBEAT_INTERVAL": str(HEARTBEAT),
               "GATEWAY_STALE_AFTER": str(STALE), "GATEWAY_CONTROL_TIMEOUT": "10",
               # nodes sharing one database share the key of its stored secrets (docs/security.md)
               "GATEWAY_SECRET_KEY": SECRET_KEY,
               "GATEWAY_ALLOW_PRIVATE_WEBHOOKS": "true",     # the tests' webhook receiver listens on 127.0.0.1
               **(env or {})}
    with open(log_path, "w") as log:   # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--http-port", str(port),
             "--db", db, "--data-dir", str(data_dir), "--engine", "echo", "--api-key", API_KEY,
             "--public-url", f"http://127.0.0.1:{port}", "--node-id", node_id, "--log-level", "INFO", *args],
            env=environ, stdout=subprocess.DEVNULL, stderr=log, cwd=str(ROOT))
    return GatewayProc(node_id, port, str(data_dir), proc, log_path)


@dataclass
class TwilioWorld:
    """What the cluster tests share: the fake Twilio REST API, one account whose number is bound to an agent with
    a webhook receiver, written straight into the database the gateways use."""
    rest: Any
    account: Any
    agent: dict[str, Any]
    number: dict[str, Any]

    @property
    def env(self) -> dict[str, str]:
        return {"GATEWAY_TWILIO_API_BASE": self.rest.url}

    async def inbound(self, gw: GatewayProc) -> tuple[str, str]:
        """Twilio's voice webhook for a new inbound call, answered by `gw`: returns (call_id, call_sid)."""
        import re

        from fakes.twilio_env import CALLER, NUMBER
        from gateway.simulate.twilio_stream import post_signed
        call_sid = self.rest.add_call(self.account)
        status, body = await post_signed(gw.url("/twilio/voice"), {
            "CallSid": call_sid, "AccountSid": self.account.sid, "From": CALLER, "To": NUMBER,
            "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}, self.account.token)
        assert status == 200, body
        m = re.search(r'<Parameter name="call_id" value="([0-9a-f]+)"', body)
        assert m, body
        assert f'url="{gw.ws_url("/twilio/media")}"' in body     # the stream URL names this node
        return m.group(1), call_sid

    async def stream(self, gw: GatewayProc, call_id: str, call_sid: str) -> Any:
        """Open the call's Media Stream on `gw` (any node) and send `connected` + `start`."""
        from gateway.simulate.twilio_stream import TwilioStreamClient
        client = TwilioStreamClient(gw.ws_url("/twilio/media"))
        await client.__aenter__()
        await client.start(call_id, call_sid=call_sid, account_sid=self.account.sid,
                           agent_id=str(self.agent["id"]))
        return client


async def twilio_world(db: str, webhook_url: str) -> TwilioWorld:
    from fakes.twilio_env import NUMBER
    from fakes.twilio_rest import FakeTwilioRest
    from gateway.secretbox import SecretBox
    from gateway.store import Store
    rest = await FakeTwilioRest().start()
    account = rest.add_account(numbers=(NUMBER,))
    store = Store(db, SecretBox([SECRET_KEY], "tests"))    # the nodes' key: they read the number's token
    await store.open()
    try:
        agent = await store.create_agent({"name": "cluster agent", "engine": "echo", "webhook_url": webhook_url})
        number = await store.create_number({"phone_number": NUMBER, "provider": "twilio", "agent_id": agent["id"],
                                            "config": {"account_sid": account.sid}},
                                           {"account_token": account.token})
    finally:
        await store.close()
    return TwilioWorld(rest, account, agent, number)


async def direct_urls(db: str, procs: set[str]) -> dict[str, str] | None:
    """{process id: its private URL} (`nodes.direct_url`) once every one of `procs` is alive with one, else None."""
    from gateway.store import Store
    store = Store(db)
    await store.open()
    try:
        nodes = await store.list_nodes(STALE)
    finally:
        await store.close()
    urls = {n["proc"]: n["direct_url"] for n in nodes if n["alive"] and n.get("direct_url")}
    return urls if procs <= set(urls) else None


async def call_row(gw: GatewayProc, call_id: str) -> dict[str, Any] | None:
    status, body = await gw.api("GET", f"/calls/logs/{call_id}")
    return body["call_log"] if status == 200 else None


async def live_calls(gw: GatewayProc) -> list[dict[str, Any]]:
    status, body = await gw.api("GET", "/calls/live")
    assert status == 200, body
    return body["calls"]


async def ended_row(gw: GatewayProc, call_id: str) -> dict[str, Any] | None:
    """The call's row once it has ended (None before)."""
    row = await call_row(gw, call_id)
    return row if row and row["ended_at"] else None


async def in_progress_on(gw: GatewayProc, call_id: str, owner: str) -> dict[str, Any] | None:
    """The call's row while it is in progress and owned by `owner` (None otherwise)."""
    row = await call_row(gw, call_id)
    return row if row and row["call_status"] == "in-progress" and row["owner"] == owner else None
