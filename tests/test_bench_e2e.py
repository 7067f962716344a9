"""``aigc-offload bench e2e --json``: a short run through the whole graph (mosquitto, an OPC UA
device server, cloud, edge servers, gateway, bridge and ingress nodes). Checks the report's
shape, that no MQTT request is lost at a low rate and that the floors are positive; the latency
numbers are printed, not asserted (a shared 2-core machine is too noisy for timing asserts)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("aigc_offload_interfaces")
if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
    pytest.skip("mosquitto is not installed", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent


def test_bench_e2e_json_short_run():
    exe = Path(sys.executable).with_name("aigc-offload")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "policies.cli"]
    env = dict(os.environ)
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    proc = subprocess.run([*cmd, "bench", "e2e", "--rate", "50", "--seconds", "2", "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(res, indent=1))
    assert res["rate_per_s"] == 50
    for proto in ("mqtt", "opcua"):
        assert {"p50_ms", "p99_ms", "sent", "answered"} <= set(res[proto]), res[proto]
        assert res[proto]["sent"] == 100
    assert res["mqtt"]["answered"] == res["mqtt"]["sent"], res["mqtt"]
    assert res["opcua"]["answered"] > 0, res["opcua"]
    for proto in ("mqtt", "opcua"):
        assert math.isfinite(res[proto]["p50_ms"]) and res[proto]["p50_ms"] > 0
    assert set(res["floors"]) == {"mqtt_echo", "opcua_call"}
    for floor in res["floors"].values():
        assert floor["p50_ms"] > 0 and floor["p99_ms"] >= floor["p50_ms"], floor
