"""mqtt_bridge.cameras: the camera list's shape, and a finite source's last results (real mosquitto)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_mqtt_bridge import CAM1, broker, clients, start_bridge  # noqa: F401 - fixtures

from mqtt_bridge.schemas import Decision, TaskKind, TaskResult, utc_now

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("content, needle", [
    ({"cameras": [{"device_id": "cam1"}]}, "not a JSON object"),
    ([], "not an empty array"),
    (["cam1"], "entry 0 is a JSON string"),
    ([{"device_id": "cam1", "site": "s1"}], "entry 0 (cam1) lacks line, index"),
])
def test_unusable_camera_list_is_refused_in_one_sentence(tmp_path, content, needle):
    spec = tmp_path / "cameras.json"
    spec.write_text(json.dumps(content))
    p = subprocess.run([sys.executable, "-m", "mqtt_bridge.cameras", "--spec", str(spec)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr[-2000:]


def test_camera_with_a_finite_source_waits_for_its_last_results(broker, clients, tmp_path, capsys):  # noqa: F811
    from opcua_devices.tasks import PlannedTask

    from mqtt_bridge.cameras import run_camera

    box, timers = [], []

    def on_request(inc):  # decided at once, done 1 s later
        r = inc.request
        box[0].publish_decision(Decision(task_id=r.task_id, device_id=r.device_id, target="cloud", offload_share=1.0,
                                         model_name=r.model_name, policy="p", decided_at=utc_now()))
        result = TaskResult(task_id=r.task_id, device_id=r.device_id, state="done", executed_on="cloud",
                            latency_s=1.0, output_bits=8, finished_at=utc_now())
        timers.append(threading.Timer(1.0, box[0].publish_result, args=(result,)))
        timers[-1].start()

    box.append(start_bridge(broker, clients, on_request=on_request))
    password = tmp_path / "cam1.password"
    password.write_text(broker.password("cam1"))
    spec = {"device_id": "cam1", "site": CAM1.site, "line": CAM1.line, "index": 0, "cpu_ghz": 2.0,
            "port": broker.tls_port, "ca_file": str(broker.ca_file), "password_file": str(password)}
    task = PlannedTask(at_s=0.0, task_kind=TaskKind.defect_image, model_name="sd-defect-v2", work_units=10,
                       input_bits=1000, output_bits=8, deadline_s=5.0, source=0, episode=0, slot=0)
    try:
        run_camera(spec, [task], threading.Event(), time.monotonic(), 1.0, "factory")
    finally:
        for t in timers:
            t.join(5)
    events = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()]
    assert events.index("result") < events.index("offline"), events
