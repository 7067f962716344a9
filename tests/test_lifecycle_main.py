"""``lifecycle_main.spin_until_shutdown``: a signal that shuts the context down while the executor
builds its next wait set makes rclpy raise RCLError (CI: an edge server exited 1 on SIGTERM); that is a
shutdown, while an RCLError with the context still alive is a real error and propagates.

Transitions: an exception in a transition callback is logged (rclpy 9.1.2 swallows it) and an
autostarted node that cannot configure or activate exits 1. The edge gateway's lifecycle over real
DDS (its own process on a random ROS_DOMAIN_ID, stopped here): a bad period refuses to configure; a
deactivation ends every task in flight with a terminal result; a result with an unknown state is
ignored with a warning and the task is still ended by the sweep."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import time

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("rclpy") is None, reason="rclpy not installed")


class _RacingExecutor:
    """Stands in for the executor at the racy moment: the context goes down (as the signal handler
    does), then building the wait set fails."""

    def __init__(self, context, shut_down_first: bool):
        self.context, self.shut_down_first = context, shut_down_first

    def spin(self) -> None:
        from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

        if self.shut_down_first:
            self.context.try_shutdown()
        raise _rclpy.RCLError("failed to initialize wait set: the given context is not valid")


def _context():
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx)
    return ctx


def test_rclerror_after_the_context_shut_down_is_a_clean_shutdown():
    from aigc_offload.lifecycle_main import spin_until_shutdown

    ctx = _context()
    spin_until_shutdown(_RacingExecutor(ctx, shut_down_first=True), ctx)  # returns, no exception
    assert not ctx.ok()


def test_rclerror_with_the_context_alive_propagates():
    from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

    from aigc_offload.lifecycle_main import spin_until_shutdown

    ctx = _context()
    try:
        with pytest.raises(_rclpy.RCLError):
            spin_until_shutdown(_RacingExecutor(ctx, shut_down_first=False), ctx)
    finally:
        ctx.try_shutdown()


def test_a_real_executor_returns_once_its_context_is_shut_down():
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from aigc_offload.lifecycle_main import spin_until_shutdown

    ctx = _context()
    node = rclpy.create_node("spin_until_shutdown_probe", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    node.create_timer(0.01, ctx.try_shutdown)  # the signal handler's part, from a callback
    spin_until_shutdown(ex, ctx)
    assert not ctx.ok()
    node.destroy_node()


# -- transition errors and autostart -----------------------------------------------------------------
def test_an_exception_in_a_transition_is_logged_and_an_autostart_that_cannot_activate_exits_1(monkeypatch, capfd):
    """As the gateway with ``diagnostics_period_s:=-1`` did: its timer could not be made in on_activate,
    rclpy turned the exception into ERROR without a word, autostart ignored it, and the node sat
    unconfigured until SIGTERM and exited 0."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import LifecycleNode

    from aigc_offload.lifecycle_main import Autostart, run_node

    class CannotActivate(Autostart, LifecycleNode):
        def __init__(self):
            super().__init__("cannot_activate_probe")
            self.declare_parameter("autostart", False)
            self.setup_autostart()
            self.create_timer(10.0, self.context.try_shutdown)  # the signal's part, for a node that never exits

        def on_activate(self, state):
            self.create_timer(-1.0, lambda: None)

    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randint(100, 230)))
    t0 = time.monotonic()
    rc = run_node(CannotActivate, SingleThreadedExecutor, ["probe", "--ros-args", "-p", "autostart:=true"])
    out = "".join(capfd.readouterr())
    assert rc == 1, out
    assert time.monotonic() - t0 < 8.0, out
    assert "Could not activate: RCLError: failed to create timer: timer period must be non-negative" in out, out
    assert "Autostart: the node could not activate; exiting with status 1." in out, out


# -- the edge gateway's lifecycle over real DDS ---------------------------------------------------------
ROS_OK = (importlib.util.find_spec("rclpy") is not None
          and importlib.util.find_spec("aigc_offload_interfaces") is not None
          and importlib.util.find_spec("aigc_offload") is not None)
needs_graph = pytest.mark.skipif(not ROS_OK, reason="ROS 2 wheels / interfaces / aigc_offload not installed")


@needs_graph
def test_gateway_with_a_negative_period_refuses_to_configure_and_exits_1(tmp_path):
    from test_edge_stack import start_node

    gw = start_node("edge_gateway", "edge_gateway", {"preset": "factory", "num_edge_servers": 2, "policy": "local",
                                                    "diagnostics_period_s": -1.0, "autostart": True},
                    random.randint(100, 230), tmp_path)
    try:
        log, _ = gw.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        gw.kill()
        log, _ = gw.communicate(timeout=5)
        raise AssertionError("the gateway did not exit after it could not start:\n" + log[-3000:]) from None
    assert gw.returncode == 1, log[-3000:]
    lines = [ln for ln in log.splitlines() if "Refusing to configure" in ln]
    assert len(lines) == 1 and "diagnostics_period_s must be a positive, finite number of seconds, got -1.0" in lines[0]
    assert "Autostart: the node could not configure; exiting with status 1." in log and "Traceback" not in log


@needs_graph
def test_gateway_ends_every_task_through_a_bad_result_a_bad_deadline_and_a_deactivation(tmp_path):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from test_edge_stack import RosHarness, request_msg, start_node, stop_nodes

    from aigc_offload.deployment import (DECISION_TOPIC, EXECUTION_RESULT_TOPIC, REQUEST_TOPIC, RESULT_TOPIC,
                                         Deployment, draw_plant)
    from aigc_offload.messages import result_msg
    from aigc_offload_interfaces.msg import Decision, TaskRequest, TaskResult

    domain = random.randint(100, 230)
    device = draw_plant(Deployment(preset="factory", num_edge_servers=2)).devices[0].device_id  # seed 0, as the node
    gw = start_node("edge_gateway", "edge_gateway", {"preset": "factory", "num_edge_servers": 2, "policy": "local",
                                                    "result_grace_s": 0.2, "autostart": True}, domain, tmp_path)
    ros = RosHarness(domain)
    results: dict[str, list[TaskResult]] = {}
    decided: set[str] = set()

    def wait(pred, timeout_s: float = 15.0) -> bool:
        end = time.monotonic() + timeout_s
        while not pred() and time.monotonic() < end:
            time.sleep(0.02)
        return pred()

    try:
        n = ros.node
        n.create_subscription(TaskResult, RESULT_TOPIC, lambda m: results.setdefault(m.task_id, []).append(m), 100)
        n.create_subscription(Decision, DECISION_TOPIC, lambda m: decided.add(m.task_id), 100)
        req_pub = n.create_publisher(TaskRequest, REQUEST_TOPIC, 100)
        exec_pub = n.create_publisher(TaskResult, EXECUTION_RESULT_TOPIC, 100)
        change = n.create_client(ChangeState, "/edge_gateway/change_state")
        assert wait(lambda: req_pub.get_subscription_count() > 0 and exec_pub.get_subscription_count() > 0
                    and n.count_publishers(RESULT_TOPIC) > 0, 45.0), "the gateway never became active"

        # an execution result with state 9: ignored with a warning; the sweep still ends the task
        bad = request_msg(device, "report-s", deadline_s=1.0)
        req_pub.publish(bad)
        assert wait(lambda: bad.task_id in decided)
        exec_pub.publish(result_msg(bad.task_id, device, "test", 9, executed_on="local"))
        # deadline_s=inf from a direct publisher (no device schema in front): rejected with the schemas' bound
        endless = request_msg(device, "report-s", deadline_s=float("inf"))
        req_pub.publish(endless)
        assert wait(lambda: bad.task_id in results and endless.task_id in results)
        (r,) = results[bad.task_id]
        assert r.state == TaskResult.DEADLINE_MISSED and "within the 1 s deadline" in r.reason, r.reason
        (r,) = results[endless.task_id]
        assert r.state == TaskResult.REJECTED and r.reason == "deadline_s must be at most 3600 s, got inf"

        # a task in flight when the gateway is deactivated ends, before its publishers go quiet
        open_ = request_msg(device, "report-s", deadline_s=60.0)
        req_pub.publish(open_)
        assert wait(lambda: open_.task_id in decided)
        assert ros.call(change, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE)),
                        20.0).success
        assert wait(lambda: open_.task_id in results, 5.0), "the task in flight got no terminal result"
        (r,) = results[open_.task_id]
        assert (r.state, r.reason) == (TaskResult.FAILED, "the gateway was deactivated")

        # active again: one set of publishers (each activation used to add another)
        assert ros.call(change, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVATE)),
                        20.0).success
        time.sleep(2.0)  # discovery of any publisher made by the activation
        assert n.count_publishers(RESULT_TOPIC) == 1 and n.count_publishers(DECISION_TOPIC) == 1
        again = request_msg(device, "report-s", deadline_s=60.0)
        req_pub.publish(again)
        assert wait(lambda: again.task_id in decided)
        exec_pub.publish(result_msg(again.task_id, device, "test", TaskResult.DONE, executed_on="local"))
        assert wait(lambda: again.task_id in results) and results[again.task_id][0].state == TaskResult.DONE
    finally:
        ros.close()
        ((rc, log),) = stop_nodes([gw])
    assert rc == 0 and "Traceback" not in log, log[-3000:]
    assert all(len(v) == 1 for v in results.values()), results
    assert (f"Ignored an execution result for task '{bad.task_id}' from 'local': state 9 is none of DONE, "
            "REJECTED, FAILED, DEADLINE_MISSED (0-3).") in log, log[-3000:]
