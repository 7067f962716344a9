"""Security of the OPC UA side: hashed passwords, the servers' user manager and certificate
trust, and the clients' security settings.

Policy (the same on every device server):

* one endpoint, ``Basic256Sha256`` / ``SignAndEncrypt``: no unencrypted endpoint exists, so a
  client without a certificate finds no endpoint to connect to;
* the client's application certificate must chain to a certificate in the server's trust
  directory (``CertificateValidator`` with ``TRUSTED_VALIDATION``: validity period, application
  URI, key usage, CLIENT_AUTH, trust, CRL); otherwise the secure channel is refused with
  ``BadCertificateUntrusted``;
* the user authenticates with user name and password (:class:`PasswordUserManager`; passwords are
  stored as salted PBKDF2-SHA256 hashes, never in clear);
* anonymous sessions are refused unless the server is started with the explicit lab opt-in
  ``allow_anonymous=True`` (``--allow-anonymous``).

Clients (the ingress, the bench) validate the server's certificate against their own trust
directory the same way (``PEER_SERVER``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

log = logging.getLogger("opcua_devices.security")

#: PBKDF2-SHA256 iterations of new hashes. OWASP (2023) recommends 600,000; a hash is checked once
#: per session activation, and it runs on the server's event loop, so it must stay well below a
#: second on a 1-3 GHz controller (~0.3 s here at 600k). Stored hashes carry their own count.
PBKDF2_ITERATIONS = 200_000
HASH_SCHEME = "pbkdf2_sha256"


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>`` of a password."""
    if not password:
        raise ValueError("an empty password cannot be stored")
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{HASH_SCHEME}${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a :func:`hash_password` string."""
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != HASH_SCHEME:
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def read_users_file(path: str | Path) -> dict[str, str]:
    """user name -> password hash, from a JSON object file (as written by :func:`write_users_file`)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"users file '{path}' must be a JSON object of user name -> password hash")
    for name, stored in data.items():
        if not stored.startswith(HASH_SCHEME + "$"):
            raise ValueError(f"users file '{path}': the entry of '{name}' is not a {HASH_SCHEME} hash "
                             "(clear-text passwords are refused)")
    return data


def write_private_file(path: str | Path, data: bytes | str) -> None:
    """Write a secret (key, password, hashes) readable by the owner only: the file is created with
    mode 0600 (never with the default mode first), and an existing file is narrowed to 0600
    before anything is written to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
    finally:
        if fd != -1:
            os.close(fd)


def write_users_file(path: str | Path, users: dict[str, str]) -> None:
    write_private_file(path, json.dumps(users, indent=2, sort_keys=True) + "\n")


def _dummy_hash(stored_hashes) -> str:
    """A hash string no password matches, with the iteration count most stored hashes use
    (:data:`PBKDF2_ITERATIONS` without users): checking a password against it costs what checking
    one against a real user's hash costs. Built without running PBKDF2."""
    counts: dict[int, int] = {}
    for stored in stored_hashes:
        try:
            n = int(stored.split("$")[1])
        except (IndexError, ValueError):
            continue
        counts[n] = counts.get(n, 0) + 1
    iterations = max(counts, key=counts.get) if counts else PBKDF2_ITERATIONS
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"{HASH_SCHEME}${iterations}${b64(os.urandom(16))}${b64(os.urandom(32))}"


class PasswordUserManager:
    """asyncua user manager: user name + password checked against stored hashes.

    asyncua calls ``get_user`` on every ActivateSession; returning None refuses the session with
    ``BadUserAccessDenied``. Anonymous sessions reach it with no user name: they are accepted only
    with ``allow_anonymous`` (and the server also stops advertising the anonymous token)."""

    def __init__(self, users: dict[str, str], *, allow_anonymous: bool = False):
        self._users = dict(users)
        self.allow_anonymous = allow_anonymous
        self._dummy_hash = _dummy_hash(self._users.values())

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is None:
            # No X509 user token is advertised, so no user name means an anonymous session
            # (``certificate`` is the channel's application certificate then, not a user's).
            if self.allow_anonymous:
                return User(role=UserRole.User, name="anonymous")
            log.warning("refused a session without user name and password")
            return None
        stored = self._users.get(username)
        # Run the same PBKDF2 (same iteration count as the stored users) for an unknown user, so
        # the answer time does not reveal which names exist.
        if stored is None:
            verify_password(password or "", self._dummy_hash)
            log.warning("refused unknown user '%s'", username)
            return None
        if not verify_password(password or "", stored):
            log.warning("refused user '%s': wrong password", username)
            return None
        return User(role=UserRole.User, name=username)


async def certificate_validator(trust_dir: str | Path, *, peer: str, crl_dir: str | Path | None = None
                                ) -> CertificateValidator:
    """A loaded ``CertificateValidator`` trusting what chains to a certificate in ``trust_dir``.

    ``peer`` is "client" (a server checks its clients) or "server" (a client checks a server)."""
    trust_dir = Path(trust_dir)
    if not trust_dir.is_dir():
        raise FileNotFoundError(f"trust directory '{trust_dir}' does not exist")
    if not any(f.suffix.lower() in (".der", ".pem") for f in trust_dir.iterdir()):
        raise ValueError(f"trust directory '{trust_dir}' holds no certificate (.der or .pem): it would trust nobody")
    store = TrustStore([trust_dir], [Path(crl_dir)] if crl_dir else [])
    await store.load()
    role = CertificateValidatorOptions.PEER_CLIENT if peer == "client" else CertificateValidatorOptions.PEER_SERVER
    return CertificateValidator(CertificateValidatorOptions.TRUSTED_VALIDATION | role, store)


@dataclass
class ServerSecurity:
    """What a device server needs: its certificate and key, whom it trusts, whom it lets in."""

    cert: Path  # server application certificate (DER or PEM), SubjectAltName URI = application URI
    key: Path  # its private key (PEM)
    trust_dir: Path  # directory of trusted (CA) certificates; clients must chain to one of them
    users: dict[str, str]  # user name -> hash_password() string
    allow_anonymous: bool = False  # lab opt-in: anonymous sessions (still over SignAndEncrypt)
    crl_dir: Path | None = None  # optional directory of CRLs

    @classmethod
    def from_files(cls, cert: str | Path, key: str | Path, trust_dir: str | Path, users_file: str | Path | None,
                   *, allow_anonymous: bool = False, crl_dir: str | Path | None = None) -> "ServerSecurity":
        users = read_users_file(users_file) if users_file else {}
        return cls(Path(cert), Path(key), Path(trust_dir), users, allow_anonymous,
                   Path(crl_dir) if crl_dir else None)


async def apply_server_security(server: Any, sec: ServerSecurity) -> None:
    """Configure an ``asyncua.Server`` (before ``start()``) with :class:`ServerSecurity`."""
    await server.load_certificate(str(sec.cert))
    await server.load_private_key(str(sec.key))
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    tokens: list[type] = [ua.UserNameIdentityToken]
    if sec.allow_anonymous:
        tokens.append(ua.AnonymousIdentityToken)
    server.set_identity_tokens(tokens)
    server.iserver.user_manager = PasswordUserManager(sec.users, allow_anonymous=sec.allow_anonymous)
    server.set_certificate_validator(await certificate_validator(sec.trust_dir, peer="client", crl_dir=sec.crl_dir))


@dataclass
class ClientSecurity:
    """What an OPC UA client of the device servers needs (the ingress, the bench)."""

    cert: Path  # client application certificate (DER or PEM)
    key: Path  # its private key (PEM)
    trust_dir: Path | None  # trusted (CA) certificates for checking the servers; None: not checked (lab only)
    username: str | None = None
    password: str | None = None
    application_uri: str | None = None  # default: the certificate's SubjectAltName URI

    def resolved_application_uri(self) -> str:
        if self.application_uri:
            return self.application_uri
        from cryptography import x509

        data = Path(self.cert).read_bytes()
        cert = (x509.load_pem_x509_certificate(data) if data.startswith(b"-----")
                else x509.load_der_x509_certificate(data))
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.UniformResourceIdentifier)
        if not uris:
            raise ValueError(f"certificate '{self.cert}' has no application URI in its SubjectAltName")
        return uris[0]


async def apply_client_security(client: Any, sec: ClientSecurity) -> None:
    """Configure an ``asyncua.Client`` (before ``connect()``): Basic256Sha256 SignAndEncrypt with
    the client certificate, user name and password, and validation of the server certificate."""
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    client.application_uri = sec.resolved_application_uri()
    if sec.username is not None:
        client.set_user(sec.username)
    if sec.password is not None:
        client.set_password(sec.password)
    await client.set_security(SecurityPolicyBasic256Sha256, str(sec.cert), str(sec.key),
                              mode=ua.MessageSecurityMode.SignAndEncrypt)
    if sec.trust_dir is not None:
        client.certificate_validator = await certificate_validator(sec.trust_dir, peer="server")
