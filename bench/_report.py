"""Write one benchmark's results into its own marked section of BENCHMARKS.md.

Every benchmark owns the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` and replaces only that,
so benchmarks run at different times (and by different people) never clobber each other. Each section states
the machine, the date and the command, because a number without its context cannot be compared.

    from bench._report import write_section, table       # with the repo root on sys.path
    write_section("codec", "Codec cost", table(["step", "µs"], rows), command="python bench/codec.py")
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import os
import platform
import re
import shlex
import sys
import tempfile
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nWritten by the scripts in `bench/`; each section is replaced only by its own script.\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    return (f"{os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()} "
            f"({platform.python_implementation()}), {platform.system()} {platform.release()}")


def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured Markdown table; numbers are printed as given (format them before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def section(name: str, title: str, body: str, command: str | None = None) -> str:
    command = command or "python " + " ".join(shlex.quote(a) for a in sys.argv)
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!-- bench:{name} -->\n## {title}\n\n"
            f"Machine: {machine()}. Date: {now}. Command: `{command}`.\n\n"
            f"{body.strip()}\n<!-- /bench:{name} -->")


def write_section(name: str, title: str, body: str, command: str | None = None, path: Path = BENCHMARKS) -> Path:
    """Replace (or append) the `name` section of BENCHMARKS.md; creates the file if missing. Safe under
    concurrent writers (an exclusive lock around read-modify-write, then an atomic rename)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"bad section name {name!r}")
    new = section(name, title, body, command)
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    with open(Path(tempfile.gettempdir()) / "telephony-gateway-benchmarks.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else HEADER
        if pattern.search(text):
            text = pattern.sub(lambda _: new, text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + new + "\n"
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def cpu_projection(results: list[dict], what: str) -> str:
    """The sentence a websocket-carrier benchmark ends its verdict with: the gateway's CPU time per 20 ms of audio
    (`us_per_frame` of each step) and how many streams that fills a core with. A process the box starves handles
    several messages per wake, so steps that fell behind show a lower figure: the projection takes the costliest
    step that lost nothing."""
    per_frame = [r["us_per_frame"] for r in results if r["n"] >= 10 and r["lost"] == 0]
    if not per_frame:
        return ""
    return (f" Gateway CPU {what} (in and echoed out), steps that lost nothing: {min(per_frame):.1f}–"
            f"{max(per_frame):.1f} µs; at the costliest ≈{int(1e6 / 50 / max(per_frame))} streams fill a core (CPU "
            "only, not a latency result; a starved gateway handles several messages per wake, which lowers the "
            "figure of steps that fell behind).")
