"""The scenario contract shared by every simulator, policy, evaluation and (later) the gateway.

A scenario is a :class:`Simulator` over a preset. One episode:

    sim.reset(workload)                 # workload: every exogenous draw of the episode
    while not sim.done:
        view = sim.view()               # what a decision maker may know at this decision point
        sim.step(policy.decide(view))   # a typed, batched decision
    sim.episode_metrics()               # {"latency_s": ..., "energy_j": ..., ...}

Views and decisions are batched (one row per pending task or per agent) so that simulators and
policies stay vectorized. Offloading scenarios use :class:`OffloadView` / :class:`OffloadDecision`;
a scenario with other decision kinds (caching and resource shares) defines its own view and decision
dataclasses beside it.

The observation contract (DESIGN principle 2): ``sim.observation(view)`` turns a view into the
float32 matrix a learned policy reads (one row per decision), described by ``OBS_LAYOUT``. The
gym/PettingZoo wrappers and the gateway both call it; there is no second copy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from policies.config import PresetBase
from policies.workload import Workload

# Metric keys of `aigc-offload evaluate --json`; a scenario reports the ones that apply.
METRIC_KEYS = ("latency_s", "energy_j", "completion_rate", "drop_rate", "hit_rate", "load", "cost", "reward")


@dataclass(frozen=True)
class ObsField:
    """One observation entry: ``width`` consecutive columns of the observation row."""

    name: str
    unit: str
    scale: float = 1.0  # the column holds value / scale
    width: int = 1
    doc: str = ""


@dataclass
class OffloadView:
    """A batch of pending offloading decisions (one row per task or per agent).

    Target index k means ``target_names[k]`` (e.g. ``("local", "edge0", "edge1", "cloud")``).
    ``proximity`` orders targets for the greedy rule (smaller is nearer: distance in m, or a
    link delay); ``compatible`` says the target can run the task without fetching a model.
    ``features`` carries the scenario's own per-row quantities (sizes, queues, ...) that its
    observation and its heuristics read.
    """

    slot: int
    target_names: tuple[str, ...]
    source: np.ndarray  # (n,) int: index of the device / station / agent asking
    allowed: np.ndarray  # (n, K) bool: feasible targets
    local_target: int | None = None
    proximity: np.ndarray | None = None  # (n, K) float
    compatible: np.ndarray | None = None  # (n, K) bool
    features: dict[str, np.ndarray] | None = None
    has_share: bool = False  # the decision carries an offload ratio (MATO's eta)
    has_download: bool = False  # the decision carries a model-download flag (MATO's beta)

    @property
    def n(self) -> int:
        return int(self.allowed.shape[0])

    @property
    def num_targets(self) -> int:
        return int(self.allowed.shape[1])


@dataclass
class OffloadDecision:
    """Typed decisions for an :class:`OffloadView`, row for row."""

    target: np.ndarray  # (n,) int
    share: np.ndarray | None = None  # (n,) float in [0, 1]: fraction of the work sent to the target
    download: np.ndarray | None = None  # (n,) bool: fetch the model if the target lacks it

    def validate(self, view: OffloadView) -> None:
        if self.target.shape != (view.n,):
            raise ValueError(f"decision has {self.target.shape} targets for {view.n} pending decisions")
        if view.n and (self.target.min() < 0 or self.target.max() >= view.num_targets):
            raise ValueError("decision names a target index outside the view's targets")
        if view.n and not view.allowed[np.arange(view.n), self.target].all():
            raise ValueError("decision names a target that the view marks infeasible")
        if self.share is not None and view.n and (np.any(self.share < 0) or np.any(self.share > 1)):
            raise ValueError("offload share outside [0, 1]")


class Simulator(ABC):
    """One scenario's system model over a preset. Subclasses set the class attributes."""

    name: ClassVar[str]
    Preset: ClassVar[type[PresetBase]]
    TASK_FIELDS: ClassVar[dict[str, str]]  # column -> "unit; meaning" (trace format)
    TASK_DTYPES: ClassVar[dict[str, Any]] = {"slot": np.int64, "source": np.int64}
    PARAM_FIELDS: ClassVar[dict[str, str]]  # episode parameter -> "unit; meaning"
    POLICIES: ClassVar[tuple[str, ...]]  # heuristic names this scenario supports
    MULTI_AGENT: ClassVar[bool] = False
    OBS_LAYOUT: ClassVar[tuple[ObsField, ...]] = ()

    def __init__(self, preset: PresetBase):
        self.preset = preset
        self.decisions = 0  # decisions applied since reset (benchmarks count them)

    # -- workload -------------------------------------------------------------------------
    @abstractmethod
    def generate_workload(self, rng: np.random.Generator, episode: int) -> Workload:
        """Draw every exogenous quantity of one episode."""

    # -- episode ----------------------------------------------------------------------------
    @abstractmethod
    def reset(self, workload: Workload) -> None:
        """Start an episode on ``workload`` (raises TraceError if it does not fit the preset)."""

    @property
    @abstractmethod
    def done(self) -> bool: ...

    @abstractmethod
    def view(self) -> Any:
        """The next decision point."""

    @abstractmethod
    def step(self, decision: Any) -> None:
        """Apply a decision for the current view and advance to the next decision point."""

    @abstractmethod
    def episode_metrics(self) -> dict[str, float]:
        """Metrics of the finished episode, keyed by :data:`METRIC_KEYS` where they apply."""

    # -- observation contract -------------------------------------------------------------
    @abstractmethod
    def observation(self, view: Any) -> np.ndarray:
        """float32 matrix, one row per pending decision, laid out as ``OBS_LAYOUT``."""

    def obs_dim(self) -> int:
        """Width of an observation row; layouts that depend on the preset's sizes are set per instance."""
        return sum(f.width for f in self.OBS_LAYOUT)

    # -- policies ---------------------------------------------------------------------------
    def scenario_policy(self, name: str) -> "Policy | None":
        """A scenario-specific heuristic (e.g. ``opt``), or None to use the generic one."""
        return None


class Policy(ABC):
    """A decision maker. ``decide`` sees only the view, except for oracle policies.

    Oracle policies (``opt``) set ``needs_oracle = True`` and receive the simulator in ``reset``:
    they are references computed with the true state, not deployable decision makers.
    """

    name: str = "policy"
    needs_oracle: ClassVar[bool] = False

    def reset(self, rng: np.random.Generator, oracle: Simulator | None = None) -> None:
        self.rng = rng

    @abstractmethod
    def decide(self, view: Any) -> Any: ...
