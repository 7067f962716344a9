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


def _ours_setting(run: Path, ups: int, episodes: int, load: float, authors_s: float) -> dict:
    """Medians of the last ``episodes`` logged episodes with updates of one of our training runs."""
    from policies.reproduce.core import read_metrics

    logged = read_metrics(run)
    measured = [i for i, r in enumerate(logged) if math.isfinite(r["critic_loss"])][-episodes:]
    rows = [logged[i] for i in measured]
    if not rows:
        raise UserError(f"no episode of the {episodes + 1} trained made an update (learning_starts is above "
                        "the tuples a station collects); measure more episodes or lower it")
    cpu_s = statistics.median(r["episode_cpu_s"] for r in rows)
    return {
        "updates_per_slot": ups, "episodes_measured": len(rows), "load_avg_1min": load,
        "cpu_s_per_episode": cpu_s, "wall_s_per_episode": statistics.median(r["episode_s"] for r in rows),
        "updates_per_episode": statistics.median(  # the trainer logs cumulative updates
            logged[i]["updates"] - (logged[i - 1]["updates"] if i else 0) for i in measured),
        "speedup_vs_authors_cpu": authors_s / cpu_s}


def _load_avg() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def bench_train_ladts(episodes: int = 3, updates_per_slot: tuple[int, ...] = (1, 3), overrides: dict | None = None,
                      seed: int = 0, reference: bool = False) -> dict:
    """LAD-TS training time per episode on the ``ladts`` preset (the paper's default point), one process on one
    core, for each number of updates per slot: 1 is the authors' amount of learning per episode (one update per
    station per slot), 3 is ours (``ladts.Config.updates_per_slot``, converged within the paper's 60 episodes).

    Trains ``episodes`` episodes after a first one that only fills the pools (no update until |R_b| > 300) and
    reports the medians of the per-episode CPU and wall times the trainer logs, against the authors' code's
    78 s per episode. The 1-minute load average before each setting is printed beside it: the numbers are
    those of an otherwise idle machine only when it is near 0.

    ``reference``: also train the timing reference (``policies.train.ladts_reference``: a LAD-TS trainer in the
    authors' loop structure, one single-sample actor call per task, one update per station per slot) in this
    process, its fill episode and ``episodes`` measured ones, interleaved episode by episode with ours (each
    round: one episode of every setting of ours, then one of the reference), so that all see the same machine
    state; ``speedup_vs_reference_cpu`` is the reference's median CPU seconds per episode over ours. A
    reference episode at the default point takes a minute or more of CPU."""
    from policies.reproduce.ladts import AUTHORS_S_PER_EPISODE
    from policies.train.registry import train

    cpu = pin_to_one_core()
    overrides = dict(overrides or {})
    out: dict = {"cpu": cpu, "episodes": episodes, "overrides": overrides,
                 "authors_s_per_episode": AUTHORS_S_PER_EPISODE, "settings": {}}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        if not reference:
            for ups in updates_per_slot:
                load = _load_avg()
                run = Path(tmp) / f"ups{ups}"
                train("ladts", "ladts", seed, run, {**overrides, "updates_per_slot": ups}, episodes=episodes + 1,
                      progress=False)
                out["settings"][str(ups)] = _ours_setting(run, ups, episodes, load, AUTHORS_S_PER_EPISODE)
            return out
        from policies.train import ladts_reference

        ref = ladts_reference.ReferenceTrainer(seed, overrides)
        loads: dict = {}
        ref_rows: list[dict] = []
        fill: dict = {}
        for rnd in range(episodes + 1):  # round 0 fills the pools of every trainer; it is not measured
            for ups in updates_per_slot:
                if rnd == 1:
                    loads[ups] = _load_avg()
                # resumes the run's checkpoint and trains its next episode
                train("ladts", "ladts", seed, Path(tmp) / f"ups{ups}",
                      {**overrides, "updates_per_slot": ups, "checkpoint_every": 1}, episodes=rnd + 1, progress=False)
            if rnd == 1:
                loads["reference"] = _load_avg()
            row = ref.run_episode()
            if rnd == 0:
                fill = row
            else:
                ref_rows.append(row)
        for ups in updates_per_slot:
            out["settings"][str(ups)] = _ours_setting(Path(tmp) / f"ups{ups}", ups, episodes,
                                                      loads.get(ups, float("nan")), AUTHORS_S_PER_EPISODE)
    ladts_reference.check_measured(ref_rows, episodes + 1)
    out["reference"] = {**ladts_reference.summarize(ref_rows), "load_avg_1min": loads.get("reference", float("nan")),
                        "fill": fill}
    ref_cpu = out["reference"]["cpu_s_per_episode"]
    out["reference"]["speedup_vs_authors_cpu"] = AUTHORS_S_PER_EPISODE / ref_cpu
    for r in out["settings"].values():
        r["speedup_vs_reference_cpu"] = ref_cpu / r["cpu_s_per_episode"]
    return out


def format_bench_train(res: dict) -> str:
    scene = (", ".join(f"{k}={v}" for k, v in res["overrides"].items()) if res["overrides"]
             else "the paper's default point: N = 50, B = 20")
    ref = res.get("reference")
    lines = [f"LAD-TS training per episode, preset ladts ({scene}), one core (cpu {res['cpu']}), "
             f"median of {res['episodes']} episodes with updates"
             + (", interleaved episode by episode with the reference" if ref else "")]
    head = (f"{'updates/slot':>12s} {'updates/ep':>10s} {'CPU s/ep':>9s} {'wall s/ep':>9s} "
            f"{'vs authors ' + format(res['authors_s_per_episode'], '.0f') + ' s':>16s}")
    lines.append(head + (f" {'vs reference':>12s}" if ref else "") + f" {'load avg':>8s}")
    for r in res["settings"].values():
        line = (f"{r['updates_per_slot']:12d} {r['updates_per_episode']:10.0f} {r['cpu_s_per_episode']:9.3f} "
                f"{r['wall_s_per_episode']:9.3f} {r['speedup_vs_authors_cpu']:15.1f}x")
        if ref:
            line += f" {r['speedup_vs_reference_cpu']:11.1f}x"
        lines.append(line + f" {r['load_avg_1min']:8.2f}")
    if ref:
        lines.append(f"{'reference':>12s} {ref['updates_per_episode']:10.0f} {ref['cpu_s_per_episode']:9.3f} "
                     f"{ref['wall_s_per_episode']:9.3f} {ref['speedup_vs_authors_cpu']:15.1f}x {1.0:11.1f}x "
                     f"{ref['load_avg_1min']:8.2f}")
        lines.append(f"reference: the authors' loop structure (policies/train/ladts_reference.py), one single-sample "
                     f"actor call per task ({ref['actor_calls_per_episode']:.0f} per episode), one update per station "
                     f"per slot; median of {ref['episodes_measured']} episodes after a fill episode "
                     f"({ref['fill']['cpu_s']:.3f} s CPU). 'vs reference' = its CPU s/ep / ours, measured in this "
                     f"process; 'vs authors' = {res['authors_s_per_episode']:.0f} s / CPU s/ep, a figure measured "
                     "at another time")
    return "\n".join(lines)
