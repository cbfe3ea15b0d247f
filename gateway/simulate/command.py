"""`gateway simulate`: synthetic callers following a YAML script against a running gateway, on loopback only.

    gateway simulate --agent 1 --via sip --script call.yaml --calls 20 --concurrency 5 \
                     [--url http://127.0.0.1:8080] [--sip-target 127.0.0.1:5060] [--json out.json] [--html out.html]
    gateway simulate --agent 1 --via twilio --script call.yaml --twilio-auth-token … [--public-url https://gw.example.com]

The agent's number on that carrier is found through the REST API (the API key as for the other commands:
--api-key, GATEWAY_API_KEY or the key file); the gateway's own figures for each call are read back from its call
log, so the report shows the latency as the caller heard it next to the gateway's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..cli_api import Client, CliError, resolve_api_key
from ..loadtest.sipp import check_loopback
from .audio import AudioError
from .report import html_page, print_tables
from .runner import CallReport, api_timing, run_calls, to_json
from .script import Script, ScriptError, load_script

VIAS = ("sip", "twilio", "exotel", "vonage")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("simulate", help="synthetic callers following a script (loopback only): turn timing report")
    p.add_argument("--agent", type=int, required=True, help="agent id: its number on the chosen carrier is called")
    p.add_argument("--via", choices=VIAS, required=True, help="carrier protocol the callers speak")
    p.add_argument("--script", required=True, help="YAML script (see docs/simulate.md)")
    p.add_argument("--calls", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's HTTP address (loopback)")
    p.add_argument("--sip-target", default="127.0.0.1:5060", help="the gateway's SIP address (loopback)")
    p.add_argument("--number", help="call this number instead of the agent's")
    p.add_argument("--api-key")
    p.add_argument("--data-dir", help="where `gateway serve` keeps its api_key file")
    p.add_argument("--twilio-account-sid", help="default: the number's account")
    p.add_argument("--twilio-auth-token", help="signs the voice webhook (env TWILIO_AUTH_TOKEN)")
    p.add_argument("--public-url", help="the URL the gateway checks Twilio signatures against (its --public-url)")
    p.add_argument("--json", help="write the report as JSON here")
    p.add_argument("--html", help="write the report with timing plots here")
    p.add_argument("--record-dir", help="write what each caller heard as call-N.wav here")


def _loopback_url(url: str) -> None:
    host = urlsplit(url).hostname or ""
    check_loopback(f"{host}:0")   # "refusing … only against 127.0.0.0/8"


def _number(client: Client, agent: int, via: str) -> dict[str, Any]:
    page = client.request("GET", "/phone_number/list", query={"provider": via, "pagesize": 100})
    for n in page.get("phone_numbers") or []:
        if n.get("agent_id") == agent:
            return dict(n)
    raise CliError(f"agent {agent} has no {via} number (import one and attach it to the agent)", 2)


async def _run(args: argparse.Namespace, script: Script, number: dict[str, Any], api_key: str) -> list[CallReport]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .lines import ExotelLine, SipLine, TwilioLine, VonageLine

    config = number.get("config") or {}
    if args.via == "exotel":
        line: Any = ExotelLine(args.url, str(config.get("exotel_account_sid") or ""))
    elif args.via == "vonage":
        line = VonageLine(args.url, int(config.get("vonage_audio_rate") or 16000))
    elif args.via == "sip":
        import os
        host, _, port = args.sip_target.rpartition(":")
        lo, _, hi = os.environ.get("GATEWAY_SIMULATE_RTP_PORTS", "31000-31998").partition("-")
        line = SipLine(host or "127.0.0.1", int(port), rtp_ports=(int(lo), int(hi)))
    else:
        import os
        token = args.twilio_auth_token or os.environ.get("TWILIO_AUTH_TOKEN")
        if not token:
            raise CliError("--via twilio needs --twilio-auth-token (or TWILIO_AUTH_TOKEN) to sign the voice "
                           "webhook", 2)
        sid = args.twilio_account_sid or config.get("account_sid") or number.get("account_sid")
        if not sid:
            raise CliError("--twilio-account-sid is required (the number shows none)", 2)
        line = TwilioLine(args.url, sid, token, public_url=args.public_url)
    console = Console(stderr=True)
    await line.start()
    try:
        with Progress(TextColumn("calls"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[ok]} ok"),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("calls", total=args.calls, ok=0)
            done = {"ok": 0}

            def on_done(rep: CallReport) -> None:
                done["ok"] += rep.ok
                progress.update(task, advance=1, ok=done["ok"])

            return await run_calls(line, script, number["phone_number"] if not args.number else args.number,
                                   calls=args.calls, concurrency=args.concurrency,
                                   gateway_timing=api_timing(args.url, api_key), record_dir=args.record_dir,
                                   on_done=on_done)
    finally:
        await line.stop()


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..cli import run_async

    try:
        if args.calls < 1 or args.concurrency < 1:
            raise CliError("--calls and --concurrency must be at least 1", 2)
        _loopback_url(args.url)
        check_loopback(args.sip_target)
        script = load_script(args.script)
        api_key = resolve_api_key(args)
        client = Client(args.url, api_key)
        number = _number(client, args.agent, args.via) if not args.number else {"phone_number": args.number}
        reports: list[CallReport] = []

        async def go() -> int:
            reports.extend(await _run(args, script, number, api_key))
            return 0
        run_async(go())
    except (ValueError, CliError, AudioError, ScriptError) as e:
        print(f"gateway simulate: {getattr(e, 'message', None) or e}", file=sys.stderr)
        return getattr(e, "code", 2) if isinstance(e, CliError) else 2
    print_tables(reports, Console())
    report = to_json(reports, script, args.via)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.html:
        Path(args.html).write_text(html_page(report, reports))
    return 0 if all(r.ok for r in reports) and report["overall"]["agree"] is not False else 1
