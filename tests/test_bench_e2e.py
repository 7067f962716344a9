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
    proc = subprocess.run([*cmd, "bench", "e2e", "--rate", "50", "--seconds", "2", "--json",
                           "--set", "execution_nice=3", "--opcua-request", "program"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(res, indent=1))
    assert res["rate_per_s"] == 50
    assert res["setup"]["execution_nice"] == 3  # --set reached the deployment the graph ran with
    assert res["setup"]["opcua_request"] == "program"  # the controller's own program raised the requests
    for proto in ("mqtt", "opcua"):
        assert {"p50_ms", "p99_ms", "sent", "answered"} <= set(res[proto]), res[proto]
        assert res[proto]["sent"] == 100
    assert res["mqtt"]["answered"] == res["mqtt"]["sent"], res["mqtt"]
    assert res["opcua"]["answered"] > 0, res["opcua"]
    for proto in ("mqtt", "opcua"):
        assert math.isfinite(res[proto]["p50_ms"]) and res[proto]["p50_ms"] > 0
        # where the time went: both halves measured, each inside the whole request's range
        split = res[proto]["split"]
        for part in ("to_gateway_decision", "decision_to_device"):
            assert 0 < split[part]["p50_ms"] <= res[proto]["max_ms"], (proto, split)
    assert set(res["floors"]) == {"mqtt_echo", "opcua_call"}
    for floor in res["floors"].values():
        assert floor["p50_ms"] > 0 and floor["p99_ms"] >= floor["p50_ms"], floor


def test_bench_e2e_protocols_option_is_checked_and_a_skipped_phase_is_null():
    from aigc_offload.bench_e2e import cli, format_table, run

    assert cli(500, 10, False, "modbus") == 2  # refused before anything starts
    assert cli(500, 10, False, ",") == 2
    with pytest.raises(ValueError, match="subset of mqtt, opcua"):
        run(10, 1, protocols=("mqtt", "profinet"))
    with pytest.raises(ValueError, match="opcua_request must be one of program, method"):
        run(10, 1, opcua_request="modbus")
    floor = {"p50_ms": 0.4, "p99_ms": 1.0, "n": 300}
    phase = {"p50_ms": 2.0, "p99_ms": 8.0, "sent": 10, "answered": 10, "achieved_rate_per_s": 500.0}
    table = format_table({"rate_per_s": 500, "seconds": 10, "mqtt": phase, "opcua": None,
                          "floors": {"mqtt_echo": floor, "opcua_call": floor}, "load_average_1m": [0.1],
                          "setup": {"policy": "p", "edge_servers": 4, "cpus": 2, "execution_nice": 10}})
    assert "not measured (--protocols)" in table and "edge servers at nice 10" in table
    assert "MQTT p50 <= 3 ms ok, p99 <= 10 ms ok, none lost ok" in table and "OPC UA p50 within" not in table


def test_bench_e2e_refuses_an_unknown_deployment_field_with_a_sentence():
    exe = Path(sys.executable).with_name("aigc-offload")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "policies.cli"]
    proc = subprocess.run([*cmd, "bench", "e2e", "--set", "execution_niceness=3"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "execution_niceness" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
