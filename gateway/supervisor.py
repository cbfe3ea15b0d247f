"""`gateway serve --workers N`: a supervisor process that runs N gateway workers on one machine (docs/deploy.md).

The supervisor holds no calls. Worker k (1-based) is `gateway serve … --worker-index k`: process id `<node>.<k>`,
SIP on `sip_port + k`, RTP ports in slice k of the range, and the shared HTTP port (SO_REUSEPORT). Kamailio
listens on `sip_port` and spreads calls over the workers by Call-ID (deploy/kamailio/kamailio.cfg, with the
`dispatcher.list` the supervisor writes into the data dir: gateway/kamailio.py).

A worker that dies (signal, non-zero exit) is started again with the same index, so it is the same process id
and closes its own orphans. A worker that exits 0 was drained on purpose (`gateway drain <node>.<k>`) and stays
down. SIGTERM/SIGINT drains every worker (forwarded as SIGTERM; a second signal is forwarded again, which makes
the workers hang up at once) and the supervisor exits when all of them have.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
import time

from .config import Settings
from .kamailio import write_dispatcher_list
from .runtime import saved_api_key
from .workers import worker_slot

log = logging.getLogger("gateway.supervisor")

RESTART_DELAY = (1.0, 30.0)  # first delay before restarting a worker that died, cap for one that keeps dying
STABLE_AFTER = 30.0         # a worker that ran this long before dying is restarted after the first delay again


def _worker_preexec() -> None:
    """In the child before exec: its own process group, so a Ctrl-C in the terminal reaches the supervisor only
    (which forwards one SIGTERM); and SIGTERM (= drain) when the supervisor dies, so no worker outlives it."""
    os.setpgid(0, 0)
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class Supervisor:
    def __init__(self, settings: Settings, serve_argv: list[str]) -> None:
        self.settings = settings
        self.serve_argv = serve_argv     # the `serve` arguments as given; each worker adds --worker-index k
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.exit_codes: dict[int, int] = {}

    def command(self, index: int) -> list[str]:
        return [sys.executable, "-m", "gateway", "serve", *self.serve_argv, "--worker-index", str(index)]

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        from .api.nodes import SUPERVISOR_PID_ENV

        env = dict(os.environ, **{SUPERVISOR_PID_ENV: str(os.getpid())})
        proc = await asyncio.create_subprocess_exec(*self.command(index), env=env, preexec_fn=_worker_preexec)
        self.procs[index] = proc
        log.warning("worker started", extra={"worker": index, "pid": proc.pid})
        return proc

    async def _keep(self, index: int) -> None:
        """Run worker `index` until it exits 0 or the supervisor stops; restart it when it dies."""
        delay = RESTART_DELAY[0]
        while True:
            started = time.monotonic()
            proc = await self._spawn(index)
            rc = await proc.wait()
            self.exit_codes[index] = rc
            if self.stopping or rc == 0:
                log.warning("worker exited", extra={"worker": index, "rc": rc})
                return
            delay = RESTART_DELAY[0] if time.monotonic() - started > STABLE_AFTER else delay
            log.error("worker died; restarting", extra={"worker": index, "rc": rc, "delay": delay})
            print(f"gateway: worker {index} died (exit {rc}); restarting in {delay:g} s", file=sys.stderr,
                  flush=True)
            await asyncio.sleep(delay)
            if self.stopping:
                return
            delay = min(delay * 2, RESTART_DELAY[1])

    def _on_signal(self) -> None:
        if not self.stopping:
            print(f"gateway: draining {len(self.procs)} worker(s); signal again to hang up their calls now",
                  flush=True)
        self.stopping = True
        for proc in self.procs.values():
            if proc.returncode is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass

    async def run(self) -> int:
        s = self.settings
        if not s.api_key:
            saved_api_key(s.data_dir)       # one key for all workers (they would race to create N keys)
        path = write_dispatcher_list(s)
        print(f"gateway: supervisor for {s.workers} workers of node {s.node_id}: HTTP {s.host}:{s.http_port} "
              f"(shared), SIP {s.sip_port + 1}-{s.sip_port + s.workers}"
              + (f", TLS {worker_slot(s, 1).tls_port}-{worker_slot(s, s.workers).tls_port}" if s.tls_enabled else "")
              + f"; Kamailio dispatcher list {path} "
              "(`gateway kamailio-config` prints the kamailio command)", flush=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        await asyncio.gather(*(self._keep(k) for k in range(1, s.workers + 1)))
        bad = {k: rc for k, rc in self.exit_codes.items() if rc != 0}
        if bad:
            print(f"gateway: workers exited with errors: {bad}", file=sys.stderr, flush=True)
            return 1
        return 0
