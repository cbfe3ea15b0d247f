"""A throwaway certificate authority for TLS tests, made with `cryptography` (already a dependency): a CA, and
server certificates it signs for chosen names, validity windows, or self-signed.

    ca = TestCa(tmp_path)                                   # ca.cert_path: trust this (GATEWAY_TLS_CA_FILE)
    good = ca.issue("trunk.test", "localhost", "127.0.0.1")  # .cert_path / .key_path (PEM)
    expired = ca.issue("trunk.test", days=(-30, -1))
    stranger = TestCa(tmp_path, "other").issue("trunk.test") # signed by a CA nobody trusts
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Issued:
    cert_path: str
    key_path: str


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(out)


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Issued(str(cert_path), str(key_path))


class TestCa:
    __test__ = False   # not a pytest class

    def __init__(self, directory: Path, label: str = "ca") -> None:
        self.dir = Path(directory)
        self.label = label
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(_name(f"Test CA {label}"))
                     .issuer_name(_name(f"Test CA {label}")).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = _write(self.dir / f"{label}-root", self.cert, self.key).cert_path
        self._n = 0

    def issue(self, *names: str, days: tuple[int, int] = (-1, 30), self_signed: bool = False) -> Issued:
        """A server certificate for `names` (DNS names or IPs), valid from now+days[0] to now+days[1]."""
        self._n += 1
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = _name(names[0])
        issuer, signer = (subject, key) if self_signed else (self.cert.subject, self.key)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now + dt.timedelta(days=days[0])).not_valid_after(now + dt.timedelta(days=days[1]))
                .add_extension(_san(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(signer, hashes.SHA256()))
        return _write(self.dir / f"{self.label}-{self._n}-{names[0]}", cert, key)
