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


ALGOS: dict[str, Algo] = {
    "maddpg": Algo("policies.train.maddpg", "mato", "MADDPG-MATO: model-aware actors, centralized critics, team reward"),
    "maddpg_nomodel": Algo("policies.train.maddpg", "mato", "MADDPG-NoModel: MADDPG-MATO blind to the caches",
                           preset_overrides={"model_aware": False}),
    "saddpg": Algo("policies.train.maddpg", "mato", "SADDPG: independent DDPG per ED on its own reward",
                   preset_overrides={"reward_mode": "individual"}, config_overrides={"centralized_critic": False}),
    "factory_distill": Algo("policies.train.factory_distill", "factory",
                            "factory gateway actor: DAgger from the factory opt, observation only"),
}


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == "torch":
            raise UserError("training needs torch: pip install 'aigc-offload[train]' (torch==2.13.0, CPU)") from None
        raise


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
    mod = _import(spec.module)
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
    mod = _import(spec.module)
    from policies.train.common import load_checkpoint

    ckpt = load_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(f"run '{run_dir}' has no checkpoint yet")
    return mod.load_policy(name, run_dir, sim, resolved, ckpt)
