"""The ROS 2 edge stack over real DDS between processes: the launch file against the runner, the
gateway's lifecycle and policy refusal, a task from request to terminal result through gateway,
edge servers and cloud, a cache miss that downloads and verifies, a corrupted download that is
rejected and retried, a download that cannot be stored, the edge server's configure refusals.

Every test runs its nodes as their own processes on a random ROS_DOMAIN_ID (100-230) with
discovery kept on the host, and stops every process it started.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import signal
import subprocess
import sys
import threading
import time
import types
import uuid
from pathlib import Path

import pytest
from ros_env import ros_child_env

from policies.shipped import default_policy_name

SHIPPED_DEFAULT = f"{default_policy_name()}.onnx"  # the factory's default gateway policy (policies/trained/)

ROS_OK = (importlib.util.find_spec("rclpy") is not None
          and importlib.util.find_spec("aigc_offload_interfaces") is not None
          and importlib.util.find_spec("aigc_offload") is not None)
pytestmark = pytest.mark.skipif(not ROS_OK, reason="ROS 2 wheels / interfaces / aigc_offload not installed: scripts/setup.sh")

LAUNCH_FILE = Path(__file__).resolve().parent.parent / "ros2_ws/src/aigc_offload/launch/factory.launch.py"
CONFIG_FILE = Path(__file__).resolve().parent.parent / "ros2_ws/src/aigc_offload/config/factory.yaml"


def make_catalog(tmp: Path) -> Path:
    """A catalog with one file per model of the factory preset (random bytes, 64-300 kB)."""
    from aigc_offload.model_catalog import manifest_entry, write_index
    from policies.config import load_preset

    cat = tmp / "catalog"
    cat.mkdir()
    entries = []
    for i, m in enumerate(load_preset("factory").models):
        f = cat / f"{m.name}.onnx"
        f.write_bytes(random.Random(i).randbytes(64_000 + 30_000 * i))
        entries.append(manifest_entry(cat, f.name, m.name, "1.0.0", "text" if m.kind == "report" else "image"))
    write_index(cat, entries)
    return cat


# -- the launch file and the runner share one node list -----------------------------------------
def test_launch_file_starts_exactly_the_runners_nodes(monkeypatch, tmp_path):
    """Run factory.launch.py against recording stand-ins of launch / launch_ros and compare its
    nodes, executables and parameters with deployment.node_specs (what `aigc-offload factory` starts)."""
    from aigc_offload.deployment import load_deployment, node_specs

    recorded: list[dict] = []

    class Node:
        def __init__(self, **kw):
            recorded.append(kw)

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    class DeclareLaunchArgument:
        def __init__(self, name, default_value="", description=""):
            self.name, self.default_value = name, default_value

    class OpaqueFunction:
        def __init__(self, function):
            self.function = function

    mods = {
        "launch": types.SimpleNamespace(LaunchDescription=list),
        "launch.actions": types.SimpleNamespace(DeclareLaunchArgument=DeclareLaunchArgument,
                                                OpaqueFunction=OpaqueFunction),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration),
        "launch_ros": types.SimpleNamespace(),
        "launch_ros.actions": types.SimpleNamespace(Node=Node),
        "ament_index_python": types.SimpleNamespace(),
        "ament_index_python.packages": types.SimpleNamespace(
            get_package_share_directory=lambda pkg: str(CONFIG_FILE.parent.parent)),
    }
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("factory_launch", LAUNCH_FILE)
    launch_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_mod)
    desc = launch_mod.generate_launch_description()
    args = {a.name: a.default_value for a in desc if isinstance(a, DeclareLaunchArgument)}
    assert set(args) == {"config", "policy", "num_edge_servers"}
    assert Path(args["config"]) == CONFIG_FILE
    opaque = [a for a in desc if isinstance(a, OpaqueFunction)]
    assert len(opaque) == 1

    for context, overrides in ((dict(args), {}),
                               ({**args, "policy": "random", "num_edge_servers": "2"},
                                {"gateway.policy": "random", "num_edge_servers": 2})):
        recorded.clear()
        opaque[0].function(context)
        expected = node_specs(load_deployment(CONFIG_FILE, overrides))
        assert [(r["package"], r["executable"], r["name"], r["parameters"]) for r in recorded] == \
            [("aigc_offload", s.executable, s.name, [s.parameters]) for s in expected]
    assert [r["name"] for r in recorded] == ["cloud_model_server", "edge0", "edge1", "edge_gateway"]
    # The execution tier runs niced, the decision path does not.
    assert [r.get("prefix") for r in recorded] == ["nice -n 10"] * 3 + [None]
    # Every executable the launch file names is a console script of the package and a module.
    setup_py = (LAUNCH_FILE.parent.parent / "setup.py").read_text()
    for r in recorded:
        assert f"{r['executable']} = aigc_offload.{r['executable']}:main" in setup_py
        assert importlib.util.find_spec(f"aigc_offload.{r['executable']}") is not None


def test_execution_tier_starts_niced_in_its_own_autogroup():
    """``Deployment.execution_nice`` reaches the edge servers and the cloud, not the decision path, and
    the runner's ``preexec_fn`` sets it for the process and for the autogroup of its new session."""
    import functools

    from aigc_offload.deployment import load_deployment, node_specs
    from aigc_offload.runner import start_child

    nice = {s.executable: s.nice for s in node_specs(load_deployment(CONFIG_FILE, {"execution_nice": 7,
                                                                                  "mqtt.enabled": True}))}
    assert nice == {"cloud_model_server": 7, "edge_server": 7, "edge_gateway": 0, "mqtt_bridge_node": 0}
    assert {s.nice for s in node_specs(load_deployment(CONFIG_FILE, {"execution_nice": 0}))} == {0}
    code = ("import os, pathlib; ag = pathlib.Path('/proc/self/autogroup'); "
            "print(os.nice(0), ag.read_text().split()[-1] if ag.exists() else 'none')")
    for n in (0, 7):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             start_new_session=True, preexec_fn=functools.partial(start_child, n)).stdout.split()
        assert int(out[0]) == min(19, os.nice(0) + n)  # 19 is the ceiling (a test run started niced reaches it)
        assert out[1] in ("none", str(n)), out  # "none": a kernel without autogroups


# -- helpers for the DDS tests -------------------------------------------------------------------
class RosHarness:
    """This test process's rclpy context on the test's domain, with a background executor."""

    def __init__(self, domain_id: int):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import MultiThreadedExecutor

        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node(f"test_{uuid.uuid4().hex[:6]}", context=self.ctx)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def call(self, client, request, timeout_s: float = 10.0, attempt_s: float | None = None):
        """The reply to ``request``; with ``attempt_s``, asked for again every ``attempt_s``: Fast DDS
        can drop the reply to a client whose reply reader the server has not matched yet (right after
        discovery, on a loaded machine). Only for idempotent calls (SubmitTask repeats are answered,
        not rerun; a lifecycle transition is not idempotent)."""
        end = time.monotonic() + timeout_s
        assert client.wait_for_service(timeout_sec=timeout_s), f"{client.srv_name} not discovered"
        while True:
            fut = client.call_async(request)
            done = threading.Event()
            fut.add_done_callback(lambda _f: done.set())
            if done.wait(max(min(attempt_s or timeout_s, end - time.monotonic()), 0.1)):
                return fut.result()
            fut.cancel()
            assert time.monotonic() < end, f"{client.srv_name}: no reply within {timeout_s} s"

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def start_node(module: str, name: str, params: dict, domain_id: int, tmp: Path) -> subprocess.Popen:
    from aigc_offload.deployment import NodeSpec, params_file_text

    pf = tmp / f"{name}.params.yaml"
    pf.write_text(params_file_text([NodeSpec(module, name, params)]))
    return subprocess.Popen(
        [sys.executable, "-m", f"aigc_offload.{module}", "--ros-args", "-r", f"__node:={name}", "--params-file", str(pf)],
        env=ros_child_env(domain_id), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)


def stop_nodes(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:  # generous: on a 2-core machine shared with training, a node's exit once took more than 10 s
            log, _ = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            log, _ = p.communicate(timeout=5)
        out.append((p.returncode, log))
    return out


def request_msg(device_id: str, model: str, *, task_id: str | None = None, deadline_s: float = 2.5, units: int = 64,
                input_bits: int = 2_000_000):
    from aigc_offload.messages import to_time
    from aigc_offload_interfaces.msg import TaskRequest

    report = model.startswith("report")
    return TaskRequest(
        task_id=task_id or f"t-{uuid.uuid4().hex[:10]}", device_id=device_id, origin="test",
        device_kind=TaskRequest.DEVICE_CONTROLLER if report else TaskRequest.DEVICE_CAMERA,
        task_kind=TaskRequest.TASK_REPORT if report else TaskRequest.TASK_DEFECT_IMAGE, model_name=model,
        input_bits=input_bits, output_tokens=units if report else 0, denoising_steps=0 if report else units,
        deadline_s=deadline_s, created_at=to_time(time.time()), prompt="shift report")


# -- gateway lifecycle and policy refusal ----------------------------------------------------------
def test_gateway_lifecycle_refuses_a_missing_or_broken_policy_unless_a_fallback_is_set(tmp_path):
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    domain = random.randint(100, 230)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an ONNX file")
    gw = start_node("edge_gateway", "edge_gateway", {"preset": "factory", "num_edge_servers": 2,
                                                    "policy": str(tmp_path / "missing.onnx")}, domain, tmp_path)
    ros = RosHarness(domain)
    try:
        change = ros.node.create_client(ChangeState, "/edge_gateway/change_state")
        get_state = ros.node.create_client(GetState, "/edge_gateway/get_state")
        set_params = ros.node.create_client(SetParameters, "/edge_gateway/set_parameters")

        def transition(tid):
            return ros.call(change, ChangeState.Request(transition=Transition(id=tid)), 20.0).success

        def state():
            return ros.call(get_state, GetState.Request(), attempt_s=3.0).current_state.id

        def set_param(name, value):
            p = Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value))
            assert ros.call(set_params, SetParameters.Request(parameters=[p])).results[0].successful

        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        assert not transition(Transition.TRANSITION_CONFIGURE)  # missing file
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        set_param("policy", SHIPPED_DEFAULT)  # the shipped policy: trained for 4 edge servers, not 2
        assert not transition(Transition.TRANSITION_CONFIGURE)
        set_param("policy", str(broken))
        assert not transition(Transition.TRANSITION_CONFIGURE)  # not an ONNX policy
        set_param("policy", "opt")
        assert not transition(Transition.TRANSITION_CONFIGURE)  # needs an oracle
        set_param("fallback_policy", "round_robin")
        assert transition(Transition.TRANSITION_CONFIGURE)  # broken policy, fallback used
        assert transition(Transition.TRANSITION_ACTIVATE)
        assert state() == State.PRIMARY_STATE_ACTIVE
        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert state() == State.PRIMARY_STATE_INACTIVE
        assert transition(Transition.TRANSITION_CLEANUP)
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
    finally:
        ros.close()
        (rc, log), = stop_nodes([gw])
    assert rc == 0, log[-3000:]
    assert f"Refusing to configure: policy file '{tmp_path / 'missing.onnx'}' does not exist" in log, log[-3000:]
    assert f"Refusing to configure: policy file '{broken}' cannot be used" in log, log[-3000:]
    assert "needs the simulator's true state" in log, log[-3000:]
    assert (f"{SHIPPED_DEFAULT}' expects observation field 9 to be 'uplink_mbps' (width 4), but the "
            "simulator's field 9 is 'uplink_mbps' (width 2)") in log, log[-3000:]
    assert "using the fallback heuristic 'round_robin'" in log, log[-3000:]


# -- one task from request to result through the whole graph ---------------------------------------
def test_tasks_flow_from_request_to_one_terminal_result(tmp_path):
    """cloud + 2 edge servers + gateway, started by the runner from the deployment; this process
    plays the devices: it sends requests, runs the tasks the gateway keeps local, and checks that
    every task (also a malformed one) gets exactly one terminal result."""
    from aigc_offload.deployment import DECISION_TOPIC, EXECUTION_RESULT_TOPIC, REQUEST_TOPIC, RESULT_TOPIC
    from aigc_offload.deployment import Deployment, draw_plant, node_specs
    from aigc_offload.messages import result_msg
    from aigc_offload.runner import Graph
    from aigc_offload_interfaces.msg import Decision, TaskRequest, TaskResult
    from diagnostic_msgs.msg import DiagnosticArray

    domain = random.randint(100, 230)
    dep = Deployment(preset="factory", num_edge_servers=2, gateway={"policy": "greedy"},
                     edge_server={"execution": "generative"})  # the shipped zoo: real models run
    plant = draw_plant(dep)
    graph = Graph(node_specs(dep, plant), tmp_path, ros_child_env(domain))
    graph.start()
    ros = RosHarness(domain)
    decisions: dict[str, Decision] = {}
    results: dict[str, list[TaskResult]] = {}
    alive = threading.Event()
    try:
        exec_pub = ros.node.create_publisher(TaskResult, EXECUTION_RESULT_TOPIC, 100)

        def on_decision(msg: Decision) -> None:
            decisions[msg.task_id] = msg
            if msg.target_kind == Decision.TARGET_LOCAL:  # the device runs it and reports back
                exec_pub.publish(result_msg(msg.task_id, "", "test", TaskResult.DONE, executed_on="local"))

        ros.node.create_subscription(Decision, DECISION_TOPIC, on_decision, 100)
        ros.node.create_subscription(TaskResult, RESULT_TOPIC,
                                     lambda m: results.setdefault(m.task_id, []).append(m), 100)

        def on_diag(msg):
            for st in msg.status:
                kv = {v.key: v.value for v in st.values}
                if kv.get("edge_servers_alive") == "2/2":
                    alive.set()

        ros.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        pub = ros.node.create_publisher(TaskRequest, REQUEST_TOPIC, 100)
        assert alive.wait(45.0), "the gateway never saw both edge servers: " + graph.tail("edge0") + graph.tail("edge_gateway")
        assert not graph.failed()
        ctrl = [d for d in plant.devices if d.kind == "controller"]
        cams = [d for d in plant.devices if d.kind == "camera"]
        good = [request_msg(ctrl[0].device_id, "report-s"), request_msg(ctrl[1].device_id, "report-m", units=150),
                request_msg(cams[0].device_id, "defect-s", units=8, deadline_s=1.5),
                request_msg(cams[1].device_id, "defect-xl", units=15, deadline_s=1.5, input_bits=7_000_000)]
        bad = [request_msg("plc99", "report-s"),  # not a device of this plant
               request_msg(ctrl[2].device_id, "report-huge"),  # not in the catalog
               request_msg(ctrl[3].device_id, "report-s", deadline_s=0.0)]
        for msg in good + bad:
            pub.publish(msg)
            time.sleep(0.05)
        want = {m.task_id for m in good + bad}
        end = time.monotonic() + 15.0
        while set(results) != want and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.5)  # a second terminal result would arrive now
    finally:
        ros.close()
        codes = graph.stop()
    logs = "\n".join(graph.tail(n, 30) for n in ("cloud_model_server", "edge0", "edge1", "edge_gateway"))
    assert set(results) == want, f"missing terminal results for {want - set(results)}\n{logs}"
    assert all(len(v) == 1 for v in results.values()), "a task got more than one terminal result"
    for m in good:
        r = results[m.task_id][0]
        assert r.state == TaskResult.DONE, f"{m.model_name}: {r.state} {r.reason}\n{logs}"
        if r.executed_on.startswith("edge:"):  # generated there by the real model
            if m.model_name.startswith("defect"):
                assert r.output_mime == "image/png" and bytes(r.output[:8]) == b"\x89PNG\r\n\x1a\n"
            else:
                assert r.output_mime.startswith("text/plain") and len(bytes(r.output).decode()) > 0
        assert r.device_id == m.device_id and r.origin == "test"
        assert 0 < r.latency_s < m.deadline_s
        assert m.task_id in decisions
    reasons = [results[m.task_id][0].reason for m in bad]
    assert all(results[m.task_id][0].state == TaskResult.REJECTED for m in bad)
    assert "device 'plc99' is not part of this deployment" in reasons[0]
    assert "model 'report-huge' is not in the catalog" in reasons[1]
    assert "deadline_s must be positive" in reasons[2]
    assert all(c == 0 for c in codes.values()), f"exit codes {codes}\n{logs}"


# -- cache miss: download, verify, run; corrupted download rejected, then retried ------------------
def clean_shutdown_logs(out: list) -> tuple[str, str]:
    """The nodes' logs (and their tails, for messages) after asserting every node exited 0 without a traceback."""
    logs = "\n".join(log for _rc, log in out)
    tails = "\n".join(log[-2500:] for _rc, log in out)
    assert all(rc == 0 for rc, _log in out), tails
    assert "Traceback" not in logs, tails
    return logs, tails


def start_cloud_and_cold_edge(catalog, cache, domain: int, tmp_path) -> list:
    """The cloud model server and edge0 with an empty cache in ``cache`` (32 KiB chunks), both autostarted."""
    return [start_node("cloud_model_server", "cloud_model_server",
                       {"catalog_dir": str(catalog), "max_chunk_bytes": 32768, "autostart": True}, domain, tmp_path),
            start_node("edge_server", "edge0", {"server_id": "edge0", "cpu_ghz": 20.0, "storage_mb": 400.0,
                                                "initial_models": [""], "cache_dir": str(cache), "forwarding": False,
                                                "download_chunk_bytes": 32768, "autostart": True}, domain, tmp_path)]


def test_cache_miss_downloads_verifies_runs_and_a_corrupted_download_is_refused(tmp_path):
    from aigc_offload.deployment import EXECUTION_RESULT_TOPIC
    from aigc_offload_interfaces.msg import Decision, TaskResult
    from aigc_offload_interfaces.srv import SubmitTask

    domain = random.randint(100, 230)
    cat = make_catalog(tmp_path)
    cache = tmp_path / "cache"
    procs = start_cloud_and_cold_edge(cat, cache, domain, tmp_path)
    ros = RosHarness(domain)
    results: dict[str, TaskResult] = {}
    result_count: dict[str, int] = {}

    def on_result(m: TaskResult) -> None:
        results.setdefault(m.task_id, m)
        result_count[m.task_id] = result_count.get(m.task_id, 0) + 1

    try:
        ros.node.create_subscription(TaskResult, EXECUTION_RESULT_TOPIC, on_result, 100)
        submit = ros.node.create_client(SubmitTask, "/edge0/submit_task")

        assert submit.wait_for_service(timeout_sec=45.0), "edge0 never served submit_task"
        sent: dict[str, SubmitTask.Request] = {}

        def run(model: str) -> tuple:
            req = request_msg("plc01", model, deadline_s=10.0)  # generous: this test is about the download
            dec = Decision(task_id=req.task_id, target_kind=Decision.TARGET_EDGE, target_index=0, target_id="edge0",
                           offload_share=1.0, download_model=True, model_name=model)
            sent[model] = SubmitTask.Request(task=req, decision=dec)
            ack = ros.call(submit, sent[model], 30.0, attempt_s=5.0)
            end = time.monotonic() + 20.0
            while req.task_id not in results and time.monotonic() < end:
                time.sleep(0.02)
            return ack, results.get(req.task_id)

        ack, res = run("report-s")
        assert ack.accepted and ack.action == "download"
        # The same hand-off again (as the gateway sends it when an acknowledgement is lost): the same
        # answer, and the task is not run a second time.
        again = ros.call(submit, sent["report-s"], 30.0, attempt_s=5.0)
        assert (again.accepted, again.action) == (True, "download")
        time.sleep(0.5)
        assert result_count[res.task_id] == 1
        assert res is not None and res.state == TaskResult.DONE, res
        assert res.model_downloaded and not res.cache_hit and res.executed_on == "edge:edge0"
        blob = (cat / "report-s.onnx").read_bytes()
        cached = cache / "edge0" / "report-s-1.0.0.onnx"
        assert hashlib.sha256(cached.read_bytes()).digest() == hashlib.sha256(blob).digest()

        ack, res = run("report-s")  # now a hit
        assert ack.action == "queue" and res.state == TaskResult.DONE and res.cache_hit

        # Corrupt report-m in the cloud's catalog after it was verified: same size, other bytes.
        good = (cat / "report-m.onnx").read_bytes()
        (cat / "report-m.onnx").write_bytes(bytes(b ^ 0x5A for b in good[:100]) + good[100:])
        ack, res = run("report-m")
        assert ack.accepted and res is not None and res.state == TaskResult.FAILED
        assert "could not fetch model report-m" in res.reason
        assert not (cache / "edge0" / "report-m-1.0.0.onnx").exists()
        (cat / "report-m.onnx").write_bytes(good)  # the cloud is repaired: the next miss downloads again
        ack, res = run("report-m")
        assert ack.action == "download" and res.state == TaskResult.DONE and res.model_downloaded
    finally:
        ros.close()
        out = stop_nodes(procs)
    logs, tails = clean_shutdown_logs(out)  # also of the edge server's I/O thread
    assert logs.count("Download of report-m failed") >= 3 and "the download was discarded" in logs, tails


# -- a download that cannot be stored ends: its tasks fail at once with the cause, the next miss fetches again
def test_a_download_that_cannot_be_stored_fails_its_tasks_at_once_and_the_next_miss_downloads_again(tmp_path):
    """A directory where the verified model is to be renamed makes the rename fail (an OSError, not a
    transport or verification error). The download must still end: both tasks waiting for it fail
    well before their deadline with a reason naming the cause, and a later miss downloads again."""
    from aigc_offload.deployment import EXECUTION_RESULT_TOPIC
    from aigc_offload_interfaces.msg import Decision, TaskResult
    from aigc_offload_interfaces.srv import SubmitTask

    domain = random.randint(100, 230)
    cat = make_catalog(tmp_path)
    cache = tmp_path / "cache"
    blocker = cache / "edge0" / "report-s-1.0.0.onnx"
    blocker.mkdir(parents=True)
    procs = start_cloud_and_cold_edge(cat, cache, domain, tmp_path)
    ros = RosHarness(domain)
    results: dict[str, TaskResult] = {}
    try:
        ros.node.create_subscription(TaskResult, EXECUTION_RESULT_TOPIC, lambda m: results.setdefault(m.task_id, m), 100)
        submit = ros.node.create_client(SubmitTask, "/edge0/submit_task")
        assert submit.wait_for_service(timeout_sec=45.0), "edge0 never served submit_task"

        def hand(deadline_s: float = 12.0):
            req = request_msg("plc01", "report-s", deadline_s=deadline_s)
            dec = Decision(task_id=req.task_id, target_kind=Decision.TARGET_EDGE, target_index=0, target_id="edge0",
                           offload_share=1.0, download_model=True, model_name="report-s")
            return req.task_id, ros.call(submit, SubmitTask.Request(task=req, decision=dec), 30.0, attempt_s=5.0)

        def wait(ids, timeout_s: float) -> None:
            end = time.monotonic() + timeout_s
            while not set(ids) <= set(results) and time.monotonic() < end:
                time.sleep(0.02)

        (t1, a1), (t2, a2) = hand(), hand()  # the second waits for the first one's download
        assert (a1.accepted, a1.action, a2.accepted, a2.action) == (True, "download", True, "download")
        wait([t1, t2], 8.0)  # not until the 12 s deadline
        for tid in (t1, t2):
            assert tid in results, f"{tid}: no result before the deadline; seen {results}"
            r = results[tid]
            assert r.state == TaskResult.FAILED and r.latency_s < 8.0, (r.state, r.reason)
            assert "edge0 could not fetch model report-s" in r.reason and "Is a directory" in r.reason, r.reason
        blocker.rmdir()  # the disk is usable again: the next miss fetches the model
        t3, a3 = hand()
        assert a3.action == "download", a3
        wait([t3], 15.0)
        assert t3 in results and results[t3].state == TaskResult.DONE, results.get(t3)
        assert results[t3].model_downloaded
    finally:
        ros.close()
        out = stop_nodes(procs)
    logs, tails = clean_shutdown_logs(out)  # the download thread ended, it did not die
    assert "Download of report-s failed" in logs, tails


def test_deactivating_an_edge_server_ends_its_running_and_queued_tasks(tmp_path):
    """Deactivate with one task running and two queued: each ends at once as FAILED with a reason saying
    so (they used to wait for the gateway's sweep, or the running one was reported done unfinished)."""
    from aigc_offload.deployment import EXECUTION_RESULT_TOPIC
    from aigc_offload_interfaces.msg import Decision, TaskResult
    from aigc_offload_interfaces.srv import SubmitTask
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    domain = random.randint(100, 230)
    cat = make_catalog(tmp_path)
    procs = [start_node("cloud_model_server", "cloud_model_server",
                        {"catalog_dir": str(cat), "autostart": True}, domain, tmp_path),
             start_node("edge_server", "edge0", {"server_id": "edge0", "cpu_ghz": 0.001, "storage_mb": 400.0,
                                                 "initial_models": ["report-s"], "cache_dir": str(tmp_path / "cache"),
                                                 "forwarding": False, "autostart": True}, domain, tmp_path)]
    ros = RosHarness(domain)
    results: dict[str, TaskResult] = {}
    try:
        ros.node.create_subscription(TaskResult, EXECUTION_RESULT_TOPIC, lambda m: results.setdefault(m.task_id, m), 100)
        submit = ros.node.create_client(SubmitTask, "/edge0/submit_task")
        change = ros.node.create_client(ChangeState, "/edge0/change_state")
        assert submit.wait_for_service(timeout_sec=45.0), "edge0 never served submit_task"
        ids = []
        for _ in range(3):  # ~minutes of compute each at 1 MHz: the first runs, two wait
            req = request_msg("plc01", "report-s", deadline_s=120.0)
            dec = Decision(task_id=req.task_id, target_kind=Decision.TARGET_EDGE, target_index=0, target_id="edge0",
                           offload_share=1.0, download_model=False, model_name="report-s")
            ack = ros.call(submit, SubmitTask.Request(task=req, decision=dec), 30.0, attempt_s=5.0)
            assert ack.accepted and ack.action == "queue", ack
            ids.append(req.task_id)
        time.sleep(0.5)
        assert not results
        assert ros.call(change, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE)),
                        20.0).success
        end = time.monotonic() + 10.0
        while not set(ids) <= set(results) and time.monotonic() < end:
            time.sleep(0.02)
        assert set(ids) <= set(results), results
        first, *queued = (results[t] for t in ids)
        assert first.state == TaskResult.FAILED and "edge0 was deactivated while the task ran" in first.reason, first
        for r in queued:
            assert r.state == TaskResult.FAILED and r.reason == "edge0 was deactivated before the task ran", r
    finally:
        ros.close()
        out = stop_nodes(procs)
    clean_shutdown_logs(out)


def test_edge_server_configure_failures_are_refused_with_one_log_line(tmp_path):
    """Failures that used to escape on_configure (rclpy turns them into ERROR without a word): a cache
    directory that cannot be created, an initial model that cannot be stored, a chunk size of 0.
    Each autostarted server logs one "Refusing to configure" line naming the cause and exits non-zero."""
    domain = random.randint(100, 230)
    cat = make_catalog(tmp_path)
    not_a_dir = tmp_path / "not_a_dir"
    not_a_dir.write_text("a file where the cache directory should be")
    blocked = tmp_path / "blocked"
    (blocked / "edge1" / "report-s-1.0.0.onnx").mkdir(parents=True)  # the model cannot be renamed onto it
    base = {"cpu_ghz": 20.0, "storage_mb": 400.0, "initial_models": [""], "forwarding": False,
            "download_chunk_bytes": 32768, "autostart": True}
    cases = {"edge0": ({"cache_dir": str(not_a_dir)},
                       [f"cache directory '{not_a_dir / 'edge0'}' cannot be created", "Not a directory"]),
             "edge1": ({"cache_dir": str(blocked), "initial_models": ["report-s"]},
                       ["initial model 'report-s' could not be fetched", "Is a directory"]),
             "edge2": ({"cache_dir": str(tmp_path / "ok"), "download_chunk_bytes": 0},
                       ["download_chunk_bytes must be positive, got 0"])}
    cloud = start_node("cloud_model_server", "cloud_model_server",
                       {"catalog_dir": str(cat), "max_chunk_bytes": 32768, "autostart": True}, domain, tmp_path)
    edges = {name: start_node("edge_server", name, {**base, "server_id": name, **params}, domain, tmp_path)
             for name, (params, _want) in cases.items()}
    logs: dict[str, tuple[int | None, str]] = {}
    try:
        end = time.monotonic() + 90.0
        for name, p in edges.items():
            try:
                log, _ = p.communicate(timeout=max(end - time.monotonic(), 1.0))
                logs[name] = (p.returncode, log)
            except subprocess.TimeoutExpired:
                pass
    finally:
        out = stop_nodes([cloud] + [p for name, p in edges.items() if name not in logs])
    left = [name for name in edges if name not in logs]
    assert not left, f"{left} did not exit after a failed configure:\n" + "\n".join(log[-2500:] for _rc, log in out)
    for name, (_params, want) in cases.items():
        rc, log = logs[name]
        assert rc != 0, f"{name}: exit code {rc}\n{log[-3000:]}"
        lines = [ln for ln in log.splitlines() if "Refusing to configure" in ln]
        assert len(lines) == 1, f"{name}:\n{log[-3000:]}"
        assert all(w in lines[0] for w in want), f"{name}: {lines[0]}"
        assert "Traceback" not in log, f"{name}:\n{log[-3000:]}"


# -- forwarding: a miss goes to the peer that holds the model; a forward that cannot land fails the task
def test_forward_to_a_peer_lands_and_a_forward_to_a_vanished_peer_fails_the_task(tmp_path):
    """edge0 holds no model and may not download; this process plays its peer edge1 (status with
    report-s cached, and a SubmitTask service). A task for report-s is forwarded to edge1 with one
    more hop; once edge1's service is gone, the next forward fails the task with a result saying
    where it could not go (edge0's forwarder thread: hand_off.HandOffScheduler)."""
    from aigc_offload.deployment import EXECUTION_RESULT_TOPIC, STATUS_TOPIC
    from aigc_offload.messages import to_time
    from aigc_offload_interfaces.msg import Decision, EdgeServerStatus, TaskResult
    from aigc_offload_interfaces.srv import SubmitTask

    domain = random.randint(100, 230)
    cat = make_catalog(tmp_path)
    procs = [start_node("cloud_model_server", "cloud_model_server", {"catalog_dir": str(cat), "autostart": True},
                        domain, tmp_path),
             start_node("edge_server", "edge0", {"server_id": "edge0", "cpu_ghz": 20.0, "storage_mb": 400.0,
                                                 "initial_models": [""], "cache_dir": str(tmp_path / "cache"),
                                                 "forwarding": True, "peers": ["edge1"], "autostart": True},
                        domain, tmp_path)]
    ros = RosHarness(domain)
    results: dict[str, list[TaskResult]] = {}
    forwarded: list[SubmitTask.Request] = []
    try:
        ros.node.create_subscription(TaskResult, EXECUTION_RESULT_TOPIC,
                                     lambda m: results.setdefault(m.task_id, []).append(m), 100)
        status_pub = ros.node.create_publisher(EdgeServerStatus, STATUS_TOPIC, 10)

        def peer_status() -> None:
            status_pub.publish(EdgeServerStatus(server_id="edge1", server_index=1, stamp=to_time(time.time()),
                                                backlog_s=0.0, cached_models=["report-s"], cpu_hz=40e9))

        ros.node.create_timer(0.2, peer_status)

        def on_forward(request, response):
            forwarded.append(request)
            response.accepted, response.action = True, "queue"
            return response

        peer_srv = ros.node.create_service(SubmitTask, "/edge1/submit_task", on_forward)
        submit = ros.node.create_client(SubmitTask, "/edge0/submit_task")
        assert submit.wait_for_service(timeout_sec=45.0), "edge0 never served submit_task"

        def hand(model: str, deadline_s: float = 10.0) -> tuple:
            req = request_msg("plc01", model, deadline_s=deadline_s)
            dec = Decision(task_id=req.task_id, target_kind=Decision.TARGET_EDGE, target_index=0, target_id="edge0",
                           offload_share=1.0, download_model=False, model_name=model)
            return req.task_id, ros.call(submit, SubmitTask.Request(task=req, decision=dec), 30.0, attempt_s=5.0)

        # edge0 must have heard edge1's status before it can choose it
        end = time.monotonic() + 20.0
        while True:
            tid, ack = hand("report-s")
            if ack.action.startswith("forward:") or time.monotonic() > end:
                break
            time.sleep(0.3)
        assert ack.accepted and ack.action == "forward:edge1", ack
        end = time.monotonic() + 10.0
        while not any(f.task.task_id == tid for f in forwarded) and time.monotonic() < end:
            time.sleep(0.02)
        got = [f for f in forwarded if f.task.task_id == tid]
        assert len(got) == 1 and got[0].hops == 1, forwarded
        time.sleep(1.0)
        assert tid not in results, results.get(tid)  # landed: edge1 reports the run, not edge0

        ros.node.destroy_service(peer_srv)
        tid2, ack2 = hand("report-s", deadline_s=3.0)  # an undiscovered peer is waited for until then
        assert ack2.accepted and ack2.action == "forward:edge1"
        end = time.monotonic() + 15.0
        while tid2 not in results and time.monotonic() < end:
            time.sleep(0.05)
        assert tid2 in results, "a forward that could not land left no result"
        (res,) = results[tid2]
        assert res.state == TaskResult.FAILED and res.executed_on == "edge:edge0"
        assert "edge0 could not hand the task to edge1" in res.reason, res.reason
    finally:
        ros.close()
        out = stop_nodes(procs)
    tails = "\n".join(log[-2500:] for _rc, log in out)
    assert all(rc == 0 for rc, _log in out), tails
    assert "Traceback" not in "\n".join(log for _rc, log in out), tails


def test_graph_wait_ready_gives_up_at_the_first_node_that_exits(tmp_path):
    """A node that dies at start must not hold the factory job, hil or bench e2e for their whole
    readiness timeout: ``Graph.wait_ready`` returns False at once and ``failure_summary`` names it."""
    from aigc_offload.deployment import NodeSpec
    from aigc_offload.runner import GatewayReadiness, Graph

    class NeverReady(GatewayReadiness):
        def __init__(self):  # noqa: D107 - the real wait loop without a ROS node
            self._ready = threading.Event()

    graph = Graph([NodeSpec("no_such_node", "ghost", {})], tmp_path, ros_child_env(150))
    graph.start()
    try:
        t0 = time.monotonic()
        assert graph.wait_ready(NeverReady(), 60.0) is False
        assert time.monotonic() - t0 < 30.0
        summary = graph.failure_summary()
        assert summary.startswith("ghost exited 1") and "aigc_offload.no_such_node" in summary
    finally:
        graph.stop()
