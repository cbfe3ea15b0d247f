"""`gateway numbers|calls|bulk|agents|trunk|drain …`: command-line clients of the REST API of a running gateway.

The target and key come from `--url` / `GATEWAY_URL` (default http://127.0.0.1:8080) and `--api-key` /
`GATEWAY_API_KEY`, else the key file `gateway serve` wrote (`<data dir>/api_key`). Output is the API's JSON
(lists also as a table unless `--json`). Passwords and tokens are taken from an option or an environment variable
and never printed: the API itself masks them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from .config import default_data_dir
from .statuses import CALL_STATUSES, ITEM_STATUSES

COMMANDS = ("numbers", "calls", "bulk", "agents", "trunk", "drain")
DEFAULT_URL = "http://127.0.0.1:8080"


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Opt:
    """One import-body field as a command-line option; `env` names the variable a secret may come from."""
    field: str
    kind: str = "str"         # str | int | float | bool | list
    secret: bool = False
    env: str | None = None
    required: bool = False
    help: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


SIP_OPTS = (
    Opt("phone_number", required=True, help="E.164 number of the trunk, e.g. +14155550100"),
    Opt("sip_host", required=True, help="carrier SIP server (host or IP)"),
    Opt("sip_trunk_name", required=True, help="unique name of this trunk"),
    Opt("name"), Opt("sip_port", "int"), Opt("sip_username"),
    Opt("sip_password", secret=True, env="GATEWAY_SIP_PASSWORD"),
    Opt("sip_dial_prefix"), Opt("sip_strip_plus", "bool"), Opt("preset", help="carrier preset, e.g. twilio"),
    Opt("transport", help="udp | tcp | tls"), Opt("outbound_proxy"),
    Opt("auth_username", help="authorization id when it differs from --sip-username"),
    Opt("auth_type", help="basic | ip"),
    Opt("allowed_ips", "list", help="comma-separated IPs/CIDRs allowed to send calls (auth_type ip)"),
    Opt("register", "bool", help="REGISTER to the carrier"),
    Opt("tls_verify", "bool", help="transport tls: check the trunk's certificate (default true)"),
    Opt("media_encryption", help="none | srtp | optional"),
)
TWILIO_OPTS = (Opt("phone_number", required=True), Opt("account_sid", required=True),
               Opt("account_token", secret=True, env="GATEWAY_TWILIO_TOKEN"), Opt("name"))
#: the limits every number takes, whatever its provider (gateway/channels.py)
LIMIT_OPTS = (Opt("channels", "int", help="at most this many live calls on the number"),
              Opt("max_cps", "float", help="outbound calls started per second on the number / trunk"))
EXOTEL_OPTS = (Opt("exotel_phone_number", required=True), Opt("exotel_api_key", required=True),
               Opt("exotel_api_token", secret=True, env="GATEWAY_EXOTEL_API_TOKEN"), Opt("exotel_subdomain"),
               Opt("exotel_account_sid", required=True), Opt("exotel_app_id"), Opt("name"))


# -- HTTP ------------------------------------------------------------------------------------------------------
class Client:
    def __init__(self, url: str, api_key: str, timeout: float = 60.0) -> None:
        self.base = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                query: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.base}/api/v1{path}"
        if query:
            from urllib.parse import urlencode
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                url += "?" + urlencode(q)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json",
            "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                answer: dict[str, Any] = json.loads(resp.read() or b"{}")
                return answer
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read())
                message = err.get("error") or str(err)
            except ValueError:
                message = e.reason
            raise CliError(f"error {e.code}: {message}", 1) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CliError(f"cannot reach the gateway at {self.base}: {reason}", 2) from None

    def download(self, path: str, out: BinaryIO) -> int:
        """GET a binary resource (a recording) into `out`, streamed in chunks; the number of bytes written."""
        req = urllib.request.Request(f"{self.base}/api/v1{path}", headers={"Authorization": f"Bearer {self.api_key}"})
        total = 0
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                while chunk := resp.read(256 * 1024):
                    out.write(chunk)
                    total += len(chunk)
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error") or e.reason
            except ValueError:
                message = e.reason
            raise CliError(f"error {e.code}: {message}", 1) from None
        except (urllib.error.URLError, OSError) as e:
            raise CliError(f"cannot reach the gateway at {self.base}: {getattr(e, 'reason', e)}", 2) from None
        return total

    def health(self) -> dict[str, Any]:
        """GET /healthz (no key needed); its JSON also when it answers 503 `draining`."""
        try:
            with urllib.request.urlopen(f"{self.base}/healthz", timeout=self.timeout) as resp:
                health: dict[str, Any] = json.loads(resp.read() or b"{}")
                return health
        except urllib.error.HTTPError as e:
            if e.code == 503:
                draining: dict[str, Any] = json.loads(e.read() or b"{}")
                return draining
            raise CliError(f"error {e.code} from /healthz", 1) from None
        except (urllib.error.URLError, OSError) as e:
            raise CliError(f"cannot reach the gateway at {self.base}: {getattr(e, 'reason', e)}", 2) from None


def checked_url(url: str) -> str:
    """The gateway's base URL, or a CliError saying what a usable one looks like."""
    from yarl import URL
    try:
        parsed = URL(url)
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise CliError(f"--url / GATEWAY_URL {url!r} is not a gateway URL (expected e.g. {DEFAULT_URL})", 2)
    return url


def resolve_api_key(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    if args.api_key:
        return str(args.api_key)
    if environ.get("GATEWAY_API_KEY"):
        return environ["GATEWAY_API_KEY"]
    data_dir = args.data_dir or environ.get("GATEWAY_DATA_DIR") or default_data_dir()
    path = os.path.join(os.path.expanduser(data_dir), "api_key")
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        raise CliError(f"no API key: pass --api-key, set GATEWAY_API_KEY, or run `gateway serve` once so "
                       f"{path} exists", 2) from None


# -- output ----------------------------------------------------------------------------------------------------
def emit(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    Console(file=sys.stdout, width=max(100, min(200, _term_width()))).print(t)


def _term_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120


# -- commands --------------------------------------------------------------------------------------------------
def _body_from(opts: tuple[Opt, ...], args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for o in opts:
        value = getattr(args, o.field, None)
        if value is None and o.secret and o.env:
            value = os.environ.get(o.env)
        if value is None:
            continue
        if o.kind == "list":
            value = [v.strip() for v in value.split(",") if v.strip()]
        body[o.field] = value
    if getattr(args, "agent_id", None) is not None:
        body["agent_id"] = args.agent_id
    for kv in getattr(args, "set", None) or []:
        key, sep, value = kv.partition("=")
        if not sep:
            raise CliError(f"--set expects KEY=VALUE, got {kv!r}")
        body[key.strip()] = _guess(value)
    return body


def _guess(value: str) -> Any:
    """`--set` values: JSON when they parse as JSON (numbers, true/false, lists), else the plain string."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _numbers_list(c: Client, a: argparse.Namespace) -> Any:
    data = c.request("GET", "/phone_number/list", query={"pageno": a.pageno, "pagesize": a.pagesize,
                                                         "provider": a.provider})
    if a.json:
        return data
    table(f"Phone numbers ({data['total']} in all, page {data['pageno']})",
          ["id", "number", "provider", "name", "trunk", "agent", "status"],
          [[n["id"], n["phone_number"], n["provider"], n["name"], n["sip_trunk_name"], n["agent_id"],
            _status(n.get("status"))] for n in data["phone_numbers"]])
    return None


def _status(status: Any) -> str:
    """A number's carrier status (e.g. SIP registration state) in one cell."""
    if isinstance(status, dict):
        return ", ".join(f"{k}={v}" for k, v in status.items() if not isinstance(v, (dict, list)))
    return "" if status is None else str(status)


def _calls_list(c: Client, a: argparse.Namespace) -> Any:
    data = c.request("GET", "/calls/logs", query={"pageno": a.pageno, "pagesize": a.pagesize,
                                                  "agentid": a.agent_id, "call_status": a.status})
    if a.json:
        return data
    table(f"Calls ({data['total']} in all, page {data['pageno']})",
          ["id", "direction", "from", "to", "status", "duration", "hangup", "channel", "started"],
          [[r["id"], r["call_direction"], r["from_number"], r["to_number"], r["call_status"], r["call_duration"],
            f"{r.get('hangup_source') or ''} {r.get('hangup_reason') or ''}".strip(), r["channel_type"],
            r["created_at"]] for r in data["call_log_data"]])
    return None


def _agents_list(c: Client, a: argparse.Namespace) -> Any:
    data = c.request("GET", "/agents", query={"pageno": a.pageno, "pagesize": a.pagesize})
    if a.json:
        return data
    table(f"Agents ({data['total']})", ["id", "name", "engine", "webhook", "transfer to"],
          [[x["id"], x["name"], x["engine"], "yes" if x.get("webhook_url") else "",
            ((x.get("settings") or {}).get("transfer") or {}).get("number")] for x in data["agents"]])
    return None


def _calls_live(c: Client, a: argparse.Namespace) -> Any:
    data = c.request("GET", "/calls/live")
    if a.json:
        return data
    table(f"Live calls ({data['count']})", ["id", "call", "carrier", "direction", "from", "to", "status", "secs"],
          [[x["id"], x["call_id"], x["carrier"], x["direction"], x["from_number"], x["to_number"], x["status"],
            x["duration"]] for x in data["calls"]])
    return None


def _trunk_test(data: dict[str, Any], a: argparse.Namespace) -> Any:
    """A trunk test as one line per step and a verdict (the API's JSON with --json)."""
    if a.json:
        return data
    report = data.get("report") or {}
    for s in report.get("steps") or []:
        verdict = str(s.get("verdict") or ("ok" if s.get("ok") else "failed"))
        extra = "  ".join(x for x in (s.get("status_line") or "",
                                       f"{s['rtt_ms']:g} ms" if s.get("rtt_ms") is not None else "") if x)
        print(f"  {'✓' if verdict in ('ok', 'skipped') else '✗'} {s.get('step', '?'):<12} {verdict:<12} "
              f"{s.get('detail') or ''}" + (f"  [{extra}]" if extra else ""))
    ok = bool(report.get("ok"))
    print(f"verdict: {'OK' if ok else 'FAILED'} ({report.get('verdict', 'ok' if ok else 'failed')})")
    raise CliExit(0 if ok else 3)   # 3: as for JSON output, "the trunk does not work" (see run())


class CliExit(Exception):
    """The command printed its own output; exit with `code`."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _agent_body(a: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for key in ("name", "engine", "webhook_url"):
        if getattr(a, key, None) is not None:
            body[key] = getattr(a, key)
    if a.settings is not None:
        try:
            body["settings"] = json.loads(a.settings)
        except ValueError as e:
            raise CliError(f"--settings is not valid JSON: {e}") from None
    if a.transfer_number:
        body.setdefault("settings", {}).setdefault("transfer", {})["number"] = a.transfer_number
    return body


def _context(a: argparse.Namespace) -> dict[str, Any] | None:
    if not a.context:
        return None
    try:
        context: dict[str, Any] | None = json.loads(a.context)
        return context
    except ValueError as e:
        raise CliError(f"--context is not valid JSON: {e}") from None


def _queue(c: Client, a: argparse.Namespace) -> Any:
    """`gateway calls queue list|show|cancel`: the dispatch queue."""
    if a.queue_action == "show":
        return c.request("GET", f"/calls/queue/{a.id}")
    if a.queue_action == "cancel":
        return c.request("DELETE", f"/calls/queue/{a.id}")
    data = c.request("GET", "/calls/queue", query={"pageno": a.pageno, "pagesize": a.pagesize, "status": a.status,
                                                   "bulk_call_id": a.bulk_call_id})
    if a.json:
        return data
    table(f"Queued calls ({data['total']} in all, page {data['pageno']})",
          ["id", "bulk", "from #", "to", "status", "tries", "call log", "error"],
          [[r["id"], r["bulk_call_id"], r["from_number_id"], r["to_number"], r["status"], r["attempts"],
            r["call_log_id"], r["error"]] for r in data["queue"]])
    return None


def _contacts(path: str) -> list[dict[str, Any]]:
    """A bulk call's contact list from a file: a JSON list of objects, or CSV with a `phone_number` column (the
    other columns become each call's call_context)."""
    import csv
    try:
        with open(path, newline="") as f:
            rows = json.load(f) if path.endswith(".json") else list(csv.DictReader(f))
    except (OSError, ValueError) as e:
        raise CliError(f"--contacts {path}: {e}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise CliError(f"--contacts {path}: expected a list of contacts, each with phone_number")
    return rows


def _bulk(c: Client, a: argparse.Namespace) -> Any:
    """`gateway bulk create|list|show|pause|resume|cancel|reschedule`: bulk calls through the dispatch queue."""
    if a.action == "create":
        body: dict[str, Any] = {"name": a.name, "phone_number_id": a.from_number_id,
                                "contact_list": _contacts(a.contacts)}
        if a.agent_id is not None:
            body["agent_id"] = a.agent_id
        if a.scheduled_at:
            body["scheduled_at"] = a.scheduled_at
        if a.retry_max_attempts:
            body["retry"] = {"max_attempts": a.retry_max_attempts, "delay_seconds": a.retry_delay,
                             **({"on": a.retry_on.split(",")} if a.retry_on else {})}
        return c.request("POST", "/calls/bulk_call/create", body)
    if a.action == "show":
        return c.request("GET", f"/calls/bulk_call/{a.id}")
    if a.action in ("pause", "resume", "cancel"):
        return c.request("PUT", f"/calls/bulk_call/{a.id}", {"action": a.action})
    if a.action == "reschedule":
        return c.request("PUT", f"/calls/bulk_call/{a.id}", {"action": "reschedule", "scheduled_at": a.at})
    data = c.request("GET", "/calls/bulk_call", query={"pageno": a.pageno, "pagesize": a.pagesize})
    if a.json:
        return data
    progress = ("queued", "dialing", "retrying", "completed", "failed", "cancelled")
    table(f"Bulk calls ({data['total']})", ["id", "name", "status", "calls", *progress],
          [[b["id"], b["name"], b["status"] + (f" {b['scheduled_at'][:16]}" if b["status"] == "scheduled" else ""),
            b["total_calls"], *(b["counts"][k] for k in progress)] for b in data["bulk_calls"]])
    return None


def _recording(c: Client, a: argparse.Namespace) -> Any:
    """`gateway calls recording ID [-o FILE]`: the call's WAV into FILE (default call-ID.wav; `-`: stdout)."""
    if a.output == "-":
        c.download(f"/calls/{a.id}/recording", sys.stdout.buffer)
        return None
    path = a.output or f"call-{a.id}.wav"
    part = path + ".part"          # a failed download leaves no half file under the name asked for
    try:
        with open(part, "wb") as f:
            size = c.download(f"/calls/{a.id}/recording", f)
        os.replace(part, path)
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror}", 1) from None
    finally:
        if os.path.exists(part):
            os.unlink(part)
    return {"success": True, "file": path, "bytes": size}


def _dispatch_body(a: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"agent_id": a.agent_id, "to_number": a.to, "from_number_id": a.from_number_id}
    if (ctx := _context(a)) is not None:
        body["call_context"] = ctx
    if a.record is not None or a.recording_channels:
        body["recording"] = {k: v for k, v in (("enabled", a.record), ("channels", a.recording_channels))
                             if v is not None}
    if a.queue:
        body["queue"] = True
    return body


def _drain(c: Client, a: argparse.Namespace) -> Any:
    """Drain one process, or by default the whole node behind --url (every worker under a supervisor)."""
    target = a.proc or c.health().get("node")
    if not target:
        raise CliError("the gateway did not say which node it is: name the process, e.g. `gateway drain node1.2`")
    return c.request("POST", f"/nodes/{target}/drain", {"timeout": a.timeout} if a.timeout is not None else None)


Handler = Callable[[Client, argparse.Namespace], Any]

HANDLERS: dict[tuple[str, str], Handler] = {
    ("numbers", "list"): _numbers_list,
    ("numbers", "show"): lambda c, a: c.request("GET", f"/phone_number/{a.id}"),
    ("numbers", "import-sip"): lambda c, a: c.request("POST", "/phone_number/import/sip",
                                                      _body_from(SIP_OPTS + LIMIT_OPTS, a)),
    ("numbers", "import-twilio"): lambda c, a: c.request("POST", "/phone_number/import/twilio",
                                                         _body_from(TWILIO_OPTS + LIMIT_OPTS, a)),
    ("numbers", "import-exotel"): lambda c, a: c.request("POST", "/phone_number/import/exotel",
                                                         _body_from(EXOTEL_OPTS + LIMIT_OPTS, a)),
    ("numbers", "import"): lambda c, a: c.request("POST", f"/phone_number/import/{a.provider}", _body_from((), a)),
    ("numbers", "update"): lambda c, a: c.request("PATCH", f"/phone_number/{a.id}", _body_from((), a)),
    ("numbers", "attach"): lambda c, a: c.request("POST", "/phone_number/attach",
                                                  {"phone_number_id": a.id, "agent_id": a.agent_id}),
    ("numbers", "detach"): lambda c, a: c.request("POST", "/phone_number/detach", {"phone_number_id": a.id}),
    ("numbers", "delete"): lambda c, a: c.request("DELETE", f"/phone_number/{a.id}"),
    ("numbers", "test"): lambda c, a: c.request("POST", f"/phone_number/{a.id}/test"),
    ("trunk", "test"): lambda c, a: _trunk_test(c.request("POST", "/phone_number/test/sip", _body_from(SIP_OPTS, a)),
                                                a),
    ("calls", "list"): _calls_list,
    ("calls", "live"): _calls_live,
    ("calls", "show"): lambda c, a: c.request("GET", f"/calls/logs/{a.id}"),
    ("calls", "dispatch"): lambda c, a: c.request("POST", "/calls/dispatch", _dispatch_body(a)),
    ("calls", "queue"): _queue,
    **{("bulk", action): _bulk for action in ("create", "list", "show", "pause", "resume", "cancel",
                                              "reschedule")},
    ("calls", "hangup"): lambda c, a: c.request("POST", f"/calls/{a.id}/hangup"),
    ("calls", "recording"): _recording,
    ("calls", "hold"): lambda c, a: c.request("POST", f"/calls/{a.id}/hold"),
    ("calls", "unhold"): lambda c, a: c.request("POST", f"/calls/{a.id}/unhold"),
    ("calls", "mute"): lambda c, a: c.request("POST", f"/calls/{a.id}/mute"),
    ("calls", "unmute"): lambda c, a: c.request("POST", f"/calls/{a.id}/unmute"),
    ("calls", "transfer"): lambda c, a: c.request("POST", f"/calls/{a.id}/transfer",
                                                  {"number": a.number} if a.number else {}),
    ("calls", "consult"): lambda c, a: c.request("POST", f"/calls/{a.id}/consult", {
        **({"number": a.number} if a.number else {}), **({"message": a.message} if a.message else {})}),
    ("calls", "consult-complete"): lambda c, a: c.request("POST", f"/calls/{a.id}/consult/complete"),
    ("calls", "consult-cancel"): lambda c, a: c.request("POST", f"/calls/{a.id}/consult/cancel"),
    ("agents", "list"): _agents_list,
    ("agents", "show"): lambda c, a: c.request("GET", f"/agents/{a.id}"),
    ("agents", "create"): lambda c, a: c.request("POST", "/agents", _agent_body(a)),
    ("agents", "update"): lambda c, a: c.request("PATCH", f"/agents/{a.id}", _agent_body(a)),
    ("agents", "delete"): lambda c, a: c.request("DELETE", f"/agents/{a.id}"),
    ("drain", "drain"): _drain,
}


# -- argparse --------------------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help=f"gateway base URL (env GATEWAY_URL, default {DEFAULT_URL})")
    p.add_argument("--api-key", default=None, help="API key (env GATEWAY_API_KEY, else <data dir>/api_key)")
    p.add_argument("--data-dir", default=None, help="where `gateway serve` keeps api_key (default "
                                                    "~/.telephony-gateway)")
    p.add_argument("--json", action="store_true", help="print lists as JSON instead of a table")


def _fields(p: argparse.ArgumentParser, opts: tuple[Opt, ...], *, all_optional: bool = False) -> None:
    for o in opts:
        kw: dict[str, Any] = {"dest": o.field, "default": None}
        help_ = o.help
        if o.kind == "int":
            kw["type"] = int
        if o.kind == "float":
            kw["type"] = float
        if o.kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        if o.secret:
            help_ = (help_ + " " if help_ else "") + f"(or env {o.env}; never printed)"
        if o.required and not all_optional:
            help_ = (help_ + " " if help_ else "") + "[required]"
        p.add_argument(o.flag, help=help_ or None, **kw)


def _paging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pageno", type=int, default=None)
    p.add_argument("--pagesize", type=int, default=None)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add numbers / calls / agents / trunk to the `gateway` parser."""
    numbers = sub.add_parser("numbers", help="phone numbers and trunks (through the API)")
    ns = numbers.add_subparsers(dest="action", required=True)
    p = ns.add_parser("list", help="list phone numbers")
    _paging(p)
    p.add_argument("--provider")
    p = ns.add_parser("show", help="show one phone number")
    p.add_argument("id", type=int)
    for provider, opts in (("sip", SIP_OPTS), ("twilio", TWILIO_OPTS), ("exotel", EXOTEL_OPTS)):
        p = ns.add_parser(f"import-{provider}", help=f"import a {provider} number")
        _fields(p, opts + LIMIT_OPTS)
        p.add_argument("--agent-id", type=int, help="attach to this agent")
    p = ns.add_parser("import", help="import a number of any loaded provider: --set field=value …")
    p.add_argument("provider")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="a field of the import body")
    p.add_argument("--agent-id", type=int)
    p = ns.add_parser("update", help="change fields of an imported number: --set field=value …")
    p.add_argument("id", type=int)
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", required=True)
    p = ns.add_parser("attach", help="attach a number to an agent")
    p.add_argument("id", type=int)
    p.add_argument("--agent-id", type=int, required=True)
    for name, help_ in (("detach", "detach a number from its agent"), ("delete", "delete a number"),
                        ("test", "test an imported number's trunk / account")):
        p = ns.add_parser(name, help=help_)
        p.add_argument("id", type=int)

    calls = sub.add_parser("calls", help="call log, live calls, dispatch, hangup, transfer, attended transfer, "
                                          "hold, mute, recording")
    cs = calls.add_subparsers(dest="action", required=True)
    p = cs.add_parser("list", help="call log")
    _paging(p)
    p.add_argument("--agent-id", type=int)
    p.add_argument("--status", choices=CALL_STATUSES, help="call_status filter")
    cs.add_parser("live", help="live calls")
    p = cs.add_parser("show", help="one call with its events")
    p.add_argument("id")
    p = cs.add_parser("dispatch", help="place an outbound call")
    p.add_argument("--agent-id", type=int, required=True)
    p.add_argument("--to", required=True, help="E.164 number with a leading +")
    p.add_argument("--from-number-id", type=int, required=True)
    p.add_argument("--context", help="call_context as JSON")
    p.add_argument("--record", action=argparse.BooleanOptionalAction, default=None,
                   help="record this call, or not, whatever the agent says")
    p.add_argument("--recording-channels", choices=("mono", "dual"), help="dual: caller left, agent right")
    p.add_argument("--queue", action="store_true", help="queue it: placed when the number has a free channel and "
                                                        "a free slot at its max_cps (prints the queue id)")
    queue = cs.add_parser("queue", help="the dispatch queue: list, show or cancel queued calls")
    qs = queue.add_subparsers(dest="queue_action", required=True)
    p = qs.add_parser("list", help="queued calls (and what became of them)")
    _paging(p)
    p.add_argument("--status", choices=ITEM_STATUSES)
    p.add_argument("--bulk-call-id", type=int)
    for name, help_ in (("show", "one queued call"), ("cancel", "cancel a call still queued")):
        p = qs.add_parser(name, help=help_)
        p.add_argument("id", type=int)
    p = cs.add_parser("hangup", help="hang up a live call")
    p.add_argument("id", help="call log id or call uuid")
    for name, help_ in (("hold", "put a live call on hold (music on hold; the engine hears nothing)"),
                        ("unhold", "take a live call off hold"),
                        ("mute", "stop the caller's audio reaching the engine"), ("unmute", "undo mute")):
        p = cs.add_parser(name, help=help_)
        p.add_argument("id", help="call log id or call uuid")
    p = cs.add_parser("recording", help="download a call's recording (WAV)")
    p.add_argument("id", help="call log id or call uuid")
    p.add_argument("-o", "--output", help="file to write (default call-ID.wav; - for stdout)")
    p = cs.add_parser("transfer", help="transfer a live call")
    p.add_argument("id", help="call log id or call uuid")
    p.add_argument("--number", help="E.164 target (default: the agent's transfer number)")
    p = cs.add_parser("consult", help="attended transfer: hold the caller and call the target (the engine talks "
                                      "to it), then consult-complete or consult-cancel")
    p.add_argument("id", help="call log id or call uuid")
    p.add_argument("--number", help="E.164 target (default: the agent's transfer number)")
    p.add_argument("--message", help="played to the target when it answers: a WAV path/URL, or text for the engine")
    p = cs.add_parser("consult-complete", help="attended transfer: join the caller and the answered target")
    p.add_argument("id", help="call log id or call uuid")
    p = cs.add_parser("consult-cancel", help="attended transfer: end the consultation, back to the caller")
    p.add_argument("id", help="call log id or call uuid")

    agents = sub.add_parser("agents", help="agents (engine profile + telephony settings)")
    ags = agents.add_subparsers(dest="action", required=True)
    p = ags.add_parser("list")
    _paging(p)
    p = ags.add_parser("show")
    p.add_argument("id", type=int)
    for name in ("create", "update"):
        p = ags.add_parser(name)
        if name == "update":
            p.add_argument("id", type=int)
        p.add_argument("--name", required=name == "create")
        p.add_argument("--engine", help="echo | greeting | ws://… | wss://…")
        p.add_argument("--webhook-url")
        p.add_argument("--transfer-number")
        p.add_argument("--settings", help="settings as JSON")
    p = ags.add_parser("delete")
    p.add_argument("id", type=int)

    bulk = sub.add_parser("bulk", help="bulk calls: a contact list dialled through the dispatch queue")
    bs = bulk.add_subparsers(dest="action", required=True)
    p = bs.add_parser("create", help="queue one call per contact")
    p.add_argument("--name", required=True)
    p.add_argument("--from-number-id", type=int, required=True, help="the phone number to call from")
    p.add_argument("--contacts", required=True, metavar="FILE",
                   help="JSON list or CSV with a phone_number column; other keys are each call's call_context")
    p.add_argument("--agent-id", type=int, help="default: the agent attached to the number")
    p.add_argument("--scheduled-at", metavar="WHEN", help="start its calls then (ISO 8601; no zone: UTC)")
    p.add_argument("--retry-max-attempts", type=int, metavar="N",
                   help="place each unanswered contact's call up to N times in all")
    p.add_argument("--retry-delay", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long after an unanswered call before the next attempt (default 0)")
    p.add_argument("--retry-on", metavar="STATUSES",
                   help="comma-separated call statuses to retry (default no-answer,busy,failed)")
    p = bs.add_parser("list", help="bulk calls with their progress")
    _paging(p)
    for name, help_ in (("show", "one bulk call"), ("pause", "stop placing its calls for now"),
                        ("resume", "go on placing its calls"), ("cancel", "cancel its queued calls")):
        p = bs.add_parser(name, help=help_)
        p.add_argument("id", type=int)
    p = bs.add_parser("reschedule", help="move the start of its calls not tried yet")
    p.add_argument("id", type=int)
    p.add_argument("--at", required=True, metavar="WHEN", help="the new start (ISO 8601; no zone: UTC)")

    trunk = sub.add_parser("trunk", help="SIP trunk tools")
    ts = trunk.add_subparsers(dest="action", required=True)
    p = ts.add_parser("test", help="test a SIP trunk before importing it (POST /phone_number/test/sip)")
    _fields(p, SIP_OPTS)
    drain = sub.add_parser("drain", help="drain a node or one worker: refuse new calls, let live calls finish "
                                         "(up to the drain timeout), then exit")
    drain.add_argument("proc", nargs="?", help="process id (<node>.<k>) or node id; default: the node at --url")
    drain.add_argument("--timeout", type=int, help="seconds live calls may go on (one process only; default its "
                                                   "--drain-timeout)")
    drain.set_defaults(action="drain")
    calls_parsers = [p for n, p in cs.choices.items() if n != "queue"]   # `queue` only groups its own actions
    for parser in (*ns.choices.values(), *calls_parsers, *qs.choices.values(), *bs.choices.values(),
                   *ags.choices.values(), *ts.choices.values(), drain):
        _common(parser)


def run(args: argparse.Namespace) -> int:
    try:
        url = checked_url(args.url or os.environ.get("GATEWAY_URL") or DEFAULT_URL)
        client = Client(url, resolve_api_key(args))
        result = HANDLERS[(args.command, args.action)](client, args)
    except CliError as e:
        print(f"gateway: {e}", file=sys.stderr)
        return e.code
    except CliExit as e:
        return e.code
    if result is not None:
        emit(result)
    report = result.get("report") if isinstance(result, dict) else None
    if args.action == "test" and isinstance(report, dict) and report.get("ok") is False:
        print("gateway: connection test failed (see the report's steps)", file=sys.stderr)
        return 3   # scripts can tell "the trunk does not work" from "the request failed" (1) and "no gateway" (2)
    return 0
