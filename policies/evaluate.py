"""Evaluation of policies on a scenario: every policy sees the same workloads (common random numbers)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from policies.config import preset_hash
from policies.errors import TraceError
from policies.heuristics import make_policy
from policies.scenarios.base import METRIC_KEYS, Policy, Simulator
from policies.workload import Workload, episode_rng, read_trace, write_trace


def generate_workloads(sim: Simulator, episodes: int, seed: int) -> list[Workload]:
    return [sim.generate_workload(episode_rng(seed, k, 0), k) for k in range(episodes)]


def load_trace_workloads(sim: Simulator, path: str, episodes: int | None) -> list[Workload]:
    trace = read_trace(path, sim.name, sim.TASK_FIELDS, sim.PARAM_FIELDS, sim.TASK_DTYPES, preset_hash(sim.preset))
    if episodes is not None and episodes > len(trace.workloads):
        raise TraceError(f"trace '{path}' holds {len(trace.workloads)} episode(s) but {episodes} were asked for")
    return trace.workloads[: episodes or len(trace.workloads)]


def save_trace(sim: Simulator, path: str, workloads: list[Workload]) -> int:
    return write_trace(path, sim.name, preset_hash(sim.preset), sim.TASK_FIELDS, sim.PARAM_FIELDS, workloads)


def run_episode(sim: Simulator, policy: Policy, workload: Workload, seed: int) -> dict[str, float]:
    """One episode of ``policy`` on ``workload``; the policy's randomness is seeded per episode."""
    sim.reset(workload)
    sim.decisions = 0
    policy.reset(episode_rng(seed, workload.episode, 1), oracle=sim if policy.needs_oracle else None)
    while not sim.done:
        sim.step(policy.decide(sim.view()))
    return sim.episode_metrics()


@dataclass
class Evaluation:
    scenario: str
    preset: str
    episodes: int
    seed: int
    trace: str | None
    results: dict[str, dict[str, float]] = field(default_factory=dict)  # policy -> metric -> mean
    std: dict[str, dict[str, float]] = field(default_factory=dict)  # policy -> metric -> std over episodes
    wall_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "scenario": self.scenario,
            "preset": self.preset,
            "episodes": self.episodes,
            "seed": self.seed,
            "trace": self.trace,
            "results": self.results,
            "std": self.std,
            "wall_s": self.wall_s,
        }

    def table(self, all_metrics: bool = False) -> str:
        metrics = [m for m in METRIC_KEYS if any(m in r for r in self.results.values())]
        extra = sorted({m for r in self.results.values() for m in r} - set(METRIC_KEYS)) if all_metrics else []
        cols = metrics + extra
        head = ["policy"] + cols
        rows = [head]
        for pol, res in self.results.items():
            row = [pol]
            for m in cols:
                v = res.get(m, math.nan)
                s = self.std.get(pol, {}).get(m, 0.0)
                row.append(f"{v:.4g}" + (f" ±{s:.2g}" if self.episodes > 1 and s > 0 else ""))
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        src = f"trace {self.trace}" if self.trace else f"seed {self.seed}"
        return f"scenario {self.scenario} ({self.preset}), {self.episodes} episode(s), {src}\n" + "\n".join(lines)


def evaluate(
    sim: Simulator,
    policy_names: list[str],
    episodes: int,
    seed: int,
    trace: str | None = None,
    progress: bool | None = None,
    preset_name: str = "",
) -> Evaluation:
    """Run every policy for ``episodes`` episodes on the same workloads and average the metrics."""
    policies = [make_policy(name, sim) for name in policy_names]  # unknown names fail before any work
    workloads = load_trace_workloads(sim, trace, episodes) if trace else generate_workloads(sim, episodes, seed)
    out = Evaluation(sim.name, preset_name or sim.name, len(workloads), seed, trace)
    total = len(policies) * len(workloads)
    with tqdm(total=total, desc=f"evaluate {sim.name}", unit="episode", disable=(None if progress is None else not progress),
              leave=False) as bar:
        for name, policy in zip(policy_names, policies):
            per_episode: list[dict[str, float]] = []
            t0 = time.perf_counter()
            for wl in workloads:
                per_episode.append(run_episode(sim, policy, wl, seed))
                bar.set_postfix_str(f"{name} " + " ".join(f"{k}={v:.3g}" for k, v in list(per_episode[-1].items())[:3]))
                bar.update(1)
            out.wall_s[name] = time.perf_counter() - t0
            keys = per_episode[0].keys()
            out.results[name] = {k: float(np.mean([e[k] for e in per_episode])) for k in keys}
            out.std[name] = {k: float(np.std([e[k] for e in per_episode])) for k in keys}
    return out
