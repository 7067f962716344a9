"""EdgeAIGC (paper 004): model caching and resource allocation for edge AIGC.

Spec: docs/papers/edgeaigc.md (W. Wen et al., "EdgeAIGC: Model caching and resource allocation for
Edge Artificial Intelligence Generated Content", DCN 2025). Units: data in MB (x 8e6 bit), model
sizes and storage in GB, bandwidth in Hz, compute in FLOP and FLOP/s, times in s, costs in the
paper's (unnamed) cost units.

One decision per slot: which models each edge server (ES) caches (beta, E x M), the uplink
bandwidth shares (alpha, E x U), the compute shares (L, E x U) and each user's ES. A hit is served
at the edge (EdgeAIGC eq. 10), a miss relays through the cloud (eq. 11); both outputs then queue
FIFO on their ES's exclusive downlink (eq. 9, T_tw as spec 1.8). Slots are independent (spec 1.1):
the problem is a contextual bandit, so the per-slot minimiser of G(t) (eq. 15) is the optimum.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from pydantic import Field, model_validator
from scipy.optimize import Bounds, LinearConstraint, milp

from policies.config import PresetBase
from policies.cost import (
    BITS_PER_MB,
    aigc_request_cost,
    cache_fits,
    cache_storage_cost,
    channel_gain,
    compute_delay_s,
    dbm_to_w,
    equal_share,
    fdma_rate_bps,
    fifo_finish_times_grouped,
    markov_chain_path,
    noise_power_w,
    path_loss_db_3gpp,
    rayleigh_power_gain,
    shannon_rate_bps,
    sqrt_optimal_shares,
    transmission_delay_s,
    weighted_time_cost,
    zipf_probabilities,
)
from policies.errors import TraceError
from policies.scenarios.base import ObsField, Policy, Simulator
from policies.workload import Workload, episode_rng


# --------------------------------------------------------------------------------------------
# Preset
# --------------------------------------------------------------------------------------------
class Preset(PresetBase):
    """EdgeAIGC parameters (spec 2.1). [paper] values from Table 3; [ours] where the paper is silent."""

    num_users: int = Field(10, ge=1, description="U: users, one request each per slot (count); Fig. 6 sweeps it")
    num_edges: int = Field(2, ge=1, description="E: edge servers (count)")
    num_models: int = Field(20, ge=1, description="M: AIGC models in the catalogue (count)")
    gamma_states: list[float] = Field([0.2, 0.5, 0.8], min_length=1,
                                      description="Zipf exponents of the popularity regimes (dimensionless, eq. 1)")
    gamma_transition: list[list[float]] = Field(
        [[0.6, 0.2, 0.2], [0.1, 0.7, 0.2], [0.2, 0.3, 0.5]],
        description="P: regime transition matrix, rows = from (probabilities, eq. 1)")
    input_mb_min: float = Field(4.0, gt=0, description="d_in ~ U[min, max], MB")
    input_mb_max: float = Field(8.0, gt=0, description="upper bound of d_in, MB")
    output_mb_ranges: list[list[float]] = Field(
        [[500, 510], [520, 530], [540, 550], [560, 570]],
        description="d_out ~ U[lo, hi] MB per model kind (T2T, T2S, T2I, T2V)")
    catalogue: Literal["fixed", "random"] = Field(
        "fixed", description="fixed: S_m = size_min + q GB, F_m = (flop_min + step q) units, q = (m-1) mod scales; "
                             "random: S, F i.i.d. uniform per topology draw")
    num_scales: int = Field(5, ge=1, description="model scales per kind in the fixed catalogue (count)")
    model_size_gb_min: float = Field(4.0, gt=0, description="S_m lower bound, GB (fixed catalogue: scale 0)")
    model_size_gb_max: float = Field(8.0, gt=0, description="S_m upper bound, GB (fixed catalogue: top scale)")
    model_flop_units_min: float = Field(10.0, gt=0, description="F_m lower bound in flop_unit FLOP")
    model_flop_units_max: float = Field(20.0, gt=0, description="F_m upper bound in flop_unit FLOP")
    flop_unit: float = Field(1e15, gt=0, description="FLOP per printed 'Eflops' unit (spec 2.2 reading b: PFLOP)")
    gpu_flops: float = Field(312e12, gt=0, description="A8: FLOP/s of one A800 GPU (FP16 dense)")
    area_km: float = Field(1.0, gt=0, description="side of the square area, km")
    edge_xy_km: list[list[float]] = Field([[0.25, 0.5], [0.75, 0.5]], description="ES positions (x, y), km")
    min_distance_km: float = Field(0.01, gt=0, description="minimum user-ES distance, km (users are redrawn)")
    storage_gb_min: float = Field(30.0, gt=0, description="S_j^E ~ U[min, max], GB")
    storage_gb_max: float = Field(50.0, gt=0, description="upper bound of S_j^E, GB")
    uplink_mhz_min: float = Field(10.0, gt=0, description="W_up_j ~ U[min, max], MHz")
    uplink_mhz_max: float = Field(20.0, gt=0, description="upper bound of W_up_j, MHz")
    downlink_mhz_min: float = Field(30.0, gt=0, description="W_down_j ~ U[min, max], MHz")
    downlink_mhz_max: float = Field(40.0, gt=0, description="upper bound of W_down_j, MHz")
    gpus_min: int = Field(25, ge=1, description="K_j ~ U{min..max}, A800 GPUs per ES")
    gpus_max: int = Field(30, ge=1, description="upper bound of K_j, GPUs")
    cloud_gpus: int = Field(5, ge=1, description="K_CS: A800 GPUs the cloud gives each request")
    user_power_dbm: float = Field(23.0, description="p_U: user transmit power, dBm")
    edge_power_dbm: float = Field(43.0, description="p_E: ES transmit power, dBm")
    noise_dbm_per_hz: float = Field(-174.0, description="N0: noise power spectral density, dBm/Hz")
    fading_min: float = Field(1e-6, gt=0, description="clamp of |delta|^2 from below (numerical safety), linear")
    cs_rate_bps: float = Field(5e5, gt=0, description="R_cs: edge-cloud rate, each direction, bit/s")
    price_transfer_per_mb: float = Field(0.2, ge=0, description="C_ue: user-ES transfer price, cost units per MB")
    price_relay_per_mb: float = Field(0.6, ge=0, description="C_ecs: ES-cloud relay price, cost units per MB")
    price_gpu_per_s: float = Field(4.0, ge=0, description="C_A8: compute price, cost units per A800-second")
    price_storage_per_gb: float = Field(0.4, ge=0, description="C_E_st: storage price, cost units per GB per slot")
    w_time: float = Field(0.5, ge=0, description="w1: weight of the summed response time (per s) in G")
    w_cost: float = Field(0.5, ge=0, description="w2: weight of the summed cost (per cost unit) in G")
    reward_scale: float = Field(1e-3, gt=0, description="learning-only factor on r = -G/U (dimensionless)")
    share_floor: float = Field(1e-3, gt=0, lt=1, description="eps: minimum share of a served user (fraction)")
    association: Literal["action", "nearest"] = Field(
        "action", description="action: a cached copy wins, then the highest alpha score; nearest: largest path gain")
    obs: Literal["paper", "rich"] = Field("paper", description="paper: eq. 19 state; rich adds path gains, counts, storage")
    topology_seed: int = Field(0, description="seed of the per-instance draws (storage, bands, GPUs, users)")
    resample_topology_each_episode: bool = Field(False, description="redraw the topology from each episode's stream")
    pso_particles: int = Field(20, ge=2, description="PCRAS particles per slot (count)")
    pso_iterations: int = Field(30, ge=1, description="PCRAS iterations per slot (count)")
    opt_refine_iterations: int = Field(
        30, ge=0, description="PSO iterations refining the per-slot reference from its relaxed solution (count; 0 = off)")
    ga_population: int = Field(20, ge=4, description="GCRAS population per slot (count)")
    ga_generations: int = Field(30, ge=1, description="GCRAS generations per slot (count)")

    @model_validator(mode="after")
    def _check(self) -> "Preset":
        for lo, hi in (("input_mb_min", "input_mb_max"), ("model_size_gb_min", "model_size_gb_max"),
                       ("model_flop_units_min", "model_flop_units_max"), ("storage_gb_min", "storage_gb_max"),
                       ("uplink_mhz_min", "uplink_mhz_max"), ("downlink_mhz_min", "downlink_mhz_max"),
                       ("gpus_min", "gpus_max")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} must not exceed {hi}")
        k = len(self.gamma_states)
        P = np.asarray(self.gamma_transition, dtype=np.float64)
        if P.shape != (k, k) or np.any(P < 0) or not np.allclose(P.sum(axis=1), 1.0):
            raise ValueError(f"gamma_transition must be a {k}x{k} matrix of probabilities whose rows sum to 1")
        r = np.asarray(self.output_mb_ranges, dtype=np.float64)
        if r.ndim != 2 or r.shape[1] != 2 or np.any(r[:, 0] > r[:, 1]) or np.any(r <= 0):
            raise ValueError("output_mb_ranges must be [lo, hi] pairs with 0 < lo <= hi, one per model kind")
        if np.asarray(self.edge_xy_km, dtype=np.float64).shape != (self.num_edges, 2):
            raise ValueError(f"edge_xy_km must hold {self.num_edges} (x, y) positions")
        return self

    @property
    def num_kinds(self) -> int:
        return len(self.output_mb_ranges)

    @property
    def action_dim(self) -> int:
        """E*M + 2*E*U (spec 3.2): beta scores, alpha scores, L scores."""
        return self.num_edges * self.num_models + 2 * self.num_edges * self.num_users

    def key_parameters(self) -> dict[str, object]:
        return {**super().key_parameters(), "users": self.num_users, "edges": self.num_edges,
                "models": self.num_models, "storage_gb": f"{self.storage_gb_min:g}..{self.storage_gb_max:g}",
                "flop_unit": self.flop_unit, "cs_rate_bps": self.cs_rate_bps, "association": self.association,
                "obs": self.obs, "action_dim": self.action_dim}


def model_catalogue(p: Preset, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kind (M,) int, S_m (M,) GB, F_m (M,) FLOP) (spec 1.3). Fixed: kind = (m-1) mod kinds and scale
    q = (m-1) mod scales drives S and F linearly over their ranges; random: i.i.d. uniform draws."""
    m = np.arange(p.num_models)
    kind = m % p.num_kinds
    if p.catalogue == "random":
        if rng is None:
            raise ValueError("a random catalogue needs a generator")
        size = rng.uniform(p.model_size_gb_min, p.model_size_gb_max, p.num_models)
        units = rng.uniform(p.model_flop_units_min, p.model_flop_units_max, p.num_models)
    else:
        frac = (m % p.num_scales) / max(p.num_scales - 1, 1)
        size = p.model_size_gb_min + frac * (p.model_size_gb_max - p.model_size_gb_min)
        units = p.model_flop_units_min + frac * (p.model_flop_units_max - p.model_flop_units_min)
    return kind.astype(np.int64), size.astype(np.float64), units * p.flop_unit


def draw_topology(p: Preset, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-instance parameters in the spec's order (1.4, 7): S^E, W_up, W_down, K, user positions
    (redrawn while closer than min_distance to an ES), then a random catalogue if asked for."""
    E, U = p.num_edges, p.num_users
    storage = rng.uniform(p.storage_gb_min, p.storage_gb_max, E)
    w_up = rng.uniform(p.uplink_mhz_min, p.uplink_mhz_max, E) * 1e6
    w_down = rng.uniform(p.downlink_mhz_min, p.downlink_mhz_max, E) * 1e6
    gpus = rng.integers(p.gpus_min, p.gpus_max + 1, E).astype(np.float64)
    es = np.asarray(p.edge_xy_km, dtype=np.float64)
    users = rng.uniform(0.0, p.area_km, (U, 2))
    for _ in range(1000):  # rejection: the expected number of redraws is tiny (area ratio ~3e-4)
        close = (np.linalg.norm(users[:, None, :] - es[None], axis=-1) < p.min_distance_km).any(axis=1)
        if not close.any():
            break
        users[close] = rng.uniform(0.0, p.area_km, (int(close.sum()), 2))
    kind, size, flop = model_catalogue(p, rng)
    return {"storage_gb": storage, "uplink_hz": w_up, "downlink_hz": w_down, "gpus": gpus,
            "user_xy_km": users, "edge_xy_km": es.copy(), "model_kind": kind.astype(np.float64),
            "model_size_gb": size, "model_flop": flop}


# --------------------------------------------------------------------------------------------
# View and decision
# --------------------------------------------------------------------------------------------
@dataclass
class AllocationView:
    """One slot's decision point: the eq. 19 state plus what a gateway knows of its servers."""

    slot: int
    gamma_state: int  # index into Preset.gamma_states (the regime of this slot)
    model: np.ndarray  # (U,) int: requested model Z_i (0-based popularity rank)
    input_mb: np.ndarray  # (U,) MB: d_in
    output_mb: np.ndarray  # (U,) MB: d_out
    fading: np.ndarray  # (U,) linear: |delta_i|^2
    distance_m: np.ndarray  # (E, U) m: user-ES distance (eq. 4)
    storage_gb: np.ndarray  # (E,) GB: S_j^E
    uplink_hz: np.ndarray  # (E,) Hz: W_up
    downlink_hz: np.ndarray  # (E,) Hz: W_down
    gpus: np.ndarray  # (E,) count: K_j
    model_size_gb: np.ndarray  # (M,) GB: S_m
    model_flop: np.ndarray  # (M,) FLOP: F_m
    prev_counts: np.ndarray  # (M,) int: requests per model in the previous slot (zeros in slot 0)

    @property
    def num_users(self) -> int:
        return int(self.model.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.storage_gb.shape[0])

    @property
    def num_models(self) -> int:
        return int(self.model_size_gb.shape[0])

    @functools.cached_property
    def path_gain_db(self) -> np.ndarray:
        """(E, U) g_ij in dB (EdgeAIGC eq. 5); computed once per view (a view's fields are never changed)."""
        return -path_loss_db_3gpp(self.distance_m)

    @property
    def gain(self) -> np.ndarray:
        """(E, U) linear h_ij = 10^(g/10) |delta_i|^2 (EdgeAIGC eq. 6, [fix] dB -> linear)."""
        return channel_gain(self.distance_m, self.fading[None, :])


@dataclass
class AllocationDecision:
    """Typed decision of one slot (EdgeAIGC eq. 20 after projection)."""

    cache: np.ndarray  # (E, M) bool: beta
    bandwidth_share: np.ndarray  # (E, U) in [0, 1]: alpha (only the associated ES's entry is used)
    compute_share: np.ndarray  # (E, U) in [0, 1]: L (only used for hits)
    association: np.ndarray  # (U,) int: the ES j_i each user sends its request to

    def validate(self, view: AllocationView) -> None:
        """Constraints 18b-18g, plus: every associated user has uplink and every hit has compute."""
        E, U, M = view.num_edges, view.num_users, view.num_models
        if self.cache.shape != (E, M):
            raise ValueError(f"cache has shape {self.cache.shape}, expected ({E}, {M})")
        for name in ("bandwidth_share", "compute_share"):
            x = getattr(self, name)
            if x.shape != (E, U):
                raise ValueError(f"{name} has shape {x.shape}, expected ({E}, {U})")
            if not np.all(np.isfinite(x)) or np.any(x < 0) or np.any(x > 1):
                raise ValueError(f"{name} has a value outside [0, 1] (constraint 18c/18d)")
        if self.association.shape != (U,) or np.any(self.association < 0) or np.any(self.association >= E):
            raise ValueError(f"association must give each of the {U} users an ES index in 0..{E - 1}")
        if not cache_fits(self.cache, view.model_size_gb, view.storage_gb).all():
            raise ValueError("cached models exceed an edge server's storage (constraint 18e)")
        mask, hit = served_masks(self.cache[None], self.association[None], view.model)
        a = np.where(mask[0], self.bandwidth_share, 0.0)
        l = np.where(mask[0] & hit[0][None, :], self.compute_share, 0.0)
        if np.any(a.sum(axis=1) > 1 + 1e-9) or np.any(l.sum(axis=1) > 1 + 1e-9):
            raise ValueError("bandwidth or compute shares of an edge server sum to more than 1 (18f/18g)")
        if np.any(a.sum(axis=0) <= 0):
            raise ValueError("a user has no uplink bandwidth at its edge server")
        if np.any(hit[0] & (l.sum(axis=0) <= 0)):
            raise ValueError("a cache-hit user has no compute share at its edge server")

    @classmethod
    def project(cls, view: AllocationView, x: np.ndarray, association: str = "action",
                share_floor: float = 1e-3) -> "AllocationDecision":
        """Any raw vector x in [0, 1]^(E*M + 2EU) -> a feasible decision (spec 3.2 projection)."""
        cache, alpha, comp, assoc = project_batch(view, np.asarray(x, dtype=np.float64)[None], association, share_floor)
        return cls(cache[0], alpha[0], comp[0], assoc[0])


def served_masks(cache: np.ndarray, assoc: np.ndarray, model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask (B,E,U): user i sends to ES j, hit (B,U): its ES caches Z_i) for B candidate decisions."""
    B, E, _ = cache.shape
    mask = assoc[:, None, :] == np.arange(E)[None, :, None]
    hit = cache[np.arange(B)[:, None], assoc, model[None, :]]
    return mask, hit


def _masked_shares(raw: np.ndarray, mask: np.ndarray, floor: float) -> np.ndarray:
    """Spec 3.2 steps 3-4: zero unusable shares, floor usable ones at eps, scale a row down if it
    exceeds 1 (the agent may leave capacity unused)."""
    x = np.where(mask, np.maximum(raw, floor), 0.0)
    tot = x.sum(axis=-1, keepdims=True)
    return x / np.maximum(tot, 1.0)


def associate(view: AllocationView, cache: np.ndarray, score: np.ndarray | None, rule: str) -> np.ndarray:
    """(B,U) ES per user (spec 1.7). ``action``: among the ES caching Z_i (all ES if none does) the
    highest score wins, ties to the larger path gain; ``score=None`` means path gain only (a hit
    goes to the nearest copy, a miss to the nearest ES). ``nearest``: the largest path gain."""
    B = cache.shape[0]
    g = view.path_gain_db[None]  # (1,E,U)
    if rule == "nearest":
        return np.broadcast_to(np.argmax(g[0], axis=0), (B, view.num_users)).copy()
    has = cache[:, :, view.model]  # (B,E,U)
    cand = np.where(has.any(axis=1, keepdims=True), has, True)
    s = np.zeros(cand.shape) if score is None else score
    key = np.where(cand, s, -np.inf)
    top = key >= key.max(axis=1, keepdims=True)
    return np.argmax(np.where(top, g, -np.inf), axis=1)


def knapsack_repair(score: np.ndarray, size_gb: np.ndarray, storage_gb: np.ndarray) -> np.ndarray:
    """Spec 3.2 step 1 (18e): per (candidate, ES), models in descending score; keep m if its score is
    above 0.5 and it fits the remaining storage (greedy, no backtracking). score (B,E,M) -> bool."""
    order = np.argsort(-score, axis=-1, kind="stable")
    remaining = np.broadcast_to(storage_gb, score.shape[:-1]).astype(np.float64).copy()
    cache = np.zeros(score.shape, dtype=bool)
    for k in range(score.shape[-1]):  # sequential by definition (first fit in score order); M steps
        m = order[..., k]
        s = np.take_along_axis(score, m[..., None], -1)[..., 0]
        take = (s > 0.5) & (size_gb[m] <= remaining + 1e-9)
        remaining -= np.where(take, size_gb[m], 0.0)
        np.put_along_axis(cache, m[..., None], take[..., None], -1)
    return cache


def project_batch(view: AllocationView, x: np.ndarray, rule: str, floor: float):
    """Spec 3.2 for B raw vectors x (B, E*M + 2EU) in [0, 1] -> (cache, alpha, L, association)."""
    E, U, M = view.num_edges, view.num_users, view.num_models
    x = np.clip(x, 0.0, 1.0)
    B = x.shape[0]
    beta_s = x[:, :E * M].reshape(B, E, M)
    alpha_s = x[:, E * M:E * M + E * U].reshape(B, E, U)
    l_s = x[:, E * M + E * U:].reshape(B, E, U)
    cache = knapsack_repair(beta_s, view.model_size_gb, view.storage_gb)
    assoc = associate(view, cache, alpha_s, rule)
    mask, hit = served_masks(cache, assoc, view.model)
    alpha = _masked_shares(alpha_s, mask, floor)
    comp = _masked_shares(l_s, mask & hit[:, None, :], floor)
    return cache, alpha, comp, assoc


# --------------------------------------------------------------------------------------------
# The slot's outcome (eqs. 7-15), batched over candidate decisions
# --------------------------------------------------------------------------------------------
@dataclass
class SlotOutcome:
    """Per-candidate results of one slot; arrays (B, U) per user, (B,) per slot."""

    response_s: np.ndarray  # T_res (eq. 9)
    ready_s: np.ndarray  # output ready at the ES (eqs. 10-11)
    wait_s: np.ndarray  # T_tw: downlink queueing
    cost: np.ndarray  # C_i (eqs. 12-13)
    hit: np.ndarray  # bool
    storage_cost: np.ndarray  # C_st (eq. 14)
    objective: np.ndarray  # G (eq. 15)


def slot_outcome(p: Preset, view: AllocationView, cache: np.ndarray, alpha: np.ndarray, comp: np.ndarray,
                 assoc: np.ndarray) -> SlotOutcome:
    """EdgeAIGC eqs. 7-15 for B candidate decisions of one slot (shapes (B,E,M), (B,E,U), (B,E,U), (B,U)).

    The downlink of each ES is one non-preemptive FIFO in order of ready time, ties by user index
    (spec 1.8), so T_res = finish time of the user's output.
    """
    B = cache.shape[0]
    E, U = view.num_edges, view.num_users
    b = np.arange(B)[:, None]
    u = np.arange(U)[None, :]
    mask, hit = served_masks(cache, assoc, view.model)
    h = view.gain[assoc, u]  # (B,U) linear gain to the chosen ES
    a = alpha[b, assoc, u]
    l = comp[b, assoc, u]
    d_in_bits = view.input_mb * BITS_PER_MB
    d_out_bits = view.output_mb * BITS_PER_MB
    flop = view.model_flop[view.model]
    r_up = fdma_rate_bps(a, view.uplink_hz[assoc], dbm_to_w(p.user_power_dbm), h, p.noise_dbm_per_hz)  # eq. 7
    t_up = transmission_delay_s(d_in_bits, r_up)
    with np.errstate(divide="ignore"):
        edge = compute_delay_s(flop, l * view.gpus[assoc] * p.gpu_flops)  # eq. 10 compute term
    cloud = (transmission_delay_s(d_in_bits, p.cs_rate_bps) + compute_delay_s(flop, p.cloud_gpus * p.gpu_flops)
             + transmission_delay_s(d_out_bits, p.cs_rate_bps))  # eq. 11 before the downlink
    ready = t_up + np.where(hit, edge, cloud)
    w_down = view.downlink_hz[assoc]
    r_down = shannon_rate_bps(w_down, dbm_to_w(p.edge_power_dbm), h, noise_power_w(p.noise_dbm_per_hz, w_down))  # eq. 8
    service = transmission_delay_s(d_out_bits, r_down)
    queue = (b * E + assoc).ravel()
    order = np.lexsort((np.broadcast_to(u, (B, U)).ravel(), ready.ravel()))  # FIFO by ready, ties by user
    finish = np.empty(B * U)
    finish[order] = fifo_finish_times_grouped(queue[order], ready.ravel()[order], service.ravel()[order],
                                              np.zeros(B * E))
    finish = finish.reshape(B, U)
    cost = aigc_request_cost(view.input_mb, view.output_mb, flop / p.gpu_flops, ~hit, p.price_transfer_per_mb,
                             p.price_relay_per_mb, p.price_gpu_per_s)  # eqs. 12-13
    c_st = cache_storage_cost(cache, view.model_size_gb, p.price_storage_per_gb)  # eq. 14
    g = weighted_time_cost(finish.sum(axis=1), cost.sum(axis=1) + c_st, p.w_time, p.w_cost)  # eq. 15
    return SlotOutcome(finish, ready, finish - service - ready, cost, hit, c_st, g)


# --------------------------------------------------------------------------------------------
# Observation layout
# --------------------------------------------------------------------------------------------
class _LayoutDim:
    """``obs_dim()`` on the class (default U, M, E) or on an instance (its preset's sizes)."""

    def __get__(self, obj: Any, owner: type) -> Any:
        layout = (obj if obj is not None else owner).OBS_LAYOUT
        return lambda: sum(f.width for f in layout)


def _obs_layout(U: int, M: int, E: int, kinds: int, rich: bool) -> tuple[ObsField, ...]:
    """EdgeAIGC eq. 19 s(t) = {gamma, delta, Z, d_in, d_out}, encoded as spec 3.1."""
    out = (
        ObsField("gamma_onehot", "one-hot", 1.0, kinds, "popularity regime gamma(t)"),
        ObsField("fading_power_gain", "linear, clipped to [0, 5]", 5.0, U, "|delta_i(t)|^2 per user"),
        ObsField("model_onehot", "one-hot", 1.0, U * M, "Z_i(t): requested model per user (row-major user, model)"),
        ObsField("input_mb", "MB", 8.0, U, "d_in per user"),
        ObsField("output_excess_mb", "MB above 500", 70.0, U, "d_out - 500 per user"),
    )
    if rich:
        out += (
            ObsField("path_gain_db_plus_140", "dB + 140", 60.0, E * U, "g_ij + 140 (row-major ES, user); not in eq. 19"),
            ObsField("request_share", "fraction of users", 1.0, M, "n_m(t) / U; not in eq. 19"),
            ObsField("storage_gb", "GB", 50.0, E, "S_j^E; not in eq. 19"),
        )
    return out


# --------------------------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------------------------
class EdgeAigcSimulator(Simulator):
    """EdgeAIGC system model (spec 1): one caching + allocation decision per slot for all users."""

    name = "edgeaigc"
    Preset = Preset
    TASK_FIELDS = {
        "slot": "slot index; t",
        "source": "user index; i (one request per user per slot)",
        "model": "model index; Z_i(t), 0-based popularity rank (0 = most popular)",
        "input_mb": "MB; d_in_i(t)",
        "output_mb": "MB; d_out_i(t)",
        "fading": "linear; |delta_i(t)|^2 Rayleigh power gain (shared by both ES, up and down)",
    }
    TASK_DTYPES = {"slot": np.int64, "source": np.int64, "model": np.int64}
    PARAM_FIELDS = {
        "gamma_state": "state index per slot; Zipf regime gamma(t) (index into gamma_states)",
        "storage_gb": "GB per ES; S_j^E",
        "uplink_hz": "Hz per ES; W_up_j",
        "downlink_hz": "Hz per ES; W_down_j",
        "gpus": "A800 GPUs per ES; K_j",
        "user_xy_km": "km, (U, 2); user positions",
        "edge_xy_km": "km, (E, 2); ES positions",
        "model_kind": "kind index per model; 0 T2T, 1 T2S, 2 T2I, 3 T2V",
        "model_size_gb": "GB per model; S_m",
        "model_flop": "FLOP per model; F_m",
    }
    POLICIES = ("random", "round_robin", "greedy", "opt", "pso", "ga")
    MULTI_AGENT = False
    OBS_LAYOUT = _obs_layout(10, 20, 2, 3, False)
    obs_dim = _LayoutDim()

    def __init__(self, preset: Preset):
        super().__init__(preset)
        p = preset
        self.U, self.E, self.M, self.T = p.num_users, p.num_edges, p.num_models, p.slots_per_episode
        self.OBS_LAYOUT = _obs_layout(self.U, self.M, self.E, len(p.gamma_states), p.obs == "rich")
        self._topology = None if p.resample_topology_each_episode else draw_topology(p, np.random.default_rng(p.topology_seed))
        self._zipf_cdf = np.cumsum([zipf_probabilities(self.M, g) for g in p.gamma_states], axis=1)
        self._out_ranges = np.asarray(p.output_mb_ranges, dtype=np.float64)
        self.t = 0

    # -- workload -------------------------------------------------------------------------
    def generate_workload(self, rng: np.random.Generator, episode: int) -> Workload:
        """Topology (fixed per instance, or from this stream), then gamma(1) uniform and the eq. 1
        chain, then per slot Z (eq. 2), d_in, d_out and fading (spec 1.2, 1.5, 7)."""
        p = self.preset
        T, U = self.T, self.U
        topo = draw_topology(p, rng) if self._topology is None else self._topology
        k = len(p.gamma_states)
        gamma = markov_chain_path(rng, np.asarray(p.gamma_transition), int(rng.integers(k)), T)
        cdf = self._zipf_cdf[gamma]  # (T, M)
        u = rng.random((T, U))
        model = np.minimum((u[:, :, None] >= cdf[:, None, :]).sum(axis=-1), self.M - 1)
        d_in = rng.uniform(p.input_mb_min, p.input_mb_max, (T, U))
        kind = topo["model_kind"].astype(np.int64)[model]
        lo, hi = self._out_ranges[kind, 0], self._out_ranges[kind, 1]
        d_out = lo + rng.random((T, U)) * (hi - lo)
        fade = np.maximum(rayleigh_power_gain(rng, (T, U)), p.fading_min)
        tasks = {
            "slot": np.repeat(np.arange(T, dtype=np.int64), U),
            "source": np.tile(np.arange(U, dtype=np.int64), T),
            "model": model.ravel().astype(np.int64),
            "input_mb": d_in.ravel(),
            "output_mb": d_out.ravel(),
            "fading": fade.ravel(),
        }
        params = {k_: np.array(v, dtype=np.float64, copy=True) for k_, v in topo.items()}
        params["gamma_state"] = gamma.astype(np.float64)
        return Workload(self.name, episode, params, tasks)

    # -- episode ----------------------------------------------------------------------------
    def reset(self, workload: Workload) -> None:
        workload.check(self.TASK_FIELDS, self.PARAM_FIELDS)
        T, U, E, M = self.T, self.U, self.E, self.M
        ep = workload.episode
        pr = {k: np.asarray(v, dtype=np.float64) for k, v in workload.params.items()}
        shapes = {"gamma_state": (T,), "storage_gb": (E,), "uplink_hz": (E,), "downlink_hz": (E,), "gpus": (E,),
                  "user_xy_km": (U, 2), "edge_xy_km": (E, 2), "model_kind": (M,), "model_size_gb": (M,),
                  "model_flop": (M,)}
        for name, shape in shapes.items():
            if pr[name].shape != shape:
                raise TraceError(f"parameter '{name}' of episode {ep} has shape {pr[name].shape}, "
                                 f"but the preset needs {shape}")
        for name in ("storage_gb", "uplink_hz", "downlink_hz", "gpus", "model_size_gb", "model_flop"):
            if np.any(pr[name] <= 0) or not np.all(np.isfinite(pr[name])):
                raise TraceError(f"parameter '{name}' of episode {ep} must be positive and finite")
        g = pr["gamma_state"]
        if np.any(g != np.round(g)) or g.min() < 0 or g.max() >= len(self.preset.gamma_states):
            raise TraceError(f"gamma_state of episode {ep} must be regime indices 0..{len(self.preset.gamma_states) - 1}")
        tk = workload.tasks
        if workload.num_tasks != T * U:
            raise TraceError(f"episode {ep} has {workload.num_tasks} requests; the preset needs {T} slots x {U} users")
        slot = np.asarray(tk["slot"], dtype=np.int64).reshape(T, U)
        src = np.asarray(tk["source"], dtype=np.int64).reshape(T, U)
        if np.any(slot != np.arange(T)[:, None]) or np.any(src != np.arange(U)[None, :]):
            raise TraceError(f"requests of episode {ep} must be one per user per slot, ordered by slot then user")
        model = np.asarray(tk["model"], dtype=np.int64).reshape(T, U)
        if model.min() < 0 or model.max() >= M:
            raise TraceError(f"episode {ep} requests a model outside 0..{M - 1}")
        d_in = np.asarray(tk["input_mb"], dtype=np.float64).reshape(T, U)
        d_out = np.asarray(tk["output_mb"], dtype=np.float64).reshape(T, U)
        fade = np.asarray(tk["fading"], dtype=np.float64).reshape(T, U)
        if np.any(d_in < 0) or np.any(d_out < 0) or np.any(fade <= 0):
            raise TraceError(f"episode {ep} has a negative data size or a non-positive fading gain")
        self.workload = workload
        self.gamma = g.astype(np.int64)
        self.model, self.d_in, self.d_out, self.fade = model, d_in, d_out, fade
        self.params = pr
        dist_km = np.linalg.norm(pr["user_xy_km"][None, :, :] - pr["edge_xy_km"][:, None, :], axis=-1)
        self.distance_m = np.maximum(dist_km, self.preset.min_distance_km) * 1000.0  # (E, U)
        self.t = 0
        self.response_s = np.zeros((T, U))
        self.wait_s = np.zeros((T, U))
        self.cost = np.zeros((T, U))
        self.hit = np.zeros((T, U), dtype=bool)
        self.storage_cost = np.zeros(T)
        self.objective = np.zeros(T)
        self.last_decision: AllocationDecision | None = None
        self._view: AllocationView | None = None
        self.decisions = 0

    @property
    def done(self) -> bool:
        return self.t >= self.T

    def view(self, t: int | None = None) -> AllocationView:
        t = self.t if t is None else t
        if t == self.t and self._view is not None and self._view.slot == t:
            return self._view
        pr = self.params
        prev = np.bincount(self.model[t - 1], minlength=self.M) if t > 0 else np.zeros(self.M, dtype=np.int64)
        v = AllocationView(
            slot=t, gamma_state=int(self.gamma[t]), model=self.model[t], input_mb=self.d_in[t],
            output_mb=self.d_out[t], fading=self.fade[t], distance_m=self.distance_m,
            storage_gb=pr["storage_gb"], uplink_hz=pr["uplink_hz"], downlink_hz=pr["downlink_hz"], gpus=pr["gpus"],
            model_size_gb=pr["model_size_gb"], model_flop=pr["model_flop"], prev_counts=prev)
        if t == self.t:
            self._view = v
        return v

    def evaluate(self, view: AllocationView, decision: AllocationDecision) -> SlotOutcome:
        """The slot's outcome of one decision (no state change): eqs. 7-15."""
        return slot_outcome(self.preset, view, decision.cache[None], decision.bandwidth_share[None],
                            decision.compute_share[None], decision.association[None])

    def step(self, decision: AllocationDecision) -> None:
        """Apply slot t's decision (validated against 18b-18g) and record eqs. 9-15."""
        view = self.view()
        decision.validate(view)
        out = self.evaluate(view, decision)
        t = self.t
        self.response_s[t] = out.response_s[0]
        self.wait_s[t] = out.wait_s[0]
        self.cost[t] = out.cost[0]
        self.hit[t] = out.hit[0]
        self.storage_cost[t] = out.storage_cost[0]
        self.objective[t] = out.objective[0]
        self.last_decision = decision
        self.decisions += 1
        self.t += 1

    def slot_reward(self, t: int) -> float:
        """r(t) = -G(t) / U (EdgeAIGC eq. 21), unscaled."""
        return -float(self.objective[t]) / self.U

    def episode_metrics(self) -> dict[str, float]:
        """Per-request means over the decided slots; reward = sum_t r(t) (Figs. 4-5), objective =
        (1/T) sum_t G(t) (Fig. 7); cost includes each request's share of the storage cost."""
        n = self.t
        if n == 0:
            return {"hit_rate": 0.0, "latency_s": 0.0, "cost": 0.0, "reward": 0.0, "objective": 0.0}
        U = self.U
        return {
            "hit_rate": float(self.hit[:n].mean()),
            "latency_s": float(self.response_s[:n].mean()),
            "cost": float((self.cost[:n].sum() + self.storage_cost[:n].sum()) / (n * U)),
            "reward": float(-self.objective[:n].sum() / U),
            "objective": float(self.objective[:n].mean()),
            "wait_s": float(self.wait_s[:n].mean()),
            "request_cost": float(self.cost[:n].mean()),
            "storage_cost": float(self.storage_cost[:n].mean()),
        }

    # -- observation contract ---------------------------------------------------------------
    def observation(self, view: AllocationView) -> np.ndarray:
        """One row laid out as OBS_LAYOUT (spec 3.1): values divided by each field's scale."""
        p = self.preset
        k = len(p.gamma_states)
        U, M = view.num_users, view.num_models
        # filled in place (one float64 row, cast once): the same values as concatenating the parts, at a
        # third of the cost on the decision path (np.eye and np.clip's wrappers dominated a 10-user row)
        row = np.zeros(k + U + U * M + 2 * U + ((view.num_edges * U + M + view.num_edges) if p.obs == "rich" else 0))
        row[int(view.gamma_state)] = 1.0
        row[k:k + U] = np.minimum(np.maximum(view.fading, 0.0), 5.0) / 5.0
        o = k + U
        row[o + np.arange(U) * M + view.model] = 1.0
        o += U * M
        row[o:o + U] = view.input_mb / 8.0
        row[o + U:o + 2 * U] = (view.output_mb - 500.0) / 70.0
        if p.obs == "rich":
            o += 2 * U
            EU = view.num_edges * U
            row[o:o + EU] = (view.path_gain_db + 140.0).ravel() / 60.0
            row[o + EU:o + EU + M] = np.bincount(view.model, minlength=M) / U
            row[o + EU + M:] = view.storage_gb / 50.0
        return row.astype(np.float32)[None, :]

    def project(self, view: AllocationView, x: np.ndarray) -> AllocationDecision:
        """Raw [0, 1] action -> feasible decision with this preset's rule and floor (spec 3.2)."""
        return AllocationDecision.project(view, x, self.preset.association, self.preset.share_floor)

    def scenario_policy(self, name: str) -> Policy | None:
        factories = {"random": RandomAllocation, "round_robin": RoundRobinAllocation, "greedy": GreedyAllocation,
                     "opt": OptAllocation, "pso": PsoAllocation, "ga": GaAllocation}
        return factories[name](self.preset) if name in factories else None


# --------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------
def equal_decision(view: AllocationView, cache: np.ndarray) -> AllocationDecision:
    """Hits go to the ES with a copy (nearest copy), misses to the nearest ES; equal alpha among the
    users of an ES, equal L among its hit users (spec 4.4 StaticTop-/PopGreedy-Equal)."""
    assoc = associate(view, cache[None], None, "action")
    mask, hit = served_masks(cache[None], assoc, view.model)
    mask, hit = mask[0], hit[0]
    alpha = np.where(mask, equal_share(1.0, mask.sum(axis=1, keepdims=True)), 0.0)
    hm = mask & hit[None, :]
    comp = np.where(hm, equal_share(1.0, hm.sum(axis=1, keepdims=True)), 0.0)
    return AllocationDecision(cache, alpha, comp, assoc[0])


def first_fit(order: np.ndarray, size_gb: np.ndarray, storage_gb: np.ndarray, most_room: bool) -> np.ndarray:
    """Place models in ``order``: each into the first ES that fits it (``most_room``: the ES with the
    most remaining storage that fits it); models that fit nowhere are skipped. (E, M) bool."""
    E = storage_gb.shape[0]
    remaining = storage_gb.astype(np.float64).copy()
    cache = np.zeros((E, size_gb.shape[0]), dtype=bool)
    for m in order:  # sequential placement; at most M steps
        fits = remaining >= size_gb[m] - 1e-9
        if not fits.any():
            continue
        j = int(np.argmax(np.where(fits, remaining, -np.inf))) if most_room else int(np.argmax(fits))
        cache[j, m] = True
        remaining[j] -= size_gb[m]
    return cache


class _AllocationPolicy(Policy):
    def __init__(self, preset: Preset):
        self.preset = preset


class RandomAllocation(_AllocationPolicy):
    """A uniform raw vector in [0, 1]^(E*M+2EU) projected by spec 3.2: random feasible cache
    (each model wanted with probability 1/2, knapsack-repaired), random association scores and shares."""

    name = "random"

    def decide(self, view: AllocationView) -> AllocationDecision:
        x = self.rng.random(self.preset.action_dim)
        return AllocationDecision.project(view, x, self.preset.association, self.preset.share_floor)


class RoundRobinAllocation(_AllocationPolicy):
    """A rotating window: from a start index, models in index order (cyclic) fill the ES first-fit
    while they fit; the next slot starts after the last cached model. Equal shares."""

    name = "round_robin"

    def reset(self, rng: np.random.Generator, oracle: Simulator | None = None) -> None:
        super().reset(rng, oracle)
        self.start = 0

    def decide(self, view: AllocationView) -> AllocationDecision:
        M = view.num_models
        order = (self.start + np.arange(M)) % M
        remaining = view.storage_gb.astype(np.float64).copy()
        cache = np.zeros((view.num_edges, M), dtype=bool)
        last = self.start - 1
        for m in order:  # the window ends at the first model that fits in no ES
            fits = remaining >= view.model_size_gb[m] - 1e-9
            if not fits.any():
                break
            j = int(np.argmax(fits))
            cache[j, m] = True
            remaining[j] -= view.model_size_gb[m]
            last = int(m)
        self.start = (last + 1) % M
        return equal_decision(view, cache)


class GreedyAllocation(_AllocationPolicy):
    """PopGreedy-Equal on the previous slot's counts (spec 4.4, non-clairvoyant): models by count
    n_m(t-1) descending, ties to the lower index (so slot 0 is StaticTop), each into the ES with the
    most remaining storage that fits it. Equal shares."""

    name = "greedy"

    def decide(self, view: AllocationView) -> AllocationDecision:
        order = np.lexsort((np.arange(view.num_models), -view.prev_counts))
        return equal_decision(view, first_fit(order, view.model_size_gb, view.storage_gb, most_room=True))


def uplink_shares(p: Preset, view: AllocationView, assoc: np.ndarray, iterations: int = 10) -> np.ndarray:
    """(E, U) alpha minimising sum_i d_i / R_up_i(alpha_i) per ES (spec 4.4 (iv)): the KKT fixed point
    alpha_i ~ sqrt(d_i / c_i(alpha_i)), c_i = W log2(1 + rho_i / alpha_i) (EdgeAIGC eq. 7), each step
    the sqrt rule of cost.sqrt_optimal_shares with c frozen; starts from equal shares."""
    E = view.num_edges
    mask = assoc[None, :] == np.arange(E)[:, None]
    bits = view.input_mb * BITS_PER_MB
    h = view.gain
    alpha = np.where(mask, equal_share(1.0, mask.sum(axis=1, keepdims=True)), 0.0)
    for _ in range(iterations):  # fixed-point iterations (10, spec 4.4)
        rate = fdma_rate_bps(alpha, view.uplink_hz[:, None], dbm_to_w(p.user_power_dbm), h, p.noise_dbm_per_hz)
        c = np.where(mask, rate / np.maximum(alpha, 1e-12), 0.0)  # bit/s per unit share
        demand = np.where(mask, bits[None, :] / np.where(mask, c, 1.0), 0.0)
        alpha = sqrt_optimal_shares(demand)
    return np.maximum(alpha, np.where(mask, 1e-12, 0.0))


class _SearchAllocation(_AllocationPolicy):
    """Shared by PCRAS / GCRAS: fitness = G(t) of the projected decision on the slot's state, which
    the view holds (requests and channel are in the RL state, eq. 19), evaluated in batches."""

    def fitness(self, view: AllocationView, x: np.ndarray) -> np.ndarray:
        p = self.preset
        cache, alpha, comp, assoc = project_batch(view, x, p.association, p.share_floor)
        return slot_outcome(p, view, cache, alpha, comp, assoc).objective

    def finish(self, view: AllocationView, best: np.ndarray) -> AllocationDecision:
        return AllocationDecision.project(view, best, self.preset.association, self.preset.share_floor)

    def swarm(self, view: AllocationView, x: np.ndarray, iters: int) -> tuple[np.ndarray, float]:
        """PSO from the initial swarm x (n, D) (spec 4.2): inertia 0.9 -> 0.4, c1 = c2 = 2, velocity
        clipped to +-0.2, positions to [0, 1]. Returns the global best and its G."""
        rng = self.rng
        n, D = x.shape
        v = np.zeros((n, D))
        f = self.fitness(view, x)
        pbest, pbest_f = x.copy(), f.copy()
        g = int(np.argmin(f))
        gbest, gbest_f = x[g].copy(), float(f[g])
        for it in range(iters):  # iterations are sequential; each evaluates the swarm in one batch
            w = 0.9 - 0.5 * it / max(iters - 1, 1)
            r1, r2 = rng.random((n, D)), rng.random((n, D))
            v = np.clip(w * v + 2.0 * r1 * (pbest - x) + 2.0 * r2 * (gbest - x), -0.2, 0.2)
            x = np.clip(x + v, 0.0, 1.0)
            f = self.fitness(view, x)
            better = f < pbest_f
            pbest[better], pbest_f[better] = x[better], f[better]
            g = int(np.argmin(pbest_f))
            if pbest_f[g] < gbest_f:
                gbest, gbest_f = pbest[g].copy(), float(pbest_f[g])
        return gbest, gbest_f


class OptAllocation(_SearchAllocation):
    """Per-slot reference (spec 4.4 Oracle-relaxed) with the true requests and channel.

    (i) Caching: exact 2-bin (E-bin) multiple knapsack over the requested models, solved as a MILP
    (scipy.optimize.milp, i.e. HiGHS), value of model m = the w1-weighted cloud time plus the
    w2-weighted relay price its requests save, minus its w2-weighted storage cost. (ii) Hits go to the
    ES holding the model, misses to the nearest ES. (iii) L by the sqrt rule on F (exact for the
    compute-time sum). (iv) alpha by the KKT fixed point for the upload-time sum.

    (v) A PSO (``opt_refine_iterations``, the PCRAS swarm size) starts at this solution and searches
    the true G of the slot, including the FIFO downlink; its best replaces the relaxed solution only
    if its G is lower (e.g. duplicate copies that balance the two downlinks).

    Not exact, and not a bound: the knapsack values ignore the edge compute time a hit adds, the
    shares minimise the sum of ready times whereas G sums downlink FIFO finish times, which couple
    through the queue, and the refinement is a local search. It is the spec's per-slot reference,
    near-optimal in hit rate because a miss (~8,600 s, ~320 cost units) dwarfs all share effects.
    """

    name = "opt"
    needs_oracle = True

    def reset(self, rng: np.random.Generator, oracle: Simulator | None = None) -> None:
        super().reset(rng, oracle)
        if not isinstance(oracle, EdgeAigcSimulator):
            raise TypeError("the EdgeAIGC reference policy needs the edgeaigc simulator as its oracle")
        self.sim = oracle

    def cache_values(self, view: AllocationView) -> np.ndarray:
        """(M,) value of caching each model this slot (spec 4.4 (i)); unrequested models get -storage."""
        p = self.preset
        flop = view.model_flop[view.model]
        miss_time = (transmission_delay_s(view.input_mb * BITS_PER_MB, p.cs_rate_bps)
                     + compute_delay_s(flop, p.cloud_gpus * p.gpu_flops)
                     + transmission_delay_s(view.output_mb * BITS_PER_MB, p.cs_rate_bps))
        gpu_s = flop / p.gpu_flops
        premium = (aigc_request_cost(view.input_mb, view.output_mb, gpu_s, True, p.price_transfer_per_mb,
                                     p.price_relay_per_mb, p.price_gpu_per_s)
                   - aigc_request_cost(view.input_mb, view.output_mb, gpu_s, False, p.price_transfer_per_mb,
                                       p.price_relay_per_mb, p.price_gpu_per_s))
        per_user = weighted_time_cost(miss_time, premium, p.w_time, p.w_cost)
        saved = np.bincount(view.model, weights=per_user, minlength=view.num_models)
        storage = cache_storage_cost(np.eye(view.num_models)[None], view.model_size_gb, p.price_storage_per_gb)
        return saved - p.w_cost * storage

    def solve_cache(self, view: AllocationView) -> np.ndarray:
        """Exact multiple knapsack: max sum v_m y_mj s.t. sum_j y_mj <= 1, sum_m S_m y_mj <= S_j."""
        E, M = view.num_edges, view.num_models
        v = self.cache_values(view)
        items = np.flatnonzero(v > 0)
        cache = np.zeros((E, M), dtype=bool)
        if items.size == 0:
            return cache
        k = items.size
        c = -np.repeat(v[items], E)  # variable (item a, ES j) at a*E + j
        one_copy = np.kron(np.eye(k), np.ones((1, E)))
        capacity = np.kron(view.model_size_gb[items][None, :], np.eye(E))
        res = milp(c, integrality=np.ones(k * E), bounds=Bounds(0, 1),
                   constraints=[LinearConstraint(one_copy, -np.inf, 1.0),
                                LinearConstraint(capacity, -np.inf, view.storage_gb)])
        if res.x is None:
            raise RuntimeError(f"the caching MILP failed: {res.message}")
        y = np.round(res.x).reshape(k, E).astype(bool)
        cache[:, items] = y.T
        return cache

    def relaxed(self, view: AllocationView) -> AllocationDecision:
        """Steps (i)-(iv) of spec 4.4 (the relaxed per-slot solution)."""
        p = self.preset
        cache = self.solve_cache(view)
        assoc = associate(view, cache[None], None, "action")[0]
        mask, hit = served_masks(cache[None], assoc[None], view.model)
        hm = mask[0] & hit[0][None, :]
        flop = view.model_flop[view.model]
        comp = sqrt_optimal_shares(np.where(hm, flop[None, :] / view.gpus[:, None], 0.0))
        alpha = uplink_shares(p, view, assoc)
        return AllocationDecision(cache, np.minimum(alpha, 1.0), comp, assoc)

    def decide(self, view: AllocationView) -> AllocationDecision:
        """The relaxed solution, refined by a PSO whose swarm starts at it (spec 4.4 (v)); the
        refinement only replaces it when the true G of the slot is lower."""
        p = self.preset
        base = self.relaxed(view)
        if p.opt_refine_iterations == 0:
            return base
        # the raw vector that projects back onto the relaxed decision: cached models score 1, others 0;
        # each model is cached once, so hits pick their copy; misses have alpha > 0 only at their ES
        x0 = np.concatenate([np.where(base.cache, 1.0, 0.0).ravel(), base.bandwidth_share.ravel(),
                             base.compute_share.ravel()])
        n = p.pso_particles
        swarm = np.clip(x0[None, :] + self.rng.normal(0.0, 0.1, (n, x0.size)) * (np.arange(n) > 0)[:, None], 0, 1)
        best, best_g = self.swarm(view, swarm, p.opt_refine_iterations)
        base_g = float(self.sim.evaluate(view, base).objective[0])
        return self.finish(view, best) if best_g < base_g else base


class PsoAllocation(_SearchAllocation):
    """PCRAS (spec 4.2): per-slot PSO over the raw vector, 20 particles x 30 iterations, inertia
    0.9 -> 0.4, c1 = c2 = 2, velocity clipped to +-0.2, positions clipped to [0, 1]."""

    name = "pso"

    def decide(self, view: AllocationView) -> AllocationDecision:
        p = self.preset
        best, _ = self.swarm(view, self.rng.random((p.pso_particles, p.action_dim)), p.pso_iterations)
        return self.finish(view, best)


class GaAllocation(_SearchAllocation):
    """GCRAS (spec 4.3): per-slot GA over the raw vector, population 20, 30 generations, tournament
    of 3, uniform crossover with probability 0.9, Gaussian mutation (sigma 0.1, rate 1/dim), elitism 2."""

    name = "ga"

    def decide(self, view: AllocationView) -> AllocationDecision:
        p, rng = self.preset, self.rng
        n, D = p.ga_population, p.action_dim
        pop = rng.random((n, D))
        fit = self.fitness(view, pop)
        for _ in range(p.ga_generations):  # generations are sequential; each is one batch
            elite = pop[np.argsort(fit, kind="stable")[:2]]
            k = n - 2
            contenders = rng.integers(0, n, (2 * k, 3))
            winners = contenders[np.arange(2 * k), np.argmin(fit[contenders], axis=1)]
            a, b = pop[winners[:k]], pop[winners[k:]]
            swap = (rng.random((k, D)) < 0.5) & (rng.random((k, 1)) < 0.9)
            child = np.where(swap, b, a)
            mutate = rng.random((k, D)) < 1.0 / D
            child = np.clip(child + mutate * rng.normal(0.0, 0.1, (k, D)), 0.0, 1.0)
            pop = np.vstack([elite, child])
            fit = self.fitness(view, pop)
        return self.finish(view, pop[int(np.argmin(fit))])


# --------------------------------------------------------------------------------------------
# RL wrapper
# --------------------------------------------------------------------------------------------
class EdgeAigcEnv(gym.Env):
    """Gymnasium view of EdgeAIGC (spec 3, 5): one step per slot.

    Observation: the eq. 19 state as OBS_LAYOUT (float32). Action: Box [-1, 1]^(E*M + 2EU) (tanh
    outputs), mapped to x = (a + 1)/2 and projected to a feasible decision (spec 3.2). Reward:
    r = -G/U (eq. 21) times ``reward_scale``; ``info["reward_unscaled"]`` holds -G/U. The episode
    terminates after T slots.
    """

    metadata = {"name": "edgeaigc", "render_modes": []}

    def __init__(self, preset: str = "edgeaigc", seed: int | None = None, **overrides: Any):
        from policies.scenarios import make_simulator

        self.sim = make_simulator(preset, overrides, expect="edgeaigc")
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(self.sim.obs_dim(),), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(self.sim.preset.action_dim,), dtype=np.float32)
        self._seed = 0 if seed is None else int(seed)
        self._episode = 0
        self.last_decision: AllocationDecision | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._seed, self._episode = int(seed), 0
        self.last_decision = None
        wl = self.sim.generate_workload(episode_rng(self._seed, self._episode, 0), self._episode)
        self._episode += 1
        self.sim.reset(wl)
        return self.sim.observation(self.sim.view())[0], {"slot": 0}

    def step(self, action):
        sim = self.sim
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != self.action_space.shape or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be {self.action_space.shape[0]} finite values in [-1, 1]")
        decision = sim.project(sim.view(), (np.clip(a, -1.0, 1.0) + 1.0) / 2.0)
        t = sim.t
        sim.step(decision)
        r = sim.slot_reward(t)
        self.last_decision = decision
        # raw and projected action both logged (spec 3.2); arrays so that info stays comparable
        info = {"slot": t, "reward_unscaled": r, "objective": float(sim.objective[t]),
                "hit_rate": float(sim.hit[t].mean()), "action_raw": a.copy(), "cache": decision.cache,
                "bandwidth_share": decision.bandwidth_share, "compute_share": decision.compute_share,
                "association": decision.association}
        obs = sim.observation(sim.view())[0] if not sim.done else np.zeros(sim.obs_dim(), dtype=np.float32)
        return obs, r * sim.preset.reward_scale, sim.done, False, info
