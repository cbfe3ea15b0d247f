"""The running gateway: settings, store, live calls, engines, webhooks, carriers and the HTTP server in one object.

Tests build one with `Gateway(settings)` and `await gw.start()` on ephemeral ports (`http_port=0`, `sip_port=0`),
exactly as `gateway serve` does on 8080/5060.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
from typing import Any

from aiohttp import web

from .callmanager import CallManager
from .carrier import Carrier, load_carriers
from .cluster import Membership, make_control
from .cluster.cachesync import CacheSync
from .config import Settings
from .dispatcher import Dispatcher
from .engine import EngineRegistry
from .health import HealthMonitor
from .httpguard import ConnectionGuard, GuardedSite, fd_budget, raise_fd_limit
from .metrics import GatewayMetrics
from .recording import Recordings
from .secretbox import SecretBox
from .store import Store
from .store.connect import DbTimeouts
from .throttle import FailureThrottle
from .tracing import CallTracing
from .webhooks import WebhookDispatcher

log = logging.getLogger("gateway")


def saved_api_key(data_dir: str) -> tuple[str, str]:
    """The key in `<data_dir>/api_key`, created (0600) on first use; with the file's path.

    The `serve --workers N` supervisor calls it before starting its workers, so they all read one key instead of
    racing to create N different ones.
    """
    path = os.path.join(data_dir, "api_key")
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip(), path
    os.makedirs(data_dir, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    log.warning("created API key", extra={"path": path})
    return key, path


class Gateway:
    def __init__(self, settings: Settings, carriers: dict[str, Carrier] | None = None,
                 engines: EngineRegistry | None = None) -> None:
        """`engines`: a registry already holding the operator's in-process engines (`gateway serve` checks them
        before importing the runtime); by default one for `settings.engine` / `settings.allowed_engines`."""
        self.settings = settings
        #: this gateway's Prometheus registry and series (gateway/metrics.py); before anything that counts
        self.metrics = GatewayMetrics()
        #: OpenTelemetry spans of call setup, when `otel_endpoint` is set (gateway/tracing.py)
        self.tracing = CallTracing.from_settings(settings)
        self.store = Store(settings.db_url, SecretBox.load(settings.secret_key, settings.data_dir))
        self.store.retry_seconds = settings.store_retry_seconds
        self.store.timeouts = DbTimeouts(settings.db_connect_timeout, settings.db_command_timeout,
                                         settings.db_pool_timeout)
        self.calls = CallManager(self)
        self.engines = engines if engines is not None else EngineRegistry(settings.engine, settings.allowed_engines)
        self.webhooks = WebhookDispatcher(retries=settings.webhook_retries, timeout=settings.webhook_timeout,
                                          allow_private=settings.allow_private_webhooks,
                                          max_pending=settings.webhook_outbox_max, store=self.store,
                                          owner=settings.proc_id)
        #: commands to the process owning a call (in process, or PostgreSQL LISTEN/NOTIFY in cluster mode)
        self.control = make_control(self.store.url, settings.proc_id, timeout=settings.control_timeout,
                                    keepalive=settings.heartbeat_interval)
        self.membership = Membership(self)
        #: places the calls of the dispatch queue (POST /calls/dispatch with queue, bulk calls)
        self.dispatcher = Dispatcher(self)
        #: number / trunk health records (OPTIONS probes, answer-seizure ratio, failure reasons)
        self.health = HealthMonitor(self)
        self.recordings = Recordings(self)
        self.calls.register_control()
        #: other processes' writes to agents and numbers reach this process's cache (and this one's theirs)
        self.cache_sync = CacheSync(self)
        self.cache_sync.register()
        self.api_key = settings.api_key
        #: sources that keep presenting a wrong API key (REST, engine socket, live page) are refused for a while
        self.api_throttle = FailureThrottle("API", logging.getLogger("gateway.api"), settings.auth_max_failures,
                                            settings.auth_failure_window, settings.auth_ban_seconds)
        self.app = web.Application(client_max_size=4 * 1024 * 1024)
        self.app["gateway"] = self
        self.carriers: dict[str, Carrier] = carriers if carriers is not None else load_carriers(self, settings.carriers)
        self.metrics.attach(self)
        self._runner: web.AppRunner | None = None
        self.http_guard: ConnectionGuard | None = None
        self.http_port: int | None = None
        #: where this very process is reached over HTTP/websocket (`direct_url`); under `--workers` a private port
        self.direct_port: int | None = None
        self.started = False
        #: docs/deploy.md "Graceful drain": set by `begin_drain()`; carriers then refuse new calls, SIP OPTIONS and
        #: /healthz answer 503. `drained` is set once the live calls are gone and webhooks are flushed.
        self.draining = False
        self.drained = asyncio.Event()
        self._drain_task: asyncio.Task[None] | None = None
        self._drain_now = asyncio.Event()
        self._state_task: asyncio.Task[None] | None = None

    def carrier_for(self, provider: str) -> Carrier | None:
        """The carrier that handles phone numbers of `provider` (twilio, exotel, vonage, sip…)."""
        for c in self.carriers.values():
            if provider in c.providers or provider == c.name:
                return c
        return None

    def ensure_api_key(self) -> str:
        """Use the configured key, else the one saved in the data dir, else create and save one (0600)."""
        if self.api_key:
            return self.api_key
        self.api_key, self.api_key_path = saved_api_key(self.settings.data_dir)
        return self.api_key

    def api_key_ok(self, presented: str | None, source_ip: str, **where: Any) -> bool:
        """Does `presented` match the API key (constant time)? A miss counts against `source_ip`'s throttle and is
        logged with the source address and `where` (path, method…) — never with the key presented."""
        key = self.api_key or ""
        if key and presented and hmac.compare_digest(presented.encode(), key.encode()):
            return True
        self.api_throttle.failure(source_ip, reason="invalid API key" if presented else "missing API key", **where)
        return False

    def build_app(self) -> web.Application:
        from .api import setup_api
        from .console import setup_routes as setup_console_routes
        from .dashboards import setup_routes as setup_dashboard_routes
        from .engine.ws_bridge import setup_routes as setup_engine_routes
        from .landing import setup_routes as setup_landing_routes
        from .live import setup_routes as setup_live_routes

        setup_api(self.app, self)
        setup_engine_routes(self.app, self)
        setup_live_routes(self.app, self)
        setup_console_routes(self.app, self)
        setup_dashboard_routes(self.app, self)
        setup_landing_routes(self.app, self)
        for carrier in self.carriers.values():
            carrier.setup(self.app)
        return self.app

    async def start(self) -> None:
        self.ensure_api_key()
        await self.store.open()
        await self.webhooks.restore()   # what a previous run of this process could not deliver
        self.build_app()             # registers the control ops before the bus can deliver any
        await self.control.start()
        await self.membership.start()  # closes what a previous run left open before any new call can arrive
        self.recordings.start_sweeper()  # first sweep now: recordings of those calls are repaired and finished
        s = self.settings
        self.http_guard = ConnectionGuard(
            max_connections=min(s.http_max_connections, fd_budget(raise_fd_limit(), s.max_calls)),
            max_per_ip=s.http_max_connections_per_ip, header_timeout=s.http_header_timeout)
        self._runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=s.http_idle_timeout)
        await self._runner.setup()
        # the workers of a node share its HTTP port (docs/deploy.md): the kernel spreads connections among them.
        # A single process keeps the plain bind, so a second `gateway serve` on the same port still fails loudly.
        site = GuardedSite(self._runner, s.host, s.http_port, self.http_guard, reuse_port=s.worker_index > 0 or None)
        await site.start()
        self.http_port = site.port
        if self.settings.http_port == 0:
            self.settings.http_port = self.http_port
        if s.worker_index > 0:
            # the shared port reaches whichever worker the kernel picks; peers that must reach this worker (an
            # accept-mode engine redirected here, docs/deploy.md) use a private port of its own (ephemeral)
            direct = GuardedSite(self._runner, s.host, 0, self.http_guard)
            await direct.start()
            self.direct_port = direct.port
        for carrier in self.carriers.values():
            await carrier.start()
            carrier.up = True
        await self.membership.announce()
        await self.dispatcher.start()
        await self.health.start()
        self.metrics.start()
        self.started = True
        if self.settings.allow_private_webhooks:
            log.warning("SSRF guard off: agent webhooks may reach loopback, private and link-local (cloud metadata) "
                        "addresses", extra={"setting": "allow_private_webhooks"})
        log.info("gateway started", extra={"http_port": self.http_port, "carriers": list(self.carriers)})

    def begin_drain(self, timeout: float | None = None) -> None:
        """Stop taking new calls; let live ones finish for `timeout` s (default `drain_timeout`), then hang up.

        Called on SIGTERM, by `POST /api/v1/nodes/{proc}/drain` and by the control bus. A second call while
        draining stops the waiting: the remaining calls are hung up with reason `shutdown` at once.
        """
        if self._drain_task is not None:
            self._drain_now.set()
            return
        self.draining = True
        limit = self.settings.drain_timeout if timeout is None else timeout
        log.warning("draining: new calls refused", extra={"proc": self.settings.proc_id, "live_calls":
                                                           len(self.calls.active), "drain_timeout": limit})
        self._drain_task = asyncio.ensure_future(self._drain(limit))
        self._spawn_state("draining")
        for carrier in self.carriers.values():
            try:
                carrier.on_drain()
            except Exception:
                log.exception("carrier drain hook failed", extra={"carrier": carrier.name})

    def _spawn_state(self, state: str) -> None:
        """Record the drain in the `nodes` table (other processes, `GET /api/v1/nodes`), in the background."""
        async def record() -> None:
            try:
                await self.membership.set_state(state)
            except Exception:
                log.exception("could not record the process state", extra={"state": state})
        self._state_task = asyncio.ensure_future(record())

    async def _drain(self, timeout: float) -> None:
        left = 0
        try:
            idle = asyncio.ensure_future(self.calls.wait_idle(timeout))
            now = asyncio.ensure_future(self._drain_now.wait())
            await asyncio.wait({idle, now}, return_when=asyncio.FIRST_COMPLETED)
            for t in (idle, now):
                t.cancel()
            left = len(self.calls.active)
            if left:
                log.warning("drain timeout: hanging up live calls", extra={"calls": left})
            await self.calls.hangup_all("shutdown")
            await self.webhooks.drain(self.settings.webhook_timeout)
        except Exception:
            # whatever failed, the drain ends: a process whose drain never set `drained` ignored every later
            # SIGTERM (a second one only cuts the wait above short) and had to be killed
            log.exception("drain failed; stopping anyway", extra={"proc": self.settings.proc_id})
        finally:
            log.warning("drained", extra={"proc": self.settings.proc_id, "hung_up": left})
            self.drained.set()

    async def stop(self) -> None:
        if self._drain_task is not None and not self._drain_task.done():
            self._drain_task.cancel()
        await self.dispatcher.stop()
        await self.health.stop()
        await self.calls.hangup_all("shutdown")
        for carrier in self.carriers.values():
            try:
                await carrier.stop()
            except Exception:
                log.exception("carrier stop failed", extra={"carrier": carrier.name})
        await self.recordings.stop()
        await self.webhooks.drain(2.0)
        await self.webhooks.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.membership.stop()
        await self.control.stop()
        await self.store.close()
        self.metrics.stop()
        await self.tracing.shutdown()
        self.started = False

    def waiting_for(self) -> list[str]:
        """What is not up yet for this process to take calls (/healthz answers 503 `starting` until it is all up):
        the HTTP port is bound before the carriers start (webhook URLs may need its port), so SIP, RTP and the
        other carriers, the control bus (cluster mode: commands and adoption reach us through it) and the end of
        start-up are each named until ready."""
        waiting = [name for carrier in self.carriers.values() for name in carrier.waiting_for()]
        if not self.control.connected:
            waiting.append("control_bus")
        if not self.started and not waiting:
            waiting.append("startup")
        return waiting

    @property
    def direct_url(self) -> str:
        """The base URL that reaches this process and no other: the node's public URL for a single process, the
        worker's private port (on `advertised_ip`, else the HTTP bind address) under `--workers`."""
        s = self.settings
        if self.direct_port is None:
            return s.public_base
        host = s.advertised_ip or ("127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host)
        return f"http://{host}:{self.direct_port}"

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def info(self) -> dict[str, Any]:
        return {"http_port": self.http_port, "carriers": list(self.carriers), "active_calls": len(self.calls.active),
                "proc": self.settings.proc_id, "node": self.settings.node_id,
                "store": "degraded" if self.store.degraded else "ok"}
