"""QoS 1 request -> decision round trip through mosquitto, with and without TCP_NODELAY.

The device publishes a :class:`TaskRequest` (QoS 1); the bridge validates it and its callback
publishes a :class:`Decision` (QoS 1); the time until the device holds the decision is the round
trip. Requests are sent one at a time (no pipelining), as a device waiting for its answer does.

    python -m mqtt_bridge.bench [--n 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import numpy as np

from .broker import MosquittoBroker
from .client import BridgeClient, DeviceClient
from .schemas import Decision, TaskRequest, utc_now
from .topics import DeviceAddress

CAM = DeviceAddress("bench", "l1", "cam-bench")


def _stats(samples_s: list[float]) -> dict[str, float]:
    a = np.asarray(samples_s) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3), "max_ms": round(float(a.max()), 3), "n": int(a.size)}


def measure_round_trip(broker: MosquittoBroker, *, n: int = 300, warmup: int = 20, tcp_nodelay: bool = True,
                       tls: bool = True, protocol: str = "5") -> dict[str, float]:
    """p50/p99 of the request -> decision round trip seen at the device, milliseconds."""
    kw = dict(tls=tls, tcp_nodelay=tcp_nodelay, protocol=protocol, session_expiry_s=10)
    box: list[BridgeClient] = []

    def on_request(inc):
        r = inc.request
        box[0].publish_decision(Decision(task_id=r.task_id, device_id=r.device_id, target="device",
                                         model_name=r.model_name, policy="bench", decided_at=utc_now()),
                                inc.address)

    tag = uuid.uuid4().hex[:6]
    bridge = BridgeClient(broker.settings("bridge", **kw), client_id=f"bench-bridge-{tag}", on_request=on_request)
    box.append(bridge)
    dev = DeviceClient(broker.settings(CAM.device, **kw), CAM, client_id=f"bench-dev-{tag}",
                       persistent_session=False)
    samples: list[float] = []
    try:
        bridge.start()
        dev.start()
        time.sleep(0.1)  # let both SUBACKs land
        for i in range(warmup + n):
            req = TaskRequest(task_id=f"b{tag}-{i}", device_id=CAM.device, task_kind="defect_image",
                              model_name="sd", input_bits=1000, denoising_steps=5, deadline_s=5.0,
                              created_at=utc_now())
            t0 = time.perf_counter()
            dev.request(req, timeout_s=5.0)
            if i >= warmup:
                samples.append(time.perf_counter() - t0)
    finally:
        dev.stop()
        bridge.stop()
    return _stats(samples)


def measure_bare_echo(broker: MosquittoBroker, *, n: int = 300, warmup: int = 20, tcp_nodelay: bool = True,
                      tls: bool = True) -> dict[str, float]:
    """The floor: a bare paho QoS 1 echo (no validation, no hand-off thread) through the same broker,
    using the bridge's and the device's accounts and topics."""
    import socket
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    from .topics import Channel

    def client(user: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"echo-{user}-{uuid.uuid4().hex[:6]}",
                        protocol=MQTTProtocolVersion.MQTTv5)
        c.username_pw_set(user, broker.password(user))
        if tls:
            c.tls_set(ca_certs=str(broker.ca_file))
        if tcp_nodelay:
            c.on_socket_open = lambda cl, u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return c

    port = broker.tls_port if tls else broker.plain_port
    got = threading.Event()
    echo, dev = client("bridge"), client(CAM.device)
    echo.on_message = lambda cl, u, m: cl.publish(CAM.topic(Channel.decision), m.payload, qos=1)
    dev.on_message = lambda cl, u, m: got.set()
    samples: list[float] = []
    try:
        for c, topic in ((echo, CAM.topic(Channel.request)), (dev, CAM.topic(Channel.decision))):
            c.connect(broker.host, port)
            c.loop_start()
            c.subscribe(topic, qos=1)
        time.sleep(0.2)
        for i in range(warmup + n):
            got.clear()
            t0 = time.perf_counter()
            dev.publish(CAM.topic(Channel.request), b'{"i": %d}' % i, qos=1)
            if not got.wait(5):
                raise TimeoutError("echo lost")
            if i >= warmup:
                samples.append(time.perf_counter() - t0)
    finally:
        for c in (dev, echo):
            c.disconnect()
            c.loop_stop()
    return _stats(samples)


def run_benchmark(n: int = 300, n_nagle: int = 100, tls: bool = True) -> dict[str, Any]:
    """Start a mosquitto, measure with and without TCP_NODELAY on the client sockets (the broker
    sets it on its side, ``set_tcp_nodelay true``), and also with Nagle on at both ends."""
    out: dict[str, Any] = {"transport": "TLS 1.2+" if tls else "plain TCP", "qos": 1, "protocol": "MQTT 5"}
    with MosquittoBroker(devices=[CAM], plain_listener=not tls) as broker:
        out["bare_echo_floor"] = measure_bare_echo(broker, n=n, tls=tls)
        out["client_nodelay"] = measure_round_trip(broker, n=n, tcp_nodelay=True, tls=tls)
        out["client_nagle"] = measure_round_trip(broker, n=n_nagle, tcp_nodelay=False, tls=tls)
    with MosquittoBroker(devices=[CAM], plain_listener=not tls, tcp_nodelay=False) as broker:
        out["client_nodelay_broker_nagle"] = measure_round_trip(broker, n=n_nagle, tcp_nodelay=True, tls=tls)
        out["nagle_both_ends"] = measure_round_trip(broker, n=n_nagle, tcp_nodelay=False, tls=tls)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mqtt_bridge.bench", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=300, help="round trips with TCP_NODELAY")
    p.add_argument("--n-nagle", type=int, default=100, help="round trips in the slow (Nagle) variants")
    p.add_argument("--plain", action="store_true", help="plain TCP listener instead of TLS")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    res = run_benchmark(a.n, a.n_nagle, tls=not a.plain)
    if a.json:
        print(json.dumps(res))
    else:
        print(f"QoS 1 request -> decision round trip via mosquitto ({res['transport']}, {res['protocol']})")
        for k, v in res.items():
            if isinstance(v, dict):
                print(f"  {k:30s} p50 {v['p50_ms']:8.3f} ms  p99 {v['p99_ms']:8.3f} ms  (n={v['n']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
