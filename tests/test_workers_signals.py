"""SIGTERM at start-up (`gateway serve`, alone or as a `--workers N` node): a process still starting drains as soon as
it can and exits 0 like any drained one — it used to die of Python's default action (-15), and the supervisor,
seeing a death, started the worker again (gateway/stopsignals.py). The first signals are sent as soon as the process
catches them (its SigCgt mask), which is seconds before its start-up ends on any machine (the runtime's imports
alone)."""
from __future__ import annotations

import os
import signal

from procs import GatewayProc, catches, fresh_postgres, until


async def _signal_when_caught(pid: int, what: str) -> None:
    await until(lambda: catches(pid), 60, f"{what} catching SIGTERM")
    os.kill(pid, signal.SIGTERM)


async def test_single_process_signalled_at_start_up_exits_0(tmp_path):
    gw = await GatewayProc.start(tmp_path)
    try:
        await _signal_when_caught(gw.proc.pid, "gateway serve")
        assert await gw.wait_exit(60) == 0, gw.output()
        assert "stopped by a signal during start-up" in gw.output()
        assert not (gw.data_dir / "gateway.db").exists()     # before the runtime was built: nothing was
    finally:
        await gw.close()


async def test_single_process_signalled_while_starting_the_runtime_exits_0(tmp_path):
    """The signal lands once the store file is created, i.e. inside Gateway.start() (SIP, control bus… follow), or,
    on a fast machine, just after it: either way the process drains (no calls yet) and exits 0."""
    gw = await GatewayProc.start(tmp_path)
    try:
        await until(lambda: (gw.data_dir / "gateway.db").exists() or gw.proc.poll() is not None, 60,
                    f"the store file\n{gw.output()}", interval=0.02)
        gw.signal(signal.SIGTERM)
        assert await gw.wait_exit(60) == 0, gw.output()
        out = gw.output()
        assert "signal during start-up: draining once started" in out or "draining 0 live call(s)" in out, out
        assert "Traceback" not in out, out
    finally:
        await gw.close()


async def test_worker_signalled_at_start_up_exits_0_and_a_fresh_one_takes_its_place(tmp_path):
    """A worker drained alone is restarted (docs/deploy.md, "Rolling restart of one worker"), not mourned as dead."""
    pg = await fresh_postgres()
    gw = await GatewayProc.start(tmp_path, "--workers", "2", "--db", pg)
    try:
        first = await until(lambda: gw.worker_pids().get(1), 30, "worker 1 started")
        await _signal_when_caught(first, "worker 1")
        await until(lambda: "worker exited worker=1 rc=0" in gw.output(), 60, f"worker 1 exit 0\n{gw.output()}")
        # a fresh worker 1 (the old one never said it was healthy); start-up takes minutes on a box at load 30+
        await gw.wait_procs({"t.1", "t.2"}, timeout=240)
        out = gw.output()
        assert "gateway t.1: stopped by a signal during start-up" in out and "worker 1 died" not in out, out
        assert "worker 1 drained and exited; starting a fresh one" in out, out
        assert gw.worker_pids()[1] != first
        gw.signal(signal.SIGTERM)
        assert await gw.wait_exit(60) == 0, gw.output()
    finally:
        await gw.close()


async def test_supervisor_signalled_at_start_up_starts_no_worker_and_exits_0(tmp_path):
    pg = await fresh_postgres()
    gw = await GatewayProc.start(tmp_path, "--workers", "2", "--db", pg)
    try:
        await _signal_when_caught(gw.proc.pid, "the supervisor")
        assert await gw.wait_exit(60) == 0, gw.output()
        assert "worker started" not in gw.output()    # the signal came during its imports: no worker was begun
    finally:
        await gw.close()
