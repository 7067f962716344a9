"""Create the secrets compose.yaml mounts, in docker/secrets/ (never commit that directory).

    .venv/bin/python docker/make_secrets.py                 # create what is missing
    sudo .venv/bin/python docker/make_secrets.py --chown    # ... and hand the files to the container users

MQTT (mqtt_bridge.broker.write_broker_config, the same generator the tests use):
  mqtt/ca.crt, mqtt/server.crt, mqtt/server.key   CA and broker certificate (SAN: broker, localhost)
  mqtt/passwd                                      hashed by mosquitto_passwd: gateway, cam01, health
  mqtt/acl                                         per-device topics; the bridge account; health: $SYS uptime
  mqtt/<user>.password                             clear-text password of each account (0600)
OPC UA (python -m opcua_devices.pki):
  opcua/...                                        lab CA, plc01 server certificate (SAN: plc01,
                                                   localhost), gateway client certificate, users.json

The CA private keys (mqtt/ca.key, opcua/ca/ca_key.pem) are written too, for enrolling more devices
later; no container mounts them. Compose mounts file secrets as bind mounts with the host's owner
and mode (the uid/gid/mode keys of a secret are ignored for files), so the containers' users must
be able to read them: --chown gives the broker's files to uid 1883 (the eclipse-mosquitto image's
"mosquitto" user) and the others to uid 10001 (the aigc-offload image's "aigc" user), mode 0400/0444.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = Path(__file__).resolve().parent / "secrets"
SITE, LINE = "plant1", "line1"  # the camera's place in the unified namespace (compose.yaml: cam01)
MQTT_DEVICES = ["cam01"]
MQTT_BRIDGES = ["gateway"]
HEALTH_USER = "health"
OPCUA_DEVICES = ["plc01"]
OPCUA_CLIENTS = ["gateway"]
BROKER_UID = 1883
AIGC_UID = 10001


def make_mqtt(out: Path) -> None:
    from mqtt_bridge.broker import _tool, write_broker_config
    from mqtt_bridge.topics import DeviceAddress

    if (out / "passwd").is_file():
        print(f"{out} exists: kept (delete it to regenerate)")
        return
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_broker_config(tmp, tls_port=8883, devices=[DeviceAddress(SITE, LINE, d) for d in MQTT_DEVICES],
                                    bridge_users=MQTT_BRIDGES, hostnames=("broker", "localhost"),
                                    ips=("127.0.0.1",))
        for src, name in ((files.certs.ca_file, "ca.crt"), (files.certs.ca_key, "ca.key"),
                          (files.certs.server_cert, "server.crt"), (files.certs.server_key, "server.key"),
                          (files.password_file, "passwd"), (files.acl_file, "acl")):
            shutil.copyfile(src, out / name)
        accounts = dict(files.accounts)
    # The health-check account: may read one $SYS topic, nothing else.
    health_pw = os.urandom(18).hex()
    subprocess.run([_tool("mosquitto_passwd"), "-b", str(out / "passwd"), HEALTH_USER, health_pw], check=True)
    with open(out / "acl", "a", encoding="utf-8") as f:
        f.write(f"\nuser {HEALTH_USER}\ntopic read $SYS/broker/uptime\n")
    accounts[HEALTH_USER] = health_pw
    for user, pw in accounts.items():
        (out / f"{user}.password").write_text(pw + "\n", encoding="utf-8")
    print(f"wrote {out}: accounts {', '.join(sorted(accounts))}")


def make_opcua(out: Path) -> None:
    subprocess.run([sys.executable, "-m", "opcua_devices.pki", "--out", str(out), "--devices", *OPCUA_DEVICES,
                    "--clients", *OPCUA_CLIENTS, "--hosts", *OPCUA_DEVICES, "gateway", "localhost"],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"wrote {out}")


def hand_over(out: Path) -> None:
    """Owners and modes the containers need (bind-mounted secrets keep them)."""
    for path in out.rglob("*"):
        if path.is_dir():
            os.chmod(path, 0o755)
            continue
        broker = path.parent.name == "mqtt" and path.name in ("server.crt", "server.key", "passwd", "acl",
                                                              f"{HEALTH_USER}.password", "ca.crt")
        private = path.suffix in (".key", ".pem", ".password") or path.name in ("passwd", "password")
        if path.name in ("ca.key", "ca_key.pem"):
            os.chown(path, 0, 0)
            os.chmod(path, 0o400)
            continue
        os.chown(path, BROKER_UID if broker else AIGC_UID, BROKER_UID if broker else AIGC_UID)
        os.chmod(path, 0o400 if private else 0o444)
    # ca.crt is read by the broker and by the clients: world-readable (it is public).
    ca = out / "mqtt" / "ca.crt"
    if ca.exists():
        os.chmod(ca, 0o444)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="docker/make_secrets.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--chown", action="store_true", help="(root) owners/modes for the containers' users")
    args = p.parse_args(argv)
    make_mqtt(args.out / "mqtt")
    make_opcua(args.out / "opcua")
    if args.chown:
        if os.geteuid() != 0:
            p.error("--chown needs root")
        hand_over(args.out)
    else:
        print(f"note: the containers run as uid {BROKER_UID} (broker) and {AIGC_UID} (others); "
              "rerun with sudo ... --chown before `docker compose up`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
