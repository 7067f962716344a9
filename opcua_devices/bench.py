"""The floor of the OPC UA side: a bare secure method call round trip.

A server process with the devices' security (Basic256Sha256 SignAndEncrypt, CA-signed
certificates, trust directory, user name + hashed password) exposes a no-op ``Echo(Int64) ->
Int64`` method; a client in this process calls it sequentially (one in flight, as a gateway
delivering one decision at a time) and reports the percentiles. Anything the ingress does on top
(events, validation, variable writes) is above this floor.

    python -m opcua_devices.bench [--n 500] [--json]

prints ``{"opcua_call": {"p50_ms", "p99_ms", "mean_ms", "max_ms", "n"}, "opcua_connect_ms": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH_NS = "https://aigc-offload.example/UA/Bench/"


def _stats(samples_s: list[float]) -> dict[str, float]:
    a = np.asarray(samples_s) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3), "max_ms": round(float(a.max()), 3), "n": int(a.size)}


async def _serve(port: int, pki_dir: str) -> None:
    """Server side (run in a child process): the devices' security and one no-op method."""
    import logging

    from asyncua import Server, ua, uamethod

    from .pki import LabPki, device_application_uri
    from .security import ServerSecurity, apply_server_security, read_users_file

    logging.basicConfig(level=logging.ERROR)
    pki = LabPki(Path(pki_dir))
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench/")
    await server.set_application_uri(device_application_uri("bench"))
    pair = pki.device("bench")
    await apply_server_security(server, ServerSecurity(pair.cert, pair.key, pki.trust_dir,
                                                       read_users_file(pki.users_file)))
    ns = await server.register_namespace(BENCH_NS)
    obj = await server.nodes.objects.add_object(ns, "Bench")

    @uamethod
    def echo(parent, x):  # noqa: ANN001  the floor: no work at all
        return x

    await obj.add_method(ns, "Echo", echo, [ua.VariantType.Int64], [ua.VariantType.Int64])
    async with server:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin


async def _client(url: str, pki_dir: str, n: int, warmup: int) -> dict[str, Any]:
    from asyncua import Client, ua

    from .pki import LabPki
    from .security import ClientSecurity, apply_client_security

    pki = LabPki(Path(pki_dir))
    pair = pki.client("gateway")
    client = Client(url, timeout=10)
    client.session_timeout = 60_000
    t0 = time.perf_counter()
    await apply_client_security(client, ClientSecurity(pair.cert, pair.key, pki.trust_dir, "gateway",
                                                       pki.client_password("gateway")))
    await client.connect()
    connect_s = time.perf_counter() - t0
    try:
        ns = await client.get_namespace_index(BENCH_NS)
        obj = await client.nodes.objects.get_child(f"{ns}:Bench")
        method = await obj.get_child(f"{ns}:Echo")
        req = ua.CallMethodRequest(ObjectId=obj.nodeid, MethodId=method.nodeid,
                                   InputArguments=[ua.Variant(7, ua.VariantType.Int64)])
        samples = []
        for i in range(warmup + n):
            t = time.perf_counter()
            res = (await client.uaclient.call([req]))[0]
            dt = time.perf_counter() - t
            res.StatusCode.check()
            if i >= warmup:
                samples.append(dt)
    finally:
        await client.disconnect()
    return {"opcua_call": _stats(samples), "opcua_connect_ms": round(connect_s * 1e3, 1)}


def run_benchmark(n: int = 500, warmup: int = 50) -> dict[str, Any]:
    """p50/p99 of a bare secure OPC UA method call round trip, server in a child process."""
    import socket

    from .pki import make_lab_pki

    with tempfile.TemporaryDirectory(prefix="opcua-bench-") as tmp:
        make_lab_pki(tmp, ["bench"], ["gateway"])
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, "-m", "opcua_devices.bench", "--serve", str(port), "--pki", tmp],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                cwd=str(Path(__file__).resolve().parent.parent))
        try:
            line = proc.stdout.readline() if proc.stdout else ""
            if line.strip() != "ready":
                raise RuntimeError(f"bench server did not start (exit code {proc.poll()})")
            return asyncio.run(_client(f"opc.tcp://127.0.0.1:{port}/bench/", tmp, n, warmup))
        finally:
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m opcua_devices.bench", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=500, help="measured calls")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # internal: the child process
    p.add_argument("--pki", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve:
        asyncio.run(_serve(a.serve, a.pki))
        return 0
    res = run_benchmark(a.n, a.warmup)
    if a.json:
        print(json.dumps(res))
    else:
        c = res["opcua_call"]
        print(f"secure OPC UA method call round trip: p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms "
              f"(n={c['n']}); secure connect {res['opcua_connect_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
