"""Simulated defect-detection cameras on MQTT, several in one process.

    python -m mqtt_bridge.cameras --spec cameras.json [--source scenario|trace] [--trace FILE]

``cameras.json`` lists the cameras: ``[{"device_id": "cam01", "site": "plant1", "line": "line1",
"index": 16, "cpu_ghz": 4.1, "host": "localhost", "port": 8883, "ca_file": "...",
"password_file": "..."}]``. Each camera is a :class:`~mqtt_bridge.client.DeviceClient` (TLS,
password, QoS 1, persistent session, last will) that asks for tasks with the factory scenario's
arrival process for its plant index (``opcua_devices.tasks.scenario_tasks``, the same draw the OPC
UA controllers use) or replays its rows of a trace, runs its share locally when the decision says
so (the cost-model executor at its CPU), and prints one JSON line per event (request, decision,
result, error). SIGINT/SIGTERM stop every camera cleanly (offline status). When a finite source
(a trace) runs out, a camera waits for its last tasks' results (at most their deadline plus
``RESULT_GRACE_S``) before it stops.
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

from .client import DeviceClient, MqttSettings
from .schemas import TaskKind, TaskRequest, utc_now
from .topics import DeviceAddress

_print_lock = threading.Lock()

REQUIRED_KEYS = ("device_id", "site", "line", "index", "cpu_ghz", "port", "ca_file", "password_file")
RESULT_GRACE_S = 10.0  # past a task's deadline, how long a camera whose source ran out waits for its result
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def spec_problem(specs) -> str | None:
    """Why a parsed camera list cannot be used, as one sentence; None if it can."""
    if not isinstance(specs, list) or not specs:
        what = "an empty array" if isinstance(specs, list) else f"a JSON {_JSON_TYPES.get(type(specs), '?')}"
        return f"it must be a non-empty JSON array of camera objects, not {what}"
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            return f"entry {i} is a JSON {_JSON_TYPES.get(type(spec), '?')}, not a camera object"
        missing = [k for k in REQUIRED_KEYS if k not in spec]
        if missing:
            return f"entry {i} ({spec.get('device_id', 'no device_id')}) lacks {', '.join(missing)}"
    return None


def _emit(event: str, **fields) -> None:
    with _print_lock:
        print(json.dumps({"event": event, **fields}, default=str), flush=True)


def run_camera(spec: dict, tasks, stop: threading.Event, t0: float, time_scale: float, preset: str) -> None:
    password = Path(spec["password_file"]).read_text(encoding="utf-8").strip()
    settings = MqttSettings(host=spec.get("host", "localhost"), port=int(spec["port"]), username=spec["device_id"],
                            password=password, ca_file=spec["ca_file"])
    address = DeviceAddress(spec["site"], spec["line"], spec["device_id"], spec.get("enterprise", "factory"))
    device = DeviceClient(settings, address, executor=True, device_cpu_ghz=float(spec["cpu_ghz"]), preset=preset)
    device.start()
    _emit("online", device_id=spec["device_id"])
    pending = []  # (handle, monotonic time by which its result should have come)
    try:
        for task in tasks:
            delay = t0 + task.at_s * time_scale - time.monotonic()
            if delay > 0 and stop.wait(delay):
                break
            if stop.is_set():
                break
            work = ({"denoising_steps": task.work_units} if task.task_kind == TaskKind.defect_image
                    else {"output_tokens": task.work_units})
            req = TaskRequest(task_id=device.new_task_id(), device_id=spec["device_id"], task_kind=task.task_kind,
                              model_name=task.model_name, input_bits=task.input_bits, deadline_s=task.deadline_s,
                              created_at=utc_now(), **work)
            handle = device.submit(req)
            _emit("request", device_id=spec["device_id"], task_id=req.task_id, model=req.model_name)
            for what, fut in (("decision", handle.decision), ("result", handle.result)):
                # a payload's own task_id would collide with the keyword (TypeError: no event printed)
                fut.add_done_callback(lambda f, what=what, tid=req.task_id: _emit(
                    what, **{"task_id": tid, **({"error": str(f.exception())} if f.exception()
                                                else json.loads(f.result().to_json()))}))
            pending = [p for p in pending if not p[0].result.done()]
            pending.append((handle, time.monotonic() + req.deadline_s + RESULT_GRACE_S))
        else:  # the source ran out (a trace): stopping now would drop the last tasks' results
            for handle, by in pending:
                while not handle.result.done() and time.monotonic() < by and not stop.is_set():
                    stop.wait(0.05)
                if not handle.result.done():
                    _emit("no_result", device_id=spec["device_id"], task_id=handle.task_id,
                          reason="stopped" if stop.is_set() else "no result by the deadline plus "
                                                                 f"{RESULT_GRACE_S:g} s")
    finally:
        device.stop()
        _emit("offline", device_id=spec["device_id"])


def main(argv: list[str] | None = None) -> int:
    from opcua_devices.tasks import scenario_tasks, trace_tasks

    p = argparse.ArgumentParser(prog="python -m mqtt_bridge.cameras", description=__doc__.split("\n")[0])
    p.add_argument("--spec", required=True, help="JSON file listing the cameras")
    p.add_argument("--preset", default="factory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", choices=("scenario", "trace"), default="scenario")
    p.add_argument("--trace", help="trace file for --source trace")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiplies the arrival times")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        specs = json.loads(Path(args.spec).read_text())
    except (OSError, ValueError) as exc:
        print(f"cameras: cannot read the camera list {args.spec}: {exc}", file=sys.stderr)
        return 2
    problem = spec_problem(specs)
    if problem is not None:
        print(f"cameras: unusable camera list {args.spec}: {problem}.", file=sys.stderr)
        return 2
    if args.source == "trace" and not args.trace:
        print("cameras: --source trace needs --trace FILE", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    t0 = time.monotonic() + 0.5
    threads, errors = [], []

    def guarded(spec):
        try:
            tasks = (scenario_tasks(int(spec["index"]), seed=args.seed, preset=args.preset) if args.source == "scenario"
                     else trace_tasks(args.trace, int(spec["index"]), preset=args.preset))
            run_camera(spec, tasks, stop, t0, args.time_scale, args.preset)
        except Exception as exc:  # noqa: BLE001 - one camera's failure is reported, the others go on
            errors.append(f"{spec.get('device_id')}: {exc}")
            _emit("failed", device_id=spec.get("device_id"), error=str(exc))

    for spec in specs:
        t = threading.Thread(target=guarded, args=(spec,), daemon=True)
        t.start()
        threads.append(t)
    while any(t.is_alive() for t in threads) and not stop.is_set():
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(10)
    if errors:
        print("cameras: " + "; ".join(errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
