"""What each worker of `serve --workers N` listens on, the Kamailio dispatcher list, `gateway kamailio-config`."""
from __future__ import annotations

import itertools
import shlex

import pytest

from gateway.cli import main
from gateway.config import Settings
from gateway.kamailio import dispatcher_list, kamailio_command
from gateway.workers import worker_settings, worker_slot


def test_worker_slots_split_ports_and_rtp_range():
    s = Settings(node_id="gw1", workers=3, sip_port=5060, rtp_port_min=20000, rtp_port_max=30000)
    slots = [worker_slot(s, k) for k in (1, 2, 3)]
    assert [x.sip_port for x in slots] == [5061, 5062, 5063]
    # TLS (issue 18): the ports right after the workers' SIP ports, never one of them
    assert [x.tls_port for x in slots] == [5064, 5065, 5066]
    assert not {x.tls_port for x in slots} & {x.sip_port for x in slots}
    assert [x.proc_id for x in slots] == ["gw1.1", "gw1.2", "gw1.3"]
    assert [(x.rtp_port_min, x.rtp_port_max) for x in slots] == [(20000, 23331), (23332, 26663), (26664, 29995)]
    for a, b in itertools.pairwise(slots):
        assert a.rtp_port_max < b.rtp_port_min           # no two workers share an RTP port
    w2 = worker_settings(Settings(node_id="gw1", workers=3, worker_index=2, sip_port=5060))
    assert (w2.sip_port, w2.tls_port, w2.proc_id) == (5062, 5065, "gw1.2") and (w2.rtp_port_min, w2.rtp_port_max) == (
        slots[1].rtp_port_min, slots[1].rtp_port_max)
    single = Settings(node_id="gw1")
    assert worker_settings(single) is single               # one process: unchanged
    with pytest.raises(ValueError, match="too small"):
        worker_slot(Settings(workers=4, rtp_port_min=20000, rtp_port_max=20005), 1)


def test_dispatcher_list_and_command():
    s = Settings(node_id="gw1", workers=2, sip_port=5060, advertised_ip="10.0.0.5", data_dir="/var/lib/gw")
    lines = [x for x in dispatcher_list(s).splitlines() if not x.startswith("#")]
    assert lines == ["1 sip:10.0.0.5:5061 0 0 duid=gw1.1", "1 sip:10.0.0.5:5062 0 0 duid=gw1.2"]
    cmd = kamailio_command(s, "/etc/gw/kamailio.cfg")
    assert cmd[:3] == ["kamailio", "-f", "/etc/gw/kamailio.cfg"]
    assert "LISTEN=udp:0.0.0.0:5060" in cmd and 'DS_LIST="/var/lib/gw/dispatcher.list"' in cmd
    # Kamailio's side toward the workers: the address they are listed by, a port none of them uses
    assert "WORKERS_LISTEN=udp:10.0.0.5:5059" in cmd


def test_kamailio_config_command_prints_list_and_command_line(tmp_path, capsys):
    assert main(["kamailio-config", "--workers", "2", "--sip-port", "5070", "--data-dir", str(tmp_path),
                 "--write"]) == 0
    out = capsys.readouterr().out
    assert f"# {tmp_path}/dispatcher.list" in out
    written = (tmp_path / "dispatcher.list").read_text()
    assert "sip:127.0.0.1:5071" in written and "sip:127.0.0.1:5072" in written and written in out
    command = [line for line in out.splitlines() if line.startswith("kamailio ")]
    assert len(command) == 1
    argv = shlex.split(command[0])
    assert argv[argv.index("-f") + 1].endswith("deploy/kamailio/kamailio.cfg")
    assert "LISTEN=udp:0.0.0.0:5070" in argv and "WORKERS_LISTEN=udp:127.0.0.1:5069" in argv
