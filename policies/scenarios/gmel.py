"""GMEL / AMARL (paper 001): multi-agent industrial AIGC offloading over wireless edge networks.

Spec: docs/papers/gmel.md (equations and the [paper]/[fix]/[ours] readings). One simulator step is one
slot of dt = 0.1 s. Each IED (industrial edge device, one agent) generates at most one task per slot
and decides: run it on its own GPU (local FIFO, GMEL eq. 1) or send it to one of M = 5 edge servers
over that server's OFDMA band (per-(IED, ES) communication queues sharing B_m equally, GMEL eq. 3a),
where it waits in the IED's own queue at the server (capacity F_m shared equally among the non-empty
queues, GMEL eq. 2). A task not finished by its deadline is dropped wherever it is (spec 1.7).

State layout (spec 7.1): a task table of shape (M, I, K) per field, K = D_max + 1, place k = t_gen
mod K; an offloaded task occupies the row of its server. Every slot of the simulator and every
rollout of the ``opt`` oracle goes through the same :meth:`GmelSimulator._advance`, vectorized over
servers (or oracle candidates), devices and queue places.

Decision rows: :meth:`GmelSimulator.view` has one row per device that generated a task this slot
(what ``evaluate`` and the heuristics use); :meth:`GmelSimulator.agent_view` has one row per device
with a ``has_task`` flag, which the PettingZoo env uses so that every agent acts every slot (actions
of devices without a task are ignored). ``step`` accepts either.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv
from pydantic import Field, model_validator

from policies import cost
from policies.config import PresetBase
from policies.errors import TraceError
from policies.scenarios.base import ObsField, OffloadDecision, OffloadView, Policy, Simulator
from policies.workload import Workload, episode_rng

NUM_SERVERS = 5  # the observation layout (4 + 4M + 1 = 25 columns) is fixed at M = 5 servers
TARGET_NAMES = ("local",) + tuple(f"edge{m}" for m in range(NUM_SERVERS))
SLOT_TOL = 1e-9  # D = floor(d/dt + 1e-9): 0.7/0.1 = 6.999.. must give 7 slots (spec 1.2)
BIT_TOL = 1e-6  # bits: a transmission with less left than this has finished
CYCLE_TOL = 1e-9  # Gcycles: an edge job with less left than this has finished

STAGE_EMPTY, STAGE_TX, STAGE_EDGE = 0, 1, 2
STATUS_PENDING, STATUS_DONE, STATUS_DROPPED = 0, 1, 2


class Preset(PresetBase):
    """GMEL parameters (spec section 2)."""

    num_devices: int = Field(gt=0, description="I: number of IEDs (agents), devices")
    area_m: float = Field(gt=0, description="side of the square area, m")
    min_distance_m: float = Field(gt=0, description="IED-ES distance clamp, m")
    server_xy_m: tuple[tuple[float, float], ...] = Field(description="ES positions (x, y), m")
    server_bandwidth_mhz: tuple[float, ...] = Field(description="B_m: uplink band of each ES, MHz")
    server_cpu_ghz: tuple[float, ...] = Field(description="F_m: compute of each ES, GHz (Gcycles/s)")
    device_gpu_ghz: float = Field(gt=0, description="f_i^G: GPU frequency of every IED, GHz")
    tx_power_w: float = Field(gt=0, description="P_i: transmit power of every IED, W")
    noise_dbm_per_hz: float = Field(description="N0: noise power density, dBm/Hz")
    task_probability: float = Field(ge=0, le=1, description="p: probability that an IED generates a task in a slot, 1/slot")
    size_mb: tuple[float, float] = Field(description="s ~ U[lo, hi]: input data size, MB")
    mb_to_mbit: float = Field(gt=0, description="Mbit per MB of task data (8: MB = 8 Mbit; 1: the Mbit reading)")
    cycles_per_mb: tuple[float, float] = Field(description="e ~ U[lo, hi]: GPU work per MB of input, Gcycles/MB")
    deadline_s: tuple[float, float] = Field(description="d ~ U[lo, hi]: maximum tolerable latency, s")
    deadline_fixed_s: float | None = Field(default=None, gt=0, description="if set, every task's d, s (Fig. 5 sweep)")
    reward_constant_s: float = Field(description="C in r = C - T, s")
    drop_latency_s: float = Field(gt=0, description="T_drop: latency charged to a dropped task in the reward, s")
    opt_exact_max_tasks: int = Field(ge=0, le=10, description="opt searches exactly in slots with at most this many new tasks, tasks")
    opt_sweeps: int = Field(ge=1, description="coordinate-descent sweeps of opt in larger slots, sweeps")

    @model_validator(mode="after")
    def _check(self) -> "Preset":
        for name in ("server_xy_m", "server_bandwidth_mhz", "server_cpu_ghz"):
            if len(getattr(self, name)) != NUM_SERVERS:
                raise ValueError(f"{name} must list {NUM_SERVERS} edge servers (the observation layout is fixed at M = 5)")
        if min(self.server_bandwidth_mhz) <= 0 or min(self.server_cpu_ghz) <= 0:
            raise ValueError("server bandwidths and CPU speeds must be positive")
        for name in ("size_mb", "cycles_per_mb", "deadline_s"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < lo <= hi")
        if self.deadline_slots(min(self.deadline_s[0], self.deadline_fixed_s or np.inf)) < 1:
            raise ValueError("deadlines must be at least one slot")
        return self

    def deadline_slots(self, deadline_s):
        """D = floor(d / dt + 1e-9), slots (spec 1.2)."""
        return np.floor(np.asarray(deadline_s, dtype=np.float64) / self.slot_s + SLOT_TOL).astype(np.int64)

    @property
    def max_deadline_slots(self) -> int:
        """D_max: the longest deadline in slots; also the number of drain slots (spec 1.1)."""
        top = self.deadline_fixed_s if self.deadline_fixed_s is not None else self.deadline_s[1]
        return int(self.deadline_slots(top))

    @property
    def bits_per_mb(self) -> float:
        return self.mb_to_mbit * cost.BITS_PER_MBIT

    def key_parameters(self) -> dict[str, object]:
        d = f"{self.deadline_fixed_s}" if self.deadline_fixed_s is not None else f"U{list(self.deadline_s)}"
        return {**super().key_parameters(), "devices": self.num_devices, "servers": NUM_SERVERS,
                "p": self.task_probability, "deadline_s": d, "B_MHz": list(self.server_bandwidth_mhz),
                "F_GHz": list(self.server_cpu_ghz), "MB_in_Mbit": self.mb_to_mbit}


@dataclass
class _Queues:
    """Task table (spec 7.1): every field has shape (B, I, K); B = servers (or oracle candidates)."""

    stage: np.ndarray  # int8: 0 empty, 1 transmitting, 2 at the ES
    rem_bits: np.ndarray  # bits still to send
    rem_cyc: np.ndarray  # Gcycles still to compute
    e: np.ndarray  # Gcycles/MB of the task (eq. 2's e, to report queues in MB)
    gen: np.ndarray  # int64: generation slot t_gen
    dl: np.ndarray  # int64: absolute deadline boundary t_gen + D
    tid: np.ndarray  # int64: workload row of the task

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> "_Queues":
        return cls(np.zeros(shape, np.int8), np.zeros(shape), np.zeros(shape), np.zeros(shape),
                   np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.full(shape, -1, np.int64))



class GmelSimulator(Simulator):
    """GMEL system model (spec sections 1 and 7.2)."""

    name = "gmel"
    Preset = Preset
    TASK_FIELDS = {
        "slot": "slot; generation slot t",
        "source": "index; the IED i that generated the task",
        "size_mb": "MB; input data size s",
        "cycles_per_mb": "Gcycles/MB; GPU work per MB e",
        "deadline_s": "s; maximum tolerable latency d",
    }
    TASK_DTYPES = {"slot": np.int64, "source": np.int64}
    PARAM_FIELDS = {
        "device_xy_m": "m; (I, 2) IED positions",
        "fading": "1; (T + D_max, I, M) Rayleigh power gain |h|^2 per slot, IED and ES",
    }
    POLICIES = ("random", "round_robin", "greedy", "local", "opt")
    MULTI_AGENT = True
    OBS_LAYOUT = (
        ObsField("has_task", "1", 1.0, 1, "1 if the IED generated a task this slot"),
        ObsField("size_mb", "MB", 5.0, 1, "s_i(t), 0 without a task"),
        ObsField("cycles_per_mb", "Gcycles/MB", 0.5, 1, "e_i(t), 0 without a task"),
        ObsField("deadline_s", "s", 2.5, 1, "d_i(t), 0 without a task"),
        ObsField("local_wait_s", "s", 2.5, 1, "T^L,wait: time until the IED's GPU is free"),
        ObsField("comm_queue_mb", "MB", 25.0, NUM_SERVERS, "q^Co_{i,m}(t-1): data left in the IED's uplink queue to each ES"),
        ObsField("edge_queue_mb", "MB", 25.0, NUM_SERVERS, "q^EC_{i,m}(t-1): the IED's queue at each ES, eq. 2 units"),
        ObsField("gain_norm", "1", 1.0, NUM_SERVERS, "g_bar_{i,m}(t) = g_{i,m}(t) / max_j g_{j,m}(t)"),
        ObsField("es_load", "1", 1.0, NUM_SERVERS, "omega_m = |V_m^EC(t-1)| / I: load level of each ES"),
    )

    def __init__(self, preset: Preset):
        super().__init__(preset)
        self.preset: Preset = preset
        p = preset
        self.I = p.num_devices
        self.M = NUM_SERVERS
        self.T = p.slots_per_episode
        self.D_max = p.max_deadline_slots
        self.K = self.D_max + 1
        self.bw_hz = np.asarray(p.server_bandwidth_mhz) * 1e6
        self.cpu_gcps = np.asarray(p.server_cpu_ghz, dtype=np.float64)
        self.server_xy = np.asarray(p.server_xy_m, dtype=np.float64)
        self.t = 0
        self._ready = False

    # -- workload ---------------------------------------------------------------------------
    def generate_workload(self, rng: np.random.Generator, episode: int) -> Workload:
        """Positions, fading and Bernoulli(p) arrivals (spec 1.1-1.2). Every array is drawn at full
        size in a fixed order so that sweeps over p or d keep common random numbers."""
        p, I, T = self.preset, self.I, self.T
        xy = rng.uniform(0.0, p.area_m, size=(I, 2))
        fading = cost.rayleigh_power_gain(rng, (T + self.D_max, I, self.M))
        u = rng.random((T, I))
        size = rng.uniform(*p.size_mb, size=(T, I))
        e = rng.uniform(*p.cycles_per_mb, size=(T, I))
        d = rng.uniform(*p.deadline_s, size=(T, I))
        if p.deadline_fixed_s is not None:
            d = np.full((T, I), p.deadline_fixed_s)
        mask = u < p.task_probability
        slot, source = np.nonzero(mask)  # row-major: sorted by slot, then by IED
        tasks = {"slot": slot.astype(np.int64), "source": source.astype(np.int64), "size_mb": size[mask],
                 "cycles_per_mb": e[mask], "deadline_s": d[mask]}
        return Workload(self.name, episode, {"device_xy_m": xy, "fading": fading}, tasks)

    # -- episode ----------------------------------------------------------------------------
    def reset(self, workload: Workload) -> None:
        p, I, M, T = self.preset, self.I, self.M, self.T
        workload.check(self.TASK_FIELDS, self.PARAM_FIELDS)
        xy = np.asarray(workload.params["device_xy_m"], dtype=np.float64)
        fading = np.asarray(workload.params["fading"], dtype=np.float64)
        if xy.shape != (I, 2):
            raise TraceError(f"device_xy_m has shape {xy.shape} but the preset has {I} IEDs (expected ({I}, 2))")
        if fading.shape != (T + self.D_max, I, M):
            raise TraceError(f"fading has shape {fading.shape}; the preset needs ({T + self.D_max}, {I}, {M})")
        if np.any(fading < 0) or not np.all(np.isfinite(fading)):
            raise TraceError("fading power gains must be finite and non-negative")
        tk = workload.tasks
        slot, src = np.asarray(tk["slot"], np.int64), np.asarray(tk["source"], np.int64)
        n = len(slot)
        if n and (slot.min() < 0 or slot.max() >= T):
            raise TraceError(f"task slots must lie in 0..{T - 1}")
        if n and (src.min() < 0 or src.max() >= I):
            raise TraceError(f"task sources must be IED indices 0..{I - 1}")
        key = slot * I + src
        if n > 1 and np.any(np.diff(key) <= 0):
            raise TraceError("each IED generates at most one task per slot, listed in IED order within a slot")
        size = np.asarray(tk["size_mb"], dtype=np.float64)
        e = np.asarray(tk["cycles_per_mb"], dtype=np.float64)
        d = np.asarray(tk["deadline_s"], dtype=np.float64)
        if n and (size.min() <= 0 or e.min() <= 0):
            raise TraceError("task sizes and cycles per MB must be positive")
        D = p.deadline_slots(d)
        if n and (D.min() < 1 or D.max() > self.D_max):
            raise TraceError(f"task deadlines must span 1..{self.D_max} slots of {p.slot_s} s for this preset")

        self.workload = workload
        self.slot_of, self.src_of = slot, src
        self.size_mb, self.cpm, self.deadline = size, e, d
        self.D = D
        self.work_gcyc = size * e  # W = s e, Gcycles
        # GMEL eq. (1): whole slots of local GPU work, n = ceil(W / (dt f))
        self.local_slots = np.rint(cost.compute_delay_s(self.work_gcyc, p.device_gpu_ghz, p.slot_s) / p.slot_s).astype(np.int64)
        dist = np.linalg.norm(xy[:, None, :] - self.server_xy[None, :, :], axis=-1)
        self.distance_m = np.maximum(dist, p.min_distance_m)  # (I, M)
        self.gain = cost.channel_gain(self.distance_m[None], fading)  # (T + D_max, I, M)
        self.offsets = workload.slot_offsets(T)

        self.q = _Queues.empty((M, I, self.K))
        self.busy_until = np.zeros(I, dtype=np.int64)  # b_i, a boundary
        self.status = np.zeros(n, dtype=np.int8)
        self.resolve_at = np.full(n, -1, dtype=np.int64)
        self.latency_s = np.full(n, np.nan)
        self.target = np.full(n, -1, dtype=np.int64)
        self.last_edge_active = np.zeros(M, dtype=np.int64)  # |V_m^EC| of the last processed slot
        self.t = 0
        self.decisions = 0
        self._ready = True

    @property
    def done(self) -> bool:
        return self._ready and self.t >= self.T

    @property
    def boundary(self) -> int:
        """The current time boundary, slots (after the episode: the boundary where the drain ended)."""
        return self.t

    def _task_ids(self, t: int) -> np.ndarray:
        return np.arange(self.offsets[t], self.offsets[t + 1]) if t < self.T else np.arange(0)

    # -- views ------------------------------------------------------------------------------
    def _features(self, devices: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Per-row quantities an IED knows at the start of slot t (spec section 3): its task (ids = -1
        for none), its GPU backlog, its own queues, its channel, and the servers' broadcast counts."""
        p, t, q = self.preset, self.t, self.q
        has = ids >= 0
        safe = np.where(has, ids, 0)

        def task_col(col: np.ndarray) -> np.ndarray:
            return np.where(has, col[safe], 0.0) if len(col) else np.zeros(len(ids))

        g = self.gain[min(t, len(self.gain) - 1)]  # (I, M)
        tx, ec = q.stage == STAGE_TX, q.stage == STAGE_EDGE
        comm_mb = (np.where(tx, q.rem_bits, 0.0).sum(-1) / p.bits_per_mb).T  # (I, M)
        with np.errstate(divide="ignore", invalid="ignore"):
            edge_mb = (np.where(ec, q.rem_cyc / q.e, 0.0).sum(-1)).T  # eq. 2 queue length, MB
        edge_gcyc = np.where(ec, q.rem_cyc, 0.0).sum(-1).T
        n = len(devices)
        bcast = lambda v: np.broadcast_to(np.asarray(v, dtype=np.float64), (n, self.M)).copy()  # noqa: E731
        return {
            "has_task": has.astype(np.float64),
            "size_mb": task_col(self.size_mb),
            "cycles_per_mb": task_col(self.cpm),
            "deadline_s": task_col(self.deadline),
            "local_wait_s": (np.maximum(t, self.busy_until[devices]) - t) * p.slot_s,
            "comm_queue_mb": comm_mb[devices],
            "edge_queue_mb": edge_mb[devices],
            "gain_norm": g[devices] / g.max(axis=0, keepdims=True),
            "es_load": bcast(self.last_edge_active / self.I),
            # not in the observation; used by the greedy estimate (own queues and ES broadcasts)
            "gain": g[devices],
            "edge_backlog_gcycles": edge_gcyc[devices],
            "comm_active": bcast(tx.any(-1).sum(-1)),
            "edge_active": bcast(ec.any(-1).sum(-1)),
        }

    def _make_view(self, devices: np.ndarray, ids: np.ndarray) -> OffloadView:
        n = len(devices)
        prox = np.concatenate([np.zeros((n, 1)), self.distance_m[devices]], axis=1)
        return OffloadView(slot=self.t, target_names=TARGET_NAMES, source=devices.astype(np.int64),
                           allowed=np.ones((n, self.M + 1), dtype=bool), local_target=0, proximity=prox,
                           compatible=np.ones((n, self.M + 1), dtype=bool), features=self._features(devices, ids))

    def view(self) -> OffloadView:
        """One row per IED that generated a task this slot (sorted by IED)."""
        ids = self._task_ids(self.t)
        return self._make_view(self.src_of[ids], ids)

    def agent_view(self) -> OffloadView:
        """One row per IED (the PettingZoo agents); ``has_task`` marks rows whose action counts."""
        ids = np.full(self.I, -1, dtype=np.int64)
        now = self._task_ids(self.t)
        ids[self.src_of[now]] = now
        return self._make_view(np.arange(self.I), ids)

    def observation(self, view: OffloadView) -> np.ndarray:
        f = view.features
        cols = [np.asarray(f[o.name], dtype=np.float64).reshape(view.n, o.width) / o.scale for o in self.OBS_LAYOUT]
        return np.concatenate(cols, axis=1).astype(np.float32) if cols else np.zeros((view.n, 0), np.float32)

    # -- dynamics ---------------------------------------------------------------------------
    def _advance(self, q: _Queues, t: int, gain: np.ndarray, bw_hz: np.ndarray, cpu_gcps: np.ndarray):
        """Serve slot t (spec 7.2 steps 7-11) on queues of shape (B, I, K): OFDMA uplink (GMEL eq. 3
        with equal shares, eq. 3a), edge compute (GMEL eq. 2), handover at t+1, then completions and
        deadline drops at boundary t+1. ``gain`` (B, I), ``bw_hz`` and ``cpu_gcps`` (B,). Mutates
        ``q``; returns (completed, dropped) masks of shape (B, I, K) and |V^EC| per row (B,)."""
        p = self.preset
        first = (t + 1) % q.stage.shape[-1]  # ring-buffer place of the oldest task (FIFO by t_gen)
        tx = q.stage == STAGE_TX
        ec = q.stage == STAGE_EDGE  # V^EC is taken before this slot's handovers
        n_co = tx.any(-1).sum(-1)
        n_ec = ec.any(-1).sum(-1)
        # empty bands get a nominal share: their queues hold no bits, so nothing is served
        sub_bw = cost.equal_share(bw_hz, np.maximum(n_co, 1))
        rate = cost.shannon_rate_bps(sub_bw[:, None], p.tx_power_w, gain, cost.noise_power_w(p.noise_dbm_per_hz, sub_bw)[:, None])
        q.rem_bits -= cost.fifo_serve_slot(np.where(tx, q.rem_bits, 0.0), rate * p.slot_s, first)
        cap = cost.equal_share(cpu_gcps * p.slot_s, n_ec)[:, None]
        q.rem_cyc -= cost.fifo_serve_slot(np.where(ec, q.rem_cyc, 0.0), cap, first)
        handed = tx & (q.rem_bits <= BIT_TOL)
        completed = ec & (q.rem_cyc <= CYCLE_TOL)
        q.stage[handed] = STAGE_EDGE
        q.stage[completed] = STAGE_EMPTY
        dropped = (q.stage != STAGE_EMPTY) & (q.dl <= t + 1)  # completions first, then drops (1.7)
        q.stage[dropped] = STAGE_EMPTY
        return completed, dropped, n_ec

    def _process_slot(self) -> None:
        t = self.t
        completed, dropped, n_ec = self._advance(self.q, t, self.gain[t].T, self.bw_hz, self.cpu_gcps)
        self.last_edge_active = n_ec
        done_ids = self.q.tid[completed]
        self.status[done_ids] = STATUS_DONE
        self.latency_s[done_ids] = (t + 1 - self.q.gen[completed]) * self.preset.slot_s
        self.resolve_at[done_ids] = t + 1
        drop_ids = self.q.tid[dropped]
        self.status[drop_ids] = STATUS_DROPPED
        self.resolve_at[drop_ids] = t + 1
        self.t = t + 1

    def local_outcome(self, ids: np.ndarray, busy_until: np.ndarray):
        """GMEL eq. (1) with the deadline cap for new local tasks ``ids`` (one per IED):
        (resolve boundary, completed, new busy-until of their IEDs)."""
        t = self.slot_of[ids]
        return cost.slotted_fifo_with_deadline(busy_until[self.src_of[ids]], t, self.local_slots[ids], t + self.D[ids])

    def task_reward(self, completed, latency_s):
        """r = C - T, with T = T_drop for a dropped task (GMEL eq. 4 per step, spec 1.8)."""
        p = self.preset
        return np.where(completed, p.reward_constant_s - np.nan_to_num(latency_s), p.reward_constant_s - p.drop_latency_s)

    def step(self, decision: OffloadDecision) -> None:
        if not self._ready or self.done:
            raise ValueError("the episode is over; call reset() first")
        p, t = self.preset, self.t
        ids = self._task_ids(t)
        target = np.asarray(decision.target, dtype=np.int64)
        if target.shape == (self.I,) and len(ids) != self.I:
            target = target[self.src_of[ids]]  # an agent view: keep the rows of IEDs with a task
        if target.shape != (len(ids),):
            raise ValueError(f"decision has {target.shape[0]} targets; slot {t} has {len(ids)} tasks and {self.I} agents")
        if len(ids) and (target.min() < 0 or target.max() > self.M):
            raise ValueError(f"decision names a target outside 0..{self.M} (local, edge0..edge{self.M - 1})")
        self.target[ids] = target
        loc = ids[target == 0]
        if len(loc):
            resolve, ok, new_b = self.local_outcome(loc, self.busy_until)
            self.busy_until[self.src_of[loc]] = new_b
            self.status[loc] = np.where(ok, STATUS_DONE, STATUS_DROPPED)
            self.resolve_at[loc] = resolve
            self.latency_s[loc] = np.where(ok, (resolve - t) * p.slot_s, np.nan)
        off = ids[target > 0]
        if len(off):
            self._insert(self.q, target[target > 0] - 1, self.src_of[off], off)
        self.decisions += len(ids)
        self._process_slot()
        if self.t >= self.T:  # drain: no arrivals, no decisions, until every task has resolved (spec 1.1)
            last = int(self.resolve_at.max()) if len(self.resolve_at) else 0
            while self.q.stage.any() or self.t < last:
                self._process_slot()

    def _insert(self, q: _Queues, server: np.ndarray, row: np.ndarray, ids: np.ndarray) -> None:
        """New offloaded tasks join their (i, m) communication queue (spec 7.2 step 6)."""
        p = self.preset
        k = self.slot_of[ids] % self.K
        q.stage[server, row, k] = STAGE_TX
        q.rem_bits[server, row, k] = self.size_mb[ids] * p.bits_per_mb
        q.rem_cyc[server, row, k] = self.work_gcyc[ids]
        q.e[server, row, k] = self.cpm[ids]
        q.gen[server, row, k] = self.slot_of[ids]
        q.dl[server, row, k] = self.slot_of[ids] + self.D[ids]
        q.tid[server, row, k] = ids

    def resolved_between(self, b0: int, b1: int) -> np.ndarray:
        """Workload rows of the tasks that resolved at a boundary in (b0, b1]."""
        return np.flatnonzero((self.resolve_at > b0) & (self.resolve_at <= b1))

    def episode_metrics(self) -> dict[str, float]:
        """Completion and drop rates, mean latency over all tasks with a drop counted at d (ref [13]),
        mean latency of completed tasks, mean episode return per IED (Fig. 3) and per task."""
        n = len(self.status)
        if n == 0:
            return {"latency_s": 0.0, "completion_rate": 0.0, "drop_rate": 0.0, "reward": 0.0,
                    "latency_completed_s": 0.0, "reward_per_task": 0.0, "offload_rate": 0.0}
        ok = self.status == STATUS_DONE
        r = self.task_reward(ok, self.latency_s)
        return {
            "latency_s": float(np.where(ok, self.latency_s, self.deadline).mean()),
            "completion_rate": float(ok.mean()),
            "drop_rate": float((self.status == STATUS_DROPPED).mean()),
            "reward": float(r.sum() / self.I),
            "latency_completed_s": float(self.latency_s[ok].mean()) if ok.any() else 0.0,
            "reward_per_task": float(r.mean()),
            "offload_rate": float((self.target > 0).mean()),
        }

    # -- oracle support ---------------------------------------------------------------------
    def rollout_scores(self, server: np.ndarray, include: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Myopic score (spec 7.3) of candidate queue sets: candidate b is ES ``server[b]`` holding its
        current tasks plus the new tasks ``ids[include[b]]``; it runs with no future arrivals and the
        workload's true fading until every task has resolved. Score = sum of r = C - T over those
        tasks. Servers are independent (own band, own CPU), so these scores add up over servers."""
        p = self.preset
        t = self.t
        # each candidate keeps only the IEDs with work at its ES or a new task in it (rows padded
        # to the batch's largest set with empty places): the cost grows with the rows kept
        B = len(server)
        need = (self.q.stage != STAGE_EMPTY).any(axis=-1)[server]  # (B, I)
        b, j = np.nonzero(include)
        need[b, self.src_of[ids[j]]] = True
        R = max(int(need.sum(axis=1).max()), 1)
        rows = np.argsort(~need, axis=1, kind="stable")[:, :R]  # (B, R) device of each kept row
        q = _Queues(*(getattr(self.q, f.name)[server[:, None], rows] for f in fields(_Queues)))
        q.stage[~np.take_along_axis(need, rows, axis=1)] = STAGE_EMPTY
        row_of = np.zeros((B, self.I), dtype=np.int64)
        row_of[np.arange(B)[:, None], rows] = np.arange(R)
        if len(b):
            k = self.slot_of[ids[j]] % self.K
            sel = (b, row_of[b, self.src_of[ids[j]]], k)
            q.stage[sel] = STAGE_TX
            q.rem_bits[sel] = self.size_mb[ids[j]] * p.bits_per_mb
            q.rem_cyc[sel] = self.work_gcyc[ids[j]]
            q.e[sel] = self.cpm[ids[j]]
            q.gen[sel] = t
            q.dl[sel] = t + self.D[ids[j]]
        score = np.zeros(len(server))
        bw, cpu = self.bw_hz[server], self.cpu_gcps[server]
        tt = t
        while q.stage.any():
            gain = self.gain[min(tt, len(self.gain) - 1)][rows, server[:, None]]
            completed, dropped, _ = self._advance(q, tt, gain, bw, cpu)
            lat = (tt + 1 - q.gen) * p.slot_s
            score += np.where(completed, p.reward_constant_s - lat, 0.0).sum(axis=(1, 2))
            score += (p.reward_constant_s - p.drop_latency_s) * dropped.sum(axis=(1, 2))
            tt += 1
        return score

    # -- policies ---------------------------------------------------------------------------
    def scenario_policy(self, name: str) -> Policy | None:
        if name == "greedy":
            return GmelGreedyPolicy(self.preset)
        if name == "opt":
            return GmelOptPolicy()
        return None


class GmelGreedyPolicy(Policy):
    """Spec section 4 Greedy: per new task, in IED order, the target with the smallest estimated
    finish time from the IED's own knowledge (its GPU backlog, its own queues, its channel gains and
    the ESs' broadcast counts of active queues); each earlier pick in the slot counts as one more
    active queue at its ES. Estimates: local = wait + ceil(W/(dt f)) dt (eq. 1); edge m = transmit
    (q^Co + s) bits at the equal-share rate (eq. 3, 3a), then compute the backlog and W at F_m over
    the active queues (eq. 2)."""

    name = "greedy"

    def __init__(self, preset: Preset):
        self.p = preset

    def decide(self, view: OffloadView) -> OffloadDecision:
        p, f = self.p, view.features
        n = view.n
        target = np.zeros(n, dtype=np.int64)
        if n == 0:
            return OffloadDecision(target=target)
        bw = np.asarray(p.server_bandwidth_mhz) * 1e6
        cpu = np.asarray(p.server_cpu_ghz, dtype=np.float64)
        work = f["size_mb"] * f["cycles_per_mb"]
        local = f["local_wait_s"] + cost.compute_delay_s(work, p.device_gpu_ghz, p.slot_s)
        co_new = f["comm_queue_mb"] <= 0  # the pick would activate a new uplink queue
        ec_new = f["edge_backlog_gcycles"] <= 0
        co = f["comm_active"][0].copy() if n else np.zeros(len(bw))
        ecn = f["edge_active"][0].copy() if n else np.zeros(len(bw))
        bits = (f["comm_queue_mb"] + f["size_mb"][:, None]) * p.bits_per_mb
        active = f["has_task"] > 0
        for r in np.flatnonzero(active):  # sequential by definition: earlier picks change the shares
            sub = cost.equal_share(bw, co + co_new[r])
            rate = cost.shannon_rate_bps(sub, p.tx_power_w, f["gain"][r], cost.noise_power_w(p.noise_dbm_per_hz, sub))
            tx_s = cost.transmission_delay_s(bits[r], rate)
            share = cost.equal_share(cpu, ecn + ec_new[r])
            edge = np.maximum(tx_s, cost.compute_delay_s(f["edge_backlog_gcycles"][r], share)) + cost.compute_delay_s(work[r], share)
            est = np.concatenate(([local[r]], edge))
            pick = int(np.argmin(est))
            target[r] = pick
            if pick > 0:
                co[pick - 1] += co_new[r, pick - 1]
                ecn[pick - 1] += ec_new[r, pick - 1]
        return OffloadDecision(target=target)


class GmelOptPolicy(Policy):
    """Myopic per-slot oracle (spec 7.3) with the true state and the workload's true future fading,
    no future arrivals. It maximizes the sum of r = C - T over every task in the system. The
    objective separates into the new local tasks' rewards (eq. 1 outcomes, known exactly) plus one
    score per ES (its band and CPU are shared only by its own queues), so:

    * slots with at most ``opt_exact_max_tasks`` new tasks: EXACT. Every ES is scored for every subset
      of the new tasks (2^K rollouts per ES), then a subset DP over the ESs finds the best of all
      (M+1)^K joint targets.
    * larger slots: a BOUND (a feasible decision, so a lower bound on the myopic optimum):
      coordinate descent from the greedy decision, each task trying all M+1 targets with the others
      fixed, until a sweep changes nothing or after ``opt_sweeps`` sweeps.
    """

    name = "opt"
    needs_oracle: ClassVar[bool] = True

    def reset(self, rng: np.random.Generator, oracle: Simulator | None = None) -> None:
        super().reset(rng, oracle)
        if not isinstance(oracle, GmelSimulator):
            raise ValueError("opt needs the gmel simulator as its oracle")
        self.sim = oracle
        self.greedy = GmelGreedyPolicy(oracle.preset)
        self.exact_slots = 0
        self.search_slots = 0

    def _task_rows(self, view: OffloadView) -> tuple[np.ndarray, np.ndarray]:
        sim = self.sim
        ids = sim._task_ids(sim.t)
        rows = np.searchsorted(view.source, sim.src_of[ids])  # the view's row of each new task
        return ids, rows

    def decide(self, view: OffloadView) -> OffloadDecision:
        sim = self.sim
        ids, rows = self._task_rows(view)
        target = np.zeros(view.n, dtype=np.int64)
        if len(ids) == 0:
            return OffloadDecision(target=target)
        resolve, ok, _ = sim.local_outcome(ids, sim.busy_until)
        local_r = sim.task_reward(ok, (resolve - sim.t) * sim.preset.slot_s)
        if len(ids) <= sim.preset.opt_exact_max_tasks:
            best = self._exact(ids, local_r)
            self.exact_slots += 1
        else:
            init = self.greedy.decide(view).target[rows]
            best = self._coordinate_descent(ids, local_r, init)
            self.search_slots += 1
        target[rows] = best
        return OffloadDecision(target=target)

    def _exact(self, ids: np.ndarray, local_r: np.ndarray) -> np.ndarray:
        sim, n, M = self.sim, len(ids), self.sim.M
        full = (1 << n) - 1
        masks = np.arange(full + 1)
        include = ((masks[:, None] >> np.arange(n)) & 1).astype(bool)  # (2^n, n)
        server = np.repeat(np.arange(M), full + 1)
        scores = sim.rollout_scores(server, np.tile(include, (M, 1)), ids).reshape(M, full + 1)
        # best[A]: the best value of the tasks in A placed locally or on the ESs seen so far, plus
        # those ESs' scores; ES m takes a subset S of A (S may be empty): 3^n pairs per ES
        best = include.astype(np.float64) @ local_r
        choice = np.zeros((M, full + 1), dtype=np.int64)  # subset given to ES m in best[A]
        for m in range(M):
            new = best + scores[m, 0]
            for a in range(1, full + 1):
                s = a
                while s:
                    v = best[a ^ s] + scores[m, s]
                    if v > new[a] + 1e-12:
                        new[a], choice[m, a] = v, s
                    s = (s - 1) & a
            best = new
        targets = np.zeros(n, dtype=np.int64)
        a = full
        for m in range(M - 1, -1, -1):
            s = choice[m, a]
            targets[include[s]] = m + 1
            a ^= s
        return targets

    def _coordinate_descent(self, ids: np.ndarray, local_r: np.ndarray, init: np.ndarray) -> np.ndarray:
        sim, n, M = self.sim, len(ids), self.sim.M
        assign = init.astype(np.int64).copy()
        members = np.zeros((M, n), dtype=bool)
        members[assign[assign > 0] - 1, np.flatnonzero(assign > 0)] = True
        cur = sim.rollout_scores(np.arange(M), members, ids)
        for _ in range(sim.preset.opt_sweeps):
            changed = False
            for j in range(n):
                a = int(assign[j])
                without = members.copy()
                without[:, j] = False
                with_j = without.copy()
                with_j[:, j] = True
                server = np.arange(M)
                inc = with_j
                if a > 0:  # also score the current ES without task j
                    server = np.r_[server, a - 1]
                    inc = np.vstack([with_j, without[a - 1]])
                sc = sim.rollout_scores(server, inc, ids)
                w_score = cur.copy()
                if a > 0:
                    w_score[a - 1] = sc[M]
                gain = np.r_[local_r[j], sc[:M] - w_score]
                now = gain[a]
                x = int(np.argmax(gain))
                if gain[x] > now + 1e-9 and x != a:
                    assign[j] = x
                    members = without
                    cur = w_score
                    if x > 0:
                        members[x - 1, j] = True
                        cur[x - 1] = sc[x - 1]
                    changed = True
            if not changed:
                break
        return assign


class GmelEnv(ParallelEnv):
    """PettingZoo ParallelEnv over :class:`GmelSimulator`: one agent per IED, one step per slot.

    Every agent acts every slot (Discrete(M+1): 0 local, m offload to ES m-1); the action of an IED
    without a task is ignored (its ``has_task`` observation column is 0). The reward of an agent at a
    step is the sum of r = C - T (T = T_drop for a drop, spec 1.8) over its tasks that resolved at
    that step; the last step also runs the drain, so every task's reward is paid within the episode.
    ``infos[agent]`` lists the resolved tasks as (t_gen, T_s, completed)."""

    metadata = {"name": "gmel_v0", "render_modes": []}

    def __init__(self, preset: str = "gmel", seed: int | None = None, **overrides: Any):
        from policies.scenarios import make_simulator

        sim = make_simulator(preset, overrides, expect="gmel")
        self.sim = sim
        self.possible_agents = [f"ied_{i}" for i in range(sim.I)]
        self.agents: list[str] = []
        self._obs_space = spaces.Box(0.0, np.inf, shape=(sim.obs_dim(),), dtype=np.float32)
        self._act_space = spaces.Discrete(sim.M + 1)
        self._seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**63))
        self._episode = 0
        self.render_mode = None

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs_space

    def action_space(self, agent: str) -> spaces.Space:
        return self._act_space

    def _observe(self) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        view = self.sim.agent_view()
        obs = self.sim.observation(view)
        has = view.features["has_task"] > 0
        return ({a: obs[i] for i, a in enumerate(self.possible_agents)},
                {a: {"has_task": bool(has[i])} for i, a in enumerate(self.possible_agents)})

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seed, self._episode = int(seed), 0
        wl = self.sim.generate_workload(episode_rng(self._seed, self._episode, 0), self._episode)
        self._episode += 1
        self.sim.reset(wl)
        self.agents = self.possible_agents[:]
        return self._observe()

    def step(self, actions: dict[str, int]):
        sim = self.sim
        target = np.array([int(actions.get(a, 0)) for a in self.possible_agents], dtype=np.int64)
        b0 = sim.boundary
        sim.step(OffloadDecision(target=target))
        ids = sim.resolved_between(b0, sim.boundary)
        ok = sim.status[ids] == STATUS_DONE
        r = sim.task_reward(ok, sim.latency_s[ids])
        per_agent = np.bincount(sim.src_of[ids], weights=r, minlength=sim.I)
        obs, infos = self._observe()
        for i, t_gen, lat, c in zip(sim.src_of[ids], sim.slot_of[ids], sim.latency_s[ids], ok):
            infos[self.possible_agents[i]].setdefault("resolved", []).append(
                (int(t_gen), float(lat) if c else float(sim.preset.drop_latency_s), bool(c)))
        done = sim.done
        rewards = {a: float(per_agent[i]) for i, a in enumerate(self.possible_agents)}
        terminations = {a: done for a in self.possible_agents}
        truncations = {a: False for a in self.possible_agents}
        if done:
            self.agents = []
        return obs, rewards, terminations, truncations, infos
