"""Certificates for a deployment's party links: one CA, one certificate per party, named by its role.

::

    python -m mpcgen.certs init --out certs/                 # CA + server, client, dealer
    python -m mpcgen.certs init --out certs/ --san server=10.0.0.1 --san client=client.example.org
    python -m mpcgen.certs issue --out certs/ --role client  # a new certificate from the CA in certs/

Layout of the folder (what ``--tls-dir``-style options and :func:`party_files` read): ``ca.crt`` (give it to every
party), ``ca.key`` (keep it offline: whoever holds it can mint parties), and ``<role>.crt`` / ``<role>.key`` per
party (each party gets only its own key). Keys are ECDSA P-256, written with mode 0600. The links check that a
peer's certificate chains to ``ca.crt`` and that its common name is the role it claims (``server``, ``client``,
``dealer``); subject alternative names are informational (hosts are not checked: parties are often addressed by
IP).

In production each party would make its own key and send the CA a signing request; this tool makes every key in
one place, which suits a single operator deploying all three hosts and tests.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from mpcgen.errors import MpcgenError
from mpcgen.mpc.links import TlsFiles
from mpcgen.mpc.roles import ROLES

logger = logging.getLogger("mpcgen.certs")


def party_files(folder: str | os.PathLike, role: str) -> TlsFiles:
    """The TLS files of ``role`` in a folder made by ``python -m mpcgen.certs init``."""
    folder = Path(folder)
    return TlsFiles(cert=str(folder / f"{role}.crt"), key=str(folder / f"{role}.key"), ca=str(folder / "ca.crt"))


def tls_flags(folder: str | os.PathLike, role: str) -> list[str]:
    """``--tls-cert/--tls-key/--tls-ca`` of ``role`` for a per-host party command (``python -m mpcgen.cli.party``)."""
    files = party_files(folder, role)
    return ["--tls-cert", files.cert, "--tls-key", files.key, "--tls-ca", files.ca]


def _write_private(path: Path, data: bytes) -> None:
    """Write a key: mode 0600 from the start (never world-readable, even briefly), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _name(common_name: str):  # -> x509.Name
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mpcgen deployment"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _sans(names: Sequence[str]):
    from cryptography import x509

    out = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def make_ca(folder: Path, days: int = 365) -> None:
    """A new CA (``ca.crt``, ``ca.key``) in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("mpcgen CA")).issuer_name(_name("mpcgen CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    _write_private(folder / "ca.key", key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    (folder / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def issue(folder: Path, role: str, sans: Sequence[str] = (), days: int = 365) -> TlsFiles:
    """A certificate for ``role`` signed by the CA in ``folder`` (``<role>.crt``, ``<role>.key``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    if role not in ROLES:
        raise MpcgenError(f"unknown role {role!r}: use one of {list(ROLES)}")
    try:
        ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    except (OSError, ValueError) as err:
        raise MpcgenError(f"{folder}: no usable CA (ca.crt, ca.key): {err}; run `python -m mpcgen.certs init`") \
            from None
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(role)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               # Each party is TLS server for some links and TLS client for others.
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.SubjectAlternativeName(_sans([role, *sans])), critical=False))
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(folder / f"{role}.key", key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    (folder / f"{role}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return party_files(folder, role)


def _parse_sans(items: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        role, sep, host = item.partition("=")
        if not sep or role not in ROLES or not host:
            raise MpcgenError(f"--san {item!r}: use ROLE=HOST with ROLE one of {list(ROLES)}")
        out.setdefault(role, []).append(host)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpcgen.certs", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    jobs = parser.add_subparsers(dest="job", required=True)
    init = jobs.add_parser("init", help="a new CA and a certificate for each role")
    init.add_argument("--roles", nargs="+", default=list(ROLES), choices=ROLES)
    one = jobs.add_parser("issue", help="a certificate for one role from an existing CA")
    one.add_argument("--role", required=True, choices=ROLES)
    for p in (init, one):
        p.add_argument("--out", required=True, help="the deployment's certificate folder")
        p.add_argument("--san", action="append", default=[], help="ROLE=HOST: a host name or IP in its certificate")
        p.add_argument("--days", type=int, default=365, help="validity (default 365)")
        p.add_argument("--force", action="store_true", help="init: replace an existing CA")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = Path(args.out)
    try:
        sans = _parse_sans(args.san)
        if args.days < 1:
            raise MpcgenError("--days must be at least 1")
        if args.job == "init":
            if (folder / "ca.key").exists() and not args.force:
                raise MpcgenError(f"{folder} already holds a CA: use `issue`, or --force to replace it (every "
                                  "party then needs the new ca.crt)")
            make_ca(folder, args.days)
            roles = args.roles
        else:
            roles = [args.role]
        for role in roles:
            issue(folder, role, sans.get(role, []), args.days)
            logger.info("%s: %s/%s.crt, %s/%s.key", role, folder, role, folder, role)
        logger.info("CA: %s/ca.crt (give to every party); keep %s/ca.key offline", folder, folder)
    except MpcgenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
