"""The whole factory on one machine: broker, cloud, edge servers, gateway, OPC UA controllers and
MQTT cameras, for a duration or a number of tasks, with a live progress line, a report and an MCAP
recording.

Everything is real: mosquitto (TLS, password file, per-device ACLs, persistence) started on free
ports in the run directory, a lab PKI for OPC UA (Basic256Sha256 SignAndEncrypt, hashed users),
one asyncua server process per controller, the cameras as paho clients, every ROS node its own
process talking over DDS. The devices ask for tasks with the factory scenario's arrival process
(their plant index's rows of the simulator's draw) and run their own share when the decision
says so. The node graph is ``deployment.node_specs`` of the deployment with the broker and the
device endpoints filled in, the same list ``factory.launch.py`` starts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from .deployment import Deployment, DeploymentError, draw_plant, node_specs
from .runner import Graph, GatewayReadiness, IngressReadiness, die_with_parent

#: how long the main job waits for the OPC UA ingress to reach every controller before its clock starts [s]
CONTROLLERS_WAIT_S = 90.0


def _free_ports(count: int) -> list[int]:
    from mqtt_bridge.broker import free_ports

    return free_ports(count)  # drawn together: sequential draws may repeat a port


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _stop_procs(procs: list[subprocess.Popen], timeout_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    end = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(end - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


class PlantRun:
    """Broker, PKI, OPC UA controller servers and the ROS graph of a deployment, started on enter
    and stopped on exit. ``device_source``: "scenario" (the controllers ask for tasks with the
    arrival process) or "none" (they only take RequestTask calls, e.g. from a HIL driver)."""

    def __init__(self, dep: Deployment, controllers: int, cameras: int, workdir: Path,
                 device_source: str = "scenario", extra_clients: tuple[str, ...] = ()):
        self.dep, self.workdir, self.device_source = dep, workdir, device_source
        self.extra_clients = extra_clients
        for name, count in (("controllers", controllers), ("cameras", cameras)):
            if count < 0:
                raise DeploymentError(f"{name} must be 0 or more, got {count}")
        self.plant = draw_plant(dep)
        self.ctrl = [d for d in self.plant.devices if d.kind == "controller"][:controllers]
        self.cams = [d for d in self.plant.devices if d.kind == "camera"][:cameras]
        self.env = _child_env()
        self.procs: list[subprocess.Popen] = []
        self.broker = None
        self.graph: Graph | None = None
        self.endpoints: list[str] = []
        self.pki: Path | None = None
        self.run_dep = dep

    def __enter__(self) -> "PlantRun":
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        from mqtt_bridge.broker import MosquittoBroker
        from mqtt_bridge.topics import DeviceAddress

        dep, workdir = self.dep, self.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        updates: dict = {}
        if self.cams:  # the broker and the camera accounts
            addrs = [DeviceAddress(dep.mqtt.site, f"line{d.line + 1}", d.device_id, dep.mqtt.enterprise)
                     for d in self.cams]
            self.broker = MosquittoBroker(workdir / "broker", devices=addrs, bridge_users=("bridge",),
                                          enterprise=dep.mqtt.enterprise).start()
            secrets = workdir / "secrets"
            secrets.mkdir(exist_ok=True)
            for user in ["bridge"] + [d.device_id for d in self.cams]:
                f = secrets / f"mqtt_{user}.password"
                f.write_text(self.broker.password(user))
                f.chmod(0o600)
            updates["mqtt"] = dep.mqtt.model_copy(update={
                "enabled": True, "host": "localhost", "port": self.broker.tls_port, "ca_file": str(self.broker.ca_file),
                "username": "bridge", "password_file": str(secrets / "mqtt_bridge.password")})
        if self.ctrl:  # the OPC UA PKI and one server process per controller
            self.pki = workdir / "pki"
            subprocess.run([sys.executable, "-m", "opcua_devices.pki", "--out", str(self.pki), "--devices",
                            *[d.device_id for d in self.ctrl], "--clients", "gateway", *self.extra_clients,
                            "--hosts", "localhost", socket.gethostname()],  # asyncua checks its own host name
                           env=self.env, check=True, capture_output=True, text=True)
            for d, port in zip(self.ctrl, _free_ports(len(self.ctrl))):
                self.endpoints.append(f"opc.tcp://localhost:{port}")
                log = open(workdir / f"device_{d.device_id}.log", "w")  # noqa: SIM115 - the child keeps it
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "opcua_devices.server", "--kind", "controller", "--device-id", d.device_id,
                     "--host", "localhost", "--port", str(port), "--pki", str(self.pki), "--preset", dep.preset,
                     "--source", self.device_source, "--index", str(d.index), "--seed", str(dep.seed),
                     "--cpu-ghz", f"{d.cpu_ghz:.6f}",
                     # no task for a plant whose gateway is not up yet: its deadline would pass while it waits
                     *(["--start-when-subscribed"] if self.device_source == "scenario" else [])],
                    env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=die_with_parent))
            updates["opcua"] = dep.opcua.model_copy(update={"endpoints": list(self.endpoints),
                                                            "pki_dir": str(self.pki)})
        self.run_dep = dep.model_copy(update=updates)
        self.graph = Graph(node_specs(self.run_dep, self.plant), workdir, self.env)
        self.graph.start()

    def start_camera_process(self) -> None:
        """The cameras asking for tasks with the arrival process (``python -m mqtt_bridge.cameras``)."""
        dep, workdir = self.run_dep, self.workdir
        spec = [{"device_id": d.device_id, "site": dep.mqtt.site, "line": f"line{d.line + 1}",
                 "enterprise": dep.mqtt.enterprise, "index": d.index, "cpu_ghz": d.cpu_ghz, "host": "localhost",
                 "port": self.broker.tls_port, "ca_file": str(self.broker.ca_file),
                 "password_file": str(workdir / "secrets" / f"mqtt_{d.device_id}.password")} for d in self.cams]
        (workdir / "cameras.json").write_text(json.dumps(spec, indent=1))
        log = open(workdir / "cameras.log", "w")  # noqa: SIM115 - the child keeps it
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "mqtt_bridge.cameras", "--spec", str(workdir / "cameras.json"),
             "--preset", dep.preset, "--seed", str(dep.seed)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent))

    def stop_devices(self) -> None:
        _stop_procs(self.procs)
        self.procs.clear()

    def __exit__(self, *exc) -> None:
        self.stop_devices()
        if self.graph is not None:
            self.graph.stop()
        if self.broker is not None:
            self.broker.stop()


def run_factory(dep: Deployment, *, duration_s: float | None, max_tasks: int | None, controllers: int, cameras: int,
                workdir: Path, record: Path | None, report_path: Path | None, out=sys.stdout,
                progress: bool = True) -> int:
    t_start = time.time()
    run = PlantRun(dep, controllers, cameras, workdir)
    print(f"factory: {len(run.ctrl)} controllers over OPC UA, {len(run.cams)} cameras over MQTT, "
          f"{len(run.plant.edges)} edge servers, policy {dep.gateway.policy}; run directory {workdir}",
          file=out, flush=True)
    with run:
        rc = _watch(run, duration_s, max_tasks, record, report_path, out, progress)
    print(f"factory: stopped after {time.time() - t_start:.1f} s", file=out, flush=True)
    return rc


def _watch(run: PlantRun, duration_s, max_tasks, record, report_path, out, progress) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from aigc_offload_interfaces.msg import Decision, EdgeServerStatus, TaskRequest, TaskResult
    from diagnostic_msgs.msg import DiagnosticArray

    from .deployment import (DECISION_TOPIC, EXECUTION_RESULT_TOPIC, REQUEST_TOPIC, RESULT_TOPIC, STATUS_TOPIC,
                             task_stream_qos)
    from .factory_report import RunMonitor, format_report
    from .recorder import McapRecorder

    dep, plant, graph, cams, workdir = run.run_dep, run.plant, run.graph, run.cams, run.workdir
    rclpy.init()
    node = rclpy.create_node(f"factory_monitor_{uuid.uuid4().hex[:6]}")
    ex = SingleThreadedExecutor()  # the events executor drops raw (serialized) subscriptions' messages here
    ex.add_node(node)
    monitor = RunMonitor()
    recorder = None
    stop = {"signal": None}
    old = {s: signal.signal(s, lambda signum, _f: stop.__setitem__("signal", signum))
           for s in (signal.SIGINT, signal.SIGTERM)}
    rc = 0
    try:
        # Transient-local: the controllers' first requests cross ROS as soon as the ingress connects,
        # which on a loaded machine can be before discovery has matched this node to the ingress;
        # the publishers keep them for a late joiner (a result for a request never seen was the symptom).
        task_qos = {t: task_stream_qos() for t in (REQUEST_TOPIC, DECISION_TOPIC, RESULT_TOPIC)}
        node.create_subscription(TaskRequest, REQUEST_TOPIC, monitor.on_request, task_qos[REQUEST_TOPIC])
        node.create_subscription(Decision, DECISION_TOPIC, monitor.on_decision, task_qos[DECISION_TOPIC])
        node.create_subscription(TaskResult, RESULT_TOPIC, monitor.on_result, task_qos[RESULT_TOPIC])
        if record is not None:
            recorder = McapRecorder(node, record, {
                REQUEST_TOPIC: TaskRequest, DECISION_TOPIC: Decision, EXECUTION_RESULT_TOPIC: TaskResult,
                RESULT_TOPIC: TaskResult, STATUS_TOPIC: EdgeServerStatus, "/diagnostics": DiagnosticArray}, qos=task_qos)
        ready = GatewayReadiness(node, len(plant.edges))
        ingress = IngressReadiness(node, len(run.ctrl)) if run.ctrl else None
        threading.Thread(target=ex.spin, daemon=True).start()  # after every entity is created
        if not graph.wait_ready(ready, 120.0):
            why = graph.failure_summary() or "the gateway did not report every edge server alive within 120 s"
            print(f"factory: the graph did not come up; logs in {workdir}\n{why}", file=sys.stderr)
            return 1
        # The clock starts once the ingress has connected to every controller (each controller starts
        # its arrival process when the ingress subscribes to it, --start-when-subscribed; on a busy
        # machine the secure sessions take seconds to open).
        if ingress is not None and not ingress.wait(CONTROLLERS_WAIT_S):
            print(f"factory: warning: the OPC UA ingress connected {ingress.connected or '0/' + str(len(run.ctrl))} "
                  f"controllers within {CONTROLLERS_WAIT_S:g} s; starting anyway (it keeps reconnecting)",
                  file=sys.stderr, flush=True)
        # The cameras start once the bridge is up.
        if cams:
            run.start_camera_process()
        print("factory: graph up; devices asking for tasks", file=out, flush=True)
        t0 = time.monotonic()
        last = 0.0
        while stop["signal"] is None:
            now = time.monotonic()
            n, _term, _done = monitor.counts()
            if duration_s is not None and now - t0 >= duration_s:
                break
            if max_tasks is not None and n >= max_tasks:
                break
            failed = [p for p in graph.failed()]
            if failed:
                for p in failed:
                    print(f"factory: node {p.spec.name} exited with {p.returncode}:\n{graph.tail(p.spec.name)}",
                          file=sys.stderr)
                rc = 1
                break
            if progress and now - last >= 1.0:
                print("\r" + monitor.progress_line(), end="", file=out, flush=True)
                last = now
            time.sleep(0.1)
        # Stop the devices (no new requests), let the tasks in flight reach their terminal state.
        run.stop_devices()
        from policies.config import load_preset

        pre = load_preset(dep.preset)
        grace = max(pre.report_deadline_s, pre.image_deadline_s) + dep.gateway.result_grace_s + 3.0
        end = time.monotonic() + grace
        while time.monotonic() < end:
            n, term, _ = monitor.counts()
            if term >= n:
                break
            time.sleep(0.1)
        if progress:
            print("\r" + monitor.progress_line(), file=out, flush=True)
        rep = monitor.report()
        rep["deployment"] = {"preset": dep.preset, "seed": dep.seed, "policy": dep.gateway.policy,
                             "controllers": len(run.ctrl), "cameras": len(cams),
                             "edge_servers": len(plant.edges)}
        if recorder is not None:
            rep["recording"] = {"path": str(record), "messages": dict(recorder.counts)}
        print(format_report(rep), file=out, flush=True)
        if report_path is not None:
            report_path.write_text(json.dumps(rep, indent=1))
            print(f"factory: report written to {report_path}", file=out)
        if record is not None:
            print(f"factory: MCAP recording {record} (open it in Foxglove)", file=out)
        return rc
    finally:
        if recorder is not None:
            recorder.close()
        for s, h in old.items():
            signal.signal(s, h)
        ex.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
