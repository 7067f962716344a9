"""The papers' per-task offloading learners trained on the factory (spec docs/papers/factory.md, section
"Agents trained on factory"): MADDPG-MATO (``maddpg.py``), AMARL (``amarl.py``) and TOPPO (``toppo.py``),
each run by its own, unchanged training loop through an adapter that lets the factory simulator speak
the protocol of the trainer's home scenario. Nothing of the simulator is bent: every adapter books the
factory's own :class:`OffloadDecision` with ``FactorySimulator.step`` and reads its own per-task reward
(MATO eq. 18 style, ``sim.reward``), its observation contract (``sim.observation(view)``, OBS_LAYOUT, 35
columns) and its metrics.

Agents are the factory's devices (controllers and cameras): as in the three papers, the device whose task
it is decides it (the gateway hosts the device agents and acts for them). A device has at most one new
task per slot (Bernoulli arrivals), so one slot is one step of every agent; a device without a task in
the slot makes no decision.

* ``MatoProtocol`` (MADDPG-MATO): M = devices, one actor and one critic per device; the action is MATO's
  eq. 17 [one-hot xi over the remote targets, eta, beta] with the factory's remote targets edge0..edge{N-1},
  cloud as MATO's N "servers" (so ``maddpg.to_decision`` yields the factory's target index directly),
  eta the continuous offloaded share and beta the download flag. Idle devices are ``sparse_agents``
  (``maddpg.py``): their action is zeroed and their actor learns only from their own decisions.
* ``GmelProtocol`` (AMARL): I = devices, every agent every slot with a ``has_task`` flag (GMEL's protocol);
  the discrete action is one of the factory's alternatives ``sim.candidates()`` (local; every edge server x
  share level x download; cloud x share level: 37 for the shipped preset), so "M + 1" = 37 actions.
* ``AiecofProtocol`` (TOPPO): M = devices acting only in the slots where they have a task (AIECOF's
  protocol, the rows of the factory's own view); the same discrete alternatives, "N + 1" = 37 actions.

An idle device's observation row (MADDPG-MATO, AMARL: their critics read every agent) is all zeros, as
MATO's observation after the last step: a device without a task has nothing to report, and no second copy
of the observation code is needed. The actors are only ever asked about task rows.

Registered in ``registry.py`` as ``factory_maddpg``, ``factory_amarl``, ``factory_toppo``: each entry is a
namespace (``MADDPG``, ``AMARL``, ``TOPPO`` below) with ``Config`` (the trainer's own Config with factory
defaults, a subclass so the trainer's own defaults stay untouched), ``train`` and ``load_policy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from policies.errors import UserError
from policies.scenarios.base import OffloadDecision, OffloadView, Policy
from policies.train import amarl, maddpg, toppo


# -- the adapters ----------------------------------------------------------------------------------------
class FactoryAdapter:
    """What the three protocols share: the wrapped :class:`FactorySimulator`, its alternatives as a
    discrete action set, the dense (one row per device) observation and the episode bookkeeping."""

    def __init__(self, sim):
        if getattr(sim, "name", None) != "factory":
            raise UserError(f"the factory agents train on 'factory' scenarios, not '{getattr(sim, 'name', '?')}'")
        self.sim = sim
        self.name = sim.name
        self.preset = sim.preset
        self.OBS_LAYOUT = sim.OBS_LAYOUT
        self.T = sim.preset.slots_per_episode
        self.devices = sim.M
        self.cand_target, self.cand_share, self.cand_download = sim.candidates()
        self.num_candidates = int(self.cand_target.size)
        self.decisions = 0

    # pass-through of the simulator contract
    def obs_dim(self) -> int:
        return self.sim.obs_dim()

    def generate_workload(self, rng: np.random.Generator, episode: int):
        return self.sim.generate_workload(rng, episode)

    def reset(self, workload) -> None:
        self.sim.reset(workload)
        self.decisions = 0

    @property
    def done(self) -> bool:
        return self.sim.done

    def _skip_empty(self) -> None:
        """Slots without a task need no decision: book them at once (FactoryEnv does the same)."""
        while not self.sim.done and self.sim.view().n == 0:
            self.sim.step(OffloadDecision(target=np.zeros(0, dtype=np.int64)))

    def candidate_decision(self, cand: np.ndarray) -> OffloadDecision:
        """Alternative indices (n,) into ``sim.candidates()`` -> the factory's (target, share, download)."""
        c = np.asarray(cand, dtype=np.int64)
        if c.size and (c.min() < 0 or c.max() >= self.num_candidates):
            raise ValueError(f"alternative index outside 0..{self.num_candidates - 1}")
        return OffloadDecision(target=self.cand_target[c].astype(np.int64), share=self.cand_share[c].astype(np.float64),
                               download=self.cand_download[c].astype(bool))

    def dense(self) -> tuple[OffloadView, np.ndarray, np.ndarray]:
        """(the factory's view of the slot, observation (devices, D) with each task's row at its device
        and zero rows for idle devices, has_task (devices,) 0/1)."""
        view = self.sim.view()
        obs = np.zeros((self.devices, self.sim.obs_dim()), dtype=np.float32)
        has = np.zeros(self.devices, dtype=np.float32)
        if view.n:
            src = np.asarray(view.source, dtype=np.int64)
            if np.unique(src).size != src.size:
                raise UserError("a device has two tasks in one slot; the device agents decide one task per slot")
            obs[src] = self.sim.observation(view)
            has[src] = 1.0
        return view, obs, has

    def book(self, decision: OffloadDecision) -> None:
        """Book the slot's tasks with the factory's own decision."""
        self.decisions += int(np.size(decision.target))
        self.sim.step(decision)

    def episode_metrics(self) -> dict[str, float]:
        """The factory's metrics plus the names the home trainers log (same quantities)."""
        m = dict(self.sim.episode_metrics())
        m["failed_rate"] = m["drop_rate"]  # MATO's name: tasks that missed their deadline
        m["offload_rate"] = 1.0 - m.get("local_share", 0.0)  # tasks with a remote part
        m["energy_episode_j"] = m["energy_j"] * m["tasks"]  # AIECOF logs the episode's device energy
        return m


class DenseAdapter(FactoryAdapter):
    """One step per slot, one row per device (MATO and GMEL protocols). ``view()`` is a dense
    :class:`OffloadView` whose ``features`` hold the device rows (``obs``) and ``has_task``."""

    def __init__(self, sim):
        super().__init__(sim)
        self.t = 0
        self._dense: OffloadView | None = None

    def reset(self, workload) -> None:
        super().reset(workload)
        self.t = 0
        self._dense = None

    @property
    def done(self) -> bool:
        return self.t >= self.T

    def view(self) -> OffloadView:
        if self._dense is not None and self._dense.slot == self.t:
            return self._dense
        M = self.devices
        if self.t < self.T and not self.sim.done:
            fview, obs, has = self.dense()
        else:  # past the horizon: no task, an all-zero observation
            fview, obs, has = None, np.zeros((M, self.sim.obs_dim()), np.float32), np.zeros(M, np.float32)
        self._dense = OffloadView(slot=self.t, target_names=self.sim.target_names, source=np.arange(M, dtype=np.int64),
                                  allowed=np.ones((M, self.sim.K), dtype=bool), local_target=0, has_share=True,
                                  has_download=True, features={"obs": obs, "has_task": has, "factory_view": fview})
        return self._dense

    def observation(self, view: OffloadView) -> np.ndarray:
        return view.features["obs"]

    def _book_devices(self, target: np.ndarray, share: np.ndarray, download: np.ndarray) -> np.ndarray:
        """Book slot t's tasks with the decisions of their devices; returns the factory rows booked."""
        fview = self.view().features["factory_view"]
        rows = self.sim.rows() if fview is not None else np.zeros(0, dtype=np.int64)
        if fview is not None:
            src = np.asarray(fview.source, dtype=np.int64)
            self.book(OffloadDecision(target=np.asarray(target, dtype=np.int64)[src],
                                      share=np.asarray(share, dtype=np.float64)[src],
                                      download=np.asarray(download, dtype=bool)[src]))
        elif not self.sim.done:
            self.sim.step(OffloadDecision(target=np.zeros(0, dtype=np.int64)))
        self.t += 1
        self._dense = None
        return rows


class MatoProtocol(DenseAdapter):
    """MADDPG-MATO's view of the factory: M device agents, N = K - 1 "servers" (the remote targets
    edge0..edge{N-1}, cloud), ``task_cost`` (T, M) = minus each device's task reward (0 without a task)."""

    sparse_agents = True

    def __init__(self, sim):
        super().__init__(sim)
        self.M = self.devices
        self.N = sim.K - 1  # remote targets: maddpg.to_decision's 1 + argmax(xi) is the factory target index
        self.task_cost = np.zeros((self.T, self.M))

    def reset(self, workload) -> None:
        super().reset(workload)
        self.task_cost = np.zeros((self.T, self.M))

    def step(self, decision: OffloadDecision) -> None:
        t = self.t
        M = self.M
        share = np.where(decision.target == 0, 0.0, 1.0) if decision.share is None else decision.share
        download = np.zeros(M, dtype=bool) if decision.download is None else decision.download
        fview = self.view().features["factory_view"]
        rows = self._book_devices(decision.target, share, download)
        if rows.size:
            self.task_cost[t, fview.source] = -self.sim.reward[rows]


class GmelProtocol(DenseAdapter):
    """AMARL's view of the factory: I device agents acting every slot (``agent_view``, ``has_task``),
    M + 1 = the factory's alternatives as discrete actions (action 0 = local)."""

    def __init__(self, sim):
        super().__init__(sim)
        self.I = self.devices
        self.M = self.num_candidates - 1

    def agent_view(self) -> OffloadView:
        return self.view()

    def step(self, decision: OffloadDecision) -> None:
        d = self.candidate_decision(decision.target)
        self._book_devices(d.target, d.share, d.download)

    def slot_rewards(self) -> np.ndarray:
        """(T, I): the factory reward of the task device i generated at slot t, 0 without a task."""
        s = self.sim
        r = np.zeros((self.T, self.I), dtype=np.float32)
        r[s.slot_of, s.src] = s.reward
        return r


class AiecofProtocol(FactoryAdapter):
    """TOPPO's view of the factory: the factory's own view (one row per task, ``source`` = device), M
    devices, N + 1 = the factory's alternatives as discrete actions; ``reward`` is the simulator's."""

    def __init__(self, sim):
        super().__init__(sim)
        self.M = self.devices
        self.N = self.num_candidates - 1

    def view(self) -> OffloadView:
        return self.sim.view()

    def rows(self) -> np.ndarray:
        return self.sim.rows()

    def observation(self, view: OffloadView) -> np.ndarray:
        return self.sim.observation(view)

    @property
    def reward(self) -> np.ndarray:
        return self.sim.reward

    def step(self, decision: OffloadDecision) -> None:
        self.book(self.candidate_decision(decision.target))


# -- policies on the factory simulator (evaluate --policies run:DIR) -------------------------------------
class CandidatePolicy(Policy):
    """A home trainer's policy that picks an alternative index per task row (AMARL, TOPPO), its choice
    booked as the factory's (target, share, download)."""

    def __init__(self, name: str, sim, inner: Policy):
        self.name, self.inner = name, inner
        self.adapter = FactoryAdapter(sim)

    def reset(self, rng: np.random.Generator, oracle=None) -> None:
        super().reset(rng, oracle)
        self.inner.reset(rng, oracle)

    def decide(self, view: OffloadView) -> OffloadDecision:
        if view.n == 0:
            return OffloadDecision(target=np.zeros(0, dtype=np.int64), share=np.zeros(0), download=np.zeros(0, bool))
        return self.adapter.candidate_decision(self.inner.decide(view).target)


class MaddpgFactoryPolicy(Policy):
    """The run's device actors acting deterministically (argmax xi, no noise): each task row is decided by
    the actor of its device (``view.source``), decoded with ``maddpg.to_decision``."""

    def __init__(self, name: str, sim, resolved: dict, actor_state: dict):
        self.name, self.sim = name, sim
        cfg = resolved["config"]
        self.M = int(resolved["num_agents"])
        self.actor = maddpg.Actors(self.M, resolved["obs_dim"], resolved["act_dim"] - 2, cfg["hidden"])
        self.actor.load_state_dict(actor_state)
        self.actor.eval()

    def decide(self, view: OffloadView) -> OffloadDecision:
        n, D = view.n, self.sim.obs_dim()
        if n == 0:
            return OffloadDecision(target=np.zeros(0, dtype=np.int64), share=np.zeros(0), download=np.zeros(0, bool))
        obs = self.sim.observation(view)
        src = np.asarray(view.source, dtype=np.int64)
        # the j-th task of a device in this batch goes to column j (one column per slot from generated workloads)
        order = np.argsort(src, kind="stable")
        first = np.searchsorted(src[order], src[order], side="left")
        col = np.empty(n, dtype=np.int64)
        col[order] = np.arange(n) - first
        x = np.zeros((self.M, int(col.max()) + 1, D), dtype=np.float32)
        x[src, col] = obs
        with torch.no_grad():
            a = self.actor(torch.from_numpy(x))[src, col].numpy()
        return maddpg.to_decision(a, view)


def _check_run(run_dir: Path, sim, resolved: dict, actions: int | None = None) -> None:
    """The run's observation layout, alternatives (or targets) and, for per-device actors, the device count."""
    ok = sim.name == "factory" and resolved.get("scenario") == "factory" and sim.obs_dim() == resolved["obs_dim"]
    if actions is not None:
        ok = ok and actions == resolved.get("act_dim", resolved.get("n_actions"))
    if not ok:
        raise UserError(f"run '{run_dir}' was trained on {resolved.get('scenario')} with {resolved['obs_dim']} observation "
                        f"columns; it cannot act in this '{sim.name}' preset (another layout of servers, models or "
                        "share levels)")


# -- MADDPG-MATO on the factory ---------------------------------------------------------------------------
@dataclass
class MaddpgConfig(maddpg.Config):
    """maddpg.Config with the factory's defaults [ours]: a slot is a step of 30 sparse agents (~4.5 with a
    task); 256 joint transitions every 2 slots took 9 s per 200-slot episode here (30 critics and actors;
    MATO's 1024 every slot is 8 times that work), so batches of 128 joint transitions (~580 task decisions)
    every 4 slots: ~2 s per episode on a loaded core, near the other two learners; 200 episodes."""

    episodes: int = 200
    batch_size: int = 128
    learning_starts: int = 1000  # 5 episodes of 200 slots
    update_every: int = 4
    checkpoint_every: int = 10


def train_maddpg(algo: str, sim, preset_name: str, cfg: MaddpgConfig, seed: int, out: Path, command: list[str],
                 progress: bool | None = None) -> dict:
    return maddpg.train(algo, MatoProtocol(sim), preset_name, cfg, seed, out, command, progress)


def load_maddpg(name: str, run_dir: Path, sim, resolved: dict, ckpt: dict) -> Policy:
    _check_run(run_dir, sim, resolved, sim.K + 1)
    if sim.M != resolved["num_agents"]:
        raise UserError(f"run '{run_dir}' has one actor per device for {resolved['num_agents']} devices; this preset "
                        f"has {sim.M}")
    return MaddpgFactoryPolicy(name, sim, resolved, ckpt["actor"])


# -- AMARL on the factory ---------------------------------------------------------------------------------
@dataclass
class AmarlConfig(amarl.Config):
    """amarl.Config with the factory's defaults [ours, chosen once, not swept]: 300 episodes of 200 slots;
    the entropy weight lambda' scaled to the factory's reward (eq. 18 style, ~-0.5 per task done well, -5
    per drop) and its 37 alternatives (entropy up to ln 37 = 3.6); GMEL's 0.5 was set for rewards in s."""

    episodes: int = 300
    entropy: float = 0.05
    warmup_episodes: int = 5
    checkpoint_every: int = 10


def train_amarl(algo: str, sim, preset_name: str, cfg: AmarlConfig, seed: int, out: Path, command: list[str],
                progress: bool | None = None) -> dict:
    return amarl.run_training(algo, GmelProtocol(sim), preset_name, cfg, seed, out, command, progress,
                              amarl.AmarlLearner, scenario="factory", rewards=GmelProtocol.slot_rewards)


def load_amarl(name: str, run_dir: Path, sim, resolved: dict, ckpt: dict) -> Policy:
    adapter = GmelProtocol(sim)
    _check_run(run_dir, sim, resolved, adapter.M + 1)
    c = resolved["config"]
    actor = amarl.Actor(resolved["obs_dim"], resolved["n_actions"], c["hidden"], c["dropout"])
    actor.load_state_dict(ckpt["actor"])
    return CandidatePolicy(name, sim, amarl.TrainedPolicy(name, sim, actor))


# -- TOPPO on the factory ---------------------------------------------------------------------------------
@dataclass
class ToppoConfig(toppo.Config):
    """toppo.Config with the factory's defaults [ours]: 300 episodes of 200 slots; a trained run acts by the
    argmax of pi (the factory's reward is per task, without AIECOF eq. 30's variance term that made
    sampling the better deployment there)."""

    episodes: int = 300
    eval_sample: bool = False
    checkpoint_every: int = 10


def train_toppo(algo: str, sim, preset_name: str, cfg: ToppoConfig, seed: int, out: Path, command: list[str],
                progress: bool | None = None) -> dict:
    return toppo.train(algo, AiecofProtocol(sim), preset_name, cfg, seed, out, command, progress)


def load_toppo(name: str, run_dir: Path, sim, resolved: dict, ckpt: dict) -> Policy:
    adapter = AiecofProtocol(sim)
    _check_run(run_dir, sim, resolved, adapter.N + 1)
    return CandidatePolicy(name, sim, toppo.TrainedPolicy(name, adapter, resolved, ckpt["actor"]))


# -- registry entries (policies/train/registry.py: Algo(module=__name__, entry=...)) -----------------------
MADDPG = SimpleNamespace(Config=MaddpgConfig, train=train_maddpg, load_policy=load_maddpg)
AMARL = SimpleNamespace(Config=AmarlConfig, train=train_amarl, load_policy=load_amarl)
TOPPO = SimpleNamespace(Config=ToppoConfig, train=train_toppo, load_policy=load_toppo)
