"""A lab PKI for the OPC UA side: one certificate authority, a certificate per device server and
per client, a trust directory, and a users file with hashed passwords.

    python -m opcua_devices.pki --out pki --devices plc01 cam01 --clients gateway

writes::

    pki/ca/ca_cert.der, ca_key.pem          the lab CA (keep the key off the devices)
    pki/trusted/ca_cert.der                  the trust directory every server and client loads
    pki/devices/<id>/cert.der, key.pem       server certificate (SERVER_AUTH) of each device
    pki/clients/<name>/cert.der, key.pem     client certificate (CLIENT_AUTH) of each client
    pki/clients/<name>/password              the client's generated password (mode 0600)
    pki/users.json                           user name -> salted PBKDF2 hash, for the device servers

Every certificate is signed by the CA, so a trust directory holding only the CA certificate
trusts exactly the certificates of this PKI; a self-signed certificate or one from another CA is
rejected with ``BadCertificateUntrusted``. Certificates carry the application URI the servers and
clients use (:func:`device_application_uri`, :func:`client_application_uri`) and the host names
given with ``--hosts`` (default: localhost and this host's name).

Running it again keeps the existing CA (and what it signed) and adds what is missing, so a new
device can be enrolled later: ``--devices cam02`` issues a certificate for cam02 only.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from asyncua.crypto import cert_gen

from .security import hash_password, read_users_file, write_private_file, write_users_file
from .model import SAFE_ID_RE

CERT_DAYS = 365 * 2
SUBJECT = {"organizationName": "aigc-offload lab", "countryName": "DE"}


def device_application_uri(device_id: str) -> str:
    """ApplicationUri of a device server; its certificate's SubjectAltName carries the same URI."""
    return f"urn:aigc-offload:device:{device_id}"


def client_application_uri(name: str) -> str:
    """ApplicationUri of an OPC UA client (the gateway's ingress, a bench client, ...)."""
    return f"urn:aigc-offload:client:{name}"


@dataclass(frozen=True)
class CertPair:
    cert: Path  # DER
    key: Path  # PEM, unencrypted (lab use: protect it with file permissions)


class PkiError(Exception):
    """The existing PKI cannot be used as it is (half-present or encrypted CA); nothing was overwritten."""


def _write_key(path: Path, key) -> None:
    write_private_file(path, cert_gen.dump_private_key_as_pem(key))


def _load_key(path: Path):
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except TypeError as exc:  # "Password was not given but private key is encrypted"
        raise PkiError(f"the CA key '{path}' is encrypted, and this tool signs only with an unencrypted "
                       "key (put a decrypted copy there for the enrolment, e.g. made with "
                       "'openssl pkey', and remove it afterwards)") from exc


def make_ca(directory: Path, common_name: str = "aigc-offload lab CA") -> CertPair:
    """Create (or reuse) the CA in ``directory``: ca_cert.der and ca_key.pem."""
    pair = CertPair(directory / "ca_cert.der", directory / "ca_key.pem")
    if pair.cert.is_file() and pair.key.is_file():
        return pair
    if pair.cert.exists() or pair.key.exists():
        present, missing = (pair.cert, pair.key) if pair.cert.exists() else (pair.key, pair.cert)
        raise PkiError(f"the CA in '{directory}' is incomplete ('{present.name}' exists, '{missing.name}' is "
                       "missing), so no new CA is made over it (restore the missing file to enrol more "
                       "devices, or remove the CA files to start a new PKI and re-enrol every device)")
    key = cert_gen.generate_private_key()
    # extended=[] makes cert_gen issue a CA certificate (keyCertSign, cRLSign, basicConstraints CA).
    cert = cert_gen.generate_self_signed_app_certificate(
        key, common_name, SUBJECT, [x509.UniformResourceIdentifier("urn:aigc-offload:ca")], extended=[],
        days=CERT_DAYS * 2)
    _write_key(pair.key, key)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return pair


def issue_certificate(ca: CertPair, directory: Path, common_name: str, application_uri: str, *,
                      server: bool, hosts: list[str], overwrite: bool = False) -> CertPair:
    """Key and CA-signed certificate for one OPC UA application (cert.der, key.pem in directory)."""
    pair = CertPair(directory / "cert.der", directory / "key.pem")
    if pair.cert.is_file() and pair.key.is_file() and not overwrite:
        return pair
    key = cert_gen.generate_private_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    names += [x509.DNSName(h) for h in dict.fromkeys(hosts)]
    usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
    csr = cert_gen.generate_app_certificate_signing_request(key, common_name, SUBJECT, names, extended=usage)
    ca_cert = x509.load_der_x509_certificate(ca.cert.read_bytes())
    cert = cert_gen.sign_certificate_request(csr, ca_cert, _load_key(ca.key), days=CERT_DAYS)
    _write_key(pair.key, key)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return pair


def self_signed_certificate(directory: Path, common_name: str, application_uri: str, *, server: bool,
                            hosts: list[str] | None = None) -> CertPair:
    """A self-signed application certificate (not from the lab CA): what an unenrolled, untrusted
    client presents. Used by the tests and to demonstrate the rejection."""
    hosts = hosts or default_hosts()
    pair = CertPair(directory / "cert.der", directory / "key.pem")
    key = cert_gen.generate_private_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    names += [x509.DNSName(h) for h in dict.fromkeys(hosts)]
    usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = cert_gen.generate_self_signed_app_certificate(key, common_name, SUBJECT, names, extended=usage,
                                                         days=CERT_DAYS)
    _write_key(pair.key, key)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return pair


def default_hosts() -> list[str]:
    return ["localhost", socket.gethostname()]


@dataclass
class LabPki:
    """Paths of a lab PKI made by :func:`make_lab_pki`."""

    root: Path

    @property
    def ca(self) -> CertPair:
        return CertPair(self.root / "ca" / "ca_cert.der", self.root / "ca" / "ca_key.pem")

    @property
    def trust_dir(self) -> Path:
        return self.root / "trusted"

    @property
    def users_file(self) -> Path:
        return self.root / "users.json"

    def device(self, device_id: str) -> CertPair:
        d = self.root / "devices" / device_id
        return CertPair(d / "cert.der", d / "key.pem")

    def client(self, name: str) -> CertPair:
        d = self.root / "clients" / name
        return CertPair(d / "cert.der", d / "key.pem")

    def client_password(self, name: str) -> str:
        return (self.root / "clients" / name / "password").read_text(encoding="utf-8").strip()

    def server_security(self, device_id: str, *, allow_anonymous: bool = False):
        """:class:`~opcua_devices.security.ServerSecurity` of a device of this PKI."""
        from .security import ServerSecurity

        pair = self.device(device_id)
        return ServerSecurity.from_files(pair.cert, pair.key, self.trust_dir, self.users_file,
                                         allow_anonymous=allow_anonymous)

    def client_security(self, name: str = "gateway"):
        """:class:`~opcua_devices.security.ClientSecurity` of a client of this PKI (user = name)."""
        from .security import ClientSecurity

        pair = self.client(name)
        return ClientSecurity(pair.cert, pair.key, self.trust_dir, name, self.client_password(name))


def make_lab_pki(out: str | Path, devices: list[str], clients: list[str], *, hosts: list[str] | None = None,
                 passwords: dict[str, str] | None = None, pbkdf2_iterations: int | None = None) -> LabPki:
    """Create or extend a lab PKI in ``out`` (see the module docstring). ``passwords`` fixes the
    password of some clients (the others get a random one, written to clients/<name>/password)."""
    pki = LabPki(Path(out))
    hosts = hosts or default_hosts()
    for name in [*devices, *clients]:
        if not SAFE_ID_RE.match(name):
            raise ValueError(f"'{name}' is not a valid device or client name (1-64 of [A-Za-z0-9_-])")
    trusted_ca = pki.trust_dir / "ca_cert.der"
    if trusted_ca.exists() and not pki.ca.cert.exists() and not pki.ca.key.exists():
        raise PkiError(f"'{trusted_ca}' exists but the CA it belongs to is not in '{pki.ca.cert.parent}', so no "
                       "new CA is made over it (restore the CA files, or remove the trusted CA certificate to "
                       "start a new PKI and re-enrol every device)")
    ca = make_ca(pki.root / "ca")
    pki.trust_dir.mkdir(parents=True, exist_ok=True)
    (pki.trust_dir / "ca_cert.der").write_bytes(ca.cert.read_bytes())
    for d in devices:
        issue_certificate(ca, pki.root / "devices" / d, d, device_application_uri(d), server=True, hosts=hosts)
    users = read_users_file(pki.users_file) if pki.users_file.is_file() else {}
    passwords = passwords or {}
    for c in clients:
        issue_certificate(ca, pki.root / "clients" / c, c, client_application_uri(c), server=False, hosts=hosts)
        pw_file = pki.root / "clients" / c / "password"
        if c in passwords or not pw_file.is_file() or c not in users:
            password = passwords.get(c) or secrets.token_urlsafe(18)
            write_private_file(pw_file, password + "\n")
            kw = {} if pbkdf2_iterations is None else {"iterations": pbkdf2_iterations}
            users[c] = hash_password(password, **kw)
    write_users_file(pki.users_file, users)
    return pki


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opcua_devices.pki", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="PKI directory (created; an existing CA is kept)")
    parser.add_argument("--devices", nargs="*", default=[], help="device ids to issue server certificates for")
    parser.add_argument("--clients", nargs="*", default=["gateway"], help="client names (user names too)")
    parser.add_argument("--hosts", nargs="*", default=None, help="DNS names for the certificates "
                        "(default: localhost and this host's name)")
    args = parser.parse_args(argv)
    try:
        pki = make_lab_pki(args.out, args.devices, args.clients, hosts=args.hosts)
    except PkiError as exc:
        print(f"error: {exc}.", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"ca": str(pki.ca.cert), "trust_dir": str(pki.trust_dir), "users_file": str(pki.users_file),
                      "devices": {d: str(pki.device(d).cert.parent) for d in args.devices},
                      "clients": {c: str(pki.client(c).cert.parent) for c in args.clients}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
