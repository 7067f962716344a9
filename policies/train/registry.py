"""Algorithm name -> trainer, and a trained run directory -> policy.

This module imports no torch at import time: the trainer module is imported when a run is trained
or evaluated, so ``aigc-offload evaluate`` with only heuristics never loads torch.

A run directory (``aigc-offload train --out DIR``) holds ``config.json`` (resolved algorithm config,
preset, preset hash, seed, command), ``checkpoint.pt`` and ``metrics.csv``. ``evaluate --policies
run:DIR`` (or just the path ``DIR``) evaluates the run's actors deterministically.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from policies.errors import UnknownNameError, UserError


@dataclass(frozen=True)
class Algo:
    module: str  # module with Config, train(), load_policy()
    scenario: str  # the scenario its preset must configure
    description: str
    preset_overrides: Mapping[str, Any] = field(default_factory=dict)  # applied over the user's --set
    config_overrides: Mapping[str, Any] = field(default_factory=dict)
    entry: str = ""  # attribute of ``module`` holding Config, train(), load_policy() (empty: the module itself)


ALGOS: dict[str, Algo] = {
    "maddpg": Algo("policies.train.maddpg", "mato", "MADDPG-MATO: model-aware actors, centralized critics, team reward"),
    "maddpg_nomodel": Algo("policies.train.maddpg", "mato", "MADDPG-NoModel: MADDPG-MATO blind to the caches",
                           preset_overrides={"model_aware": False}),
    "saddpg": Algo("policies.train.maddpg", "mato", "SADDPG: independent DDPG per ED on its own reward",
                   preset_overrides={"reward_mode": "individual"}, config_overrides={"centralized_critic": False}),
    "factory_distill": Algo("policies.train.factory_distill", "factory",
                            "factory gateway actor: DAgger from the factory opt, observation only"),
    "ladts": Algo("policies.train.ladts", "ladts", "LAD-TS: discrete SAC, denoising actor started from the stored latent",
                  config_overrides={"method": "lad"}),
    "d2sac_ts": Algo("policies.train.ladts", "ladts", "D2SAC-TS: the LAD-TS denoising actor started from N(0, I)",
                     config_overrides={"method": "d2sac"}),
    "sac_ts": Algo("policies.train.ladts", "ladts", "SAC-TS: per-station discrete SAC, softmax MLP actor",
                   config_overrides={"method": "sac"}),
    "dqn_ts": Algo("policies.train.ladts", "ladts", "DQN-TS: per-station DQN, epsilon 0.01, target copy every 200",
                   config_overrides={"method": "dqn"}),
    "td3": Algo("policies.train.td3", "edgeaigc", "EdgeAIGC TD3: caching + bandwidth/compute shares, projected"),
    "ddpg": Algo("policies.train.td3", "edgeaigc", "EdgeAIGC DDPG baseline: one critic, no smoothing, no delay",
                 config_overrides={"twin_critics": False, "policy_delay": 1, "target_smoothing": False}),
    "toppo": Algo("policies.train.toppo", "aiecof", "TOPPO: PPO with LSTM actor and critic, clipping, GAE (AIECOF)"),
    "aiecof_dqn": Algo("policies.train.aiecof_dqn", "aiecof", "DQN baseline of AIECOF Table IV"),
    "aiecof_ddqn": Algo("policies.train.aiecof_dqn", "aiecof", "Double DQN baseline of AIECOF Table IV",
                        config_overrides={"double": True}),
    "aiecof_dueling": Algo("policies.train.aiecof_dqn", "aiecof", "Dueling DQN baseline of AIECOF Table IV",
                           config_overrides={"dueling": True}),
    "aiecof_d3qn": Algo("policies.train.aiecof_dqn", "aiecof", "D3QN (dueling double DQN) baseline of AIECOF Table IV",
                        config_overrides={"double": True, "dueling": True}),
    "aiecof_ac": Algo("policies.train.aiecof_ac", "aiecof", "one-step actor-critic baseline of AIECOF Table IV"),
    "aiecof_a2c": Algo("policies.train.aiecof_ac", "aiecof", "A2C (5-step advantage actor-critic) of AIECOF Table IV",
                       config_overrides={"n_step": 5, "entropy_coef": 0.01, "shared_trunk": True}),
    "amarl": Algo("policies.train.amarl", "gmel", "AMARL (GMEL): attention + dueling critic, entropy, target smoothing, CTDE"),
    "gmel_maddpg": Algo("policies.train.gmel_baselines", "gmel", "GMEL MADDPG baseline: centralized MLP critic, Gumbel actor",
                        config_overrides={"method": "maddpg"}),
    "gmel_ac": Algo("policies.train.gmel_baselines", "gmel", "GMEL Actor-Critic baseline: independent one-step A2C",
                    config_overrides={"method": "ac"}),
    "gmel_dqn": Algo("policies.train.gmel_baselines", "gmel", "GMEL DQN baseline: independent DQN, epsilon-greedy",
                     config_overrides={"method": "dqn"}),
    "factory_maddpg": Algo("policies.train.factory_agents", "factory",
                           "MADDPG-MATO on the factory: one actor and critic per device, eq. 17 action (target, eta, beta)",
                           entry="MADDPG"),
    "factory_amarl": Algo("policies.train.factory_agents", "factory",
                          "AMARL on the factory: device agents, attention + dueling critic over the 37 alternatives",
                          entry="AMARL"),
    "factory_toppo": Algo("policies.train.factory_agents", "factory",
                          "TOPPO on the factory: PPO with LSTM actor and critic per device decision sequence",
                          entry="TOPPO"),
    "factory_ladts": Algo("policies.train.factory_edge_agents", "factory",
                          "LAD-TS on the factory's edge tier: per-server denoising agents choose the server of each task",
                          entry="LADTS"),
    "factory_td3": Algo("policies.train.factory_edge_agents", "factory",
                        "TD3 on the factory's edge tier: model caching and download-link shares per period, projected",
                        entry="TD3"),
}


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == "torch":
            raise UserError("training needs torch: pip install 'aigc-offload[train]' (torch==2.13.0, CPU)") from None
        raise


def _trainer(spec: Algo):
    """The object with ``Config``, ``train()`` and ``load_policy()`` of ``spec`` (its module, or ``entry`` in it)."""
    mod = _import(spec.module)
    return getattr(mod, spec.entry) if spec.entry else mod


def get_algo(name: str) -> Algo:
    if name not in ALGOS:
        raise UnknownNameError(f"unknown algo '{name}'; available: {', '.join(ALGOS)}")
    return ALGOS[name]


def train(algo: str, scenario: str, seed: int, out: str | Path, overrides: Mapping[str, Any] | None = None,
          episodes: int | None = None, command: list[str] | None = None, progress: bool | None = None) -> dict:
    """Train ``algo`` on preset ``scenario`` into ``out`` (resuming if it holds a checkpoint)."""
    from policies.config import load_preset
    from policies.scenarios import make_simulator

    spec = get_algo(algo)
    mod = _trainer(spec)
    from policies.train.common import make_config, split_overrides

    algo_set, preset_set = split_overrides(mod.Config, dict(overrides or {}))
    preset = load_preset(scenario, preset_set)
    if preset.scenario != spec.scenario:
        raise UserError(f"algo '{algo}' trains on '{spec.scenario}' scenarios, but preset '{scenario}' is "
                        f"scenario '{preset.scenario}'")
    values = {**spec.config_overrides, **algo_set}
    if episodes is not None:
        values["episodes"] = episodes
    cfg = make_config(mod.Config, values)
    sim = make_simulator(scenario, {**preset_set, **spec.preset_overrides})
    return mod.train(algo, sim, scenario, cfg, seed, Path(out), command or [], progress)


def planned_settings(algo: str, scenario: str, overrides: Mapping[str, Any] | None = None,
                     episodes: int | None = None) -> dict:
    """What :func:`train` would record in a new run's ``config.json`` for these arguments, without training or
    building a simulator: ``{"algo", "preset_hash", "config"}`` (the resolved algorithm config)."""
    import dataclasses

    from policies.config import load_preset, preset_hash
    from policies.train.common import make_config, split_overrides

    spec = get_algo(algo)
    mod = _trainer(spec)
    algo_set, preset_set = split_overrides(mod.Config, dict(overrides or {}))
    values = {**spec.config_overrides, **algo_set}
    if episodes is not None:
        values["episodes"] = episodes
    cfg = make_config(mod.Config, values)
    preset = load_preset(scenario, {**preset_set, **spec.preset_overrides} or None)
    return {"algo": algo, "preset_hash": preset_hash(preset), "config": dataclasses.asdict(cfg)}


def is_run_reference(name: str) -> bool:
    """``run:DIR``, or a path to a directory holding a trained run's ``config.json``."""
    return name.startswith("run:") or (Path(name) / "config.json").is_file()


def load_trained_policy(name: str, sim):
    """The policy of the run ``name`` (``run:DIR`` or ``DIR``) for ``sim`` (imports torch)."""
    run_dir = Path(name[4:] if name.startswith("run:") else name)
    try:
        resolved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"'{run_dir}' is not a trained run directory (no readable config.json)") from None
    spec = get_algo(resolved.get("algo", "?"))
    mod = _trainer(spec)
    from policies.train.common import load_checkpoint

    ckpt = load_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(f"run '{run_dir}' has no checkpoint yet")
    return mod.load_policy(name, run_dir, sim, resolved, ckpt)
