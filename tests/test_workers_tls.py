"""`gateway serve --workers 2 --tls-cert … --tls-key …`: every worker listens for SIP over TLS on its own port
(`tls_port + N + k - 1`, gateway/workers.py), and answers an OPTIONS sent over TLS with its own process in the
response. Real processes on 127.0.0.1, a real PostgreSQL (GATEWAY_TEST_POSTGRES_URL; skipped without it), a CA and
certificate made by the test."""
from __future__ import annotations

import asyncio
import socket
import ssl

from procs import NODE, GatewayProc, fresh_postgres
from sipp import free_port, port_free
from tls_certs import TestCa

WORKERS = 2


def tls_base_port() -> int:
    """A port P whose worker TLS ports P + N + k - 1 are free too."""
    for _ in range(50):
        port = free_port(kind=socket.SOCK_STREAM)
        if all(port_free(port + WORKERS + k - 1, socket.SOCK_STREAM) for k in range(1, WORKERS + 1)):
            return port
    raise RuntimeError("no free TLS port range")


async def options_over_tls(port: int, ca_file: str) -> str:
    """One OPTIONS on a new TLS connection checked against the test CA; the response's head."""
    ctx = ssl.create_default_context(cafile=ca_file)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 10)
    local = writer.get_extra_info("sockname")
    writer.write((f"OPTIONS sip:ping@127.0.0.1:{port};transport=tls SIP/2.0\r\n"
                  f"Via: SIP/2.0/TLS 127.0.0.1:{local[1]};branch=z9hG4bK-tls-{port};rport\r\n"
                  "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=t1\r\nTo: <sip:ping@127.0.0.1>\r\n"
                  f"Call-ID: tls-workers-{port}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    return head.decode()


async def test_each_worker_listens_for_tls_on_its_own_port(tmp_path):
    pg = await fresh_postgres()
    ca = TestCa(tmp_path)
    cert = ca.issue("localhost", "127.0.0.1")
    base = tls_base_port()
    gw = await GatewayProc.start(tmp_path, "--workers", str(WORKERS), "--db", pg, "--tls-cert", cert.cert_path,
                                 "--tls-key", cert.key_path, "--tls-port", str(base))
    try:
        await gw.wait_procs({f"{NODE}.1", f"{NODE}.2"})     # /healthz 200: SIP (and its TLS) listens already
        for k in range(1, WORKERS + 1):
            port = base + WORKERS + k - 1
            head = await options_over_tls(port, ca.cert_path)
            assert head.startswith("SIP/2.0 200"), head
            assert "SIP/2.0/TLS" in head                      # our Via came back on the TLS connection
        assert f"TLS {base + WORKERS}-{base + 2 * WORKERS - 1}" in gw.log.read_text()   # the supervisor says where
    finally:
        await gw.close()
