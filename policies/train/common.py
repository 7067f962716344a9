"""Pieces every trainer shares: seeding and RNG state, the replay buffer, per-agent MLPs, soft updates,
per-agent gradient clipping, the CSV metrics log, checkpoints (atomic, with resume) and the saved config.

Multi-agent networks are *ensembles*: one independent MLP per agent, stored as stacked weights
(agents, in, out) and evaluated with one batched matmul. This is exactly M separate networks (no
shared weights, Adam is element-wise), only faster than a Python loop over agents.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from policies.errors import UserError

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
CONFIG = "config.json"


# -- seeding ------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state(np_rng: np.random.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np_rng.bit_generator.state}


def set_rng_state(state: dict, np_rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np_rng.bit_generator.state = state["numpy"]


# -- config -------------------------------------------------------------------------------------
def split_overrides(config_cls: type, overrides: Mapping[str, Any]) -> tuple[dict, dict]:
    """``--set`` pairs: the algorithm config's own fields, and the rest (preset fields)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    algo = {k: v for k, v in overrides.items() if k in names}
    preset = {k: v for k, v in overrides.items() if k not in names}
    return algo, preset


def make_config(config_cls: type, values: Mapping[str, Any]):
    """The dataclass with ``values`` applied, each coerced to the field's default's type."""
    cfg = config_cls()
    for key, value in values.items():
        default = getattr(cfg, key)
        try:
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError
            elif isinstance(default, (int, float)):
                value = type(default)(value)
                if isinstance(default, int) and value != values[key]:
                    raise ValueError
        except (TypeError, ValueError):
            raise UserError(f"--set {key}={values[key]!r}: expected a {type(default).__name__}") from None
        setattr(cfg, key, value)
    return cfg


def save_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


# -- replay buffer ------------------------------------------------------------------------------
class ReplayBuffer:
    """Ring buffer of joint transitions; each field has a fixed per-transition shape."""

    def __init__(self, capacity: int, shapes: Mapping[str, tuple[int, ...]]):
        self.capacity = int(capacity)
        self.data = {k: np.zeros((self.capacity, *s), dtype=np.float32) for k, s in shapes.items()}
        self.pos = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, **fields: np.ndarray) -> None:
        for k, arr in self.data.items():
            arr[self.pos] = fields[k]
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch: int) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, self.size, size=batch)
        return {k: torch.from_numpy(v[idx]) for k, v in self.data.items()}

    def state_dict(self) -> dict:
        return {"pos": self.pos, "size": self.size, "data": {k: v[: self.size].copy() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = int(state["pos"]), int(state["size"])
        for k, v in state["data"].items():
            self.data[k][: self.size] = v


# -- networks -----------------------------------------------------------------------------------
class AgentLinear(nn.Module):
    """``agents`` independent linear layers: x (agents, B, in) -> (agents, B, out)."""

    def __init__(self, agents: int, n_in: int, n_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)  # nn.Linear's default init, per agent
        self.weight = nn.Parameter(torch.empty(agents, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(agents, 1, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class AgentMLP(nn.Module):
    """One MLP per agent (ReLU hidden layers), evaluated for all agents at once."""

    def __init__(self, agents: int, n_in: int, n_out: int, hidden: Iterable[int] = (64, 64)):
        super().__init__()
        sizes = [n_in, *hidden, n_out]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(AgentLinear(agents, sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """theta' <- tau theta + (1 - tau) theta'  (MATO eqs. 22-23)."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.mul_(1.0 - tau).add_(s, alpha=tau)


@torch.no_grad()
def clip_grad_norm_per_agent(module: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip each agent's gradient (its slice of every stacked parameter) to ``max_norm``; returns the norms."""
    params = [p for p in module.parameters() if p.grad is not None]
    sq = sum(p.grad.pow(2).flatten(1).sum(1) for p in params)
    norms = sq.sqrt()
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(factor.view(-1, *([1] * (p.grad.dim() - 1))))
    return norms


# -- metrics log ----------------------------------------------------------------------------------
class MetricsLog:
    """``metrics.csv``, one row per episode. On resume, rows at or after ``start_episode`` (written after
    the last checkpoint) are dropped and new rows are appended."""

    def __init__(self, path: Path, fields: list[str], start_episode: int):
        self.path, self.fields = path, fields
        rows: list[dict] = []
        if start_episode > 0 and path.exists():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["episode"]) < start_episode]
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        self.fh = path.open("a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=fields)

    def write(self, row: Mapping[str, Any]) -> None:
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


# -- checkpoints ------------------------------------------------------------------------------------
def save_checkpoint(out: Path, state: dict) -> None:
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / CHECKPOINT)


def load_checkpoint(out: Path) -> dict | None:
    path = out / CHECKPOINT
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
