"""Kamailio in front of a node's workers: its `dispatcher.list` and its command line (`gateway kamailio-config`).

The Kamailio configuration itself is one file, deploy/kamailio/kamailio.cfg, with every site-specific value a
define (`-A NAME=value`): the same file runs under docker compose, systemd and the tests.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from .config import Settings
from .workers import worker_slot

DISPATCHER_SET = 1          # the set kamailio.cfg selects from: ds_select_dst("1", "0")
DEFAULT_RUN_DIR = "/run/kamailio"
# Kamailio's memory managers (shared `-x`, private `-X`): TLSF instead of the build's default q_malloc. Debian's
# package is built with DBG_SR_MEMORY, so q_malloc records where every fragment was allocated; measured with
# bench/kamailio_cost.py (SIPp → kamailio.cfg → SIPp, 300 calls/s) TLSF cuts Kamailio's CPU per call by ~25 %
# (0.34–0.37 → 0.25–0.27 ms). Every command line that starts kamailio.cfg uses these (systemd unit, compose file,
# tests, benchmarks): tests/test_deploy_files.py checks that they agree.
MEMORY_MANAGERS = ["-x", "tlsf", "-X", "tlsf"]


def dispatcher_list(settings: Settings) -> str:
    """`setid sip:host:port flags priority duid=<proc>` per worker (format: Kamailio dispatcher README §6.1)."""
    host = settings.sip_contact_host
    lines = [f"# gateway node {settings.node_id}: {settings.workers} worker(s), written by `gateway serve "
             f"--workers {settings.workers}` (also printed by `gateway kamailio-config`)"]
    for k in range(1, settings.workers + 1):
        slot = worker_slot(settings, k)
        lines.append(f"{DISPATCHER_SET} sip:{host}:{slot.sip_port} 0 0 duid={slot.proc_id}")
    return "\n".join(lines) + "\n"


def dispatcher_list_path(settings: Settings) -> Path:
    return Path(settings.data_dir).expanduser() / "dispatcher.list"


def write_dispatcher_list(settings: Settings) -> Path:
    path = dispatcher_list_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(dispatcher_list(settings))
    tmp.replace(path)          # Kamailio may be reading it (dispatcher.reload): never show it half-written
    return path


def default_cfg_path() -> Path:
    """deploy/kamailio/kamailio.cfg of this source tree (the Docker image and editable installs have it)."""
    return Path(__file__).resolve().parent.parent / "deploy" / "kamailio" / "kamailio.cfg"


def kamailio_command(settings: Settings, cfg: Path, run_dir: str = DEFAULT_RUN_DIR) -> list[str]:
    """Kamailio in the foreground, logging to stderr, listening on the node's public SIP port (`--sip-port`), and
    talking to the workers from the port below it on the address the dispatcher list names them by
    (`WORKERS_LISTEN`: one Kamailio process reads the workers' answers there, so it relays them in order; the
    workers' own ports are the ones above `--sip-port`)."""
    return ["kamailio", "-f", str(cfg), "-DD", "-E", "-Y", run_dir, *MEMORY_MANAGERS,
            "-A", f"LISTEN=udp:{settings.sip_host}:{settings.sip_port}",
            "-A", f"WORKERS_LISTEN=udp:{settings.sip_contact_host}:{settings.sip_port - 1}",
            "-A", f'DS_LIST="{dispatcher_list_path(settings)}"']


def describe(settings: Settings, cfg: Path, run_dir: str = DEFAULT_RUN_DIR) -> str:
    """What `gateway kamailio-config` prints: the dispatcher list, then the command that runs Kamailio with it."""
    where = dispatcher_list_path(settings)
    missing = "" if cfg.exists() else f"\n# ({cfg} is not here: take deploy/kamailio/kamailio.cfg from the source)"
    trusted = (f"# IP-authenticated trunks behind it: start the gateway with --trusted-proxy "
               f"{settings.sip_contact_host} (the address Kamailio sends to the workers from: its WORKERS_LISTEN), "
               f"so the workers believe its X-Gateway-Source header\n")
    return (f"# {where}\n{dispatcher_list(settings)}\n"
            f"# Kamailio on {settings.sip_host}:{settings.sip_port} in front of "
            f"the workers (run dir must exist and be writable):{missing}\n"
            f"{shlex.join(kamailio_command(settings, cfg, run_dir))}\n{trusted}")
