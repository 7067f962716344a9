"""Pieces every trainer shares: seeding and RNG state, the replay buffer, per-agent MLPs, soft updates,
per-agent gradient clipping, the CSV metrics log, checkpoints (atomic, with resume) and the saved config.

Multi-agent networks are *ensembles*: one independent MLP per agent, stored as stacked weights
(agents, in, out) and evaluated with one batched matmul. This is exactly M separate networks (no
shared weights, Adam is element-wise), only faster than a Python loop over agents.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
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
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # empty, truncated, not a torch file, unreadable: EOFError, UnpicklingError, ...
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); it is empty, "
                        f"truncated or not a torch checkpoint") from None


# -- agents that act only at their own decision points -----------------------------------------------
class PendingTransitions:
    """One-step transitions of agents that act at irregular decision points (an AIECOF device acts only in
    the slots where it has a task). Agent m's transition (s, a, r) is completed by m's NEXT observation s'
    (its next decision, so gamma applies per decision of the agent), or closed as terminal (done = 1,
    s' = 0) by :meth:`flush` at the end of the episode. Rewards must be known when the agent acts."""

    def __init__(self, agents: int, obs_dim: int):
        self.agents, self.obs_dim = int(agents), int(obs_dim)
        self.reset()

    def reset(self) -> None:
        self.has = np.zeros(self.agents, dtype=bool)
        self.obs = np.zeros((self.agents, self.obs_dim), dtype=np.float32)
        self.act = np.zeros(self.agents, dtype=np.int64)
        self.rew = np.zeros(self.agents, dtype=np.float32)

    def _batch(self, who: np.ndarray, next_obs: np.ndarray, done: float) -> dict[str, np.ndarray]:
        return {"obs": self.obs[who].copy(), "act": self.act[who].copy(), "rew": self.rew[who].copy(),
                "next_obs": np.asarray(next_obs, dtype=np.float32), "done": np.full(who.size, done, np.float32),
                "agent": who.copy()}

    def step(self, agents: np.ndarray, obs: np.ndarray, act: np.ndarray, rew: np.ndarray) -> dict[str, np.ndarray]:
        """Record the decisions (s, a, r) of ``agents`` (distinct ids); returns the transitions their
        previous decisions completed (possibly none), with s' = ``obs``."""
        agents = np.asarray(agents, dtype=np.int64)
        prev = self.has[agents]
        out = self._batch(agents[prev], obs[prev], 0.0)
        self.has[agents] = True
        self.obs[agents], self.act[agents], self.rew[agents] = obs, act, rew
        return out

    def flush(self) -> dict[str, np.ndarray]:
        """Close every open transition as terminal (end of the episode) and clear."""
        who = np.flatnonzero(self.has)
        out = self._batch(who, np.zeros((who.size, self.obs_dim), np.float32), 1.0)
        self.reset()
        return out


# -- replay of whole episodes -----------------------------------------------------------------------
class EpisodeReplay:
    """Ring buffer of transitions written one whole episode at a time (added for GMEL's learners,
    ``policies/train/amarl.py``). The next observation of a transition is the next row of the same
    episode, so observations are stored once (half the memory of a ``ReplayBuffer`` with
    ``next_obs``): with 50 agents a joint observation is 5 KB.

    The last row of an episode has no next row: if it is terminal (``done`` = 1) its successor is
    never used; if the episode was cut by a time limit (``done`` = 0), the row itself stands in for its
    successor (a state of the same distribution to bootstrap from, as ``maddpg.py`` does for MATO).

    ``shapes``: field -> per-transition shape; ``done`` (a float flag) is always added. ``dtypes``:
    field -> numpy dtype (default float32; float16 halves the memory and the checkpoint of large
    observations and is sampled as float32). ``sample`` returns every field plus ``next_<f>`` for the
    fields in ``next_fields``."""

    def __init__(self, capacity: int, shapes: Mapping[str, tuple[int, ...]], next_fields: Iterable[str] = ("obs",),
                 dtypes: Mapping[str, Any] | None = None):
        self.capacity = int(capacity)
        shapes = {**shapes, "done": ()}
        dtypes = dict(dtypes or {})
        self.data = {k: np.zeros((self.capacity, *s), dtype=dtypes.get(k, np.float32)) for k, s in shapes.items()}
        self.last = np.zeros(self.capacity, dtype=bool)  # the final row of its episode
        self.next_fields = tuple(next_fields)
        self.pos = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add_episode(self, **fields: np.ndarray) -> None:
        n = len(fields["done"])
        if not 0 < n <= self.capacity:
            raise ValueError(f"an episode of {n} transitions does not fit a replay of {self.capacity}")
        idx = (self.pos + np.arange(n)) % self.capacity
        for k, arr in self.data.items():
            arr[idx] = fields[k]
        self.last[idx] = False
        self.last[idx[-1]] = True
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, rng: np.random.Generator, batch: int) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, self.size, size=batch)
        nxt = np.where(self.last[idx], idx, (idx + 1) % self.capacity)
        def rows(v: np.ndarray, i: np.ndarray) -> torch.Tensor:  # float16 storage is read as float32
            return torch.from_numpy(v[i].astype(np.float32) if v.dtype == np.float16 else v[i])

        out = {k: rows(v, idx) for k, v in self.data.items()}
        for k in self.next_fields:
            out["next_" + k] = rows(self.data[k], nxt)
        return out

    def state_dict(self) -> dict:
        return {"pos": self.pos, "size": self.size, "last": self.last[: self.size].copy(),
                "data": {k: v[: self.size].copy() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = int(state["pos"]), int(state["size"])
        self.last[: self.size] = state["last"]
        for k, v in state["data"].items():
            self.data[k][: self.size] = v


# -- per-agent Adam ---------------------------------------------------------------------------------
class AgentAdam:
    """Adam over ensemble parameters (leading dimension = agent) with one step counter per agent.

    ``step(active)`` updates only the agents in the boolean mask ``active`` (A,): their moments, their
    step count and their weights, exactly as ``torch.optim.Adam`` (no weight decay, no amsgrad) would for
    that agent's own network. Agents outside the mask are left untouched (moments, count and weights), so
    an ensemble whose agents start training at different times behaves like independent optimizers
    (a shared torch Adam would apply the bias correction of the ensemble's step count to an agent's first
    update, and keep moving agents whose gradient is zero on their stale moments)."""

    def __init__(self, params: Iterable[torch.Tensor], agents: int, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params = list(params)
        for p in self.params:
            if p.shape[0] != agents:
                raise ValueError(f"parameter of shape {tuple(p.shape)} has no leading agent dimension of {agents}")
        self.agents, self.lr, self.betas, self.eps = agents, lr, betas, eps
        # The moments of all parameters live in one (agents, P) buffer each, and ``m`` / ``v`` are views of it
        # shaped like the parameters: a step is ~12 element-wise ops on the flat buffers instead of ~11 per
        # parameter. Element-wise math is the same per element, so the results are bit-identical to the
        # per-parameter loop (tests/test_train_ladts.py checks this against that loop).
        sizes = [p[0].numel() for p in self.params]
        self._cols = [(int(e - n), int(e)) for n, e in zip(sizes, itertools.accumulate(sizes))]
        self._m = torch.zeros(agents, sum(sizes), dtype=self.params[0].dtype if self.params else torch.float32)
        self._v = torch.zeros_like(self._m)
        self.m = [self._m[:, a:b].view(p.shape) for p, (a, b) in zip(self.params, self._cols)]
        self.v = [self._v[:, a:b].view(p.shape) for p, (a, b) in zip(self.params, self._cols)]
        self.t = torch.zeros(agents, dtype=torch.float64)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None) -> None:
        act = torch.ones(self.agents, dtype=torch.bool) if active is None else active.to(torch.bool)
        if not bool(act.any()):
            return
        b1, b2 = self.betas
        on = act.to(torch.float32)
        self.t += act.to(torch.float64)
        t = self.t.clamp(min=1.0)
        step = (on * (self.lr / (1.0 - b1 ** t)).to(torch.float32))  # 0 for the agents left alone
        bc2_sqrt = torch.sqrt(1.0 - b2 ** t).to(torch.float32)
        w1, w2, keep2 = on * (1.0 - b1), on * (1.0 - b2), 1.0 - on * (1.0 - b2)
        if all(p.grad is not None for p in self.params):
            g = torch.cat([p.grad.reshape(self.agents, -1) for p in self.params], 1)
            col = (self.agents, 1)
            self._m.lerp_(g, w1.view(col))
            self._v.mul_(keep2.view(col)).add_(g * g * w2.view(col))
            denom = (self._v.sqrt() / bc2_sqrt.view(col)).add_(self.eps)
            delta = self._m * step.view(col) / denom
            for p, (a, b) in zip(self.params, self._cols):
                p.sub_(delta[:, a:b].view(p.shape))
            return
        for p, m, v in zip(self.params, self.m, self.v):  # some parameter got no gradient: leave its moments
            if p.grad is None:
                continue
            shape = (self.agents,) + (1,) * (p.dim() - 1)
            g = p.grad
            m.lerp_(g, w1.view(shape))  # m + (1 - b1)(g - m), as torch's Adam
            v.mul_(keep2.view(shape)).add_(g * g * w2.view(shape))
            denom = (v.sqrt() / bc2_sqrt.view(shape)).add_(self.eps)
            p.sub_(m * step.view(shape) / denom)

    def state_dict(self) -> dict:
        return {"m": [x.clone() for x in self.m], "v": [x.clone() for x in self.v], "t": self.t.clone()}

    def load_state_dict(self, state: dict) -> None:
        for dst, src in zip(self.m, state["m"]):
            dst.copy_(src)
        for dst, src in zip(self.v, state["v"]):
            dst.copy_(src)
        self.t.copy_(state["t"])


@torch.no_grad()
def soft_update_agents(target: nn.Module, source: nn.Module, tau: float, active: torch.Tensor | None = None) -> None:
    """theta'_i <- tau theta_i + (1 - tau) theta'_i for the agents i in ``active`` (all if None) of stacked
    (agent-leading) parameters; the other agents' targets are left bit-for-bit unchanged."""
    for t, s in zip(target.parameters(), source.parameters()):
        if active is None:
            t.lerp_(s, tau)
        else:
            t.lerp_(s, active.to(t.dtype).view((-1,) + (1,) * (t.dim() - 1)) * tau)


# -- run directory boilerplate (AIECOF trainers) ---------------------------------------------------------
def start_run(algo: str, sim, preset_name: str, cfg, seed: int, out: Path, command: list[str],
              **extra: Any) -> tuple[dict, dict | None]:
    """Write ``config.json`` (resolved algorithm config, preset and its hash, seed, command, ``extra``) and
    return it with the checkpoint to resume from (None for a new run). A checkpoint of another run (other
    algo, seed or preset) is refused."""
    from policies.config import preset_hash

    out.mkdir(parents=True, exist_ok=True)
    resolved = {"algo": algo, "seed": seed, "scenario": sim.name, "preset_name": preset_name,
                "preset": sim.preset.model_dump(mode="json"), "preset_hash": preset_hash(sim.preset),
                "config": dataclasses.asdict(cfg), "command": command, **extra}
    ckpt = load_checkpoint(out)
    if ckpt is not None:
        check_resume(out, ckpt["resolved"], resolved)
        resolved["command_history"] = ckpt["resolved"].get("command_history", [ckpt["resolved"]["command"]]) + [command]
    save_json(out / CONFIG, resolved)
    return resolved, ckpt


# Config fields a resumed run may change: how long it trains and how it checkpoints, not what it learns.
RESUMABLE_CONFIG = ("episodes", "checkpoint_every", "torch_threads")


def changed_settings(old: dict, new: dict) -> list[str]:
    """Algorithm settings (outside :data:`RESUMABLE_CONFIG`) that differ between two resolved configs; keys one
    of them did not record (added since) are not compared. JSON round trips are allowed for (tuples are
    lists in a config.json)."""
    was, asked = old.get("config", {}), new.get("config", {})
    same = lambda a, b: a == b or json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))  # noqa: E731
    return sorted(k for k in was.keys() & asked.keys() if k not in RESUMABLE_CONFIG and not same(was[k], asked[k]))


def check_resume(out: Path, old: dict, new: dict) -> None:
    """Refuse to resume ``out`` (trained as ``old``) as another run: other algo, seed or preset, or an
    algorithm setting other than :data:`RESUMABLE_CONFIG` changed (a run half with batch 256 and half
    with batch 1024 is neither). Settings the old run did not record (added since) are not compared."""
    for key in ("algo", "seed", "preset_hash"):
        if old[key] != new[key]:
            raise UserError(f"'{out}' holds a checkpoint of another run ({key} {old[key]!r}, asked "
                            f"{new[key]!r}); choose a new --out directory")
    was, asked = old.get("config", {}), new.get("config", {})
    changed = changed_settings(old, new)
    if changed:
        diff = ", ".join(f"{k} {was[k]!r} -> {asked[k]!r}" for k in changed[:4])
        raise UserError(f"'{out}' was trained with other settings ({diff}{', ...' if len(changed) > 4 else ''}); "
                        "resume it with its own settings, or train into a new --out directory "
                        "(reproduce: a new --runs root)")


# -- a trained feed-forward network as a policy -------------------------------------------------------
class ArgmaxTargetPolicy:
    """A trained network acting greedily: target = argmax of ``score(obs)`` (Q values or logits, one row
    per decision) on ``sim.observation(view)``, the shared observation contract. Duck-types
    :class:`policies.scenarios.base.Policy` (``name``, ``reset``, ``decide``)."""

    needs_oracle = False

    def __init__(self, name: str, sim, resolved: dict, score: nn.Module):
        self.name, self.sim, self.resolved, self.score = name, sim, resolved, score.eval()

    def reset(self, rng: np.random.Generator, oracle=None) -> None:
        self.rng = rng

    def decide(self, view):
        from policies.scenarios.base import OffloadDecision

        if view.n == 0:
            return OffloadDecision(target=np.zeros(0, dtype=np.int64))
        with torch.no_grad():
            s = self.score(torch.from_numpy(self.sim.observation(view)))
        return OffloadDecision(target=s.argmax(-1).numpy().astype(np.int64))


def sample_rows(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of ``probs`` (rows sum to 1), drawn with ``rng`` (inverse CDF, reproducible)."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(probs.shape[0])[:, None] * cdf[:, -1:]
    return np.minimum((cdf < u).sum(axis=1), probs.shape[1] - 1).astype(np.int64)


class SampledTargetPolicy(ArgmaxTargetPolicy):
    """A trained stochastic policy acting as it was trained: target ~ softmax(``score(obs)``), drawn with
    the episode's policy RNG (``Policy.reset``), so evaluations repeat exactly."""

    def decide(self, view):
        from policies.scenarios.base import OffloadDecision

        if view.n == 0:
            return OffloadDecision(target=np.zeros(0, dtype=np.int64))
        with torch.no_grad():
            p = torch.softmax(self.score(torch.from_numpy(self.sim.observation(view))).double(), dim=-1).numpy()
        return OffloadDecision(target=sample_rows(p, self.rng))
