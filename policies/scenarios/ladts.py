"""LAD-TS / DEdgeAI (paper 003): sequential task scheduling over B base stations with edge servers.

Spec: docs/papers/ladts.md (C. Xu et al., "Accelerating AIGC Services with Latent Action Diffusion
Scheduling in Edge Networks", and the authors' simulator ChangfuXu/DEdgeAI). Units everywhere: data
in Mbit, rates in Mbit/s, workload and backlogs in Gcycles, capacities in GHz, delays in s.

One :class:`OffloadView` per slot holds every task of every station, rows in the decision order of
the authors' code (station 0..B-1, tasks in index order). Target k is server ``edge<k>``; there is no
device-local target (a task run at its own station's server is target ``source``, which saves the
upload). Each task's service delay is LAD-TS eq. 2 (code form, spec §1.5):

    T^serv = 1[b' != b] d/v_b' + w/f_b' + (q_{t-1,b'} + q^bef_{b'}) / f_b' + dtilde/v_b'

where q^bef is the work assigned to b' earlier in the same slot (by earlier stations and earlier
tasks of the same station). Policies see q_{t-1} (eq. 6), never q^bef; only ``opt`` (Opt-TS, an
oracle) does. After the slot, eq. 4 updates the backlogs.
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np
from pydantic import Field, model_validator

from policies.config import PresetBase
from policies.cost import (
    backlog_update,
    compute_delay_s,
    denoising_workload_cycles,
    queue_wait_s,
    transmission_delay_s,
    work_ahead_grouped,
)
from policies.errors import TraceError
from policies.heuristics import RoundRobinPolicy
from policies.scenarios.base import ObsField, OffloadDecision, OffloadView, Policy, Simulator
from policies.workload import Workload, episode_rng


# --------------------------------------------------------------------------------------------
# Preset
# --------------------------------------------------------------------------------------------
class Preset(PresetBase):
    """LAD-TS parameters (spec §2.1). Seeded constants follow the authors' code (spec §1.2-1.3)."""

    num_stations: int = Field(20, ge=1, description="B: base stations, one edge server each (count)")
    tasks_max: int = Field(50, ge=1, description="N: tasks per station per slot ~ U{1..N} (tasks); sweep 10..70")
    input_mbit_min: float = Field(2.0, gt=0, description="lower bound of the input size d_n ~ U(min, max), Mbit")
    input_mbit_max: float = Field(5.0, gt=0, description="upper bound of the input size d_n, Mbit")
    result_mbit_min: float = Field(0.6, gt=0, description="lower bound of the result size dtilde_n, Mbit")
    result_mbit_max: float = Field(1.0, gt=0, description="upper bound of the result size dtilde_n, Mbit")
    step_gcycles_min: float = Field(0.1024, gt=0, description="lower bound of rho_n, Gcycles per denoising step")
    step_gcycles_max: float = Field(0.3072, gt=0, description="upper bound of rho_n, Gcycles per denoising step")
    quality_max: int = Field(15, ge=2, description="Z: denoising steps z_n = randint(1, Z), i.e. in {1..Z-1} (steps); sweep 5..20")
    capacity_ghz_min: int = Field(10, ge=1, description="lower bound of the server capacity f = randint(min, max+1), GHz")
    capacity_ghz_max: int = Field(50, ge=1, description="upper bound of the server capacity f, GHz; sweep 30..70")
    rate_mbps_min: int = Field(400, ge=1, description="lower bound of the per-server link rate v = randint(min, max+1), Mbit/s")
    rate_mbps_max: int = Field(500, ge=1, description="upper bound of the per-server link rate v, Mbit/s")
    profile_mode: Literal["per_index", "iid"] = Field(
        "per_index", description="per_index: rho, z, dtilde fixed per task index by profile_seed (code); iid: drawn per task")
    profile_seed: int = Field(1, description="RandomState seed of the per-index profiles rho, z, dtilde (code: 1)")
    capacity_seed: int = Field(2, description="RandomState seed of the server capacities f (code: 2)")
    rate_seed: int = Field(5, description="RandomState seed of the link rates v (code: 5)")
    decide_last_slot: bool = Field(
        False, description="decide slot T-1 too; the code decides only T-1 slots (the last supplies s^next)")

    @model_validator(mode="after")
    def _bounds(self) -> "Preset":
        for lo, hi in (("input_mbit_min", "input_mbit_max"), ("result_mbit_min", "result_mbit_max"),
                       ("step_gcycles_min", "step_gcycles_max"), ("capacity_ghz_min", "capacity_ghz_max"),
                       ("rate_mbps_min", "rate_mbps_max")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} must not exceed {hi}")
        if not self.decide_last_slot and self.slots_per_episode < 2:
            raise ValueError("slots_per_episode must be at least 2 when the last slot is not decided")
        return self

    @property
    def decided_slots(self) -> int:
        """Slots whose tasks are decided and counted (spec §1.7: T-1 by default)."""
        return self.slots_per_episode if self.decide_last_slot else self.slots_per_episode - 1

    def key_parameters(self) -> dict[str, object]:
        f = capacities_ghz(self)
        return {**super().key_parameters(), "stations": self.num_stations, "tasks_max": self.tasks_max,
                "quality_max": self.quality_max, "capacity_ghz": f"{self.capacity_ghz_min}..{self.capacity_ghz_max}",
                "sum_capacity_ghz": int(f.sum()), "profile_mode": self.profile_mode}


def capacities_ghz(p: Preset) -> np.ndarray:
    """f_b' = RandomState(seed).randint(min, max+1, B), GHz (spec §1.3, authors' code)."""
    return np.random.RandomState(p.capacity_seed).randint(p.capacity_ghz_min, p.capacity_ghz_max + 1,
                                                          size=p.num_stations).astype(np.float64)


def rates_mbps(p: Preset) -> np.ndarray:
    """v_b' = RandomState(seed).randint(min, max+1, B), Mbit/s, upload and return alike (spec §1.3)."""
    return np.random.RandomState(p.rate_seed).randint(p.rate_mbps_min, p.rate_mbps_max + 1,
                                                      size=p.num_stations).astype(np.float64)


def task_profiles(p: Preset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-index profiles (rho Gcycles/step, z steps, dtilde Mbit), each re-seeded with profile_seed as
    the authors' code does (spec §1.2), so rho and dtilde share their uniforms."""
    n = p.tasks_max
    rho = np.random.RandomState(p.profile_seed).uniform(p.step_gcycles_min, p.step_gcycles_max, size=n)
    z = np.random.RandomState(p.profile_seed).randint(1, p.quality_max, size=n).astype(np.int64)
    dtilde = np.random.RandomState(p.profile_seed).uniform(p.result_mbit_min, p.result_mbit_max, size=n)
    return rho, z, dtilde


# --------------------------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------------------------
def _obs_layout(num_stations: int) -> tuple[ObsField, ...]:
    """LAD-TS eq. 6: s = [d_n, w_n, q_{t-1,0..B-1}], raw units (the paper does not normalise)."""
    return (
        ObsField("input_mbit", "Mbit", 1.0, 1, "d_n: input (prompt) size of the task to place"),
        ObsField("workload_gcycles", "Gcycles", 1.0, 1, "w_n = rho_n z_n: work of the task"),
        ObsField("backlog_gcycles", "Gcycles", 1.0, num_stations,
                 "q_{t-1,b'}: backlog of every server at the end of the previous slot"),
    )


class LadtsSimulator(Simulator):
    """LAD-TS system model (spec §1): per-slot batches of every station's tasks, FCFS work queues."""

    name = "ladts"
    Preset = Preset
    TASK_FIELDS = {
        "slot": "slot index; arrival slot t",
        "source": "station index; station b where the task arrives",
        "index": "task index; n within (b, t), the decision order inside a station",
        "input_mbit": "Mbit; input size d_n",
        "step_gcycles": "Gcycles per step; rho_n",
        "steps": "denoising steps; quality z_n",
        "result_mbit": "Mbit; result size dtilde_n",
    }
    TASK_DTYPES = {"slot": np.int64, "source": np.int64, "index": np.int64, "steps": np.int64}
    PARAM_FIELDS = {
        "cpu_ghz": "GHz; capacity f_b' of each edge server",
        "rate_mbps": "Mbit/s; link rate v_b' of each server (upload and result return)",
    }
    POLICIES = ("random", "round_robin", "greedy", "proportional", "weighted_rr", "opt")
    MULTI_AGENT = False
    OBS_LAYOUT = _obs_layout(20)

    def __init__(self, preset: Preset):
        super().__init__(preset)
        p = preset
        self.B = p.num_stations
        self.OBS_LAYOUT = _obs_layout(self.B)  # the queue block has one column per station of this preset
        self.target_names = tuple(f"edge{k}" for k in range(self.B))
        self._cpu_ghz = capacities_ghz(p)
        self._rate_mbps = rates_mbps(p)
        self._rho, self._z, self._dtilde = task_profiles(p)
        self._allowed = np.ones((self.B * p.tasks_max, self.B), dtype=bool)
        self.t = 0
        self.T_decided = p.decided_slots

    # -- workload -------------------------------------------------------------------------
    def generate_workload(self, rng: np.random.Generator, episode: int) -> Workload:
        """N_{b,t} ~ U{1..N} and d_n ~ U(2,5) for all T slots (spec §1.2, §1.7), rows sorted by
        (slot, station, index); profiles per index (code) or iid per task."""
        p = self.preset
        T, B = p.slots_per_episode, self.B
        counts = rng.integers(1, p.tasks_max + 1, size=T * B)  # (t, b) in row-major order
        total = int(counts.sum())
        group = np.repeat(np.arange(T * B), counts)
        starts = np.cumsum(counts) - counts
        index = np.arange(total) - np.repeat(starts, counts)
        d = rng.uniform(p.input_mbit_min, p.input_mbit_max, size=total)
        if p.profile_mode == "per_index":
            rho, z, dtilde = self._rho[index], self._z[index], self._dtilde[index]
        else:
            rho = rng.uniform(p.step_gcycles_min, p.step_gcycles_max, size=total)
            z = rng.integers(1, p.quality_max, size=total)
            dtilde = rng.uniform(p.result_mbit_min, p.result_mbit_max, size=total)
        tasks = {
            "slot": (group // B).astype(np.int64),
            "source": (group % B).astype(np.int64),
            "index": index.astype(np.int64),
            "input_mbit": d,
            "step_gcycles": np.asarray(rho, dtype=np.float64),
            "steps": np.asarray(z, dtype=np.int64),
            "result_mbit": np.asarray(dtilde, dtype=np.float64),
        }
        params = {"cpu_ghz": self._cpu_ghz.copy(), "rate_mbps": self._rate_mbps.copy()}
        return Workload(self.name, episode, params, tasks)

    # -- episode ----------------------------------------------------------------------------
    def reset(self, workload: Workload) -> None:
        workload.check(self.TASK_FIELDS, self.PARAM_FIELDS)
        B, p = self.B, self.preset
        f = np.asarray(workload.params["cpu_ghz"], dtype=np.float64)
        v = np.asarray(workload.params["rate_mbps"], dtype=np.float64)
        if f.shape != (B,) or v.shape != (B,):
            raise TraceError(f"workload of episode {workload.episode} has {f.size} capacities and {v.size} rates "
                             f"but the preset has {B} stations")
        if np.any(f <= 0) or np.any(v <= 0):
            raise TraceError(f"workload of episode {workload.episode} has a non-positive capacity or link rate")
        tk = workload.tasks
        src, slot = np.asarray(tk["source"], dtype=np.int64), np.asarray(tk["slot"], dtype=np.int64)
        if src.size and (src.min() < 0 or src.max() >= B):
            raise TraceError(f"workload of episode {workload.episode} names a station outside 0..{B - 1}")
        if slot.size and (slot.min() < 0 or slot.max() >= p.slots_per_episode):
            raise TraceError(f"workload of episode {workload.episode} has a slot outside 0..{p.slots_per_episode - 1}")
        if slot.size and np.any(np.diff(slot * B + src) < 0):
            raise TraceError(f"tasks of episode {workload.episode} are not in decision order (slot, then station)")
        d = np.asarray(tk["input_mbit"], dtype=np.float64)
        rho = np.asarray(tk["step_gcycles"], dtype=np.float64)
        z = np.asarray(tk["steps"], dtype=np.float64)
        dt = np.asarray(tk["result_mbit"], dtype=np.float64)
        if np.any(d < 0) or np.any(rho < 0) or np.any(z < 0) or np.any(dt < 0):
            raise TraceError(f"workload of episode {workload.episode} has a negative task size, work or step count")
        self.workload = workload
        self.f, self.v = f, v
        self.src, self.slot_of, self.index = src, slot, np.asarray(tk["index"], dtype=np.int64)
        self.d, self.dtilde = d, dt
        self.w = denoising_workload_cycles(z, rho)  # LAD-TS eq. 3: w_n = rho_n z_n, Gcycles
        self.offsets = workload.slot_offsets(p.slots_per_episode)
        slot_sizes = np.diff(self.offsets)
        if slot_sizes.size and slot_sizes.max() > self._allowed.shape[0]:
            raise TraceError(f"workload of episode {workload.episode} has a slot with {slot_sizes.max()} tasks; "
                             f"the preset allows at most {self._allowed.shape[0]}")
        self.q = np.zeros(B)  # q_{-1} = 0 (spec §1.6)
        self.t = 0
        self.delays = np.zeros(src.size)
        self.wait = np.zeros(src.size)
        self.transmit = np.zeros(src.size)
        self.compute = np.zeros(src.size)
        self.served_gcycles = 0.0
        self._view: OffloadView | None = None
        self.decisions = 0

    @property
    def done(self) -> bool:
        return self.t >= self.T_decided

    def rows(self, t: int | None = None) -> slice:
        """Task rows of slot t (the current slot by default), in decision order."""
        t = self.t if t is None else t
        return slice(int(self.offsets[t]), int(self.offsets[t + 1]))

    def link_delay_s(self, r: slice) -> np.ndarray:
        """(n, B) upload (only off-station) plus result return, s: 1[b'!=b] d/v_b' + dtilde/v_b'
        (LAD-TS eq. 2 as in the code, spec §1.5)."""
        up = transmission_delay_s(self.d[r, None], self.v[None, :])
        up[np.arange(up.shape[0]), self.src[r]] = 0.0
        return up + transmission_delay_s(self.dtilde[r, None], self.v[None, :])

    def static_delay_s(self, view: OffloadView) -> np.ndarray:
        """(n, B) queue-independent part of T^serv: link delay plus w/f (LAD-TS eq. 2)."""
        r = self.rows(view.slot)
        return view.proximity + compute_delay_s(self.w[r, None], self.f[None, :])

    def view(self) -> OffloadView:
        """All tasks of slot t (valid for the undecided last slot too: it supplies s^next, eq. 7)."""
        if self._view is not None and self._view.slot == self.t:
            return self._view
        r = self.rows()
        n = r.stop - r.start
        self._view = OffloadView(
            slot=self.t,
            target_names=self.target_names,
            source=self.src[r],
            allowed=self._allowed[:n],
            local_target=None,
            proximity=self.link_delay_s(r),
            features={
                "input_mbit": self.d[r],
                "workload_gcycles": self.w[r],
                "result_mbit": self.dtilde[r],
                "index": self.index[r],
                "backlog_gcycles": np.broadcast_to(self.q, (n, self.B)),
                "cpu_ghz": np.broadcast_to(self.f, (n, self.B)),
            },
        )
        return self._view

    def step(self, decision: OffloadDecision) -> None:
        """Place slot t's tasks, price them with eqs. 2-3 in decision order, then eq. 4."""
        view = self.view()
        decision.validate(view)
        a = decision.target.astype(np.int64)
        r = self.rows()
        i = np.arange(a.size)
        transmit = view.proximity[i, a]
        compute = compute_delay_s(self.w[r], self.f[a])
        ahead = work_ahead_grouped(a, self.w[r], self.B)  # q^bef of each task at its decision
        wait = queue_wait_s(self.q[a], ahead, self.f[a])
        self.transmit[r], self.compute[r], self.wait[r] = transmit, compute, wait
        self.delays[r] = transmit + compute + wait
        arrivals = np.bincount(a, weights=self.w[r], minlength=self.B)
        capacity = self.f * self.preset.slot_s
        self.served_gcycles += float(np.minimum(self.q + arrivals, capacity).sum())
        self.q = backlog_update(self.q + arrivals, 0.0, capacity)  # eq. 4: max(q + arrivals - f Delta, 0)
        self.decisions += int(a.size)
        self.t += 1

    def episode_metrics(self) -> dict[str, float]:
        """Mean service delay per decided task (spec §1.7 [fix]), its parts, and the load factor."""
        n = int(self.offsets[self.T_decided])
        if n == 0:
            return {"latency_s": 0.0, "reward": 0.0, "load": 0.0, "tasks": 0.0}
        cap = float(self.f.sum()) * self.preset.slot_s * self.T_decided
        latency = float(self.delays[:n].mean())
        return {
            "latency_s": latency,
            "reward": -latency,
            "load": float(self.w[:n].sum()) / cap,  # offered work / capacity over the decided slots
            "wait_s": float(self.wait[:n].mean()),
            "compute_s": float(self.compute[:n].mean()),
            "transmit_s": float(self.transmit[:n].mean()),
            "utilization": self.served_gcycles / cap,
            "backlog_end_gcycles": float(self.q.sum()),
            "tasks": float(n),
        }

    # -- observation contract ---------------------------------------------------------------
    def observation(self, view: OffloadView) -> np.ndarray:
        """LAD-TS eq. 6, one row per task: [d_n, w_n, q_{t-1,0..B-1}] (no q^bef: agents cannot see it)."""
        ft = view.features
        out = np.empty((view.n, 2 + self.B), dtype=np.float32)
        out[:, 0] = ft["input_mbit"]
        out[:, 1] = ft["workload_gcycles"]
        out[:, 2:] = ft["backlog_gcycles"]
        return out

    def scenario_policy(self, name: str) -> Policy | None:
        if name == "opt":
            return OptTsPolicy()
        if name == "round_robin":
            return LadtsRoundRobin(self.B)
        if name == "proportional":
            return CapacityProportional(self)
        if name == "weighted_rr":
            return WeightedRoundRobin(self)
        return None


# --------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------
class LadtsRoundRobin(RoundRobinPolicy):
    """Round-Robin of spec §4.5: station b's pointer starts at server b and advances by 1 per task
    (the generic rule, with every station's counter started at its own index)."""

    def __init__(self, num_stations: int):
        self.num_stations = num_stations

    def reset(self, rng: np.random.Generator, oracle: Simulator | None = None) -> None:
        super().reset(rng, oracle)
        self.next_index = {b: b for b in range(self.num_stations)}


def _server_in_capacity_bin(u: np.ndarray, capacity_ghz: np.ndarray) -> np.ndarray:
    """Server index per point u in [0, 1): [0, 1) cut into one bin per server, of width f_b' / sum(f)."""
    cdf = np.cumsum(capacity_ghz)
    target = np.searchsorted(cdf, u * cdf[-1], side="right")
    return np.minimum(target, len(cdf) - 1).astype(np.int64)  # u * sum(f) may round up to sum(f)


class CapacityProportional(Policy):
    """[ours] Each task to server b' drawn with probability f_b' / sum(f), blind to the queues and the task.

    The reference for what the per-station agents learn: their observation (eq. 6) holds q_{t-1} but not
    the queue the slot's earlier tasks build (q^bef), so every station decides a slot's tasks at once,
    and the split that keeps the servers' expected loads proportional to their speeds is what is left to
    learn (docs/papers/ladts.md, "What the agents learn"). It knows only the servers' capacities (the
    episode's ``cpu_ghz``, a parameter a deployment knows, not state); it is deployable, unlike Opt-TS."""

    name = "proportional"

    def __init__(self, sim: "LadtsSimulator"):
        self.sim = sim

    def decide(self, view: OffloadView) -> OffloadDecision:
        return OffloadDecision(target=_server_in_capacity_bin(self.rng.random(view.n), self.sim.f))


class WeightedRoundRobin(Policy):
    """[ours] The capacity split without its dice: station b walks the points u_k = frac(b / B + k * phi),
    phi = (sqrt(5) - 1) / 2, over its tasks in order (carried across slots), and sends task k to the server
    whose bin of the capacity CDF holds u_k.

    A golden-ratio stride spreads any run of consecutive points evenly over [0, 1) (the three-distance
    theorem), so every window of a station's tasks meets server b' about f_b' / sum(f) of the time, where
    independent draws pile tasks of one slot on one server by chance; the stations' starting points b / B
    keep their first tasks of an episode apart. It reads no state, only the episode's capacities, like
    ``proportional``; measured in docs/papers/ladts.md ("What the agents learn")."""

    name = "weighted_rr"
    STRIDE = (5 ** 0.5 - 1) / 2

    def __init__(self, sim: "LadtsSimulator"):
        self.sim = sim

    def reset(self, rng: np.random.Generator, oracle: Simulator | None = None) -> None:
        super().reset(rng, oracle)
        self.position = np.arange(self.sim.B) / self.sim.B  # per station, in [0, 1)

    def decide(self, view: OffloadView) -> OffloadDecision:
        src = view.source.astype(np.int64)
        if src.size == 0:
            return OffloadDecision(target=np.zeros(0, dtype=np.int64))
        # k = the row's rank among its station's rows, in row order (rows need not be grouped by station)
        order = np.argsort(src, kind="stable")
        grouped = src[order]
        starts = np.r_[0, np.flatnonzero(np.diff(grouped)) + 1]
        rank = np.empty(src.size, dtype=np.int64)
        rank[order] = np.arange(src.size) - np.repeat(starts, np.diff(np.r_[starts, src.size]))
        u = (self.position[src] + self.STRIDE * (rank + 1)) % 1.0
        self.position = (self.position + self.STRIDE * np.bincount(src, minlength=self.sim.B)) % 1.0
        return OffloadDecision(target=_server_in_capacity_bin(u, self.sim.f))


class OptTsPolicy(Policy):
    """Opt-TS (LAD-TS §4.1, authors' Baselines/Opt-TS): each task in decision order takes the server
    with the least T^serv under the TRUE current q_{t-1} + q^bef (ties: lowest index).

    This is the paper's reference, a myopic per-task greedy with full state; it is neither the exact
    optimum of the NP-hard eq. 5 nor a bound on it. The scalar loop over tasks is inherent: every
    argmin changes the waits the next task sees (spec §7.1); all else is vectorized.
    """

    name = "opt"
    needs_oracle = True

    def reset(self, rng: np.random.Generator, oracle: Simulator | None = None) -> None:
        super().reset(rng, oracle)
        if not isinstance(oracle, LadtsSimulator):
            raise TypeError("Opt-TS needs the ladts simulator as its oracle")
        self.sim = oracle
        self.last_delays = np.zeros(0)

    def decide(self, view: OffloadView) -> OffloadDecision:
        sim = self.sim
        r = sim.rows(view.slot)
        static = sim.static_delay_s(view)  # (n, B): link + compute, s
        step_wait = compute_delay_s(sim.w[r, None], sim.f[None, :])  # (n, B): wait each task adds, s
        cur = queue_wait_s(sim.q, 0.0, sim.f)  # eq. 3 waits before the slot's first task
        n = view.n
        target = np.empty(n, dtype=np.int64)
        delays = np.empty(n)
        buf = np.empty(sim.B)
        argmin, add = np.argmin, np.add
        for k in range(n):  # sequential by the paper's semantics: each choice changes cur
            add(static[k], cur, out=buf)
            a = int(argmin(buf))
            target[k] = a
            delays[k] = buf[a]
            cur[a] += step_wait[k, a]
        self.last_delays = delays
        return OffloadDecision(target=target)


# --------------------------------------------------------------------------------------------
# RL wrapper: one gymnasium step per task decision, in the code's order
# --------------------------------------------------------------------------------------------
class LadtsEnv(gym.Env):
    """Gymnasium view of LAD-TS: one step per task decision, in the authors' order (slot, station
    0..B-1, task index). The paper's agents are per station: ``info["station"]`` names the station
    whose scheduler acts on this observation, so independent per-station learners route each step
    (exactly as the authors' single environment calls agent b for station b's tasks).

    Observation: eq. 6, ``2 + B`` float32 in raw units. Action: server index in 0..B-1. Reward:
    -T^serv of the decided task, s (eq. 9). q^bef is not observed, but it prices the reward. Each
    step's delay equals the simulator's (same cost functions); the slot's decisions are applied to
    the simulator when its last task is decided. ``reset(options={"workload": wl})`` replays a given
    workload (e.g. from a trace). Episodes end by truncation after the decided slots
    (the paper has no terminal state); the final observation is the next slot's first task.
    """

    metadata = {"name": "ladts", "render_modes": []}

    def __init__(self, preset: str = "ladts", seed: int | None = None, **overrides: Any):
        from policies.scenarios import make_simulator

        self.sim = make_simulator(preset, overrides, expect="ladts")
        B = self.sim.B
        self.observation_space = gym.spaces.Box(0.0, np.inf, shape=(self.sim.obs_dim(),), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(B)
        self._seed = 0 if seed is None else int(seed)
        self._episode = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._seed, self._episode = int(seed), 0
        wl = (options or {}).get("workload")  # a given Workload (e.g. from a trace) replaces the draw
        if wl is None:
            wl = self.sim.generate_workload(episode_rng(self._seed, self._episode, 0), self._episode)
        self._episode += 1
        self.sim.reset(wl)
        self._begin_slot()
        self.total_delay_s = 0.0
        return self._obs[self._k].copy(), self._info()

    def _begin_slot(self) -> None:
        sim = self.sim
        while True:
            view = sim.view()
            if view.n or sim.done:
                break
            sim.step(OffloadDecision(target=np.zeros(0, dtype=np.int64)))  # an empty slot (only from traces)
        self._view = view
        self._obs = sim.observation(view) if view.n else np.zeros((1, sim.obs_dim()), dtype=np.float32)
        self._static = sim.static_delay_s(view) if view.n else np.zeros((0, sim.B))
        self._targets = np.zeros(view.n, dtype=np.int64)
        self._ahead = np.zeros(sim.B)  # q^bef of the slot so far, Gcycles
        self._k = 0

    def _info(self) -> dict:
        v = self._view
        if self._k >= v.n:
            return {"slot": v.slot}
        return {"slot": v.slot, "station": int(v.source[self._k]), "task_index": int(v.features["index"][self._k])}

    def step(self, action):
        sim, k = self.sim, self._k
        a = int(action)
        if not 0 <= a < sim.B:
            raise ValueError(f"action {a} is not a server index in 0..{sim.B - 1}")
        r0 = sim.rows().start
        w = sim.w[r0 + k]
        delay = float(self._static[k, a] + queue_wait_s(sim.q[a], self._ahead[a], sim.f[a]))
        self._ahead[a] += w
        self._targets[k] = a
        self.total_delay_s += delay
        info = {"delay_s": delay, "decided_station": int(self._view.source[k])}
        self._k += 1
        if self._k == self._view.n:
            sim.step(OffloadDecision(target=self._targets.copy()))
            if sim.done:
                # s^next of the last decisions: the first task of the next (undecided) slot, eq. 7
                nxt = sim.t < sim.preset.slots_per_episode and sim.rows().stop > sim.rows().start
                obs = sim.observation(sim.view())[0] if nxt else np.zeros(sim.obs_dim(), dtype=np.float32)
                return obs, -delay, False, True, {**info, "slot": sim.t}
            self._begin_slot()
        return self._obs[self._k].copy(), -delay, False, False, {**info, **self._info()}
