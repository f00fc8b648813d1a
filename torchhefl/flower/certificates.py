"""TLS certificates for a Flower deployment: a private CA and a SuperLink certificate it signs.

    python -m torchhefl.flower.certificates --out certs/ --host superlink.example.org

writes ``ca.crt`` (give it to every site), ``ca.key`` (keep it offline), ``server.crt`` and
``server.key`` (the SuperLink's). Key files are mode 0600 and the folder, if created, 0700; every
file is replaced atomically and a symlink at its path is replaced, not followed
(:mod:`torchhefl.secure.files`). The server certificate's subject
alternative names always include ``localhost`` and ``127.0.0.1`` besides the ``--host`` names,
because TLS clients check the address they dialled against them.

Uses ``cryptography`` only (a core dependency); no ``openssl`` binary is needed.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from torchhefl.secure.files import private_directory, write_private_file, write_public_file

__all__ = ["CertificatePaths", "generate_certificates", "main"]

#: how long the certificates are valid, in days
DEFAULT_DAYS = 365


@dataclass(frozen=True)
class CertificatePaths:
    """The files written by :func:`generate_certificates`."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def generate_certificates(out: str | Path, hosts: Sequence[str] = (), *, days: int = DEFAULT_DAYS) -> CertificatePaths:
    """Write a CA and a server certificate for ``hosts`` (DNS names or IP addresses) into ``out``.

    ``localhost`` and ``127.0.0.1`` are always among the server's names. Keys are ECDSA P-256;
    private key files are written with mode 0600, ``out`` is created with mode 0700 (an existing
    ``out`` that others may write to is refused with :class:`PermissionError`). Existing files are
    replaced atomically.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    out = private_directory(out)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "torchhefl deployment CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    names: list[x509.GeneralName] = []
    for host in ["localhost", "127.0.0.1", *hosts]:
        try:
            name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            name = x509.DNSName(host)
        if name not in names:
            names.append(name)
    common_name = hosts[0] if hosts else "localhost"
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    paths = CertificatePaths(
        ca_cert=out / "ca.crt", ca_key=out / "ca.key", server_cert=out / "server.crt", server_key=out / "server.key"
    )
    _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths.ca_key, _key_pem(ca_key), private=True)
    _write(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths.server_key, _key_pem(server_key), private=True)
    return paths


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write(path: Path, data: bytes, *, private: bool) -> None:
    (write_private_file if private else write_public_file)(path, data)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m torchhefl.flower.certificates", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="directory for ca.crt, ca.key, server.crt, server.key")
    p.add_argument("--host", action="append", default=[], help="a name or IP address of the SuperLink (repeatable)")
    p.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"validity in days (default {DEFAULT_DAYS})")
    args = p.parse_args(argv)
    try:
        paths = generate_certificates(args.out, args.host, days=args.days)
    except (OSError, ValueError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    for label, path in (("CA certificate (give to every site)", paths.ca_cert), ("CA key (keep offline)", paths.ca_key),
                        ("SuperLink certificate", paths.server_cert), ("SuperLink key (mode 0600)", paths.server_key)):
        print(f"wrote {path}  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
