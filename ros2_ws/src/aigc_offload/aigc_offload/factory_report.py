"""What a factory run did, from what crossed the ROS graph: per device kind and overall.

``RunMonitor`` listens to the task requests, decisions and terminal results and keeps, per task,
the device kind, when it was asked for, and its one terminal result. ``report()`` gives the
end-to-end latency p50/p99 (from the device's ``created_at`` to the terminal result), the
completion rate within the deadline, the energy estimate (the gateway's device-side estimate:
local compute and upload, MATO eqs. 4 and 6), the cache hit rate of the tasks run on an edge
server, and the models the edge servers downloaded for tasks.

The monitor is an observer that joins the graph after the ingresses: a request published before
discovery matched it reaches it only through the publishers' transient-local history, which Fast DDS
does not always replay (eProsima/Fast-DDS#3822: a late reader intermittently misses a sample). A
terminal result names its device and origin, so such a task is still counted, from its result, and
listed under ``requests_missed_by_monitor``: the report stays whole and the gap stays visible.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

KINDS = {0: "controller", 1: "camera"}  # TaskRequest.DEVICE_*
STATES = {0: "done", 1: "rejected", 2: "failed", 3: "deadline_missed"}  # TaskResult.*
#: device kind by the origin prefix a result carries (the OPC UA ingress's and the MQTT bridge's)
KIND_BY_ORIGIN = {"opcua:": "controller", "mqtt:": "camera"}


def kind_of_origin(origin: str) -> str:
    return next((k for p, k in KIND_BY_ORIGIN.items() if origin.startswith(p)), "unknown")


@dataclass
class TaskRecord:
    task_id: str
    device_kind: str
    requested_at_s: float  # when the request crossed ROS (POSIX s)
    deadline_s: float  # nan for a task known only from its result
    decision_target: str = ""
    decided_at_s: float | None = None
    state: str | None = None
    reason: str = ""
    latency_s: float | None = None
    energy_j: float = 0.0
    executed_on: str = ""
    cache_hit: bool = False
    downloaded: bool = False
    results: int = 0


@dataclass
class RunMonitor:
    """Thread-safe tally of a run; feed it the messages (from rclpy callbacks)."""

    records: dict[str, TaskRecord] = field(default_factory=dict)
    missed_requests: int = 0  # tasks known only from their result (see the module's docstring)
    missed_request_ids: list[str] = field(default_factory=list)  # the first few, for the report
    lock: threading.Lock = field(default_factory=threading.Lock)
    started_at_s: float = field(default_factory=time.time)

    def on_request(self, msg) -> None:
        with self.lock:
            self.records.setdefault(msg.task_id, TaskRecord(msg.task_id, KINDS.get(msg.device_kind, "unknown"),
                                                            time.time(), float(msg.deadline_s)))

    def on_decision(self, msg) -> None:
        with self.lock:
            r = self.records.get(msg.task_id)
            if r is not None and r.decided_at_s is None:
                r.decided_at_s = time.time()
                r.decision_target = {0: "local", 1: f"edge:{msg.target_id}", 2: "cloud"}.get(msg.target_kind, "?")

    def on_result(self, msg) -> None:
        with self.lock:
            r = self.records.get(msg.task_id)
            if r is None:
                self.missed_requests += 1
                if len(self.missed_request_ids) < 10:
                    self.missed_request_ids.append(msg.task_id)
                finished = msg.finished_at.sec + 1e-9 * msg.finished_at.nanosec
                r = self.records[msg.task_id] = TaskRecord(
                    msg.task_id, kind_of_origin(msg.origin), finished - float(msg.latency_s), float("nan"))
            r.results += 1
            if r.state is None:
                r.state = STATES.get(msg.state, "unknown")
                r.reason, r.latency_s, r.energy_j = msg.reason, float(msg.latency_s), float(msg.energy_j)
                r.executed_on, r.cache_hit, r.downloaded = msg.executed_on, bool(msg.cache_hit), bool(msg.model_downloaded)

    def counts(self) -> tuple[int, int, int]:
        """(requests, terminal, done)"""
        with self.lock:
            rs = list(self.records.values())
        return len(rs), sum(r.state is not None for r in rs), sum(r.state == "done" for r in rs)

    def progress_line(self) -> str:
        with self.lock:
            rs = list(self.records.values())
        done = [r.latency_s for r in rs if r.state == "done" and r.latency_s is not None]
        term = sum(r.state is not None for r in rs)
        p50 = f"{1e3 * np.median(done):.0f} ms" if done else "-"
        ok = sum(r.state == "done" for r in rs)
        return (f"{time.time() - self.started_at_s:6.1f} s  requests {len(rs)}  terminal {term}  "
                f"done {ok} ({100 * ok / term if term else 0:.0f}%)  in flight {len(rs) - term}  p50 {p50}")

    @staticmethod
    def _summary(rs: list[TaskRecord]) -> dict:
        term = [r for r in rs if r.state is not None]
        lat = np.array([r.latency_s for r in term if r.latency_s is not None and r.state == "done"])
        on_edge = [r for r in term if r.executed_on.startswith("edge:") and r.state == "done"]
        states: dict[str, int] = {}
        for r in term:
            states[r.state] = states.get(r.state, 0) + 1
        return {
            "requests": len(rs), "terminal": len(term), "states": states,
            "completion_rate": (sum(r.state == "done" for r in term) / len(term)) if term else 0.0,
            "latency_p50_ms": float(1e3 * np.percentile(lat, 50)) if lat.size else None,
            "latency_p99_ms": float(1e3 * np.percentile(lat, 99)) if lat.size else None,
            "energy_j_mean": float(np.mean([r.energy_j for r in term])) if term else 0.0,
            "energy_j_total": float(np.sum([r.energy_j for r in term])) if term else 0.0,
            "cache_hit_rate": (sum(r.cache_hit for r in on_edge) / len(on_edge)) if on_edge else None,
            "models_downloaded": int(sum(r.downloaded for r in term)),
            "executed": {k: sum(1 for r in term if (r.executed_on.split(":")[0] or "?") == k)
                         for k in ("local", "edge", "cloud")},
            "duplicate_terminal_results": int(sum(max(r.results - 1, 0) for r in rs)),
        }

    def report(self) -> dict:
        with self.lock:
            rs = list(self.records.values())
            missed, missed_ids = self.missed_requests, list(self.missed_request_ids)
        out = {"overall": self._summary(rs), "wall_s": time.time() - self.started_at_s,
               "requests_missed_by_monitor": missed, "missed_request_ids": missed_ids}
        for kind in sorted({r.device_kind for r in rs}):
            out[kind] = self._summary([r for r in rs if r.device_kind == kind])
        return out


def format_report(rep: dict) -> str:
    """A table for the terminal."""
    rows = [k for k in rep if isinstance(rep[k], dict) and "requests" in rep[k]]
    head = f"{'':12s} {'requests':>8s} {'terminal':>8s} {'completion':>10s} {'p50 ms':>8s} {'p99 ms':>8s} " \
           f"{'energy J':>9s} {'cache hit':>9s} {'downloads':>9s}"
    lines = [head]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for k in rows:
        s = rep[k]
        lines.append(f"{k:12s} {s['requests']:8d} {s['terminal']:8d} {s['completion_rate']:10.3f} "
                     f"{fmt(s['latency_p50_ms'], '8.1f')} {fmt(s['latency_p99_ms'], '8.1f')} "
                     f"{s['energy_j_mean']:9.3f} {fmt(s['cache_hit_rate'], '9.3f')} {s['models_downloaded']:9d}")
    o = rep["overall"]
    lines.append(f"terminal states {o['states']}; executed {o['executed']}; wall {rep['wall_s']:.1f} s")
    if rep.get("requests_missed_by_monitor"):
        lines.append(f"{rep['requests_missed_by_monitor']} requests reached the monitor only through their result "
                     f"(counted from it; late-joiner replay, Fast-DDS#3822): {', '.join(rep['missed_request_ids'])}")
    return "\n".join(lines)
