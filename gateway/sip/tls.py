"""TLS for SIP (RFC 3261 §26.2, RFC 5922): the contexts we listen and connect with, and why a connection to a
peer failed, in words an operator can act on.

Python's `ssl` reports a failed certificate check as `SSLCertVerificationError` carrying OpenSSL's X509 verify
code (https://docs.python.org/3/library/ssl.html#ssl.SSLCertVerificationError, codes from OpenSSL's
`X509_verify_cert_error_string` list). `classify_tls_error` maps the codes a trunk operator meets to one verdict
each — expired, not yet valid, wrong name, unknown CA, self-signed — and anything else to a handshake failure,
so `test connection` and the call log say which it was instead of an OpenSSL string.
"""
from __future__ import annotations

import ssl

__all__ = ["TlsError", "classify_tls_error", "server_context", "client_context", "EXPIRED", "NOT_YET_VALID",
           "WRONG_NAME", "UNKNOWN_CA",
           "SELF_SIGNED", "HANDSHAKE_FAILED"]

EXPIRED = "certificate expired"
NOT_YET_VALID = "certificate not yet valid"
WRONG_NAME = "certificate name mismatch"
UNKNOWN_CA = "certificate from an unknown CA"
SELF_SIGNED = "self-signed certificate"
HANDSHAKE_FAILED = "TLS handshake failed"

# OpenSSL X509_V_ERR_* codes (include/openssl/x509_vfy.h)
_CODES = {
    9: NOT_YET_VALID,      # CERT_NOT_YET_VALID
    10: EXPIRED,           # CERT_HAS_EXPIRED
    18: SELF_SIGNED,       # DEPTH_ZERO_SELF_SIGNED_CERT
    19: UNKNOWN_CA,        # SELF_SIGNED_CERT_IN_CHAIN (a root we do not trust)
    20: UNKNOWN_CA,        # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: UNKNOWN_CA,        # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    2: UNKNOWN_CA,         # UNABLE_TO_GET_ISSUER_CERT
    62: WRONG_NAME,        # HOSTNAME_MISMATCH
    64: WRONG_NAME,        # IP_ADDRESS_MISMATCH
}


class TlsError(OSError):
    """A TLS connection could not be set up; `verdict` is one of the constants above."""

    def __init__(self, message: str, verdict: str) -> None:
        super().__init__(message)
        self.verdict = verdict


def classify_tls_error(exc: BaseException, name: str) -> TlsError:
    """The verdict for a failed handshake with a peer that was to prove it is `name`."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        verdict = _CODES.get(exc.verify_code, HANDSHAKE_FAILED)
        detail = exc.verify_message or str(exc)
        if verdict == WRONG_NAME:
            detail = f"the certificate does not name {name}"
        return TlsError(f"{verdict}: {detail}", verdict)
    return TlsError(f"{HANDSHAKE_FAILED}: {exc}", HANDSHAKE_FAILED)


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The context of our TLS listener (`--tls-cert` / `--tls-key`, PEM; the certificate file may hold the
    chain). Raises OSError naming the setting when a file cannot be loaded, so the start fails in one line."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as e:
        raise OSError(f"tls_cert/tls_key ({cert_file}, {key_file}): cannot load the certificate and key: "
                      f"{getattr(e, 'strerror', None) or e}") from None
    return ctx


def client_context(ca_file: str = "") -> ssl.SSLContext:
    """The context for TLS connections we open: the system's trust store, plus `ca_file` (GATEWAY_TLS_CA_FILE,
    e.g. a private CA of a carrier's SBC); the certificate chain and the peer's name are always checked here
    (a trunk's `tls_verify: false` uses the transport's unchecked context instead)."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as e:
            raise OSError(f"tls_ca_file ({ca_file}): cannot load: {getattr(e, 'strerror', None) or e}") from None
    return ctx
