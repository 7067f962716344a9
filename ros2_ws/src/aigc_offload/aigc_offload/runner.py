"""``aigc-offload factory``: start the factory node graph here, a process per node.

Where ``ros2 launch aigc_offload factory.launch.py`` is not available (the PyPI ROS 2 wheels ship
no ``launch``), this starts the same nodes with the same parameters: both take the node list from
``deployment.node_specs``. Each node runs as ``python -m aigc_offload.<executable> --ros-args
-r __node:=<name> --params-file <generated>``. SIGINT/SIGTERM stop every node (SIGINT, then
SIGKILL after a timeout); the runner exits non-zero when a node exits on its own with an error.

``--probe N`` sends N task requests from the plant's devices once the gateway reports every edge
server alive, waits for their terminal results, and prints the per-hop latencies (request ->
decision, decision -> result, end to end).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .deployment import Deployment, NodeSpec, draw_plant, node_specs, params_file_text


def die_with_parent() -> None:
    """``preexec_fn`` of every child: the kernel sends it SIGTERM when the process that started it
    dies, even by SIGKILL, so no node outlives its runner (Linux ``PR_SET_PDEATHSIG``)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def start_child(nice: int) -> None:
    """``preexec_fn`` of a node: :func:`die_with_parent`, then ``nice`` for the process and for the
    Linux autogroup its new session got (``start_new_session``). Why both: with autogroups on (the
    default of desktop and server kernels), the scheduler first splits the CPU between sessions, so
    a process's own nice value only ranks it inside its session."""
    die_with_parent()
    if nice:
        os.nice(nice)
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(nice))
        except OSError:  # kernel without autogroups: the process's nice value is what counts
            pass


@dataclass
class NodeProcess:
    spec: NodeSpec
    proc: subprocess.Popen
    log_path: Path
    returncode: int | None = None


@dataclass
class Graph:
    """The running node processes of one deployment."""

    specs: list[NodeSpec]
    workdir: Path
    env: dict[str, str]
    procs: list[NodeProcess] = field(default_factory=list)

    def start(self, stream_logs: bool = False) -> None:
        params = self.workdir / "params.yaml"
        params.write_text(params_file_text(self.specs))
        for spec in self.specs:
            log_path = self.workdir / f"{spec.name}.log"
            out = None if stream_logs else open(log_path, "w")  # noqa: SIM115 - kept open for the child
            proc = subprocess.Popen(
                [sys.executable, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}",
                 "--params-file", str(params)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True,
                preexec_fn=functools.partial(start_child, spec.nice))
            self.procs.append(NodeProcess(spec, proc, log_path))

    def failed(self) -> list[NodeProcess]:
        """Nodes that exited on their own."""
        out = []
        for p in self.procs:
            rc = p.proc.poll()
            if rc is not None and p.returncode is None:
                p.returncode = rc
            if p.returncode is not None:
                out.append(p)
        return out

    def stop(self, timeout_s: float = 10.0) -> dict[str, int]:
        """SIGINT every node, wait, SIGKILL what is left; returns each node's exit code."""
        for p in self.procs:
            if p.proc.poll() is None:
                try:
                    os.killpg(p.proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout_s
        codes = {}
        for p in self.procs:
            try:
                codes[p.spec.name] = p.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(p.proc.pid, signal.SIGKILL)
                codes[p.spec.name] = p.proc.wait()
        return codes

    def wait_ready(self, ready, timeout_s: float) -> bool:
        """``ready.wait(timeout_s)`` (a ``GatewayReadiness``) that gives up at the first node that
        exits: a dead node would otherwise hold the caller for the whole timeout."""
        return ready.wait(timeout_s, abort=lambda: bool(self.failed()))

    def failure_summary(self, lines: int = 6) -> str:
        """One paragraph per node that exited: its name, exit code and the last lines of its log;
        "" while every node runs."""
        return "\n".join(f"{p.spec.name} exited {p.returncode}:\n{self.tail(p.spec.name, lines)}"
                         for p in self.failed())

    def tail(self, name: str, lines: int = 15) -> str:
        for p in self.procs:
            if p.spec.name == name and p.log_path.exists():
                return "\n".join(p.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class GatewayReadiness:
    """Watches the gateway's diagnostics for every edge server alive. Create it before the node's
    executor starts spinning (the events executor must not see entities created from another
    thread while it spins), then ``wait()``."""

    def __init__(self, node, num_edges: int):
        import threading as _th

        from diagnostic_msgs.msg import DiagnosticArray

        self._ready = _th.Event()
        want = f"{num_edges}/{num_edges}"

        def on_diag(msg: DiagnosticArray) -> None:
            for st in msg.status:
                if any(v.key == "edge_servers_alive" and v.value == want for v in st.values):
                    self._ready.set()

        self._sub = node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)

    def wait(self, timeout_s: float, abort=None) -> bool:
        """True once every edge server is alive; False after ``timeout_s`` or as soon as ``abort()``
        (polled twice a second, e.g. "a node of the graph exited") is true."""
        end = time.monotonic() + timeout_s
        while not self._ready.is_set():
            left = end - time.monotonic()
            if left <= 0 or (abort is not None and abort()):
                return False
            self._ready.wait(min(0.5, left))
        return True


class IngressReadiness:
    """Watches the OPC UA ingress's diagnostics until every device server it serves is connected
    (``endpoints_connected`` = ``n/n``). Create it before the node's executor spins, like
    :class:`GatewayReadiness`; ``connected`` is the last value seen ("" before the first)."""

    def __init__(self, node, num_endpoints: int):
        import threading as _th

        from diagnostic_msgs.msg import DiagnosticArray

        self._ready = _th.Event()
        self.connected = ""
        want = f"{num_endpoints}/{num_endpoints}"

        def on_diag(msg: DiagnosticArray) -> None:
            for st in msg.status:
                for v in st.values:
                    if v.key == "endpoints_connected":
                        self.connected = v.value
                        if v.value == want:
                            self._ready.set()

        self._sub = node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)

    def wait(self, timeout_s: float) -> bool:
        return self._ready.wait(timeout_s)


def probe(plant, count: int, timeout_s: float, deadline_s: float | None = None) -> dict:
    """Send ``count`` requests from the plant's devices through the graph and time every hop."""
    import numpy as np
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node

    from aigc_offload_interfaces.msg import Decision, TaskRequest, TaskResult

    from .deployment import DECISION_TOPIC, REQUEST_TOPIC, RESULT_TOPIC, task_stream_qos
    from .messages import to_time

    rclpy.init()
    node = Node(f"factory_probe_{uuid.uuid4().hex[:6]}")
    decisions: dict[str, float] = {}
    results: dict[str, tuple[float, TaskResult]] = {}
    alive = {"ok": False, "text": ""}

    def on_diag(msg: DiagnosticArray) -> None:
        for st in msg.status:
            kv = {v.key: v.value for v in st.values}
            if "edge_servers_alive" in kv:
                a, b = kv["edge_servers_alive"].split("/")
                alive["ok"], alive["text"] = a == b and b != "0", kv["edge_servers_alive"]

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    node.create_subscription(Decision, DECISION_TOPIC, lambda m: decisions.setdefault(m.task_id, time.time()), 100)
    node.create_subscription(TaskResult, RESULT_TOPIC, lambda m: results.setdefault(m.task_id, (time.time(), m)), 100)
    pub = node.create_publisher(TaskRequest, REQUEST_TOPIC, task_stream_qos())
    try:
        end = time.monotonic() + timeout_s
        while not alive["ok"] and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
        if not alive["ok"]:
            return {"error": f"the gateway did not report every edge server alive within {timeout_s:g} s "
                             f"(last: {alive['text'] or 'no diagnostics'})"}
        while pub.get_subscription_count() == 0 and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        sent: dict[str, float] = {}
        models = {k: [m for m in plant.models if (m.startswith("report") if k == "controller" else m.startswith("defect"))]
                  for k in ("controller", "camera")}
        for i in range(count):
            dev = plant.devices[i % len(plant.devices)]
            report = dev.kind == "controller"
            tid = f"probe-{uuid.uuid4().hex[:12]}"
            now = time.time()
            pub.publish(TaskRequest(
                task_id=tid, device_id=dev.device_id, origin="probe",
                device_kind=TaskRequest.DEVICE_CONTROLLER if report else TaskRequest.DEVICE_CAMERA,
                task_kind=TaskRequest.TASK_REPORT if report else TaskRequest.TASK_DEFECT_IMAGE,
                model_name=models[dev.kind][i % len(models[dev.kind])], input_bits=3_000_000 if report else 6_000_000,
                output_tokens=96 if report else 0, denoising_steps=0 if report else 8,
                deadline_s=deadline_s or (2.5 if report else 1.5), created_at=to_time(now), prompt="probe"))
            sent[tid] = now
            t_next = time.monotonic() + 0.1
            while time.monotonic() < t_next:
                rclpy.spin_once(node, timeout_sec=0.01)
        while len([t for t in sent if t in results]) < len(sent) and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        dec_ms = [1e3 * (decisions[t] - s) for t, s in sent.items() if t in decisions]
        res = [(t, s, results[t]) for t, s in sent.items() if t in results]
        states = {}
        for _t, _s, (_at, m) in res:
            states[m.state] = states.get(m.state, 0) + 1
        e2e = [1e3 * (at - s) for _t, s, (at, _m) in res]
        exec_ms = [1e3 * (at - decisions[t]) for t, _s, (at, _m) in res if t in decisions]
        pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
        names = {TaskResult.DONE: "done", TaskResult.REJECTED: "rejected", TaskResult.FAILED: "failed",
                 TaskResult.DEADLINE_MISSED: "deadline_missed"}
        return {"sent": len(sent), "terminal": len(res), "states": {names[k]: v for k, v in states.items()},
                "request_to_decision_ms": {"p50": pct(dec_ms, 50), "p99": pct(dec_ms, 99)},
                "decision_to_result_ms": {"p50": pct(exec_ms, 50), "p99": pct(exec_ms, 99)},
                "end_to_end_ms": {"p50": pct(e2e, 50), "p99": pct(e2e, 99)},
                "reasons": sorted({m.reason for _t, _s, (_a, m) in res if m.reason})[:5]}
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def run(dep: Deployment, *, duration_s: float | None, probe_count: int = 0, workdir: str | None = None,
        stream_logs: bool = False, out=sys.stdout) -> int:
    """Start the graph, run until the duration passes, SIGINT/SIGTERM, or a node fails."""
    plant = draw_plant(dep)
    specs = node_specs(dep, plant)
    wd = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="aigc_factory_"))
    wd.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)  # each child sets up its own library path
    env.setdefault("PYTHONUNBUFFERED", "1")
    graph = Graph(specs, wd, env)
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    print(f"factory: starting {len(specs)} nodes ({', '.join(s.name for s in specs)}); logs in {wd}", file=out,
          flush=True)
    graph.start(stream_logs)
    rc = 0
    try:
        if probe_count:
            import json

            report = probe(plant, probe_count, timeout_s=60.0)
            print("factory probe: " + json.dumps(report), file=out, flush=True)
            if "error" in report or report.get("terminal") != report.get("sent"):
                rc = 1
        end = time.monotonic() + duration_s if duration_s is not None else None
        while stop["signal"] is None and (end is None or time.monotonic() < end):
            failed = graph.failed()
            if failed:
                for p in failed:
                    print(f"factory: node {p.spec.name} exited with code {p.returncode}; last log lines:\n"
                          f"{graph.tail(p.spec.name)}", file=sys.stderr, flush=True)
                rc = 1
                break
            time.sleep(0.2)
    finally:
        codes = graph.stop()
        for s, h in old.items():
            signal.signal(s, h)
    bad = {n: c for n, c in codes.items() if c not in (0, -signal.SIGINT)}
    if bad and rc == 0 and stop["signal"] is None:
        print(f"factory: nodes exited with errors on shutdown: {bad}", file=sys.stderr)
        rc = 1
    print(f"factory: stopped ({'signal' if stop['signal'] else 'done'}); exit codes {codes}", file=out, flush=True)
    return rc
