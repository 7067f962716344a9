"""`aigc-offload bench env`: simulator throughput per scenario and the LAD-TS Opt-TS episode time."""

from __future__ import annotations

import os
import statistics
import time

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
