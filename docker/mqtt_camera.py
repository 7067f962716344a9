"""A simulated defect-detection camera on MQTT (the compose service ``cam01``).

    python /opt/aigc/bin/mqtt_camera.py --host broker --ca-file /run/secrets/mqtt_ca.crt \
        --device-id cam01 --password-file /run/secrets/mqtt_cam01_password

Requests come from the factory scenario's own arrival process (``opcua_devices.tasks.scenario_tasks``
for the camera's plant index, as the OPC UA device servers draw theirs), go out with
``mqtt_bridge.client.DeviceClient`` (TLS, password, QoS 1, persistent session, last will), and every
decision, result and error reply is printed as one JSON line. ``--heartbeat`` is touched every few
seconds while connected (the container's health check). SIGTERM stops it cleanly (offline status).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from mqtt_bridge.client import DeviceClient, MqttSettings
from mqtt_bridge.schemas import TaskKind, TaskRequest, utc_now
from mqtt_bridge.topics import DeviceAddress
from opcua_devices.tasks import default_device_index, make_factory_simulator, scenario_tasks


def _print(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}, default=str), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mqtt_camera.py", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="broker")
    p.add_argument("--port", type=int, default=8883)
    p.add_argument("--ca-file", required=True, help="CA of the broker's certificate")
    p.add_argument("--device-id", default="cam01", help="device id = broker user name")
    p.add_argument("--password-file", required=True)
    p.add_argument("--site", default="plant1")
    p.add_argument("--line", default="line1")
    p.add_argument("--enterprise", default="factory")
    p.add_argument("--preset", default="factory")
    p.add_argument("--camera", type=int, default=0, help="camera ordinal in the plant (0 = the first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-scale", type=float, default=1.0, help="arrival time multiplier")
    p.add_argument("--heartbeat", default="/tmp/aigc-camera.alive")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    password = Path(args.password_file).read_text(encoding="utf-8").strip()
    settings = MqttSettings(host=args.host, port=args.port, username=args.device_id, password=password,
                            ca_file=args.ca_file)
    address = DeviceAddress(args.site, args.line, args.device_id, args.enterprise)
    index = default_device_index(make_factory_simulator(args.preset), "camera", args.camera)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    heartbeat = Path(args.heartbeat)

    device = DeviceClient(settings, address)
    device.start()  # raises MqttRefused on bad credentials (the container restarts)
    _print("online", device_id=args.device_id, broker=f"{args.host}:{args.port}", plant_index=index)
    t0 = time.monotonic()
    try:
        for task in scenario_tasks(index, seed=args.seed, preset=args.preset):
            while not stop.is_set():  # wait for the arrival, keep the heartbeat fresh
                if device.connected.is_set():
                    heartbeat.touch()
                delay = t0 + task.at_s * args.time_scale - time.monotonic()
                if delay <= 0:
                    break
                stop.wait(min(delay, 5.0))
            if stop.is_set():
                break
            work = ({"denoising_steps": task.work_units} if task.task_kind == TaskKind.defect_image
                    else {"output_tokens": task.work_units})
            req = TaskRequest(task_id=device.new_task_id(), device_id=args.device_id, task_kind=task.task_kind,
                              model_name=task.model_name, input_bits=task.input_bits,
                              deadline_s=task.deadline_s, created_at=utc_now(), **work)
            handle = device.submit(req)
            _print("request", task_id=req.task_id, model=req.model_name, deadline_s=req.deadline_s)
            for what, fut in (("decision", handle.decision), ("result", handle.result)):
                fut.add_done_callback(lambda f, what=what, tid=req.task_id: _print(
                    what, task_id=tid, **({"error": str(f.exception())} if f.exception()
                                          else json.loads(f.result().to_json()))))
    finally:
        device.stop()
        _print("offline", device_id=args.device_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
