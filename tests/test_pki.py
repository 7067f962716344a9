"""The lab PKI CLI refuses a half-present or encrypted CA instead of replacing it, and secrets
(keys, passwords, users file) are created owner-only from the start."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from opcua_devices.pki import make_lab_pki

ROOT = Path(__file__).resolve().parents[1]


def _pki_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opcua_devices.pki", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def _assert_one_sentence(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and err.endswith("."), err
    for n in needles:
        assert n in err, err


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def lab(tmp_path):
    return make_lab_pki(tmp_path / "pki", ["cam01"], ["gateway"], pbkdf2_iterations=1_000)


@pytest.mark.parametrize("lost", ["ca_key.pem", "ca_cert.der"])
def test_half_present_ca_is_refused_not_replaced(lab, lost):
    ca_dir = lab.root / "ca"
    (ca_dir / lost).rename(lab.root / f"offline-{lost}")
    kept = next(p for p in (lab.ca.cert, lab.ca.key) if p.exists())
    before = {p: p.read_bytes() for p in (kept, lab.trust_dir / "ca_cert.der")}
    proc = _pki_cli("--out", str(lab.root), "--devices", "cam02")
    _assert_one_sentence(proc, "incomplete", lost)
    assert {p: p.read_bytes() for p in before} == before
    assert not (ca_dir / lost).exists()
    assert not (lab.root / "devices" / "cam02").exists()


def test_trusted_ca_without_the_ca_is_refused(lab):
    trusted = lab.trust_dir / "ca_cert.der"
    before = trusted.read_bytes()
    for p in (lab.ca.cert, lab.ca.key):
        p.unlink()
    proc = _pki_cli("--out", str(lab.root), "--devices", "cam02")
    _assert_one_sentence(proc, str(trusted))
    assert trusted.read_bytes() == before
    assert not lab.ca.cert.exists() and not lab.ca.key.exists()


def test_encrypted_ca_key_is_a_sentence_not_a_traceback(lab):
    key = serialization.load_pem_private_key(lab.ca.key.read_bytes(), password=None)
    lab.ca.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.BestAvailableEncryption(b"offline")))
    before = {p: p.read_bytes() for p in (lab.ca.cert, lab.ca.key, lab.trust_dir / "ca_cert.der")}
    proc = _pki_cli("--out", str(lab.root), "--devices", "cam02")
    _assert_one_sentence(proc, "encrypted", str(lab.ca.key))
    assert {p: p.read_bytes() for p in before} == before
    assert not (lab.root / "devices" / "cam02" / "key.pem").exists()


@pytest.fixture()
def umask0_and_chmod_watch(monkeypatch):
    """umask 0 (so a default-mode file would be world-readable) and an os.chmod that records the mode a
    file had before it was narrowed: a secret must never have had more than 0600."""
    seen: dict[str, int] = {}
    real_chmod = os.chmod

    def watching_chmod(path, mode, *a, **kw):
        if isinstance(path, (str, Path)) and os.path.exists(path):
            seen[str(path)] = _mode(Path(path))
        return real_chmod(path, mode, *a, **kw)

    monkeypatch.setattr(os, "chmod", watching_chmod)
    old = os.umask(0)
    try:
        yield seen
    finally:
        os.umask(old)


def test_write_private_file_is_never_wider_than_0600(tmp_path, umask0_and_chmod_watch):
    from opcua_devices.security import write_private_file

    new = tmp_path / "sub" / "secret"
    write_private_file(new, "s3cret\n")
    assert _mode(new) == 0o600 and new.read_text() == "s3cret\n"
    old = tmp_path / "old"
    old.write_text("public")
    os.chmod(old, 0o644)
    umask0_and_chmod_watch.clear()
    write_private_file(old, b"s3cret")
    assert _mode(old) == 0o600 and old.read_bytes() == b"s3cret"
    assert not any(m & 0o077 for m in umask0_and_chmod_watch.values()), umask0_and_chmod_watch


def test_pki_secrets_are_0600_from_creation(tmp_path, umask0_and_chmod_watch):
    pki = make_lab_pki(tmp_path / "pki", ["cam01"], ["gateway"], pbkdf2_iterations=1_000)
    secrets = [pki.ca.key, pki.device("cam01").key, pki.client("gateway").key,
               pki.root / "clients" / "gateway" / "password", pki.users_file]
    for p in secrets:
        assert _mode(p) == 0o600, (p, oct(_mode(p)))
    exposed = {p: oct(m) for p, m in umask0_and_chmod_watch.items() if m & 0o077}
    assert not exposed, f"secrets existed with a wider mode before chmod: {exposed}"


def test_broker_password_file_is_0600_from_creation(tmp_path, umask0_and_chmod_watch):
    from mqtt_bridge.broker import free_port, require_tools, write_broker_config

    try:
        require_tools()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    files = write_broker_config(tmp_path / "gen", tls_port=free_port(), bridge_users=["bridge"],
                                passwords={"bridge": "plain-text"})
    pw = Path(files.password_file)
    assert _mode(pw) == 0o600
    assert "plain-text" not in pw.read_text()
    assert umask0_and_chmod_watch.get(str(pw), 0o600) & 0o077 == 0, oct(umask0_and_chmod_watch[str(pw)])
