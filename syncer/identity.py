"""This device's key pair and certificate, and the device ID derived from it.

Certificates are issued by the fixed "syncer device CA" shipped in `syncer/data/`. Its private key
is public on purpose: the CA asserts nothing. It exists only so that stdlib `ssl` (which has no
verify callback) and aioquic complete a mutual TLS handshake with any syncer device, which still
proves the peer holds the private key of the certificate it presented. Authorization is the
device-ID check done by the application after the handshake (see docs/security.md).
"""

from __future__ import annotations

import datetime
import os
import secrets
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from syncer.deviceid import DeviceId
from syncer.errors import IdentityError

CERT_VALIDITY_DAYS = 20 * 365
COMMON_NAME = "syncer"


def ca_cert_path() -> Path:
    return Path(str(resources.files("syncer") / "data" / "ca-cert.pem"))


def _ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    data = resources.files("syncer") / "data"
    cert = x509.load_pem_x509_certificate((data / "ca-cert.pem").read_bytes())
    key = serialization.load_pem_private_key((data / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def issue_certificate(
    key: ec.EllipticCurvePrivateKey, now: datetime.datetime | None = None
) -> x509.Certificate:
    ca_cert, ca_key = _ca()
    now = now or datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        # a random serial makes each certificate (and so each device ID) unique
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(COMMON_NAME)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


@dataclass(frozen=True)
class Identity:
    cert_file: Path
    key_file: Path
    cert_der: bytes

    @property
    def device_id(self) -> DeviceId:
        return DeviceId.from_cert_der(self.cert_der)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_or_create(cert_file: Path, key_file: Path) -> Identity:
    """Load the identity, creating key and certificate on first use."""
    if cert_file.exists() != key_file.exists():
        missing = key_file if cert_file.exists() else cert_file
        raise IdentityError(
            f"identity is incomplete: {missing} is missing (restore it or remove both files)"
        )
    if not cert_file.exists():
        cert_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue_certificate(key)
        _write_private(
            key_file,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        _write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except ValueError as e:
        raise IdentityError(f"cannot read certificate {cert_file}: {e}") from None
    return Identity(cert_file, key_file, cert.public_bytes(serialization.Encoding.DER))
