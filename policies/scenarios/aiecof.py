"""AIECOF / TOPPO (paper 002): cloud-free computation offloading of AIGC tasks in IoIT edge networks.

Spec: docs/papers/aiecof.md (X. Zhang et al., "DRL-Enabled Computation Offloading for AIGC Services in
IoIT-assisted Edge Computing Networks"). Units: sizes in Mbit (bits inside the cost functions),
work in cycles, CPU speeds in GHz (Hz inside), time in slots of dt = 0.1 s, energy in J.

M intelligent devices (InDes) each get at most one task per slot (Bernoulli p). A device decides:
run it locally (target 0, eta = 1) or send it to edge server n (target n, xi_n = 1), AIECOF eq. 1.
Every resource is a slotted FIFO with a busy pointer, kept here as the boundary at which it frees
("free-at" = the spec's busy-until b + 1):

* the device CPU (AIECOF eqs. 2-4), the (device, ES) transmit queue at 14 Mbit/s (eqs. 13-14), and
  the ES CPU queue, one task at a time in booking order (eq. 18);
* a task not finished by its last admissible slot t_end = t + tau - 1 is dropped there (spec 1.4,
  1.7, 1.8), and its outcome (delay, energy, drop) is fixed when it is booked (spec 1.10).

One :class:`OffloadView` per slot has one row per device with a task, in ascending device index,
which is the booking order (spec 1.10): local and transmit bookings touch only the device's own
pointers; ES bookings of the slot see those of lower devices. The booking functions
(:func:`book_local`, :func:`book_transmit`, :func:`book_edge`) are shared by the simulator, the
greedy heuristic and the ``opt`` oracle, so there is one copy of the semantics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv
from pydantic import Field, model_validator

from policies.config import PresetBase
from policies.cost import (
    BITS_PER_MBIT,
    compute_delay_s,
    compute_energy_j,
    cpu_utilization,
    fifo_finish_times_grouped_abort,
    normalized_score_reward,
    slotted_fifo_with_deadline,
    transmission_delay_s,
    transmission_energy_j,
    whole_slots,
)
from policies.errors import TraceError
from policies.scenarios.base import ObsField, OffloadDecision, OffloadView, Policy, Simulator
from policies.workload import Workload, episode_rng

GHZ = 1e9


# --------------------------------------------------------------------------------------------
# Preset
# --------------------------------------------------------------------------------------------
class Preset(PresetBase):
    """AIECOF parameters (spec section 2). [paper] printed, [cal] calibrated, [ours] our reading."""

    num_devices: int = Field(30, ge=1, description="M: intelligent devices (count); Fig. 8 sweeps 20..60")
    num_edges: int = Field(8, ge=1, description="N: edge servers (count)")
    device_cpu_ghz_min: float = Field(3.0, gt=0, description="f_m ~ U[min, max] per device per episode, GHz")
    device_cpu_ghz_max: float = Field(5.0, gt=0, description="upper bound of f_m, GHz")
    edge_cpu_ghz_min: float = Field(30.0, gt=0, description="f_n = linspace(min, max, N), GHz (before the scale)")
    edge_cpu_ghz_max: float = Field(41.8, gt=0, description="upper end of the f_n linspace, GHz")
    edge_cpu_scale: float = Field(1.0, gt=0, description="factor on every f_n (Fig. 9 sweeps 0.25..1.25), 1")
    arrival_prob_a: float = Field(0.6, ge=0, le=1, description="Bernoulli task probability per slot, controllers (even m), 1")
    arrival_prob_b: float = Field(0.6, ge=0, le=1, description="Bernoulli task probability per slot, cameras (odd m), 1")
    size_a_mbit_min: float = Field(2.0, gt=0, description="type-A task size x ~ U[min, max], Mbit")
    size_a_mbit_max: float = Field(4.0, gt=0, description="upper bound of the type-A size, Mbit")
    size_b_mbit_min: float = Field(5.0, gt=0, description="type-B task size x ~ U[min, max], Mbit")
    size_b_mbit_max: float = Field(8.0, gt=0, description="upper bound of the type-B size, Mbit")
    density_min: float = Field(100.0, gt=0, description="rho ~ U[min, max], cycles/bit [cal]")
    density_max: float = Field(150.0, gt=0, description="upper bound of rho, cycles/bit [cal]")
    deadline_slots: int = Field(10, ge=1, description="tau_max: slots a task may take, t_end = t + tau - 1 (slots)")
    rate_mbps: float = Field(14.0, gt=0, description="r_{m,n}: constant uplink rate of every pair, Mbit/s [paper]")
    tx_queue: Literal["per_pair", "per_device"] = Field(
        "per_pair", description="one transmit FIFO per (device, ES) on orthogonal channels, or one radio per device")
    p_wait_device_w: float = Field(0.1, ge=0, description="P_wait^InDe: device static power while a task waits, W")
    p_wait_edge_w: float = Field(0.1, ge=0, description="P_wait^edge: static power charged while a task waits at an ES, W")
    p_tx_w: float = Field(2.3, ge=0, description="P_tx: transmit power, W")
    kappa: float = Field(1e-29, ge=0, description="c: device switched capacitance, P = c f^3, J s^2/cycle^3 [cal]")
    kappa_edge: float = Field(1e-29, ge=0, description="edge switched capacitance, J s^2/cycle^3")
    count_edge_compute_energy: bool = Field(False, description="add c f_n^2 W of the ES to the task energy")
    utilization_cap: float = Field(0.98, gt=0, le=1, description="cap of the per-slot CPU loading L (eq. 12), 1")
    reward_weights: tuple[float, float, float, float] = Field(
        (0.25, 0.25, 0.25, 0.25), description="(lambda1 energy, lambda2 delay, lambda3 failure, lambda4 load), 1")
    reward_mode: Literal["paper", "per_task"] = Field(
        "paper", description="sigma_D from the running mean delay l_D (paper) or the current task's delay")
    reward_eps: float = Field(1e-10, gt=0, description="guard inside log2 of sigma_E (eq. 29), 1")
    obs_extras: bool = Field(False, description="append f_m / 5 GHz and the own transmit backlogs to the observation")
    opt_delay_weight_per_s: float = Field(1.0, ge=0, description="opt's linear cost per second of task delay, 1/s")
    opt_energy_weight_per_j: float = Field(0.1, ge=0, description="opt's linear cost per joule of task energy, 1/J")
    opt_drop_penalty: float = Field(1.0, gt=0, description="opt's extra cost of a dropped task, 1")
    opt_time_limit_s: float = Field(10.0, gt=0, description="HiGHS time limit per slot problem, s")

    @model_validator(mode="after")
    def _bounds(self) -> "Preset":
        for lo, hi in (("device_cpu_ghz_min", "device_cpu_ghz_max"), ("edge_cpu_ghz_min", "edge_cpu_ghz_max"),
                       ("size_a_mbit_min", "size_a_mbit_max"), ("size_b_mbit_min", "size_b_mbit_max"),
                       ("density_min", "density_max")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} must not exceed {hi}")
        if any(w < 0 for w in self.reward_weights):
            raise ValueError("reward_weights must be non-negative")
        return self

    @property
    def max_delay_s(self) -> float:
        """D_max = tau_max dt, s (spec 1.12)."""
        return self.deadline_slots * self.slot_s

    def edge_cpu_ghz(self) -> np.ndarray:
        """f_n = s * linspace(min, max, N), GHz (spec 1.1, Fig. 9 scale s)."""
        return self.edge_cpu_scale * np.linspace(self.edge_cpu_ghz_min, self.edge_cpu_ghz_max, self.num_edges)

    def key_parameters(self) -> dict[str, object]:
        return {**super().key_parameters(), "devices": self.num_devices, "edges": self.num_edges,
                "p": (self.arrival_prob_a, self.arrival_prob_b), "tau_slots": self.deadline_slots,
                "rate_mbps": self.rate_mbps, "edge_ghz": f"{self.edge_cpu_ghz().min():.1f}..{self.edge_cpu_ghz().max():.1f}",
                "density_cycles_per_bit": f"{self.density_min:g}..{self.density_max:g}", "kappa": self.kappa,
                "tx_queue": self.tx_queue}


# --------------------------------------------------------------------------------------------
# Booking (spec 1.4, 1.7, 1.8): one copy, used by the simulator, greedy and opt
# --------------------------------------------------------------------------------------------
@dataclass
class LocalBooking:
    """Outcome of running tasks on their devices (AIECOF eqs. 2-11); arrays over tasks."""

    start: np.ndarray  # slot the CPU starts the task (t + D_wait)
    exec_slots: np.ndarray  # slots the CPU works on it (D_com if completed, fewer if cut at t_end)
    completed: np.ndarray  # bool
    delay_slots: np.ndarray  # D_wait + D_com if completed, else tau
    energy_j: np.ndarray  # E^wait + E^comp (eqs. 6-10)
    new_free: np.ndarray  # device CPU free-at boundary after the booking


def book_local(p: Preset, t: int, free_at, work_cycles, cpu_hz) -> LocalBooking:
    """AIECOF eqs. 2-4 [fix] and 6-10 for tasks of slot t on devices whose CPU frees at ``free_at``."""
    tau, dt = p.deadline_slots, p.slot_s
    d_com = whole_slots(compute_delay_s(work_cycles, cpu_hz), dt)  # eq. 3
    free_at = np.asarray(free_at, dtype=np.int64)
    _, completed, new_free = slotted_fifo_with_deadline(free_at, t, d_com, t + tau)  # eq. 4 [fix]
    start = np.maximum(t, free_at)
    wait = start - t  # eq. 2 [fix]
    unstarted = start >= t + tau
    exec_slots = np.where(completed, d_com, np.where(unstarted, 0, t + tau - start))
    w_exec = np.where(completed, work_cycles, exec_slots * np.asarray(cpu_hz) * dt)  # eq. 10 [ours for cuts]
    e_wait = transmission_energy_j(p.p_wait_device_w, np.where(unstarted, tau, wait) * dt)  # eq. 7 + dt [fix]
    energy = e_wait + compute_energy_j(w_exec, cpu_hz, p.kappa)  # eqs. 8-10
    delay = np.where(completed, wait + d_com, tau)
    return LocalBooking(start, exec_slots, completed, delay, energy, new_free)


@dataclass
class TransmitBooking:
    """Outcome of the uplink (AIECOF eqs. 13-17); arrays over tasks (or tasks x servers)."""

    arrived: np.ndarray  # bool: reached the ES with at least one slot left for computing
    arrival: np.ndarray  # boundary (slot) the task reaches the ES: e_tx + 1
    energy_j: np.ndarray  # static queue wait + P_tx * bits sent / r
    new_free: np.ndarray  # radio free-at boundary after the booking


def book_transmit(p: Preset, t: int, free_at, size_mbit) -> TransmitBooking:
    """AIECOF eq. 14 [fix] D_trans = ceil(x / (r dt)) behind the FIFO transmit queue, eq. 16 [fix]."""
    tau, dt = p.deadline_slots, p.slot_s
    bits = np.asarray(size_mbit, dtype=np.float64) * BITS_PER_MBIT
    rate = p.rate_mbps * BITS_PER_MBIT
    d_tx = whole_slots(transmission_delay_s(bits, rate), dt)
    free_at = np.asarray(free_at, dtype=np.int64)
    # the radio is kept until t_end (boundary t + tau) by a task it cannot deliver in time (spec 1.7)
    _, _, new_free = slotted_fifo_with_deadline(free_at, t, d_tx, t + tau)
    start = np.maximum(t, free_at)
    arrival = start + d_tx
    arrived = arrival <= t + tau - 1  # e_tx <= t_end - 1: one slot left to compute
    unsent = start >= t + tau
    sent_slots = np.where(arrival <= t + tau, d_tx, np.where(unsent, 0, t + tau - start))
    bits_sent = np.minimum(bits, sent_slots * rate * dt)
    e_queue = transmission_energy_j(p.p_wait_device_w, np.where(unsent, tau, start - t) * dt)  # [ours]
    energy = e_queue + transmission_energy_j(p.p_tx_w, transmission_delay_s(bits_sent, rate))
    return TransmitBooking(arrived, arrival, energy, new_free)


@dataclass
class EdgeBooking:
    """Outcome of the ES queues (AIECOF eqs. 18-23); arrays over the booked tasks."""

    completed: np.ndarray  # bool
    delay_slots: np.ndarray  # end_e - t + 1 if completed, else tau
    energy_j: np.ndarray  # E_n^wait (+ c f_n^2 W_exec if counted)
    finish: np.ndarray  # boundary the ES is released by this task (start + slots worked)


def book_edge(p: Preset, t: int, edge: np.ndarray, arrival, work_cycles, edge_hz: np.ndarray,
              free_at: np.ndarray) -> EdgeBooking:
    """AIECOF eq. 18 [fix]: start_e = max(arr, b_n + 1), one task at a time per ES in booking order
    (the rows' order), D_com^ES = ceil(W / (f_n dt)); a task not done by t_end is cut there (spec 1.8).
    ``edge`` gives each row's ES, ``free_at`` (N,) the ES free-at boundaries before these rows."""
    tau, dt = p.deadline_slots, p.slot_s
    f = edge_hz[edge]
    d_es = whole_slots(compute_delay_s(work_cycles, f), dt)
    abort = np.full(edge.shape, float(t + tau))
    start, served, finish, completed, _ = fifo_finish_times_grouped_abort(
        edge, np.asarray(arrival, dtype=np.float64), d_es.astype(np.float64),
        np.asarray(free_at, dtype=np.float64), abort)
    start = np.rint(start).astype(np.int64)
    served = np.rint(served).astype(np.int64)
    wait = np.minimum(start, t + tau) - np.asarray(arrival, dtype=np.int64)  # eq. 20, up to t_end if dropped
    energy = transmission_energy_j(p.p_wait_edge_w, wait * dt)
    if p.count_edge_compute_energy:  # eqs. 21-22
        w_exec = np.where(completed, work_cycles, served * f * dt)
        energy = energy + compute_energy_j(w_exec, f, p.kappa_edge)
    delay = np.where(completed, start + d_es - t, tau)
    return EdgeBooking(completed, delay, energy, start + served)


# --------------------------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------------------------
class _LayoutDim:
    """``obs_dim()`` on the class (default N = 8, no extras) or on an instance (its preset's)."""

    def __get__(self, obj: Any, owner: type) -> Any:
        layout = (obj if obj is not None else owner).OBS_LAYOUT
        return lambda: sum(f.width for f in layout)


def _obs_layout(p: Preset | None, num_edges: int = 8) -> tuple[ObsField, ...]:
    """s_{m,t} = {mu, x, rho, T_max, D_wait_m, f_n, Q_n(t-1)} (spec 3), 5 + 2N columns."""
    size_max = p.size_b_mbit_max if p else 8.0
    rho_max = p.density_max if p else 150.0
    d_max = p.max_delay_s if p else 1.0
    f_max = float(p.edge_cpu_ghz().max()) if p else 41.8
    n = p.num_edges if p else num_edges
    layout = [
        ObsField("task_type", "1", 1.0, 1, "mu -> task type: 0 = A (controller), 1 = B (camera)"),
        ObsField("size_mbit", "Mbit", size_max, 1, "x: task size"),
        ObsField("density_cycles_per_bit", "cycles/bit", rho_max, 1, "rho: computation density"),
        ObsField("deadline_s", "s", d_max, 1, "T_max = tau dt"),
        ObsField("local_wait_s", "s", d_max, 1, "D_wait_m(t) dt: wait if run locally now (eq. 2)"),
        ObsField("edge_cpu_ghz", "GHz", f_max, n, "f_n of every ES"),
        ObsField("edge_backlog_s", "s", d_max, n, "Q_n(t-1): ES backlog before slot-t bookings"),
    ]
    if p is not None and p.obs_extras:
        layout += [ObsField("device_cpu_ghz", "GHz", p.device_cpu_ghz_max, 1, "f_m: own CPU"),
                   ObsField("tx_backlog_s", "s", d_max, n, "own transmit-queue backlog per ES")]
    return tuple(layout)


class AiecofSimulator(Simulator):
    """AIECOF system model (spec 1): slotted FIFO CPU, transmit and ES queues with deadline cuts."""

    name = "aiecof"
    Preset = Preset
    TASK_FIELDS = {
        "slot": "slot index; arrival slot t",
        "source": "device index; InDe m that generated the task (ascending within a slot)",
        "task_type": "0 = A (controller), 1 = B (camera); the device's type",
        "size_mbit": "Mbit; task size x",
        "density_cycles_per_bit": "cycles/bit; computation density rho",
    }
    TASK_DTYPES = {"slot": np.int64, "source": np.int64, "task_type": np.int64}
    PARAM_FIELDS = {
        "device_cpu_ghz": "GHz; CPU speed f_m of each device, drawn per episode",
        "edge_cpu_ghz": "GHz; CPU speed f_n of each edge server",
    }
    POLICIES = ("random", "round_robin", "greedy", "local", "opt")
    MULTI_AGENT = True
    OBS_LAYOUT = _obs_layout(None)
    obs_dim = _LayoutDim()

    def __init__(self, preset: Preset):
        super().__init__(preset)
        p = preset
        self.M, self.N = p.num_devices, p.num_edges
        self.tau = p.deadline_slots
        self.T = p.slots_per_episode
        self.OBS_LAYOUT = _obs_layout(p)
        self.target_names = ("local",) + tuple(f"edge{n}" for n in range(self.N))
        self._allowed = np.ones((self.M, self.N + 1), dtype=bool)
        self._tx_cols = self.N if p.tx_queue == "per_pair" else 1
        self.t = 0

    # -- workload -------------------------------------------------------------------------
    def generate_workload(self, rng: np.random.Generator, episode: int) -> Workload:
        """f_m ~ U[3, 5] GHz, then for every slot and device the uniforms u_arr, u_x, u_rho (drawn for
        every device even without a task: common random numbers, spec 7.1)."""
        p = self.preset
        M, T = self.M, self.T
        f_m = rng.uniform(p.device_cpu_ghz_min, p.device_cpu_ghz_max, size=M)
        u = rng.random((3, T, M))
        ttype = np.arange(M) % 2  # [ours] even m = controller (A), odd m = camera (B)
        prob = np.where(ttype == 0, p.arrival_prob_a, p.arrival_prob_b)
        has = u[0] < prob[None, :]
        lo = np.where(ttype == 0, p.size_a_mbit_min, p.size_b_mbit_min)
        hi = np.where(ttype == 0, p.size_a_mbit_max, p.size_b_mbit_max)
        size = lo[None, :] + (hi - lo)[None, :] * u[1]
        rho = p.density_min + (p.density_max - p.density_min) * u[2]
        slot, src = np.nonzero(has)  # row-major: sorted by slot, then device
        tasks = {
            "slot": slot.astype(np.int64),
            "source": src.astype(np.int64),
            "task_type": ttype[src].astype(np.int64),
            "size_mbit": size[slot, src],
            "density_cycles_per_bit": rho[slot, src],
        }
        params = {"device_cpu_ghz": f_m, "edge_cpu_ghz": p.edge_cpu_ghz()}
        return Workload(self.name, episode, params, tasks)

    # -- episode ----------------------------------------------------------------------------
    def reset(self, workload: Workload) -> None:
        workload.check(self.TASK_FIELDS, self.PARAM_FIELDS)
        M, N, T, ep = self.M, self.N, self.T, workload.episode
        f_m = np.asarray(workload.params["device_cpu_ghz"], dtype=np.float64)
        f_n = np.asarray(workload.params["edge_cpu_ghz"], dtype=np.float64)
        if f_m.shape != (M,) or f_n.shape != (N,):
            raise TraceError(f"workload of episode {ep} has {f_m.size} device and {f_n.size} edge CPU speeds "
                             f"but the preset has {M} devices and {N} edge servers")
        if np.any(f_m <= 0) or np.any(f_n <= 0):
            raise TraceError(f"workload of episode {ep} has a non-positive CPU speed")
        tk = workload.tasks
        src = np.asarray(tk["source"], dtype=np.int64)
        slot = np.asarray(tk["slot"], dtype=np.int64)
        if src.size and (src.min() < 0 or src.max() >= M):
            raise TraceError(f"workload of episode {ep} names a device outside 0..{M - 1}")
        if slot.size and (slot.min() < 0 or slot.max() >= T):
            raise TraceError(f"workload of episode {ep} has a slot outside 0..{T - 1}")
        if slot.size > 1 and np.any(np.diff(slot * M + src) <= 0):
            raise TraceError(f"tasks of episode {ep} are not in booking order (slot, then ascending device, "
                             "at most one task per device per slot)")
        size = np.asarray(tk["size_mbit"], dtype=np.float64)
        rho = np.asarray(tk["density_cycles_per_bit"], dtype=np.float64)
        ttype = np.asarray(tk["task_type"], dtype=np.int64)
        if np.any(size <= 0) or np.any(rho <= 0):
            raise TraceError(f"workload of episode {ep} has a non-positive task size or density")
        if np.any((ttype != 0) & (ttype != 1)):
            raise TraceError(f"workload of episode {ep} has a task type other than 0 (A) or 1 (B)")
        self.workload = workload
        self.f_m_hz, self.f_n_hz = f_m * GHZ, f_n * GHZ
        self.src, self.slot_of, self.ttype = src, slot, ttype
        self.size_mbit, self.rho = size, rho
        self.work = size * BITS_PER_MBIT * rho  # W = x rho, cycles
        self.offsets = workload.slot_offsets(T)
        n = src.size
        # pointers as free-at boundaries (spec's b + 1; b = -1 at reset)
        self.free_loc = np.zeros(M, dtype=np.int64)
        self.free_tx = np.zeros((M, self._tx_cols), dtype=np.int64)
        self.free_es = np.zeros(N, dtype=np.int64)
        self.loads = np.zeros((M, T + self.tau + 1))  # L_{m,s} (eq. 12), filled when booked
        self.target = np.full(n, -1, dtype=np.int64)
        self.delay_slots = np.zeros(n, dtype=np.int64)
        self.energy_j = np.zeros(n)
        self.dropped = np.zeros(n, dtype=bool)
        self.reward = np.zeros(n)
        self.sum_delay_s = np.zeros(M)
        self.sum_energy_j = np.zeros(M)
        self.count = np.zeros(M, dtype=np.int64)
        self.g = 0  # dropped so far (eq. 29 sigma_F)
        self.G = 0  # decided so far
        self.t = 0
        self.decisions = 0
        self._view: OffloadView | None = None

    @property
    def done(self) -> bool:
        return self.t >= self.T

    def rows(self, t: int | None = None) -> slice:
        t = self.t if t is None else t
        return slice(int(self.offsets[t]), int(self.offsets[t + 1]))

    def _features(self, devices: np.ndarray, r: slice | np.ndarray | None) -> dict[str, np.ndarray]:
        """Per-row quantities known at the start of slot t: the task (zeros for a device without one),
        the device's own pointers and the broadcast ES backlogs Q_n(t-1)."""
        p, t, n = self.preset, self.t, devices.size
        dt = p.slot_s
        feats: dict[str, np.ndarray] = {"device": devices}
        if r is None:
            zeros = np.zeros(n)
            feats.update(task_type=zeros, size_mbit=zeros, density_cycles_per_bit=zeros, work_cycles=zeros,
                         deadline_s=zeros)
        else:
            feats.update(task_type=self.ttype[r].astype(np.float64), size_mbit=self.size_mbit[r],
                         density_cycles_per_bit=self.rho[r], work_cycles=self.work[r],
                         deadline_s=np.full(n, p.max_delay_s))
        feats["local_free_slot"] = self.free_loc[devices]
        feats["local_wait_s"] = np.maximum(0, self.free_loc[devices] - t) * dt
        feats["device_cpu_ghz"] = self.f_m_hz[devices] / GHZ
        feats["edge_cpu_ghz"] = np.broadcast_to(self.f_n_hz / GHZ, (n, self.N))
        feats["edge_free_slot"] = np.broadcast_to(self.free_es, (n, self.N))
        feats["edge_backlog_s"] = np.broadcast_to(np.maximum(0, self.free_es - t) * dt, (n, self.N))
        tx = np.broadcast_to(self.free_tx[devices], (n, self._tx_cols))
        feats["tx_free_slot"] = tx
        feats["tx_backlog_s"] = np.broadcast_to(np.maximum(0, tx - t) * dt, (n, self.N))
        return feats

    def view(self) -> OffloadView:
        """One row per device with a task in slot t, in booking order (ascending device)."""
        if self._view is not None and self._view.slot == self.t:
            return self._view
        r = self.rows()
        devices = self.src[r]
        n = devices.size
        self._view = OffloadView(slot=self.t, target_names=self.target_names, source=devices,
                                 allowed=self._allowed[:n], local_target=0, features=self._features(devices, r))
        return self._view

    def agent_view(self) -> OffloadView:
        """One row per device (the PettingZoo agents); ``has_task`` marks rows whose action counts."""
        devices = np.arange(self.M)
        rows = np.full(self.M, -1, dtype=np.int64)
        r = self.rows()
        rows[self.src[r]] = np.arange(r.start, r.stop)
        has = rows >= 0
        feats = self._features(devices, None)
        for key in ("task_type", "size_mbit", "density_cycles_per_bit", "work_cycles", "deadline_s"):
            col = np.zeros(self.M)
            col[has] = self.view().features[key]
            feats[key] = col
        feats["has_task"] = has.astype(np.float64)
        return OffloadView(slot=self.t, target_names=self.target_names, source=devices, allowed=self._allowed,
                           local_target=0, features=feats)

    def step(self, decision: OffloadDecision) -> None:
        """Book slot t's tasks (spec 7.2 steps 4-7) and advance to slot t+1."""
        view = self.view()
        decision.validate(view)
        p, t = self.preset, self.t
        a = decision.target.astype(np.int64)
        r = self.rows()
        dev = self.src[r]
        n = dev.size
        delay = np.zeros(n, dtype=np.int64)
        energy = np.zeros(n)
        dropped = np.zeros(n, dtype=bool)
        loc = a == 0
        if loc.any():
            i = np.flatnonzero(loc)
            lb = book_local(p, t, self.free_loc[dev[i]], self.work[r][i], self.f_m_hz[dev[i]])
            self.free_loc[dev[i]] = lb.new_free
            delay[i], energy[i], dropped[i] = lb.delay_slots, lb.energy_j, ~lb.completed
            self._record_loads(dev[i], lb.start, lb.exec_slots, self.work[r][i])
        off = ~loc
        if off.any():
            i = np.flatnonzero(off)
            e = a[i] - 1
            col = e if self._tx_cols > 1 else np.zeros_like(e)
            tb = book_transmit(p, t, self.free_tx[dev[i], col], self.size_mbit[r][i])
            self.free_tx[dev[i], col] = tb.new_free
            delay[i], energy[i], dropped[i] = self.tau, tb.energy_j, True
            j = i[tb.arrived]
            if j.size:  # ES bookings in ascending device order (rows are in that order)
                eb = book_edge(p, t, a[j] - 1, tb.arrival[tb.arrived], self.work[r][j], self.f_n_hz, self.free_es)
                np.maximum.at(self.free_es, a[j] - 1, eb.finish)
                delay[j], dropped[j] = eb.delay_slots, ~eb.completed
                energy[j] += eb.energy_j
        self._settle(r, dev, a, delay, energy, dropped)
        self.decisions += n
        self.t += 1

    def _record_loads(self, dev: np.ndarray, start: np.ndarray, exec_slots: np.ndarray, work: np.ndarray) -> None:
        """L_{m,s} = min{0.98, W / (f_m dt (s - start + 1))} over the slots the CPU works (eq. 12)."""
        k = np.arange(self.tau)[None, :]
        on = k < exec_slots[:, None]
        val = cpu_utilization(work[:, None], self.f_m_hz[dev][:, None], self.preset.slot_s, k + 1,
                              self.preset.utilization_cap)
        rows = np.broadcast_to(dev[:, None], on.shape)[on]
        cols = (start[:, None] + k)[on]
        self.loads[rows, cols] = val[on]

    def _settle(self, r: slice, dev: np.ndarray, a: np.ndarray, delay: np.ndarray, energy: np.ndarray,
                dropped: np.ndarray) -> None:
        """Store the outcomes and pay eq. 30 to every device with a task (spec 1.12, 7.2 steps 5-7)."""
        p, dt = self.preset, self.preset.slot_s
        self.target[r], self.delay_slots[r], self.energy_j[r], self.dropped[r] = a, delay, energy, dropped
        delay_s = delay * dt
        self.sum_delay_s[dev] += delay_s
        self.sum_energy_j[dev] += energy
        self.count[dev] += 1
        self.g += int(dropped.sum())
        self.G += int(dev.size)
        l_d = self.sum_delay_s[dev] / self.count[dev]  # eq. 27, including the current task
        l_e = self.sum_energy_j[dev] / self.count[dev]  # eq. 28
        sigma_l = float(np.var(self.loads[:, self.t]))  # eq. 29: population variance over all M devices
        d_term = delay_s if p.reward_mode == "per_task" else l_d
        self.reward[r] = normalized_score_reward(energy, l_e, d_term, p.max_delay_s, self.g, self.G, sigma_l,
                                                 p.reward_weights, p.reward_eps)

    def episode_metrics(self) -> dict[str, float]:
        """Table IV columns (spec 1.13): delay (drops count tau dt), energy per task and per episode,
        dropout, loading over slots 0..T-1, team return."""
        n = self.src.size
        dt = self.preset.slot_s
        load = float(self.loads[:, : self.T].mean())
        if n == 0:
            return {"latency_s": 0.0, "energy_j": 0.0, "energy_episode_j": 0.0, "drop_rate": 0.0,
                    "completion_rate": 1.0, "load": load, "reward": 0.0, "tasks": 0.0}
        done = ~self.dropped
        return {
            "latency_s": float(self.delay_slots.mean() * dt),
            "energy_j": float(self.energy_j.mean()),
            "completion_rate": float(done.mean()),
            "drop_rate": float(self.dropped.mean()),
            "load": load,
            "reward": float(self.reward.sum()),
            "energy_episode_j": float(self.energy_j.sum()),
            "latency_completed_s": float(self.delay_slots[done].mean() * dt) if done.any() else 0.0,
            "local_share": float((self.target == 0).mean()),
            "tasks": float(n),
        }

    # -- observation contract ---------------------------------------------------------------
    def observation(self, view: OffloadView) -> np.ndarray:
        """Spec 3: one row per decision, columns of ``OBS_LAYOUT`` (value / scale), float32."""
        f = view.features
        cols = [np.asarray(f[o.name], dtype=np.float64).reshape(view.n, o.width) / o.scale for o in self.OBS_LAYOUT]
        return np.concatenate(cols, axis=1).astype(np.float32)

    def scenario_policy(self, name: str) -> Policy | None:
        if name == "round_robin":
            return AiecofRoundRobin(self.M, self.N + 1)
        if name == "greedy":
            return AiecofGreedy(self.preset)
        if name == "opt":
            return AiecofOpt()
        return None


# --------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------
class AiecofRoundRobin(Policy):
    """Round-Robin (spec 4): device m's counter c_m starts at 0; each new task takes target c_m, then
    c_m = (c_m + 1) mod (N + 1): local, ES1, ..., ESN, local, ... (local included, unlike the generic)."""

    name = "round_robin"

    def __init__(self, num_devices: int, num_targets: int):
        self.num_devices, self.num_targets = num_devices, num_targets

    def reset(self, rng: np.random.Generator, oracle: Simulator | None = None) -> None:
        super().reset(rng, oracle)
        self.counter = np.zeros(self.num_devices, dtype=np.int64)

    def decide(self, view: OffloadView) -> OffloadDecision:
        target = self.counter[view.source].copy()  # at most one task per device per slot
        self.counter[view.source] = (target + 1) % self.num_targets
        return OffloadDecision(target=target)


@dataclass
class SlotOptions:
    """Every candidate of every row of one slot: local outcome and per-ES transmit outcome (n, N)."""

    local: LocalBooking
    tx: TransmitBooking  # arrays (n, N)
    edge_hz: np.ndarray  # (N,)
    free_es: np.ndarray  # (N,) ES free-at boundaries before the slot


def slot_options(p: Preset, view: OffloadView) -> SlotOptions:
    """Local and transmit outcomes of every (row, target) from the view's own pointers: they depend on no
    other device (spec 7.3), so they are evaluated for all candidates at once."""
    f, t = view.features, view.slot
    n, N = view.n, view.num_targets - 1
    local = book_local(p, t, f["local_free_slot"], f["work_cycles"], f["device_cpu_ghz"] * GHZ)
    tx_free = f["tx_free_slot"]
    tx_free = np.broadcast_to(tx_free, (n, N)) if tx_free.shape[1] == 1 else tx_free
    tx = book_transmit(p, t, tx_free, np.broadcast_to(f["size_mbit"][:, None], (n, N)))
    edge_hz = np.asarray(f["edge_cpu_ghz"][0] if n else np.zeros(N)) * GHZ
    free_es = np.asarray(f["edge_free_slot"][0] if n else np.zeros(N), dtype=np.int64)
    return SlotOptions(local, tx, edge_hz, free_es.copy())


class AiecofGreedy(Policy):
    """Greedy (spec 4): each device in booking order picks the target with no drop, then the least delay,
    then the least energy, given the pointers at the start of the slot (the view) and the ES bookings of
    the lower devices of the same slot (this policy makes them). Deployable: no oracle. The loop over
    rows is inherent (each choice moves an ES pointer the next row sees); each row is vectorized over
    the N + 1 targets with the shared booking functions."""

    name = "greedy"

    def __init__(self, preset: Preset):
        self.preset = preset

    def decide(self, view: OffloadView) -> OffloadDecision:
        p, t = self.preset, view.slot
        if view.n == 0:
            return OffloadDecision(target=np.zeros(0, dtype=np.int64))
        o = slot_options(p, view)
        N = view.num_targets - 1
        free_es = o.free_es.copy()
        work = view.features["work_cycles"]
        edges = np.arange(N)
        target = np.empty(view.n, dtype=np.int64)
        for k in range(view.n):
            arr = o.tx.arrival[k]
            eb = book_edge(p, t, edges, arr, np.full(N, work[k]), o.edge_hz, free_es)
            ok = o.tx.arrived[k]
            drop = np.r_[not o.local.completed[k], ~(ok & eb.completed)]
            delay = np.r_[o.local.delay_slots[k], np.where(ok, eb.delay_slots, p.deadline_slots)]
            energy = np.r_[o.local.energy_j[k], o.tx.energy_j[k] + np.where(ok, eb.energy_j, 0.0)]
            a = int(np.lexsort((energy, delay, drop))[0])
            target[k] = a
            if a > 0 and ok[a - 1]:
                free_es[a - 1] = max(free_es[a - 1], eb.finish[a - 1])
        return OffloadDecision(target=target)


class _RowBuilder:
    """Rows of a sparse constraint matrix, appended in blocks and handed to HiGHS row-wise."""

    def __init__(self) -> None:
        self.r, self.c, self.v, self.lo, self.hi = [], [], [], [], []
        self.count = 0

    def add(self, local_row, col, val, lo, hi) -> None:
        """``local_row`` numbers the block's rows 0..len(lo)-1 (one entry per nonzero)."""
        lo = np.asarray(lo, dtype=np.float64)
        if lo.size == 0:
            return
        keep = np.asarray(val) != 0  # a missing optional column carries a zero
        self.r.append(np.asarray(local_row)[keep] + self.count)
        self.c.append(np.asarray(col)[keep])
        self.v.append(np.asarray(val, dtype=np.float64)[keep])
        self.lo.append(lo)
        self.hi.append(np.asarray(hi, dtype=np.float64))
        self.count += lo.size

    def pass_to(self, h) -> None:
        r, c, v = (np.concatenate(x) for x in (self.r, self.c, self.v))
        order = np.argsort(r, kind="stable")
        starts = np.searchsorted(r[order], np.arange(self.count)).astype(np.int32)
        h.addRows(self.count, np.concatenate(self.lo), np.concatenate(self.hi), int(v.size), starts,
                  c[order].astype(np.int32), v[order])


def _new_highs():
    """A silent HiGHS instance. The first construction in a process prints a banner on file descriptor 1,
    which would corrupt ``evaluate --json``; it is sent to /dev/null."""
    import os
    import sys

    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()
            h.silent()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    return h


class AiecofOpt(Policy):
    """Per-slot optimum (spec 7.3): the joint targets of all devices with a task in slot t that minimise
    sum_k [w_D delay_k + w_E energy_k + P 1(drop_k)] given the TRUE pointers, as a MILP solved by HiGHS
    to zero gap. Local and transmit outcomes are fixed per (row, target); the ES queues couple the rows:
    binaries y_{k,a} (choice), z_{k,n} (completes at ES n), starts s_{k,n} in [max(arr, b_n + 1),
    t + tau - D^ES] with FIFO-by-booking constraints s_k >= s_j + D_j - M(2 - z_j - z_k) for j < k, and
    a drop at an ES forcing every later booking there to drop (all tasks of a slot share t_end).

    Exact per slot for this linear cost whenever every ES service takes one slot (the default preset:
    W <= 1.2 Gcycles < f_n dt; f_n scale >= 0.4); with multi-slot ES service a task cut mid-run at an ES
    is priced as if it never started (its wait energy up to t_end). Myopic: it ignores how today's
    bookings delay future slots, and it does not optimise eq. 30's nonlinear sigma_E / sigma_L."""

    name = "opt"
    needs_oracle = True

    def reset(self, rng: np.random.Generator, oracle: Simulator | None = None) -> None:
        super().reset(rng, oracle)
        if not isinstance(oracle, AiecofSimulator):
            raise TypeError("the aiecof opt policy needs the aiecof simulator as its oracle")
        self.sim = oracle
        self.last_objective = 0.0
        self._highs = _new_highs()
        self._highs.setOptionValue("mip_rel_gap", 0.0)
        self._highs.setOptionValue("mip_abs_gap", 1e-9)
        self._highs.setOptionValue("time_limit", float(oracle.preset.opt_time_limit_s))
        self._highs.setOptionValue("threads", 1)

    def option_costs(self, p: Preset, o: SlotOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n,) local cost, (n, N) cost of an ES option that drops, and its per-slot start coefficient."""
        dt, tau = p.slot_s, p.deadline_slots
        wd, we, pen = p.opt_delay_weight_per_s, p.opt_energy_weight_per_j, p.opt_drop_penalty
        c_loc = wd * o.local.delay_slots * dt + we * o.local.energy_j + pen * (~o.local.completed)
        # an ES drop: delay tau, transmit energy, ES wait up to t_end if the task got there
        t = self._t
        wait_to_end = np.where(o.tx.arrived, (t + tau) - o.tx.arrival, 0) * dt
        c_drop = wd * tau * dt + we * (o.tx.energy_j + p.p_wait_edge_w * wait_to_end) + pen
        return c_loc, c_drop, np.full(o.tx.arrival.shape, wd * dt + we * p.p_wait_edge_w * dt)

    def decide(self, view: OffloadView) -> OffloadDecision:
        import highspy

        p, t = self.sim.preset, view.slot
        n = view.n
        if n == 0:
            return OffloadDecision(target=np.zeros(0, dtype=np.int64))
        self._t = t
        o = slot_options(p, view)
        N, tau, dt = view.num_targets - 1, p.deadline_slots, p.slot_s
        work = view.features["work_cycles"]
        d_es = whole_slots(compute_delay_s(work[:, None], o.edge_hz[None, :]), dt)  # (n, N)
        lb = np.maximum(o.tx.arrival, o.free_es[None, :])
        ub = t + tau - d_es
        can = o.tx.arrived & (lb <= ub)  # (k, n) may complete at ES n
        c_loc, c_drop, coef = self.option_costs(p, o)
        w_e = p.opt_energy_weight_per_j
        edge_comp = (compute_energy_j(work[:, None], o.edge_hz[None, :], p.kappa_edge)
                     if p.count_edge_compute_energy else np.zeros((n, N)))
        # cost of completing at the earliest start lb: delay lb + d - t, energy tx + wait (lb - arr)
        c_done = (p.opt_delay_weight_per_s * (lb + d_es - t) * dt
                  + w_e * (o.tx.energy_j + p.p_wait_edge_w * (lb - o.tx.arrival) * dt + edge_comp))
        # columns: y (n, N+1) | z, s for each can-pair
        ny = n * (N + 1)
        pairs = np.argwhere(can)  # rows sorted by k then n
        nz = pairs.shape[0]
        zc = ny + np.arange(nz)
        sc = ny + nz + np.arange(nz)
        cost = np.concatenate([np.c_[c_loc, c_drop].ravel(),
                               c_done[can] - c_drop[can],
                               coef[can]])
        col_lb = np.concatenate([np.zeros(ny + nz), lb[can].astype(np.float64)])
        col_ub = np.concatenate([np.ones(ny + nz), ub[can].astype(np.float64)])
        offset = -float((coef[can] * lb[can]).sum())  # the s terms are coef (s - lb)
        rows = _RowBuilder()
        rows.add(np.repeat(np.arange(n), N + 1), np.arange(ny), np.ones(ny), np.ones(n), np.ones(n))  # eq. 1
        ycol = pairs[:, 0] * (N + 1) + 1 + pairs[:, 1]
        rows.add(np.repeat(np.arange(nz), 2), np.c_[zc, ycol].ravel(), np.tile([1.0, -1.0], nz),
                 np.full(nz, -np.inf), np.zeros(nz))  # z <= y
        zcol_of = np.full((n, N), -1, dtype=np.int64)
        zcol_of[pairs[:, 0], pairs[:, 1]] = zc
        scol_of = np.full((n, N), -1, dtype=np.int64)
        scol_of[pairs[:, 0], pairs[:, 1]] = sc
        for e in range(N):  # loop per server; rows of each server are built vectorized
            ks = np.flatnonzero(can[:, e])
            jj, kk = np.meshgrid(ks, ks, indexing="ij")
            keep = jj < kk
            j, k = jj[keep], kk[keep]
            # FIFO by booking: s_k - s_j >= d_j when both complete; M = ub_j + d_j - lb_k (<= 0: redundant)
            big = (ub[j, e] + d_es[j, e] - lb[k, e]).astype(np.float64)
            need = big > 0
            j, k, big = j[need], k[need], big[need]
            m = j.size
            rows.add(np.repeat(np.arange(m), 4),
                     np.c_[scol_of[k, e], scol_of[j, e], zcol_of[k, e], zcol_of[j, e]].ravel(),
                     np.c_[np.ones(m), -np.ones(m), -big, -big].ravel(), d_es[j, e] - 2 * big, np.full(m, np.inf))
            # a booking that reaches ES e and drops there blocks every later completion: z_k + y_j - z_j <= 1
            reach = np.flatnonzero(o.tx.arrived[:, e])
            jj, kk = np.meshgrid(reach, ks, indexing="ij")
            keep = jj < kk
            j, k = jj[keep], kk[keep]
            m = j.size
            has_z = zcol_of[j, e] >= 0
            cols = np.c_[zcol_of[k, e], j * (N + 1) + 1 + e, np.where(has_z, zcol_of[j, e], 0)]
            vals = np.c_[np.ones(m), np.ones(m), np.where(has_z, -1.0, 0.0)]
            rows.add(np.repeat(np.arange(m), 3), cols.ravel(), vals.ravel(), np.full(m, -np.inf), np.ones(m))
        h = self._highs
        h.clearModel()
        ncol = ny + 2 * nz
        h.addVars(ncol, col_lb, col_ub)
        h.changeColsCost(ncol, np.arange(ncol, dtype=np.int32), cost)
        h.changeColsIntegrality(ny + nz, np.arange(ny + nz, dtype=np.int32),
                                np.full(ny + nz, highspy.HighsVarType.kInteger))
        rows.pass_to(h)
        h.run()
        x = np.asarray(h.getSolution().col_value)
        y = x[:ny].reshape(n, N + 1)
        self.last_objective = float(h.getInfo().objective_function_value) + offset
        return OffloadDecision(target=np.argmax(y, axis=1).astype(np.int64))


# --------------------------------------------------------------------------------------------
# RL wrapper: PettingZoo ParallelEnv, one agent per device, one step per slot
# --------------------------------------------------------------------------------------------
class AiecofEnv(ParallelEnv):
    """PettingZoo ParallelEnv over :class:`AiecofSimulator`: one agent per InDe, one step per slot.

    Why parallel, not a per-device gymnasium stream: all devices decide simultaneously from the state at
    the end of slot t-1 (spec 1.10), and eq. 29's sigma_L is the load variance after ALL bookings of
    slot t, so a device's reward is known only once the whole slot is booked. The paper's one shared
    actor is parameter sharing over these agents (spec 3). Every agent acts every slot (Discrete(N+1):
    0 local, n offload to ES n); the action of a device without a task is ignored, it gets reward 0 and
    ``infos[agent]["has_task"] = False`` so a trainer stores no transition for it (spec 1.12).
    Observation: spec 3's 5 + 2N columns (task columns 0 without a task). Reward: eq. 30 of the task."""

    metadata = {"name": "aiecof_v0", "render_modes": []}

    def __init__(self, preset: str = "aiecof", seed: int | None = None, **overrides: Any):
        from policies.scenarios import make_simulator

        self.sim = make_simulator(preset, overrides, expect="aiecof")
        self.possible_agents = [f"device_{m}" for m in range(self.sim.M)]
        self.agents: list[str] = []
        self._obs_space = spaces.Box(0.0, np.inf, shape=(self.sim.obs_dim(),), dtype=np.float32)
        self._act_space = spaces.Discrete(self.sim.N + 1)
        self._seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**63))
        self._episode = 0
        self.render_mode = None

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs_space

    def action_space(self, agent: str) -> spaces.Space:
        return self._act_space

    def _observe(self) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        if self.sim.done:
            return ({a: np.zeros(self.sim.obs_dim(), dtype=np.float32) for a in self.possible_agents},
                    {a: {"has_task": False} for a in self.possible_agents})
        view = self.sim.agent_view()
        obs = self.sim.observation(view)
        has = view.features["has_task"] > 0
        return ({a: obs[i] for i, a in enumerate(self.possible_agents)},
                {a: {"has_task": bool(has[i])} for i, a in enumerate(self.possible_agents)})

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seed, self._episode = int(seed), 0
        wl = (options or {}).get("workload")  # a given Workload (e.g. from a trace) replaces the draw
        if wl is None:
            wl = self.sim.generate_workload(episode_rng(self._seed, self._episode, 0), self._episode)
        self._episode += 1
        self.sim.reset(wl)
        self.agents = self.possible_agents[:]
        return self._observe()

    def step(self, actions: dict[str, int]):
        sim = self.sim
        view = sim.view()
        r = sim.rows()
        target = np.array([int(actions.get(self.possible_agents[m], 0)) for m in view.source], dtype=np.int64)
        sim.step(OffloadDecision(target=target))
        per_agent = np.zeros(sim.M)
        per_agent[view.source] = sim.reward[r]
        done = sim.done
        obs, infos = self._observe()
        for i, m in enumerate(view.source):
            infos[self.possible_agents[m]]["task"] = {
                "delay_s": float(sim.delay_slots[r][i] * sim.preset.slot_s), "energy_j": float(sim.energy_j[r][i]),
                "dropped": bool(sim.dropped[r][i])}
        rewards = {a: float(per_agent[i]) for i, a in enumerate(self.possible_agents)}
        terminations = {a: done for a in self.possible_agents}
        truncations = {a: False for a in self.possible_agents}
        if done:
            self.agents = []
        return obs, rewards, terminations, truncations, infos
