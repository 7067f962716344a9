"""MATO / MADDPG-MATO (paper 000): model-aware AIGC task offloading in IIoT edge computing.

Spec: docs/papers/mato.md. One simulator step is one time step t in which every ED (edge device,
one agent) has exactly one task and all agents act at once (spec 1.1). An action (MATO eq. 17) is a
target ES xi, an offload share eta in [0, 1] and a download flag beta. The local part (1 - eta) runs
on the ED (MATO eqs. 3-4) in parallel with the edge part: upload over the ES band shared equally by
its K_n offloaders (eqs. 5-6), a model download from the cloud if the ES lacks the task's model
(eqs. 7-8) and computation on the ES's CPU, shared equally (eq. 9-10). T = max(T_ed, T_edge)
(eq. 13), E = max (or sum) of the parts (eq. 14). Each task is evaluated within its step with the
caches read at the start of the step; the caches then evolve by LRU (spec 1.8).

Decision rows: :meth:`MatoSimulator.view` has one row per ED (every ED has a task every step);
targets are ``("local", "edge0", "edge1", "edge2")``. Target "local" means eta = 0; an edge target
with share 0 is also local (eq. 3's "exists only if 0 < eta").

Every cost, in the step and in the ``opt`` oracle, comes from :meth:`MatoSimulator.task_costs`,
which broadcasts over agents, servers, shares, flags and offloader counts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv
from pydantic import Field, model_validator
from scipy.optimize import linear_sum_assignment

from policies import cost
from policies.config import PresetBase
from policies.errors import TraceError
from policies.scenarios.base import ObsField, OffloadDecision, OffloadView, Policy, Simulator
from policies.workload import Workload, episode_rng

NUM_SERVERS = 3  # N: the observation layout (25 columns) is fixed at N = 3 ES [P §IV-A]
MAX_MODEL_TYPES = 6  # L_max: the type one-hot has 6 columns; L sweeps 3..6 [P §IV-C1]
TARGET_NAMES = ("local",) + tuple(f"edge{n}" for n in range(NUM_SERVERS))


class Preset(PresetBase):
    """MATO parameters (spec section 2)."""

    num_devices: int = Field(gt=0, le=64, description="M: number of EDs (agents), devices")
    num_model_types: int = Field(ge=1, le=MAX_MODEL_TYPES, description="L: number of task/model types, types")
    area_m: float = Field(gt=0, description="side of the square area, m")
    min_distance_m: float = Field(gt=0, description="ED-ES distance clip, m")
    server_xy_m: tuple[tuple[float, float], ...] = Field(description="h_ES: ES positions (x, y), m")
    cloud_xy_m: tuple[float, float] = Field(description="h_CC: cloud centre position (x, y), m (observed only)")
    device_cpu_ghz: tuple[float, float] = Field(description="f_m^InDe ~ U[lo, hi] per ED, GHz")
    edge_cpu_ghz: float = Field(gt=0, description="f_n^edge of every ES, GHz")
    cloud_cpu_ghz: float = Field(gt=0, description="f_CC, GHz (printed, used by no equation)")
    size_mb: tuple[float, float] = Field(description="x range over all types, MB; type l uses the l-th of L equal sub-ranges")
    mb_to_mbit: float = Field(gt=0, description="Mbit per MB of task and model data (8: megabytes; 1: the Mbit reading)")
    cycles_per_bit: tuple[float, float] = Field(description="rho ~ U[lo, hi], cycles/bit")
    model_size_mb: tuple[float, float] = Field(description="X_l evenly spaced over [lo, hi] for l = 1..L, MB")
    deadline_s_per_mbit: float = Field(gt=0, description="kappa_D: deadline D = kappa_D x, s/Mbit")
    task_weight: tuple[float, ...] = Field(description="sigma_l: eq. 18 weight of each of the L_max = 6 types, 1")
    bandwidth_mhz: float = Field(gt=0, description="B_n: uplink band of every ES, MHz")
    tx_power_w: float = Field(gt=0, description="p_m^n: ED transmit power, W")
    noise_dbm_per_hz: float = Field(description="N0: noise power density, dBm/Hz")
    rayleigh_fading: bool = Field(description="|h|^2 ~ Exp(1) per link per step (false: 1), 1")
    backhaul_gbps: float = Field(gt=0, description="r_c^n: CC -> ES download rate, Gbit/s (not shared)")
    download_power_w: float = Field(ge=0, description="p_c^n: power charged during a download, W")
    kappa_device: float = Field(ge=0, description="c: ED energy coefficient, J/(cycle Hz^2)")
    kappa_edge: float = Field(ge=0, description="c_n: ES energy coefficient, J/(cycle Hz^2)")
    cache_capacity: int = Field(ge=1, description="CAP: models an ES holds, models")
    time_unit_s: float = Field(gt=0, description="delta: the ceilings of eqs. 3 and 9 count whole units of this, s")
    edge_sharing: bool = Field(description="share f_n^edge equally among the K_n offloaders of ES n (eq. 9 + c4)")
    energy_aggregate: Literal["max", "sum"] = Field(description="eq. 14: max(E_ed, E_edge) as printed, or their sum")
    local_energy_share: bool = Field(description="eq. 4 charges the local share x(1-eta)rho (true) or the full x (false)")
    w_latency: float = Field(ge=0, description="w1: weight of T in eq. 18, 1/s")
    w_energy: float = Field(ge=0, description="w2: weight of E in eq. 18, 1/J")
    drop_penalty: float = Field(ge=0, description="P_e: penalty per incomplete task (eq. 18), reward units")
    reward_mode: Literal["team", "individual"] = Field(
        description="env reward: team r_t to every agent (MATO, NoModel) or each ED's own term (SADDPG)")
    model_aware: bool = Field(description="true: agents see d_{m,mu,n} and set beta (MATO); false: MADDPG-NoModel, "
                                          "cache hidden and servers download every missing model")
    obs_local_cpu: bool = Field(description="observe f_m^InDe (the column is 0 when false)")
    opt_share_steps: int = Field(ge=1, le=200, description="G: opt searches eta in {1/G, ..., 1} and 0, steps")

    @model_validator(mode="after")
    def _check(self) -> "Preset":
        if len(self.server_xy_m) != NUM_SERVERS:
            raise ValueError(f"server_xy_m must list {NUM_SERVERS} edge servers (the observation layout is fixed at N = 3)")
        if len(self.task_weight) != MAX_MODEL_TYPES:
            raise ValueError(f"task_weight must give {MAX_MODEL_TYPES} weights, one per possible model type")
        if self.cache_capacity > self.num_model_types:
            raise ValueError("cache_capacity cannot exceed num_model_types (each ES starts with that many distinct models)")
        for name in ("device_cpu_ghz", "size_mb", "cycles_per_bit", "model_size_mb"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < lo <= hi")
        return self

    @property
    def bits_per_mb(self) -> float:
        return self.mb_to_mbit * cost.BITS_PER_MBIT

    def type_size_ranges_mb(self) -> tuple[np.ndarray, np.ndarray]:
        """(a_l, b_l), l = 0..L-1: the L equal sub-ranges of ``size_mb`` (spec 1.2), MB."""
        lo, hi = self.size_mb
        edges = lo + (hi - lo) * np.arange(self.num_model_types + 1) / self.num_model_types
        return edges[:-1], edges[1:]

    def model_sizes_mb(self) -> np.ndarray:
        """X_l = lo + (hi - lo) l / (L - 1), l = 0..L-1 (spec 1.2), MB."""
        lo, hi = self.model_size_mb
        L = self.num_model_types
        return np.full(1, lo) if L == 1 else lo + (hi - lo) * np.arange(L) / (L - 1)

    def key_parameters(self) -> dict[str, object]:
        return {**super().key_parameters(), "devices": self.num_devices, "servers": NUM_SERVERS,
                "model_types": self.num_model_types, "cache": self.cache_capacity,
                "model_MB": [round(float(v), 1) for v in self.model_sizes_mb()], "backhaul_Gbps": self.backhaul_gbps,
                "deadline_s_per_Mbit": self.deadline_s_per_mbit, "MB_in_Mbit": self.mb_to_mbit,
                "model_aware": self.model_aware}


@dataclass
class SlotCosts:
    """Per-task outcome of one step (arrays broadcast like the inputs of ``task_costs``)."""

    latency_s: np.ndarray  # T^total, eq. 13
    energy_j: np.ndarray  # E^total, eq. 14
    failed: np.ndarray  # bool: model missing and not downloaded
    downloaded: np.ndarray  # bool: the ES fetched the model (eq. 7)
    hit: np.ndarray  # bool: offloaded and the ES had the model
    completed: np.ndarray  # bool: not failed and T <= D
    cost: np.ndarray  # sigma (w1 T + w2 E) + P_e 1{incomplete}: minus the agent's eq. 18 term


class MatoSimulator(Simulator):
    """MATO system model (spec sections 1 and 7.1)."""

    name = "mato"
    Preset = Preset
    TASK_FIELDS = {
        "slot": "step; the step t of the task",
        "source": "index; the ED m that generated the task (one task per ED per step)",
        "model_type": "index; mu, the task type = the model 0..L-1 it needs",
        "size_mb": "MB; input data size x",
        "cycles_per_bit": "cycles/bit; rho",
        "deadline_s": "s; completion limit D = kappa_D x",
    }
    TASK_DTYPES = {"slot": np.int64, "source": np.int64, "model_type": np.int64}
    PARAM_FIELDS = {
        "device_xy_m": "m; (M, 2) ED positions h_ED",
        "device_cpu_ghz": "GHz; (M,) f_m^InDe",
        "fading": "1; (T, M, N) Rayleigh power gain |h|^2 per step, ED and ES",
        "initial_cache": "index; (N, CAP) models cached at each ES at reset, least recently used first",
    }
    POLICIES = ("random", "round_robin", "greedy", "local", "opt")
    MULTI_AGENT = True
    OBS_LAYOUT = (
        ObsField("task_type", "1", 1.0, MAX_MODEL_TYPES, "one-hot of mu (eq. 16), L_max = 6 columns"),
        ObsField("size_mb", "MB", 20.0, 1, "x"),
        ObsField("cycles_per_bit", "cycles/bit", 120.0, 1, "rho"),
        ObsField("edge_cpu_ghz", "GHz", 7.0, NUM_SERVERS, "f_n^edge of each ES"),
        ObsField("model_cached", "1", 1.0, NUM_SERVERS, "d_{m,mu,n}: ES n holds the task's model (0 if not model-aware)"),
        ObsField("device_xy_m", "m", 1000.0, 2, "h_ED_m"),
        ObsField("server_xy_m", "m", 1000.0, 2 * NUM_SERVERS, "h_ES_n, (x, y) per ES"),
        ObsField("cloud_xy_m", "m", 1000.0, 2, "h_CC"),
        ObsField("device_cpu_ghz", "GHz", 3.0, 1, "f_m^InDe (ours; 0 if obs_local_cpu is off)"),
    )

    def __init__(self, preset: Preset):
        super().__init__(preset)
        self.preset: Preset = preset
        p = preset
        self.M = p.num_devices
        self.N = NUM_SERVERS
        self.L = p.num_model_types
        self.T = p.slots_per_episode
        self.server_xy = np.asarray(p.server_xy_m, dtype=np.float64)
        self.model_bits = p.model_sizes_mb() * p.bits_per_mb  # X_l, bit
        self.sigma = np.asarray(p.task_weight[: self.L], dtype=np.float64)
        self.t = 0
        self._view: OffloadView | None = None
        self._ready = False

    # -- workload ---------------------------------------------------------------------------
    def generate_workload(self, rng: np.random.Generator, episode: int) -> Workload:
        """Positions, CPUs, fading, initial caches and one task per ED per step (spec 1.1-1.3, 1.8).
        Every array is drawn at full size in a fixed order, and sizes come from a uniform u mapped
        into the type's sub-range, so sweeps over L keep common random numbers."""
        p, M, N, T, L = self.preset, self.M, self.N, self.T, self.L
        xy = rng.uniform(0.0, p.area_m, size=(M, 2))
        f = rng.uniform(*p.device_cpu_ghz, size=M)
        fading = cost.rayleigh_power_gain(rng, (T, M, N))
        if not p.rayleigh_fading:
            fading = np.ones((T, M, N))
        cache = np.argsort(rng.random((N, L)), axis=1)[:, : p.cache_capacity]  # CAP distinct models, random order
        u_type = rng.random((T, M))
        u_size = rng.random((T, M))
        rho = rng.uniform(*p.cycles_per_bit, size=(T, M))
        mu = np.minimum((u_type * L).astype(np.int64), L - 1)
        a, b = p.type_size_ranges_mb()
        size = a[mu] + (b[mu] - a[mu]) * u_size
        deadline = p.deadline_s_per_mbit * size * p.mb_to_mbit  # D = kappa_D x[Mbit]
        slot, source = np.divmod(np.arange(T * M), M)
        tasks = {"slot": slot.astype(np.int64), "source": source.astype(np.int64), "model_type": mu.ravel(),
                 "size_mb": size.ravel(), "cycles_per_bit": rho.ravel(), "deadline_s": deadline.ravel()}
        params = {"device_xy_m": xy, "device_cpu_ghz": f, "fading": fading, "initial_cache": cache}
        return Workload(self.name, episode, params, tasks)

    # -- episode ----------------------------------------------------------------------------
    def reset(self, workload: Workload) -> None:
        p, M, N, T, L = self.preset, self.M, self.N, self.T, self.L
        workload.check(self.TASK_FIELDS, self.PARAM_FIELDS)
        xy = np.asarray(workload.params["device_xy_m"], dtype=np.float64)
        f = np.asarray(workload.params["device_cpu_ghz"], dtype=np.float64)
        fading = np.asarray(workload.params["fading"], dtype=np.float64)
        cache0 = np.asarray(workload.params["initial_cache"], dtype=np.float64)
        if xy.shape != (M, 2):
            raise TraceError(f"device_xy_m has shape {xy.shape} but the preset has {M} EDs (expected ({M}, 2))")
        if f.shape != (M,) or np.any(f <= 0) or not np.all(np.isfinite(f)):
            raise TraceError(f"device_cpu_ghz must hold {M} positive CPU speeds")
        if fading.shape != (T, M, N):
            raise TraceError(f"fading has shape {fading.shape}; the preset needs ({T}, {M}, {N})")
        if np.any(fading < 0) or not np.all(np.isfinite(fading)):
            raise TraceError("fading power gains must be finite and non-negative")
        if cache0.shape != (N, p.cache_capacity) or np.any(cache0 != np.round(cache0)) or \
                np.any(cache0 < 0) or np.any(cache0 >= L):
            raise TraceError(f"initial_cache must be ({N}, {p.cache_capacity}) model indices in 0..{L - 1}")
        cache0 = cache0.astype(np.int64)
        if any(len(set(row.tolist())) != len(row) for row in cache0):
            raise TraceError("initial_cache lists a model twice at one edge server")
        tk = workload.tasks
        slot, src = np.asarray(tk["slot"], np.int64), np.asarray(tk["source"], np.int64)
        if len(slot) != T * M or not np.array_equal(slot, np.repeat(np.arange(T), M)) \
                or not np.array_equal(src, np.tile(np.arange(M), T)):
            raise TraceError(f"every one of the {M} EDs must have exactly one task in each of the {T} steps, "
                             "listed in ED order within a step")
        mu = np.asarray(tk["model_type"], dtype=np.int64)
        size = np.asarray(tk["size_mb"], dtype=np.float64)
        rho = np.asarray(tk["cycles_per_bit"], dtype=np.float64)
        dl = np.asarray(tk["deadline_s"], dtype=np.float64)
        if mu.min() < 0 or mu.max() >= L:
            raise TraceError(f"task model types must lie in 0..{L - 1} for this preset")
        if size.min() <= 0 or rho.min() <= 0 or dl.min() <= 0:
            raise TraceError("task sizes, cycles per bit and deadlines must be positive")

        self.workload = workload
        self.device_xy = xy
        self.device_hz = f * 1e9
        dist = np.linalg.norm(xy[:, None, :] - self.server_xy[None, :, :], axis=-1)
        self.distance_m = np.maximum(dist, p.min_distance_m)  # (M, N)
        self.gain = cost.channel_gain(self.distance_m[None], fading)  # (T, M, N)
        self.mu = mu.reshape(T, M)
        self.bits = (size * p.bits_per_mb).reshape(T, M)
        self.cycles = self.bits * rho.reshape(T, M)  # x rho, cycles
        self.size_mb, self.rho = size.reshape(T, M), rho.reshape(T, M)
        self.deadline = dl.reshape(T, M)
        self.cache = np.zeros((N, L), dtype=bool)  # the set of models at each ES
        self.last_used = np.zeros((N, L))  # LRU stamps: larger = more recently used
        for n in range(N):
            self.cache[n, cache0[n]] = True
            self.last_used[n, cache0[n]] = np.arange(p.cache_capacity) - p.cache_capacity
        shape = (T, M)
        self.latency_s, self.energy_j = np.zeros(shape), np.zeros(shape)
        self.failed, self.completed = np.zeros(shape, bool), np.zeros(shape, bool)
        self.downloaded, self.hit = np.zeros(shape, bool), np.zeros(shape, bool)
        self.offloaded, self.share = np.zeros(shape, bool), np.zeros(shape)
        self.task_cost = np.zeros(shape)
        self.t = 0
        self.decisions = 0
        self._view: OffloadView | None = None
        self._ready = True

    @property
    def done(self) -> bool:
        return self._ready and self.t >= self.T

    # -- the cost model of one step (MATO eqs. 3-14, 18) ------------------------------------
    def task_costs(self, agent, server, eta, download, k, t: int | None = None) -> SlotCosts:
        """Outcome of ED ``agent``'s task of step ``t`` (default: now) when it sends share ``eta``
        to ES ``server`` with flag ``download`` and ``k`` offloaders on that ES (itself included).
        All arguments broadcast; ``server`` and ``k`` are ignored where eta = 0. Uses the caches
        at the start of the step (spec 1.5)."""
        p = self.preset
        t = self.t if t is None else t
        agent = np.asarray(agent, dtype=np.int64)
        server = np.asarray(server, dtype=np.int64)
        eta = np.asarray(eta, dtype=np.float64)
        k = np.maximum(np.asarray(k, dtype=np.float64), 1.0)
        off = eta > 0
        bits, cycles, mu = self.bits[t][agent], self.cycles[t][agent], self.mu[t][agent]
        # MATO eqs. 3-4: the local share on the ED's own CPU, whole time units delta
        t_ed = cost.compute_delay_s(cycles * (1.0 - eta), self.device_hz[agent], p.time_unit_s)
        local_cycles = cycles * (1.0 - eta) if p.local_energy_share else cycles
        e_ed = cost.compute_energy_j(local_cycles, self.device_hz[agent], p.kappa_device)
        # MATO eqs. 5-6: upload on B_n / K_n (c5), noise over the occupied band
        bw = cost.equal_share(p.bandwidth_mhz * 1e6, k)
        rate = cost.shannon_rate_bps(bw, p.tx_power_w, self.gain[t][agent, server],
                                     cost.noise_power_w(p.noise_dbm_per_hz, bw))
        t_tr = np.where(off, cost.transmission_delay_s(bits * eta, rate), 0.0)
        e_tr = cost.transmission_energy_j(p.tx_power_w, t_tr)
        # MATO eqs. 7-8: download the model if missing and beta = 1 (or the ES downloads by itself)
        has = self.cache[server, mu]
        need = off & ~has
        dl = need & (np.asarray(download, dtype=bool) | (not p.model_aware))
        failed = need & ~dl
        t_sw = cost.model_switch_delay_s(self.model_bits[mu], p.backhaul_gbps * 1e9, ~dl)
        e_sw = cost.transmission_energy_j(p.download_power_w, t_sw)
        # MATO eqs. 9-10: the edge share on f_n^edge (time-shared by K_n), whole time units delta
        f_edge = p.edge_cpu_ghz * 1e9
        run = off & ~failed
        f_share = cost.equal_share(f_edge, k) if p.edge_sharing else f_edge
        t_com = np.where(run, cost.compute_delay_s(cycles * eta, f_share, p.time_unit_s), 0.0)
        e_com = np.where(run, cost.compute_energy_j(cycles * eta, f_edge, p.kappa_edge), 0.0)
        # MATO eqs. 11-14
        t_edge = cost.edge_path_latency_s(t_tr, t_sw, t_com)
        e_edge = cost.edge_path_latency_s(e_tr, e_sw, e_com)
        lat = cost.partial_offload_latency_s(t_ed, t_edge)
        en = cost.partial_offload_energy_j(e_ed, e_edge, p.energy_aggregate)
        done = ~failed & cost.meets_deadline(lat, self.deadline[t][agent])
        sigma = self.sigma[mu]
        # MATO eq. 18 per task: -(sigma (w1 T + w2 E) + P_e 1{incomplete})
        r = cost.penalized_task_reward(sigma * lat, sigma * en, 0.0, ~done, p.w_latency, p.w_energy, 0.0,
                                       p.drop_penalty)
        return SlotCosts(lat, en, failed, dl, off & has, done, -r)

    # -- views ------------------------------------------------------------------------------
    def _features(self, t: int) -> dict[str, np.ndarray]:
        """What ED m knows at the start of step t (eq. 16): its task, the ESs' CPU, positions and
        (model-aware) whether each ES holds its task's model; plus its own CPU (ours)."""
        p, M, N = self.preset, self.M, self.N
        tt = min(t, self.T - 1)
        mu = self.mu[tt]
        onehot = np.zeros((M, MAX_MODEL_TYPES))
        onehot[np.arange(M), mu] = 1.0
        cached = self.cache[:, mu].T.astype(np.float64)  # (M, N)
        bcast = lambda v: np.broadcast_to(np.asarray(v, dtype=np.float64).ravel(), (M, np.size(v))).copy()  # noqa: E731
        feats = {
            "task_type": onehot,
            "size_mb": self.size_mb[tt],
            "cycles_per_bit": self.rho[tt],
            "edge_cpu_ghz": np.full((M, N), p.edge_cpu_ghz),
            "model_cached": cached if p.model_aware else np.zeros((M, N)),
            "device_xy_m": self.device_xy,
            "server_xy_m": bcast(self.server_xy),
            "cloud_xy_m": bcast(np.asarray(p.cloud_xy_m)),
            "device_cpu_ghz": self.device_hz / 1e9 if p.obs_local_cpu else np.zeros(M),
            # not in the observation: for heuristics and the gateway's own estimates
            "deadline_s": self.deadline[tt],
            "model_type": mu.astype(np.float64),
        }
        if t >= self.T:  # after the last step: no task, an all-zero observation
            for key in feats:
                feats[key] = np.zeros_like(feats[key])
        return feats

    def view(self) -> OffloadView:
        """One row per ED. ``compatible`` marks the ESs holding the task's model (all ESs when the
        agents are not model-aware: they cannot know); ``proximity`` is the ED-ES distance, m."""
        M, N, t = self.M, self.N, self.t
        if self._view is not None and self._view.slot == t:
            return self._view  # step() validates against the view the policy saw
        feats = self._features(t)
        prox = np.concatenate([np.zeros((M, 1)), self.distance_m], axis=1)
        compat = np.ones((M, N + 1), dtype=bool)
        if self.preset.model_aware:
            compat[:, 1:] = feats["model_cached"] > 0
        self._view = OffloadView(slot=t, target_names=TARGET_NAMES, source=np.arange(M, dtype=np.int64),
                                 allowed=np.ones((M, N + 1), dtype=bool), local_target=0, proximity=prox,
                                 compatible=compat, features=feats, has_share=True,
                                 has_download=self.preset.model_aware)
        return self._view

    def observation(self, view: OffloadView) -> np.ndarray:
        f = view.features
        cols = [np.asarray(f[o.name], dtype=np.float64).reshape(view.n, o.width) / o.scale for o in self.OBS_LAYOUT]
        return np.concatenate(cols, axis=1).astype(np.float32)

    # -- dynamics ---------------------------------------------------------------------------
    def decision_arrays(self, decision: OffloadDecision) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(server, eta, beta) per ED from a typed decision: target "local" or share 0 means eta = 0;
        a missing share means eta = 1 on an edge target; a missing download flag means beta = 0."""
        tgt = np.asarray(decision.target, dtype=np.int64)
        share = np.ones(self.M) if decision.share is None else np.asarray(decision.share, dtype=np.float64)
        eta = np.where(tgt > 0, share, 0.0)
        beta = np.zeros(self.M, bool) if decision.download is None else np.asarray(decision.download, dtype=bool)
        return np.maximum(tgt - 1, 0), eta, beta

    def step(self, decision: OffloadDecision) -> None:
        """Apply every ED's action of step t (spec 7.1) and evolve the caches (spec 1.8)."""
        if not self._ready or self.done:
            raise RuntimeError("step() called on a finished or unstarted episode; call reset() first")
        view_n = self.M
        if np.shape(decision.target) != (view_n,):
            raise ValueError(f"decision has {np.shape(decision.target)} targets for {view_n} EDs")
        decision.validate(self.view())
        server, eta, beta = self.decision_arrays(decision)
        off = eta > 0
        k = np.bincount(server[off], minlength=self.N)[server]  # K_n of each ED's ES
        c = self.task_costs(np.arange(self.M), server, eta, beta, k)
        t = self.t
        self.latency_s[t], self.energy_j[t] = c.latency_s, c.energy_j
        self.failed[t], self.completed[t] = c.failed, c.completed
        self.downloaded[t], self.hit[t] = c.downloaded, c.hit
        self.offloaded[t], self.share[t] = off, eta
        self.task_cost[t] = c.cost
        self._update_caches(server, c.hit, c.downloaded, self.mu[t])
        self._view = None  # the caches changed
        self.t += 1
        self.decisions += self.M

    def _update_caches(self, server: np.ndarray, hit: np.ndarray, downloaded: np.ndarray, mu: np.ndarray) -> None:
        """Spec 1.8: per ES, hits move to the MRU end in ED order, then downloads are appended in
        ED order (once per model), then LRU eviction down to CAP models."""
        M = self.M
        base = (self.t + 1) * 4.0 * M  # stamps of this step exceed every earlier stamp
        for n in range(self.N):  # N = 3 servers; the rule is sequential per server
            h = np.flatnonzero(hit & (server == n))
            self.last_used[n, mu[h]] = base + h  # a later ED's hit of the same model wins
            d = np.flatnonzero(downloaded & (server == n))
            if len(d):
                models, first = np.unique(mu[d], return_index=True)
                self.cache[n, models] = True
                self.last_used[n, models] = base + M + d[first]
                self.cache[n] = cost.lru_evict(self.cache[n], self.last_used[n], np.ones(self.L),
                                               self.preset.cache_capacity)

    def cache_order(self, n: int) -> list[int]:
        """Models at ES n, least recently used first (spec 1.8's ordered list)."""
        models = np.flatnonzero(self.cache[n])
        return models[np.argsort(self.last_used[n, models], kind="stable")].tolist()

    def step_reward(self, t: int) -> float:
        """Team reward r_t = -sum_m cost_m of step t (spec 1.7, MATO eq. 18)."""
        return -float(self.task_cost[t].sum())

    def episode_metrics(self) -> dict[str, float]:
        p = self.preset
        n = max(self.t, 1)
        lat, en = self.latency_s[:n], self.energy_j[:n]
        done = self.completed[:n]
        off = self.offloaded[:n]
        return {
            "latency_s": float(lat.mean()),
            "energy_j": float(en.mean()),
            "completion_rate": float(done.mean()),
            "drop_rate": float(1.0 - done.mean()),
            "hit_rate": float(self.hit[:n].sum() / max(off.sum(), 1)),
            "cost": float((p.w_latency * lat + p.w_energy * en).mean()),  # eq. 15 objective per task
            "reward": float(-self.task_cost[:n].sum(axis=1).mean()),  # mean r_t per step (Fig. 2)
            "failed_rate": float(self.failed[:n].mean()),
            "download_rate": float(self.downloaded[:n].mean()),
            "offload_rate": float(off.mean()),
            "mean_share": float(self.share[:n].mean()),
        }

    # -- policies ---------------------------------------------------------------------------
    def scenario_policy(self, name: str) -> Policy | None:
        if name == "random":
            return MatoRandomPolicy()
        if name == "opt":
            return MatoOptPolicy()
        return None


class MatoRandomPolicy(Policy):
    """Spec 4 Random: xi ~ U{1..N}, eta ~ U[0, 1], blind to the cache; missing models are always
    downloaded (auto-download as in NoModel), so it never fails on beta."""

    name = "random"

    def decide(self, view: OffloadView) -> OffloadDecision:
        n_edge = view.num_targets - 1
        target = 1 + self.rng.integers(0, n_edge, size=view.n)
        share = self.rng.random(view.n)
        return OffloadDecision(target=target.astype(np.int64), share=share,
                               download=np.ones(view.n, dtype=bool) if view.has_download else None)


class MatoOptPolicy(Policy):
    """Myopic per-step oracle (spec 7.2) with the true state, including this step's fading.

    EXACT per step over the action set {local} u {ES n} x {eta in 1/G..1} x {beta in 0, 1}
    (G = ``opt_share_steps``): with the caches read at the start of the step and every download
    charged to its own ED, ED m's cost depends on the others only through K_n of its ES. So
    1) table c[m, n, k] = min over (eta, beta) of m's cost on ES n with k offloaders there, and
       c_loc[m] = m's cost run locally;
    2) for every load vector (K_1..K_N) with sum <= M (C(M+N, N) of them: 1771 at M = 20), the best
       agents for those slots is a min-cost assignment (M agents x M slots: K_n slots costing
       c[., n, K_n] per ES, the rest local), solved exactly by the Hungarian method;
    3) the best load vector wins. It minimizes the step's team cost (maximizes r_t); it ignores the
    future value of the caches, so it is not a bound on the episodic return. Continuous eta can
    beat the grid by at most the grid's resolution."""

    name = "opt"
    needs_oracle: ClassVar[bool] = True

    def reset(self, rng: np.random.Generator, oracle: Simulator | None = None) -> None:
        super().reset(rng, oracle)
        if not isinstance(oracle, MatoSimulator):
            raise ValueError("opt needs the mato simulator as its oracle")
        self.sim = oracle
        M, N = oracle.M, oracle.N
        self.loads = np.array([v for v in itertools.product(range(M + 1), repeat=N) if sum(v) <= M], dtype=np.int64)
        G = oracle.preset.opt_share_steps
        self.etas = np.arange(1, G + 1) / G

    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(c (M, N, M) best edge cost for k = 1..M, eta index, beta, c_loc (M,)) for the current step."""
        sim = self.sim
        M, N = sim.M, sim.N
        ag = np.arange(M)[:, None, None, None, None]
        sv = np.arange(N)[None, :, None, None, None]
        kk = np.arange(1, M + 1)[None, None, :, None, None]
        eta = self.etas[None, None, None, :, None]
        beta = np.array([False, True])[None, None, None, None, :]
        full = sim.task_costs(ag, sv, eta, beta, kk).cost  # (M, N, M, G, 2)
        flat = full.reshape(M, N, M, -1)
        best = flat.argmin(axis=-1)
        c = np.take_along_axis(flat, best[..., None], axis=-1)[..., 0]
        c_loc = sim.task_costs(np.arange(M), 0, 0.0, False, 1).cost
        return c, best // 2, (best % 2).astype(bool), c_loc

    def decide(self, view: OffloadView) -> OffloadDecision:
        sim = self.sim
        M, N = sim.M, sim.N
        c, eta_idx, beta, c_loc = self.tables()
        best_val, best_cols, best_load = np.inf, None, None
        for load in self.loads:  # C(M+N, N) load vectors; each an M x M assignment
            cols = [c_loc[:, None].repeat(M - load.sum(), axis=1)]
            for n in range(N):
                if load[n]:
                    cols.append(c[:, n, load[n] - 1][:, None].repeat(load[n], axis=1))
            mat = np.concatenate(cols, axis=1)
            rows, colidx = linear_sum_assignment(mat)
            val = mat[rows, colidx].sum()
            if val < best_val - 1e-12:
                best_val, best_cols, best_load = val, colidx, load.copy()
        self.last_value = float(best_val)
        # column j of the best matrix: local for j < M - sum K, then K_1 columns of ES 0, ...
        bounds = np.cumsum(np.r_[M - best_load.sum(), best_load])
        slot_of_col = np.searchsorted(bounds, np.arange(M), side="right")  # 0 local, n+1 ES n
        target = slot_of_col[best_cols]
        server = np.maximum(target - 1, 0)
        k = best_load[server] - 1
        rows = np.arange(M)
        share = np.where(target > 0, self.etas[eta_idx[rows, server, k]], 0.0)
        download = np.where(target > 0, beta[rows, server, k], False)
        return OffloadDecision(target=target.astype(np.int64), share=share,
                               download=download if view.has_download else None)


class MatoEnv(ParallelEnv):
    """PettingZoo ParallelEnv over :class:`MatoSimulator`: one agent per ED, one step per time step.

    Action (MATO eq. 17, the spec's actor head): Box [0, 1]^(N+2) = N ES scores (xi = argmax),
    eta, and beta (download iff >= 0.5; ignored when the preset is not model-aware). eta = 0 runs
    the task locally. Reward (eq. 18, spec 1.7): the team reward r_t to every agent, or each ED's own
    term with ``reward_mode: individual`` (SADDPG). The episode ends by the time limit, reported as
    truncation (spec 5: bootstrap at the limit). ``infos[agent]`` holds the task's T, E and outcome."""

    metadata = {"name": "mato_v0", "render_modes": []}

    def __init__(self, preset: str = "mato", seed: int | None = None, **overrides: Any):
        from policies.scenarios import make_simulator

        sim = make_simulator(preset, overrides, expect="mato")
        self.sim = sim
        self.possible_agents = [f"ed_{m}" for m in range(sim.M)]
        self.agents: list[str] = []
        self._obs_space = spaces.Box(0.0, np.inf, shape=(sim.obs_dim(),), dtype=np.float32)
        self._act_space = spaces.Box(0.0, 1.0, shape=(sim.N + 2,), dtype=np.float32)
        self._seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**63))
        self._episode = 0
        self.render_mode = None

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs_space

    def action_space(self, agent: str) -> spaces.Space:
        return self._act_space

    def _observe(self) -> dict[str, np.ndarray]:
        obs = self.sim.observation(self.sim.view())
        return {a: obs[i] for i, a in enumerate(self.possible_agents)}

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seed, self._episode = int(seed), 0
        wl = self.sim.generate_workload(episode_rng(self._seed, self._episode, 0), self._episode)
        self._episode += 1
        self.sim.reset(wl)
        self.agents = self.possible_agents[:]
        return self._observe(), {a: {} for a in self.possible_agents}

    def decision(self, actions: dict[str, np.ndarray]) -> OffloadDecision:
        """Typed decision from the agents' Box actions (a missing agent runs locally)."""
        N = self.sim.N
        act = np.zeros((self.sim.M, N + 2))
        for i, a in enumerate(self.possible_agents):
            if a in actions:
                act[i] = np.clip(np.asarray(actions[a], dtype=np.float64).reshape(N + 2), 0.0, 1.0)
        eta = act[:, N]
        target = np.where(eta > 0, 1 + np.argmax(act[:, :N], axis=1), 0)
        return OffloadDecision(target=target.astype(np.int64), share=eta, download=act[:, N + 1] >= 0.5)

    def step(self, actions: dict[str, np.ndarray]):
        sim = self.sim
        t = sim.t
        sim.step(self.decision(actions))
        per_agent = -sim.task_cost[t]
        team = float(per_agent.sum())
        individual = sim.preset.reward_mode == "individual"
        rewards = {a: float(per_agent[i]) if individual else team for i, a in enumerate(self.possible_agents)}
        infos = {a: {"latency_s": float(sim.latency_s[t, i]), "energy_j": float(sim.energy_j[t, i]),
                     "completed": bool(sim.completed[t, i]), "failed": bool(sim.failed[t, i]),
                     "downloaded": bool(sim.downloaded[t, i])} for i, a in enumerate(self.possible_agents)}
        obs = self._observe()
        done = sim.done
        terminations = {a: False for a in self.possible_agents}
        truncations = {a: done for a in self.possible_agents}
        if done:
            self.agents = []
        return obs, rewards, terminations, truncations, infos
