"""MQTT request -> ROS 2 TaskRequest latency through the bridge node, with the MQTT floor.

Starts a mosquitto (TLS, passwords, ACL) on free ports, the ``aigc_offload.mqtt_bridge_node`` as
its own process on a random ROS_DOMAIN_ID (discovery kept on the host), and in this process a
device (paho, QoS 1, TCP_NODELAY) and an rclpy subscriber on ``/aigc/task_request``. The device
publishes requests at a fixed rate; the latency of one request is the time from just before its
MQTT publish to its TaskRequest callback in this process (one clock). In the same run: the bare
paho QoS 1 echo through the same broker (``mqtt_bridge.bench.measure_bare_echo``), the floor.

    python -m mqtt_bridge.bench_ros [--n 400] [--rate 200] [--json]

Needs rclpy, the aigc_offload_interfaces and aigc_offload packages, and mosquitto.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from .bench import _stats, measure_bare_echo
from .broker import MosquittoBroker
from .schemas import TaskRequest, utc_now
from .topics import Channel, DeviceAddress

CAM = DeviceAddress("bench", "l1", "cam-bench")


def ros_env(domain_id: int) -> dict[str, str]:
    """Environment of a ROS child process: its own domain, discovery on this host only."""
    env = dict(os.environ)
    for var in ("ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS", "FASTRTPS_DEFAULT_PROFILES_FILE",
                "FASTDDS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION", "_ROS_WHEELS_BOOTSTRAP_COMPLETE"):
        env.pop(var, None)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    return env


def start_bridge_node(broker: MosquittoBroker, domain_id: int, workdir: Path, *, name: str = "mqtt_bridge",
                      username: str = "bridge", password: str | None = None, env: dict[str, str] | None = None,
                      **params: Any) -> subprocess.Popen:
    """The bridge node as its own process (autostart), connected to ``broker`` as ``username``."""
    import yaml

    pw = workdir / f"{name}.password"
    pw.write_text((password if password is not None else broker.password(username)) + "\n")
    os.chmod(pw, 0o600)
    p = dict(host=broker.host, port=broker.tls_port, tls=True, ca_file=str(broker.ca_file), username=username,
             password_file=str(pw), bridge_id=name.replace("_", "-"), preset="factory", autostart=True)
    p.update(params)
    pf = workdir / f"{name}.params.yaml"
    pf.write_text(yaml.safe_dump({name: {"ros__parameters": p}}))
    return subprocess.Popen(
        [sys.executable, "-m", "aigc_offload.mqtt_bridge_node", "--ros-args", "-r", f"__node:={name}",
         "--params-file", str(pf)],
        env=env or ros_env(domain_id), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=5)
    return proc.returncode, out


class RosSide:
    """This process's rclpy context on ``domain_id``: a subscriber of the bridge's TaskRequests."""

    def __init__(self, domain_id: int):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        from aigc_offload.deployment import REQUEST_TOPIC
        from aigc_offload_interfaces.msg import TaskRequest as RosTaskRequest

        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node(f"bench_{uuid.uuid4().hex[:6]}", context=self.ctx)
        self.seen: dict[str, float] = {}
        self.all_seen = threading.Event()
        self.expect = 0
        self.sub = self.node.create_subscription(RosTaskRequest, REQUEST_TOPIC, self._on_request, 1000)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_request(self, msg) -> None:
        self.seen[msg.task_id] = time.perf_counter()
        if self.expect and len(self.seen) >= self.expect:
            self.all_seen.set()

    def wait_for_publisher(self, timeout_s: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.sub.get_publisher_count() > 0:
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def prime(broker: MosquittoBroker, seen: Any, timeout_s: float = 20.0, model: str = "defect-s") -> int:
    """Send probe requests from the bench device until one arrives on ROS (``task_id in seen``).

    A subscriber that sees the bridge's publisher does not mean the publisher has matched the
    subscriber yet (DDS discovery is per side); messages published before that are not delivered.
    Returns the number of probes sent."""
    from .client import DeviceClient

    tag = uuid.uuid4().hex[:6]
    dev = DeviceClient(broker.settings(CAM.device, session_expiry_s=10), CAM, client_id=f"bench-prime-{tag}",
                       persistent_session=False)
    dev.start()
    try:
        deadline = time.monotonic() + timeout_s
        i = 0
        while time.monotonic() < deadline:
            tid = f"probe{tag}-{i}"
            dev.publish_raw(CAM.topic(Channel.request), TaskRequest(
                task_id=tid, device_id=CAM.device, task_kind="defect_image", model_name=model, input_bits=1000,
                denoising_steps=5, deadline_s=30.0, created_at=utc_now()).to_json(), qos=1)
            i += 1
            t_end = time.monotonic() + 0.25
            while time.monotonic() < t_end:
                if tid in seen:
                    return i
                time.sleep(0.01)
        raise TimeoutError(f"no probe request reached ROS within {timeout_s:g} s")
    finally:
        dev.stop()


def measure_request_to_ros(broker: MosquittoBroker, ros: RosSide, *, n: int = 400, rate_per_s: float = 200.0,
                           warmup: int = 20, model: str = "defect-s") -> dict[str, Any]:
    """Publish ``warmup + n`` requests at ``rate_per_s`` from one device; p50/p99 of publish -> ROS callback."""
    from .client import DeviceClient

    tag = uuid.uuid4().hex[:6]
    dev = DeviceClient(broker.settings(CAM.device, session_expiry_s=10), CAM, client_id=f"bench-ros-{tag}",
                       persistent_session=False)
    sent: dict[str, float] = {}
    total = warmup + n
    ros.seen.clear()
    ros.all_seen.clear()
    ros.expect = total
    dev.start()
    try:
        topic = CAM.topic(Channel.request)
        payloads = [TaskRequest(task_id=f"br{tag}-{i}", device_id=CAM.device, task_kind="defect_image",
                                model_name=model, input_bits=1000, denoising_steps=5, deadline_s=30.0,
                                created_at=utc_now()).to_json() for i in range(total)]
        t0 = time.perf_counter()
        for i, payload in enumerate(payloads):
            due = t0 + i / rate_per_s
            while (now := time.perf_counter()) < due:
                time.sleep(min(due - now, 0.002))
            sent[f"br{tag}-{i}"] = time.perf_counter()
            dev.publish_raw(topic, payload, qos=1)
        elapsed = time.perf_counter() - t0
        ros.all_seen.wait(10.0)
    finally:
        dev.stop()
    samples = [ros.seen[tid] - t for i, (tid, t) in enumerate(sent.items()) if i >= warmup and tid in ros.seen]
    out: dict[str, Any] = _stats(samples) if samples else {"n": 0}
    out.update(sent=n, answered=len(samples), rate_per_s=round(total / elapsed, 1))
    return out


def run(n: int = 400, rate_per_s: float = 200.0, n_echo: int = 300) -> dict[str, Any]:
    domain = random.randint(100, 230)
    with tempfile.TemporaryDirectory(prefix="aigc-bench-ros-") as tmp, \
            MosquittoBroker(Path(tmp) / "mosq", devices=[CAM]) as broker:
        # the floor first: its echo payloads on the request topic would otherwise load the bridge
        floor = measure_bare_echo(broker, n=n_echo)
        proc = start_bridge_node(broker, domain, Path(tmp))
        ros = RosSide(domain)
        try:
            if not ros.wait_for_publisher():
                raise RuntimeError("the bridge node's /aigc/task_request publisher was not discovered")
            prime(broker, ros.seen)
            res = {"transport": "TLS, MQTT 5, QoS 1", "domain_id": domain,
                   "mqtt_to_ros": measure_request_to_ros(broker, ros, n=n, rate_per_s=rate_per_s),
                   "floor_mqtt_qos1_echo": floor}
        finally:
            ros.close()
            rc, log = stop_process(proc)
        res["node_exit_code"] = rc
        return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mqtt_bridge.bench_ros", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=400, help="requests measured (after 20 warm-up ones)")
    p.add_argument("--rate", type=float, default=200.0, help="requests per second")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    res = run(a.n, a.rate)
    if a.json:
        print(json.dumps(res))
        return 0
    m, f = res["mqtt_to_ros"], res["floor_mqtt_qos1_echo"]
    print(f"MQTT request -> ROS 2 TaskRequest via mosquitto + mqtt_bridge_node ({res['transport']})")
    print(f"  request -> TaskRequest on ROS   p50 {m.get('p50_ms', float('nan')):7.3f} ms  "
          f"p99 {m.get('p99_ms', float('nan')):7.3f} ms  ({m['answered']}/{m['sent']} at {m['rate_per_s']}/s)")
    print(f"  floor: bare QoS 1 echo (RTT)    p50 {f['p50_ms']:7.3f} ms  p99 {f['p99_ms']:7.3f} ms  (n={f['n']})")
    return 0 if m["answered"] == m["sent"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
