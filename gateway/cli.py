"""`gateway` command line: serve, plus API clients (numbers, calls, trunk test) and load tests."""
from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import os
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import Settings, load_settings
from .logsetup import configure_logging
from .publicurl import unreachable_reason
from .redact import redact_url
from .secretbox import SecretKeyError
from .sip.origin import parse_proxies
from .stopsignals import catch_if_serving, take_over
from .stopsignals import pending as pending_stop_signals

if TYPE_CHECKING:
    from .engine import EngineRegistry
    from .runtime import Gateway


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (also GATEWAY_CONFIG)")
    p.add_argument("--host")
    p.add_argument("--http-port", type=int)
    p.add_argument("--sip-port", type=int)
    p.add_argument("--tls-cert", help="PEM certificate (chain) for SIP over TLS; with --tls-key the gateway also "
                                      "listens for TLS on --tls-port")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-port", type=int, help="SIP over TLS port (default 5061)")
    p.add_argument("--db", help="SQLite path or PostgreSQL URL")
    p.add_argument("--api-key")
    p.add_argument("--public-url", help="public base URL carriers reach us at, e.g. https://gw.example.com")
    p.add_argument("--engine", help="default engine: echo | greeting | ws(s)://host/path[?sample_rate=…] | "
                                    "accept[:pool] | package.module:factory (see docs/engine-protocol.md)")
    p.add_argument("--allow-engine", action="append", dest="allowed_engines", metavar="MODULE:FACTORY",
                   help="an in-process engine agents may also name (repeat for more); agents set through the API "
                        "cannot name any other module")
    p.add_argument("--data-dir")
    p.add_argument("--max-calls", type=int)
    p.add_argument("--log-level")
    p.add_argument("--log-format", choices=("text", "json"),
                   help="text: message then key=value fields (default); json: one JSON object per line")
    p.add_argument("--allow-private-webhooks", action="store_true", default=None,
                   help="let agent webhook_url point at loopback/private/link-local addresses (off: SSRF guard)")
    p.add_argument("--workers", type=int, help="run N worker processes under a supervisor (default 1: this "
                                               "process serves); needs a PostgreSQL --db and Kamailio in front "
                                               "(docs/deploy.md)")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)   # set by the supervisor for worker k
    p.add_argument("--drain-timeout", type=float, help="seconds live calls may go on after SIGTERM / `gateway "
                                                       "drain` before they are hung up (default 300)")
    p.add_argument("--store-retry-seconds", type=float, help="seconds call-log writes are held and retried while "
                                                             "the database is away (default 120; docs/operations.md)")
    p.add_argument("--http-max-connections", type=int, help="HTTP connections in all (default 4096)")
    p.add_argument("--http-max-connections-per-ip", type=int, help="HTTP connections from one address (default 1000)")
    p.add_argument("--http-header-timeout", type=float, help="seconds a new connection has for its first request "
                                                             "head (default 10)")
    p.add_argument("--http-idle-timeout", type=float, help="seconds an idle keep-alive connection is kept "
                                                           "(default 30)")
    p.add_argument("--trusted-proxy", action="append", dest="trusted_proxies", metavar="IP[/PREFIX]",
                   help="a SIP proxy in front of the gateway (Kamailio) whose X-Gateway-Source header names the "
                        "real sender of a request, for IP-authenticated trunks (repeat for more; docs/deploy.md)")
    p.add_argument("--node-id", help="this node's name in a cluster (default: the host name); it owns the "
                                     "calls it takes (docs/deploy.md)")
    p.add_argument("--media-coalesce-ms", type=float,
                   help="ms the event loop of a busy worker (about 80 media streams or more) sleeps after a small "
                        "batch of websocket media frames, so the next wake-up reads many at once (default 2; 0: "
                        "off; gateway/mediabatch.py)")
    p.add_argument("--otel-endpoint", help="OTLP/HTTP endpoint for OpenTelemetry spans of each call's setup, e.g. "
                                           "http://collector:4318/v1/traces (default: off; needs the [otel] extra)")


def _serve_settings(args: argparse.Namespace) -> Settings:
    return load_settings({
        "host": args.host, "http_port": args.http_port, "sip_port": args.sip_port, "db": args.db,
        "tls_cert": args.tls_cert, "tls_key": args.tls_key, "tls_port": args.tls_port,
        "api_key": args.api_key, "public_url": args.public_url, "engine": args.engine, "data_dir": args.data_dir,
        "allowed_engines": args.allowed_engines, "trusted_proxies": args.trusted_proxies,
        "max_calls": args.max_calls, "log_level": args.log_level, "log_format": args.log_format,
        "allow_private_webhooks": args.allow_private_webhooks,
        "node_id": args.node_id, "drain_timeout": args.drain_timeout, "store_retry_seconds": args.store_retry_seconds,
        "http_max_connections": args.http_max_connections,
        "http_max_connections_per_ip": args.http_max_connections_per_ip,
        "http_header_timeout": args.http_header_timeout, "http_idle_timeout": args.http_idle_timeout,
        "workers": args.workers, "worker_index": args.worker_index, "otel_endpoint": args.otel_endpoint,
        "media_coalesce_ms": args.media_coalesce_ms,
    }, config_file=args.config)


def _settings_error(settings: Settings) -> str | None:
    """Why these settings cannot run (one line), or None."""
    if settings.workers < 1:
        return "--workers: must be at least 1"
    if not 0 <= settings.media_coalesce_ms <= 10:
        return "--media-coalesce-ms: must be between 0 and 10 (ms added to a frame's turnaround at most)"
    try:
        parse_proxies(settings.trusted_proxies)
    except ValueError as e:
        return f"--trusted-proxy: {e}"
    if settings.workers > 1 and not settings.db_url.startswith(("postgresql://", "postgres://", "postgresql+")):
        return (f"--workers {settings.workers} needs PostgreSQL: the workers share the call log, so pass "
                "--db postgresql://user:pass@host/db (SQLite serves one process only)")
    return None


async def _serve(args: argparse.Namespace, serve_argv: list[str]) -> int:
    from .engine import EngineRegistry
    from .recording.s3 import S3Unavailable
    from .supervisor import Supervisor, report_ready
    from .workers import worker_settings

    settings = _serve_settings(args)
    problem = _settings_error(settings)
    if problem:
        print(f"gateway: {problem}", file=sys.stderr)
        return 2
    try:
        configure_logging(settings.log_level, settings.log_format)
    except ValueError as e:
        print(f"gateway: log_format: {e}", file=sys.stderr)
        return 2
    # in-process engines are imported and built here, before the runtime (a wrong spec is said in a fraction of the
    # start-up) and before gc.freeze() below moves them out of the collector's way; a supervisor says it once
    # rather than every worker
    engines = EngineRegistry(settings.engine, settings.allowed_engines)
    problem = _engine_error(engines, settings)
    if problem:
        print(f"gateway: {problem}", file=sys.stderr)
        return 2
    if settings.workers > 1 and settings.worker_index == 0:
        return await Supervisor(settings, serve_argv).run()
    from .runtime import Gateway

    settings = worker_settings(settings)
    if pending_stop_signals():    # came while the runtime was imported: nothing built yet, nothing to undo
        print(f"gateway {settings.proc_id}: stopped by a signal during start-up", flush=True)
        return 0
    try:
        gw = Gateway(settings, engines=engines)
    except (SecretKeyError, S3Unavailable) as e:
        print(f"gateway: {e}", file=sys.stderr)
        return 2
    # SIGTERM / Ctrl-C drain (docs/deploy.md): no new calls, live calls go on up to --drain-timeout; a second
    # signal hangs them up at once. `gateway drain` and the drain API end here too, through gw.drained. Signals
    # since the process's first line count (gateway/stopsignals.py). One during start-up (seconds on a busy
    # machine) drains as soon as the start is done — no calls yet, so at once — and the process exits 0 like any
    # drained one (a supervisor keeps it down); a second one during start-up cancels the start.
    start = asyncio.ensure_future(gw.start())
    take_over(asyncio.get_running_loop(), lambda: _on_stop_signal(gw, start))
    try:
        await start
    except SecretKeyError as e:
        print(f"gateway: {e}", file=sys.stderr)
        await _stop_quietly(gw)
        return 2
    except OSError as e:   # a port in use, an address not on this machine: say which, no traceback
        print(f"gateway: cannot start: {_start_error(e, settings)}", file=sys.stderr)
        await _stop_quietly(gw)
        return 1
    except asyncio.CancelledError:
        if not start.cancelled() or not gw.draining:
            raise             # this coroutine was cancelled, not the start by a second signal
        await _stop_quietly(gw)
        print(f"gateway {settings.proc_id}: start cancelled by a second signal", flush=True)
        return 0
    if gw.draining:           # signalled during start-up
        gw.begin_drain()
    # Everything loaded so far (SQLAlchemy, aiortc, numpy…) lives as long as the process: move it out of the
    # collector's sight, and collect young objects less often. Measured with SIPp at 100 calls/s: INVITE→200
    # p50 104 ms → 12 ms, because full collections over the start-up heap were stalling the loop.
    gc.freeze()
    gc.set_threshold(20000, 50, 100)
    from . import mediabatch
    mediabatch.set_pause(settings.media_coalesce_ms / 1000)
    where = getattr(gw, "api_key_path", None)
    print(f"gateway {settings.proc_id}: HTTP on {settings.host}:{gw.http_port}, engine {redact_url(settings.engine)}, "
          f"db {redact_url(settings.db_url)}", flush=True)
    print("gateway: API key " + (f"in {where}" if where else "from configuration"), flush=True)
    _announce_public_url(settings.public_base)
    if not gw.draining:     # a signal may have come as the start ended: not ready, going
        report_ready()      # SIP, RTP, the control bus and the carriers are up: to the supervisor (or systemd)
    await gw.drained.wait()
    await gw.stop()
    return 0


def _engine_error(engines: EngineRegistry, settings: Settings) -> str | None:
    """One line naming the flag whose engine spec is wrong (it does not import, is no VoiceEngine…), or None."""
    for flag, spec in [("--engine", settings.engine), *(("--allow-engine", s) for s in settings.allowed_engines)]:
        try:
            engines.validate(spec)
        except ValueError as e:
            return f"{flag}: {e}"
    return None


def _start_error(e: OSError, settings: Settings) -> str:
    """One line for a failed bind: asyncio's message names the address for HTTP; SIP's may not, so ours follow."""
    msg = e.strerror or str(e)
    if "address (" not in msg and e.errno is not None:
        tls = f", TLS {settings.tls_port}" if settings.tls_enabled else ""
        msg += f" (HTTP {settings.host}:{settings.http_port}, SIP {settings.sip_host}:{settings.sip_port}{tls})"
    if e.errno == errno.EADDRINUSE:
        msg += "; is another gateway running? choose another --http-port / --sip-port"
    return msg


async def _stop_quietly(gw: Gateway) -> None:
    """Undo a half-done start (SIP bound, HTTP not): errors here would only hide the first one."""
    try:
        await gw.stop()
    except Exception:
        pass


def _on_stop_signal(gw: Gateway, start: asyncio.Future[None]) -> None:
    if not start.done():
        if gw.draining:
            start.cancel()     # a second signal: stop starting now (whatever is half-open is closed after)
            return
        print(f"gateway {gw.settings.proc_id}: signal during start-up: draining once started; signal again to stop "
              "now", flush=True)
        gw.draining = True     # carriers already up refuse calls meanwhile; _serve drains once the start is done
        return
    if start.cancelled() or start.exception() is not None:
        return                 # stopping after a failed or interrupted start already
    if not gw.draining:
        print(f"gateway: draining {len(gw.calls.active)} live call(s) for up to {gw.settings.drain_timeout:g} s; "
              "signal again to hang them up now", flush=True)
    gw.begin_drain()


def _announce_public_url(public: str) -> None:
    """Say which URL carriers are given (webhooks, media websockets), and warn when they cannot reach it."""
    print(f"gateway: public URL {public} (carriers are sent here; set it with --public-url)", flush=True)
    problem = unreachable_reason(public)
    if problem:
        print(f"gateway: warning: Twilio, Exotel and Vonage cannot reach {public} ({problem}): real numbers will "
              "not connect until --public-url / GATEWAY_PUBLIC_URL names an https address they can reach",
              file=sys.stderr, flush=True)


async def _secrets_rotate(args: argparse.Namespace) -> int:
    """New key first, every stored secret re-encrypted with it (the store does that as it opens), old keys retired.
    Run it with the gateway stopped: a running gateway knows only the key it started with."""
    from .secretbox import SecretBox, key_file, new_key, read_key_file, write_key_file
    from .store import Store

    settings = load_settings({"data_dir": args.data_dir, "db": args.db}, config_file=args.config)
    if settings.secret_key:
        print("gateway: the key comes from GATEWAY_SECRET_KEY / secret_key, which this command cannot edit. Put a "
              f"new key first ({new_key()}), keep the old one after a comma, start the gateway once (it "
              "re-encrypts every secret with the first key), then remove the old key.", file=sys.stderr)
        return 2
    path = key_file(settings.data_dir)
    old = read_key_file(path) if os.path.exists(path) else []
    keys = [new_key(), *old]
    write_key_file(path, keys)          # both: whatever happens next, every row stays readable
    store = Store(settings.db_url, SecretBox(keys, path))
    try:
        await store.open()
    except SecretKeyError as e:
        print(f"gateway: {e}", file=sys.stderr)
        return 2
    finally:
        await store.close()
    write_key_file(path, keys[:1])
    print(f"gateway: stored secrets re-encrypted with a new key; {len(old)} old key(s) retired from {path}")
    return 0


def _secrets_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="secrets_command", required=True)
    rot = sub.add_parser("rotate", help="new key for stored secrets; re-encrypt every row (gateway stopped)")
    rot.add_argument("--config", help="TOML config file (also GATEWAY_CONFIG)")
    rot.add_argument("--data-dir", help="where the key file lives (default ~/.telephony-gateway)")
    rot.add_argument("--db", help="SQLite path or PostgreSQL URL (default <data dir>/gateway.db)")


def _kamailio_config(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .kamailio import DEFAULT_RUN_DIR, default_cfg_path, describe, write_dispatcher_list

    settings = _serve_settings(args)
    if settings.workers < 1:
        print("gateway: --workers: must be at least 1", file=sys.stderr)
        return 2
    if args.write:
        write_dispatcher_list(settings)
    cfg = Path(args.kamailio_cfg) if args.kamailio_cfg else default_cfg_path()
    print(describe(settings, cfg, args.run_dir or DEFAULT_RUN_DIR), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Telephony gateway for voice-AI engines")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_args(sub.add_parser("serve", help="run the gateway (HTTP 8080, SIP 5060)"))
    _secrets_args(sub.add_parser("secrets", help="encryption key of stored carrier secrets (rotate)"))
    p = sub.add_parser("kamailio-config", help="print the Kamailio dispatcher list for `serve --workers N` and the "
                                               "kamailio command line (same options as serve)")
    _serve_args(p)
    p.add_argument("--kamailio-cfg", help="path of deploy/kamailio/kamailio.cfg (default: the one in this source "
                                          "tree)")
    p.add_argument("--run-dir", default=None, help="Kamailio's writable run dir (default /run/kamailio)")
    p.add_argument("--write", action="store_true", help="also write <data dir>/dispatcher.list now")
    from .loadtest.command import register as register_loadtest
    register_loadtest(sub)
    from .simulate.command import register as register_simulate
    register_simulate(sub)
    from .cli_api import register as register_api
    register_api(sub)
    return parser


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop  # measured: the difference between collapse and headroom at 1000 RTP legs
        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader went away (`gateway calls list --json | head`): nothing left to say, and no traceback.
        # stdout is pointed at /dev/null so the interpreter's own flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        catch_if_serving(argv)    # the console script's first chance (`python -m gateway` took it earlier)
        return run_async(_serve(args, argv[argv.index("serve") + 1:]))
    if args.command == "secrets":
        return run_async(_secrets_rotate(args))
    if args.command == "kamailio-config":
        return _kamailio_config(args)
    if args.command == "simulate":
        from .simulate.command import run as run_simulate
        return run_simulate(args)
    if args.command == "loadtest":
        from .loadtest.command import run as run_loadtest
        return run_async(run_loadtest(args))
    from .cli_api import COMMANDS as API_COMMANDS
    from .cli_api import run as run_api
    if args.command in API_COMMANDS:
        return run_api(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
