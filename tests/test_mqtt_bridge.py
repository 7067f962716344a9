"""mqtt_bridge against a real mosquitto (TLS, passwords, ACL, persistence) on free ports."""

from __future__ import annotations

import json
import queue
import time
import uuid

import pytest

from mqtt_bridge.schemas import (
    SCHEMA_DIR,
    Decision,
    DeviceStatus,
    ErrorCode,
    ErrorReply,
    TaskRequest,
    TaskResult,
    stale_schemas,
    utc_now,
)
from mqtt_bridge.topics import (
    Channel,
    DeviceAddress,
    TopicError,
    bridge_status_topic,
    format_topic,
    parse_topic,
    sibling_topic,
    subscription,
)

CAM1 = DeviceAddress("s1", "l1", "cam1")
CAM2 = DeviceAddress("s1", "l2", "cam2")
CAM3 = DeviceAddress("s2", "l1", "cam3")


def make_request(device: str = "cam1", task_id: str | None = None, **kw) -> TaskRequest:
    fields = dict(task_id=task_id or f"t-{uuid.uuid4().hex[:8]}", device_id=device, task_kind="defect_image",
                  model_name="sd-defect-v2", input_bits=6_000_000, denoising_steps=10, deadline_s=2.0,
                  created_at=utc_now())
    fields.update(kw)
    return TaskRequest(**fields)


# -- schemas and topics (no broker) ---------------------------------------------------------------
def test_committed_json_schemas_are_current():
    assert stale_schemas(SCHEMA_DIR) == [], "run: python -m mqtt_bridge.schemas --write mqtt_bridge/schema"


def test_schema_rules():
    req = make_request()
    assert TaskRequest.model_validate_json(req.to_json()) == req
    with pytest.raises(ValueError, match="needs denoising_steps"):
        make_request(denoising_steps=None)
    with pytest.raises(ValueError, match="output_tokens"):
        make_request(task_kind="report", denoising_steps=None)
    make_request(task_kind="report", denoising_steps=None, output_tokens=200)
    with pytest.raises(ValueError, match="Extra inputs"):
        TaskRequest.model_validate({**json.loads(req.to_json()), "colour": "red"})
    with pytest.raises(ValueError, match="timezone"):
        make_request(created_at="2025-01-01T00:00:00")
    with pytest.raises(ValueError, match="needs a reason"):
        TaskResult(task_id="t", device_id="cam1", state="failed", finished_at=utc_now())
    with pytest.raises(ValueError, match="edge_server"):
        Decision(task_id="t", device_id="cam1", target="edge", model_name="m", policy="p", decided_at=utc_now())


def test_topic_scheme():
    assert format_topic(CAM1, Channel.request) == "factory/s1/l1/cam1/aigc/request"
    assert parse_topic("factory/s1/l1/cam1/aigc/result") == (CAM1, Channel.result)
    assert subscription("request") == "factory/+/+/+/aigc/request"
    assert bridge_status_topic("gw1") == "factory/aigc/bridge/gw1/status"
    for bad in ("factory/s1/l1/cam1/aigc/other", "factory/s1/l1/cam 1/aigc/request", "factory/s1/l1/aigc/request",
                "factory/s1/l1/+/aigc/request", "factory/s1/l1/$x/aigc/request", "f/s/l/d/x/request"):
        with pytest.raises(TopicError):
            parse_topic(bad)
    for bad in ("", "a/b", "a+", "#", "-lead", "x" * 65, "é"):
        with pytest.raises(TopicError):
            DeviceAddress("s1", "l1", bad)
    assert sibling_topic("factory/s1/l1/cam 1/aigc/request", "error") == "factory/s1/l1/cam 1/aigc/error"
    assert sibling_topic("a/b", "error") is None


def test_acl_text_is_per_device():
    from mqtt_bridge.broker import acl_text

    text = acl_text([CAM1], ["bridge"])
    cam = text.split("user cam1\n")[1]
    assert "topic write factory/s1/l1/cam1/aigc/request" in cam
    assert "topic write factory/s1/l1/cam1/aigc/status" in cam
    assert "topic read factory/s1/l1/cam1/aigc/decision" in cam
    assert "+/+/+" not in cam and "#" not in cam


# -- against mosquitto ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    pytest.importorskip("paho.mqtt")
    from mqtt_bridge.broker import MosquittoBroker, require_tools

    try:
        require_tools()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    b = MosquittoBroker(tmp_path_factory.mktemp("mosquitto"), devices=[CAM1, CAM2, CAM3], plain_listener=True)
    b.start()
    yield b
    b.close()


@pytest.fixture
def clients():
    """Everything a test starts; stopped at teardown even when the test fails."""
    started = []
    yield started
    for c in reversed(started):
        try:
            c.stop()
        except Exception:
            pass


def _settings(broker, user, **kw):
    kw.setdefault("session_expiry_s", 60)
    kw.setdefault("reconnect_min_delay_s", 1)
    kw.setdefault("reconnect_max_delay_s", 2)
    return broker.settings(user, **kw)


def start_bridge(broker, clients, client_id=None, **kw):
    from mqtt_bridge.client import BridgeClient

    settings = _settings(broker, "bridge", **kw.pop("settings", {}))
    bridge = BridgeClient(settings, client_id=client_id or f"bridge-{uuid.uuid4().hex[:8]}", **kw)
    clients.append(bridge)
    bridge.start()
    return bridge


def start_device(broker, clients, address=CAM1, **kw):
    from mqtt_bridge.client import DeviceClient

    dev = DeviceClient(_settings(broker, address.device, **kw.pop("settings", {})), address,
                       client_id=kw.pop("client_id", f"{address.device}-{uuid.uuid4().hex[:8]}"), **kw)
    clients.append(dev)
    dev.start()
    return dev


def answering(bridge_box):
    """on_request that decides 'edge' and then reports 'done', like a gateway would."""

    def on_request(inc):
        r = inc.request
        bridge = bridge_box[0]
        bridge.publish_decision(Decision(task_id=r.task_id, device_id=r.device_id, target="edge", edge_server="es1",
                                         offload_share=0.7, model_name=r.model_name, policy="test-policy v1",
                                         expected_latency_s=0.4, decided_at=utc_now()))
        bridge.publish_result(TaskResult(task_id=r.task_id, device_id=r.device_id, state="done",
                                         executed_on="edge:es1", latency_s=0.01, output_bits=800_000,
                                         finished_at=utc_now()))
    return on_request


def next_item(q: queue.Queue, kind, timeout=3.0):
    deadline = time.monotonic() + timeout
    while True:
        item = q.get(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(item, kind):
            return item


def wait_for(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_request_decision_and_result_round_trip(broker, clients):
    box = []
    bridge = start_bridge(broker, clients, on_request=answering(box))
    box.append(bridge)
    dev = start_device(broker, clients)
    req = make_request()
    handle = dev.submit(req)
    decision = handle.decision.result(5)
    assert (decision.task_id, decision.target.value, decision.edge_server) == (req.task_id, "edge", "es1")
    result = handle.result.result(5)
    assert result.state.value == "done" and result.task_id == req.task_id
    wait_for(lambda: bridge.device_status.get("cam1") and bridge.device_status["cam1"].state == "online",
             what="cam1 online status at the bridge")
    assert bridge.stats["accepted"] == 1 and bridge.stats["errors"] == 0


def test_mqtt311_option_round_trip(broker, clients):
    box = []
    bridge = start_bridge(broker, clients, on_request=answering(box), settings={"protocol": "3.1.1"})
    box.append(bridge)
    dev = start_device(broker, clients, settings={"protocol": "3.1.1"})
    assert dev.request(make_request(), timeout_s=5).target.value == "edge"


def test_bad_payloads_get_error_replies_and_bridge_keeps_working(broker, clients):
    from mqtt_bridge.client import RequestRefused

    box = []
    bridge = start_bridge(broker, clients, on_request=answering(box), known_models={"sd-defect-v2", "llm-report"},
                          max_payload_bytes=4096)
    box.append(bridge)
    dev = start_device(broker, clients)
    topic = CAM1.topic(Channel.request)
    good = json.loads(make_request(task_id="dup-1").to_json())
    cases = [
        (b"{not json", ErrorCode.malformed_json, "not valid JSON"),
        (b"\xff\xfe\x00", ErrorCode.malformed_json, "not UTF-8"),
        (b"[1, 2, 3]", ErrorCode.malformed_json, "expected a JSON object"),
        (b"", ErrorCode.malformed_json, "not valid JSON"),
        (json.dumps({"task_id": "t-missing"}).encode(), ErrorCode.schema_violation, "device_id"),
        (json.dumps({**good, "task_id": "t-extra", "colour": "red"}).encode(), ErrorCode.schema_violation, "colour"),
        (json.dumps({**good, "task_id": "t-neg", "deadline_s": -1}).encode(), ErrorCode.schema_violation, "deadline_s"),
        (json.dumps({**good, "task_id": "t-kind", "task_kind": "report"}).encode(), ErrorCode.schema_violation,
         "output_tokens"),
        (json.dumps({**good, "task_id": "t-dev", "device_id": "cam2"}).encode(), ErrorCode.device_mismatch, "cam2"),
        (json.dumps({**good, "task_id": "t-model", "model_name": "gpt-x"}).encode(), ErrorCode.unknown_model, "gpt-x"),
        (b'{"a": "' + b"x" * 5000 + b'"}', ErrorCode.payload_too_large, "4096"),
        (b"[" * 100_000 + b"]" * 100_000, ErrorCode.payload_too_large, "bytes"),
    ]
    for payload, code, needle in cases:
        dev.publish_raw(topic, payload, wait_s=3)
        err = next_item(dev.unmatched, ErrorReply)
        assert err.code == code, (payload[:60], err)
        assert needle in err.reason, (needle, err.reason)
        assert err.topic == topic and err.device_id == "cam1"
        assert err.payload_excerpt == payload[:200].decode("utf-8", errors="replace") + ("..." if len(payload) > 200 else "")
    # task_id is echoed when it could be read
    dev.publish_raw(topic, json.dumps({**good, "task_id": "t-echo", "input_bits": "many"}).encode(), wait_s=3)
    err = next_item(dev.unmatched, ErrorReply)
    assert err.task_id == "t-echo" and any(i.field == "input_bits" for i in err.issues)
    # duplicate task id with a different payload; an identical redelivery is not an error
    first = dev.submit(TaskRequest.model_validate(good))
    assert first.decision.result(5).task_id == "dup-1"
    # its result first: a result still in flight would otherwise settle the duplicate's handle below (same id)
    assert first.result.result(5).state.value == "done"
    dev.publish_raw(topic, json.dumps(good).encode(), wait_s=3)
    handle = dev.submit(TaskRequest.model_validate({**good, "denoising_steps": 3}))
    with pytest.raises(RequestRefused, match="duplicate_task"):
        handle.decision.result(5)
    # still working
    assert dev.request(make_request(), timeout_s=5).target.value == "edge"
    assert bridge.stats["accepted"] == 2 and bridge.stats["redelivered"] == 1
    assert bridge.error_counts["malformed_json"] == 4


def test_overloaded_hand_off_is_refused(broker, clients):
    from mqtt_bridge.client import RequestRefused

    bridge = start_bridge(broker, clients, queue_size=1)  # no callback: requests wait in the queue
    dev = start_device(broker, clients)
    first = dev.submit(make_request())
    second = dev.submit(make_request())
    with pytest.raises(RequestRefused, match="overloaded"):
        second.decision.result(5)
    inc = bridge.get_request(timeout=2)
    assert inc.request.task_id == first.task_id and inc.address == CAM1


def test_acl_denies_publishing_under_another_device(broker, clients):
    received = queue.Queue()
    start_bridge(broker, clients, on_request=received.put)
    dev = start_device(broker, clients)
    spoof = json.loads(make_request(device="cam2").to_json())
    rc = dev.publish_raw(CAM2.topic(Channel.request), json.dumps(spoof).encode(), wait_s=3)
    assert rc.is_failure and "authorized" in str(rc).lower()
    # a device may not forge its own decisions either
    forged = Decision(task_id="x", device_id="cam1", target="device", model_name="m", policy="p", decided_at=utc_now())
    assert dev.publish_raw(CAM1.topic(Channel.decision), forged.to_json(), wait_s=3).is_failure
    assert not dev.publish_raw(CAM1.topic(Channel.request), make_request().to_json(), wait_s=3).is_failure
    assert received.get(timeout=3).address == CAM1
    with pytest.raises(queue.Empty):
        received.get(timeout=0.3)


def test_persistent_session_delivers_request_sent_while_bridge_was_away(broker, clients):
    received = queue.Queue()
    cid = f"bridge-persist-{uuid.uuid4().hex[:6]}"
    first = start_bridge(broker, clients, client_id=cid, on_request=received.put)
    first.abort()  # crash: no DISCONNECT; the session stays on the broker
    dev = start_device(broker, clients)
    req = make_request()
    assert not dev.publish_raw(CAM1.topic(Channel.request), req.to_json(), wait_s=3).is_failure
    second = start_bridge(broker, clients, client_id=cid, on_request=received.put)
    assert received.get(timeout=5).request == req
    assert second.stats["accepted"] == 1


def test_request_survives_broker_restart_and_bridge_resubscribes(tmp_path, clients):
    from mqtt_bridge.broker import MosquittoBroker

    with MosquittoBroker(tmp_path / "mosq", devices=[CAM1]) as b:
        received = queue.Queue()
        bridge = start_bridge(b, clients, on_request=received.put)
        dev = start_device(b, clients)
        b.restart()  # persistence file written on SIGTERM, read on start
        wait_for(lambda: bridge.connect_count >= 2 and dev.connect_count >= 2, timeout=8, what="reconnects")
        req = make_request()
        assert not dev.publish_raw(CAM1.topic(Channel.request), req.to_json(), wait_s=3).is_failure
        assert received.get(timeout=5).request == req
        # bridge away, request queued in its session, broker restarted, bridge back: still delivered
        bridge.abort()
        req2 = make_request()
        assert not dev.publish_raw(CAM1.topic(Channel.request), req2.to_json(), wait_s=3).is_failure
        b.restart()
        again = start_bridge(b, clients, client_id=bridge.client_id, on_request=received.put)
        assert received.get(timeout=5).request == req2
        for c in (dev, again):
            c.stop()


def test_last_will_marks_device_offline(broker, clients):
    bridge = start_bridge(broker, clients)
    dev = start_device(broker, clients, address=CAM3)
    wait_for(lambda: getattr(bridge.device_status.get("cam3"), "state", None) == "online", what="cam3 online")
    dev.abort()  # connection dropped without DISCONNECT
    wait_for(lambda: bridge.device_status["cam3"].state == "offline", what="cam3 offline (last will)")
    assert "last will" in bridge.device_status["cam3"].reason
    # retained: a bridge that starts later sees it too
    late = start_bridge(broker, clients)
    wait_for(lambda: "cam3" in late.device_status, what="retained status")
    assert late.device_status["cam3"].state == "offline"


def test_clean_stop_publishes_offline_and_bridge_status_is_retained(broker, clients):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    bridge = start_bridge(broker, clients, bridge_id="gw7")
    dev = start_device(broker, clients, address=CAM2)
    dev.stop()
    wait_for(lambda: getattr(bridge.device_status.get("cam2"), "reason", None) == "clean shutdown",
             what="cam2 clean offline")
    seen = queue.Queue()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"obs-{uuid.uuid4().hex[:6]}")
    c.username_pw_set("cam1", broker.password("cam1"))
    c.tls_set(ca_certs=str(broker.ca_file))
    c.on_message = lambda cl, u, m: seen.put(m)
    c.connect("localhost", broker.tls_port)
    c.subscribe(bridge_status_topic("gw7"), qos=1)
    c.loop_start()
    try:
        msg = seen.get(timeout=3)
        assert msg.retain and DeviceStatus.model_validate_json(msg.payload).state == "online"
    finally:
        c.disconnect()
        c.loop_stop()


def test_tls_and_password_are_required(broker, clients):
    from mqtt_bridge.client import DeviceClient, MqttRefused, MqttSettings

    def attempt(settings):
        dev = DeviceClient(settings, CAM1, client_id=f"bad-{uuid.uuid4().hex[:6]}", persistent_session=False)
        clients.append(dev)
        dev.start()

    base = dict(host="localhost", port=broker.tls_port, ca_file=str(broker.ca_file), connect_timeout_s=1.5)
    with pytest.raises(MqttRefused, match="[Nn]ot authorized|[Bb]ad user"):
        attempt(MqttSettings(**base))  # anonymous
    with pytest.raises(MqttRefused):
        attempt(MqttSettings(**base, username="cam1", password="wrong"))
    with pytest.raises(TimeoutError):  # plain MQTT to the TLS listener: no CONNACK
        attempt(MqttSettings(**{**base, "tls": False, "ca_file": None}, username="cam1",
                             password=broker.password("cam1")))
    with pytest.raises(TimeoutError):  # a CA that did not sign the broker's certificate
        attempt(MqttSettings(**{**base, "ca_file": "/etc/ssl/certs/ca-certificates.crt"}, username="cam1",
                             password=broker.password("cam1")))
    with pytest.raises(MqttRefused):  # the plain (local measurement) listener still needs a password
        attempt(MqttSettings(host="localhost", port=broker.plain_port, tls=False, connect_timeout_s=1.5))
    attempt(MqttSettings(**base, username="cam1", password=broker.password("cam1")))  # the right way works


def test_readme_payload_examples_validate():
    import re
    from pathlib import Path

    from mqtt_bridge.schemas import MODELS

    text = (Path(__file__).parents[1] / "mqtt_bridge" / "README.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    assert len(blocks) >= 7
    for block in blocks:
        obj = json.loads(block)
        ok = []
        for model in MODELS.values():
            try:
                model.model_validate(obj)
                ok.append(model)
            except ValueError:
                pass
        assert ok, f"README example validates against no payload model: {block}"


def test_production_config_example_runs(tmp_path):
    """config/mosquitto.conf.example with its paths pointed at generated files starts mosquitto."""
    import os
    import subprocess
    from pathlib import Path

    from mqtt_bridge.broker import free_port, require_tools, write_broker_config

    try:
        require_tools()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    files = write_broker_config(tmp_path / "gen", tls_port=free_port(), devices=[CAM1])
    example = (Path(__file__).parents[1] / "mqtt_bridge" / "config" / "mosquitto.conf.example").read_text()
    port = free_port()
    conf = (example.replace("/etc/mosquitto/aigc/certs/", f"{files.certs.ca_file.parent}/")
            .replace("/etc/mosquitto/aigc/passwd", str(files.password_file))
            .replace("/etc/mosquitto/aigc/acl", str(files.acl_file))
            .replace("/var/lib/mosquitto/", f"{files.data_dir}/")
            .replace("listener 8883", f"listener {port} 127.0.0.1")
            .replace("log_dest syslog", f"log_dest file {tmp_path / 'log'}"))
    if os.geteuid() == 0:
        conf = conf.replace("user mosquitto", "user root")
    (tmp_path / "prod.conf").write_text(conf)
    proc = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "prod.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (tmp_path / "log").exists() and " running" in (tmp_path / "log").read_text()
                 or proc.poll() is not None, what="mosquitto with the example config")
        assert proc.poll() is None, proc.stderr.read().decode()
    finally:
        proc.terminate()
        proc.wait(5)


# -- execution channel, device-side local execution, paused hand-off --------------------------------
def test_execution_report_schema_and_acl():
    from mqtt_bridge.broker import acl_text
    from mqtt_bridge.schemas import ExecutionReport

    ok = ExecutionReport(task_id="t1", device_id="cam1", part="local", state="done", compute_s=0.2, energy_j=0.5,
                         output_bits=1000, finished_at=utc_now())
    assert ExecutionReport.model_validate_json(ok.to_json()) == ok
    with pytest.raises(ValueError, match="needs a reason"):
        ExecutionReport(task_id="t1", device_id="cam1", part="whole", state="failed", compute_s=0.1,
                        finished_at=utc_now())
    with pytest.raises(ValueError, match="part"):
        ExecutionReport(task_id="t1", device_id="cam1", part="remote", state="done", compute_s=0.1,
                        finished_at=utc_now())
    assert parse_topic("factory/s1/l1/cam1/aigc/execution") == (CAM1, Channel.execution)
    cam = acl_text([CAM1], ["bridge"]).split("user cam1\n")[1]
    assert "topic write factory/s1/l1/cam1/aigc/execution" in cam


def test_device_executor_reports_whole_and_local_parts(broker, clients):
    """A decision 'device' makes the device run all of it (part whole), a split 0.5 its half (part
    local), an offload of everything nothing; the bridge validates the reports and hands them on."""
    from mqtt_bridge.client import BridgeClient

    decisions = {"whole": dict(target="device"), "half": dict(target="edge", edge_server="es1", offload_share=0.5),
                 "none": dict(target="cloud", offload_share=1.0)}
    box = []

    def on_request(inc):
        r = inc.request
        box[0].publish_decision(Decision(task_id=r.task_id, device_id=r.device_id, model_name=r.model_name,
                                         policy="p", decided_at=utc_now(), **decisions[r.prompt]))

    bridge = start_bridge(broker, clients, on_request=on_request)
    box.append(bridge)
    dev = start_device(broker, clients, address=CAM2, executor=True, time_scale=0.02)
    model = dict(model_name="defect-s", denoising_steps=8)
    h_whole = dev.submit(make_request("cam2", prompt="whole", **model))
    h_half = dev.submit(make_request("cam2", prompt="half", **model))
    h_none = dev.submit(make_request("cam2", prompt="none", **model))
    got = {}
    for _ in range(2):
        inc = bridge.get_execution(timeout=10)
        assert inc is not None and inc.address == CAM2
        got[inc.report.task_id] = inc.report
    whole, half = got[h_whole.task_id], got[h_half.task_id]
    assert (whole.part.value, half.part.value) == ("whole", "local")
    assert whole.state.value == half.state.value == "done"
    assert half.energy_j == pytest.approx(whole.energy_j / 2) and whole.energy_j > 0
    assert h_whole.execution.result(1) == whole and h_half.execution.result(1) == half
    h_none.decision.result(5)
    wait_for(lambda: h_none.execution.cancelled(), what="no local run for a full offload")
    assert bridge.get_execution(timeout=0.3) is None and bridge.stats["executions"] == 2
    assert not h_whole.result.done()  # the terminal result still comes from the gateway
    assert isinstance(bridge, BridgeClient)


def test_bad_execution_reports_get_error_replies(broker, clients):
    got = queue.Queue()
    start_bridge(broker, clients, on_execution=got.put)
    dev = start_device(broker, clients)
    topic = CAM1.topic(Channel.execution)
    base = {"task_id": "e1", "device_id": "cam1", "part": "whole", "state": "done", "compute_s": 0.1,
            "finished_at": "2025-06-01T08:30:00Z"}
    for payload, code, needle in (
            (b"nope", ErrorCode.malformed_json, "JSON"),
            (json.dumps({**base, "state": "failed"}).encode(), ErrorCode.schema_violation, "needs a reason"),
            (json.dumps({**base, "compute_s": "slow"}).encode(), ErrorCode.schema_violation, "compute_s"),
            (json.dumps({**base, "device_id": "cam2"}).encode(), ErrorCode.device_mismatch, "cam2")):
        dev.publish_raw(topic, payload, wait_s=3)
        err = next_item(dev.unmatched, ErrorReply)
        assert err.code == code and needle in err.reason and err.topic == topic, err
    dev.publish_raw(topic, json.dumps(base).encode(), wait_s=3)
    assert got.get(timeout=3).report.task_id == "e1"
    dev.publish_raw(topic, json.dumps(base).encode(), wait_s=3)  # a redelivery: handed on once, no error
    dev.publish_raw(topic, json.dumps({**base, "compute_s": 0.3}).encode(), wait_s=3)
    assert next_item(dev.unmatched, ErrorReply).code == ErrorCode.duplicate_task
    with pytest.raises(queue.Empty):
        got.get(timeout=0.3)


def test_paused_bridge_answers_waiting_requests_when_stopped(broker, clients):
    from mqtt_bridge.client import RequestRefused

    handed = queue.Queue()
    bridge = start_bridge(broker, clients, on_request=handed.put, paused=True)
    dev = start_device(broker, clients)
    h = dev.submit(make_request())
    wait_for(lambda: bridge.stats["accepted"] == 1, what="request acknowledged into the hand-off queue")
    with pytest.raises(queue.Empty):
        handed.get(timeout=0.3)
    bridge.stop()
    with pytest.raises(RequestRefused, match="unavailable"):
        h.decision.result(5)
    # resumed bridges hand on what waited
    bridge2 = start_bridge(broker, clients, on_request=handed.put, paused=True)
    time.sleep(0.3)  # a new session: let its SUBACK land before the device publishes
    h2 = dev.submit(make_request())
    wait_for(lambda: bridge2.stats["accepted"] == 1, what="second request queued")
    bridge2.resume()
    assert handed.get(timeout=3).request.task_id == h2.task_id


def test_broker_ports_are_distinct_and_a_taken_port_is_redrawn(tmp_path):
    """CI once drew one ephemeral port for both listeners; a port taken after the draw is redrawn."""
    import socket

    from mqtt_bridge.broker import MosquittoBroker, free_ports, require_tools, write_broker_config

    try:
        require_tools()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    for _ in range(50):
        ports = free_ports(3)
        assert len(set(ports)) == 3
    with pytest.raises(ValueError, match="different ports"):
        write_broker_config(tmp_path / "same", tls_port=ports[0], plain_port=ports[0])
    broker = MosquittoBroker(tmp_path / "taken", devices=[CAM1], plain_listener=True)
    drawn = broker.tls_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", drawn))
        squatter.listen(1)
        broker.start()
        try:
            assert broker.tls_port != drawn and broker.plain_port not in (drawn, broker.tls_port)
            with socket.create_connection(("127.0.0.1", broker.plain_port), timeout=5):
                pass
        finally:
            broker.stop()


# -- review fixes: unencodable echoes, internal errors, stopping, execution-report errors -------------
def test_unencodable_strings_are_escaped_in_error_replies(broker, clients):
    """A lone surrogate (valid JSON, not encodable UTF-8) in an echoed string still gets its reply."""
    start_bridge(broker, clients)
    dev = start_device(broker, clients)
    topic = CAM1.topic(Channel.request)
    good = json.loads(make_request().to_json())
    dev.publish_raw(topic, json.dumps({**good, "task_id": "\ud800"}).encode(), wait_s=3)
    err = next_item(dev.unmatched, ErrorReply)
    assert err.code == ErrorCode.schema_violation and err.task_id == "\\ud800", err
    dev.publish_raw(topic, json.dumps({**good, "\udc00x": 1}).encode(), wait_s=3)
    err = next_item(dev.unmatched, ErrorReply)
    assert err.code == ErrorCode.schema_violation and err.task_id == good["task_id"], err


def test_a_bridge_failure_on_a_message_gets_an_internal_error_reply(broker, clients):
    from mqtt_bridge.client import RequestRefused

    bridge = start_bridge(broker, clients)

    def boom(*args):
        raise RuntimeError("boom")

    bridge._handle_request = boom  # stands in for a bug
    dev = start_device(broker, clients)
    h = dev.submit(make_request())
    with pytest.raises(RequestRefused, match="internal_error") as exc:
        h.decision.result(5)
    assert "boom" in exc.value.reply.reason and bridge.error_counts["internal_error"] == 1


def test_requests_arriving_while_the_bridge_stops_are_refused(broker, clients):
    from mqtt_bridge.client import RequestRefused

    box = []
    bridge = start_bridge(broker, clients, on_request=answering(box))
    box.append(bridge)
    dev = start_device(broker, clients)
    assert dev.request(make_request(), timeout_s=5).target.value == "edge"
    late = []
    publish_offline = bridge._before_stop

    def slow_before_stop():  # a request lands while stop() publishes the offline status
        late.append(dev.submit(make_request()))
        try:
            late[0].decision.exception(3)
        except Exception:
            pass
        publish_offline()

    bridge._before_stop = slow_before_stop
    bridge.stop()
    with pytest.raises(RequestRefused, match="unavailable"):
        late[0].decision.result(0.1)


def test_stop_does_not_wait_for_the_queued_requests_callbacks(broker, clients):
    from mqtt_bridge.client import RequestRefused

    box, entered_after_stop, stopped = [], [], []

    def slow(inc):
        entered_after_stop.append(bool(stopped))
        time.sleep(0.3)
        answering(box)(inc)

    bridge = start_bridge(broker, clients, on_request=slow, paused=True)
    box.append(bridge)
    dev = start_device(broker, clients)
    handles = [dev.submit(make_request()) for _ in range(20)]
    wait_for(lambda: bridge.stats["accepted"] == 20, what="20 requests queued")
    bridge.resume()
    wait_for(lambda: entered_after_stop, what="the first callback")
    t0 = time.monotonic()
    bridge.stop()
    took = time.monotonic() - t0
    stopped.append(True)
    time.sleep(0.4)
    assert took < 2.0 and not any(entered_after_stop), (took, entered_after_stop)
    refused = 0
    for h in handles:  # each one decided (the callback in progress) or refused, none left waiting
        try:
            h.decision.result(3)
        except RequestRefused as exc:
            assert exc.reply.code == ErrorCode.unavailable
            refused += 1
    assert refused >= 20 - len(entered_after_stop)


def test_execution_report_refused_at_stop_is_taken_when_sent_again(broker, clients):
    got = queue.Queue()
    bridge = start_bridge(broker, clients, on_execution=got.put, paused=True)
    dev = start_device(broker, clients)
    report = {"task_id": "e-stop", "device_id": "cam1", "part": "whole", "state": "done", "compute_s": 0.1,
              "finished_at": "2025-06-01T08:30:00Z"}
    dev.publish_raw(CAM1.topic(Channel.execution), json.dumps(report).encode(), wait_s=3)
    wait_for(lambda: bridge.stats["executions"] == 1, what="report queued")
    bridge.stop()
    assert next_item(dev.unmatched, ErrorReply).code == ErrorCode.unavailable
    bridge.start()
    bridge.resume()
    dev.publish_raw(CAM1.topic(Channel.execution), json.dumps(report).encode(), wait_s=3)
    assert got.get(timeout=3).report.task_id == "e-stop"


def _deciding_device(box):
    def on_request(inc):
        r = inc.request
        box[0].publish_decision(Decision(task_id=r.task_id, device_id=r.device_id, target="device",
                                         model_name=r.model_name, policy="p", decided_at=utc_now()))
    return on_request


def test_execution_report_errors_leave_the_task_pending_and_overloaded_is_resent(broker, clients):
    from opcua_devices.executor import ExecutionOutput

    box = []
    # no on_execution: the reports wait in a hand-off queue of 1
    bridge = start_bridge(broker, clients, on_request=_deciding_device(box), queue_size=1)
    box.append(bridge)
    dev = start_device(broker, clients, executor=lambda req, dec: ExecutionOutput(output_bits=8))
    h1 = dev.submit(make_request())
    h1.execution.result(5)
    wait_for(lambda: bridge.stats["executions"] == 1, what="first report queued")
    h2 = dev.submit(make_request())
    h2.execution.result(5)
    wait_for(lambda: h2.execution_errors, what="overloaded reply to the second report")
    assert h2.execution_errors[0].code == ErrorCode.overloaded
    assert not h2.result.done() and h2.decision.exception() is None
    assert bridge.get_execution(timeout=2).report.task_id == h1.task_id
    assert bridge.get_execution(timeout=5).report.task_id == h2.task_id  # sent again after a backoff
    # an error about the execution report, not the request: the task still gets its result
    bridge.reply_error(CAM1, ErrorCode.device_mismatch, "test", task_id=h1.task_id,
                       topic=CAM1.topic(Channel.execution))
    wait_for(lambda: h1.execution_errors, what="execution error at the device")
    assert not h1.result.done()
    for h in (h1, h2):
        bridge.publish_result(TaskResult(task_id=h.task_id, device_id="cam1", state="done", executed_on="device",
                                         latency_s=0.01, output_bits=8, finished_at=utc_now()))
        assert h.result.result(5).state.value == "done"
    assert dev.unmatched.empty()


def test_device_stop_reports_its_queued_local_parts_before_disconnecting(broker, clients):
    from opcua_devices.executor import ExecutionOutput

    def slow(req, dec):
        time.sleep(0.3)
        return ExecutionOutput(output_bits=8)

    box, got = [], queue.Queue()
    bridge = start_bridge(broker, clients, on_request=_deciding_device(box), on_execution=got.put)
    box.append(bridge)
    dev = start_device(broker, clients, executor=slow)
    handles = [dev.submit(make_request()) for _ in range(3)]
    for h in handles:
        h.decision.result(5)
    dev.stop()
    assert {got.get(timeout=3).report.task_id for _ in handles} == {h.task_id for h in handles}


def test_local_runner_stop_is_bounded_and_reports_every_part():
    import asyncio

    from mqtt_bridge.local_exec import LocalRunner

    async def forever(req, dec):
        await asyncio.sleep(30)

    reports = []
    runner = LocalRunner(forever, lambda ctx, req, part, ok, reason, *rest: reports.append((req.task_id, ok, reason)))
    decision = Decision(task_id="t", device_id="cam1", target="device", model_name="m", policy="p",
                        decided_at=utc_now())
    reqs = [make_request() for _ in range(3)]
    for r in reqs:
        runner.submit(r, decision)
    time.sleep(0.1)
    t0 = time.monotonic()
    runner.stop(timeout_s=0.5)
    assert time.monotonic() - t0 < 1.5
    assert [r[0] for r in reports] == [r.task_id for r in reqs]
    assert all(ok is False and "stopped" in reason for _, ok, reason in reports), reports
    late = make_request()
    assert runner.submit(late, decision) and reports[-1][:2] == (late.task_id, False)
