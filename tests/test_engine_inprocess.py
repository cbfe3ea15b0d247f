"""`gateway serve --engine package.module:factory`: an in-process Python engine loaded by a real `gateway serve`
process handles a real SIPp call; bad specs are one line naming the flag (exit 2); the REST API cannot make the
gateway import a module the operator did not name."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.engine import EngineRegistry
from procs import NODE, GatewayProc, until
from sipp import needs_sipp, sipp_uac

TESTS = str(Path(__file__).resolve().parent)
NUMBER = "15550001111"
ENV = {"PYTHONPATH": TESTS}   # so `gateway serve` can import tests/inprocess_engine.py


@needs_sipp
async def test_serve_loads_an_inprocess_engine_that_handles_a_sip_call(tmp_path):
    gw = await GatewayProc.start(tmp_path, "--engine", "inprocess_engine:HearThenHangUp",
                                 "--allow-engine", "inprocess_engine:make_engine", env=ENV)
    try:
        await gw.wait_procs({NODE})
        num = (await gw.api("POST", "/phone_number/import/sip", {
            "phone_number": "+" + NUMBER, "sip_host": "127.0.0.1", "sip_trunk_name": "trunk", "auth_type": "ip",
            "allowed_ips": ["127.0.0.1"]}, expect=201))["phone_number"]
        # an agent may name the operator's specs (the default and the allowed one), never another module
        for spec in ("inprocess_engine:not_an_engine", "os:system"):
            refused = await gw.api("POST", "/agents", {"name": "x", "engine": spec}, expect=400)
            assert "engine" in str(refused) and "not allowed" in str(refused), refused
        agent = (await gw.api("POST", "/agents", {"name": "py", "engine": "inprocess_engine:make_engine"},
                              expect=201))["agent"]
        await gw.api("POST", "/phone_number/attach", {"phone_number_id": num["id"], "agent_id": agent["id"]},
                     expect=200)
        # SIPp plays ~6 s of PCMA and waits for the gateway's BYE: the engine hangs up after 25 frames it heard
        (await sipp_uac("uac_gateway_hangs_up.xml", gw.sip_port, service=NUMBER, timeout_s=30)).assert_calls(
            successful=1)

        async def ended():
            rows = (await gw.api("GET", "/calls/logs"))["call_log_data"]
            return rows and rows[0].get("hangup_reason") and rows[0]
        row = await until(ended, 20, "the call log")
        assert row["hangup_source"] == "agent" and row["hangup_reason"] == "inprocess_heard_25_frames", row
    finally:
        await gw.close()


def _serve(tmp_path, *args: str) -> subprocess.CompletedProcess:
    import os
    env = {**os.environ, "PYTHONPATH": TESTS}
    return subprocess.run([sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--http-port", "0",
                           "--sip-port", "0", "--data-dir", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("args, flag, words", [
    (["--engine", "no_such_module_for_gw:make"], "--engine", "cannot import 'no_such_module_for_gw'"),
    (["--engine", "inprocess_engine:missing"], "--engine", "has no attribute 'missing'"),
    (["--engine", "inprocess_engine:not_an_engine"], "--engine", "returned str, not a gateway.engine.VoiceEngine"),
    (["--engine", "inprocess_engine:NOT_CALLABLE"], "--engine", "int is neither a VoiceEngine nor a factory"),
    (["--engine", "echo", "--allow-engine", "inprocess_engine:nope"], "--allow-engine", "no attribute 'nope'"),
    (["--engine", "echo", "--workers", "2", "--db", "postgresql://u:p@127.0.0.1/x", "--allow-engine",
      "no_such_module_for_gw:f"], "--allow-engine", "cannot import"),
])
def test_bad_engine_spec_is_one_line_naming_the_flag(tmp_path, args, flag, words):
    r = _serve(tmp_path, *args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    line, = [x for x in r.stderr.splitlines() if x.startswith("gateway:")]
    assert line.startswith(f"gateway: {flag}: ") and words in line, r.stderr


def test_a_spec_the_operator_did_not_name_is_refused_without_importing_it():
    engines = EngineRegistry("echo", ["inprocess_engine:make_engine"])
    with pytest.raises(ValueError, match="not allowed"):
        engines.validate("no_such_module_for_gw:make")   # "not allowed", not "cannot import": no import tried
    with pytest.raises(ValueError, match="not allowed"):
        engines.resolve("inprocess_engine:HearThenHangUp")
    engines.validate("inprocess_engine:make_engine")
    assert engines.resolve("inprocess_engine:make_engine") is engines.resolve("inprocess_engine:make_engine")
    assert type(engines.resolve("accept:demo")).__name__ == "AcceptEngine"   # a pool, not a module
