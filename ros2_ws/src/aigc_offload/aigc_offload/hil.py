"""Hardware-in-the-loop: replay a scenario trace through the running stack and compare every task
with the simulator's prediction for the same trace.

1. The trace (``aigc-offload trace --scenario factory``, or drawn here from the preset and seed)
   is played at wall-clock time: the task of slot t is requested at ``start + t * slot_s`` from its
   device. Devices are played by :class:`TracePlayer` on the ROS request topic (no protocol hop),
   which also runs each device's local share on a FIFO queue at the device's CPU (the
   simulator's device model), or by real OPC UA / MQTT devices when the factory job runs them.
2. The gateway, edge servers and cloud decide and execute as deployed.
3. The simulator replays the same trace with the deployment's own decisions (target, share,
   download, read from ``/aigc/decision``) and predicts each task's latency and outcome. The
   deployed links have no fading, so the prediction uses the nominal channel (fading 1).
4. Per task: relative latency error |measured - predicted| / predicted (median, p90) over the
   tasks both call done, and outcome agreement (done / not done) over all decided tasks.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np


@dataclass
class TraceTask:
    row: int
    slot: int
    device_index: int
    device_id: str
    kind: str  # "report" | "image"
    model: str
    units: int
    input_bits: int
    deadline_s: float
    work_cycles: float
    task_id: str = ""


def trace_tasks(sim, workload, plant) -> list[TraceTask]:
    names = [m.name for m in sim.preset.models]
    tk = workload.tasks
    out = []
    for i in range(workload.num_tasks):
        dev = int(tk["source"][i])
        out.append(TraceTask(i, int(tk["slot"][i]), dev, plant.devices[dev].device_id,
                             "report" if int(tk["kind"][i]) == 0 else "image", names[int(tk["model"][i])],
                             int(tk["units"][i]), int(round(float(tk["input_mbit"][i]) * 1e6)),
                             float(tk["deadline_s"][i]), float(tk["work_gcycles"][i]) * 1e9))
    return out


@dataclass
class Measured:
    decision: tuple[int, int, float, bool] | None = None  # (target kind, target index, share, download)
    state: int | None = None
    latency_s: float | None = None
    reason: str = ""
    executed_on: str = ""
    sent_at_s: float = 0.0  # POSIX s: request published
    decided_at_s: float | None = None  # decision seen at the device
    local_done_at_s: float | None = None  # the device finished its share
    terminal_at_s: float | None = None  # terminal result seen at the device


class TracePlayer:
    """Plays the devices of a trace on ROS: requests at their slot times, local shares executed on
    per-device FIFO queues at the device's CPU, execution reports to the gateway."""

    def __init__(self, node, plant, device_cpu_ghz: np.ndarray, run_id: str | None = None):
        from aigc_offload_interfaces.msg import Decision, TaskRequest, TaskResult

        from .deployment import DECISION_TOPIC, EXECUTION_RESULT_TOPIC, REQUEST_TOPIC, RESULT_TOPIC, task_stream_qos

        self.node, self.plant = node, plant
        self.cpu_hz = np.asarray(device_cpu_ghz, dtype=float) * 1e9
        self.run_id = run_id or uuid.uuid4().hex[:6]
        self.tasks: dict[str, TraceTask] = {}
        self.measured: dict[str, Measured] = {}
        self.lock = threading.Lock()
        self.req_pub = node.create_publisher(TaskRequest, REQUEST_TOPIC, task_stream_qos())
        self.exec_pub = node.create_publisher(TaskResult, EXECUTION_RESULT_TOPIC, 1000)
        node.create_subscription(Decision, DECISION_TOPIC, self._on_decision, 1000)
        node.create_subscription(TaskResult, RESULT_TOPIC, self._on_result, 1000)
        self.queues: dict[int, queue.Queue] = {}
        self.workers: list[threading.Thread] = []
        self.stop_event = threading.Event()

    # device side -------------------------------------------------------------------------------
    def _device_worker(self, dev: int, q: queue.Queue) -> None:
        from aigc_offload_interfaces.msg import TaskResult

        from .messages import result_msg

        while not self.stop_event.is_set():
            try:
                task, share, part = q.get(timeout=0.2)
            except queue.Empty:
                continue
            compute_s = (1.0 - share) * task.work_cycles / self.cpu_hz[dev]  # MATO eq. 3 local part
            self.stop_event.wait(compute_s)
            with self.lock:
                self.measured[task.task_id].local_done_at_s = time.time()
            self.exec_pub.publish(result_msg(task.task_id, task.device_id, "hil", TaskResult.DONE, part=part,
                                             executed_on="local", compute_s=compute_s))

    def _on_decision(self, msg) -> None:
        from aigc_offload_interfaces.msg import Decision, TaskResult

        with self.lock:
            task = self.tasks.get(msg.task_id)
            if task is None:
                return
            self.measured[msg.task_id].decision = (int(msg.target_kind), int(msg.target_index),
                                                   float(msg.offload_share), bool(msg.download_model))
            self.measured[msg.task_id].decided_at_s = time.time()
        share = float(msg.offload_share) if msg.target_kind != Decision.TARGET_LOCAL else 0.0
        if share < 1.0:
            part = TaskResult.PART_WHOLE if share == 0.0 else TaskResult.PART_LOCAL
            self.queues[task.device_index].put((task, share, part))

    def _on_result(self, msg) -> None:
        with self.lock:
            m = self.measured.get(msg.task_id)
            if m is not None and m.state is None:
                m.state, m.latency_s, m.reason, m.executed_on = (int(msg.state), float(msg.latency_s), msg.reason,
                                                                 msg.executed_on)
                m.terminal_at_s = time.time()

    # playing -----------------------------------------------------------------------------------
    def play(self, tasks: list[TraceTask], slot_s: float, settle_s: float, progress=None) -> float:
        """Send every task at its slot time; wait until all are terminal or ``settle_s`` after the
        last send. Returns the start time."""
        from aigc_offload_interfaces.msg import TaskRequest

        from .messages import to_time

        for dev in {t.device_index for t in tasks}:
            q: queue.Queue = queue.Queue()
            self.queues[dev] = q
            w = threading.Thread(target=self._device_worker, args=(dev, q), daemon=True)
            w.start()
            self.workers.append(w)
        start = time.time() + 0.5
        for t in sorted(tasks, key=lambda t: (t.slot, t.row)):
            t.task_id = f"hil-{self.run_id}-{t.row}"
            with self.lock:
                self.tasks[t.task_id] = t
                self.measured[t.task_id] = Measured()
            at = start + t.slot * slot_s
            while (dt := at - time.time()) > 0:
                time.sleep(min(dt, 0.05))
            report = t.kind == "report"
            self.req_pub.publish(TaskRequest(
                task_id=t.task_id, device_id=t.device_id, origin="hil",
                device_kind=TaskRequest.DEVICE_CONTROLLER if report else TaskRequest.DEVICE_CAMERA,
                task_kind=TaskRequest.TASK_REPORT if report else TaskRequest.TASK_DEFECT_IMAGE, model_name=t.model,
                input_bits=t.input_bits, output_tokens=t.units if report else 0,
                denoising_steps=0 if report else t.units, deadline_s=t.deadline_s, created_at=to_time(at)))
            self.measured[t.task_id].sent_at_s = time.time()
            if progress is not None:
                progress()
        end = time.time() + settle_s
        while time.time() < end:
            with self.lock:
                if all(m.state is not None for m in self.measured.values()):
                    break
            time.sleep(0.05)
        self.stop_event.set()
        return start


def predict(sim, workload, decisions: dict[int, tuple[int, int, float, bool]]) -> dict[int, dict]:
    """The simulator's outcome of each trace row under the deployment's decisions (nominal channel)."""
    from policies.scenarios.base import OffloadDecision
    from policies.workload import Workload

    params = dict(workload.params)
    params["fading"] = np.ones_like(np.asarray(params["fading"], dtype=float))  # the deployed links do not fade
    wl = Workload(workload.scenario, workload.episode, params, workload.tasks)
    sim.reset(wl)
    N = sim.N
    while not sim.done:
        rows = sim.rows()
        tgt = np.zeros(rows.size, dtype=np.int64)
        share = np.zeros(rows.size)
        dl = np.zeros(rows.size, dtype=bool)
        for k, r in enumerate(rows):
            d = decisions.get(int(r))
            if d is None:
                continue
            kind, idx, sh, down = d
            tgt[k] = 0 if kind == 0 else (idx + 1 if kind == 1 else N + 1)
            share[k], dl[k] = (0.0 if kind == 0 else sh), down
        sim.step(OffloadDecision(target=tgt, share=share, download=dl))
    return {int(r): {"done": bool(sim.status[r] == 1), "latency_s": float(sim.latency[r]),
                     "reason": int(sim.reason[r])} for r in range(workload.num_tasks)}


def compare(tasks: list[TraceTask], measured: dict[str, Measured], predicted: dict[int, dict]) -> dict:
    """Per-task error of the deployment against the simulator's prediction."""
    rel, agree, n = [], 0, 0
    per_target: dict[str, list[float]] = {}
    undecided = 0
    for t in tasks:
        m = measured.get(t.task_id)
        if m is None or m.decision is None or m.state is None:
            undecided += 1
            continue
        p = predicted[t.row]
        n += 1
        done_meas = m.state == 0
        agree += int(done_meas == p["done"])
        if done_meas and p["done"] and p["latency_s"] > 0:
            e = abs(m.latency_s - p["latency_s"]) / p["latency_s"]
            rel.append(e)
            per_target.setdefault(["local", "edge", "cloud"][m.decision[0]], []).append(e)
    r = np.asarray(rel)
    return {
        "tasks": len(tasks), "compared": n, "without_decision_or_result": undecided,
        "outcome_agreement": agree / n if n else 0.0,
        "latency_rel_error_median": float(np.median(r)) if r.size else None,
        "latency_rel_error_p90": float(np.percentile(r, 90)) if r.size else None,
        "latency_rel_error_median_by_target": {k: float(np.median(v)) for k, v in per_target.items()},
        "both_done": int(r.size),
    }


@dataclass
class HilResult:
    comparison: dict
    measured_done_rate: float
    predicted_done_rate: float
    details: list[dict] = field(default_factory=list)


def _check_full_edge_tier(running: int, preset: int) -> None:
    from .deployment import DeploymentError

    if running != preset:
        raise DeploymentError(f"HIL compares against the preset's full edge tier: run it with every edge server "
                              f"(num_edge_servers {running} of the preset's {preset})")


def run_hil(dep, *, slots: int, seed: int, workdir: str, settle_s: float = 5.0, out=None) -> HilResult:
    """Start the graph, play ``slots`` slots of episode 0 of ``seed``, compare with the simulator."""
    import os
    import sys

    import rclpy

    from policies.scenarios import make_simulator
    from policies.workload import episode_rng

    from .deployment import draw_plant, node_specs
    from .runner import Graph, GatewayReadiness

    out = out or sys.stdout
    plant = draw_plant(dep)
    sim = make_simulator(dep.preset, expect="factory")
    _check_full_edge_tier(len(plant.edges), sim.N)
    wl = sim.generate_workload(episode_rng(seed, 0, 0), 0)
    keep = wl.tasks["slot"] < slots
    from policies.workload import Workload

    wl = Workload(wl.scenario, 0, wl.params, {k: np.asarray(v)[keep] for k, v in wl.tasks.items()})
    tasks = trace_tasks(sim, wl, plant)
    env = dict(os.environ)
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    from pathlib import Path

    Path(workdir).mkdir(parents=True, exist_ok=True)
    graph = Graph(node_specs(dep, plant), Path(workdir), env)
    graph.start()
    rclpy.init()
    node = rclpy.create_node(f"hil_{uuid.uuid4().hex[:6]}")
    from rclpy.executors import SingleThreadedExecutor

    # Not the events executor: it can hang when the node is torn down from this thread while it spins.
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    try:
        player = TracePlayer(node, plant, np.asarray(wl.params["device_cpu_ghz"]))
        ready = GatewayReadiness(node, len(plant.edges))
        threading.Thread(target=ex.spin, daemon=True).start()  # after every entity is created
        if not graph.wait_ready(ready, 180.0):
            print(graph.failure_summary() or graph.tail("edge_gateway"), file=out, flush=True)
            raise RuntimeError("the gateway did not see every edge server within 180 s")
        time.sleep(1.0)
        print(f"hil: playing {len(tasks)} tasks of {slots} slots ({slots * sim.preset.slot_s:g} s)", file=out, flush=True)
        start = player.play(tasks, sim.preset.slot_s, settle_s=max(sim.preset.report_deadline_s, sim.preset.image_deadline_s)
                    + settle_s)
        measured = dict(player.measured)
    finally:
        ex.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
        graph.stop()
    decisions = {t.row: measured[t.task_id].decision for t in tasks
                 if t.task_id in measured and measured[t.task_id].decision is not None}
    pred = predict(make_simulator(dep.preset, expect="factory"), wl, decisions)
    comp = compare(tasks, measured, pred)
    done_meas = [measured[t.task_id].state == 0 for t in tasks if measured.get(t.task_id) and
                 measured[t.task_id].state is not None]
    details = [{"row": t.row, "task_id": t.task_id, "decision": measured[t.task_id].decision,
                "measured_state": measured[t.task_id].state, "measured_latency_s": measured[t.task_id].latency_s,
                "predicted_done": pred[t.row]["done"], "predicted_latency_s": pred[t.row]["latency_s"],
                "reason": measured[t.task_id].reason, "slot_at_s": start + t.slot * sim.preset.slot_s,
                "sent_at_s": measured[t.task_id].sent_at_s, "decided_at_s": measured[t.task_id].decided_at_s,
                "local_done_at_s": measured[t.task_id].local_done_at_s,
                "terminal_at_s": measured[t.task_id].terminal_at_s} for t in tasks if t.task_id in measured]
    return HilResult(comp, float(np.mean(done_meas)) if done_meas else 0.0,
                     float(np.mean([pred[t.row]["done"] for t in tasks if t.row in decisions])) if decisions else 0.0,
                     details)


# --------------------------------------------------------------------------------------------------
# Through the real devices and protocols
# --------------------------------------------------------------------------------------------------
def run_hil_devices(dep, *, slots: int, seed: int, controllers: int, cameras: int, workdir: str,
                    settle_s: float = 5.0, out=None) -> HilResult:
    """The trace's tasks of the first ``controllers`` controllers and ``cameras`` cameras, asked for
    through the devices themselves: a PLC program calls each controller's ``RequestTask`` over
    OPC UA (Basic256Sha256 SignAndEncrypt), each camera publishes its request over MQTT (TLS,
    QoS 1); the devices run their own shares with their executors and report them through the
    ingress and the bridge. The simulator replays the same tasks (only those devices' rows) with
    the deployment's decisions."""
    import asyncio
    import sys
    from pathlib import Path

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from aigc_offload_interfaces.msg import Decision, TaskResult
    from mqtt_bridge.client import DeviceClient
    from mqtt_bridge.schemas import TaskKind
    from mqtt_bridge.schemas import TaskRequest as MqttTaskRequest
    from mqtt_bridge.schemas import utc_now
    from mqtt_bridge.topics import DeviceAddress
    from policies.scenarios import make_simulator
    from policies.workload import Workload, episode_rng

    from .deployment import DECISION_TOPIC, RESULT_TOPIC
    from .factory_job import PlantRun
    from .runner import GatewayReadiness, IngressReadiness

    out = out or sys.stdout
    run = PlantRun(dep, controllers, cameras, Path(workdir), device_source="none", extra_clients=("plc",))
    sim = make_simulator(dep.preset, expect="factory")
    _check_full_edge_tier(len(run.plant.edges), sim.N)
    chosen = {d.index for d in run.ctrl + run.cams}
    wl = sim.generate_workload(episode_rng(seed, 0, 0), 0)
    keep = (np.asarray(wl.tasks["slot"]) < slots) & np.isin(np.asarray(wl.tasks["source"]), list(chosen))
    wl = Workload(wl.scenario, 0, wl.params, {k: np.asarray(v)[keep] for k, v in wl.tasks.items()})
    tasks = trace_tasks(sim, wl, run.plant)
    measured: dict[str, Measured] = {}
    lock = threading.Lock()

    # Every decision and result is kept by task id: a controller's task id is known only when its
    # RequestTask call returns, which can be after its decision crossed ROS.
    def on_decision(msg) -> None:
        with lock:
            m = measured.setdefault(msg.task_id, Measured())
            if m.decision is None:
                m.decision = (int(msg.target_kind), int(msg.target_index), float(msg.offload_share),
                              bool(msg.download_model))
                m.decided_at_s = time.time()

    def on_result(msg) -> None:
        with lock:
            m = measured.setdefault(msg.task_id, Measured())
            if m.state is None:
                m.state, m.latency_s, m.reason, m.executed_on = (int(msg.state), float(msg.latency_s), msg.reason,
                                                                 msg.executed_on)
                m.terminal_at_s = time.time()

    with run:
        rclpy.init()
        node = rclpy.create_node(f"hil_devices_{uuid.uuid4().hex[:6]}")
        ex = SingleThreadedExecutor()
        ex.add_node(node)
        node.create_subscription(Decision, DECISION_TOPIC, on_decision, 1000)
        node.create_subscription(TaskResult, RESULT_TOPIC, on_result, 1000)
        ready = GatewayReadiness(node, len(run.plant.edges))
        ingress = IngressReadiness(node, len(run.ctrl)) if run.ctrl else None
        threading.Thread(target=ex.spin, daemon=True).start()
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        cams: dict[str, DeviceClient] = {}
        opc: dict[str, tuple] = {}
        try:
            if not run.graph.wait_ready(ready, 180.0):
                print(run.graph.failure_summary() or run.graph.tail("edge_gateway"), file=out, flush=True)
                raise RuntimeError("the gateway did not see every edge server within 180 s")
            # The PLC program's secure sessions to the controllers, the cameras' MQTT sessions.
            if run.ctrl:
                opc = asyncio.run_coroutine_threadsafe(_plc_sessions(run), loop).result(120.0)
            for d in run.cams:
                c = DeviceClient(run.broker.settings(d.device_id),
                                 DeviceAddress(run.run_dep.mqtt.site, f"line{d.line + 1}", d.device_id,
                                               run.run_dep.mqtt.enterprise),
                                 executor=True, device_cpu_ghz=d.cpu_ghz, preset=dep.preset)
                c.start()
                cams[d.device_id] = c
            if ingress is not None and not ingress.wait(180.0):
                print(run.graph.tail("opcua_ingress"), file=out, flush=True)
                raise RuntimeError(f"the OPC UA ingress reached {ingress.connected or 'none'} of the controllers "
                                   "within 180 s")
            time.sleep(2.0)  # let the bridge finish (re)subscribing
            print(f"hil: playing {len(tasks)} tasks of {slots} slots through {len(run.ctrl)} OPC UA controllers "
                  f"and {len(run.cams)} MQTT cameras", file=out, flush=True)
            start = time.time() + 0.5
            futures = []
            for t in sorted(tasks, key=lambda t: (t.slot, t.row)):
                at = start + t.slot * sim.preset.slot_s
                while (dt := at - time.time()) > 0:
                    time.sleep(min(dt, 0.02))
                if t.device_id in opc:
                    fut = asyncio.run_coroutine_threadsafe(_plc_request(opc[t.device_id], t), loop)
                    futures.append((t, fut))
                else:
                    cam = cams[t.device_id]
                    t.task_id = cam.new_task_id()
                    work = ({"denoising_steps": t.units} if t.kind == "image" else {"output_tokens": t.units})
                    cam.submit(MqttTaskRequest(
                        task_id=t.task_id, device_id=t.device_id,
                        task_kind=TaskKind.defect_image if t.kind == "image" else TaskKind.report,
                        model_name=t.model, input_bits=t.input_bits, deadline_s=t.deadline_s, created_at=utc_now(),
                        **work))
            for t, fut in futures:  # the controllers return the task id they assigned
                t.task_id = fut.result(30.0)
            end = time.time() + max(sim.preset.report_deadline_s, sim.preset.image_deadline_s) + settle_s
            while time.time() < end:
                with lock:
                    if all(measured.get(t.task_id) and measured[t.task_id].state is not None for t in tasks):
                        break
                time.sleep(0.05)
            with lock:
                meas = dict(measured)
        finally:
            for c in cams.values():
                c.stop()
            if opc:
                asyncio.run_coroutine_threadsafe(_plc_close(opc), loop).result(20.0)
            loop.call_soon_threadsafe(loop.stop)
            ex.shutdown(timeout_sec=2.0)
            node.destroy_node()
            rclpy.try_shutdown()
    decisions = {t.row: meas[t.task_id].decision for t in tasks
                 if t.task_id in meas and meas[t.task_id].decision is not None}
    pred = predict(make_simulator(dep.preset, expect="factory"), wl, decisions)
    comp = compare(tasks, meas, pred)
    comp["via"] = {"opcua_controllers": len(run.ctrl), "mqtt_cameras": len(run.cams)}
    done_meas = [meas[t.task_id].state == 0 for t in tasks if t.task_id in meas and meas[t.task_id].state is not None]
    details = [{"row": t.row, "task_id": t.task_id, "device_id": t.device_id, "decision": meas[t.task_id].decision,
                "measured_state": meas[t.task_id].state, "measured_latency_s": meas[t.task_id].latency_s,
                "predicted_done": pred[t.row]["done"], "predicted_latency_s": pred[t.row]["latency_s"],
                "reason": meas[t.task_id].reason} for t in tasks if t.task_id in meas]
    return HilResult(comp, float(np.mean(done_meas)) if done_meas else 0.0,
                     float(np.mean([pred[t.row]["done"] for t in tasks if t.row in decisions])) if decisions else 0.0,
                     details)


async def _plc_sessions(run) -> dict:
    """One secure session per controller for the PLC program (PKI client 'plc')."""
    import asyncio

    from asyncua import Client

    from opcua_devices import model as m
    from opcua_devices.pki import LabPki
    from opcua_devices.security import apply_client_security

    pki = LabPki(run.pki)
    out = {}
    for d, url in zip(run.ctrl, run.endpoints):
        deadline = time.monotonic() + 90.0
        while True:  # the server process may still be starting; a new Client per attempt (asyncua #1660)
            client = Client(f"{url}/aigc/", timeout=10)
            client.session_timeout = 60_000  # within what the device servers grant (asyncua: at most 600 s)
            try:
                await apply_client_security(client, pki.client_security("plc"))  # fetches the endpoints too
                await client.connect()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"controller {d.device_id} at {url} did not accept a session within 90 s")
                await asyncio.sleep(0.5)
        ns = await client.get_namespace_index(m.NAMESPACE_URI)
        obj = await client.nodes.objects.get_child(f"{ns}:{d.device_id}")
        meth = await obj.get_child(f"{ns}:RequestTask")
        out[d.device_id] = (client, obj.nodeid, meth.nodeid)
    return out


async def _plc_request(session, t: TraceTask) -> str:
    from opcua_devices.ingress import request_task_call

    client, obj_id, meth_id = session
    call = request_task_call(obj_id, meth_id, "report" if t.kind == "report" else "defect_image", t.model,
                             t.input_bits, t.units, t.deadline_s)
    res = (await client.uaclient.call([call]))[0]
    if not res.StatusCode.is_good():
        raise RuntimeError(f"RequestTask on {t.device_id} failed: {res.StatusCode}")
    return str(res.OutputArguments[0].Value)


async def _plc_close(sessions: dict) -> None:
    for client, _o, _m in sessions.values():
        try:
            await client.disconnect()
        except Exception:  # noqa: BLE001 - the server may already be gone
            pass
