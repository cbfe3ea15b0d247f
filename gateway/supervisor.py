"""`gateway serve --workers N`: a supervisor process that runs N gateway workers on one machine (docs/deploy.md).

The supervisor holds no calls. Worker k (1-based) is `gateway serve … --worker-index k`: process id `<node>.<k>`,
SIP on `sip_port + k`, RTP ports in slice k of the range, and the shared HTTP port (SO_REUSEPORT). Kamailio
listens on `sip_port` and spreads calls over the workers by Call-ID (deploy/kamailio/kamailio.cfg, with the
`dispatcher.list` the supervisor writes into the data dir: gateway/kamailio.py).

A worker that dies (signal, non-zero exit) is started again with the same index, so it is the same process id
and closes its own orphans. A worker that exits 0 was drained on its own (SIGTERM to that worker, `gateway drain
<node>.<k>`): a rolling restart of that one process, so once it has exited a fresh worker takes its slot (SIP port,
RTP range, process id) at once, while the supervisor is not draining itself. SIGTERM/SIGINT drains every worker
(forwarded as SIGTERM; a second signal is forwarded again, which makes the workers hang up at once) and the
supervisor exits when all of them have.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
import time

from .config import Settings
from .kamailio import write_dispatcher_list
from .runtime import saved_api_key
from .stopsignals import take_over
from .workers import worker_slot

log = logging.getLogger("gateway.supervisor")

RESTART_DELAY = (1.0, 30.0)  # first delay before restarting a worker that died, cap for one that keeps dying
STABLE_AFTER = 30.0         # a worker that ran this long before dying is restarted after the first delay again
#: the pipe a worker writes `ready` to once it takes calls (SIP, RTP, control bus and carriers up: /healthz 200)
READY_FD_ENV = "GATEWAY_READY_FD"


def report_ready() -> None:
    """A serving process is up (SIP, RTP, control bus, carriers): a worker tells its supervisor through the pipe
    it was given; a single process tells systemd when it runs as a `Type=notify` unit."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if not fd or not fd.isdigit():
        notify_systemd("READY=1")
        return
    try:
        os.write(int(fd), b"ready\n")
        os.close(int(fd))
    except OSError:
        pass     # the supervisor is gone: it will not count us anyway


def notify_systemd(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET (a path, or `@name` in the abstract
    namespace), e.g. READY=1 for `Type=notify` units (deploy/systemd/gateway.service). No-op outside systemd."""
    where = os.environ.get("NOTIFY_SOCKET")
    if not where:
        return
    addr = "\0" + where[1:] if where.startswith("@") else where
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), addr)
    except OSError as e:
        log.warning("could not notify systemd: %s", e)


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
        #: workers that said they are ready since they last started; `ready` is set once all of them have
        self.ready_workers: set[int] = set()
        self.ready = asyncio.Event()
        self._readers: set[asyncio.Future[None]] = set()

    def command(self, index: int) -> list[str]:
        return [sys.executable, "-m", "gateway", "serve", *self.serve_argv, "--worker-index", str(index)]

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        from .api.nodes import SUPERVISOR_PID_ENV

        self.ready_workers.discard(index)
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, **{SUPERVISOR_PID_ENV: str(os.getpid()), READY_FD_ENV: str(write_fd)})
        env.pop("NOTIFY_SOCKET", None)      # systemd hears from the supervisor, once the node is ready
        try:
            proc = await asyncio.create_subprocess_exec(*self.command(index), env=env, preexec_fn=_worker_preexec,
                                                        pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)    # the worker holds its copy: EOF here once it has reported (or died)
        self.procs[index] = proc
        log.warning("worker started", extra={"worker": index, "pid": proc.pid})
        task = asyncio.ensure_future(self._await_ready(index, proc, read_fd))
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)
        return proc

    async def _await_ready(self, index: int, proc: asyncio.subprocess.Process, read_fd: int) -> None:
        """Read worker `index`'s readiness pipe; once every worker has said `ready`, the node is: say so (and tell
        systemd, for `Type=notify`)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(read_fd, "rb", buffering=0))
        try:
            line = await reader.readline()
        finally:
            transport.close()
        if line.strip() != b"ready" or self.procs.get(index) is not proc or proc.returncode is not None:
            return
        self.ready_workers.add(index)
        log.warning("worker ready", extra={"worker": index, "pid": proc.pid})
        if len(self.ready_workers) == self.settings.workers and not self.ready.is_set():
            self.ready.set()
            s = self.settings
            print(f"gateway: node {s.node_id} ready: {s.workers} workers take calls (SIP {s.sip_port + 1}-"
                  f"{s.sip_port + s.workers}, HTTP {s.host}:{s.http_port})", flush=True)
            notify_systemd("READY=1")

    async def _keep(self, index: int) -> None:
        """Run worker `index` until the supervisor stops: a fresh one when it was drained alone (exit 0), again
        after a delay when it died."""
        delay = RESTART_DELAY[0]
        quick_before = False           # the previous run of this slot also ended within STABLE_AFTER
        while not self.stopping:       # a signal may come before the first start (or during the delay below)
            started = time.monotonic()
            proc = await self._spawn(index)
            if self.stopping:
                # the signal came while the process was being created, before _on_signal could see it
                self._signal(proc)
            rc = await proc.wait()
            self.exit_codes[index] = rc
            log.warning("worker exited", extra={"worker": index, "rc": rc})
            if self.stopping:
                return
            quick = time.monotonic() - started <= STABLE_AFTER
            delay = delay if quick else RESTART_DELAY[0]
            if rc == 0:
                # drained alone: the operator restarts this process. At once, unless it keeps exiting right after
                # its start (then as a worker that keeps dying: a slot must not spin)
                wait = delay if quick and quick_before else 0.0
                log.warning("worker drained; starting a fresh one", extra={"worker": index, "delay": wait})
                print(f"gateway: worker {index} drained and exited; starting a fresh one"
                      + (f" in {wait:g} s" if wait else ""), flush=True)
            else:
                wait = delay
                log.error("worker died; restarting", extra={"worker": index, "rc": rc, "delay": wait})
                print(f"gateway: worker {index} died (exit {rc}); restarting in {wait:g} s", file=sys.stderr,
                      flush=True)
            quick_before = quick
            if wait:
                await asyncio.sleep(wait)
                delay = min(delay * 2, RESTART_DELAY[1])

    def _on_signal(self) -> None:
        if not self.stopping:
            print(f"gateway: draining {len(self.procs)} worker(s); signal again to hang up their calls now",
                  flush=True)
        self.stopping = True
        for proc in self.procs.values():
            self._signal(proc)

    @staticmethod
    def _signal(proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to a worker still running: it drains (or, still starting, stops starting: gateway/cli.py)."""
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
        # signals since the process's first line count (gateway/stopsignals.py): one that came while Python was
        # still importing stops the node before any worker starts
        take_over(asyncio.get_running_loop(), self._on_signal)
        await asyncio.gather(*(self._keep(k) for k in range(1, s.workers + 1)))
        # -SIGTERM while stopping: the worker was still in Python's own start-up, before it could catch the signal
        # we sent (gateway/stopsignals.py); it had nothing to close. Any other end but 0 is an error.
        bad = {k: rc for k, rc in self.exit_codes.items() if rc != 0 and not (self.stopping and rc == -signal.SIGTERM)}
        if bad:
            print(f"gateway: workers exited with errors: {bad}", file=sys.stderr, flush=True)
            return 1
        return 0
