"""The factory scenario: the plant the deployed system runs (spec docs/papers/factory.md).

Two production lines; production-line controllers ask for report generation (text models),
defect-detection cameras ask for defect-image synthesis (diffusion models). One gateway decides per
task: run on the device, on edge server n, or in the cloud (target), the offloaded share eta (MATO
partial offloading) and, on a cache miss, whether the edge server downloads the model (MATO's beta)
or forwards the task to the cloud. The edge tier may itself forward a task to the edge server with
the earliest estimated finish that holds the model (LAD-TS inter-server scheduling, preset switch).

Units inside the simulator: s, bit, bit/s, cycles, Hz, J; task fields and features are in Mbit,
Gcycles, GHz, Mbit/s for readability. Time zero is the start of slot 0; a task of slot t arrives at
t * slot_s. A task's fate is fixed when it is booked (AIECOF spec §1.10): every queue is a FIFO with
a busy-until pointer, and every task ends in exactly one terminal state (done, or dropped with a
reason) in the slot it is decided.

Equations (cost model functions in policies.cost):
- uplink  r = B log2(1 + p h / (N0 B)), h = PL(d) |delta|^2           (MATO eq. 5 rate, EdgeAIGC eqs. 5-7)
- local   T_loc = FIFO wait + (1-eta) W / f_m, E = kappa f_m^2 W_exec  (MATO eqs. 3-4, AIECOF eqs. 2-4)
- edge    T_edge = eta x / r + fwd + wait + max(switch) + eta W / f_n + return  (MATO eqs. 5, 7, 9, 11; LAD-TS eq. 2)
- cloud   upload + backhaul FIFO + eta W / f_cloud + return           (EdgeAIGC eq. 11)
- task    T = max(T_loc, T_edge) (MATO eq. 13); done iff both parts finish by the deadline
- reward  r = -(w1 T + w2 E + w3 C + P_e 1{dropped})                   (MATO eq. 18, EdgeAIGC eq. 15)
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.config import PresetBase
from policies.cost import (
    BITS_PER_MB,
    BITS_PER_MBIT,
    aigc_request_cost,
    channel_gain,
    compute_delay_s,
    compute_energy_j,
    denoising_workload_cycles,
    fifo_finish_times_grouped,
    fifo_finish_times_grouped_abort,
    lru_evict,
    markov_chain_path,
    noise_power_w,
    penalized_task_reward,
    rayleigh_power_gain,
    shannon_rate_bps,
    token_workload_cycles,
    transmission_delay_s,
    transmission_energy_j,
    zipf_probabilities,
)
from policies.errors import TraceError
from policies.scenarios.base import ObsField, OffloadDecision, OffloadView, Policy, Simulator
from policies.workload import Workload, episode_rng

KIND_REPORT, KIND_IMAGE = 0, 1
# Terminal states of a task (status) and the reason of a drop.
PENDING, DONE, DROPPED = 0, 1, 2
REASONS = {0: "done", 1: "deadline missed on the device", 2: "deadline missed at the edge",
           3: "deadline missed on the cloud path", 4: "arrived at the edge after its deadline"}


# --------------------------------------------------------------------------------------------
# Preset
# --------------------------------------------------------------------------------------------
class ModelSpec(BaseModel):
    """One generative model of the catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="model name (free text)")
    kind: Literal["report", "image"] = Field(description="report: text model; image: diffusion model")
    size_mb: float = Field(gt=0, description="file size X_i, MB (1 MB = 8e6 bit; MATO 90-250 MB)")
    gcycles_per_unit: float = Field(gt=0, description="Gcycles per generated token (report) or per denoising step (image)")


class Preset(PresetBase):
    """Factory plant parameters (spec docs/papers/factory.md §2)."""

    num_controllers: int = Field(16, ge=1, description="production-line controllers (devices 0..C-1), count")
    num_cameras: int = Field(14, ge=1, description="defect-detection cameras (devices C..C+K-1), count")
    num_lines: int = Field(2, ge=1, description="production lines; device m sits on line m mod num_lines")
    floor_length_m: float = Field(120.0, gt=0, description="plant floor length along the lines, m")
    line_y_m: list[float] = Field(description="y coordinate of each production line, m (one per line)")
    device_y_jitter_m: float = Field(3.0, ge=0, description="devices sit within +- this of their line, m")
    controller_cpu_ghz: tuple[float, float] = Field((1.0, 3.0), description="controller CPU f_m ~ U[lo, hi], GHz")
    camera_cpu_ghz: tuple[float, float] = Field((3.0, 5.0), description="camera CPU f_m ~ U[lo, hi], GHz")
    kappa_device: float = Field(1e-28, gt=0, description="device energy coefficient c in E = c f^2 W, J/(cycle Hz^2)")
    tx_power_w: float = Field(0.2, gt=0, description="device transmit power p, W")
    bandwidth_hz: float = Field(1e6, gt=0, description="orthogonal uplink channel per device, Hz")
    noise_dbm_per_hz: float = Field(-174.0, description="noise power spectral density N0, dBm/Hz")
    edge_xy_m: list[tuple[float, float]] = Field(description="position of each edge server (gateway) on the floor, m")
    edge_cpu_ghz: list[float] = Field(description="CPU f_n of each edge server, GHz")
    edge_storage_mb: list[float] = Field(description="model storage budget S_n of each edge server, MB")
    inter_link_mbps: list[float] = Field(description="inter-server link rate v_n of each server, Mbit/s (pair: min)")
    cloud_download_mbps: float = Field(gt=0, description="cloud -> edge model-download rate r_c per server, Mbit/s")
    cloud_backhaul_mbps: float = Field(gt=0, description="edge tier <-> cloud task backhaul (one shared FIFO link), Mbit/s")
    cloud_cpu_ghz: float = Field(40.0, gt=0, description="cloud CPU per task (no queue), GHz")
    cloud_relay_price_per_mb: float = Field(description="cloud price per MB relayed to and from the cloud (C_ecs), cost units/MB")
    cloud_compute_price_per_s: float = Field(description="cloud price per second of cloud compute, cost units/s")
    models: list[ModelSpec] = Field(description="model catalog; zipf rank within a kind = order in this list")
    initial_cache: Literal["popular", "empty"] = Field(
        "popular", description="popular: each server starts with the most popular models that fit (rotated per server)")
    edge_forwarding: bool = Field(True, description="LAD-TS inter-server scheduling by the edge tier (on/off)")
    arrival_prob_controller: float = Field(ge=0, le=1, description="Bernoulli task arrival per controller per slot")
    arrival_prob_camera: float = Field(ge=0, le=1, description="Bernoulli task arrival per camera per slot")
    report_input_mbit: tuple[float, float] = Field((2.0, 4.0), description="report input (telemetry) ~ U[lo, hi], Mbit")
    report_output_mbit: tuple[float, float] = Field(description="report output ~ U[lo, hi], Mbit")
    report_tokens: tuple[int, int] = Field(description="generated tokens ~ U{lo..hi}, tokens")
    report_deadline_s: float = Field(gt=0, description="deadline of a report task, s")
    image_input_mbit: tuple[float, float] = Field((5.0, 8.0), description="image input ~ U[lo, hi], Mbit")
    image_output_mbit: tuple[float, float] = Field((0.6, 1.0), description="image output ~ U[lo, hi], Mbit")
    image_steps: tuple[int, int] = Field((1, 15), description="denoising steps z ~ U{lo..hi}, steps")
    image_deadline_s: float = Field(gt=0, description="deadline of an image task, s")
    zipf_exponents: list[float] = Field(description="Zipf exponent gamma of each popularity state (EdgeAIGC eq. 2)")
    zipf_transition: list[list[float]] = Field(description="Markov transition matrix of the popularity state (EdgeAIGC eq. 1)")
    share_levels: list[float] = Field(description="offload shares eta the opt search and the RL action use, in (0, 1]")
    w_latency: float = Field(0.5, ge=0, description="reward weight w1 on latency, 1/s")
    w_energy: float = Field(0.5, ge=0, description="reward weight w2 on device energy, 1/J")
    w_cost: float = Field(1.0, ge=0, description="reward weight w3 on cloud cost, 1/cost unit")
    drop_penalty: float = Field(5.0, ge=0, description="P_e: penalty per dropped task (reward units)")

    @model_validator(mode="after")
    def _check(self) -> "Preset":
        n = len(self.edge_xy_m)
        if n < 1:
            raise ValueError("edge_xy_m must place at least one edge server")
        for name in ("edge_cpu_ghz", "edge_storage_mb", "inter_link_mbps"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have one value per edge server ({n})")
            if min(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive")
        if len(self.line_y_m) != self.num_lines:
            raise ValueError("line_y_m must have one value per production line")
        for name in ("controller_cpu_ghz", "camera_cpu_ghz", "report_input_mbit", "report_output_mbit",
                     "report_tokens", "image_input_mbit", "image_output_mbit", "image_steps"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi")
        kinds = {m.kind for m in self.models}
        if kinds != {"report", "image"}:
            raise ValueError("models must contain at least one report model and one image model")
        largest = max(m.size_mb for m in self.models)
        if min(self.edge_storage_mb) < largest:
            raise ValueError(f"every edge_storage_mb must hold the largest model ({largest} MB)")
        k = len(self.zipf_exponents)
        P = np.asarray(self.zipf_transition, dtype=np.float64)
        if k < 1 or P.shape != (k, k) or np.any(P < 0) or not np.allclose(P.sum(axis=1), 1.0):
            raise ValueError("zipf_transition must be a row-stochastic square matrix, one row per zipf exponent")
        if not self.share_levels or min(self.share_levels) <= 0 or max(self.share_levels) > 1:
            raise ValueError("share_levels must be values in (0, 1]")
        return self

    @property
    def num_devices(self) -> int:
        return self.num_controllers + self.num_cameras

    @property
    def num_edges(self) -> int:
        return len(self.edge_xy_m)

    def key_parameters(self) -> dict[str, object]:
        rep = [m for m in self.models if m.kind == "report"]
        img = [m for m in self.models if m.kind == "image"]
        return {**super().key_parameters(), "devices": f"{self.num_controllers}+{self.num_cameras}",
                "edges": self.num_edges, "edge_ghz": "/".join(f"{f:g}" for f in self.edge_cpu_ghz),
                "models": f"{len(rep)} text + {len(img)} image", "storage_mb": self.edge_storage_mb[0],
                "download_mbps": self.cloud_download_mbps, "backhaul_mbps": self.cloud_backhaul_mbps,
                "p_arrival": f"{self.arrival_prob_controller}/{self.arrival_prob_camera}",
                "deadline_s": f"{self.report_deadline_s}/{self.image_deadline_s}",
                "forwarding": self.edge_forwarding}


# --------------------------------------------------------------------------------------------
# Live state: what a deployed gateway knows about one task (spec §3), the input of live_view()
# --------------------------------------------------------------------------------------------
class LiveStateError(ValueError):
    """A live task or state does not fit the preset (unknown model, wrong number of servers)."""


class LiveTask(BaseModel):
    """One task request as the gateway sees it."""

    model_config = ConfigDict(extra="forbid")

    device: int = Field(0, ge=0, description="index of the asking device in the deployment (for round-robin state)")
    kind: Literal["report", "image"] = Field(description="report (text model) or image (diffusion model)")
    model: str = Field(min_length=1, description="catalog model name the task needs (preset models[].name)")
    units: int = Field(gt=0, description="tokens to generate (report) or denoising steps (image)")
    input_mbit: float = Field(ge=0, description="input size to upload, Mbit")
    output_mbit: float = Field(ge=0, description="result size to send back, Mbit")
    deadline_s: float = Field(gt=0, description="relative deadline, s")


class LiveState(BaseModel):
    """The gateway's knowledge when the task arrives: the device, the channel estimate, the edge
    servers' last status, the cloud links. Lists have one entry per edge server, in index order."""

    model_config = ConfigDict(extra="forbid")

    device_cpu_ghz: float = Field(gt=0, description="the device's CPU, GHz")
    device_backlog_s: float = Field(0.0, ge=0, description="work queued on the device, s")
    uplink_mbps: list[float] = Field(description="nominal uplink rate device -> each edge server, Mbit/s")
    edge_backlog_s: list[float] = Field(description="compute backlog of each edge server, s")
    edge_cpu_ghz: list[float] = Field(description="CPU of each edge server, GHz")
    edge_cached_models: list[list[str]] = Field(description="model names each edge server holds")
    backhaul_backlog_s: float = Field(0.0, ge=0, description="backlog of the edge <-> cloud backhaul, s")
    cloud_download_mbps: float | None = Field(None, gt=0, description="cloud -> edge download rate, Mbit/s (preset if absent)")
    backhaul_mbps: float | None = Field(None, gt=0, description="edge <-> cloud task backhaul rate, Mbit/s (preset if absent)")
    relay_edge: int | None = Field(None, ge=0, description="server relaying cloud traffic (default: best uplink)")

    @model_validator(mode="after")
    def _physical_entries(self) -> "LiveState":
        """Per-server entries that mean something: rates and backlogs >= 0, CPUs > 0 (NaN is refused by
        the decision engine; the number of entries and the indices are checked against the plant)."""
        for name, positive in (("uplink_mbps", False), ("edge_backlog_s", False), ("edge_cpu_ghz", True)):
            for j, x in enumerate(getattr(self, name)):
                if x < 0 or (positive and x == 0):
                    raise ValueError(f"{name}[{j}] is {x:g}; it must be {'positive' if positive else 'at least 0'}")
        return self


# --------------------------------------------------------------------------------------------
# Observation layout
# --------------------------------------------------------------------------------------------
class _LayoutDim:
    """``obs_dim()`` on the class (the shipped preset's sizes) or on an instance (its preset's)."""

    def __get__(self, obj: Any, owner: type) -> Any:
        layout = (obj if obj is not None else owner).OBS_LAYOUT
        return lambda: sum(f.width for f in layout)


def _obs_layout(num_edges: int, num_models: int) -> tuple[ObsField, ...]:
    """What a gateway knows when a task request arrives (spec §3): the request, the device, the
    channel estimate and the edge servers' last status; never the fading realisation to come."""
    return (
        ObsField("kind", "0/1", 1.0, 1, "0 = report (text), 1 = defect image (diffusion)"),
        ObsField("model", "one-hot", 1.0, num_models, "generative model the task needs"),
        ObsField("input_mbit", "Mbit", 10.0, 1, "input size x"),
        ObsField("work_gcycles", "Gcycles", 10.0, 1, "work W = units x cycles per unit"),
        ObsField("output_mbit", "Mbit", 1.0, 1, "result size"),
        ObsField("deadline_s", "s", 1.0, 1, "relative deadline"),
        ObsField("device_cpu_ghz", "GHz", 5.0, 1, "device CPU f_m"),
        ObsField("device_backlog_s", "s", 1.0, 1, "device compute queue backlog"),
        ObsField("model_size_mb", "MB", 250.0, 1, "size of the needed model (download volume)"),
        ObsField("uplink_mbps", "Mbit/s", 50.0, num_edges, "nominal uplink rate to each edge server (no fading)"),
        ObsField("edge_backlog_s", "s", 1.0, num_edges, "compute backlog of each edge server"),
        ObsField("edge_cached", "0/1", 1.0, num_edges, "each edge server holds the needed model"),
        ObsField("edge_cpu_ghz", "GHz", 50.0, num_edges, "CPU of each edge server"),
        ObsField("cloud_download_mbps", "Mbit/s", 1000.0, 1, "cloud -> edge model-download rate"),
        ObsField("backhaul_mbps", "Mbit/s", 100.0, 1, "edge <-> cloud task backhaul rate"),
        ObsField("backhaul_backlog_s", "s", 1.0, 1, "backlog of the shared cloud backhaul"),
    )


# --------------------------------------------------------------------------------------------
# Edge-tier hooks (spec §8): who runs a task that reached the edge tier, and what the caches hold
# --------------------------------------------------------------------------------------------
@dataclass
class EdgeTierRequest:
    """The tasks of one pricing call that reached the edge tier (gateway target edge n, eta > 0), as
    the edge tier knows them: LAD-TS's decision is, per station n (the entry server), the server that
    runs each of its tasks (spec §8.1). Arrays have one row per task, in booking order."""

    slot: int
    rows: np.ndarray  # (n,) task rows of the simulator
    group: np.ndarray  # (n,) pricing copy (opt prices alternatives in groups); 0 in a booking
    station: np.ndarray  # (n,) entry server (the gateway's target edge), the LAD-TS "station"
    input_mbit: np.ndarray  # (n,) offloaded input eta x, Mbit (LAD-TS d_n)
    work_gcycles: np.ndarray  # (n,) offloaded work eta W, Gcycles (LAD-TS w_n)
    output_mbit: np.ndarray  # (n,) offloaded result eta y, Mbit
    model: np.ndarray  # (n,) model index
    can_run: np.ndarray  # (n, N) bool: the server holds the model (the station also if it downloads it)
    est_finish_s: np.ndarray  # (n, N) the §1.4 finish estimate from slot-start status, inf where it cannot run
    backlog_s: np.ndarray  # (N,) compute backlog of each server at the slot start, s
    edge_ghz: np.ndarray  # (N,) CPU of each server, GHz
    commit: bool  # True: the slot is being booked (step); False: a hypothetical pricing (opt, FactoryEnv)

    @property
    def n(self) -> int:
        return int(self.rows.size)


class EdgeScheduler(abc.ABC):
    """Inter-server scheduling of the edge tier (spec §8.1). ``schedule`` returns, per task of the
    request, the server that runs it (0..N-1). A server that cannot run the task (``can_run`` False)
    means "no forwarding": the task stays at its station if the station can run it, else it goes to the
    cloud (as a miss with beta = 0 and no holder). It may be called more than once per slot with
    ``commit = False`` when a policy prices alternatives (opt)."""

    name = "scheduler"

    def reset(self, sim: "FactorySimulator") -> None:
        """Called by ``FactorySimulator.reset`` at the start of every episode."""

    @abc.abstractmethod
    def schedule(self, sim: "FactorySimulator", req: EdgeTierRequest) -> np.ndarray:
        """The server (0..N-1) that runs each task of ``req``."""


class EarliestFinishScheduler(EdgeScheduler):
    """The factory's default rule (LAD-TS §1.5 Opt-TS rule on slot-start status, spec §1.4): the server
    with the earliest estimated finish, ties stay at the station. Identical to ``edge_scheduler = None``
    with ``edge_forwarding: true``."""

    name = "earliest_finish"

    def schedule(self, sim: "FactorySimulator", req: EdgeTierRequest) -> np.ndarray:
        i = np.arange(req.n)
        best = np.argmin(req.est_finish_s, axis=1)
        stay = req.est_finish_s[i, req.station] <= req.est_finish_s[i, best]
        return np.where(stay, req.station, best)


class StayScheduler(EdgeScheduler):
    """No inter-server scheduling: every task runs at its station (``edge_forwarding: false``)."""

    name = "stay"

    def schedule(self, sim: "FactorySimulator", req: EdgeTierRequest) -> np.ndarray:
        return req.station.copy()


@dataclass
class CachePlan:
    """EdgeAIGC's per-period decision for the edge servers (spec §8.2): ``cache`` (N, L) bool, the
    models each server holds from this period on (sum_m cache X_m <= S_n, EdgeAIGC eq. 16 / 18e);
    ``download_share`` (N, L) in [0, 1], the share of the server's cloud download link r_c each newly
    cached model gets (sum over a server's new models <= 1, 18c/18f analogue; read only where a model is
    new)."""

    cache: np.ndarray
    download_share: np.ndarray


class CachePolicy(abc.ABC):
    """Caching and download-bandwidth allocation of the edge servers, every ``period_slots`` slots
    (spec §8.2). ``plan`` sees the simulator at the period's first slot start (before its view is
    built) and returns a :class:`CachePlan`; between plans the caches evolve by the default rule (the
    gateway's per-task downloads, LRU eviction)."""

    name = "cache"
    period_slots = 1

    def reset(self, sim: "FactorySimulator") -> None:
        """Called by ``FactorySimulator.reset`` at the start of every episode."""

    @abc.abstractmethod
    def plan(self, sim: "FactorySimulator") -> CachePlan:
        """The caches and download shares from this slot on."""


class KeepCachePolicy(CachePolicy):
    """The default rule as a plan: keep what the caches hold (LRU with per-task downloads acts between
    plans). Identical to ``cache_policy = None``."""

    name = "lru"

    def plan(self, sim: "FactorySimulator") -> CachePlan:
        return CachePlan(sim.cache.copy(), np.zeros((sim.N, sim.L)))


# --------------------------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------------------------
class FactorySimulator(Simulator):
    """Factory plant (spec §1): per-slot batches of new tasks, FIFO device / edge / backhaul queues
    with deadline drops, LRU model caches with storage budgets, a cloud with every model."""

    name = "factory"
    Preset = Preset
    TASK_FIELDS = {
        "slot": "slot index; arrival slot t (arrives at t * slot_s)",
        "source": "device index; the device asking (controllers first, then cameras)",
        "kind": "0/1; 0 = report (text), 1 = defect image (diffusion)",
        "model": "model index; the catalog model the task needs",
        "units": "tokens or steps; generated tokens (report) or denoising steps z (image)",
        "input_mbit": "Mbit; input size x",
        "work_gcycles": "Gcycles; work W = units x Gcycles per unit of the model",
        "output_mbit": "Mbit; result size",
        "deadline_s": "s; relative deadline",
    }
    TASK_DTYPES = {"slot": np.int64, "source": np.int64, "kind": np.int64, "model": np.int64, "units": np.int64}
    PARAM_FIELDS = {
        "device_cpu_ghz": "GHz; CPU f_m of each device",
        "device_xy_m": "m; (x, y) position of each device on the floor",
        "fading": "1; Rayleigh power gain |delta|^2 of each device's uplink, per slot (slots x devices)",
        "zipf_exponent": "1; popularity exponent gamma of each slot (Markov-modulated)",
        "edge_cpu_ghz": "GHz; CPU f_n of each edge server",
    }
    POLICIES = ("random", "round_robin", "greedy", "local", "opt")
    MULTI_AGENT = False
    OBS_LAYOUT = _obs_layout(4, 8)
    obs_dim = _LayoutDim()

    def __init__(self, preset: Preset):
        super().__init__(preset)
        p = preset
        self.M, self.N, self.L = p.num_devices, p.num_edges, len(p.models)
        self.OBS_LAYOUT = _obs_layout(self.N, self.L)
        self.target_names = ("local",) + tuple(f"edge{n}" for n in range(self.N)) + ("cloud",)
        self.K = self.N + 2
        self.CLOUD = self.N + 1
        self.device_kind = np.r_[np.full(p.num_controllers, KIND_REPORT), np.full(p.num_cameras, KIND_IMAGE)]
        self.model_kind = np.array([KIND_REPORT if m.kind == "report" else KIND_IMAGE for m in p.models])
        self.model_bits = np.array([m.size_mb for m in p.models]) * BITS_PER_MB
        self.model_size_mb = np.array([m.size_mb for m in p.models])
        self.model_gcycles = np.array([m.gcycles_per_unit for m in p.models])
        self.kind_models = [np.flatnonzero(self.model_kind == k) for k in (KIND_REPORT, KIND_IMAGE)]
        self.edge_xy = np.asarray(p.edge_xy_m, dtype=np.float64)
        self.storage_bits = np.asarray(p.edge_storage_mb) * BITS_PER_MB
        v = np.asarray(p.inter_link_mbps) * BITS_PER_MBIT
        self.inter_bps = np.minimum(v[:, None], v[None, :])  # a pair's link runs at the slower end
        self.download_bps = p.cloud_download_mbps * BITS_PER_MBIT
        self.backhaul_bps = p.cloud_backhaul_mbps * BITS_PER_MBIT
        self.cloud_hz = p.cloud_cpu_ghz * 1e9
        self.noise_w = float(noise_power_w(p.noise_dbm_per_hz, p.bandwidth_hz))
        self.t = 0
        # Edge-tier hooks (spec §8): None = the default rules (preset edge_forwarding; LRU with per-task
        # downloads), bit-identical to the simulator without hooks.
        self.edge_scheduler: EdgeScheduler | None = None
        self.cache_policy: CachePolicy | None = None
        self._committing = False

    # -- workload -------------------------------------------------------------------------
    def generate_workload(self, rng: np.random.Generator, episode: int) -> Workload:
        """Draw one episode (spec §1.2): device CPUs and positions, Rayleigh fading per slot,
        the popularity state path, Bernoulli arrivals, Zipf model choice, sizes and work."""
        p = self.preset
        T, M = p.slots_per_episode, self.M
        kind = self.device_kind
        lo = np.where(kind == KIND_REPORT, p.controller_cpu_ghz[0], p.camera_cpu_ghz[0])
        hi = np.where(kind == KIND_REPORT, p.controller_cpu_ghz[1], p.camera_cpu_ghz[1])
        cpu = rng.uniform(lo, hi)
        line = np.arange(M) % p.num_lines
        xy = np.stack([rng.uniform(0.0, p.floor_length_m, M),
                       np.asarray(p.line_y_m)[line] + rng.uniform(-p.device_y_jitter_m, p.device_y_jitter_m, M)], axis=1)
        fading = rayleigh_power_gain(rng, (T, M))
        P = np.asarray(p.zipf_transition, dtype=np.float64)
        state = markov_chain_path(rng, P, int(rng.integers(len(p.zipf_exponents))), T)
        gamma = np.asarray(p.zipf_exponents)[state]
        prob = np.where(kind == KIND_REPORT, p.arrival_prob_controller, p.arrival_prob_camera)
        arrive = rng.random((T, M)) < prob[None, :]
        slot, src = np.nonzero(arrive)  # row-major: sorted by slot, then device
        n = slot.size
        k = kind[src]
        rep = k == KIND_REPORT
        # Zipf rank within the task's kind under the slot's exponent (EdgeAIGC eq. 2), by inverse CDF.
        u = rng.random(n)
        model = np.empty(n, dtype=np.int64)
        for kk in (KIND_REPORT, KIND_IMAGE):
            models = self.kind_models[kk]
            cdf = np.stack([np.cumsum(zipf_probabilities(models.size, g)) for g in p.zipf_exponents])
            sel = k == kk
            rank = (u[sel, None] > cdf[state[slot[sel]]]).sum(axis=1)
            model[sel] = models[np.minimum(rank, models.size - 1)]
        units = np.where(rep, rng.integers(p.report_tokens[0], p.report_tokens[1] + 1, n),
                         rng.integers(p.image_steps[0], p.image_steps[1] + 1, n))
        in_mbit = np.where(rep, rng.uniform(*p.report_input_mbit, n), rng.uniform(*p.image_input_mbit, n))
        out_mbit = np.where(rep, rng.uniform(*p.report_output_mbit, n), rng.uniform(*p.image_output_mbit, n))
        work = np.where(rep, token_workload_cycles(units, self.model_gcycles[model]),
                        denoising_workload_cycles(units, self.model_gcycles[model]))  # LAD-TS eq. 3, Gcycles
        tasks = {
            "slot": slot.astype(np.int64), "source": src.astype(np.int64), "kind": k.astype(np.int64),
            "model": model, "units": units.astype(np.int64), "input_mbit": in_mbit, "work_gcycles": work,
            "output_mbit": out_mbit,
            "deadline_s": np.where(rep, p.report_deadline_s, p.image_deadline_s).astype(np.float64),
        }
        params = {"device_cpu_ghz": cpu, "device_xy_m": xy, "fading": fading, "zipf_exponent": gamma,
                  "edge_cpu_ghz": np.asarray(p.edge_cpu_ghz, dtype=np.float64)}
        return Workload(self.name, episode, params, tasks)

    # -- episode ----------------------------------------------------------------------------
    def reset(self, workload: Workload) -> None:
        workload.check(self.TASK_FIELDS, self.PARAM_FIELDS)
        p, M, N, T = self.preset, self.M, self.N, self.preset.slots_per_episode
        ep = workload.episode
        prm = {k: np.asarray(v, dtype=np.float64) for k, v in workload.params.items()}
        shapes = {"device_cpu_ghz": (M,), "device_xy_m": (M, 2), "fading": (T, M), "zipf_exponent": (T,),
                  "edge_cpu_ghz": (N,)}
        for name, shape in shapes.items():
            if prm[name].shape != shape:
                raise TraceError(f"parameter '{name}' of episode {ep} has shape {prm[name].shape}, "
                                 f"the preset needs {shape}")
        if np.any(prm["device_cpu_ghz"] <= 0) or np.any(prm["edge_cpu_ghz"] <= 0) or np.any(prm["fading"] < 0):
            raise TraceError(f"workload of episode {ep} has a non-positive CPU or a negative fading gain")
        tk = workload.tasks
        slot = np.asarray(tk["slot"], dtype=np.int64)
        src = np.asarray(tk["source"], dtype=np.int64)
        model = np.asarray(tk["model"], dtype=np.int64)
        kind = np.asarray(tk["kind"], dtype=np.int64)
        if slot.size:
            if slot.min() < 0 or slot.max() >= T:
                raise TraceError(f"workload of episode {ep} has a slot outside 0..{T - 1}")
            if src.min() < 0 or src.max() >= M:
                raise TraceError(f"workload of episode {ep} names a device outside 0..{M - 1}")
            if model.min() < 0 or model.max() >= self.L:
                raise TraceError(f"workload of episode {ep} names a model outside 0..{self.L - 1}")
            if np.any(self.model_kind[model] != kind) or np.any(self.device_kind[src] != kind):
                raise TraceError(f"workload of episode {ep} has a task whose kind does not match its model or device")
        floats = {k: np.asarray(tk[k], dtype=np.float64) for k in ("input_mbit", "work_gcycles", "output_mbit", "deadline_s")}
        if any(np.any(v < 0) for v in floats.values()) or np.any(floats["deadline_s"] <= 0):
            raise TraceError(f"workload of episode {ep} has a negative size or work, or a non-positive deadline")
        self.workload = workload
        self.slot_of, self.src, self.model, self.kind = slot, src, model, kind
        self.in_bits = floats["input_mbit"] * BITS_PER_MBIT
        self.out_bits = floats["output_mbit"] * BITS_PER_MBIT
        self.work = floats["work_gcycles"] * 1e9
        self.deadline = floats["deadline_s"]
        self.dev_hz = prm["device_cpu_ghz"] * 1e9
        self.edge_hz = prm["edge_cpu_ghz"] * 1e9
        self.fading = prm["fading"]
        self.dist = np.linalg.norm(prm["device_xy_m"][:, None, :] - self.edge_xy[None, :, :], axis=2)  # (M, N) m
        self.gain0 = channel_gain(self.dist)  # path loss only, E|delta|^2 = 1
        self.rate_nominal = shannon_rate_bps(p.bandwidth_hz, p.tx_power_w, self.gain0, self.noise_w)  # (M, N)
        self.gateway = np.argmin(self.dist, axis=1)  # the device's nearest server relays cloud traffic
        self.offsets = workload.slot_offsets(T)
        n = slot.size
        # Queue pointers (absolute s): device CPUs, edge CPUs, the shared backhaul.
        self.free_dev = np.zeros(M)
        self.free_edge = np.zeros(N)
        self.free_bh = np.zeros(1)
        self.cache, self.stamp = self._initial_cache()
        self.ready = np.zeros((N, self.L))  # when a cached model is usable (download finish), s
        self._clock = 0
        # Per-task outcome, filled when the task's slot is decided.
        self.status = np.zeros(n, dtype=np.int64)
        self.reason = np.zeros(n, dtype=np.int64)
        self.latency = np.zeros(n)
        self.energy = np.zeros(n)
        self.cost = np.zeros(n)
        self.reward = np.zeros(n)
        self.target = np.full(n, -1, dtype=np.int64)
        self.share = np.zeros(n)
        self.exec_at = np.full(n, -1, dtype=np.int64)  # edge server that ran the remote part, -1 none
        self.edge_start = np.zeros(n)  # when the remote part started at exec_at, s
        self.edge_served = np.zeros(n)  # compute time it got there (less than needed if aborted), s
        self.hit = np.zeros(n, dtype=bool)
        self.edge_chosen = np.zeros(n, dtype=bool)
        self.to_cloud = np.zeros(n, dtype=bool)
        self.downloads = 0
        self.edge_busy_s = np.zeros(N)  # edge compute time inside the episode horizon
        self.t = 0
        self._view: OffloadView | None = None
        self.decisions = 0
        self._planned_slot = -1  # last slot whose cache plan was applied (spec §8.2)
        self.plan_downloads = 0  # downloads started by cache plans (also counted in ``downloads``)
        for hook in (self.edge_scheduler, self.cache_policy):
            if hook is not None:
                hook.reset(self)

    def _initial_cache(self) -> tuple[np.ndarray, np.ndarray]:
        """Warm start (spec §1.6): server n fills its budget from the popularity order (text and
        image ranks interleaved) rotated by 2n, so the servers start with different models."""
        cache = np.zeros((self.N, self.L), dtype=bool)
        stamp = np.zeros((self.N, self.L))
        if self.preset.initial_cache == "empty":
            return cache, stamp
        rep, img = self.kind_models
        order = [int(m) for pair in zip(rep, img) for m in pair] + [int(m) for m in rep[img.size:]] + \
                [int(m) for m in img[rep.size:]]
        for n in range(self.N):
            used = 0.0
            j = (2 * n) % len(order)  # one (text, image) rank pair further per server
            rot = order[j:] + order[:j]
            for i, m in enumerate(rot):
                if used + self.model_bits[m] <= self.storage_bits[n]:
                    cache[n, m] = True
                    stamp[n, m] = -i  # the first (most popular) is the most recently used
                    used += self.model_bits[m]
        return cache, stamp

    @property
    def done(self) -> bool:
        return self.t >= self.preset.slots_per_episode

    def rows(self, t: int | None = None) -> np.ndarray:
        t = self.t if t is None else t
        return np.arange(int(self.offsets[t]), int(self.offsets[t + 1]))

    def view(self) -> OffloadView:
        """The new tasks of slot t with the gateway's knowledge at the slot start (spec §3)."""
        if self._view is not None and self._view.slot == self.t:
            return self._view
        self._apply_cache_plan()
        r = self.rows()
        n, N = r.size, self.N
        t0 = self.t * self.preset.slot_s
        dev, mdl = self.src[r], self.model[r]
        features = {
            "kind": self.kind[r].astype(np.float64), "model": mdl,
            "input_mbit": self.in_bits[r] / BITS_PER_MBIT, "work_gcycles": self.work[r] / 1e9,
            "output_mbit": self.out_bits[r] / BITS_PER_MBIT, "deadline_s": self.deadline[r],
            "device_cpu_ghz": self.dev_hz[dev] / 1e9,
            "device_backlog_s": np.maximum(self.free_dev[dev] - t0, 0.0),
            "model_size_mb": self.model_size_mb[mdl],
            "uplink_mbps": self.rate_nominal[dev] / BITS_PER_MBIT,
            "edge_backlog_s": np.broadcast_to(np.maximum(self.free_edge - t0, 0.0), (n, N)),
            "edge_cached": self.cache[:, mdl].T.astype(np.float64),
            "edge_cpu_ghz": np.broadcast_to(self.edge_hz / 1e9, (n, N)),
            "cloud_download_mbps": np.full(n, self.preset.cloud_download_mbps),
            "backhaul_mbps": np.full(n, self.preset.cloud_backhaul_mbps),
            "backhaul_backlog_s": np.full(n, max(float(self.free_bh[0]) - t0, 0.0)),
        }
        self._view = self.build_view(self.t, dev, features, self.gateway[dev])
        return self._view

    def _apply_cache_plan(self) -> None:
        """At the first slot start of every period, set the caches to the cache policy's plan (spec §8.2):
        a model new at server n is downloaded from the cloud over n's link at share s of r_c, usable at
        t0 + X / (s r_c) (MATO eq. 7); a dropped model is evicted (tasks already booked keep theirs)."""
        cp = self.cache_policy
        if cp is None or self.done or self._planned_slot == self.t or self.t % max(int(cp.period_slots), 1):
            return
        self._planned_slot = self.t
        plan = cp.plan(self)
        cache = np.asarray(plan.cache, dtype=bool)
        share = np.asarray(plan.download_share, dtype=np.float64)
        if cache.shape != (self.N, self.L) or share.shape != (self.N, self.L):
            raise ValueError(f"cache plan must be ({self.N}, {self.L}) arrays, got {cache.shape} and {share.shape}")
        used = (cache * self.model_bits).sum(axis=1)
        if np.any(used > self.storage_bits + 1e-6):
            raise ValueError("cache plan exceeds a server's storage budget (EdgeAIGC eq. 16)")
        new = cache & ~self.cache
        s_new = np.where(new, share, 0.0)
        if np.any(s_new[new] <= 0) or np.any(s_new > 1) or np.any(s_new.sum(axis=1) > 1 + 1e-9):
            raise ValueError("cache plan download shares must be in (0, 1] for new models and sum to <= 1 per server")
        t0 = self.t * self.preset.slot_s
        n_idx, m_idx = np.nonzero(new)
        self.ready[n_idx, m_idx] = t0 + transmission_delay_s(self.model_bits[m_idx], s_new[n_idx, m_idx] * self.download_bps)
        gone = self.cache & ~cache
        self.ready[gone] = 0.0
        # New models enter as the most recently used (in model order), so LRU acts on them last.
        self.stamp[n_idx, m_idx] = self._clock + 1.0 + np.arange(n_idx.size)
        self._clock += n_idx.size
        self.cache = cache.copy()
        self.downloads += int(n_idx.size)
        self.plan_downloads += int(n_idx.size)

    def build_view(self, slot: int, source: np.ndarray, features: dict[str, np.ndarray],
                   relay_edge: np.ndarray) -> OffloadView:
        """The one place that turns the gateway's knowledge into an :class:`OffloadView` (spec §3),
        used by the simulator and by the deployed gateway (``live_view``), so both feed a policy
        the same thing. ``features`` holds the OBS_LAYOUT entries in their units, one row per task;
        ``relay_edge`` is the server that relays each task's cloud traffic (the device's nearest)."""
        n = np.asarray(source).size
        in_bits = np.asarray(features["input_mbit"], dtype=np.float64) * BITS_PER_MBIT
        exp_up = transmission_delay_s(in_bits[:, None], np.asarray(features["uplink_mbps"]) * BITS_PER_MBIT)
        gw_up = exp_up[np.arange(n), np.asarray(relay_edge, dtype=np.int64)]
        backhaul_bps = np.asarray(features["backhaul_mbps"], dtype=np.float64) * BITS_PER_MBIT
        cloud_delay = gw_up + transmission_delay_s(in_bits, backhaul_bps)
        proximity = np.concatenate([np.zeros((n, 1)), exp_up, cloud_delay[:, None]], axis=1)
        cached = np.asarray(features["edge_cached"]) > 0.5
        compatible = np.concatenate([np.ones((n, 1), bool), cached, np.ones((n, 1), bool)], axis=1)
        return OffloadView(
            slot=slot, target_names=self.target_names, source=np.asarray(source, dtype=np.int64),
            allowed=np.ones((n, self.K), dtype=bool), local_target=0, proximity=proximity,
            compatible=compatible, has_share=True, has_download=True, features=features)

    def live_view(self, tasks: "list[LiveTask]", states: "list[LiveState]", slot: int = 0) -> OffloadView:
        """View of tasks a deployed gateway holds, from its live state (edge-server status, device
        registry, channel estimates) instead of the simulator's queues; same builder as ``view()``."""
        if len(tasks) != len(states):
            raise ValueError(f"live_view needs one state per task ({len(tasks)} tasks, {len(states)} states)")
        N = self.N
        names = {m.name: i for i, m in enumerate(self.preset.models)}
        rows: dict[str, list] = {k: [] for k in ("kind", "model", "input_mbit", "work_gcycles", "output_mbit",
                                                 "deadline_s", "device_cpu_ghz", "device_backlog_s", "model_size_mb",
                                                 "uplink_mbps", "edge_backlog_s", "edge_cached", "edge_cpu_ghz",
                                                 "cloud_download_mbps", "backhaul_mbps", "backhaul_backlog_s")}
        source, relay = [], []
        for i, (task, st) in enumerate(zip(tasks, states)):
            if task.model not in names:
                raise LiveStateError(f"task {i} asks for model '{task.model}', which the preset's catalog "
                                     f"({', '.join(names)}) does not hold")
            m = names[task.model]
            kind = int(self.model_kind[m])
            if ("image" if kind == KIND_IMAGE else "report") != task.kind:
                raise LiveStateError(f"task {i}: model '{task.model}' makes {['reports', 'images'][kind]}, "
                                     f"not {task.kind}s")
            for name in ("uplink_mbps", "edge_backlog_s", "edge_cpu_ghz", "edge_cached_models"):
                if len(getattr(st, name)) != N:
                    raise LiveStateError(f"state of task {i}: {name} has {len(getattr(st, name))} entries, "
                                         f"the preset has {N} edge servers")
            work = (token_workload_cycles if kind == KIND_REPORT else denoising_workload_cycles)(
                task.units, self.model_gcycles[m])
            rows["kind"].append(float(kind))
            rows["model"].append(m)
            rows["input_mbit"].append(task.input_mbit)
            rows["work_gcycles"].append(float(work))
            rows["output_mbit"].append(task.output_mbit)
            rows["deadline_s"].append(task.deadline_s)
            rows["device_cpu_ghz"].append(st.device_cpu_ghz)
            rows["device_backlog_s"].append(st.device_backlog_s)
            rows["model_size_mb"].append(float(self.model_size_mb[m]))
            rows["uplink_mbps"].append(list(st.uplink_mbps))
            rows["edge_backlog_s"].append(list(st.edge_backlog_s))
            rows["edge_cached"].append([float(task.model in c) for c in st.edge_cached_models])
            rows["edge_cpu_ghz"].append(list(st.edge_cpu_ghz))
            rows["cloud_download_mbps"].append(st.cloud_download_mbps if st.cloud_download_mbps is not None
                                               else self.preset.cloud_download_mbps)
            rows["backhaul_mbps"].append(st.backhaul_mbps if st.backhaul_mbps is not None
                                         else self.preset.cloud_backhaul_mbps)
            rows["backhaul_backlog_s"].append(st.backhaul_backlog_s)
            source.append(task.device)
            relay.append(int(np.argmax(st.uplink_mbps)) if st.relay_edge is None else st.relay_edge)
        n = len(tasks)
        feats = {k: (np.asarray(v, dtype=np.int64) if k == "model" else
                     np.asarray(v, dtype=np.float64).reshape(n, -1) if k in ("uplink_mbps", "edge_backlog_s",
                                                                         "edge_cached", "edge_cpu_ghz")
                     else np.asarray(v, dtype=np.float64)) for k, v in rows.items()}
        if n == 0:
            for k in ("uplink_mbps", "edge_backlog_s", "edge_cached", "edge_cpu_ghz"):
                feats[k] = np.zeros((0, N))
        return self.build_view(slot, np.asarray(source, dtype=np.int64), feats, np.asarray(relay, dtype=np.int64))

    # -- the cost of a batch of decisions ----------------------------------------------------
    def price(self, rows: np.ndarray, target: np.ndarray, share: np.ndarray, download: np.ndarray,
              group: np.ndarray | None = None, num_groups: int = 1) -> dict[str, np.ndarray]:
        """Outcome of booking ``rows`` (tasks of the current slot, in FIFO booking order) with the
        given decisions, against the current queue and cache state, without changing it.

        ``group`` splits the rows into independent copies of the state (the opt search prices
        many alternatives in one call); rows of one group see each other in FIFO order.
        Equations: spec §1.3-1.5 (MATO eqs. 3-13, LAD-TS eq. 2, EdgeAIGC eq. 11, MATO eq. 18).
        """
        p, N, M = self.preset, self.N, self.M
        n = rows.size
        g = np.zeros(n, dtype=np.int64) if group is None else np.asarray(group, dtype=np.int64)
        i = np.arange(n)
        t0 = self.slot_of[rows] * p.slot_s
        dev, mdl = self.src[rows], self.model[rows]
        W, D = self.work[rows], self.deadline[rows]
        target = np.asarray(target, dtype=np.int64)
        eta = np.where(target == 0, 0.0, np.clip(np.asarray(share, dtype=np.float64), 0.0, 1.0))
        remote = eta > 0
        edge_t = remote & (target >= 1) & (target <= N)
        cloud_t = remote & (target == self.CLOUD)
        entry = np.where(edge_t, target - 1, self.gateway[dev])  # server the upload reaches
        # Realised uplink with this slot's fading (MATO eq. 5 rate; EdgeAIGC eqs. 5-7).
        gain = self.gain0[dev, entry] * self.fading[self.slot_of[rows], dev]
        up_rate = shannon_rate_bps(p.bandwidth_hz, p.tx_power_w, gain, self.noise_w)
        in_r, out_r, w_r = eta * self.in_bits[rows], eta * self.out_bits[rows], eta * W
        up_s = np.where(remote, transmission_delay_s(in_r, up_rate), 0.0)  # MATO eq. 5
        # Edge: cache hit at the chosen server, download (beta) or forward (spec §1.4).
        hit = edge_t & self.cache[entry, mdl]
        dl_wanted = edge_t & ~hit & np.asarray(download, dtype=bool)
        dl_ready = t0 + transmission_delay_s(self.model_bits[mdl], self.download_bps)  # MATO eq. 7
        own_avail = np.where(hit, self.ready[entry, mdl], np.where(dl_wanted, dl_ready, np.inf))
        if p.edge_forwarding or self.edge_scheduler is not None:
            # LAD-TS inter-server scheduling by the edge tier: earliest estimated finish among the
            # servers that hold the model (the chosen one also if it downloads), from slot-start status.
            own = np.arange(N)[None, :] == entry[:, None]
            fwd = np.where(own, 0.0, transmission_delay_s(in_r[:, None], self.inter_bps[entry]))
            avail = np.where(self.cache[:, mdl].T, self.ready[:, mdl].T, np.inf)
            avail[i, entry] = own_avail
            est = np.maximum(np.maximum(t0[:, None] + up_s[:, None] + fwd, self.free_edge[None, :]), avail) + \
                compute_delay_s(w_r[:, None], self.edge_hz[None, :])
            if self.edge_scheduler is None:
                best = np.argmin(est, axis=1)
                stay = est[i, entry] <= est[i, best]
                exec_srv = np.where(stay, entry, best)
            else:  # the edge tier's scheduling policy (spec §8.1)
                exec_srv = entry.copy()
                ek = np.flatnonzero(edge_t)
                if ek.size:
                    req = EdgeTierRequest(
                        slot=self.t, rows=rows[ek], group=g[ek], station=entry[ek], input_mbit=in_r[ek] / BITS_PER_MBIT,
                        work_gcycles=w_r[ek] / 1e9, output_mbit=out_r[ek] / BITS_PER_MBIT, model=mdl[ek],
                        can_run=np.isfinite(est[ek]), est_finish_s=est[ek],
                        backlog_s=np.maximum(self.free_edge - self.t * p.slot_s, 0.0), edge_ghz=self.edge_hz / 1e9,
                        commit=self._committing)
                    ch = np.asarray(self.edge_scheduler.schedule(self, req), dtype=np.int64).reshape(-1)
                    if ch.shape != (ek.size,) or ch.min() < 0 or ch.max() >= N:
                        raise ValueError(f"edge scheduler '{self.edge_scheduler.name}' must name a server 0..{N - 1} "
                                         f"for each of the {ek.size} tasks")
                    exec_srv[ek] = np.where(np.isfinite(est[ek, ch]), ch, entry[ek])  # cannot run there: stays
            placed = edge_t & np.isfinite(est[i, exec_srv])
            fwd_s = np.where(placed, fwd[i, exec_srv], 0.0)
        else:
            exec_srv = entry.copy()
            placed = edge_t & np.isfinite(own_avail)
            fwd_s = np.zeros(n)
        on_edge = placed
        to_cloud = cloud_t | (edge_t & ~placed)  # beta = 0 on a miss and no holder: the edge forwards to the cloud
        downloaded = on_edge & (exec_srv == entry) & ~hit
        avail_e = np.where(downloaded, dl_ready, self.ready[exec_srv, mdl])
        back_s = transmission_delay_s(out_r, up_rate) + np.where(
            on_edge & (exec_srv != entry), transmission_delay_s(out_r, self.inter_bps[entry, exec_srv]), 0.0)
        # Edge FIFO with deadline aborts (MATO eqs. 9, 11; LAD-TS eq. 2; AIECOF eq. 18).
        e_start = np.zeros(n)
        e_served = np.zeros(n)
        e_ok = np.zeros(n, dtype=bool)
        e_queued = np.zeros(n, dtype=bool)
        ei = np.flatnonzero(on_edge)
        if ei.size:
            arrive = np.maximum(t0[ei] + up_s[ei] + fwd_s[ei], avail_e[ei])
            serv = compute_delay_s(w_r[ei], self.edge_hz[exec_srv[ei]])
            st, sv, _, ok, qd = fifo_finish_times_grouped_abort(
                g[ei] * N + exec_srv[ei], arrive, serv, np.tile(self.free_edge, num_groups),
                t0[ei] + D[ei] - back_s[ei])
            e_start[ei], e_served[ei], e_ok[ei], e_queued[ei] = st, sv, ok, qd
        edge_end = e_start + e_served + back_s
        # Cloud: shared backhaul FIFO, then 40 GHz without queue, then back (EdgeAIGC eq. 11).
        c_end = np.zeros(n)
        ci = np.flatnonzero(to_cloud)
        if ci.size:
            bh = fifo_finish_times_grouped(g[ci], t0[ci] + up_s[ci], transmission_delay_s(in_r[ci], self.backhaul_bps),
                                           np.tile(self.free_bh, num_groups))
            c_end[ci] = bh + compute_delay_s(w_r[ci], self.cloud_hz) + \
                transmission_delay_s(out_r[ci], self.backhaul_bps) + back_s[ci]
        c_ok = to_cloud & (c_end <= t0 + D + 1e-9)
        # Local part: device FIFO with deadline aborts (MATO eq. 3; AIECOF eqs. 2-4).
        w_loc = (1.0 - eta) * W
        has_loc = w_loc > 0
        l_start = np.zeros(n)
        l_served = np.zeros(n)
        l_ok = np.zeros(n, dtype=bool)
        li = np.flatnonzero(has_loc)
        if li.size:
            st, sv, _, ok, _ = fifo_finish_times_grouped_abort(
                g[li] * M + dev[li], t0[li], compute_delay_s(w_loc[li], self.dev_hz[dev[li]]),
                np.tile(self.free_dev, num_groups), t0[li] + D[li])
            l_start[li], l_served[li], l_ok[li] = st, sv, ok
        remote_ok = np.where(on_edge, e_ok, c_ok)
        done = (~has_loc | l_ok) & (~remote | remote_ok)
        end = np.maximum(np.where(has_loc, l_start + l_served, t0),
                         np.where(on_edge, edge_end, np.where(to_cloud, c_end, t0)))
        latency = np.where(done, end - t0, D)  # MATO eq. 13 when done; a drop ends at the deadline
        reason = np.where(done, 0, np.where(remote & ~remote_ok,
                                            np.where(to_cloud, 3, np.where(e_queued, 2, 4)), 1))
        # Device energy: executed local cycles plus the upload (MATO eqs. 4, 6).
        energy = compute_energy_j(l_served * self.dev_hz[dev], self.dev_hz[dev], p.kappa_device) + \
            transmission_energy_j(p.tx_power_w, up_s)
        cost = np.where(to_cloud, aigc_request_cost(in_r / BITS_PER_MB, out_r / BITS_PER_MB,
                                                    compute_delay_s(w_r, self.cloud_hz), True, 0.0,
                                                    p.cloud_relay_price_per_mb, p.cloud_compute_price_per_s), 0.0)
        reward = penalized_task_reward(latency, energy, cost, ~done, p.w_latency, p.w_energy, p.w_cost, p.drop_penalty)
        return {"done": done, "reason": reason, "latency": latency, "energy": energy, "cost": cost,
                "reward": reward, "eta": eta, "hit": hit, "edge_chosen": edge_t, "on_edge": on_edge,
                "to_cloud": to_cloud, "exec_srv": np.where(on_edge, exec_srv, -1), "downloaded": downloaded,
                "dl_ready": dl_ready, "e_start": e_start, "e_served": e_served, "l_start": l_start,
                "l_served": l_served, "bh_busy_until": t0 + up_s + transmission_delay_s(in_r, self.backhaul_bps),
                "remote": remote}

    # -- step -------------------------------------------------------------------------------
    def step(self, decision: OffloadDecision) -> None:
        """Book slot t's tasks in row order, record their terminal states, advance the queue
        pointers and the caches (LRU touch, downloads, eviction under the storage budget)."""
        view = self.view()
        decision.validate(view)
        r = self.rows()
        n = r.size
        share = np.where(decision.target == 0, 0.0, 1.0) if decision.share is None else decision.share
        download = np.zeros(n, dtype=bool) if decision.download is None else decision.download
        if n:
            self._committing = True
            try:
                o = self.price(r, decision.target, share, download)
            finally:
                self._committing = False
            self._commit(r, decision.target, o)
        self.decisions += n
        self.t += 1

    def _commit(self, r: np.ndarray, target: np.ndarray, o: dict[str, np.ndarray]) -> None:
        p = self.preset
        self.status[r] = np.where(o["done"], DONE, DROPPED)
        self.reason[r] = o["reason"]
        for k, arr in (("latency", self.latency), ("energy", self.energy), ("cost", self.cost),
                       ("reward", self.reward), ("eta", self.share), ("hit", self.hit),
                       ("edge_chosen", self.edge_chosen), ("to_cloud", self.to_cloud), ("exec_srv", self.exec_at)):
            arr[r] = o[k]
        self.target[r] = target
        self.edge_start[r], self.edge_served[r] = o["e_start"], o["e_served"]
        # Queue pointers advance to the end of the last served interval (aborted jobs free early).
        busy = o["l_served"] > 0
        np.maximum.at(self.free_dev, self.src[r][busy], (o["l_start"] + o["l_served"])[busy])
        ex = o["exec_srv"]
        busy = ex >= 0
        e_end = o["e_start"] + o["e_served"]
        np.maximum.at(self.free_edge, ex[busy], e_end[busy])
        horizon = p.slots_per_episode * p.slot_s
        np.add.at(self.edge_busy_s, ex[busy],
                  np.clip(np.minimum(e_end[busy], horizon) - o["e_start"][busy], 0.0, None))
        if o["to_cloud"].any():
            self.free_bh[0] = max(float(self.free_bh[0]), float(o["bh_busy_until"][o["to_cloud"]].max()))
        # Caches: touch the used models in booking order, add downloads, evict LRU (MATO §1.8).
        idx = np.flatnonzero(busy)
        srv, mdl = ex[idx], self.model[r[idx]]
        np.maximum.at(self.stamp, (srv, mdl), self._clock + 1.0 + np.arange(idx.size))  # booking order
        self._clock += idx.size
        new = o["downloaded"][idx] & ~self.cache[srv, mdl]
        if new.any():
            pairs = np.unique(srv[new] * self.L + mdl[new])
            self.downloads += int(pairs.size)  # one download per (server, model) serves the whole slot
            self.cache[srv[new], mdl[new]] = True
            self.ready[srv[new], mdl[new]] = o["dl_ready"][idx][new]
        touched = np.zeros(self.N, dtype=bool)
        touched[srv] = True
        for s in np.flatnonzero(touched):
            keep = lru_evict(self.cache[s], self.stamp[s], self.model_bits, self.storage_bits[s])
            self.ready[s, ~keep & self.cache[s]] = 0.0
            self.cache[s] = keep

    def episode_metrics(self) -> dict[str, float]:
        """Means per task (spec §1.7); every task ends done or dropped with a reason."""
        n = self.status.size
        if n == 0:
            return {"latency_s": 0.0, "energy_j": 0.0, "completion_rate": 0.0, "drop_rate": 0.0, "hit_rate": 0.0,
                    "load": 0.0, "cost": 0.0, "reward": 0.0, "tasks": 0.0}
        decided = self.status != PENDING
        d = self.status[decided]
        edge_chosen = self.edge_chosen[decided]
        horizon = self.preset.slots_per_episode * self.preset.slot_s
        out = {
            "latency_s": float(self.latency[decided].mean()),
            "energy_j": float(self.energy[decided].mean()),
            "completion_rate": float((d == DONE).mean()),
            "drop_rate": float((d == DROPPED).mean()),
            "hit_rate": float(self.hit[decided][edge_chosen].mean()) if edge_chosen.any() else 0.0,
            "load": float(self.edge_busy_s.sum() / (self.N * horizon)),
            "cost": float(self.cost[decided].mean()),
            "reward": float(self.reward[decided].mean()),
            "tasks": float(decided.sum()),
            "local_share": float((self.share[decided] == 0).mean()),
            "cloud_share": float(self.to_cloud[decided].mean()),
            "downloads": float(self.downloads),
            "forwarded": float(((self.exec_at >= 0) & (self.exec_at != self.target - 1))[decided].mean()),
        }
        for code, key in ((1, "drop_device"), (2, "drop_edge"), (3, "drop_cloud"), (4, "drop_late_arrival")):
            out[key] = float((self.reason[decided] == code).mean())
        return out

    # -- observation contract ---------------------------------------------------------------
    def observation(self, view: OffloadView) -> np.ndarray:
        """One float32 row per task, laid out as OBS_LAYOUT (value / scale); reads only the view."""
        ft = view.features
        n = view.n
        cols = []
        for f in self.OBS_LAYOUT:
            if f.name == "model":
                block = np.zeros((n, f.width))
                block[np.arange(n), np.asarray(ft["model"], dtype=np.int64)] = 1.0
            else:
                block = np.asarray(ft[f.name], dtype=np.float64).reshape(n, f.width) / f.scale
            cols.append(block)
        return np.concatenate(cols, axis=1).astype(np.float32) if n else np.zeros((0, self.obs_dim()), np.float32)

    def scenario_policy(self, name: str) -> Policy | None:
        return FactoryOptPolicy() if name == "opt" else None

    # -- helpers for opt and the RL wrapper ---------------------------------------------------
    def candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All (target, share, download) alternatives of one task: local, and every remote target
        at every share level with and without download (spec §4)."""
        lv = np.asarray(self.preset.share_levels, dtype=np.float64)
        tg = np.repeat(np.arange(1, self.K), lv.size * 2)
        sh = np.tile(np.repeat(lv, 2), self.K - 1)
        dl = np.tile(np.array([False, True]), (self.K - 1) * lv.size)
        keep = (tg <= self.N) | ~dl  # the download flag means nothing for the cloud
        return (np.r_[0, tg[keep]], np.r_[0.0, sh[keep]], np.r_[False, dl[keep]])

    def price_alternatives(self, k: int, prefix_target: np.ndarray, prefix_share: np.ndarray,
                           prefix_download: np.ndarray, target: np.ndarray, share: np.ndarray,
                           download: np.ndarray, with_done: bool = False):
        """Reward of the slot's task k under each alternative, after the decided tasks 0..k-1
        (each alternative is priced on its own copy of the state, in one vectorized call); with
        ``with_done`` also whether the task completes within its deadline under each alternative."""
        r = self.rows()
        C = target.size
        rows = np.tile(r[: k + 1], C)
        tg = np.concatenate([np.r_[prefix_target[:k], t] for t in target]) if C else np.zeros(0, np.int64)
        sh = np.concatenate([np.r_[prefix_share[:k], s] for s in share])
        dl = np.concatenate([np.r_[prefix_download[:k], d] for d in download]).astype(bool)
        o = self.price(rows, tg, sh, dl, group=np.repeat(np.arange(C), k + 1), num_groups=C)
        if with_done:
            return o["reward"][k:: k + 1], o["done"][k:: k + 1]
        return o["reward"][k:: k + 1]


# --------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------
class FactoryOptPolicy(Policy):
    """Opt-TS-style reference (LAD-TS §4.1 generalised): the slot's tasks in booking order, each
    takes the (target, share, download) with the best reward (MATO eq. 18) under the TRUE state
    (realised fading, queue pointers, caches and the slot's earlier decisions), by exhaustive
    search over targets x share levels x download.

    A strong reference, NOT a proven optimum: it is myopic (ignores the effect of today's queue
    and cache on later tasks) and searches a grid of shares.
    """

    name = "opt"
    needs_oracle = True

    def reset(self, rng: np.random.Generator, oracle: Simulator | None = None) -> None:
        super().reset(rng, oracle)
        if not isinstance(oracle, FactorySimulator):
            raise TypeError("the factory opt policy needs the factory simulator as its oracle")
        self.sim = oracle
        self.cand = oracle.candidates()

    def decide(self, view: OffloadView) -> OffloadDecision:
        n = view.n
        target = np.zeros(n, dtype=np.int64)
        share = np.zeros(n)
        download = np.zeros(n, dtype=bool)
        ct, cs, cd = self.cand
        for k in range(n):  # sequential by definition: each choice changes the queues the next task sees
            rew = self.sim.price_alternatives(k, target, share, download, ct, cs, cd)
            b = int(np.argmax(rew))
            target[k], share[k], download[k] = ct[b], cs[b], cd[b]
        return OffloadDecision(target=target, share=share, download=download)


# --------------------------------------------------------------------------------------------
# RL wrapper: the gateway decides task by task
# --------------------------------------------------------------------------------------------
class FactoryEnv(gym.Env):
    """Gymnasium view of the factory: one step per task decision, tasks in booking order.

    Observation: ``observation()`` of the slot's view (OBS_LAYOUT, float32). Action:
    MultiDiscrete([K, S, 2]) = (target index in ("local", "edge0".., "cloud"), share level index
    into ``share_levels``, download flag); the share is ignored for "local". Reward: the task's
    MATO eq. 18 reward, exactly the simulator's (priced with the slot's earlier decisions). The
    slot's decisions are applied when its last task is decided; the episode is truncated after
    the preset's slots.
    """

    metadata = {"name": "factory", "render_modes": []}

    def __init__(self, preset: str = "factory", seed: int | None = None, **overrides: Any):
        from policies.scenarios import make_simulator

        self.sim = make_simulator(preset, overrides, expect="factory")
        self.levels = np.asarray(self.sim.preset.share_levels, dtype=np.float64)
        self.observation_space = gym.spaces.Box(0.0, 1e6, shape=(self.sim.obs_dim(),), dtype=np.float32)
        self.action_space = gym.spaces.MultiDiscrete([self.sim.K, self.levels.size, 2])
        self._seed = 0 if seed is None else int(seed)
        self._episode = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._seed, self._episode = int(seed), 0
        wl = self.sim.generate_workload(episode_rng(self._seed, self._episode, 0), self._episode)
        self._episode += 1
        self.sim.reset(wl)
        self._begin_slot()
        return self._obs_row(), self._info()

    def _begin_slot(self) -> None:
        sim = self.sim
        while not sim.done and sim.view().n == 0:  # slots without tasks need no decision
            sim.step(OffloadDecision(target=np.zeros(0, dtype=np.int64)))
        self._view = sim.view() if not sim.done else None
        n = self._view.n if self._view is not None else 0
        self._obs = sim.observation(self._view) if n else np.zeros((0, sim.obs_dim()), np.float32)
        self._t = np.zeros(n, dtype=np.int64)
        self._s = np.zeros(n)
        self._d = np.zeros(n, dtype=bool)
        self._k = 0

    def _obs_row(self) -> np.ndarray:
        if self._view is None or self._k >= self._view.n:
            return np.zeros(self.sim.obs_dim(), dtype=np.float32)
        return self._obs[self._k].copy()

    def _info(self) -> dict:
        if self._view is None:
            return {"slot": self.sim.t}
        return {"slot": self._view.slot, "device": int(self._view.source[self._k])}

    def step(self, action):
        a = np.asarray(action, dtype=np.int64).reshape(-1)
        if a.size != 3 or not self.action_space.contains(a):
            raise ValueError(f"action {action!r} is not (target < {self.sim.K}, share level < {self.levels.size}, download < 2)")
        if self._view is None:
            raise RuntimeError("episode is over; call reset()")
        k = self._k
        tgt, sh, dl = int(a[0]), (0.0 if a[0] == 0 else float(self.levels[a[1]])), bool(a[2])
        reward = float(self.sim.price_alternatives(k, self._t, self._s, self._d, np.array([tgt]),
                                                   np.array([sh]), np.array([dl]))[0])
        self._t[k], self._s[k], self._d[k] = tgt, sh, dl
        self._k += 1
        if self._k == self._view.n:
            self.sim.step(OffloadDecision(target=self._t.copy(), share=self._s.copy(), download=self._d.copy()))
            self._begin_slot()
        truncated = self._view is None
        return self._obs_row(), reward, False, truncated, self._info()
