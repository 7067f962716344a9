"""The MQTT bridge node over real mosquitto and real DDS: a device's request reaches
/aigc/task_request, the gateway's decision and terminal result reach the device, the device's own
run comes back as an execution result (part whole / local), bad payloads get error replies and
the bridge keeps working, a wrong password refuses the configure transition, and the request ->
ROS latency with its MQTT floor.

The bridge node runs as its own process on a random ROS_DOMAIN_ID (100-230) with discovery on the
host; this process plays the gateway with an rclpy harness. Everything started is stopped.
"""

from __future__ import annotations

import importlib.util
import json
import queue
import random
import time
import uuid

import pytest
from ros_env import ros_child_env

ROS_OK = all(importlib.util.find_spec(m) is not None for m in ("rclpy", "aigc_offload_interfaces", "aigc_offload",
                                                                "paho"))
pytestmark = pytest.mark.skipif(not ROS_OK, reason="rclpy / interfaces / aigc_offload / paho-mqtt not installed")

from mqtt_bridge.topics import Channel, DeviceAddress  # noqa: E402

CAM = DeviceAddress("s1", "l2", "cam01")
CAM_EXEC = DeviceAddress("s1", "l2", "cam02")
CAM_BAD = DeviceAddress("s2", "l1", "cam03")
BENCH = DeviceAddress("bench", "l1", "cam-bench")
CAM_LOCAL = DeviceAddress("s9", "l1", "cam09")  # served by the in-process bridge node (site s9 only)


def make_request(device: str, **kw):
    from mqtt_bridge.schemas import TaskRequest, utc_now

    fields = dict(task_id=f"{device}-{uuid.uuid4().hex[:8]}", device_id=device, task_kind="defect_image",
                  model_name="defect-m", input_bits=4_000_000, denoising_steps=12, deadline_s=5.0,
                  created_at=utc_now(), prompt="scratch on brushed aluminium")
    fields.update(kw)
    return TaskRequest(**fields)


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Gateway:
    """The test's stand-in for the edge gateway: sees requests and execution results, publishes
    decisions and terminal results."""

    def __init__(self, domain_id: int):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        from aigc_offload.deployment import DECISION_TOPIC, EXECUTION_RESULT_TOPIC, REQUEST_TOPIC, RESULT_TOPIC
        from aigc_offload_interfaces.msg import Decision, TaskRequest, TaskResult

        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node(f"gw_{uuid.uuid4().hex[:6]}", context=self.ctx)
        self.requests: dict[str, queue.Queue] = {}
        self.executions: queue.Queue = queue.Queue()
        self.req_sub = self.node.create_subscription(TaskRequest, REQUEST_TOPIC, self._on_request, 1000)
        self.exec_sub = self.node.create_subscription(TaskResult, EXECUTION_RESULT_TOPIC, self.executions.put, 100)
        self.decision_pub = self.node.create_publisher(Decision, DECISION_TOPIC, 100)
        self.result_pub = self.node.create_publisher(TaskResult, RESULT_TOPIC, 100)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        import threading

        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_request(self, msg) -> None:
        self.requests.setdefault(msg.task_id, queue.Queue()).put(msg)

    def request(self, task_id: str, timeout: float = 5.0):
        wait_for(lambda: task_id in self.requests, timeout, f"TaskRequest {task_id} on ROS")
        return self.requests[task_id].get(timeout=timeout)

    def connected(self) -> bool:
        return (self.req_sub.get_publisher_count() > 0 and self.exec_sub.get_publisher_count() > 0
                and self.decision_pub.get_subscription_count() > 0 and self.result_pub.get_subscription_count() > 0)

    def decide(self, task_id: str, target_kind: int, *, target_id: str = "", share: float = 1.0, model="defect-m"):
        from aigc_offload.messages import to_time
        from aigc_offload_interfaces.msg import Decision

        self.decision_pub.publish(Decision(
            task_id=task_id, target_kind=target_kind, target_index=1 if target_id else -1, target_id=target_id,
            offload_share=share, download_model=False, model_name=model, policy_name="test-policy v1",
            decision_latency_us=12.0, decided_at=to_time(time.time())))

    def finish(self, req, state: int = 0, *, reason: str = "", executed_on: str = "edge:edge1", output: bytes = b""):
        from aigc_offload.messages import from_time, result_msg

        self.result_pub.publish(result_msg(req.task_id, req.device_id, req.origin, state, reason,
                                           created_at_s=from_time(req.created_at), executed_on=executed_on,
                                           output=output, output_mime="image/png" if output else ""))

    def execution(self, task_id: str, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while True:
            msg = self.executions.get(timeout=max(0.01, deadline - time.monotonic()))
            if msg.task_id == task_id:
                return msg

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """mosquitto + the bridge node process + the gateway harness, on one random domain."""
    from mqtt_bridge.bench_ros import prime, start_bridge_node, stop_process
    from mqtt_bridge.broker import MosquittoBroker, require_tools

    try:
        require_tools()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    tmp = tmp_path_factory.mktemp("mqtt_ros")
    domain = random.randint(100, 230)
    broker = MosquittoBroker(tmp / "mosq", devices=[CAM, CAM_EXEC, CAM_BAD, BENCH, CAM_LOCAL])
    broker.start()
    proc = gw = None
    try:
        proc = start_bridge_node(broker, domain, tmp, env=ros_child_env(domain))
        gw = Gateway(domain)
        try:
            wait_for(gw.connected, 20, "discovery between the bridge node and the gateway harness")
        except AssertionError:
            if proc.poll() is not None:
                raise AssertionError(f"bridge node exited: {proc.communicate()[0]}") from None
            raise
        prime(broker, gw.requests)  # the bridge's publisher has matched the harness's subscriber
        yield type("Stack", (), dict(broker=broker, gw=gw, proc=proc, domain=domain, tmp=tmp))
    finally:
        if gw is not None:
            gw.close()
        if proc is not None:
            rc, log = stop_process(proc)
            print(log[-3000:])
        broker.close()


@pytest.fixture
def devices(stack):
    started = []

    def start(address, **kw):
        from mqtt_bridge.client import DeviceClient

        dev = DeviceClient(stack.broker.settings(address.device, session_expiry_s=30), address,
                           client_id=f"{address.device}-{uuid.uuid4().hex[:6]}", **kw)
        started.append(dev)
        dev.start()
        return dev

    yield start
    for d in reversed(started):
        try:
            d.stop()
        except Exception:
            pass


@pytest.fixture
def local_node(stack):
    """A bridge node in this process on its own random ROS domain, configured against the stack's
    broker for site s9 only (the bridge process keeps the other sites), so a test can drive its
    handlers at a chosen moment. Returns the configured node (connected, paused); stopped after."""
    import rclpy
    from rclpy.context import Context
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from aigc_offload import mqtt_bridge_node as mbn

    tag = uuid.uuid4().hex[:6]
    pw = stack.tmp / f"local-{tag}.password"
    pw.write_text(stack.broker.password("bridge") + "\n")
    params = dict(host=stack.broker.host, port=stack.broker.tls_port, tls=True, ca_file=str(stack.broker.ca_file),
                  password_file=str(pw), site=CAM_LOCAL.site, bridge_id=f"local-{tag}")
    ctx = Context()
    rclpy.init(context=ctx, domain_id=random.randint(150, 230))
    node = mbn.MqttBridgeNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS and node.bridge is not None
        yield node
    finally:
        node._teardown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)


def subscribed(dev) -> bool:
    return dev.connected.is_set() and not dev._sub_mids  # every SUBACK seen


def test_request_reaches_ros_and_decision_and_result_reach_the_device(stack, devices):
    from aigc_offload.messages import from_time
    from aigc_offload_interfaces.msg import Decision, TaskRequest, TaskResult

    dev = devices(CAM)
    req = make_request(CAM.device)
    handle = dev.submit(req)
    msg = stack.gw.request(req.task_id)
    assert (msg.device_id, msg.origin, msg.model_name) == ("cam01", "mqtt:s1/l2/cam01", "defect-m")
    assert msg.task_kind == TaskRequest.TASK_DEFECT_IMAGE and msg.device_kind == TaskRequest.DEVICE_CAMERA
    assert (msg.input_bits, msg.denoising_steps, msg.output_tokens) == (4_000_000, 12, 0)
    assert msg.deadline_s == 5.0 and msg.prompt == "scratch on brushed aluminium"
    assert abs(from_time(msg.created_at) - req.created_at.timestamp()) < 1e-6

    stack.gw.decide(req.task_id, Decision.TARGET_EDGE, target_id="edge1", share=1.0)
    dec = handle.decision.result(5)
    assert (dec.task_id, dec.target.value, dec.edge_server, dec.offload_share) == (req.task_id, "edge", "edge1", 1.0)
    assert dec.policy == "test-policy v1" and dec.model_name == "defect-m" and dec.download_model is False
    assert abs((dec.decided_at.timestamp()) - time.time()) < 5

    stack.gw.finish(msg, TaskResult.DONE, output=b"\x89PNG" + b"x" * 96)
    res = handle.result.result(5)
    assert (res.state.value, res.executed_on, res.output_bits) == ("done", "edge:edge1", 800)
    assert res.latency_s is not None and res.latency_s >= 0

    # a report task, rejected by the gateway: the reason reaches the device
    req2 = make_request(CAM.device, task_kind="report", model_name="report-s", denoising_steps=None,
                        output_tokens=300, prompt=None)
    h2 = dev.submit(req2)
    m2 = stack.gw.request(req2.task_id)
    assert m2.task_kind == TaskRequest.TASK_REPORT and (m2.output_tokens, m2.denoising_steps, m2.prompt) == (300, 0, "")
    stack.gw.finish(m2, TaskResult.REJECTED, reason="no edge server can meet the deadline", executed_on="")
    r2 = h2.result.result(5)
    assert r2.state.value == "rejected" and "deadline" in r2.reason


def test_device_runs_its_share_and_reports_the_execution(stack, devices):
    from aigc_offload_interfaces.msg import Decision, TaskResult

    dev = devices(CAM_EXEC, executor=True, time_scale=0.05)
    # target device: the whole task on the device
    req = make_request(CAM_EXEC.device, denoising_steps=4)
    handle = dev.submit(req)
    msg = stack.gw.request(req.task_id)
    stack.gw.decide(req.task_id, Decision.TARGET_LOCAL, share=0.0)
    assert handle.decision.result(5).target.value == "device"
    report = handle.execution.result(10)
    assert report.part.value == "whole" and report.state.value == "done" and report.compute_s > 0
    ex = stack.gw.execution(req.task_id)
    assert (ex.part, ex.state, ex.executed_on, ex.device_id, ex.origin) == (
        TaskResult.PART_WHOLE, TaskResult.DONE, "local", "cam02", "mqtt:s1/l2/cam02")
    assert ex.compute_s == pytest.approx(report.compute_s) and ex.energy_j > 0 and ex.latency_s >= report.compute_s
    assert not handle.result.done()  # the device still waits for the one terminal result
    stack.gw.finish(msg, TaskResult.DONE, executed_on="local")
    res = handle.result.result(5)
    assert res.state.value == "done" and res.executed_on == "device"

    # a split: half to edge1, the device runs the other half (part local), for about half the time
    req2 = make_request(CAM_EXEC.device, denoising_steps=4)
    h2 = dev.submit(req2)
    m2 = stack.gw.request(req2.task_id)
    stack.gw.decide(req2.task_id, Decision.TARGET_EDGE, target_id="edge1", share=0.5)
    assert h2.decision.result(5).offload_share == 0.5
    ex2 = stack.gw.execution(req2.task_id)
    assert (ex2.part, ex2.state) == (TaskResult.PART_LOCAL, TaskResult.DONE)
    assert ex2.energy_j == pytest.approx(ex.energy_j / 2, rel=1e-6)
    assert 0.25 * report.compute_s < ex2.compute_s < 0.9 * report.compute_s
    stack.gw.finish(m2, TaskResult.DONE)
    assert h2.result.result(5).state.value == "done"

    # offloaded entirely: the device runs nothing
    req3 = make_request(CAM_EXEC.device)
    h3 = dev.submit(req3)
    stack.gw.request(req3.task_id)
    stack.gw.decide(req3.task_id, Decision.TARGET_CLOUD, share=1.0)
    assert h3.decision.result(5).target.value == "cloud"
    assert h3.execution.cancelled()


def test_bad_payloads_get_error_replies_and_the_bridge_keeps_working(stack, devices):
    from mqtt_bridge.schemas import ErrorCode, ErrorReply, utc_now

    dev = devices(CAM_BAD)

    def next_error():
        while True:
            item = dev.unmatched.get(timeout=5)
            if isinstance(item, ErrorReply):
                return item

    dev.publish_raw(CAM_BAD.topic(Channel.request), b'{"task_id": "x1", oops', wait_s=3)
    err = next_error()
    assert err.code == ErrorCode.malformed_json and "not valid JSON" in err.reason
    bad = json.loads(make_request(CAM_BAD.device, task_id="x2").to_json()) | {"deadline_s": 0}
    dev.publish_raw(CAM_BAD.topic(Channel.request), json.dumps(bad).encode(), wait_s=3)
    err = next_error()
    assert err.code == ErrorCode.schema_violation and err.task_id == "x2" and "deadline_s" in err.reason
    unknown = json.loads(make_request(CAM_BAD.device, task_id="x3").to_json()) | {"model_name": "gpt-x"}
    dev.publish_raw(CAM_BAD.topic(Channel.request), json.dumps(unknown).encode(), wait_s=3)
    err = next_error()
    assert err.code == ErrorCode.unknown_model and "defect-m" in err.reason  # the preset's models
    # execution reports that violate the schema: failed without a reason, a negative compute time
    for payload, needle in (
            ({"task_id": "x4", "device_id": "cam03", "part": "whole", "state": "failed", "compute_s": 0.1,
              "finished_at": utc_now().isoformat()}, "needs a reason"),
            ({"task_id": "x5", "device_id": "cam03", "part": "remote", "state": "done", "compute_s": -1,
              "finished_at": utc_now().isoformat()}, "compute_s")):
        dev.publish_raw(CAM_BAD.topic(Channel.execution), json.dumps(payload).encode(), wait_s=3)
        err = next_error()
        assert err.code == ErrorCode.schema_violation and "ExecutionReport" in err.reason, err
        assert needle in err.reason and err.task_id == payload["task_id"]
        assert err.topic == CAM_BAD.topic(Channel.execution)
    # still bridging
    req = make_request(CAM_BAD.device)
    dev.submit(req)
    assert stack.gw.request(req.task_id).origin == "mqtt:s2/l1/cam03"
    assert stack.proc.poll() is None


def test_a_result_the_device_schema_cannot_hold_still_ends_the_task(stack, devices):
    """A gateway result whose output_uri is longer than the device schema allows is truncated (as the OPC UA
    ingress does); one that still cannot be converted (a NaN latency) reaches the device as failed, with
    the reason: the bridge forgot the task on taking the result, so the device would never hear its end."""
    from aigc_offload.messages import from_time, result_msg
    from aigc_offload_interfaces.msg import TaskResult

    dev = devices(CAM)
    uri = "https://edge1.factory.example/out/" + "x" * 3000
    for tweak in ("long_uri", "nan_latency"):
        req = make_request(CAM.device)
        handle = dev.submit(req)
        m = stack.gw.request(req.task_id)
        out = result_msg(m.task_id, m.device_id, m.origin, TaskResult.DONE, "",
                         created_at_s=from_time(m.created_at), executed_on="edge:edge1")
        if tweak == "long_uri":
            out.output_uri = uri
        else:
            out.latency_s = float("nan")
        stack.gw.result_pub.publish(out)
        res = handle.result.result(5)
        if tweak == "long_uri":
            assert res.state.value == "done" and res.output_uri == uri[:2048] and res.executed_on == "edge:edge1"
        else:
            assert res.state.value == "failed" and "could not be converted" in res.reason, res
            assert "latency_s" in res.reason and len(res.reason) <= 1024
    assert stack.proc.poll() is None


def test_wrong_password_or_unreachable_broker_refuses_configure_and_exits_nonzero(stack):
    from mqtt_bridge.bench_ros import start_bridge_node, stop_process
    from mqtt_bridge.broker import free_port

    wrong = start_bridge_node(stack.broker, stack.domain, stack.tmp, name="bad_pw", password="not-the-password",
                              env=ros_child_env(stack.domain))
    away = start_bridge_node(stack.broker, stack.domain, stack.tmp, name="no_broker", port=free_port(),
                             connect_timeout_s=1.0, env=ros_child_env(stack.domain))
    try:
        for p in (wrong, away):
            p.wait(30)
    finally:
        results = [stop_process(p) for p in (wrong, away)]
    (rc1, log1), (rc2, log2) = results
    assert rc1 != 0 and rc2 != 0, (log1, log2)
    refused = [line for line in log1.splitlines() if "Refusing to configure" in line]
    assert len(refused) == 1 and "refused user 'bridge'" in refused[0], log1
    assert "not-the-password" not in log1
    assert sum("Refusing to configure" in line for line in log2.splitlines()) == 1 and "not reachable" in log2, log2


def test_latency_mqtt_request_to_ros_task_request(stack):
    """Request published at the device -> TaskRequest seen on ROS, ~200/s, with the MQTT floor."""
    from mqtt_bridge.bench import measure_bare_echo
    from mqtt_bridge.bench_ros import CAM as BENCH_CAM
    from mqtt_bridge.bench_ros import RosSide, measure_request_to_ros, prime

    assert BENCH_CAM == BENCH
    ros = RosSide(stack.domain)
    try:
        wait_for(lambda: ros.sub.get_publisher_count() > 0, 20, "bridge publisher")
        prime(stack.broker, ros.seen)
        m = measure_request_to_ros(stack.broker, ros, n=300, rate_per_s=200.0)
    finally:
        ros.close()
    floor = measure_bare_echo(stack.broker, n=200)
    print(f"\nMQTT request -> ROS TaskRequest: p50 {m['p50_ms']:.3f} ms, p99 {m['p99_ms']:.3f} ms "
          f"({m['answered']}/{m['sent']} at {m['rate_per_s']}/s); floor (bare QoS 1 echo RTT): "
          f"p50 {floor['p50_ms']:.3f} ms, p99 {floor['p99_ms']:.3f} ms")
    assert m["answered"] == m["sent"]  # nothing lost


def test_remembered_tasks_expire_in_time_order_and_settled_ones_are_not_counted(stack, devices, local_node,
                                                                                   monkeypatch):
    """The bridge forgets a task once its deadline plus task_retention_s has passed, popping expiries in time
    order (not scanning every remembered task under the lock); a task settled or replaced before is not
    expired again. A task forgotten that way never saw a terminal state (no gateway active, or one that
    lost it): the device gets deadline_missed with the reason, never silence."""
    from aigc_offload import mqtt_bridge_node as mbn

    dev = devices(CAM_LOCAL)
    wait_for(lambda: subscribed(dev), 5, "the device's subscriptions")
    node, addr = local_node, CAM_LOCAL
    a, b, c = mbn._Task(addr, 0.0, 30.0), mbn._Task(addr, 0.0, 10.0), mbn._Task(addr, 0.0, 20.0)
    for tid, t in (("a", a), ("b", b), ("c", c)):
        assert node._remember(tid, t) is None
    with node._lock:
        del node._tasks["c"]  # settled by its terminal result
    monkeypatch.setattr(mbn.time, "time", lambda: 15.0)
    node._expire()
    assert list(node._tasks) == ["a"] and node.counters["expired"] == 1
    node._remember("b", mbn._Task(addr, 0.0, 40.0))  # the id again, later: the old expiry does not touch it
    monkeypatch.setattr(mbn.time, "time", lambda: 35.0)
    node._expire()
    assert list(node._tasks) == ["b"] and node.counters["expired"] == 2
    monkeypatch.setattr(mbn.time, "time", lambda: 41.0)
    node._expire()
    assert not node._tasks and node.counters["expired"] == 3 and not node._expiries
    monkeypatch.undo()
    got = [dev.unmatched.get(timeout=5) for _ in range(3)]
    assert [(r.task_id, r.state.value, r.finished_at.timestamp()) for r in got] == [
        ("b", "deadline_missed", 15.0), ("a", "deadline_missed", 35.0), ("b", "deadline_missed", 41.0)]
    assert all("no terminal state arrived from the gateway" in r.reason for r in got), got[0].reason
    assert got[1].latency_s == 35.0 and got[0].device_id == CAM_LOCAL.device
    with pytest.raises(queue.Empty):
        dev.unmatched.get(timeout=0.5)  # nothing for the settled task c


def test_request_a_dispatcher_takes_while_the_bridge_stops_gets_an_unavailable_reply(stack, devices, local_node):
    """Deactivate stops the BridgeClient; a request or execution report its dispatcher took from the hand-off
    queue in that moment is no longer queued (stop()'s replies miss it), so the handler itself must answer it.
    Deterministic: the handlers run from inside BridgeClient.stop(), as a dispatcher finishing its callback
    does while stop() joins it."""
    from mqtt_bridge.client import IncomingExecution, IncomingRequest
    from mqtt_bridge.schemas import ErrorCode, ErrorReply, ExecutionReport, utc_now
    from rclpy.lifecycle import TransitionCallbackReturn

    dev = devices(CAM_LOCAL)
    wait_for(lambda: subscribed(dev), 5, "the device's subscriptions")
    node = local_node
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    bridge = node.bridge
    req = make_request(CAM_LOCAL.device)
    rep = ExecutionReport(task_id=req.task_id, device_id=CAM_LOCAL.device, part="whole", state="done",
                          compute_s=0.1, finished_at=utc_now())
    stop = bridge.stop

    def stop_with_a_callback_in_flight():
        node._on_mqtt_request(IncomingRequest(req, CAM_LOCAL, CAM_LOCAL.topic(Channel.request)))
        node._on_mqtt_execution(IncomingExecution(rep, CAM_LOCAL, CAM_LOCAL.topic(Channel.execution)))
        stop()

    bridge.stop = stop_with_a_callback_in_flight
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node.bridge is None
    errors = []
    while len(errors) < 2:
        item = dev.unmatched.get(timeout=5)
        if isinstance(item, ErrorReply):
            errors.append(item)
    assert {(e.task_id, e.code, e.topic) for e in errors} == {
        (req.task_id, ErrorCode.unavailable, CAM_LOCAL.topic(Channel.request)),
        (req.task_id, ErrorCode.unavailable, CAM_LOCAL.topic(Channel.execution))}
    assert all("send" in e.reason and "again" in e.reason for e in errors)
    assert req.task_id not in node._tasks and node.counters["handoff_failures"] == 1


def test_execution_report_the_ros_side_could_not_take_is_accepted_when_sent_again(stack, devices, local_node):
    """A report the node cannot publish on ROS gets 'unavailable ... send again', and the bridge forgets
    it: the same report sent again is taken, not dropped as a redelivery."""
    from mqtt_bridge.schemas import ErrorCode, ErrorReply
    from rclpy.lifecycle import TransitionCallbackReturn

    dev = devices(CAM_LOCAL)
    wait_for(lambda: subscribed(dev), 5, "the device's subscriptions")
    node = local_node
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    real, sent = node._exec_pub, []

    class FailsOnce:
        def publish(self, msg):
            if not sent:
                sent.append("refused")
                raise RuntimeError("middleware hiccup")
            sent.append(msg.task_id)
            real.publish(msg)

    node._exec_pub = FailsOnce()
    report = json.dumps({"task_id": "x-again", "device_id": CAM_LOCAL.device, "part": "whole", "state": "done",
                         "compute_s": 0.1, "finished_at": "2025-06-01T08:30:00Z"}).encode()
    dev.publish_raw(CAM_LOCAL.topic(Channel.execution), report, wait_s=3)
    err = dev.unmatched.get(timeout=5)
    assert isinstance(err, ErrorReply) and err.code == ErrorCode.unavailable and "middleware hiccup" in err.reason
    dev.publish_raw(CAM_LOCAL.topic(Channel.execution), report, wait_s=3)
    wait_for(lambda: node.counters["executions"] == 1, 5, "the report sent again taken")
    assert sent == ["refused", "x-again"]
