"""`gateway numbers|calls|agents|trunk` against a real running gateway (real HTTP, real SQLite): `main([...])` runs
in a worker thread while the gateway serves on the test's event loop; one run goes through a real subprocess."""
from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from gateway.cli import main
from test_api_fakes import CARRIERS, SIP_PASSWORD, TWILIO_TOKEN


@pytest.fixture
async def cli(make_gateway, capsys, monkeypatch):
    gw = await make_gateway(carriers=CARRIERS)
    monkeypatch.setenv("GATEWAY_URL", gw.url())
    monkeypatch.setenv("GATEWAY_API_KEY", gw.api_key)

    async def run(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.wait_for(asyncio.to_thread(main, list(argv)), 30)
        out, err = capsys.readouterr()
        return code, out, err

    run.gw = gw
    return run


async def test_numbers_lifecycle(cli, monkeypatch):
    monkeypatch.setenv("GATEWAY_SIP_PASSWORD", SIP_PASSWORD)
    code, out, err = await cli("numbers", "import-sip", "--phone-number", "+14155550100", "--sip-host", "127.0.0.1",
                               "--sip-trunk-name", "cli-trunk", "--sip-username", "alice", "--sip-port", "5070",
                               "--sip-strip-plus", "--allowed-ips", "127.0.0.1, 10.0.0.0/8", "--transport", "tcp")
    assert code == 0, err
    number = json.loads(out)["phone_number"]
    assert number["config"]["sip_password"] == "****" and number["config"]["sip_port"] == 5070
    assert number["config"]["sip_strip_plus"] is True
    assert number["config"]["allowed_ips"] == ["127.0.0.1", "10.0.0.0/8"]
    assert SIP_PASSWORD not in out + err
    row = await cli.gw.store.get_number(number["id"], with_secrets=True)
    assert row["secrets"]["sip_password"] == SIP_PASSWORD          # taken from the environment
    code, out, err = await cli("numbers", "import-twilio", "--phone-number", "+14155550111", "--account-sid",
                               "AC" + "2" * 32, "--account-token", TWILIO_TOKEN, "--name", "tw")
    assert code == 0 and TWILIO_TOKEN not in out + err
    code, out, _ = await cli("numbers", "list")
    assert code == 0 and "cli-trunk" in out and "+14155550111" in out and "Phone numbers (2" in out
    code, out, _ = await cli("numbers", "list", "--json", "--pagesize", "1")
    data = json.loads(out)
    assert data["total"] == 2 and len(data["phone_numbers"]) == 1
    code, out, _ = await cli("agents", "create", "--name", "Support", "--engine", "echo",
                             "--transfer-number", "+14155550188")
    agent = json.loads(out)["agent"]
    assert code == 0 and agent["settings"]["transfer"]["number"] == "+14155550188"
    code, out, _ = await cli("numbers", "attach", str(number["id"]), "--agent-id", str(agent["id"]))
    assert code == 0 and json.loads(out)["phone_number"]["agent_id"] == agent["id"]
    code, out, _ = await cli("numbers", "show", str(number["id"]))
    assert code == 0 and json.loads(out)["phone_number"]["agent_id"] == agent["id"]
    code, out, _ = await cli("numbers", "test", str(number["id"]))
    assert code == 0 and json.loads(out)["report"]["ok"] is True and SIP_PASSWORD not in out
    code, out, err = await cli("numbers", "update", str(number["id"]), "--set", "sip_port=5090",
                               "--set", "register=true")
    assert code == 0, err
    updated = json.loads(out)["phone_number"]["config"]
    assert updated["sip_port"] == 5090 and updated["register"] is True and updated["sip_password"] == "****"
    code, out, _ = await cli("numbers", "detach", str(number["id"]))
    assert code == 0 and json.loads(out)["phone_number"]["agent_id"] is None
    code, out, _ = await cli("numbers", "delete", str(number["id"]))
    assert code == 0 and json.loads(out)["deleted"] == number["id"]
    code, out, err = await cli("numbers", "show", str(number["id"]))
    assert code == 1 and out == "" and "error 404" in err and "not found" in err


async def test_bad_input_is_reported_with_field(cli):
    code, out, err = await cli("numbers", "import-sip", "--phone-number", "12", "--sip-host", "h",
                               "--sip-trunk-name", "t", "--sip-password", "pw-never-shown")
    assert code == 1 and out == ""
    assert "error 400" in err and "phone_number" in err and "pw-never-shown" not in err
    code, out, err = await cli("numbers", "import-exotel", "--exotel-phone-number", "+918047112233")
    assert code == 1 and "exotel_api_key" in err
    code, out, err = await cli("numbers", "import", "vonage", "--set", "phone_number=+14155550100")
    assert code == 1 and "error 404" in err and "sip" in err
    assert (await cli.gw.store.list_numbers())[1] == 0


async def test_generic_import(cli):
    code, out, err = await cli("numbers", "import", "twilio", "--set", "phone_number=+14155550111",
                               "--set", "account_sid=AC1", "--set", f"account_token={TWILIO_TOKEN}")
    assert code == 0, err
    assert json.loads(out)["phone_number"]["config"]["account_token"] == "****" and TWILIO_TOKEN not in out


async def test_calls_commands(cli):
    gw = cli.gw
    _, out, _ = await cli("agents", "create", "--name", "Caller", "--engine", "echo")
    aid = json.loads(out)["agent"]["id"]
    _, out, _ = await cli("numbers", "import-sip", "--phone-number", "+14155550100", "--sip-host", "127.0.0.1",
                          "--sip-trunk-name", "t1", "--agent-id", str(aid))
    nid = json.loads(out)["phone_number"]["id"]
    code, out, err = await cli("calls", "dispatch", "--agent-id", str(aid), "--to", "+14155550123",
                               "--from-number-id", str(nid), "--context", '{"customer": "Dana"}')
    assert code == 0, err
    d = json.loads(out)
    assert d["status"] == "dispatched" and gw.calls.get(d["call_id"]) is not None
    code, out, _ = await cli("calls", "live")
    assert code == 0 and "+14155550123" in out
    code, out, _ = await cli("calls", "transfer", str(d["requestId"]), "--number", "+14155550177")
    assert code == 0 and json.loads(out)["number"] == "+14155550177"
    code, out, _ = await cli("calls", "hangup", d["call_id"])
    assert code == 0 and gw.calls.get(d["call_id"]) is None
    code, out, _ = await cli("calls", "list")
    assert code == 0 and "+14155550123" in out and "completed" in out
    code, out, _ = await cli("calls", "list", "--json", "--status", "completed", "--agent-id", str(aid))
    assert json.loads(out)["total"] == 1
    code, out, _ = await cli("calls", "show", str(d["requestId"]))
    shown = json.loads(out)
    assert shown["call_log"]["call_context"] == {"customer": "Dana"}
    assert "hang_up" in [e["event"] for e in shown["events"]]
    code, out, err = await cli("calls", "dispatch", "--agent-id", str(aid), "--to", "14155550123",
                               "--from-number-id", str(nid))
    assert code == 1 and "to_number" in err
    code, out, err = await cli("calls", "hangup", "9999")
    assert code == 1 and "404" in err


async def test_trunk_test(cli):
    args = ("trunk", "test", "--phone-number", "+14155550100", "--sip-host", "127.0.0.1",
            "--sip-trunk-name", "probe", "--sip-username", "bob", "--sip-password", SIP_PASSWORD)
    code, out, err = await cli(*args, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["report"]["ok"] is True and SIP_PASSWORD not in out
    # without --json: one line per step and a verdict, for a person
    code, out, err = await cli(*args)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["✓", "auth"] and "used ****" in lines[0]
    assert lines[-1].startswith("verdict: OK") and SIP_PASSWORD not in out
    seen = cli.gw.carriers["sip"].tested[-1]
    assert seen["sip_password"] == SIP_PASSWORD and seen["sip_username"] == "bob"
    assert (await cli.gw.store.list_numbers())[1] == 0


async def test_api_key_sources_and_errors(cli, monkeypatch, tmp_path):
    monkeypatch.delenv("GATEWAY_API_KEY")
    keydir = tmp_path / "keys"
    keydir.mkdir()
    (keydir / "api_key").write_text(cli.gw.api_key + "\n")
    code, out, err = await cli("numbers", "list", "--json", "--data-dir", str(keydir))
    assert code == 0, err
    code, out, err = await cli("numbers", "list", "--api-key", "wrong")
    assert code == 1 and "401" in err and "invalid API key" in err
    code, out, err = await cli("numbers", "list", "--data-dir", str(tmp_path / "empty"))
    assert code == 2 and "no API key" in err
    code, out, err = await cli("numbers", "list", "--api-key", "k", "--url", "http://127.0.0.1:9")
    assert code == 2 and "cannot reach the gateway" in err
    # a URL that is no URL: one line naming the option and the expected form (was a urllib traceback)
    for bad in ("localhost:8080", "ftp://127.0.0.1", "http://"):
        code, out, err = await cli("numbers", "list", "--api-key", "k", "--url", bad)
        assert code == 2 and "--url" in err and "http://127.0.0.1:8080" in err and len(err.splitlines()) == 1, err


async def test_status_filter_is_checked_before_the_request(cli):
    with pytest.raises(SystemExit) as e:     # argparse's own usage error (exit 2), listing the choices
        main(["calls", "list", "--status", "bogus"])
    assert e.value.code == 2
    code, out, err = await cli("calls", "list", "--status", "no-answer", "--json")
    assert code == 0 and json.loads(out)["total"] == 0


async def test_cli_in_a_subprocess(make_gateway):
    gw = await make_gateway(carriers=CARRIERS)
    env = {**os.environ, "GATEWAY_URL": gw.url(), "GATEWAY_API_KEY": gw.api_key}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "agents", "create", "--name", "sub",
                                                env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out)["agent"]["name"] == "sub"
    assert [a["name"] for a in await gw.store.list_agents()] == ["sub"]


async def test_failed_connection_test_exits_3(cli):
    carrier = cli.gw.carriers["sip"]
    original = carrier.test_connection

    async def failing(fields):
        report = await original(fields)
        return {**report, "ok": False, "steps": [{"step": "options", "ok": False, "detail": "timeout"}]}

    carrier.test_connection = failing
    args = ("trunk", "test", "--phone-number", "+14155550100", "--sip-host", "127.0.0.1", "--sip-trunk-name", "probe")
    code, out, err = await cli(*args, "--json")
    assert code == 3 and json.loads(out)["report"]["ok"] is False and "connection test failed" in err
    code, out, err = await cli(*args)
    assert code == 3 and out.splitlines()[0].split()[:3] == ["✗", "options", "failed"] and "timeout" in out
    assert out.splitlines()[-1].startswith("verdict: FAILED")
