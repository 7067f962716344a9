"""The ROS 2 interface package over real DDS between two processes.

Process "server" publishes a TaskRequest and serves FetchModelChunk; process "client" subscribes,
downloads a model in chunks and reports what it got as JSON. Both run with their own random
ROS_DOMAIN_ID (100-200) and ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST. Discovery is waited for
(publisher matched / wait_for_service), never slept for.

Needs the interfaces built into the venv: scripts/build_ros_interfaces.sh.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import subprocess
import sys
import time

import pytest
from ros_env import ros_child_env

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("aigc_offload_interfaces") is None
    or importlib.util.find_spec("rclpy") is None,
    reason="ROS 2 interfaces not built in this venv: run scripts/build_ros_interfaces.sh",
)

# Model blob served by the server process: deterministic, not a multiple of the chunk size.
MODEL_NAME = "defect-diffusion-tiny"
MODEL_VERSION = "1.2.0"
MODEL_SIZE = 10_000
CHUNK = 4096


def model_blob() -> bytes:
    return bytes((i * 31 + 7) % 256 for i in range(MODEL_SIZE))


REQUEST = {
    "task_id": "task-0001-äöü",
    "device_id": "site1/line2/cam3",
    "device_kind": 1,  # DEVICE_CAMERA
    "task_kind": 1,  # TASK_DEFECT_IMAGE
    "model_name": MODEL_NAME,
    "origin": "mqtt:factory/site1/line2/cam3/aigc/request",
    "input_bits": 2**40 + 7,
    "output_tokens": 0,
    "denoising_steps": 25,
    "deadline_s": 1.2345678901234567,
    "created_at": {"sec": 1_700_000_000, "nanosec": 123_456_789},
    "prompt": "scratch on the left edge, 3 mm",
    "payload": bytes(range(256)).hex(),
}

CHILD = r'''
import hashlib, json, os, sys, time
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy, HistoryPolicy
from aigc_offload_interfaces.msg import TaskRequest
from aigc_offload_interfaces.srv import FetchModelChunk

mode, spec = sys.argv[1], json.loads(sys.argv[2])
QOS = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST,
                 reliability=ReliabilityPolicy.RELIABLE,
                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
TOPIC, SERVICE = "/aigc_test/task_request", "/aigc_test/fetch_model_chunk"
LIMIT_S = float(spec["limit_s"])
t_start = time.monotonic()


def out(**kw):
    print(json.dumps(kw), flush=True)


def spin_until(node, cond, timeout_s):
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            return False
        rclpy.spin_once(node, timeout_sec=0.05)
    return True


def server():
    blob = bytes((i * 31 + 7) % 256 for i in range(spec["model_size"]))
    digest = hashlib.sha256(blob).hexdigest()
    node = Node("aigc_test_server")
    calls = []

    def fetch(req, resp):
        calls.append(req.offset)
        if req.name != spec["model_name"] or req.version not in ("", spec["model_version"]):
            resp.ok = False
            resp.error = "unknown model %s@%s" % (req.name, req.version or "latest")
            return resp
        if req.offset > len(blob):
            resp.ok = False
            resp.error = "offset %d beyond size %d" % (req.offset, len(blob))
            return resp
        data = blob[req.offset:req.offset + req.max_bytes]
        resp.ok = True
        resp.data = data
        resp.offset = req.offset
        resp.total_size_bytes = len(blob)
        resp.version = spec["model_version"]
        resp.sha256 = digest
        resp.eof = req.offset + len(data) >= len(blob)
        return resp

    node.create_service(FetchModelChunk, SERVICE, fetch)
    pub = node.create_publisher(TaskRequest, TOPIC, QOS)
    out(event="ready")
    if not spin_until(node, lambda: pub.get_subscription_count() >= 1, LIMIT_S):
        out(event="error", error="no subscriber matched")
        return 3
    r = spec["request"]
    msg = TaskRequest()
    for k, v in r.items():
        if k == "created_at":
            msg.created_at.sec, msg.created_at.nanosec = v["sec"], v["nanosec"]
        elif k == "payload":
            msg.payload = bytes.fromhex(v)
        else:
            setattr(msg, k, v)
    pub.publish(msg)
    out(event="published", matched_after_s=round(time.monotonic() - t_start, 3))
    # Serve until the test closes stdin (or the safety limit passes).
    os.set_blocking(sys.stdin.fileno(), False)
    while time.monotonic() - t_start < LIMIT_S:
        rclpy.spin_once(node, timeout_sec=0.05)
        try:
            if sys.stdin.buffer.read() == b"":
                break
        except (BlockingIOError, TypeError):
            pass
    out(event="stopped", calls=len(calls))
    return 0


def client():
    node = Node("aigc_test_client")
    got = []
    node.create_subscription(TaskRequest, TOPIC, got.append, QOS)
    cli = node.create_client(FetchModelChunk, SERVICE)
    if not spin_until(node, lambda: bool(got), LIMIT_S):
        out(event="error", error="no TaskRequest received")
        return 3
    msg = got[0]
    fields = {}
    for name in msg.get_fields_and_field_types():
        v = getattr(msg, name)
        if name == "created_at":
            v = {"sec": v.sec, "nanosec": v.nanosec}
        elif name == "payload":
            v = bytes(v).hex()
        fields[name] = v
    received_after_s = time.monotonic() - t_start
    if not cli.wait_for_service(timeout_sec=LIMIT_S):
        out(event="error", error="service not available")
        return 3

    def call(**kw):
        req = FetchModelChunk.Request(**kw)
        fut = cli.call_async(req)
        if not spin_until(node, fut.done, 10.0):
            raise RuntimeError("service call timed out")
        return fut.result()

    data, offset, chunks, last = b"", 0, 0, None
    while True:
        last = call(name=spec["model_name"], version="", offset=offset, max_bytes=spec["chunk"])
        if not last.ok:
            out(event="error", error="fetch failed: " + last.error)
            return 3
        data += bytes(last.data)
        offset += len(last.data)
        chunks += 1
        if last.eof or chunks > 1000:
            break
    bad = call(name="no-such-model", version="9", offset=0, max_bytes=16)
    out(event="result", fields=fields, constants={
            "DEVICE_CAMERA": TaskRequest.DEVICE_CAMERA,
            "TASK_DEFECT_IMAGE": TaskRequest.TASK_DEFECT_IMAGE},
        received_after_s=round(received_after_s, 3), chunks=chunks,
        model_len=len(data), model_sha256=hashlib.sha256(data).hexdigest(),
        reply_sha256=last.sha256, reply_total=last.total_size_bytes,
        reply_version=last.version, eof=last.eof,
        bad_ok=bad.ok, bad_error=bad.error, bad_len=len(bad.data))
    return 0


rclpy.init()
try:
    code = server() if mode == "server" else client()
finally:
    rclpy.try_shutdown()
sys.exit(code)
'''




def _json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return lines


def test_task_request_and_fetch_model_chunk_between_processes(tmp_path):
    domain_id = random.randint(100, 200)
    env = ros_child_env(domain_id)
    script = tmp_path / "ros_child.py"
    script.write_text(CHILD)
    spec = json.dumps({
        "limit_s": 22.0, "model_name": MODEL_NAME, "model_version": MODEL_VERSION,
        "model_size": MODEL_SIZE, "chunk": CHUNK, "request": REQUEST,
    })
    procs: list[subprocess.Popen] = []
    t0 = time.monotonic()
    try:
        server = subprocess.Popen(
            [sys.executable, str(script), "server", spec], env=env, cwd=tmp_path,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, text=True)
        procs.append(server)
        client = subprocess.Popen(
            [sys.executable, str(script), "client", spec], env=env, cwd=tmp_path,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, text=True)
        procs.append(client)

        c_out, c_err = client.communicate(timeout=25)
        s_out, s_err = server.communicate(input="", timeout=5)  # stdin EOF stops the server
        elapsed = time.monotonic() - t0

        diag = (f"domain {domain_id}\nclient rc={client.returncode}\n{c_out}\n{c_err[-3000:]}\n"
                f"server rc={server.returncode}\n{s_out}\n{s_err[-3000:]}")
        assert client.returncode == 0, diag
        assert server.returncode == 0, diag
        results = [m for m in _json_lines(c_out) if m.get("event") == "result"]
        assert results, diag
        res = results[0]

        # Message round trip: every field as sent.
        assert res["fields"] == REQUEST, diag
        assert res["constants"] == {"DEVICE_CAMERA": 1, "TASK_DEFECT_IMAGE": 1}

        # Service: chunked download reassembles to the served model, verified by sha256.
        blob = model_blob()
        assert res["chunks"] == -(-MODEL_SIZE // CHUNK)
        assert res["model_len"] == MODEL_SIZE
        assert res["model_sha256"] == hashlib.sha256(blob).hexdigest()
        assert res["reply_sha256"] == res["model_sha256"]
        assert res["reply_total"] == MODEL_SIZE
        assert res["reply_version"] == MODEL_VERSION
        assert res["eof"] is True
        # Unknown model: a typed error reply, not silence.
        assert res["bad_ok"] is False and "unknown model" in res["bad_error"]
        assert res["bad_len"] == 0

        stopped = [m for m in _json_lines(s_out) if m.get("event") == "stopped"]
        assert stopped and stopped[0]["calls"] == res["chunks"] + 1, diag
        assert elapsed < 30, f"took {elapsed:.1f} s"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            try:
                p.communicate(timeout=5)
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass


def test_origin_filter_gives_an_ingress_only_its_own_decisions():
    """The bridge and the OPC UA ingress subscribe to /aigc/decision and /aigc/task_result through
    ``origin_filter``: DDS delivers them their own protocol's messages and origin-less ones, and
    nothing of the other ingress (which each used to deserialize and drop in Python)."""
    from test_edge_stack import RosHarness

    from aigc_offload.messages import origin_filter
    from aigc_offload_interfaces.msg import Decision

    ros = RosHarness(random.randint(100, 230))
    try:
        got: dict[str, list[str]] = {"mqtt:": [], "opcua:": []}
        subs = [ros.node.create_subscription(Decision, "/test_origin_filter", lambda m, k=k: got[k].append(m.task_id),
                                             100, content_filter_options=origin_filter(k)) for k in got]
        assert all(s.is_cft_enabled for s in subs), "Fast DDS should filter by content"
        pub = ros.node.create_publisher(Decision, "/test_origin_filter", 100)
        deadline = time.monotonic() + 10
        while pub.get_subscription_count() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        sent = {"m1": "mqtt:acme/plant/line1/cam01", "o1": "opcua:opc.tcp://127.0.0.1:4840/aigc/", "n1": "",
                "m2": "mqtt:acme/plant/line2/cam02", "x1": "modbus:whatever"}
        for task_id, origin in sent.items():
            pub.publish(Decision(task_id=task_id, origin=origin))
        deadline = time.monotonic() + 10
        while (len(got["mqtt:"]) < 3 or len(got["opcua:"]) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # anything wrongly delivered arrives in this time too
        assert sorted(got["mqtt:"]) == ["m1", "m2", "n1"]
        assert sorted(got["opcua:"]) == ["n1", "o1"]
    finally:
        ros.close()
