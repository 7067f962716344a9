"""`aigc-offload bench env`: simulator throughput per scenario and the LAD-TS Opt-TS episode time.
`aigc-offload bench train`: LAD-TS training seconds per episode at the paper's default point."""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from pathlib import Path

from policies.errors import UserError
from policies.evaluate import run_episode
from policies.heuristics import make_policy
from policies.scenarios import available_scenarios, make_simulator
from policies.workload import episode_rng

BENCH_POLICY_ORDER = ("round_robin", "random", "greedy", "local")


def pin_to_one_core() -> int | None:
    """Run on one core so numbers compare across machines with different core counts."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return cpu
    return None


def bench_scenario(name: str, min_seconds: float = 1.0, max_episodes: int = 20) -> dict:
    """Decisions per second of one scenario under a heuristic, workload generation included."""
    sim = make_simulator(name)
    policy_name = next(p for p in BENCH_POLICY_ORDER + sim.POLICIES if p in sim.POLICIES)
    policy = make_policy(policy_name, sim)
    decisions = 0
    episodes = 0
    t0 = time.perf_counter()
    while episodes < max_episodes and (episodes == 0 or time.perf_counter() - t0 < min_seconds):
        wl = sim.generate_workload(episode_rng(0, episodes, 0), episodes)
        run_episode(sim, policy, wl, 0)
        decisions += sim.decisions
        episodes += 1
    elapsed = time.perf_counter() - t0
    return {
        "policy": policy_name,
        "episodes": episodes,
        "decisions": decisions,
        "decisions_per_s": decisions / elapsed,
        "episode_s": elapsed / episodes,
    }


def bench_ladts_opt(repeats: int = 5) -> dict:
    """Wall time of one full `ladts` episode under Opt-TS (workload generation included)."""
    sim = make_simulator("ladts")
    policy = make_policy("opt", sim)
    times, tasks = [], []
    for k in range(repeats):
        t0 = time.perf_counter()
        wl = sim.generate_workload(episode_rng(0, k, 0), k)
        run_episode(sim, policy, wl, 0)
        times.append(time.perf_counter() - t0)
        tasks.append(wl.num_tasks)
    return {"median_s": statistics.median(times), "min_s": min(times), "tasks": int(statistics.mean(tasks))}


def bench_env() -> dict:
    cpu = pin_to_one_core()
    scenarios = {name: bench_scenario(name) for name in available_scenarios()}
    out: dict = {"scenarios": scenarios, "cpu": cpu}
    if "ladts" in scenarios:
        opt = bench_ladts_opt()
        out["ladts_opt_episode_s"] = opt["median_s"]
        out["ladts_opt"] = opt
    return out


def format_bench_env(res: dict) -> str:
    lines = [f"{'scenario':10s} {'policy':12s} {'decisions/s':>12s} {'episode_s':>10s} {'decisions':>10s}"]
    for name, r in res["scenarios"].items():
        lines.append(f"{name:10s} {r['policy']:12s} {r['decisions_per_s']:12.0f} {r['episode_s']:10.4f} {r['decisions']:10d}")
    if "ladts_opt_episode_s" in res:
        o = res["ladts_opt"]
        lines.append(f"ladts Opt-TS episode ({o['tasks']} tasks): median {o['median_s']:.3f} s, min {o['min_s']:.3f} s "
                     f"(one core, workload generation included)")
    return "\n".join(lines)


def bench_train_ladts(episodes: int = 3, updates_per_slot: tuple[int, ...] = (1, 3), overrides: dict | None = None,
                      seed: int = 0) -> dict:
    """LAD-TS training time per episode on the ``ladts`` preset (the paper's default point), one process on one
    core, for each number of updates per slot: 1 is the authors' amount of learning per episode (one update per
    station per slot), 3 is ours (``ladts.Config.updates_per_slot``, converged within the paper's 60 episodes).

    Trains ``episodes`` episodes after a first one that only fills the pools (no update until |R_b| > 300) and
    reports the medians of the per-episode CPU and wall times the trainer logs, against the authors' code's
    78 s per episode. The 1-minute load average before each setting is printed beside it: the numbers are
    those of an otherwise idle machine only when it is near 0."""
    from policies.reproduce.core import read_metrics
    from policies.reproduce.ladts import AUTHORS_S_PER_EPISODE
    from policies.train.registry import train

    cpu = pin_to_one_core()
    out: dict = {"cpu": cpu, "episodes": episodes, "overrides": dict(overrides or {}),
                 "authors_s_per_episode": AUTHORS_S_PER_EPISODE, "settings": {}}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for ups in updates_per_slot:
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            run = Path(tmp) / f"ups{ups}"
            train("ladts", "ladts", seed, run, {**(overrides or {}), "updates_per_slot": ups}, episodes=episodes + 1,
                  progress=False)
            rows = [r for r in read_metrics(run) if math.isfinite(r["critic_loss"])][-episodes:]
            if not rows:
                raise UserError(f"no episode of the {episodes + 1} trained made an update (learning_starts is above "
                                "the tuples a station collects); measure more episodes or lower it")
            cpu_s = statistics.median(r["episode_cpu_s"] for r in rows)
            out["settings"][str(ups)] = {
                "updates_per_slot": ups, "episodes_measured": len(rows), "load_avg_1min": load,
                "cpu_s_per_episode": cpu_s, "wall_s_per_episode": statistics.median(r["episode_s"] for r in rows),
                "updates_per_episode": statistics.median(b["updates"] - a["updates"] for a, b in zip(rows, rows[1:]))
                if len(rows) > 1 else rows[0]["updates"],
                "speedup_vs_authors_cpu": AUTHORS_S_PER_EPISODE / cpu_s}
    return out


def format_bench_train(res: dict) -> str:
    scene = (", ".join(f"{k}={v}" for k, v in res["overrides"].items()) if res["overrides"]
             else "the paper's default point: N = 50, B = 20")
    lines = [f"LAD-TS training per episode, preset ladts ({scene}), one core (cpu {res['cpu']}), "
             f"median of {res['episodes']} episodes with updates",
             f"{'updates/slot':>12s} {'updates/ep':>10s} {'CPU s/ep':>9s} {'wall s/ep':>9s} "
             f"{'vs authors ' + format(res['authors_s_per_episode'], '.0f') + ' s':>16s} {'load avg':>8s}"]
    for r in res["settings"].values():
        lines.append(f"{r['updates_per_slot']:12d} {r['updates_per_episode']:10.0f} {r['cpu_s_per_episode']:9.3f} "
                     f"{r['wall_s_per_episode']:9.3f} {r['speedup_vs_authors_cpu']:15.1f}x {r['load_avg_1min']:8.2f}")
    return "\n".join(lines)
