"""The edge gateway's logic without ROS: live state, per-task decisions, and task tracking.

For each task request the gateway builds the policy's input with the simulator's own view
builder (``FactorySimulator.live_view``, DESIGN principle 2) from what it knows live: the device
(from the deployment's plant: CPU, nominal uplink rates), its own estimate of the device's queue,
the edge servers' last status (backlog aged by the time since its stamp, plus the work this
gateway handed them since), and the backhaul queue it fed. The policy (a heuristic, or an exported
ONNX policy through ``policies.runtime``) decides target, share and download flag.

Every task it accepts is tracked to exactly one terminal state: done when every part (the
device's share and the offloaded share, MATO eq. 13) reported done; the first failed part's state
otherwise; deadline missed when no result came by the deadline plus a grace period.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from policies.cost import compute_delay_s, compute_energy_j, transmission_delay_s, transmission_energy_j

from .deployment import Plant

DONE, REJECTED, FAILED, DEADLINE_MISSED = 0, 1, 2, 3  # = TaskResult.* constants
STATE_COUNTER = {DONE: "done", FAILED: "failed", REJECTED: "failed", DEADLINE_MISSED: "deadline_missed"}
PART_WHOLE, PART_LOCAL, PART_REMOTE = 0, 1, 2
TARGET_LOCAL, TARGET_EDGE, TARGET_CLOUD = 0, 1, 2


class RequestError(ValueError):
    """A task request the gateway refuses; ``str()`` is the reason sent back to the device."""


def _device_deadline_cap_s() -> float:
    """The longest deadline_s a device may ask for: the bound of the device schema (MQTT payloads and
    the OPC UA RequestTask method both go through ``mqtt_bridge.schemas.TaskRequest``). A ROS
    publisher reaches the gateway without that schema, and an unbounded deadline kept a task (and
    its hand-off retries) alive forever."""
    from mqtt_bridge.schemas import TaskRequest as DeviceRequest

    return float(next(m.le for m in DeviceRequest.model_fields["deadline_s"].metadata
                      if getattr(m, "le", None) is not None))


MAX_DEADLINE_S = _device_deadline_cap_s()


@dataclass(frozen=True)
class Request:
    """A task request as the gateway needs it (from TaskRequest)."""

    task_id: str
    device_id: str
    origin: str
    kind: str  # "report" | "image"
    model_name: str
    units: int
    input_bits: int
    output_bits: int
    deadline_s: float
    created_at_s: float


@dataclass(frozen=True)
class GatewayDecision:
    task_id: str
    target_kind: int  # TARGET_*
    target_index: int  # edge index, or -1
    target_id: str  # "edge2", "cloud", "local"
    share: float  # offloaded share eta (0 when local)
    download: bool
    parts: tuple[int, ...]  # PART_* the gateway waits for
    decision_us: float
    expected_latency_s: float
    masked: bool  # the policy chose an unavailable target; replaced by local


@dataclass
class EdgeLive:
    server_id: str
    cpu_ghz: float
    backlog_s: float = 0.0
    stamp_s: float = -1.0  # POSIX s of the last status; < 0: never heard
    cached: frozenset[str] = frozenset()
    handed_s: float = 0.0  # compute time this gateway handed it since that status, s


@dataclass
class Tracked:
    req: Request
    decision: GatewayDecision
    pending: set[int]
    deadline_at_s: float
    energy_j: float
    results: list = field(default_factory=list)  # (part, state, reason, finished_s, executed_on, msg)


@dataclass
class Terminal:
    """The one terminal state of a task, to publish on /aigc/task_result."""

    req: Request
    state: int
    reason: str
    latency_s: float
    energy_j: float
    executed_on: str
    results: list


class GatewayCore:
    """Decisions and tracking; thread-safe."""

    def __init__(self, sim, plant: Plant, policy, policy_name: str, *, status_stale_s: float = 2.0,
                 result_grace_s: float = 0.5, clock: Callable[[], float] | None = None, seed: int = 0):
        self.sim = sim
        self.preset = sim.preset
        self.plant = plant
        self.policy = policy
        self.policy_name = policy_name
        self.clock = clock or time.time
        self.status_stale_s = status_stale_s
        self.result_grace_s = result_grace_s
        self.devices = {d.device_id: d for d in plant.devices}
        # the edge server relaying a device's cloud traffic: its best nominal uplink (first maximum, as
        # np.argmax), fixed by the plant; looked up per task instead of an argmax over a tuple (~8 us each)
        self.relay_edge = {d.device_id: int(np.argmax(d.uplink_mbps)) for d in plant.devices}
        self.models = {m.name: m for m in self.preset.models}
        self.edges = [EdgeLive(e.server_id, e.cpu_ghz) for e in plant.edges]
        self.edge_index = {e.server_id: i for i, e in enumerate(plant.edges)}
        self.device_free_s = {d.device_id: 0.0 for d in plant.devices}  # estimated device queue end
        self.backhaul_free_s = 0.0
        self.tracked: dict[str, Tracked] = {}
        self.finished_ids: dict[str, float] = {}  # recently terminal task ids -> when (insertion order = time order)
        # (deadline, task id) of every tracked task: the sweep pops the expired ones instead of scanning every
        # task under the lock (at 500 tasks/s a scan of the tracked and the 60 s of finished ids held the lock
        # for milliseconds every 50 ms, in front of the decisions); (deadline, seq, task id, Tracked): an entry
        # stays after its task ends, and the id may be used again once it left finished_ids
        self._deadlines: list[tuple[float, int, str, Tracked]] = []
        self._deadline_seq = 0
        self.lock = threading.RLock()
        self.counters = {"requests": 0, "rejected": 0, "decided": 0, "local": 0, "edge": 0, "cloud": 0,
                         "done": 0, "failed": 0, "deadline_missed": 0, "masked": 0, "late_results": 0}
        self.decision_us: list[float] = []
        policy.reset(np.random.default_rng(seed))

    # -- live state -----------------------------------------------------------------------------
    def on_status(self, server_id: str, backlog_s: float, cached: list[str], cpu_hz: float, stamp_s: float) -> None:
        i = self.edge_index.get(server_id)
        if i is None:
            return
        with self.lock:
            e = self.edges[i]
            if stamp_s >= e.stamp_s:
                e.backlog_s, e.cached, e.stamp_s, e.handed_s = backlog_s, frozenset(cached), stamp_s, 0.0
                if cpu_hz > 0:
                    e.cpu_ghz = cpu_hz / 1e9

    def edge_alive(self, now: float) -> np.ndarray:
        return np.array([e.stamp_s >= 0 and now - e.stamp_s <= self.status_stale_s for e in self.edges])

    # -- decisions ------------------------------------------------------------------------------
    def validate(self, req: Request) -> None:
        if not req.task_id:
            raise RequestError("task_id is empty")
        if req.device_id not in self.devices:
            raise RequestError(f"device '{req.device_id}' is not part of this deployment")
        m = self.models.get(req.model_name)
        if m is None:
            raise RequestError(f"model '{req.model_name}' is not in the catalog ({', '.join(self.models)})")
        if m.kind != req.kind:
            raise RequestError(f"model '{req.model_name}' makes {m.kind}s, the task asks for {'an' if req.kind == 'image' else 'a'} {req.kind}")
        if req.units <= 0:
            raise RequestError(f"{'output_tokens' if req.kind == 'report' else 'denoising_steps'} must be positive")
        if not req.deadline_s > 0:
            raise RequestError(f"deadline_s must be positive, got {req.deadline_s}")
        if not req.deadline_s <= MAX_DEADLINE_S:  # also inf
            raise RequestError(f"deadline_s must be at most {MAX_DEADLINE_S:g} s, got {req.deadline_s}")
        # created_at comes from the device's clock: one far in the future would push the deadline out as well
        # (a skewed clock is tolerated up to the same bound: a task is tracked for two of them at most)
        ahead_s = req.created_at_s - self.clock()
        if not (math.isfinite(req.created_at_s) and ahead_s <= MAX_DEADLINE_S):
            raise RequestError(f"created_at is {ahead_s:.0f} s in the future, more than {MAX_DEADLINE_S:g} s "
                               "ahead of the gateway's clock")
        with self.lock:
            if req.task_id in self.tracked or req.task_id in self.finished_ids:
                raise RequestError(f"task id '{req.task_id}' was already submitted")

    def decide(self, req: Request) -> GatewayDecision:
        """Validate, build the live view, run the policy, start tracking. Raises RequestError."""
        from policies.scenarios.factory import LiveState, LiveTask

        self.validate(req)
        now = self.clock()
        dev = self.devices[req.device_id]
        with self.lock:
            self.counters["requests"] += 1
            task = LiveTask(device=dev.index, kind=req.kind, model=req.model_name, units=req.units,
                            input_mbit=req.input_bits / 1e6, output_mbit=req.output_bits / 1e6,
                            deadline_s=req.deadline_s)
            alive = self.edge_alive(now)
            state = LiveState(
                device_cpu_ghz=dev.cpu_ghz, device_backlog_s=max(self.device_free_s[req.device_id] - now, 0.0),
                uplink_mbps=list(dev.uplink_mbps),
                edge_backlog_s=[max(e.backlog_s - (now - e.stamp_s), 0.0) + e.handed_s if e.stamp_s >= 0 else 0.0
                                for e in self.edges],
                edge_cpu_ghz=[e.cpu_ghz for e in self.edges],
                edge_cached_models=[sorted(e.cached) for e in self.edges],
                backhaul_backlog_s=max(self.backhaul_free_s - now, 0.0),
                relay_edge=self.relay_edge[req.device_id])
            view = self.sim.live_view([task], [state])
            view.allowed[0, 1:1 + len(self.edges)] = alive  # never hand work to a silent server
            t0 = time.perf_counter()
            dec = self.policy.decide(view)
            us = (time.perf_counter() - t0) * 1e6
            target = int(dec.target[0])
            masked = not bool(view.allowed[0, target])
            if masked:
                target = 0
            share = 0.0 if target == 0 else float(dec.share[0]) if dec.share is not None else 1.0
            share = min(max(share, 0.0), 1.0)
            if target != 0 and share <= 0.0:
                target = 0
            download = bool(dec.download[0]) if dec.download is not None and 1 <= target <= len(self.edges) else False
            n_edges = len(self.edges)
            if target == 0:
                kind, idx, tid = TARGET_LOCAL, -1, "local"
            elif target <= n_edges:
                kind, idx, tid = TARGET_EDGE, target - 1, self.edges[target - 1].server_id
            else:
                kind, idx, tid = TARGET_CLOUD, -1, "cloud"
            parts = (PART_WHOLE,) if share in (0.0, 1.0) else (PART_LOCAL, PART_REMOTE)
            # Book the gateway's own estimates (the simulator's queue pointers, spec §1.3).
            W = float(view.features["work_gcycles"][0]) * 1e9
            local_s = float(compute_delay_s((1.0 - share) * W, dev.cpu_ghz * 1e9))
            expected = 0.0
            if share < 1.0:
                start = max(now, self.device_free_s[req.device_id])
                self.device_free_s[req.device_id] = start + local_s
                expected = start + local_s - now
            up_s = 0.0
            if kind != TARGET_LOCAL:
                rate = dev.uplink_mbps[idx if kind == TARGET_EDGE else self.relay_edge[req.device_id]] * 1e6
                up_s = float(transmission_delay_s(share * req.input_bits, rate))
            if kind == TARGET_EDGE:
                e = self.edges[idx]
                remote_s = float(compute_delay_s(share * W, e.cpu_ghz * 1e9))
                expected = max(expected, up_s + state.edge_backlog_s[idx] + remote_s)
                e.handed_s += remote_s
            elif kind == TARGET_CLOUD:
                bh = float(transmission_delay_s(share * req.input_bits, self.preset.cloud_backhaul_mbps * 1e6))
                self.backhaul_free_s = max(now + up_s, self.backhaul_free_s) + bh
                expected = max(expected, self.backhaul_free_s - now +
                               float(compute_delay_s(share * W, self.preset.cloud_cpu_ghz * 1e9)))
            # Device energy: its compute share and its upload (MATO eqs. 4, 6).
            energy = float(compute_energy_j((1.0 - share) * W, dev.cpu_ghz * 1e9, self.preset.kappa_device)) + \
                float(transmission_energy_j(self.preset.tx_power_w, up_s))
            gd = GatewayDecision(req.task_id, kind, idx, tid, share, download, parts, us, expected, masked)
            tr = Tracked(req, gd, set(parts), req.created_at_s + req.deadline_s, energy)
            self.tracked[req.task_id] = tr
            self._deadline_seq += 1
            heapq.heappush(self._deadlines, (tr.deadline_at_s, self._deadline_seq, req.task_id, tr))
            self.counters["decided"] += 1
            self.counters["masked"] += int(masked)
            self.counters[["local", "edge", "cloud"][kind]] += 1
            self.decision_us.append(us)
            if len(self.decision_us) > 10_000:
                del self.decision_us[:5_000]
            return gd

    def upload_delay_s(self, gd: GatewayDecision, req: Request) -> float:
        """Modeled uplink time of the offloaded share (MATO eq. 5 with the nominal rate)."""
        if gd.target_kind == TARGET_LOCAL:
            return 0.0
        dev = self.devices[req.device_id]
        idx = gd.target_index if gd.target_kind == TARGET_EDGE else self.relay_edge[req.device_id]
        return float(transmission_delay_s(gd.share * req.input_bits, dev.uplink_mbps[idx] * 1e6))

    # -- tracking -------------------------------------------------------------------------------
    def on_result(self, task_id: str, part: int, state: int, reason: str, executed_on: str, msg=None
                  ) -> Terminal | None:
        """An execution result of one part; returns the task's terminal state when it is reached."""
        if state not in STATE_COUNTER:  # before anything changes: the task stays as it was
            raise ValueError(f"result state {state} is none of DONE, REJECTED, FAILED, DEADLINE_MISSED (0-3)")
        now = self.clock()
        with self.lock:
            tr = self.tracked.get(task_id)
            if tr is None:
                self.counters["late_results"] += 1
                return None
            split = tr.decision.parts != (PART_WHOLE,)
            if split and part == PART_WHOLE:
                part = PART_REMOTE if "local" not in executed_on else PART_LOCAL  # an executor that ignores parts
            elif not split and part != PART_WHOLE:
                part = PART_WHOLE
            if part not in tr.pending:  # a duplicate of a settled part
                self.counters["late_results"] += 1
                return None
            tr.pending.discard(part)
            tr.results.append((part, state, reason, now, executed_on, msg))
            if state != DONE:
                return self._terminate(tr, state, reason, now)
            if not tr.pending:
                return self._terminate(tr, DONE, "", now)
            return None

    def fail(self, task_id: str, state: int, reason: str) -> Terminal | None:
        with self.lock:
            tr = self.tracked.get(task_id)
            return None if tr is None else self._terminate(tr, state, reason, self.clock())

    def fail_all(self, state: int, reason: str) -> list[Terminal]:
        """Every task in flight ends now (the gateway stops deciding and tracking)."""
        with self.lock:
            now = self.clock()
            return [self._terminate(tr, state, reason, now) for tr in list(self.tracked.values())]

    def sweep(self) -> list[Terminal]:
        """Deadline misses: tasks with parts still open past their deadline plus the grace."""
        now = self.clock()
        out = []
        with self.lock:
            heap = self._deadlines
            while heap and now > heap[0][0] + self.result_grace_s:
                _, _, tid, tr = heapq.heappop(heap)
                if self.tracked.get(tid) is not tr:  # already terminal (its id perhaps reused since)
                    continue
                where = ", ".join({PART_WHOLE: "the task", PART_LOCAL: "the device part",
                                   PART_REMOTE: "the offloaded part"}[p] for p in sorted(tr.pending))
                out.append(self._terminate(tr, DEADLINE_MISSED,
                                           f"no result for {where} from {tr.decision.target_id} within the "
                                           f"{tr.req.deadline_s:g} s deadline", now))
            finished = self.finished_ids
            while finished:
                tid = next(iter(finished))
                if now - finished[tid] <= 60.0:
                    break
                del finished[tid]
        return out

    def _terminate(self, tr: Tracked, state: int, reason: str, now: float) -> Terminal:
        if state == DONE and now > tr.deadline_at_s + 1e-3:
            state, reason = DEADLINE_MISSED, f"finished {now - tr.deadline_at_s:.3f} s after the deadline"
        counter = STATE_COUNTER[state]  # looked up first: a task is never untracked without its terminal state
        del self.tracked[tr.req.task_id]
        self.finished_ids[tr.req.task_id] = now
        self.counters[counter] += 1
        executed = "+".join(sorted({r[4] for r in tr.results if r[4]})) or tr.decision.target_id
        return Terminal(tr.req, state, reason, max(now - tr.req.created_at_s, 0.0), tr.energy_j, executed,
                        list(tr.results))

    def diagnostics(self) -> dict[str, str]:
        with self.lock:
            us = np.asarray(self.decision_us) if self.decision_us else np.zeros(1)
            now = self.clock()
            alive = self.edge_alive(now)
            d = {k: str(v) for k, v in self.counters.items()}
            d.update({"policy": self.policy_name, "in_flight": str(len(self.tracked)),
                      "decision_us_p50": f"{np.percentile(us, 50):.1f}",
                      "decision_us_p99": f"{np.percentile(us, 99):.1f}",
                      "edge_servers_alive": f"{int(alive.sum())}/{alive.size}"})
            return d
