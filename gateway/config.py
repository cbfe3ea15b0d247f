"""Settings: command-line flags override `GATEWAY_*` environment variables, which override an optional TOML file.

Every setting has a working default so `gateway serve` runs on a fresh machine with nothing configured.
"""
from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


def default_data_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".telephony-gateway")


@dataclass
class Settings:
    host: str = "0.0.0.0"
    http_port: int = 8080
    sip_host: str = "0.0.0.0"
    sip_port: int = 5060
    #: address put in SDP/Contact; defaults to the SIP host (or 127.0.0.1 when that is 0.0.0.0).
    advertised_ip: str = ""
    rtp_port_min: int = 20000
    rtp_port_max: int = 30000
    data_dir: str = field(default_factory=default_data_dir)
    db: str = ""                    # SQLite path or SQLAlchemy URL; default <data_dir>/gateway.db
    api_key: str = ""               # default: generated into <data_dir>/api_key on first start
    public_url: str = ""            # e.g. https://gw.example.com; default http://<host>:<http_port>
    engine: str = "greeting"        # echo | greeting | ws://… | wss://… | accept[:pool] | package.module:factory
    #: further `package.module:factory` engines agents may name (the REST API refuses any other in-process spec:
    #: importing a module runs its code)
    allowed_engines: list[str] = field(default_factory=list)
    max_calls: int = 1000
    carriers: list[str] | None = None   # None = every installed carrier
    enable_sip: bool = True
    #: DNS server (ip[:port]) for SIP trunk NAPTR/SRV/A lookups (RFC 3263); empty = the system's resolvers
    dns_server: str = ""
    #: SIP over TLS (docs/sip-trunks.md "TLS and SRTP"): our certificate (PEM, chain allowed) and key; with both
    #: set the gateway also listens for TLS on `tls_port` (worker k of `--workers N`: tls_port + N + k - 1)
    tls_cert: str = ""
    tls_key: str = ""
    tls_port: int = 5061
    #: extra CA certificates (PEM) trusted when we connect to trunks over TLS, besides the system's store
    tls_ca_file: str = ""
    log_level: str = "INFO"
    log_format: str = "text"        # text (message + key=value fields) | json (one object per line)
    #: lifecycle webhooks may go to loopback / private / link-local (cloud metadata) addresses: off by default
    #: (SSRF), on for a receiver on the gateway's own host or network (docs/security.md)
    allow_private_webhooks: bool = False
    #: Fernet key(s) for secrets at rest, newest first, comma-separated; default: <data_dir>/secret_key (0600)
    secret_key: str = ""
    #: per source IP: this many failed SIP digest / API key attempts within `auth_failure_window` seconds ban the
    #: address for `auth_ban_seconds` (0 disables); during a ban SIP answers `sip_ban_response` ("403" | "silent")
    #: and the API 429 with Retry-After
    auth_max_failures: int = 10
    auth_failure_window: float = 60.0
    auth_ban_seconds: float = 300.0
    sip_ban_response: str = "403"
    #: SIP proxies (IPs / CIDR networks) in front of the gateway whose `X-Gateway-Source` header names a request's
    #: real sender, for IP-authenticated trunks and the ban above (Kamailio: docs/deploy.md); from any other
    #: source the header is ignored
    trusted_proxies: list[str] = field(default_factory=list)
    webhook_retries: int = 5        # attempts per lifecycle webhook before it is counted as failed
    webhook_timeout: float = 10.0   # seconds per attempt
    webhook_outbox_max: int = 10000  # webhooks waiting in all (persisted outbox); past it the oldest is dropped
    #: seconds any one carrier REST request may take (dispatch, hangup, transfer, import checks); past it the
    #: request is abandoned and the API answers 504 (docs/api.md, "Carrier errors")
    carrier_timeout: float = 10.0
    #: HTTP side limits (gateway/httpguard.py): a new connection must send its first request head within
    #: http_header_timeout s; a keep-alive connection idle (no complete request head) for http_idle_timeout s is
    #: closed; connections past the caps get 503. The total cap is also kept below the fd limit minus what
    #: max_calls live calls need, so SIP/RTP keep working when HTTP is saturated.
    http_header_timeout: float = 10.0
    http_idle_timeout: float = 30.0
    http_max_connections: int = 4096
    #: a carrier's media websockets (Twilio, Vonage, Exotel) arrive from a few addresses: keep this above the
    #: concurrent calls one carrier address may carry.
    http_max_connections_per_ip: int = 1000
    #: cluster identity (docs/deploy.md): the node's name, and which worker of it this process is (0 = the node
    #: runs one process, which is then the node itself).
    node_id: str = field(default_factory=socket.gethostname)
    worker_index: int = 0
    workers: int = 1                # `serve --workers N`: a supervisor and N worker processes
    drain_timeout: float = 300.0    # seconds live calls may go on after SIGTERM / drain before they are hung up
    #: seconds call-log writes are held and retried while the database is away (docs/operations.md, "When the
    #: database blips"); past it they are dropped, counted and logged
    store_retry_seconds: float = 120.0
    #: seconds PostgreSQL has to accept a connection, answer a statement, and free a pool connection before the
    #: store calls it away (gateway/store/connect.py; docs/operations.md, "When the database does not answer")
    db_connect_timeout: float = 5.0
    db_command_timeout: float = 30.0
    db_pool_timeout: float = 10.0
    #: seconds between heartbeats in the `nodes` table, and the heartbeat age after which a process is lost and
    #: its calls are closed (`node_lost`); tests shorten both
    heartbeat_interval: float = 5.0
    stale_after: float = 20.0
    #: seconds a command forwarded to the process owning a call waits for its answer
    control_timeout: float = 5.0
    #: number health (gateway/health.py): seconds between checks of each number (probe + call log), and the
    #: rolling window of calls its answer-seizure ratio and failure reasons are taken over
    health_interval: float = 60.0
    health_window: float = 3600.0
    #: call recordings (docs/recording.md): WAV files under this directory (default <data_dir>/recordings), then
    #: moved to an S3-compatible bucket when `recording_s3_bucket` is set (credentials: the usual AWS_* variables
    #: or ~/.aws, read by boto3 — never stored by the gateway); deleted after `recording_retention_days` (0: kept)
    recordings_dir: str = ""
    recording_retention_days: float = 0.0
    recording_s3_bucket: str = ""
    recording_s3_prefix: str = "recordings/"
    recording_s3_endpoint: str = ""     # e.g. http://minio:9000 for MinIO or another S3-compatible store
    recording_s3_region: str = ""
    #: seconds between sweeps: recordings left open by a dead process closed, failed uploads retried, old ones deleted
    recording_sweep_interval: float = 300.0
    #: music on hold: a WAV file the gateway plays to a held caller (default: a generated soft tone pattern)
    moh_file: str = ""
    #: ms the event loop sleeps after delivering fewer than 16 websocket media frames while it delivers 4000 or more
    #: a second (gateway/mediabatch.py): the next wake-up reads the frames of many sockets at once; at most this
    #: much is added to a frame's turnaround
    media_coalesce_ms: float = 2.0
    #: OTLP/HTTP endpoint for OpenTelemetry spans of call setup (gateway/tracing.py); empty = tracing off
    otel_endpoint: str = ""

    @property
    def db_url(self) -> str:
        return self.db or os.path.join(self.data_dir, "gateway.db")

    @property
    def recordings_path(self) -> str:
        return self.recordings_dir or os.path.join(self.data_dir, "recordings")

    @property
    def proc_id(self) -> str:
        """The id that owns calls in the call log: the node id, or `<node>.<k>` for worker k."""
        return self.node_id if self.worker_index == 0 else f"{self.node_id}.{self.worker_index}"

    @property
    def sip_contact_host(self) -> str:
        """Where peers reach our SIP and RTP (SDP, Contact, Kamailio's dispatcher list): `advertised_ip`, else the
        SIP bind address, else 127.0.0.1 when that is a wildcard."""
        if self.advertised_ip:
            return self.advertised_ip
        return "127.0.0.1" if self.sip_host in ("0.0.0.0", "", "::") else self.sip_host

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert and self.tls_key)

    @property
    def public_base(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.http_port}"

    @property
    def public_ws_base(self) -> str:
        return ws_base(self.public_base)


def ws_base(http_base: str) -> str:
    """`http(s)://host:port` as the websocket base of the same place (`ws://` / `wss://`)."""
    scheme, rest = http_base.rstrip("/").split("://", 1)
    return ("wss://" if scheme == "https" else "ws://") + rest


def _coerce(name: str, value: Any) -> Any:
    f = {f.name: f for f in fields(Settings)}[name]
    t = str(f.type)
    if isinstance(value, str):
        if t == "int":
            return int(value)
        if t == "float":
            return float(value)
        if t == "bool":
            return value.strip().lower() in ("1", "true", "yes", "on")
        if t.startswith("list"):
            return [v.strip() for v in value.split(",") if v.strip()]
    return value


def load_settings(overrides: dict[str, Any] | None = None, config_file: str | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Merge TOML file < environment < explicit overrides (CLI flags; None values are ignored)."""
    environ = os.environ if environ is None else environ
    names = {f.name for f in fields(Settings)}
    merged: dict[str, Any] = {}
    path = config_file or environ.get("GATEWAY_CONFIG")
    if path:
        data = tomllib.loads(Path(path).read_text())
        data = data.get("gateway", data)
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown settings in {path}: {', '.join(sorted(unknown))}")
        merged.update(data)
    for name in names:
        env = environ.get(f"GATEWAY_{name.upper()}")
        if env is not None:
            merged[name] = env
    for k, v in (overrides or {}).items():
        if v is not None:
            merged[k] = v
    return Settings(**{k: _coerce(k, v) for k, v in merged.items()})
