"""The factory job's run monitor on hand-made messages (no ROS graph): tallies per device kind, one
terminal result per task, and a request the monitor missed counted from its result."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

pytest.importorskip("aigc_offload.factory_report", reason="the aigc_offload package is not installed")
from aigc_offload.factory_report import RunMonitor, format_report, kind_of_origin  # noqa: E402


def _request(task_id: str, kind: int, deadline_s: float = 2.0):
    return SimpleNamespace(task_id=task_id, device_kind=kind, deadline_s=deadline_s)


def _result(task_id: str, origin: str, state: int = 0, latency_s: float = 0.25, finished_at_s: float | None = None):
    t = time.time() if finished_at_s is None else finished_at_s
    return SimpleNamespace(task_id=task_id, origin=origin, state=state, reason="" if state == 0 else "late",
                           latency_s=latency_s, energy_j=0.5, executed_on="edge:edge1", cache_hit=True,
                           model_downloaded=False,
                           finished_at=SimpleNamespace(sec=int(t), nanosec=int((t - int(t)) * 1e9)))


def test_origin_prefix_names_the_device_kind():
    assert kind_of_origin("opcua:opc.tcp://localhost:4840") == "controller"
    assert kind_of_origin("mqtt:site/line1/cam01") == "camera"
    assert kind_of_origin("grpc:elsewhere") == "unknown"


def test_tally_per_kind_and_duplicates():
    m = RunMonitor()
    m.on_request(_request("plc01-1", 0))
    m.on_request(_request("cam01-1", 1))
    m.on_result(_result("plc01-1", "opcua:opc.tcp://localhost:4840"))
    m.on_result(_result("plc01-1", "opcua:opc.tcp://localhost:4840"))  # a duplicate terminal result
    rep = m.report()
    assert rep["overall"]["requests"] == 2 and rep["overall"]["terminal"] == 1
    assert rep["overall"]["duplicate_terminal_results"] == 1
    assert rep["controller"]["terminal"] == 1 and rep["camera"]["terminal"] == 0
    assert rep["requests_missed_by_monitor"] == 0 and "reached the monitor only" not in format_report(rep)


def test_a_request_the_monitor_missed_is_counted_from_its_result():
    m = RunMonitor()
    m.on_request(_request("plc01-1", 0))
    m.on_result(_result("plc01-1", "opcua:opc.tcp://localhost:4840"))
    finished = time.time()
    m.on_result(_result("plc02-1", "opcua:opc.tcp://localhost:4841", latency_s=0.5, finished_at_s=finished))
    m.on_result(_result("cam01-7", "mqtt:site/line1/cam01", state=3))
    rep = m.report()
    assert rep["requests_missed_by_monitor"] == 2 and rep["missed_request_ids"] == ["plc02-1", "cam01-7"]
    assert rep["controller"]["requests"] == rep["controller"]["terminal"] == 2
    assert rep["camera"]["requests"] == rep["camera"]["terminal"] == 1
    assert rep["camera"]["states"] == {"deadline_missed": 1}
    assert m.records["plc02-1"].requested_at_s == pytest.approx(finished - 0.5, abs=1e-6)
    assert "2 requests reached the monitor only through their result" in format_report(rep)
    # a request seen after its result (a late replay) does not make a second record
    m.on_request(_request("plc02-1", 0))
    assert m.report()["overall"]["requests"] == 3
