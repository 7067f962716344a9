"""The per-task streams' QoS (``deployment.task_stream_qos``) over real DDS between two processes.

A publisher process (as the OPC UA ingress or the MQTT bridge publishes requests) sends 20
TaskRequests before any observer exists. An observer process started afterwards subscribes twice:
transient-local (as the factory job's monitor and its MCAP recorder do) and volatile (as the gateway
does). The transient-local subscription must receive the 20 published before it joined; the
volatile one must not (a restarted gateway is never handed old tasks again), and both receive a
request published after they joined.
"""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys

import pytest
from ros_env import ros_child_env

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("aigc_offload_interfaces") is None or importlib.util.find_spec("rclpy") is None,
    reason="ROS 2 interfaces not built in this venv: run scripts/build_ros_interfaces.sh",
)

EARLY = 20

PUBLISHER = r'''
import sys, time
import rclpy
from aigc_offload_interfaces.msg import TaskRequest
from aigc_offload.deployment import REQUEST_TOPIC, task_stream_qos

rclpy.init()
node = rclpy.create_node("early_publisher")
pub = node.create_publisher(TaskRequest, REQUEST_TOPIC, task_stream_qos())
for i in range(int(sys.argv[1])):
    pub.publish(TaskRequest(task_id=f"early-{i}"))
print("published", flush=True)
sys.stdin.readline()  # the observer has joined
pub.publish(TaskRequest(task_id="late-0"))
print("published late", flush=True)
sys.stdin.readline()  # EOF: done
node.destroy_node()
rclpy.shutdown()
'''

OBSERVER = r'''
import json, sys, time
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from aigc_offload_interfaces.msg import TaskRequest
from aigc_offload.deployment import REQUEST_TOPIC, task_stream_qos

early = int(sys.argv[1])
rclpy.init()
node = rclpy.create_node("late_observer")
got = {"transient_local": [], "volatile": []}
tl = node.create_subscription(TaskRequest, REQUEST_TOPIC, lambda m: got["transient_local"].append(m.task_id),
                              task_stream_qos())
vo = node.create_subscription(TaskRequest, REQUEST_TOPIC, lambda m: got["volatile"].append(m.task_id),
                              QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))


def spin_until(cond, timeout_s):
    end = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    return cond()


spin_until(lambda: len(got["transient_local"]) >= early and vo.get_publisher_count() >= 1, 60.0)
spin_until(lambda: False, 0.5)  # anything old the volatile reader would wrongly get arrives now
print(json.dumps({"phase": "joined", **got}), flush=True)
sys.stdin.readline()  # the publisher has sent one more
spin_until(lambda: "late-0" in got["transient_local"] and "late-0" in got["volatile"], 30.0)
print(json.dumps({"phase": "done", **got}), flush=True)
node.destroy_node()
rclpy.shutdown()
'''


def test_late_observer_gets_earlier_tasks_and_the_gateway_style_reader_does_not(tmp_path):
    env = ros_child_env(random.randint(100, 230))
    pub = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(EARLY)], env=env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    obs = None
    try:
        assert pub.stdout.readline().strip() == "published", pub.stderr.read()
        obs = subprocess.Popen([sys.executable, "-c", OBSERVER, str(EARLY)], env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = obs.stdout.readline()
        assert line, obs.stderr.read()
        joined = json.loads(line)
        assert joined["transient_local"] == [f"early-{i}" for i in range(EARLY)], joined
        assert joined["volatile"] == [], joined
        pub.stdin.write("go\n")
        pub.stdin.flush()
        assert pub.stdout.readline().strip() == "published late"
        obs.stdin.write("go\n")
        obs.stdin.flush()
        done = json.loads(obs.stdout.readline())
        assert done["transient_local"][-1] == "late-0" and done["volatile"] == ["late-0"], done
    finally:
        for p in (obs, pub):
            if p is None:
                continue
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
