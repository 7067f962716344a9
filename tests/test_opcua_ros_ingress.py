"""The OPC UA ingress node over real DDS and real asyncua device servers.

Two device servers (a controller plc01 and a camera cam01, the lab PKI, free loopback ports) run on
an asyncio loop thread of this process; the node ``aigc_offload.opcua_ingress_node`` runs as its
own process on a random ROS_DOMAIN_ID (100-230); a rclpy harness in this process plays the
gateway (reads REQUEST_TOPIC and EXECUTION_RESULT_TOPIC, publishes DECISION_TOPIC and RESULT_TOPIC).
Everything started here is stopped here.
"""

from __future__ import annotations

import importlib.util
import json
import queue
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ros_env import ros_child_env

ROS_OK = (importlib.util.find_spec("rclpy") is not None
          and importlib.util.find_spec("aigc_offload_interfaces") is not None
          and importlib.util.find_spec("aigc_offload") is not None)
pytestmark = pytest.mark.skipif(not ROS_OK, reason="ROS 2 wheels / interfaces / aigc_offload not installed")

from mqtt_bridge.broker import free_ports  # noqa: E402
from test_opcua_devices import LoopThread, server_security, wait_for  # noqa: E402

from opcua_devices import model as m  # noqa: E402
from opcua_devices.ingress import request_task_call  # noqa: E402
from opcua_devices.pki import make_lab_pki  # noqa: E402
from opcua_devices.server import DeviceServer  # noqa: E402


def start_ingress(params: dict, domain: int, tmp: Path, name: str = "opcua_ingress") -> subprocess.Popen:
    from aigc_offload.deployment import NodeSpec, params_file_text

    pf = tmp / f"{name}.params.yaml"
    pf.write_text(params_file_text([NodeSpec("opcua_ingress_node", name, params)]))
    return subprocess.Popen(
        [sys.executable, "-m", "aigc_offload.opcua_ingress_node", "--ros-args", "-r", f"__node:={name}",
         "--params-file", str(pf)],
        env=ros_child_env(domain), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)


class Gateway:
    """The rclpy side of the test: plays the edge gateway."""

    def __init__(self, domain: int):
        from test_edge_stack import RosHarness

        from aigc_offload.deployment import DECISION_TOPIC, EXECUTION_RESULT_TOPIC, REQUEST_TOPIC, RESULT_TOPIC
        from aigc_offload_interfaces.msg import Decision, TaskRequest, TaskResult

        self.ros = RosHarness(domain)
        n = self.ros.node
        self.requests: queue.Queue = queue.Queue()
        self.executions: queue.Queue = queue.Queue()
        self.req_sub = n.create_subscription(TaskRequest, REQUEST_TOPIC, self.requests.put, 100)
        self.exec_sub = n.create_subscription(TaskResult, EXECUTION_RESULT_TOPIC, self.executions.put, 100)
        self.dec_pub = n.create_publisher(Decision, DECISION_TOPIC, 100)
        self.res_pub = n.create_publisher(TaskResult, RESULT_TOPIC, 100)
        from aigc_offload.runner import IngressReadiness

        self.ingress = IngressReadiness(n, 2)

    def wait_matched(self, timeout_s: float = 20.0) -> None:
        wait_for(lambda: self.req_sub.get_publisher_count() > 0 and self.exec_sub.get_publisher_count() > 0
                 and self.dec_pub.get_subscription_count() > 0 and self.res_pub.get_subscription_count() > 0,
                 timeout_s, "the ingress node's topics to match")

    @staticmethod
    def get(q: queue.Queue, pred, timeout_s: float = 10.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                msg = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if pred(msg):
                return msg
        raise AssertionError("timed out waiting for a ROS message")

    def close(self) -> None:
        self.ros.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("opcua_ros")
    pki = make_lab_pki(tmp / "pki", ["plc01", "cam01"], ["gateway"], pbkdf2_iterations=2_000)
    loop = LoopThread()
    urls = {d: f"opc.tcp://127.0.0.1:{port}/aigc/" for d, port in zip(("plc01", "cam01"), free_ports(2))}
    devs = {"plc01": DeviceServer("plc01", "controller", urls["plc01"], server_security(pki, "plc01")),
            "cam01": DeviceServer("cam01", "camera", urls["cam01"], server_security(pki, "cam01"))}
    for d in devs.values():
        loop.run(d.start())
    domain = random.randint(100, 230)
    node = start_ingress({"endpoints": [urls["plc01"], urls["cam01"]], "pki_dir": str(pki.root),
                          "autostart": True, "backoff_min_s": 0.2, "backoff_max_s": 1.0,
                          "delivery_timeout_s": 10.0, "diagnostics_period_s": 0.5}, domain, tmp)
    gw = Gateway(domain)
    ctx = {"pki": pki, "loop": loop, "urls": urls, "devs": devs, "node": node, "gw": gw, "domain": domain, "tmp": tmp}
    try:
        gw.wait_matched()
        # Secure sessions to both devices (slow on a loaded machine): the tests' own waits are for
        # the steady state, not for the ingress's start.
        assert gw.ingress.wait(90.0), f"the ingress connected {gw.ingress.connected or 'no'} endpoints within 90 s"
        yield ctx
    finally:
        gw.close()
        if node.poll() is None:
            node.send_signal(2)
        try:
            out, _ = node.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            node.kill()
            out, _ = node.communicate(timeout=5)
        ctx["log"] = out
        for d in ctx["devs"].values():
            loop.run(d.stop())
        loop.close()
        print(out[-4000:])


def plc_call(ctx, device_id: str, kind: str, model: str, units: int, deadline_s: float = 10.0) -> str:
    """A PLC program on the device calls RequestTask (server side, as a local program would)."""
    return ctx["loop"].run(ctx["devs"][device_id].request_task(kind, model, 3_000_000, units, deadline_s, "shift 2"))


def var(ctx, device_id: str, name: str):
    return ctx["loop"].run(ctx["devs"][device_id]._vars[name].read_value())


def decision(task_id: str, target_kind: int, share: float, model: str, target_id: str = "", index: int = -1):
    from aigc_offload.messages import to_time
    from aigc_offload_interfaces.msg import Decision

    return Decision(task_id=task_id, target_kind=target_kind, target_index=index, target_id=target_id,
                    offload_share=share, model_name=model, policy_name="test-policy v1",
                    decided_at=to_time(time.time()))


def terminal(req, state: int = 0, executed_on: str = "edge:edge0", reason: str = ""):
    from aigc_offload.messages import from_time, result_msg

    return result_msg(req.task_id, req.device_id, req.origin, state, reason, created_at_s=from_time(req.created_at),
                      executed_on=executed_on, output=b"report text", output_mime="text/plain")


def test_requests_from_opcua_reach_ros(setup):
    from aigc_offload_interfaces.msg import TaskRequest

    gw = setup["gw"]
    wait_for(lambda: True)

    # A client of the controller (a PLC program over OPC UA, not the ingress) calls RequestTask.
    async def call():
        from test_opcua_devices import connect, gateway_security

        c = await connect(setup["urls"]["plc01"], gateway_security(setup["pki"]))
        try:
            ns = await c.get_namespace_index(m.NAMESPACE_URI)
            obj = await c.nodes.objects.get_child(f"{ns}:plc01")
            meth = await obj.get_child(f"{ns}:RequestTask")
            res = (await c.uaclient.call([request_task_call(obj.nodeid, meth.nodeid, "report", "report-m",
                                                            4_000_000, 128, 2.5, "line 3 shift report")]))[0]
            res.StatusCode.check()
            return res.OutputArguments[0].Value
        finally:
            await c.disconnect()

    t_call = time.time()
    task_id = setup["loop"].run(call())
    msg = gw.get(gw.requests, lambda r: r.task_id == task_id)
    assert (msg.device_id, msg.device_kind, msg.task_kind, msg.model_name, msg.origin) == (
        "plc01", TaskRequest.DEVICE_CONTROLLER, TaskRequest.TASK_REPORT, "report-m", "opcua:" + setup["urls"]["plc01"])
    assert (msg.input_bits, msg.output_tokens, msg.denoising_steps, msg.deadline_s, msg.prompt) == (
        4_000_000, 128, 0, 2.5, "line 3 shift report")
    assert abs(msg.created_at.sec + msg.created_at.nanosec * 1e-9 - t_call) < 2.0
    cam_id = plc_call(setup, "cam01", "defect_image", "defect-s", 12)
    msg = gw.get(gw.requests, lambda r: r.task_id == cam_id)
    assert (msg.device_kind, msg.task_kind, msg.denoising_steps, msg.output_tokens) == (
        TaskRequest.DEVICE_CAMERA, TaskRequest.TASK_DEFECT_IMAGE, 12, 0)


def test_decision_and_terminal_result_reach_the_device(setup):
    from aigc_offload_interfaces.msg import Decision, TaskResult

    gw = setup["gw"]
    task_id = plc_call(setup, "plc01", "report", "report-s", 64)
    req = gw.get(gw.requests, lambda r: r.task_id == task_id)
    gw.dec_pub.publish(decision(task_id, Decision.TARGET_EDGE, 1.0, "report-s", "edge1", 1))
    last = wait_for(lambda: (v := var(setup, "plc01", "LastDecision")) and json.loads(v)["task_id"] == task_id and v,
                    10, "LastDecision")
    d = json.loads(last)
    assert (d["target"], d["edge_server"], d["offload_share"], d["policy"]) == ("edge", "edge1", 1.0, "test-policy v1")
    gw.res_pub.publish(terminal(req))
    res = wait_for(lambda: (v := var(setup, "plc01", "LastResult")) and json.loads(v)["task_id"] == task_id and v,
                   10, "LastResult")
    r = json.loads(res)
    assert (r["state"], r["executed_on"], r["output_bits"]) == ("done", "edge:edge0", len(b"report text") * 8)
    # A rejection by the gateway reaches the device with its reason.
    rej_id = plc_call(setup, "plc01", "report", "report-s", 64)
    req = gw.get(gw.requests, lambda r: r.task_id == rej_id)
    gw.res_pub.publish(terminal(req, TaskResult.REJECTED, "", "model not served here"))
    r = wait_for(lambda: (v := var(setup, "plc01", "LastResult")) and json.loads(v)["task_id"] == rej_id
                 and json.loads(v), 10, "the rejection")
    assert (r["state"], r["reason"]) == ("rejected", "model not served here")


def test_local_and_split_decisions_run_on_the_device_and_report(setup):
    from aigc_offload_interfaces.msg import Decision, TaskResult

    gw = setup["gw"]
    dev = setup["devs"]["cam01"]
    whole_id = plc_call(setup, "cam01", "defect_image", "defect-m", 8)
    req = gw.get(gw.requests, lambda r: r.task_id == whole_id)
    gw.dec_pub.publish(decision(whole_id, Decision.TARGET_LOCAL, 0.0, "defect-m"))
    x = gw.get(gw.executions, lambda r: r.task_id == whole_id)
    full_s = dev.executor.compute_time_s(dev._tasks[whole_id].request)
    assert (x.part, x.state, x.executed_on, x.device_id, x.origin) == (
        TaskResult.PART_WHOLE, TaskResult.DONE, "local", "cam01", req.origin)
    assert x.compute_s == pytest.approx(full_s, rel=0.25) and x.latency_s >= x.compute_s
    assert json.loads(var(setup, "cam01", "LastDecision"))["target"] == "device"
    # The device's run is not the terminal state: the gateway's TaskResult is.
    assert whole_id in dev._tasks
    gw.res_pub.publish(terminal(req, executed_on="local"))
    r = wait_for(lambda: (v := var(setup, "cam01", "LastResult")) and json.loads(v)["task_id"] == whole_id
                 and json.loads(v), 10, "the terminal result")
    assert (r["state"], r["executed_on"]) == ("done", "device")

    split_id = plc_call(setup, "cam01", "defect_image", "defect-m", 8)
    req = gw.get(gw.requests, lambda r: r.task_id == split_id)
    gw.dec_pub.publish(decision(split_id, Decision.TARGET_EDGE, 0.5, "defect-m", "edge0", 0))
    x = gw.get(gw.executions, lambda r: r.task_id == split_id)
    assert (x.part, x.state) == (TaskResult.PART_LOCAL, TaskResult.DONE)
    assert x.compute_s == pytest.approx(0.5 * full_s, rel=0.25)
    gw.res_pub.publish(terminal(req, executed_on="edge:edge0+local"))
    r = wait_for(lambda: (v := var(setup, "cam01", "LastResult")) and json.loads(v)["task_id"] == split_id
                 and json.loads(v), 10, "the split task's terminal result")
    assert (r["state"], r["executed_on"]) == ("done", "edge:edge0+device")
    assert dev.counters["TasksDone"] >= 2 and split_id not in dev._tasks


def test_device_restart_node_reconnects(setup):
    gw = setup["gw"]
    loop, url = setup["loop"], setup["urls"]["plc01"]
    loop.run(setup["devs"]["plc01"].stop())
    time.sleep(1.5)  # the node notices the loss and backs off
    dev = DeviceServer("plc01", "controller", url, server_security(setup["pki"], "plc01"))
    loop.run(dev.start())
    setup["devs"]["plc01"] = dev
    # A request raised before the node is back comes from PendingRequests, a later one as an event.
    early = plc_call(setup, "plc01", "report", "report-s", 32)
    assert gw.get(gw.requests, lambda r: r.task_id == early, 20).origin == "opcua:" + url
    late = plc_call(setup, "plc01", "report", "report-s", 32)
    gw.get(gw.requests, lambda r: r.task_id == late, 10)


def test_missing_pki_files_fail_configure(tmp_path):
    pki = make_lab_pki(tmp_path / "pki", ["plc01"], [], pbkdf2_iterations=1_000)  # no client enrolled
    node = start_ingress({"endpoints": ["opc.tcp://127.0.0.1:1/aigc/"], "pki_dir": str(pki.root), "autostart": True},
                         random.randint(100, 230), tmp_path)
    try:
        out, _ = node.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        node.kill()
        out, _ = node.communicate(timeout=5)
        raise AssertionError("the node did not exit after a failed configure:\n" + out[-3000:])
    assert node.returncode != 0, out[-3000:]
    lines = [ln for ln in out.splitlines() if "Refusing to configure" in ln]
    assert len(lines) == 1, out[-3000:]
    assert f"client certificate '{pki.root / 'clients' / 'gateway' / 'cert.der'}' does not exist" in lines[0]


def test_the_ingress_starts_after_the_publishers_are_enabled_and_they_are_made_once(tmp_path, monkeypatch):
    """The ingress used to start before ``super().on_activate`` enabled the lifecycle publishers: a
    request handed over in that window was dropped, and the ingress never hands a request over twice.
    And every activation made another set of publishers."""
    import rclpy
    from rclpy.context import Context
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from aigc_offload.deployment import REQUEST_TOPIC
    from aigc_offload.opcua_ingress_node import OpcuaIngressNode
    from opcua_devices.ingress import OpcuaIngress

    pki = make_lab_pki(tmp_path / "pki", ["plc01"], ["gateway"], pbkdf2_iterations=1_000)
    enabled_at_start: list[bool] = []
    real_start = OpcuaIngress.start

    def start(ingress, *args, **kwargs):
        enabled_at_start.append(node._req_pub.is_activated)
        return real_start(ingress, *args, **kwargs)

    monkeypatch.setattr(OpcuaIngress, "start", start)
    ctx = Context()
    rclpy.init(context=ctx, domain_id=random.randint(100, 230))
    node = None
    try:
        node = OpcuaIngressNode(context=ctx, start_parameter_services=False, parameter_overrides=[
            Parameter("endpoints", value=[f"opc.tcp://127.0.0.1:{free_ports(1)[0]}/aigc/"]),  # nobody there
            Parameter("pki_dir", value=str(pki.root))])
        ok = TransitionCallbackReturn.SUCCESS

        def publishers() -> int:
            return sum(p.topic_name == REQUEST_TOPIC for p in node.publishers)

        assert node.trigger_configure() == ok
        for _ in range(2):
            assert node.trigger_activate() == ok
            assert node.trigger_deactivate() == ok
        assert enabled_at_start == [True, True] and publishers() == 1
        assert node.trigger_cleanup() == ok and publishers() == 0
        node.set_parameters([Parameter("diagnostics_period_s", value=-1.0)])
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE  # not an exception in on_activate
    finally:
        if node is not None:
            node.release()
            node.destroy_node()
        rclpy.try_shutdown(context=ctx)
