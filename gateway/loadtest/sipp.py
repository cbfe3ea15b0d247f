"""Run SIPp bounded in calls and time, and read its results from its own statistics files.

Lesson measured on this machine: when the server under test dies, SIPp can ignore `-timeout` and wait ~10
minutes, so every run here has its own deadline and kills SIPp by PID. Results come from `-trace_stat`
(cumulative counters) and `-trace_rtt` (one response time per call), never from the exit code alone.
"""
from __future__ import annotations

import asyncio
import csv
import glob
import os
import shutil
import signal
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

SIPP = "sipp"


class SippNotFound(RuntimeError):
    pass


@dataclass
class SippStats:
    """SIPp's cumulative counters at one moment (a row of its -trace_stat CSV)."""

    created: int = 0
    successful: int = 0
    failed: int = 0
    current: int = 0
    retransmissions: int = 0
    elapsed_s: float = 0.0
    call_rate: float = 0.0
    failed_breakdown: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict[str, str]) -> SippStats:
        def num(key: str) -> float:
            try:
                return float(row.get(key) or 0)
            except ValueError:
                return 0.0

        breakdown = {k[6:-3]: int(num(k)) for k in row if k.startswith("Failed") and k.endswith("(C)")
                     and k != "FailedCall(C)" and num(k)}
        return cls(created=int(num("TotalCallCreated")), successful=int(num("SuccessfulCall(C)")),
                   failed=int(num("FailedCall(C)")), current=int(num("CurrentCall")),
                   retransmissions=int(num("Retransmissions(C)")), elapsed_s=_duration(row.get("ElapsedTime(C)", "")),
                   call_rate=num("CallRate(C)"), failed_breakdown=breakdown)


@dataclass
class SippResult:
    stats: SippStats
    response_times_ms: list[float]
    returncode: int | None
    killed: bool
    workdir: str
    errors: str = ""

    def percentile(self, p: float) -> float | None:
        rts = sorted(self.response_times_ms)
        if not rts:
            return None
        k = min(len(rts) - 1, max(0, round(p / 100 * (len(rts) - 1))))
        return rts[k]

    @property
    def mean_response_ms(self) -> float | None:
        return statistics.fmean(self.response_times_ms) if self.response_times_ms else None


def _duration(text: str) -> float:
    """SIPp writes 'HH:MM:SS' or 'HH:MM:SS:ffffff'."""
    parts = text.strip().split(":")
    try:
        h, m, s = (int(x) for x in parts[:3])
    except ValueError:
        return 0.0
    frac = int(parts[3]) / 1e6 if len(parts) > 3 and parts[3].isdigit() else 0.0
    return h * 3600 + m * 60 + s + frac


def read_stat_file(path: str) -> SippStats | None:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
    except FileNotFoundError:
        return None
    return SippStats.from_row(rows[-1]) if rows else None


def read_rtt_files(workdir: str) -> list[float]:
    out: list[float] = []
    for path in glob.glob(os.path.join(workdir, "*_rtt.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f, delimiter=";"):
                try:
                    out.append(float(row["response_time_ms"]))
                except (KeyError, ValueError):
                    continue
    return out


def sipp_path() -> str:
    path = shutil.which(SIPP)
    if not path:
        raise SippNotFound("sipp not found: install Debian's sip-tester package (apt-get install sip-tester)")
    return path


async def run_sipp(target: str, args: list[str], *, deadline_s: float, cwd: str | None = None,
                   on_progress: Callable[[SippStats], None] | None = None) -> SippResult:
    """Run `sipp <target> <args>` with statistics tracing, a hard deadline and a progress callback each second.

    `target` is host:port and must be on the loopback range: load runs never leave this machine.
    """
    check_loopback(target)
    workdir = cwd or tempfile.mkdtemp(prefix="sipp-")
    stat = os.path.join(workdir, "stat.csv")
    full = [sipp_path(), target, "-i", "127.0.0.1", *args, "-trace_stat", "-stf", stat, "-fd", "1",
            "-trace_rtt", "-rtt_freq", "1",
            "-trace_err", "-error_file", os.path.join(workdir, "errors.log"), "-nostdin"]
    proc = await asyncio.create_subprocess_exec(*full, cwd=workdir, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE, start_new_session=True)
    killed = False
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while proc.returncode is None:
        try:
            await asyncio.wait_for(proc.wait(), timeout=1.0)
        except TimeoutError:
            pass
        if on_progress is not None:
            s = read_stat_file(stat)
            if s is not None:
                on_progress(s)
        if proc.returncode is None and loop.time() > end:
            killed = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
    stderr = (await proc.stderr.read()).decode(errors="replace") if proc.stderr else ""
    errors = ""
    err_path = os.path.join(workdir, "errors.log")
    if os.path.exists(err_path):
        with open(err_path, errors="replace") as f:
            errors = f.read()[-4000:]
    stats = read_stat_file(stat) or SippStats()
    return SippResult(stats, read_rtt_files(workdir), proc.returncode, killed, workdir,
                      (stderr[-2000:] + errors).strip())


def check_loopback(target: str) -> None:
    host = target.rsplit(":", 1)[0].strip("[]")
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        raise ValueError(f"refusing to load-test {host}: SIPp runs here only against 127.0.0.0/8")
