"""``aigc-offload bench e2e``: request -> decision time seen at the device, over MQTT and OPC UA.

Starts the real graph of the default deployment (cloud model server, edge servers, the edge
gateway with the deployment's policy, the MQTT bridge node, the OPC UA ingress node; the node
list is ``deployment.node_specs``, started by ``runner.Graph``) on a private ``ROS_DOMAIN_ID``
with ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, an embedded mosquitto (TLS, passwords, ACL;
``mqtt_bridge.broker.MosquittoBroker``), a lab PKI and one OPC UA device server (a controller,
``opcua_devices.server.DeviceServer``, in its own process together with the PLC program that
calls its ``RequestTask``).

Load, open loop at ``--rate`` requests/s for ``--seconds`` (after a short warm-up at the same
rate that is not counted), one protocol after the other so the gateway sees the stated rate:

- MQTT: camera ``DeviceClient`` s (paho, TLS, QoS 1, TCP_NODELAY) in this process publish
  requests round-robin; a request's time is from just before its publish to its decision's
  arrival at the device (paho's network thread, one clock).
- OPC UA: the PLC client inside the device process launches a ``RequestTask`` call at each
  request's time; its time is from the call's start to the gateway's decision being delivered to
  the device (``DeliverDecision`` handled), one clock. With ``--opcua-request program`` the
  device's own program raises each request instead (``DeviceServer.request_task``, as the
  controllers of the factory job do): no client session and no call in the path.

Each phase also reports ``split``: p50/p99 of request -> the gateway's decision (its
``decided_at`` stamp) and of that decision -> its arrival at the device, one machine clock.

Floors, measured in the same run with the graph up and idle: a bare paho QoS 1 echo through the
same broker (two clients of a second bridge account on topics the bridge node does not read) and
a bare secure OPC UA method call (``opcua_devices.bench``: a no-op method on a server with the
devices' security, in its own process).

    aigc-offload bench e2e [--rate 500] [--seconds 10] [--json] [--opcua-request method|program]

Every process it starts is stopped when it ends, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

#: task parameters of the benchmark's requests (deadline long enough that nothing ends as missed
#: during a run: the results that do flow are the tasks the servers really finished).
MQTT_TASK = {"task_kind": "defect_image", "model_name": "defect-s", "input_bits": 6_000_000, "denoising_steps": 8}
PROTOCOLS = ("mqtt", "opcua")
#: how the OPC UA device raises its requests: its own program (``DeviceServer.request_task``, as the
#: controllers of the factory job do) or a client calling its ``RequestTask`` method
OPCUA_REQUEST = {"program": "program (DeviceServer.request_task)",
                 "method": "RequestTask method, called by a PLC client over a secure session"}
OPCUA_TASK = ("report", "report-s", 3_000_000, 96)
DEADLINE_S = 30.0


def _stats(samples_s: list[float]) -> dict[str, float]:
    import numpy as np

    if not samples_s:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "n": 0}
    a = np.asarray(samples_s) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3), "max_ms": round(float(a.max()), 3), "n": int(a.size)}


def _split(triples: list[tuple[float, float, float]]) -> dict[str, dict[str, float]]:
    """Where a request's time went, from (sent, the gateway's ``decided_at``, arrival at the device),
    POSIX seconds of this machine's one clock: request -> decision at the gateway (device, protocol,
    ingress or bridge, DDS, policy) and decision -> device (DDS, bridge or ingress, protocol)."""
    def p(xs: list[float]) -> dict[str, float]:
        st = _stats(xs)
        return {"p50_ms": st["p50_ms"], "p99_ms": st["p99_ms"]} if xs else {}

    return {"to_gateway_decision": p([d - t for t, d, _a in triples]),
            "decision_to_device": p([a - d for _t, d, a in triples])}


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _ros_env(domain: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS", "FASTRTPS_DEFAULT_PROFILES_FILE",
                "FASTDDS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION", "_ROS_WHEELS_BOOTSTRAP_COMPLETE"):
        env.pop(var, None)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    return env


# ------------------------------------------------------------------------------------------------
# The OPC UA device process: device server + PLC program (internal: --device-child)
# ------------------------------------------------------------------------------------------------
async def _device_child(port: int, pki_dir: str, device_id: str, plc_client: str) -> None:
    import logging

    from asyncua import Client

    from opcua_devices import model as m
    from opcua_devices.ingress import request_task_call
    from opcua_devices.pki import LabPki
    from opcua_devices.security import apply_client_security
    from opcua_devices.server import DeviceServer

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    pki = LabPki(Path(pki_dir))
    decided: dict[str, float] = {}
    walls: dict[str, tuple[float, float]] = {}  # task id -> (the gateway's decided_at, arrival), POSIX s

    class Stamped(DeviceServer):
        async def deliver_decision(self, decision):  # noqa: ANN001
            await super().deliver_decision(decision)
            decided.setdefault(decision.task_id, time.perf_counter())
            walls.setdefault(decision.task_id, (decision.decided_at.timestamp(), time.time()))

    url = f"opc.tcp://127.0.0.1:{port}/aigc/"
    dev = Stamped(device_id, "controller", url, pki.server_security(device_id), result_grace_s=600.0,
                  max_pending=1_000_000)
    await dev.start()
    # the load generator measures latency; asyncua's default 1 s watchdog would drop its own session
    # whenever the saturated server answers a probe late
    client = Client(url, timeout=10, watchdog_intervall=10.0)
    client.session_timeout = 60_000
    await apply_client_security(client, pki.client_security(plc_client))
    await client.connect()
    ns = await client.get_namespace_index(m.NAMESPACE_URI)
    obj = await client.nodes.objects.get_child(f"{ns}:{device_id}")
    meth = await obj.get_child(f"{ns}:RequestTask")
    kind, model, bits, units = OPCUA_TASK
    call = request_task_call(obj.nodeid, meth.nodeid, kind, model, bits, units, DEADLINE_S)
    loop = asyncio.get_running_loop()
    gc.collect()  # as the device servers do (opcua_devices.server.main)
    gc.freeze()
    print("ready", flush=True)
    try:
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] == "quit":
                break
            if line[0] == "prime":  # until one decision came back through the whole graph
                end = loop.time() + float(line[1])
                ok = False
                while loop.time() < end and not ok:
                    res = (await client.uaclient.call([call]))[0]
                    tid = res.OutputArguments[0].Value if res.StatusCode.is_good() else ""
                    t_end = loop.time() + 0.5
                    while loop.time() < t_end and tid not in decided:
                        await asyncio.sleep(0.01)
                    ok = tid in decided
                print(json.dumps({"ok": ok}), flush=True)
            elif line[0] == "run":
                rate, count, wait_s = float(line[1]), int(line[2]), float(line[3])
                by_program = len(line) > 4 and line[4] == "program"
                calls: list[list] = []
                errors: dict[str, int] = {}

                async def one() -> None:
                    t0, t0_wall = time.perf_counter(), time.time()
                    try:
                        if by_program:  # the controller's own program raises it, as in the factory job
                            tid = await dev.request_task(kind, model, bits, units, DEADLINE_S)
                        else:  # a client (PLC/MES) calls RequestTask over its secure session
                            res = (await client.uaclient.call([call]))[0]
                            tid = res.OutputArguments[0].Value if res.StatusCode.is_good() else ""
                            if not tid:
                                errors[str(res.StatusCode)] = errors.get(str(res.StatusCode), 0) + 1
                    except Exception as exc:  # noqa: BLE001 - counted as not answered
                        tid = ""
                        key = f"{type(exc).__name__}: {exc}"[:200]
                        errors[key] = errors.get(key, 0) + 1
                    calls.append([tid, t0, time.perf_counter(), t0_wall])

                start = loop.time()
                pending = []
                for i in range(count):
                    delay = start + i / rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    pending.append(asyncio.ensure_future(one()))
                await asyncio.gather(*pending)
                elapsed = loop.time() - start
                deadline = loop.time() + wait_s
                while loop.time() < deadline and not all(c[0] in decided for c in calls):
                    await asyncio.sleep(0.02)
                print(json.dumps({"calls": calls, "decided": {c[0]: decided.get(c[0]) for c in calls},
                                  "walls": {c[0]: walls.get(c[0]) for c in calls},
                                  "elapsed_s": elapsed, "errors": errors}), flush=True)
    finally:
        try:
            await client.disconnect()
        finally:
            await dev.stop()


class _DeviceProcess:
    def __init__(self, port: int, pki_dir: Path, device_id: str, plc_client: str, log: Path):
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aigc_offload.bench_e2e", "--device-child", str(port), "--pki", str(pki_dir),
             "--device-id", device_id, "--plc-client", plc_client],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def ask(self, line: str | None, timeout_s: float) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if line is not None:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout_s)
        if not box or not box[0]:
            raise RuntimeError(f"the OPC UA device process did not answer {line or 'ready'!r} within {timeout_s:g} s "
                               f"(exit code {self.proc.poll()}; log {self.log.name})")
        return box[0].strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired, AssertionError):
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def _cpu_s(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each named process and its descendants (this
    process's own entry counts only itself: every other one is its child)."""
    tck = os.sysconf("SC_CLK_TCK")
    stat: dict[int, tuple[int, float]] = {}  # pid -> (ppid, cpu s)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                stat[int(d)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tck)
            except (OSError, IndexError, ValueError):
                continue
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stat.items():
        children.setdefault(ppid, []).append(pid)
    out = {}
    for name, root in pids.items():
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            total += stat.get(pid, (0, 0.0))[1]
            if root != os.getpid():
                todo += children.get(pid, [])
        out[name] = total
    return out


def _cpu_per_request(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """CPU milliseconds per request of each process over a phase, and their sum."""
    per = {k: round(1e3 * (after[k] - before[k]) / max(n, 1), 3) for k in before}
    per["total"] = round(sum(per.values()), 3)
    return per


# ------------------------------------------------------------------------------------------------
# Floors
# ------------------------------------------------------------------------------------------------
def mqtt_echo_floor(broker, enterprise: str, n: int = 300, warmup: int = 30) -> dict[str, float]:
    """Bare paho QoS 1 echo (TLS, TCP_NODELAY) through ``broker``: two clients of the ``floor``
    bridge account, on decision/result topics of a device no bridge node reads requests from."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    ping = f"{enterprise}/floor/l0/echo/aigc/decision"
    pong = f"{enterprise}/floor/l0/echo/aigc/result"

    def client() -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"floor-{uuid.uuid4().hex[:8]}",
                        protocol=MQTTProtocolVersion.MQTTv5)
        c.username_pw_set("floor", broker.password("floor"))
        c.tls_set(ca_certs=str(broker.ca_file))
        c.on_socket_open = lambda cl, u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return c

    got = threading.Event()
    subscribed = threading.Semaphore(0)
    echo, dev = client(), client()
    echo.on_message = lambda cl, u, m: cl.publish(pong, m.payload, qos=1)
    dev.on_message = lambda cl, u, m: got.set()
    samples: list[float] = []
    try:
        for c, topic in ((echo, ping), (dev, pong)):
            c.on_subscribe = lambda *a: subscribed.release()
            c.connect(broker.host, broker.tls_port)
            c.loop_start()
            c.subscribe(topic, qos=1)
        for _ in range(2):
            if not subscribed.acquire(timeout=10):
                raise TimeoutError("the floor echo clients did not subscribe")
        for i in range(warmup + n):
            got.clear()
            t0 = time.perf_counter()
            dev.publish(ping, b'{"i": %d}' % i, qos=1)
            if not got.wait(5):
                raise TimeoutError("the floor echo was lost")
            if i >= warmup:
                samples.append(time.perf_counter() - t0)
    finally:
        for c in (dev, echo):
            c.disconnect()
            c.loop_stop()
    return _stats(samples)


# ------------------------------------------------------------------------------------------------
# MQTT load
# ------------------------------------------------------------------------------------------------
def _mqtt_run(devices: list, rate: float, count: int, warmup: int, wait_s: float) -> dict[str, Any]:
    from mqtt_bridge.schemas import TaskRequest, utc_now

    decided: dict[str, float] = {}
    walls: dict[str, tuple[float, float, float]] = {}  # task id -> (sent, decided_at, arrival), POSIX s
    sent_wall: dict[str, float] = {}
    refused: dict[str, str] = {}
    sent: list[tuple[str, float]] = []
    lock = threading.Lock()

    def on_decision(fut, tid: str) -> None:
        t, t_wall = time.perf_counter(), time.time()
        if fut.exception() is None:
            with lock:
                decided.setdefault(tid, t)
                if tid in sent_wall:
                    walls.setdefault(tid, (sent_wall[tid], fut.result().decided_at.timestamp(), t_wall))
        else:
            refused[tid] = str(fut.exception())

    total = warmup + count
    t0 = time.perf_counter()
    for i in range(total):
        due = t0 + i / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.001) if due - now > 0.0003 else 0)
        dev = devices[i % len(devices)]
        req = TaskRequest(task_id=dev.new_task_id(), device_id=dev.address.device, deadline_s=DEADLINE_S,
                          created_at=utc_now(), **MQTT_TASK)
        ts = time.perf_counter()
        with lock:
            sent_wall[req.task_id] = time.time()
        h = dev.submit(req)
        h.decision.add_done_callback(lambda f, tid=req.task_id: on_decision(f, tid))
        if i >= warmup:
            sent.append((req.task_id, ts))
    elapsed = time.perf_counter() - t0
    end = time.perf_counter() + wait_s
    while time.perf_counter() < end:
        with lock:
            if all(tid in decided or tid in refused for tid, _ in sent):
                break
        time.sleep(0.02)
    with lock:
        samples = [decided[tid] - ts for tid, ts in sent if tid in decided]
        triples = [walls[tid] for tid, _ts in sent if tid in walls]
    out = _stats(samples)
    out.update(sent=len(sent), answered=len(samples), refused=sum(1 for tid, _ in sent if tid in refused),
               achieved_rate_per_s=round(total / elapsed, 1), split=_split(triples))
    if refused:
        out["first_refusal"] = next(iter(refused.values()))
    return out


def _opcua_result(out: dict, warmup: int) -> dict[str, Any]:
    calls = out["calls"][warmup:] if warmup else out["calls"]
    dec = out["decided"]
    samples = [dec[c[0]] - c[1] for c in calls if c[0] and dec.get(c[0])]
    res = _stats(samples)
    walls = out.get("walls", {})
    res.update(sent=len(calls), answered=len(samples), refused=sum(1 for c in calls if not c[0]),
               achieved_rate_per_s=round(len(out["calls"]) / max(out["elapsed_s"], 1e-9), 1),
               request_call=_stats([c[2] - c[1] for c in calls]),
               split=_split([(c[3], *walls[c[0]]) for c in calls if c[0] and walls.get(c[0])]))
    if out.get("errors"):
        res["errors"] = out["errors"]
    return res


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def run(rate: float = 500.0, seconds: float = 10.0, *, deployment=None, cameras: int = 2,
        warmup_s: float = 1.0, workdir: str | Path | None = None, floor_n: int = 300,
        log=None, protocols: tuple[str, ...] = PROTOCOLS, opcua_request: str = "method") -> dict[str, Any]:
    """Start everything, measure, stop everything; returns the report (see the module docstring).
    ``protocols``: the phases to measure ("mqtt", "opcua"); a phase left out is ``null`` in the report
    (the whole graph runs either way, so the CPU columns stay comparable)."""
    if opcua_request not in OPCUA_REQUEST:
        raise ValueError(f"opcua_request must be one of {', '.join(OPCUA_REQUEST)}, got {opcua_request!r}")
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown or not protocols:
        raise ValueError(f"protocols must be a non-empty subset of {', '.join(PROTOCOLS)}, got {', '.join(protocols)}")
    from mqtt_bridge.broker import MosquittoBroker
    from mqtt_bridge.client import DeviceClient
    from mqtt_bridge.topics import DeviceAddress
    from opcua_devices.bench import run_benchmark as opcua_floor
    from opcua_devices.pki import make_lab_pki

    from .deployment import Deployment, draw_plant, node_specs
    from .runner import GatewayReadiness, Graph

    def say(msg: str) -> None:
        if log is not None:
            print(f"bench e2e: {msg}", file=log, flush=True)

    dep = deployment or Deployment()
    plant = draw_plant(dep)
    cams = [d for d in plant.devices if d.kind == "camera"][:max(cameras, 1)]
    plc = next(d for d in plant.devices if d.kind == "controller")
    count = max(int(round(rate * seconds)), 1)
    warmup = int(round(rate * warmup_s))
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="aigc_bench_e2e_")
        wd = Path(tmp.name)
    else:
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True)
    domain = random.randint(100, 230)
    broker = graph = device = None
    ros = None
    devices: list = []
    load = [os.getloadavg()]
    try:
        # -- broker, PKI, device server --------------------------------------------------------------
        addrs = [DeviceAddress(dep.mqtt.site, f"line{d.line + 1}", d.device_id, dep.mqtt.enterprise) for d in cams]
        broker = MosquittoBroker(wd / "broker", devices=addrs, bridge_users=("bridge", "floor"),
                                 enterprise=dep.mqtt.enterprise).start()
        pw = wd / "mqtt_bridge.password"
        pw.write_text(broker.password("bridge"))
        pw.chmod(0o600)
        pki = wd / "pki"
        make_lab_pki(pki, [plc.device_id], ["gateway", "plc"], hosts=["localhost", "127.0.0.1", socket.gethostname()])
        port = _free_port()
        device = _DeviceProcess(port, pki, plc.device_id, "plc", wd / f"device_{plc.device_id}.log")
        run_dep = dep.model_copy(update={
            "mqtt": dep.mqtt.model_copy(update={"enabled": True, "host": "localhost", "port": broker.tls_port,
                                                "ca_file": str(broker.ca_file), "username": "bridge",
                                                "password_file": str(pw)}),
            "opcua": dep.opcua.model_copy(update={"endpoints": [f"opc.tcp://127.0.0.1:{port}/aigc/"],
                                                  "pki_dir": str(pki), "client_name": "gateway"})})
        if device.ask(None, 60) != "ready":
            raise RuntimeError("the OPC UA device process did not start")
        # -- the ROS graph -------------------------------------------------------------------------
        specs = node_specs(run_dep, plant)
        say(f"starting {len(specs)} nodes on ROS_DOMAIN_ID {domain}; logs in {wd}")
        graph = Graph(specs, wd, _ros_env(domain))
        graph.start()
        ros = _RosWatch(domain, len(plant.edges), GatewayReadiness)
        if not graph.wait_ready(ros.ready, 120):
            failed = graph.failure_summary() or "no node exited"
            raise RuntimeError(f"the gateway did not report every edge server alive within 120 s; logs in {wd}\n"
                               f"{failed}")
        ros.close()  # nothing of this process on ROS while measuring
        ros = None
        for d, a in zip(cams, addrs):
            dc = DeviceClient(broker.settings(d.device_id, session_expiry_s=60), a,
                              client_id=f"bench-{d.device_id}-{uuid.uuid4().hex[:6]}", persistent_session=False)
            dc.start()
            devices.append(dc)
        # -- prime both paths end to end (DDS discovery is per pair of endpoints) ----------------------
        for dc in devices:
            _prime_mqtt(dc, 60.0)
        if not json.loads(device.ask("prime 60", 90)).get("ok"):
            raise RuntimeError(f"no decision reached the OPC UA device within 60 s; logs in {wd}")
        say("graph up and primed; measuring the floors")
        floors = {"mqtt_echo": mqtt_echo_floor(broker, dep.mqtt.enterprise, n=floor_n),
                  "opcua_call": opcua_floor(floor_n, 50)["opcua_call"]}
        time.sleep(0.5)
        load.append(os.getloadavg())
        gc.collect()  # the camera clients of this process too: measure the graph, not our collector
        gc.freeze()
        pids = {p.spec.name: p.proc.pid for p in graph.procs}
        pids.update({"opcua_device": device.proc.pid, "mosquitto": broker.proc.pid, "bench_mqtt_devices": os.getpid()})
        mqtt_res = opcua_res = None
        if "mqtt" in protocols:
            say(f"MQTT: {count} requests at {rate:g}/s from {len(devices)} cameras (+{warmup} warm-up)")
            c0 = _cpu_s(pids)
            mqtt_res = _mqtt_run(devices, rate, count, warmup, wait_s=10.0)
            mqtt_res["cpu_ms_per_request"] = _cpu_per_request(c0, _cpu_s(pids), warmup + count)
            load.append(os.getloadavg())
            time.sleep(1.0)
        if "opcua" in protocols:
            say(f"OPC UA: {count} requests raised by the device's {OPCUA_REQUEST[opcua_request]} at {rate:g}/s "
                f"(+{warmup} warm-up)")
            c0 = _cpu_s(pids)
            out = json.loads(device.ask(f"run {rate} {warmup + count} 10 {opcua_request}",
                                        60 + 2 * (warmup + count) / rate))
            opcua_res = _opcua_result(out, warmup)
            opcua_res["cpu_ms_per_request"] = _cpu_per_request(c0, _cpu_s(pids), warmup + count)
            load.append(os.getloadavg())
        return {"rate_per_s": rate, "seconds": seconds, "mqtt": mqtt_res, "opcua": opcua_res, "floors": floors,
                "load_average_1m": [round(x[0], 2) for x in load],
                "setup": {"policy": dep.gateway.policy, "edge_servers": len(plant.edges), "cameras": len(devices),
                          "controllers": 1, "deadline_s": DEADLINE_S, "warmup_requests": warmup,
                          "cpus": os.cpu_count(), "ros_domain_id": domain, "execution_nice": dep.execution_nice,
                          "opcua_request": opcua_request}}
    finally:
        for dc in devices:
            try:
                dc.stop()
            except Exception:  # noqa: BLE001 - best effort on the way down
                pass
        if ros is not None:
            ros.close()
        if device is not None:
            device.stop()
        if graph is not None:
            graph.stop()
        if broker is not None:
            broker.stop()
        if tmp is not None:
            tmp.cleanup()


def _prime_mqtt(dc, timeout_s: float) -> None:
    from mqtt_bridge.schemas import TaskRequest, utc_now

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        h = dc.submit(TaskRequest(task_id=dc.new_task_id(), device_id=dc.address.device, deadline_s=DEADLINE_S,
                                  created_at=utc_now(), **MQTT_TASK))
        try:
            h.decision.result(0.5)
            return
        except Exception:  # noqa: BLE001 - not through yet (timeout) or refused while starting: again
            continue
    raise RuntimeError(f"no MQTT decision reached {dc.address.device} within {timeout_s:g} s")


class _RosWatch:
    """This process on the graph's domain only until the gateway reports every edge server alive."""

    def __init__(self, domain: int, num_edges: int, readiness_cls):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        self.ctx = Context()
        from rclpy.signals import SignalHandlerOptions

        # rclpy's own SIGINT handler would only shut its context down: keep Ctrl-C a KeyboardInterrupt
        rclpy.init(context=self.ctx, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(f"bench_e2e_{uuid.uuid4().hex[:6]}", context=self.ctx)
        self.ready = readiness_cls(self.node, num_edges)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def format_table(res: dict[str, Any]) -> str:
    f = res["floors"]
    how = {"program": "OPC UA request", "method": "OPC UA RequestTask call"}[res["setup"].get("opcua_request", "method")]
    rows = [("MQTT request -> decision at device", res["mqtt"]), (f"{how} -> decision at device", res["opcua"]),
            ("floor: bare MQTT QoS 1 echo", f["mqtt_echo"]), ("floor: bare secure OPC UA call", f["opcua_call"])]
    lines = [f"end-to-end at {res['rate_per_s']:g} requests/s for {res['seconds']:g} s "
             f"(policy {res['setup']['policy']}, {res['setup']['edge_servers']} edge servers at nice "
             f"{res['setup']['execution_nice']}; "
             f"load average 1 min {', '.join(str(x) for x in res['load_average_1m'])} on {res['setup']['cpus']} CPUs)",
             f"{'':42s} {'p50 ms':>8s} {'p99 ms':>8s} {'answered/sent':>14s} {'rate/s':>7s}"]
    for name, r in rows:
        if r is None:
            lines.append(f"{name:42s} {'not measured (--protocols)':>33s}")
            continue
        extra = f"{r['answered']:>6d}/{r['sent']:<7d} {r['achieved_rate_per_s']:>7g}" if "sent" in r else \
            f"{'n=' + str(r.get('n', 0)):>14s}"
        lines.append(f"{name:42s} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {extra}")
        for part, label in (("to_gateway_decision", "  of which request -> gateway's decision"),
                            ("decision_to_device", "  of which gateway's decision -> device")):
            q = r.get("split", {}).get(part)
            if q:
                lines.append(f"{label:42s} {q['p50_ms']:8.3f} {q['p99_ms']:8.3f}")
    m, o = res["mqtt"], res["opcua"]
    targets = []
    if m is not None:
        targets.append(f"MQTT p50 <= 3 ms {'ok' if m['p50_ms'] <= 3 else 'MISSED'}, p99 <= 10 ms "
                       f"{'ok' if m['p99_ms'] <= 10 else 'MISSED'}, none lost "
                       f"{'ok' if m['answered'] == m['sent'] else 'MISSED'}")
    if o is not None:
        gap = o['p50_ms'] - f['opcua_call']['p50_ms']
        targets.append(f"OPC UA p50 within 2 ms of its floor {'ok' if gap <= 2 else 'MISSED'} (+{gap:.2f} ms), "
                       f"none lost {'ok' if o['answered'] == o['sent'] else 'MISSED'}")
    lines.append("targets: " + "; ".join(targets))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="aigc-offload bench e2e", description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=500.0, help="requests per second, per protocol (open loop)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per protocol")
    p.add_argument("--json", action="store_true")
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help="phases to measure: mqtt, opcua or both")
    p.add_argument("--opcua-request", choices=sorted(OPCUA_REQUEST), default="method",
                   help="how the OPC UA device raises requests: its own program (as the factory's controllers) "
                        "or a PLC client calling its RequestTask method")
    p.add_argument("--device-child", type=int, help=argparse.SUPPRESS)  # internal: the OPC UA device process
    p.add_argument("--pki", help=argparse.SUPPRESS)
    p.add_argument("--device-id", help=argparse.SUPPRESS)
    p.add_argument("--plc-client", default="plc", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device_child:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it with "quit"
        prof = os.environ.get("AIGC_BENCH_DEVICE_PROFILE")  # a file: cProfile the device process there
        if prof:
            import cProfile

            cProfile.runctx("asyncio.run(_device_child(a.device_child, a.pki, a.device_id, a.plc_client))",
                            globals(), {"a": a, "asyncio": asyncio, "_device_child": _device_child}, prof)
        else:
            asyncio.run(_device_child(a.device_child, a.pki, a.device_id, a.plc_client))
        return 0
    return cli(a.rate, a.seconds, a.json, a.protocols, opcua_request=a.opcua_request)


def cli(rate: float, seconds: float, as_json: bool, protocols: str = ",".join(("mqtt", "opcua")),
        deployment=None, opcua_request: str = "method") -> int:
    if rate <= 0 or seconds <= 0:
        print("error: --rate and --seconds must be positive", file=sys.stderr)
        return 2
    chosen = tuple(x.strip() for x in protocols.split(",") if x.strip())
    if not chosen or set(chosen) - set(PROTOCOLS):
        print(f"error: --protocols takes {', '.join(PROTOCOLS)} (comma-separated), got '{protocols}'", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        res = run(rate, seconds, deployment=deployment, log=sys.stderr, protocols=chosen, opcua_request=opcua_request)
    except KeyboardInterrupt:
        print("bench e2e: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError) as exc:
        print(f"bench e2e: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, old)
    print(json.dumps(res) if as_json else format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
