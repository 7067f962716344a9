"""HotPath (aigc_offload/hot_path.py): subscriptions, services and clients served by one thread over
a fixed wait set, on a private ROS domain of this process."""

from __future__ import annotations

import importlib.util
import random
import threading
import time

import pytest

ROS_OK = (importlib.util.find_spec("rclpy") is not None
          and importlib.util.find_spec("aigc_offload_interfaces") is not None
          and importlib.util.find_spec("aigc_offload") is not None)
pytestmark = pytest.mark.skipif(not ROS_OK, reason="ROS 2 wheels / interfaces / aigc_offload not installed")


def wait_until(pred, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


@pytest.fixture()
def ros():
    from test_edge_stack import RosHarness

    h = RosHarness(random.randint(100, 230))
    yield h
    h.close()


def test_subscription_takes_every_message_in_order_and_survives_a_failing_callback(ros):
    from aigc_offload.hot_path import HotPath
    from aigc_offload_interfaces.msg import Decision

    got: list[str] = []
    threads: set[str] = set()

    def on_msg(m):
        threads.add(threading.current_thread().name)
        if m.task_id == "bad":
            raise ValueError("a malformed task")
        got.append(m.task_id)

    hot = HotPath(ros.node)
    hot.subscribe(Decision, "/test_hot_sub", on_msg, 1000)
    hot.start()
    try:
        pub = ros.node.create_publisher(Decision, "/test_hot_sub", 1000)
        assert wait_until(lambda: pub.get_subscription_count() == 1)
        ids = [f"t{i}" for i in range(150)]
        for i, tid in enumerate(ids):  # more than one TAKE_BURST, with a failing one in the middle
            pub.publish(Decision(task_id=tid))
            if i == 70:
                pub.publish(Decision(task_id="bad"))
        assert wait_until(lambda: len(got) == len(ids)), f"{len(got)} of {len(ids)} delivered"
        assert got == ids
        assert hot.errors == 1
        assert threads == {hot.node.get_name()}  # callbacks run on the hot path's own thread
        with pytest.raises(RuntimeError, match="before start"):
            hot.subscribe(Decision, "/late", on_msg, 10)
    finally:
        hot.stop()
    assert hot.node is None


def test_service_answers_and_client_futures_complete_on_the_hot_thread(ros):
    from aigc_offload.hot_path import HotPath
    from aigc_offload_interfaces.msg import TaskRequest
    from aigc_offload_interfaces.srv import SubmitTask

    def on_submit(req, resp):
        if req.task.task_id == "boom":
            raise RuntimeError("server bug")
        resp.accepted = req.task.task_id.startswith("ok")
        resp.reason = f"seen {req.task.task_id}"
        return resp

    server = HotPath(ros.node, "srv")
    server.serve(SubmitTask, "/test_hot/submit_task", on_submit)
    caller = HotPath(ros.node, "cli")
    cli = caller.client(SubmitTask, "/test_hot/submit_task")
    server.start()
    caller.start()
    try:
        assert cli.wait_for_service(timeout_sec=10.0)
        done_on: list[str] = []
        futs = []
        for tid in ("ok1", "no2", "ok3"):
            f = cli.call_async(SubmitTask.Request(task=TaskRequest(task_id=tid)))
            f.add_done_callback(lambda _f: done_on.append(threading.current_thread().name))
            futs.append(f)
        assert wait_until(lambda: all(f.done() for f in futs))
        assert [(f.result().accepted, f.result().reason) for f in futs] == [
            (True, "seen ok1"), (False, "seen no2"), (True, "seen ok3")]
        assert set(done_on) <= {caller.node.get_name(), threading.current_thread().name}
        # A failing service callback is logged and sends nothing: the caller's request stays unanswered
        # (the gateway's hand-off times out and fails the task), and the server goes on serving.
        boom = cli.call_async(SubmitTask.Request(task=TaskRequest(task_id="boom")))
        after = cli.call_async(SubmitTask.Request(task=TaskRequest(task_id="ok4")))
        assert wait_until(lambda: after.done())
        assert not boom.done() and server.errors == 1
        assert after.result().reason == "seen ok4"
    finally:
        t0 = time.monotonic()
        caller.stop()
        server.stop()
        assert time.monotonic() - t0 < 2.0  # the guard condition wakes the wait at once


def test_a_reply_that_cannot_be_sent_is_logged_and_the_next_request_is_served(ros):
    """``send_response`` was outside the callback's try: a callback returning a wrong object (or an
    RCLError "failed to send response") ended the thread, and every service of the node went dead."""
    from aigc_offload.hot_path import HotPath
    from aigc_offload_interfaces.msg import TaskRequest
    from aigc_offload_interfaces.srv import SubmitTask

    def on_submit(req, resp):
        if req.task.task_id == "wrong":
            return "not a SubmitTask.Response"
        resp.accepted = True
        resp.reason = f"seen {req.task.task_id}"
        return resp

    server = HotPath(ros.node, "srv2")
    server.serve(SubmitTask, "/test_hot2/submit_task", on_submit)
    caller = HotPath(ros.node, "cli2")
    cli = caller.client(SubmitTask, "/test_hot2/submit_task")
    server.start()
    caller.start()
    try:
        assert cli.wait_for_service(timeout_sec=10.0)
        first = cli.call_async(SubmitTask.Request(task=TaskRequest(task_id="ok0")))
        assert wait_until(first.done)  # matched: the next replies are not lost to discovery
        wrong = cli.call_async(SubmitTask.Request(task=TaskRequest(task_id="wrong")))
        after = cli.call_async(SubmitTask.Request(task=TaskRequest(task_id="ok1")))
        assert wait_until(after.done), "the hot path stopped serving after a reply it could not send"
        assert after.result().reason == "seen ok1"
        assert not wrong.done() and server.errors == 1 and server._thread.is_alive()
    finally:
        caller.stop()
        server.stop()
