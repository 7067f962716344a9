"""Request -> ROS and decision -> device latency through the OPC UA ingress node, beside the floor.

One device server (a controller) runs in a child process together with a PLC program (a secure
OPC UA client in the same process) that calls ``RequestTask`` at a fixed rate (open loop, each
call launched at its time). The ingress node (``aigc_offload.opcua_ingress_node``) runs as its own
process on a private ROS domain. This process plays the gateway: it stamps every ``TaskRequest``
it sees on ``REQUEST_TOPIC`` and answers at once with a ``Decision`` (cloud, share 1), which the
node delivers back with ``DeliverDecision``; the device stamps the decision's arrival. All stamps
are ``time.time()`` on one host.

    python -m opcua_devices.bench_ros [--n 500] [--rate 500] [--intervals 20,5,1,0] [--json]

Reports per publishing interval of the ingress's subscription: ``request_to_ros`` (RequestTask
call start -> TaskRequest on ROS), ``decision_at_device`` (call start -> decision accepted on the
device), ``request_call`` (the RequestTask call round trip itself), lost counts; and the floor of
a bare secure method call (:mod:`opcua_devices.bench`, separate processes) in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _stats(samples_s: list[float]) -> dict[str, float]:
    if not samples_s:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "n": 0}
    a = np.asarray(samples_s) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3), "n": int(a.size)}


# -- child: device server + PLC program ---------------------------------------------------------------
async def _device_main(port: int, pki_dir: str, n: int, warmup: int, rate: float) -> None:
    import logging

    from asyncua import Client

    from . import model as m
    from .ingress import request_task_call
    from .pki import LabPki
    from .security import apply_client_security
    from .server import DeviceServer

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    pki = LabPki(Path(pki_dir))
    decided: dict[str, float] = {}

    class Stamped(DeviceServer):
        async def deliver_decision(self, decision):  # noqa: ANN001
            await super().deliver_decision(decision)
            decided.setdefault(decision.task_id, time.time())

    url = f"opc.tcp://127.0.0.1:{port}/aigc/"
    dev = Stamped("plc01", "controller", url, pki.server_security("plc01"), result_grace_s=600.0,
                  max_pending=100_000)
    await dev.start()
    client = Client(url, timeout=10)
    client.session_timeout = 60_000
    await apply_client_security(client, pki.client_security("gateway"))
    await client.connect()
    ns = await client.get_namespace_index(m.NAMESPACE_URI)
    obj = await client.nodes.objects.get_child(f"{ns}:plc01")
    meth = await obj.get_child(f"{ns}:RequestTask")
    call = request_task_call(obj.nodeid, meth.nodeid, "report", "report-s", 1_000_000, 16, 600.0)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # "go": the node is connected
    calls: list[tuple[str, float, float]] = []

    async def one() -> None:
        t0 = time.time()
        res = (await client.uaclient.call([call]))[0]
        calls.append((res.OutputArguments[0].Value if res.StatusCode.is_good() else "", t0, time.time()))

    for phase, count in (("warmup", warmup), ("measured", n)):
        calls.clear()
        start = loop.time()
        pending = []
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.ensure_future(one()))
        await asyncio.gather(*pending)
        deadline = loop.time() + 10.0
        while loop.time() < deadline and not all(c[0] in decided for c in calls):
            await asyncio.sleep(0.05)
        if phase == "warmup":
            await asyncio.sleep(0.5)
    print(json.dumps({"calls": calls, "decided": {c[0]: decided.get(c[0]) for c in calls}}), flush=True)
    await client.disconnect()
    await dev.stop()


# -- parent: the gateway side --------------------------------------------------------------------------
class _Gateway:
    def __init__(self, domain: int):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import MultiThreadedExecutor

        from aigc_offload.deployment import DECISION_TOPIC, REQUEST_TOPIC
        from aigc_offload.messages import to_time
        from aigc_offload_interfaces.msg import Decision, TaskRequest
        from diagnostic_msgs.msg import DiagnosticArray

        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node(f"bench_gateway_{random.randrange(1 << 20)}", context=self.ctx)
        self.seen: dict[str, float] = {}
        self.connected = threading.Event()
        pub = self.node.create_publisher(Decision, DECISION_TOPIC, 1000)
        self.pub = pub

        def on_request(msg: TaskRequest) -> None:
            self.seen.setdefault(msg.task_id, time.time())
            pub.publish(Decision(task_id=msg.task_id, target_kind=Decision.TARGET_CLOUD, target_index=-1,
                                 offload_share=1.0, model_name=msg.model_name, policy_name="bench",
                                 decided_at=to_time(time.time())))

        def on_diag(msg: DiagnosticArray) -> None:
            for st in msg.status:
                if any(v.key == "endpoints_connected" and v.value == "1/1" for v in st.values):
                    self.connected.set()

        self.sub = self.node.create_subscription(TaskRequest, REQUEST_TOPIC, on_request, 1000)
        self.diag = self.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _ros_env(domain: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS", "RMW_IMPLEMENTATION", "_ROS_WHEELS_BOOTSTRAP_COMPLETE"):
        env.pop(var, None)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    return env


def run_interval(pki_dir: str, interval_ms: float, n: int, warmup: int, rate: float) -> dict[str, Any]:
    import yaml

    domain = random.randint(100, 230)
    port = _free_port()
    dev = subprocess.Popen([sys.executable, "-m", "opcua_devices.bench_ros", "--device", str(port), "--pki", pki_dir,
                            "--n", str(n), "--warmup", str(warmup), "--rate", str(rate)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO),
                           env=dict(os.environ, PYTHONUNBUFFERED="1"))
    params = Path(pki_dir) / f"ingress_{interval_ms:g}.yaml"
    params.write_text(yaml.safe_dump({"opcua_ingress": {"ros__parameters": {
        "endpoints": [f"opc.tcp://127.0.0.1:{port}/aigc/"], "pki_dir": pki_dir, "autostart": True,
        "publish_interval_ms": float(interval_ms), "backoff_min_s": 0.2, "backoff_max_s": 1.0,
        "diagnostics_period_s": 0.2}}}))
    node = None
    gw = _Gateway(domain)
    try:
        if (dev.stdout.readline() if dev.stdout else "").strip() != "ready":
            raise RuntimeError(f"bench device did not start (exit code {dev.poll()})")
        node = subprocess.Popen([sys.executable, "-m", "aigc_offload.opcua_ingress_node", "--ros-args",
                                 "--params-file", str(params)], env=_ros_env(domain), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        if not gw.connected.wait(30):
            raise RuntimeError("the ingress node did not connect to the device within 30 s")
        deadline = time.monotonic() + 20
        while gw.pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert dev.stdin is not None and dev.stdout is not None
        dev.stdin.write("go\n")
        dev.stdin.flush()
        out = json.loads(dev.stdout.readline())
    finally:
        if node is not None:
            node.send_signal(2)
            try:
                node.wait(10)
            except subprocess.TimeoutExpired:
                node.kill()
        gw.close()
        if dev.poll() is None:
            dev.kill()
        dev.wait()
    calls = out["calls"]
    to_ros = [gw.seen[c[0]] - c[1] for c in calls if c[0] in gw.seen]
    at_dev = [out["decided"][c[0]] - c[1] for c in calls if out["decided"].get(c[0])]
    return {"publish_interval_ms": interval_ms, "sent": len(calls),
            "request_to_ros": _stats(to_ros), "decision_at_device": _stats(at_dev),
            "request_call": _stats([c[2] - c[1] for c in calls]),
            "lost_to_ros": len(calls) - len(to_ros), "lost_decisions": len(calls) - len(at_dev)}


def run_benchmark(n: int = 500, rate: float = 500.0, intervals: tuple[float, ...] = (20.0, 5.0, 1.0, 0.0),
                  warmup: int = 100) -> dict[str, Any]:
    from .bench import run_benchmark as floor_benchmark
    from .pki import make_lab_pki

    floor = floor_benchmark(n, 50)
    with tempfile.TemporaryDirectory(prefix="opcua-bench-ros-") as tmp:
        make_lab_pki(tmp, ["plc01"], ["gateway"])
        runs = [run_interval(tmp, iv, n, warmup, rate) for iv in intervals]
    return {"rate_per_s": rate, "floors": {"opcua_call": floor["opcua_call"]}, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m opcua_devices.bench_ros", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=500, help="measured requests per interval")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--rate", type=float, default=500.0, help="RequestTask calls per second (open loop)")
    p.add_argument("--intervals", default="20,5,1,0", help="publishing intervals of the ingress to try, ms")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", type=int, help=argparse.SUPPRESS)  # internal: the child process
    p.add_argument("--pki", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device:
        asyncio.run(_device_main(a.device, a.pki, a.n, a.warmup, a.rate))
        return 0
    res = run_benchmark(a.n, a.rate, tuple(float(x) for x in a.intervals.split(",")), a.warmup)
    if a.json:
        print(json.dumps(res))
        return 0
    f = res["floors"]["opcua_call"]
    print(f"bare secure OPC UA call (floor): p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms (n={f['n']})")
    print(f"at {res['rate_per_s']:g} requests/s:")
    print(f"{'interval ms':>11} | {'request->ROS p50/p99 ms':>24} | {'decision@device p50/p99 ms':>27} | "
          f"{'RequestTask call p50/p99':>24} | lost")
    for r in res["runs"]:
        q, d, c = r["request_to_ros"], r["decision_at_device"], r["request_call"]
        print(f"{r['publish_interval_ms']:>11g} | {q['p50_ms']:>11} / {q['p99_ms']:<10} | {d['p50_ms']:>12} / "
              f"{d['p99_ms']:<12} | {c['p50_ms']:>10} / {c['p99_ms']:<11} | {r['lost_to_ros']}/{r['lost_decisions']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
