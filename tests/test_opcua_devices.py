"""opcua_devices with real asyncua servers and clients on free loopback ports.

One camera server is shared by the module (an asyncua server takes ~3 s to initialise here); the
tests that need their own server (restart, trace replay, anonymous opt-in) start and stop it.
Servers run on a background asyncio loop thread, as the ingress runs on its own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from asyncua import Client, ua

from mqtt_bridge.schemas import Decision, TaskRequest, TaskResult, TerminalState
from opcua_devices import model as m
from opcua_devices.executor import CostModelExecutor, ExecutionOutput
from opcua_devices.ingress import DeliveryRefused, IngressSettings, OpcuaIngress, request_task_call
from opcua_devices.pki import client_application_uri, make_lab_pki, self_signed_certificate
from opcua_devices.security import (
    ClientSecurity,
    ServerSecurity,
    apply_client_security,
    hash_password,
    read_users_file,
    verify_password,
    write_users_file,
)
from opcua_devices.server import DeviceServer
from opcua_devices.tasks import make_factory_simulator, scenario_tasks, trace_tasks
from policies.cost import compute_delay_s
from policies.workload import episode_rng

FAST = IngressSettings(backoff_min_s=0.2, backoff_max_s=1.0, delivery_timeout_s=10.0)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class LoopThread:
    """An asyncio loop in a thread: the device servers live here."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_rest():  # asyncua leaves session watchdogs behind after Server.stop()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.run(cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def loop():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    # Few PBKDF2 iterations keep the many test logins fast; the scheme is the production one.
    return make_lab_pki(root, ["cam01", "cam02", "plc01"], ["gateway"], pbkdf2_iterations=2_000)


def server_security(pki, device_id: str, **kw) -> ServerSecurity:
    pair = pki.device(device_id)
    return ServerSecurity(pair.cert, pair.key, pki.trust_dir, read_users_file(pki.users_file), **kw)


def gateway_security(pki, **kw) -> ClientSecurity:
    pair = pki.client("gateway")
    args = dict(cert=pair.cert, key=pair.key, trust_dir=pki.trust_dir, username="gateway",
                password=pki.client_password("gateway"))
    args.update(kw)
    return ClientSecurity(**args)


@pytest.fixture(scope="module")
def camera(loop, pki):
    url = f"opc.tcp://127.0.0.1:{free_port()}/aigc/"
    dev = DeviceServer("cam01", "camera", url, server_security(pki, "cam01"), result_grace_s=30.0)
    loop.run(dev.start())
    yield dev
    loop.run(dev.stop())


async def connect(url: str, sec: ClientSecurity) -> Client:
    client = Client(url, timeout=4)
    client.session_timeout = 60_000
    await apply_client_security(client, sec)
    await client.connect()
    return client


async def read(client: Client, device_id: str, name: str):
    ns = await client.get_namespace_index(m.NAMESPACE_URI)
    return await (await client.nodes.objects.get_child([f"{ns}:{device_id}", f"{ns}:{name}"])).read_value()


def wait_for(pred, timeout_s: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------------------------
# Units without servers
# --------------------------------------------------------------------------------------------
def test_password_hashes_and_users_file(tmp_path):
    h = hash_password("s3cret", iterations=1_000)
    assert h.startswith("pbkdf2_sha256$1000$") and "s3cret" not in h
    assert verify_password("s3cret", h) and not verify_password("s3cret!", h)
    write_users_file(tmp_path / "u.json", {"gw": h})
    assert read_users_file(tmp_path / "u.json") == {"gw": h}
    (tmp_path / "clear.json").write_text(json.dumps({"gw": "s3cret"}))
    with pytest.raises(ValueError, match="clear-text"):
        read_users_file(tmp_path / "clear.json")


def test_scenario_tasks_are_the_simulators_workload():
    sim = make_factory_simulator()
    idx = sim.preset.num_controllers + 2  # a camera
    wl = sim.generate_workload(episode_rng(3, 0, 0), 0)
    rows = np.flatnonzero(wl.tasks["source"] == idx)
    planned = list(scenario_tasks(idx, seed=3, episodes=1))
    assert len(planned) == rows.size > 0
    for pt, r in zip(planned, rows):
        assert pt.at_s == pytest.approx(wl.tasks["slot"][r] * sim.preset.slot_s)
        assert pt.model_name == sim.preset.models[wl.tasks["model"][r]].name
        assert pt.work_units == wl.tasks["units"][r] and pt.task_kind.value == "defect_image"
        assert pt.input_bits == round(wl.tasks["input_mbit"][r] * 1e6)


def test_cost_model_executor_uses_compute_delay():
    ex = CostModelExecutor(2.0)
    req = TaskRequest(task_id="t1", device_id="plc01", task_kind="report", model_name="report-m", input_bits=1,
                      output_tokens=100, deadline_s=2.5, created_at=datetime.now(timezone.utc))
    assert ex.compute_time_s(req) == pytest.approx(float(compute_delay_s(100 * 0.018e9, 2.0e9)))


# --------------------------------------------------------------------------------------------
# Information model and security
# --------------------------------------------------------------------------------------------
def test_browse_information_model(loop, pki, camera):
    async def browse():
        c = await connect(camera.endpoint, gateway_security(pki))
        try:
            ns = await c.get_namespace_index(m.NAMESPACE_URI)
            base = await c.nodes.base_object_type.get_child(f"{ns}:{m.DEVICE_BASE_TYPE}")
            assert (await base.read_attribute(ua.AttributeIds.IsAbstract)).Value.Value is True
            subtypes = {(await n.read_browse_name()).Name
                        for n in await base.get_children(refs=ua.ObjectIds.HasSubtype)}
            assert subtypes == {m.CONTROLLER_TYPE, m.CAMERA_TYPE}
            members = {(await n.read_browse_name()).Name for n in await base.get_children()}
            assert {"RequestTask", "DeliverDecision", "DeliverResult", "State", "TasksRequested", "TasksDone",
                    "TasksFailed", "LastError", "LastDecision", "LastResult", "PendingRequests"} <= members
            rt = await base.get_child(f"{ns}:RequestTask")
            inputs = await (await rt.get_child("0:InputArguments")).read_value()
            assert [(a.Name, a.DataType.Identifier) for a in inputs] == [
                ("TaskKind", ua.ObjectIds.String), ("ModelName", ua.ObjectIds.String),
                ("InputBits", ua.ObjectIds.Int64), ("WorkUnits", ua.ObjectIds.Int32),
                ("DeadlineS", ua.ObjectIds.Double), ("Prompt", ua.ObjectIds.String)]
            outputs = await (await rt.get_child("0:OutputArguments")).read_value()
            assert [a.Name for a in outputs] == ["TaskId"]
            dd = await base.get_child(f"{ns}:DeliverDecision")
            names = [a.Name for a in await (await dd.get_child("0:InputArguments")).read_value()]
            assert names[:2] == ["TaskId", "Target"] and "DecidedAt" in names
            ev = await c.nodes.base_event_type.get_child(f"{ns}:{m.REQUEST_EVENT_TYPE}")
            props = {(await n.read_browse_name()).Name for n in await ev.get_properties()}
            assert {f for f, _ in m.REQUEST_EVENT_FIELDS} <= props
            obj = await c.nodes.objects.get_child(f"{ns}:cam01")
            typedef = await obj.read_type_definition()
            assert (await c.get_node(typedef).read_browse_name()).Name == m.CAMERA_TYPE
            assert await read(c, "cam01", "DeviceId") == "cam01"
            assert await read(c, "cam01", "State") == "ready"
            notifier = (await obj.read_attribute(ua.AttributeIds.EventNotifier)).Value.Value
            assert notifier & 1  # SubscribeToEvents
        finally:
            await c.disconnect()

    loop.run(browse())


def test_security_only_sign_and_encrypt_and_trusted_users(loop, pki, camera, tmp_path):
    async def check():
        # The trusted gateway with its password gets in; the server offers one endpoint only.
        c = await connect(camera.endpoint, gateway_security(pki))
        eps = await c.get_endpoints()
        await c.disconnect()
        assert {(e.SecurityMode, e.SecurityPolicyUri.rsplit("#", 1)[1]) for e in eps} == {
            (ua.MessageSecurityMode.SignAndEncrypt, "Basic256Sha256")}
        assert [t.TokenType for t in eps[0].UserIdentityTokens] == [ua.UserTokenType.UserName]
        # No security: no endpoint to connect to.
        plain = Client(camera.endpoint, timeout=4)
        with pytest.raises(ua.UaError):
            await plain.connect()
        # An untrusted (self-signed) client certificate is rejected.
        rogue = self_signed_certificate(tmp_path / "rogue", "rogue", client_application_uri("rogue"), server=False)
        with pytest.raises(ua.uaerrors.BadCertificateUntrusted):
            await connect(camera.endpoint, gateway_security(pki, cert=rogue.cert, key=rogue.key))
        # A wrong password, an unknown user and an anonymous session are rejected.
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await connect(camera.endpoint, gateway_security(pki, password="not-the-password"))
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await connect(camera.endpoint, gateway_security(pki, username="mallory"))
        with pytest.raises(ua.uaerrors.BadIdentityTokenRejected):
            await connect(camera.endpoint, gateway_security(pki, username=None, password=None))
        # The client checks the server too: a trust directory with another CA refuses the device.
        other = make_lab_pki(tmp_path / "other", [], ["x"], pbkdf2_iterations=1_000)
        with pytest.raises(ua.uaerrors.BadCertificateUntrusted):
            await connect(camera.endpoint, gateway_security(pki, trust_dir=other.trust_dir))

    loop.run(check())


# --------------------------------------------------------------------------------------------
# Requests, decisions, results through the ingress
# --------------------------------------------------------------------------------------------
def test_request_decision_result_round_trip(loop, pki, camera):
    runs: list[m.ExecutionReport] = []
    finished: list[TaskResult] = []
    ing = OpcuaIngress([camera.endpoint], gateway_security(pki), settings=FAST, on_device_result=runs.append,
                       on_device_finished=finished.append)
    ing.start(wait_connected_s=15)
    try:
        assert ing.status()[0].device_ids == ["cam01"]

        async def plc_requests(n: int) -> list[str]:  # a PLC program calls RequestTask
            c = await connect(camera.endpoint, gateway_security(pki))
            try:
                ns = await c.get_namespace_index(m.NAMESPACE_URI)
                obj = await c.nodes.objects.get_child(f"{ns}:cam01")
                meth = await obj.get_child(f"{ns}:RequestTask")
                ids = []
                for _ in range(n):
                    res = (await c.uaclient.call([request_task_call(
                        obj.nodeid, meth.nodeid, "defect_image", "defect-m", 6_000_000, 4, 5.0, "scratch")]))[0]
                    res.StatusCode.check()
                    ids.append(res.OutputArguments[0].Value)
                return ids
            finally:
                await c.disconnect()

        remote_id, local_id, split_id = loop.run(plc_requests(3))
        got = [ing.get_request(5), ing.get_request(5), ing.get_request(5)]
        assert [r.task_id for r in got] == [remote_id, local_id, split_id]
        assert ing.device_info("cam01").kind == "camera" and ing.device_info("cam01").url == camera.endpoint
        req = got[0]
        assert isinstance(req, TaskRequest)
        assert (req.device_id, req.task_kind.value, req.model_name, req.input_bits, req.denoising_steps,
                req.output_tokens, req.deadline_s, req.prompt) == (
            "cam01", "defect_image", "defect-m", 6_000_000, 4, None, 5.0, "scratch")

        now = datetime.now(timezone.utc)
        decision = Decision(task_id=remote_id, device_id="cam01", target="edge", edge_server="es2",
                            offload_share=1.0, model_name="defect-m", policy="test v1", expected_latency_s=0.4,
                            decided_at=now)
        assert ing.submit_decision(decision).result(10) is None
        result = TaskResult(task_id=remote_id, device_id="cam01", state="done", executed_on="edge:es2",
                            latency_s=0.5, output_bits=800_000, output_uri="http://es2/out/1.png", finished_at=now)
        assert ing.submit_result(result).result(10) is None
        # A re-delivery (e.g. after a lost reply) is accepted and changes nothing.
        ing.submit_result(result).result(10)

        async def variables():
            c = await connect(camera.endpoint, gateway_security(pki))
            try:
                return {k: await read(c, "cam01", k) for k in ("LastDecision", "LastResult", "TasksDone",
                                                              "PendingRequests")}
            finally:
                await c.disconnect()

        v = loop.run(variables())
        assert Decision.model_validate_json(v["LastDecision"]) == decision
        assert TaskResult.model_validate_json(v["LastResult"]) == result
        assert v["TasksDone"] >= 1
        assert remote_id not in v["PendingRequests"] and local_id in v["PendingRequests"]
        assert [r.task_id for r in finished] == [remote_id]  # the device's echo of the terminal state

        # A local decision: the device runs the task with its (cost-model) executor and reports the run
        # (part whole); the task's terminal state still comes from the gateway.
        full_s = 4 * 0.22 / 4.0  # W / f_m at the 4 GHz default
        ing.submit_decision(Decision(task_id=local_id, device_id="cam01", target="device", model_name="defect-m",
                                     policy="test v1", decided_at=now)).result(10)
        run = wait_for(lambda: [r for r in runs if r.result.task_id == local_id], 10, "the local run")[0]
        assert (run.part, run.result.state.value, run.result.executed_on) == ("whole", "done", "device")
        assert run.result.output_bits and run.compute_s == pytest.approx(full_s, rel=0.2)
        assert local_id not in [r.task_id for r in finished]
        ing.submit_result(run.result).result(10)
        wait_for(lambda: local_id in [r.task_id for r in finished], 10, "the local task's terminal echo")
        # A split decision: the device runs its 1 - 0.25 share and reports it as part local.
        ing.submit_decision(Decision(task_id=split_id, device_id="cam01", target="cloud", offload_share=0.25,
                                     model_name="defect-m", policy="test v1", decided_at=now)).result(10)
        run = wait_for(lambda: [r for r in runs if r.result.task_id == split_id], 10, "the local share")[0]
        assert (run.part, run.offload_share, run.result.state.value) == ("local", 0.25, "done")
        assert run.compute_s == pytest.approx(0.75 * full_s, rel=0.2)
        assert split_id in json.dumps(json.loads(loop.run(_read_var(camera, pki, "PendingExecutions"))))
        ing.submit_result(TaskResult(task_id=split_id, device_id="cam01", state="done", executed_on="cloud",
                                     finished_at=datetime.now(timezone.utc))).result(10)
        assert split_id not in loop.run(_read_var(camera, pki, "PendingExecutions"))
    finally:
        ing.stop()


def test_decisions_to_one_server_go_out_in_few_call_requests(loop, pki, camera):
    """Decisions queued together for one server travel in one Call request each batch (ingress
    _Conn.call); a refused one in the middle gets its own refusal, the others are delivered."""
    ing = OpcuaIngress([camera.endpoint], gateway_security(pki), settings=FAST)
    ing.start(wait_connected_s=15)
    try:
        async def plc_requests(n: int) -> list[str]:
            c = await connect(camera.endpoint, gateway_security(pki))
            try:
                ns = await c.get_namespace_index(m.NAMESPACE_URI)
                obj = await c.nodes.objects.get_child(f"{ns}:cam01")
                meth = await obj.get_child(f"{ns}:RequestTask")
                calls = [request_task_call(obj.nodeid, meth.nodeid, "defect_image", "defect-s", 5_000_000, 3, 30.0)
                         for _ in range(n)]
                res = await c.uaclient.call(calls)  # a PLC may batch too
                return [r.OutputArguments[0].Value for r in res]
            finally:
                await c.disconnect()

        ids = loop.run(plc_requests(40))
        assert len(set(ids)) == 40
        uaclient = ing._conns[0].client.uaclient
        sizes: list[int] = []
        real_call = uaclient.call

        async def counting_call(methods):
            sizes.append(len(methods))
            return await real_call(methods)

        uaclient.call = counting_call
        now = datetime.now(timezone.utc)
        decisions = [Decision(task_id=t, device_id="cam01", target="cloud", model_name="defect-s", policy="p",
                              decided_at=now) for t in ids[:20]]
        decisions.append(Decision(task_id="cam01-nope-000001", device_id="cam01", target="cloud",
                                  model_name="defect-s", policy="p", decided_at=now))
        decisions += [Decision(task_id=t, device_id="cam01", target="cloud", model_name="defect-s", policy="p",
                               decided_at=now) for t in ids[20:]]
        futs = [ing.submit_decision(d) for d in decisions]
        outcomes = []
        for f in futs:
            try:
                outcomes.append(f.result(15))
            except DeliveryRefused as exc:
                outcomes.append(exc)
        assert sum(o is None for o in outcomes) == 40
        assert isinstance(outcomes[20], DeliveryRefused)
        assert sum(sizes) == 41 and len(sizes) < 41 and max(sizes) > 1, sizes
        left = json.loads(loop.run(_read_var(camera, pki, "PendingRequests")) or "[]")
        assert not set(ids) & {item["task_id"] if isinstance(item, dict) else item for item in left}
    finally:
        ing.stop()


async def _read_var(dev, pki, name: str):
    c = await connect(dev.endpoint, gateway_security(pki))
    try:
        return await read(c, dev.device_id, name)
    finally:
        await c.disconnect()


def test_malformed_calls_get_typed_errors(loop, pki, camera):
    async def check():
        c = await connect(camera.endpoint, gateway_security(pki))
        try:
            ns = await c.get_namespace_index(m.NAMESPACE_URI)
            obj = await c.nodes.objects.get_child(f"{ns}:cam01")
            rt = await obj.get_child(f"{ns}:RequestTask")
            refused0 = await read(c, "cam01", "RequestsRefused")

            async def call(*args):
                return (await c.uaclient.call([request_task_call(obj.nodeid, rt.nodeid, *args)]))[0]

            async def last_error():
                return await read(c, "cam01", "LastError"), await read(c, "cam01", "LastErrorCode")

            res = await call("defect_image", "sd-unknown", 6_000_000, 4, 1.5)
            assert res.StatusCode.value == ua.StatusCodes.BadInvalidArgument
            err, code = await last_error()
            assert "sd-unknown" in err and code == "unknown_model"
            assert "sd-unknown" in res.InputArgumentDiagnosticInfos[1].AdditionalInfo

            res = await call("defect_image", "defect-s", 6_000_000, -3, 1.5)
            assert res.StatusCode.value == ua.StatusCodes.BadOutOfRange
            assert res.InputArgumentResults[3].value == ua.StatusCodes.BadOutOfRange
            err, code = await last_error()
            assert "WorkUnits" in err and "denoising_steps" in err and code == "schema_violation"

            res = await call("defect_image", "defect-s", 6_000_000, 4, 0.0)
            assert res.StatusCode.value == ua.StatusCodes.BadOutOfRange
            assert "DeadlineS" in (await last_error())[0]

            res = await call("report", "defect-s", 6_000_000, 4, 1.5)  # an image model for a report
            assert res.StatusCode.value == ua.StatusCodes.BadInvalidArgument

            # Wrong types and counts, from a client that ignores the declared arguments.
            bad = ua.CallMethodRequest(ObjectId=obj.nodeid, MethodId=rt.nodeid, InputArguments=[
                ua.Variant("defect_image"), ua.Variant("defect-s"), ua.Variant("lots"), ua.Variant(4),
                ua.Variant(1.5), ua.Variant("")])
            res = (await c.uaclient.call([bad]))[0]
            assert res.StatusCode.value == ua.StatusCodes.BadTypeMismatch
            assert "InputBits" in (await last_error())[0]
            bad.InputArguments = bad.InputArguments[:2]
            res = (await c.uaclient.call([bad]))[0]
            assert res.StatusCode.value == ua.StatusCodes.BadArgumentsMissing

            # A malformed DeliverDecision: target edge without an edge server.
            task_id = await camera.request_task("defect_image", "defect-s", 6_000_000, 2, 5.0)
            dd = await obj.get_child(f"{ns}:DeliverDecision")
            d = Decision(task_id=task_id, device_id="cam01", target="device", model_name="defect-s", policy="p",
                         decided_at=datetime.now(timezone.utc))
            args = m.decision_to_args(d)
            args[1] = ua.Variant("edge", ua.VariantType.String)
            res = (await c.uaclient.call([ua.CallMethodRequest(ObjectId=obj.nodeid, MethodId=dd.nodeid,
                                                               InputArguments=args)]))[0]
            assert not res.StatusCode.is_good()
            err, code = await last_error()
            assert "edge_server" in err and code == "schema_violation"
            assert await read(c, "cam01", "RequestsRefused") == refused0 + 7
            # The device is still serving: the same task can still be decided properly.
            res = (await c.uaclient.call([ua.CallMethodRequest(ObjectId=obj.nodeid, MethodId=dd.nodeid,
                                                               InputArguments=m.decision_to_args(d))]))[0]
            assert res.StatusCode.is_good()
            assert await read(c, "cam01", "State") in ("ready", "executing")
        finally:
            await c.disconnect()

    loop.run(check())

    # Through the ingress: a delivery the device refuses fails the future with the sentence.
    ing = OpcuaIngress([camera.endpoint], gateway_security(pki), settings=FAST)
    ing.start(wait_connected_s=15)
    try:
        fut = ing.submit_decision(Decision(task_id="cam01-nope-000001", device_id="cam01", target="cloud",
                                           model_name="defect-s", policy="p", decided_at=datetime.now(timezone.utc)))
        with pytest.raises(DeliveryRefused, match="did not request"):
            fut.result(10)
        with pytest.raises(Exception, match="no connected OPC UA server hosts device 'cam99'"):
            ing.submit_decision(Decision(task_id="x", device_id="cam99", target="cloud", model_name="defect-s",
                                         policy="p", decided_at=datetime.now(timezone.utc))).result(10)
    finally:
        ing.stop()


def test_server_restart_ingress_reconnects(loop, pki):
    url = f"opc.tcp://127.0.0.1:{free_port()}/aigc/"
    dev = DeviceServer("plc01", "controller", url, server_security(pki, "plc01"))
    loop.run(dev.start())
    ing = OpcuaIngress([url], gateway_security(pki), settings=FAST)
    try:
        ing.start(wait_connected_s=15)
        first = loop.run(dev.request_task("report", "report-s", 3_000_000, 64, 2.5))
        assert ing.get_request(5).task_id == first
        loop.run(dev.stop())
        wait_for(lambda: not ing.status()[0].connected, 10, "the ingress to notice the loss")
        dev = DeviceServer("plc01", "controller", url, server_security(pki, "plc01"))
        loop.run(dev.start())
        # Raised before the ingress is back: handed over from PendingRequests on reconnect.
        early = loop.run(dev.request_task("report", "report-m", 3_000_000, 64, 20.0))
        wait_for(lambda: ing.status()[0].connects >= 2 and ing.status()[0].connected, 20, "the reconnect")
        late = loop.run(dev.request_task("report", "report-l", 3_000_000, 64, 20.0))
        got = [ing.get_request(5), ing.get_request(5)]
        assert {r.task_id for r in got if r} == {early, late}
        assert ing.get_request(0.3) is None  # each task once
        ing.submit_result(TaskResult(task_id=late, device_id="plc01", state="rejected", reason="test",
                                     finished_at=datetime.now(timezone.utc))).result(10)
        assert dev.counters["TasksFailed"] == 1
    finally:
        ing.stop()
        loop.run(dev.stop())


def test_trace_replay_in_order_and_anonymous_opt_in(loop, pki, tmp_path):
    from policies.evaluate import generate_workloads, save_trace

    sim = make_factory_simulator()
    trace = tmp_path / "factory.jsonl"
    save_trace(sim, str(trace), generate_workloads(sim, 1, seed=11))
    cam_index = sim.preset.num_controllers + 1
    planned = list(trace_tasks(str(trace), cam_index))
    assert len(planned) >= 5
    url = f"opc.tcp://127.0.0.1:{free_port()}/aigc/"
    # 20 s of plant time replayed in 0.4 s; started 2 s late so the ingress is subscribed.
    delayed = [type(pt)(**{**pt.__dict__, "at_s": pt.at_s + 100.0}) for pt in planned]
    dev = DeviceServer("cam02", "camera", url, server_security(pki, "cam02", allow_anonymous=True),
                       tasks=delayed, time_scale=0.02)
    loop.run(dev.start())
    ing = OpcuaIngress([url], gateway_security(pki), settings=FAST)
    try:
        ing.start(wait_connected_s=15)
        got = [ing.get_request(5) for _ in planned]
        assert [(r.model_name, r.denoising_steps, r.input_bits, r.deadline_s) for r in got] == [
            (pt.model_name, pt.work_units, pt.input_bits, pt.deadline_s) for pt in planned]
        assert [r.task_id for r in got] == [r.task_id for r in dev.requested]  # in order

        async def anonymous():
            c = await connect(url, gateway_security(pki, username=None, password=None))
            try:
                return await read(c, "cam02", "TasksRequested")
            finally:
                await c.disconnect()

        assert loop.run(anonymous()) == len(planned)  # the lab opt-in lets anonymous sessions in
    finally:
        ing.stop()
        loop.run(dev.stop())


def test_tasks_nobody_answers_end_at_deadline_plus_grace_in_deadline_order(loop, pki):
    """No gateway: each task ends as deadline_missed once its deadline plus ``result_grace_s`` has
    passed, not before, whatever order the tasks were requested in."""
    finished: dict[str, tuple[float, object]] = {}
    url = f"opc.tcp://127.0.0.1:{free_port()}/aigc/"
    dev = DeviceServer("plc01", "controller", url, server_security(pki, "plc01"), result_grace_s=0.2,
                       on_finished=lambda r: finished.setdefault(r.task_id, (time.monotonic(), r)))
    loop.run(dev.start())
    try:
        t0 = time.monotonic()
        deadlines = {}
        for deadline_s in (1.5, 0.3, 0.9):
            tid = loop.run(dev.request_task("report", "report-s", 8_000, 64, deadline_s))
            deadlines[tid] = deadline_s
        wait_for(lambda: len(finished) == 3, 10.0, "three terminal results")
        order = sorted(finished, key=lambda t: finished[t][0])
        assert order == sorted(deadlines, key=deadlines.get)
        for tid, (at, res) in finished.items():
            assert res.state == TerminalState.deadline_missed and "no decision reached the device" in res.reason
            # not before deadline + grace; within a few sweeps (0.25 s each) after it
            assert deadlines[tid] + 0.2 <= at - t0 + 0.05 < deadlines[tid] + 0.2 + 3.0, (tid, at - t0)
    finally:
        loop.run(dev.stop())


def test_arrivals_start_when_a_gateway_subscribes(loop, pki):
    """--start-when-subscribed: no task is raised before a client monitors the device's events (its
    deadline would pass while it waits for a gateway); then the arrival process runs."""
    planned = list(itertools.islice(scenario_tasks(0, seed=3), 5))
    url = f"opc.tcp://127.0.0.1:{free_port()}/aigc/"
    dev = DeviceServer("plc01", "controller", url, server_security(pki, "plc01"), tasks=planned,
                       time_scale=0.01, start_when_subscribed=True)
    loop.run(dev.start())
    ing = OpcuaIngress([url], gateway_security(pki), settings=FAST)
    try:
        time.sleep(1.0)  # every planned arrival is due by now (time_scale 0.01)
        assert list(dev.requested) == [] and not dev.has_event_subscriber()
        subscribed_at = datetime.now(timezone.utc)
        ing.start(wait_connected_s=15)
        got = [ing.get_request(10) for _ in planned]
        assert dev.has_event_subscriber()
        assert [r.task_id for r in got] == [r.task_id for r in dev.requested]
        assert all(r.created_at >= subscribed_at for r in got)
    finally:
        ing.stop()
        loop.run(dev.stop())


def test_executor_output_breaking_the_schema_is_a_failed_run(loop, pki):
    """An executor output the result schema refuses (negative size, over-long URI) is reported as a
    failed run naming the violation, and the task still ends (it used to stay running forever)."""
    outputs = iter([ExecutionOutput(output_bits=-8),
                    ExecutionOutput(output_bits=8, output_uri="http://x/" + "a" * 3000)])

    async def bad_executor(request, decision):
        return next(outputs)

    runs: list[m.ExecutionReport] = []
    finished: list[TaskResult] = []
    url = f"opc.tcp://127.0.0.1:{free_port()}/aigc/"
    dev = DeviceServer("plc01", "controller", url, server_security(pki, "plc01"), executor=bad_executor,
                       result_grace_s=0.2, on_executed=runs.append, on_finished=finished.append)
    loop.run(dev.start())
    try:
        ids = [loop.run(dev.request_task("report", "report-s", 8_000, 64, 1.0)) for _ in range(2)]
        for tid in ids:
            loop.run(dev.deliver_decision(Decision(task_id=tid, device_id="plc01", target="device",
                                                   model_name="report-s", policy="p",
                                                   decided_at=datetime.now(timezone.utc))))
        wait_for(lambda: len(runs) == 2, 10, "two execution reports")
        assert [r.result.task_id for r in runs] == ids
        assert all((r.part, r.result.state) == ("whole", TerminalState.failed) for r in runs)
        assert "output_bits" in runs[0].result.reason and "greater than or equal to 0" in runs[0].result.reason
        assert "output_uri" in runs[1].result.reason and "2048" in runs[1].result.reason
        # no gateway answers: each task ends with its run's outcome after deadline plus grace
        wait_for(lambda: len(finished) == 2, 10, "two terminal states")
        assert sorted((r.task_id, r.state) for r in finished) == [(t, TerminalState.failed) for t in sorted(ids)]
        assert not dev._tasks
    finally:
        loop.run(dev.stop())


def _run_server_cli(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "opcua_devices.server", "--source", "none", *args],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:  # it started serving after all: stop it
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_one_sentence(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in needles), proc.stderr


def test_server_cli_bad_setup_is_one_sentence_not_a_traceback(pki):
    # a device the PKI has no certificate for
    proc = _run_server_cli("--kind", "camera", "--device-id", "cam09", "--port", str(free_port()),
                           "--pki", str(pki.root))
    _assert_one_sentence(proc, "cam09", "not enrolled", "--devices cam09")
    # a --cert that does not exist
    missing = str(pki.root / "nowhere" / "cert.der")
    proc = _run_server_cli("--kind", "camera", "--device-id", "cam01", "--port", str(free_port()),
                           "--pki", str(pki.root), "--cert", missing)
    _assert_one_sentence(proc, missing, "does not exist")
    # a device id that is not one
    proc = _run_server_cli("--kind", "camera", "--device-id", "cam 01", "--port", str(free_port()),
                           "--pki", str(pki.root))
    _assert_one_sentence(proc, "device id 'cam 01'")
    # a port another process listens on
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        proc = _run_server_cli("--kind", "camera", "--device-id", "cam01", "--host", "127.0.0.1", "--port",
                               str(port), "--pki", str(pki.root))
    finally:
        blocker.close()
    _assert_one_sentence(proc, f"127.0.0.1:{port}", "address already in use")


@pytest.mark.parametrize("stored_iterations", [None, 2_000])
def test_unknown_user_runs_the_same_pbkdf2_as_a_wrong_password(monkeypatch, stored_iterations):
    """No user enumeration by timing: an unknown user name costs the PBKDF2 iterations a real user's
    wrong password costs (checked on the iteration counts actually run, not by timing)."""
    import hashlib

    from opcua_devices.security import PBKDF2_ITERATIONS, PasswordUserManager

    kw = {} if stored_iterations is None else {"iterations": stored_iterations}
    users = {"gateway": hash_password("right", **kw), "bench": hash_password("other", **kw)}
    manager = PasswordUserManager(users)
    runs: list[int] = []
    monkeypatch.setattr(hashlib, "pbkdf2_hmac",
                        lambda name, pw, salt, iterations, *a: runs.append(iterations) or b"\0" * 32)
    assert manager.get_user(None, "gateway", "wrong") is None
    wrong_password = list(runs)
    runs.clear()
    assert manager.get_user(None, "mallory", "wrong") is None
    assert wrong_password == [stored_iterations or PBKDF2_ITERATIONS]
    assert runs == wrong_password
    # without users the production count is used
    runs.clear()
    assert PasswordUserManager({}).get_user(None, "mallory", "x") is None
    assert runs == [PBKDF2_ITERATIONS]
