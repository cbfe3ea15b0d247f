"""deploy/: the compose file, its Kamailio dispatcher list and the systemd units agree with each other and with the
code (CI cannot run Docker; the Kamailio configuration itself runs for real in test_workers_kamailio.py)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.config import Settings
from gateway.kamailio import MEMORY_MANAGERS, dispatcher_list, kamailio_command

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_compose_dispatcher_list_names_every_worker_of_every_node():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    expected, rtp = [], []
    for name in ("gw1", "gw2"):
        svc = services[name]
        env = svc["environment"]
        s = Settings(node_id=env["GATEWAY_NODE_ID"], workers=int(_flag(svc["command"], "--workers")),
                     sip_port=int(_flag(svc["command"], "--sip-port")), advertised_ip="127.0.0.1",
                     rtp_port_min=int(env["GATEWAY_RTP_PORT_MIN"]), rtp_port_max=int(env["GATEWAY_RTP_PORT_MAX"]))
        expected += [x for x in dispatcher_list(s).splitlines() if not x.startswith("#")]
        rtp.append((s.rtp_port_min, s.rtp_port_max))
        assert svc["network_mode"] == "host" and int(svc["stop_grace_period"].rstrip("s")) > s.drain_timeout
    listed = [x for x in (DEPLOY / "kamailio" / "dispatcher.compose.list").read_text().splitlines()
              if x and not x.startswith("#")]
    assert listed == expected
    assert rtp[0][1] < rtp[1][0]                                     # the nodes' RTP ranges do not overlap
    kam = services["kamailio"]
    assert _flag(kam["command"], "-f") == "/opt/gateway/deploy/kamailio/kamailio.cfg"   # the tests' file
    assert "COPY deploy ./deploy" in (DEPLOY / "Dockerfile").read_text()
    assert kam["volumes"] == ["./kamailio/dispatcher.compose.list:/etc/gateway/dispatcher.list:ro"]


def test_systemd_units_drain_through_the_supervisor_only():
    unit = (DEPLOY / "systemd" / "gateway.service").read_text()
    assert "KillMode=mixed" in unit and "--workers" in unit
    timeout = int(unit.split("TimeoutStopSec=")[1].split()[0])
    assert timeout > Settings().drain_timeout + Settings().store_retry_seconds   # live calls, then held writes
    kam = (DEPLOY / "systemd" / "gateway-kamailio.service").read_text()
    assert "/opt/gateway/deploy/kamailio/kamailio.cfg" in kam and 'DS_LIST="/var/lib/gateway/dispatcher.list"' in kam


def test_every_kamailio_command_line_uses_the_same_memory_managers():
    """The memory managers are command-line options, not part of kamailio.cfg: every deployed command line (compose,
    systemd, `gateway kamailio-config`) must carry them, or production runs slower than what was measured."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["kamailio"]["command"]
    unit = (DEPLOY / "systemd" / "gateway-kamailio.service").read_text()
    exec_start = unit.split("ExecStart=")[1].split("\n#")[0].replace("\\\n", " ").split()
    printed = kamailio_command(Settings(), Path("/opt/gateway/deploy/kamailio/kamailio.cfg"))
    assert MEMORY_MANAGERS == ["-x", "tlsf", "-X", "tlsf"]
    for command in (compose, exec_start, printed):
        assert [_flag(command, "-x"), _flag(command, "-X")] == ["tlsf", "tlsf"], command


@pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio not installed")
def test_kamailio_accepts_the_compose_defines():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    command = compose["services"]["kamailio"]["command"]
    defines = [command[i + 1] for i, a in enumerate(command) if a == "-A"]
    defines = [d.replace("0.0.0.0:5060", "127.0.0.1:5999") for d in defines]    # -c binds nothing, but be local
    out = subprocess.run(["kamailio", "-c", "-f", str(DEPLOY / "kamailio" / "kamailio.cfg"),
                          *[x for d in defines for x in ("-A", d)]], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr[-2000:]
