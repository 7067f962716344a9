"""AIECOF / TOPPO (paper 002): methods, experiments, the paper's stated numbers, and the report.

Paper (X. Zhang et al., "DRL-Enabled Computation Offloading for AIGC Services in IoIT-assisted Edge
Computing Networks"), spec docs/papers/aiecof.md section 6:
- Table IV / Figs. 5-6: nine methods at M = 30 InDes, N = 8 ESs (delay, energy, dropout, loading, reward);
- Fig. 3: TOPPO's convergence under learning rates, batch sizes and discount factors;
- Fig. 4: latency and failure rate of type A / type B tasks as the number of tasks of one type grows;
- Fig. 7: device CPU utilization early in TOPPO's training and after it;
- Fig. 8: reward vs the number of InDes M = 20..60 (every method retrained per M);
- Fig. 9: energy, latency, load and success rate vs the ESs' CPU capacity (f_n scaled, retrained per scale).
  Here only s = 0.25 is retrained: for s >= 0.4 the MDP is exactly that of s = 1 (every ES task takes one slot,
  the observation is normalised by the scaled f_n, ES energy is not counted; spec 1.8), so s = 0.5, 0.75 and
  1.25 evaluate the M = 30 runs (``policies_from``) instead of training duplicates of them.

Table IV, Figs. 8 and 9 are method x point evaluations (``policies.reproduce.core``); Figs. 3, 4 and 7 are
the spec's ``extra`` studies below (TOPPO variants trained beside the main runs, per-type metrics and
per-device utilization from evaluation episodes of the trained runs).
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
import time
from pathlib import Path

import numpy as np

from policies.reproduce.core import (EVAL_SEED_BASE, Experiment, Method, PaperSpec, Point, Settings, _msg, _stats,
                                     _train_job, check_reused_run, invocation_lines, read_metrics, run_finished,
                                     training_and_runs_sections, transferred_points)
from policies.reproduce.png import Panel, Series, figure

METHODS = (
    Method("toppo", "TOPPO", trained=True),
    Method("aiecof_dqn", "DQN", trained=True),
    Method("aiecof_ddqn", "DoubleDQN", trained=True),
    Method("aiecof_dueling", "DuelingDQN", trained=True),
    Method("aiecof_d3qn", "D3QN", trained=True),
    Method("aiecof_ac", "AC", trained=True),
    Method("aiecof_a2c", "A2C", trained=True),
    Method("round_robin", "Round-Robin", trained=False),
    Method("random", "Random", trained=False),
    Method("greedy", "Greedy (ours)", trained=False, in_paper=False),
    Method("local", "All-local (ours)", trained=False, in_paper=False),
)
COLORS = {"toppo": (214, 39, 40), "aiecof_dqn": (31, 119, 180), "aiecof_ddqn": (44, 160, 44),
          "aiecof_dueling": (255, 127, 14), "aiecof_d3qn": (148, 103, 189), "aiecof_ac": (140, 86, 75),
          "aiecof_a2c": (227, 119, 194), "round_robin": (127, 127, 127), "random": (188, 189, 34),
          "greedy": (23, 190, 207), "local": (60, 60, 60)}
M_VALUES = (20, 30, 40, 50, 60)
S_VALUES = ("0.25", "0.5", "0.75", "1.0", "1.25")  # strings: `--points edge_capacity=0.25,1.0`


def m_point(M: int) -> Point:
    return Point(f"M{M}", {"num_devices": M})


S_SAME_MDP = 0.4  # from this scale up, an ES finishes every task within one slot (f_n dt >= W): the MDP of s = 1


def s_point(s: str) -> Point:
    """Fig. 9's point at scale ``s``: M30 itself at s = 1; the M30 runs evaluated at s for the other s >= 0.4
    (the same MDP, so retraining would only repeat M30's training); retrained below."""
    if float(s) == 1.0:
        return MAIN
    over = {"num_devices": 30, "edge_cpu_scale": float(s)}
    return Point(f"M30_s{s}", over, policies_from=MAIN.name if float(s) >= S_SAME_MDP else None)


MAIN = m_point(30)
EXPERIMENTS = (
    Experiment("table4", "All methods at M = 30 InDes, N = 8 ESs", "Table IV", "InDes M", (30,), (MAIN,)),
    Experiment("devices", "Performance vs the number of InDes (N = 8, every method retrained per M)", "Fig. 8",
               "InDes M", M_VALUES, tuple(m_point(M) for M in M_VALUES)),
    Experiment("edge_capacity", "Performance vs the ESs' CPU capacity f_n x s (M = 30; retrained at s = 0.25, the "
               "M = 30 policies at s >= 0.5)", "Fig. 9",
               "ES CPU scale s", S_VALUES, tuple(s_point(s) for s in S_VALUES)),
)
EXTRA_KEYS = ("hyper", "task_types", "cpu_util", "landscape")

# Fig. 3 (spec 6): TOPPO variants, each panel varies one hyperparameter; the rest are the defaults
HYPER_PANELS = {
    "lr": ("Fig. 3(a): learning rates lr1 (actor) / lr2 (critic)",
           [{"lr_actor": a, "lr_critic": c} for a in (1e-2, 1e-3, 1e-4) for c in (1e-2, 1e-3, 1e-4)]),
    "batch": ("Fig. 3(b): batch size", [{"batch_size": b} for b in (16, 32, 64, 128)]),
    "gamma": ("Fig. 3(c): discount factor gamma", [{"gamma": g} for g in (0.0, 0.5, 0.9, 0.99)]),
    "reward": ("(ours) training reward: each device's r_m,t (paper) or the slot's mean over devices",
               [{"team_reward": False}, {"team_reward": True}]),
    "entropy": ("(ours) entropy bonus of the actor loss (eq. 36 has none; spec 5: 0.01)",
                [{"entropy_coef": e} for e in (0.0, 0.01, 0.1)]),
}
HYPER_SEEDS = 1  # Fig. 3 variants train seed 0 only (the paper shows one curve per value); the default value
# of each panel is the main run of seed 0
P_VALUES = (0.2, 0.4, 0.6, 0.8, 1.0)  # Fig. 4: arrival probability of one type (the other at 0.6)

# the training settings of a full reproduction (the spec's hyperparameters are the algorithm defaults)
FULL_EPISODES = 200


def full() -> Settings:
    return Settings(seeds=3, episodes=FULL_EPISODES, eval_episodes=10, jobs=2, smooth=10)


def quick() -> Settings:
    """A few minutes: short runs, two points per sweep, the gamma panel of Fig. 3 only, one seed."""
    return Settings(seeds=1, episodes=12, eval_episodes=2, jobs=2, smooth=3,
                    x_subset={"devices": (20, 30), "edge_capacity": ("0.25", "1.0"), "hyper": ("gamma",),
                              "task_types": (0.2, 0.6, 1.0)},
                    reduced=["--quick: 12 training episodes per run (full: 200), one seed, 2 of 5 points per "
                             "sweep, only the gamma panel of Fig. 3, 2 evaluation episodes; a smoke run, not a result"])


# -- the paper's numbers ------------------------------------------------------------------------------
TABLE4 = {  # Table IV: delay (s), energy (J), dropout, loading, reward
    "round_robin": (0.781, 3869.83, 0.160, 0.1248, -0.29),
    "random": (0.830, 4118.00, 0.163, 0.1138, -5.77),
    "aiecof_dqn": (0.337, 1404.67, 0.071, 0.7370, 193.73),
    "aiecof_ddqn": (0.297, 1196.33, 0.073, 0.7459, 189.39),
    "aiecof_dueling": (0.285, 1120.17, 0.075, 0.7375, 192.12),
    "aiecof_d3qn": (0.401, 1744.00, 0.083, 0.6510, 171.43),
    "aiecof_ac": (0.279, 1031.17, 0.074, 0.7400, 182.08),
    "aiecof_a2c": (0.276, 1032.00, 0.078, 0.7230, 189.05),
    "toppo": (0.265, 984.17, 0.063, 0.7925, 205.99),
}
TABLE_METRICS = (("latency_s", "Delay (s)", "min"), ("energy_episode_j", "Energy (J/episode)", "min"),
                 ("drop_rate", "Dropout", "min"), ("load", "Loading", "max"), ("reward", "Reward", "max"))
# Sec. V-C text (Fig. 6): TOPPO's reduction against each method; the D3QN figures are the conclusion's
# "up to 43.56%" / "as much as 33.90%"
ENERGY_REDUCTION = {"round_robin": 0.7457, "random": 0.7610, "aiecof_dqn": 0.2994, "aiecof_ddqn": 0.1773,
                    "aiecof_dueling": 0.1214, "aiecof_d3qn": 0.4356, "aiecof_ac": 0.0456, "aiecof_a2c": 0.0464}
DELAY_REDUCTION = {"round_robin": 0.6611, "random": 0.6809, "aiecof_dqn": 0.2148, "aiecof_ddqn": 0.1091,
                   "aiecof_dueling": 0.0709, "aiecof_d3qn": 0.3390, "aiecof_ac": 0.0484, "aiecof_a2c": 0.0396}
REWARD_GAIN = {"aiecof_dqn": 0.0836, "aiecof_ddqn": 0.1208, "aiecof_dueling": 0.0843, "aiecof_d3qn": 0.1997,
               "aiecof_ac": 0.1161, "aiecof_a2c": 0.0882}
PAPER = {"cpu_before": 0.4257, "cpu_after": 0.7925, "near_optimal_episode": 40}


# -- extra studies: Figs. 3, 4, 7 ------------------------------------------------------------------------
def _wanted(settings: Settings, key: str) -> bool:
    return settings.experiments is None or key in settings.experiments


def _label(variant: dict) -> str:
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in variant.items())


def _dirname(variant: dict) -> str:
    return "toppo_" + re.sub(r"[^A-Za-z0-9.]+", "_", _label(variant)).strip("_")


def _train_jobs(jobs: list[dict], parallel: int) -> dict:
    sessions: dict[str, float] = {}
    if parallel <= 1 or len(jobs) <= 1:
        for job in jobs:
            res = _train_job(job)
            sessions[res["out"]] = res["session_s"]
            _msg(f"trained {job['out']} in {res['session_s']:.0f} s")
        return sessions
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=parallel, mp_context=mp.get_context("spawn")) as pool:
        for fut in as_completed([pool.submit(_train_job, j) for j in jobs]):
            res = fut.result()
            sessions[res["out"]] = res["session_s"]
            _msg(f"trained {res['out']} in {res['session_s']:.0f} s")
    return sessions


def _curve(rows: list[dict], key: str, w: int) -> np.ndarray:
    r = np.array([x[key] for x in rows], dtype=float)
    w = max(1, min(w, len(r)))
    return np.convolve(r, np.ones(w) / w, mode="valid")


def _hyper(settings: Settings, runs: Path, command: list[str]) -> dict:
    """Fig. 3: TOPPO's training curves per hyperparameter value (the default value reuses the main runs)."""
    from policies.train.toppo import Config

    effective = {**dataclasses.asdict(Config()), **settings.algo_overrides}
    base = {**settings.preset_overrides, **MAIN.preset_overrides}
    panels = [p for p in HYPER_PANELS if p in settings.x_subset.get("hyper", tuple(HYPER_PANELS))]
    plan, jobs = [], []
    for panel in panels:
        for variant in HYPER_PANELS[panel][1]:
            default = all(effective[k] == v for k, v in variant.items())
            dirs = []
            for seed in range(min(settings.seeds, HYPER_SEEDS)):
                d = runs / MAIN.name / f"toppo_s{seed}" if default else runs / "hyper" / f"{_dirname(variant)}_s{seed}"
                dirs.append(d)
                overrides = {**base, **settings.algo_overrides, **({} if default else variant)}
                if run_finished(d, settings.episodes):  # reused only if trained as this invocation would train it
                    check_reused_run(d, "toppo", "aiecof", overrides, settings.episodes)
                elif not default and all(j["out"] != str(d) for j in jobs):
                    jobs.append({"algo": "toppo", "scenario": "aiecof", "seed": seed, "out": str(d),
                                 "episodes": settings.episodes, "command": command, "overrides": overrides})
            plan.append((panel, variant, default, dirs))
    _msg(f"Fig. 3 study: {len(jobs)} TOPPO variant runs to train or resume")
    t0 = time.perf_counter()
    sessions = _train_jobs(jobs, settings.jobs)
    out: dict = {"panels": {}, "trained_now": len(jobs), "training_wall_s": time.perf_counter() - t0,
                 "training_compute_s": float(sum(sessions.values()))}
    for panel, variant, default, dirs in plan:
        curves = [_curve(read_metrics(d), "reward", settings.smooth) for d in dirs]
        n = min(len(c) for c in curves)
        arr = np.stack([c[:n] for c in curves])
        w = settings.episodes - n + 1
        tail = max(1, n // 10)
        entry = out["panels"].setdefault(panel, {"title": HYPER_PANELS[panel][0], "variants": {}})
        entry["variants"][_label(variant)] = {
            "overrides": variant, "default": default, "runs": [str(d) for d in dirs],
            "episode": [int(i + w - 1) for i in range(n)], "reward_mean": arr.mean(0).tolist(),
            "reward_std": arr.std(0).tolist(), "final_reward": _stats(arr[:, -tail:].mean(axis=1).tolist()),
            "best_reward": _stats(arr.max(axis=1).tolist())}
    return out


def _per_type(sim) -> dict[str, float]:
    """Latency (drops count tau dt) and failure rate of type A (0) and type B (1) tasks of the last episode."""
    dt = sim.preset.slot_s
    res = {}
    for name, k in (("a", 0), ("b", 1)):
        sel = sim.ttype == k
        n = int(sel.sum())
        res[f"tasks_{name}"] = float(n)
        res[f"latency_{name}_s"] = float(sim.delay_slots[sel].mean() * dt) if n else math.nan
        res[f"failure_{name}"] = float(sim.dropped[sel].mean()) if n else math.nan
    return res


def _task_types(settings: Settings, runs: Path) -> dict:
    """Fig. 4: the trained TOPPO runs (M = 30) evaluated with more or fewer tasks of one type."""
    from policies.evaluate import generate_workloads, run_episode
    from policies.heuristics import make_policy
    from policies.scenarios import make_simulator

    keep = [float(k) for k in settings.x_subset.get("task_types", P_VALUES)]
    base = {**settings.preset_overrides, **MAIN.preset_overrides}
    out: dict = {"p_values": [p for p in P_VALUES if p in keep], "series": {}}
    for typ in ("a", "b"):
        for p in out["p_values"]:
            sim = make_simulator("aiecof", {**base, f"arrival_prob_{typ}": p})
            for key, name in (("toppo", None), ("greedy", "greedy")):
                per_seed: dict[str, list] = {}
                for seed in range(settings.seeds):
                    pol = make_policy(name or str(runs / MAIN.name / f"toppo_s{seed}"), sim)
                    eps = [(run_episode(sim, pol, wl, EVAL_SEED_BASE + seed), _per_type(sim))[1]
                           for wl in generate_workloads(sim, settings.eval_episodes, EVAL_SEED_BASE + seed)]
                    for k in eps[0]:
                        per_seed.setdefault(k, []).append(float(np.nanmean([e[k] for e in eps])))
                out["series"].setdefault(f"vary_{typ}", {}).setdefault(key, {})[str(p)] = {
                    k: _stats(v) for k, v in per_seed.items()}
    return out


def _cpu_util(settings: Settings, runs: Path, command: list[str]) -> dict:
    """Fig. 7: per-device CPU utilization (eq. 12's L averaged over the episode) of TOPPO after its first
    training episode and after training, greedy actions on the evaluation workloads."""
    from policies.evaluate import generate_workloads, run_episode
    from policies.heuristics import make_policy
    from policies.scenarios import make_simulator

    base = {**settings.preset_overrides, **MAIN.preset_overrides}
    jobs = []
    early = [runs / "cpu_util" / f"toppo_ep1_s{seed}" for seed in range(settings.seeds)]
    for seed, d in enumerate(early):
        if run_finished(d, 1):
            check_reused_run(d, "toppo", "aiecof", {**base, **settings.algo_overrides}, 1)
        else:
            jobs.append({"algo": "toppo", "scenario": "aiecof", "seed": seed, "out": str(d), "episodes": 1,
                         "command": command, "overrides": {**base, **settings.algo_overrides}})
    _train_jobs(jobs, 1)
    sim = make_simulator("aiecof", base)
    T = sim.T
    out: dict = {}
    for stage, dirs in (("after_episode_1", early),
                        ("after_training", [runs / MAIN.name / f"toppo_s{s}" for s in range(settings.seeds)])):
        per_device, mean = [], []
        for seed, d in enumerate(dirs):
            pol = make_policy(str(d), sim)
            loads = []
            for wl in generate_workloads(sim, settings.eval_episodes, EVAL_SEED_BASE + seed):
                run_episode(sim, pol, wl, EVAL_SEED_BASE + seed)
                loads.append(sim.loads[:, :T].mean(axis=1))
            dev = np.mean(loads, axis=0)
            per_device.append(dev)
            mean.append(float(dev.mean()))
        pd = np.stack(per_device)
        out[stage] = {"runs": [str(d) for d in dirs], "per_device_mean": pd.mean(0).tolist(),
                      "per_device_std": pd.std(0).tolist(), "mean": _stats(mean)}
    rows = [read_metrics(runs / MAIN.name / f"toppo_s{s}") for s in range(settings.seeds)]
    out["training_log"] = {"first_episode_load": _stats([r[0]["load"] for r in rows]),
                           "last_10pct_load": _stats([float(np.mean([x["load"] for x in r[-max(1, len(r) // 10):]]))
                                                      for r in rows])}
    return out


class LocalMix:
    """Reference of ours for the reward landscape: each task runs locally with probability q, else on an ES
    drawn uniformly (blind coin flips, no state). Shows what eq. 30 pays for randomisation alone."""

    needs_oracle = False

    def __init__(self, q: float, num_edges: int):
        self.q, self.N, self.name = q, num_edges, f"mix{q:g}"

    def reset(self, rng: np.random.Generator, oracle=None) -> None:
        self.rng = rng

    def decide(self, view):
        from policies.scenarios.base import OffloadDecision

        t = self.rng.integers(1, self.N + 1, size=view.n)
        t[self.rng.random(view.n) < self.q] = 0
        return OffloadDecision(target=t.astype(np.int64))


MIX_Q = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _landscape(settings: Settings) -> dict:
    """Eq. 30's team return of the blind local/ES mixes at M = 30 (no training): randomisation is rewarded."""
    from policies.evaluate import generate_workloads, run_episode
    from policies.scenarios import make_simulator

    sim = make_simulator("aiecof", {**settings.preset_overrides, **MAIN.preset_overrides})
    out: dict = {"q_local": list(MIX_Q), "methods": {}}
    for q in MIX_Q:
        pol = LocalMix(q, sim.N)
        per_seed: dict[str, list] = {}
        for seed in range(settings.seeds):
            eps = [run_episode(sim, pol, wl, EVAL_SEED_BASE + seed)
                   for wl in generate_workloads(sim, settings.eval_episodes, EVAL_SEED_BASE + seed)]
            for k in eps[0]:
                per_seed.setdefault(k, []).append(float(np.mean([e[k] for e in eps])))
        out["methods"][f"{q:g}"] = {k: _stats(v) for k, v in per_seed.items()}
    return out


def extra(spec: PaperSpec, settings: Settings, runs: Path, command: list[str]) -> dict:
    res: dict = {}
    if _wanted(settings, "landscape"):
        res["landscape"] = _landscape(settings)
    if _wanted(settings, "hyper"):
        res["hyper"] = _hyper(settings, runs, command)
    if _wanted(settings, "task_types"):
        res["task_types"] = _task_types(settings, runs)
    if _wanted(settings, "cpu_util"):
        res["cpu_util"] = _cpu_util(settings, runs, command)
    return res


# -- headline, orderings -------------------------------------------------------------------------------
def _m(res: dict, method: str, metric: str) -> float:
    return res["methods"][method][metric]["mean"]


def _converged_episode(conv: dict) -> int | None:
    """First episode at which the smoothed mean reward comes within 5% of its last-10% level (its first
    entry into the band), None without curves."""
    y = np.asarray(conv["reward_mean"], float)
    if y.size == 0:
        return None
    final = float(np.mean(y[-max(1, y.size // 10):]))
    ok = np.flatnonzero(np.abs(y - final) <= 0.05 * abs(final))
    return int(conv["episode"][int(ok[0])]) if ok.size else None


def headline(results: dict) -> list[dict]:
    rows = []
    t4 = results["experiments"].get("table4")
    if t4:
        r = t4["points"]["30"]
        ours = lambda k: _m(r, "toppo", k)  # noqa: E731
        for key, metric, paper, what in (("energy_reduction", "energy_episode_j", ENERGY_REDUCTION, "lower energy"),
                                         ("delay_reduction", "latency_s", DELAY_REDUCTION, "lower delay")):
            for b, pv in paper.items():
                base = _m(r, b, metric)
                rows.append({"key": f"{key}_{b}", "what": f"TOPPO {what} than {results['methods'][b]['label']}",
                             "ours": (base - ours(metric)) / base if base else math.nan, "paper": pv,
                             "reference": "Sec. V-C, Fig. 6" + (" / conclusion" if b == "aiecof_d3qn" else ""),
                             "pct": True})
        for b, pv in REWARD_GAIN.items():
            base = _m(r, b, "reward")
            rows.append({"key": f"reward_gain_{b}", "what": f"TOPPO reward above {results['methods'][b]['label']}",
                         "ours": (ours("reward") - base) / abs(base) if base else math.nan, "paper": pv,
                         "reference": "Sec. V-C, Fig. 5 (Table IV itself gives other %)", "pct": True})
        for metric, name, _ in TABLE_METRICS:
            s = r["methods"]["toppo"][metric]
            rows.append({"key": f"toppo_{metric}", "what": f"TOPPO {name[0].lower() + name[1:]}", "ours": s["mean"],
                         "ours_std": s["std"], "paper": TABLE4["toppo"][[m for m, _, _ in TABLE_METRICS].index(metric)],
                         "reference": "Table IV", "pct": False})
    cpu = results.get("extra", {}).get("cpu_util")
    if cpu:
        for stage, key in (("after_episode_1", "cpu_before"), ("after_training", "cpu_after")):
            s = cpu[stage]["mean"]
            rows.append({"key": key, "what": f"TOPPO mean device CPU utilization, {stage.replace('_', ' ')}",
                         "ours": s["mean"], "ours_std": s["std"], "paper": PAPER[key], "reference": "Fig. 7",
                         "pct": True})
    conv = results["convergence"]["methods"].get("toppo")
    if conv:
        e = _converged_episode(conv)
        rows.append({"key": "near_optimal_episode", "what": "TOPPO: first episode within 5% of its final training "
                     "reward (smoothed)", "ours": math.nan if e is None else e,
                     "paper": PAPER["near_optimal_episode"], "reference": "Sec. V-C, Fig. 5", "pct": False})
    return rows


def orderings(results: dict) -> list[str]:
    """Sentences where the paper's claims do not hold in our numbers."""
    out = []
    labels = {k: v["label"] for k, v in results["methods"].items()}
    paper_methods = [k for k, v in results["methods"].items() if v["in_paper"]]
    exps = results["experiments"]
    checks = []
    if "table4" in exps:
        checks += [("table4", "30", m, how) for m, _, how in TABLE_METRICS if m != "load"]
    if "devices" in exps:
        checks += [("devices", x, "reward", "max") for x in exps["devices"]["x_values"] if int(x) >= 30]
    if "edge_capacity" in exps:
        checks += [("edge_capacity", x, m, how) for x in exps["edge_capacity"]["x_values"]
                   for m, how in (("energy_episode_j", "min"), ("latency_s", "min"), ("completion_rate", "max"))]
    for ek, x, metric, how in checks:
        e = exps[ek]
        vals = {m: _m(e["points"][x], m, metric) for m in paper_methods if m in e["points"][x]["methods"]}
        best = (min if how == "min" else max)(vals, key=vals.get)
        if best != "toppo":
            out.append(f"{e['figure']} {e['x_label']} = {x}, {metric}: best of the paper's nine is {labels[best]} "
                       f"({vals[best]:.4g}); TOPPO {vals['toppo']:.4g}")
    return out


# -- figures ---------------------------------------------------------------------------------------------
def _series_for(results: dict, e: dict, metric: str, in_paper_only: bool = False) -> list[Series]:
    ser = []
    for k, meta in results["methods"].items():
        if in_paper_only and not meta["in_paper"]:
            continue
        xs = [x for x in e["x_values"] if k in e["points"][x]["methods"]]
        if not xs:
            continue
        ys = [e["points"][x]["methods"][k][metric]["mean"] for x in e["x_values"]]
        sd = [e["points"][x]["methods"][k][metric]["std"] for x in e["x_values"]]
        ser.append(Series(meta["label"], [float(x) for x in e["x_values"]], ys, sd, color=COLORS.get(k)))
    return ser


def _figures(results: dict, out: Path) -> list[str]:
    files = []
    labels = {k: v["label"] for k, v in results["methods"].items()}
    conv = results["convergence"]["methods"]
    if conv:
        series = [Series(labels[k], c["episode"], c["reward_mean"], c["reward_std"], color=COLORS.get(k))
                  for k, c in conv.items()]
        w = next(iter(conv.values()))["window"]
        figure(out / "fig5_convergence.png", [Panel(f"Fig. 5: episode reward ({w}-episode mean, +-std over seeds)",
                                                    "episode", "team reward", series, markers=False)],
               panel_w=1100, panel_h=460)
        files.append("fig5_convergence.png")
    t4 = results["experiments"].get("table4")
    if t4:
        panels = [Panel(f"Table IV / Fig. 6: {name}", "", name, _series_for(results, t4, metric), kind="bar",
                        categories=["M = 30"]) for metric, name, _ in TABLE_METRICS]
        figure(out / "fig6_table4.png", panels, panel_w=560, panel_h=360, ncols=3)
        files.append("fig6_table4.png")
    for ek, fname, metrics in (
            ("devices", "fig8_devices.png", (("reward", "reward"), ("latency_s", "delay (s)"),
                                             ("drop_rate", "dropout"))),
            ("edge_capacity", "fig9_edge_capacity.png", (("energy_episode_j", "energy (J/episode)"),
                                                         ("latency_s", "latency (s)"), ("load", "load"),
                                                         ("completion_rate", "success rate")))):
        e = results["experiments"].get(ek)
        if not e:
            continue
        panels = [Panel(f"{e['figure']}: {ylabel}", e["x_label"], ylabel, _series_for(results, e, metric), kind="bar",
                        categories=e["x_values"]) for metric, ylabel in metrics]
        figure(out / fname, panels, panel_w=600, panel_h=380, ncols=2)
        files.append(fname)
    ex = results.get("extra", {})
    if "hyper" in ex:
        panels = []
        for panel, p in ex["hyper"]["panels"].items():
            ser = [Series(lab, v["episode"], v["reward_mean"], v["reward_std"]) for lab, v in p["variants"].items()]
            panels.append(Panel(p["title"].split(":")[0], "episode", "team reward", ser, markers=False))
        # one figure per panel: the legends differ
        for panel, pn in zip(ex["hyper"]["panels"], panels):
            name = f"fig3_{panel}.png"
            figure(out / name, [pn], title=ex["hyper"]["panels"][panel]["title"], panel_w=900, panel_h=400)
            files.append(name)
    if "task_types" in ex:
        tt = ex["task_types"]
        panels = []
        for metric, ylabel in (("latency", "latency (s)"), ("failure", "failure rate")):
            ser = []
            for vary in ("a", "b"):
                s = tt["series"].get(f"vary_{vary}", {}).get("toppo")
                if not s:
                    continue
                ps = [str(p) for p in tt["p_values"]]
                ser.append(Series(f"type {vary.upper()} (TOPPO)", [s[p][f"tasks_{vary}"]["mean"] for p in ps],
                                  [s[p][f"{metric}_{vary}" + ("_s" if metric == "latency" else "")]["mean"] for p in ps],
                                  [s[p][f"{metric}_{vary}" + ("_s" if metric == "latency" else "")]["std"] for p in ps]))
            panels.append(Panel(f"Fig. 4: {ylabel}", "tasks of the type in the episode", ylabel, ser))
        figure(out / "fig4_task_types.png", panels, panel_w=560, panel_h=380)
        files.append("fig4_task_types.png")
    if "cpu_util" in ex:
        cu = ex["cpu_util"]
        n = len(cu["after_training"]["per_device_mean"])
        ser = [Series(lab, list(range(n)), cu[st]["per_device_mean"], cu[st]["per_device_std"], color=col)
               for st, lab, col in (("after_episode_1", "after episode 1", (31, 119, 180)),
                                    ("after_training", "after training", (214, 39, 40)))]
        figure(out / "fig7_cpu_util.png", [Panel("Fig. 7: TOPPO device CPU utilization", "device", "utilization", ser,
                                                 kind="bar", categories=[str(i) for i in range(n)])],
               panel_w=1200, panel_h=400)
        files.append("fig7_cpu_util.png")
    return files


# -- report ----------------------------------------------------------------------------------------------
def _fmt(s: dict, digits: int = 3) -> str:
    return f"{s['mean']:.{digits}g} ± {s['std']:.2g}"


def _table(results: dict, e: dict, metrics) -> list[str]:
    labels = {k: v["label"] for k, v in results["methods"].items()}
    L = []
    for metric, name in metrics:
        L.append(f"{name} (mean ± std over seeds):\n")
        L.append("| method | " + " | ".join(f"{e['x_label']} = {x}" for x in e["x_values"]) + " |")
        L.append("|---|" + "---|" * len(e["x_values"]))
        for k in results["methods"]:
            cells = [_fmt(e["points"][x]["methods"][k][metric]) if k in e["points"][x]["methods"] else "n/a"
                     for x in e["x_values"]]
            L.append(f"| {labels[k]} | " + " | ".join(cells) + " |")
        L.append("")
    return L


def write_report(results: dict, out: Path) -> None:
    rows = headline(results)
    results["headline"] = rows
    figs = _figures(results, out)
    st = results["settings"]
    labels = {k: v["label"] for k, v in results["methods"].items()}
    ex = results.get("extra", {})
    L = [f"# AIECOF / TOPPO (paper 002) reproduced: {results['title']}\n",
         f"Generated by `{shlex.join(results['command'])}` ({results['mode']} run). Every number below was computed by "
         "that command from the trained runs listed at the end; the paper's numbers are quoted from Table IV and "
         "Sec. V. Spec, calibrations and deviations: `docs/papers/aiecof.md`.\n"]
    if st["reduced"]:
        L.append("**Reduced run** (the full run is `aigc-offload reproduce aiecof`: 3 seeds, 200 episodes per run, all "
                 "points, 10 evaluation episodes per seed): " + "; ".join(st["reduced"]) + ".\n")
    slots = st["preset_overrides"].get("slots_per_episode", 100)
    L.append(f"Settings: {st['seeds']} seed(s) per trained method and point, {st['episodes']} training episodes per "
             f"run ({slots} slots each), evaluation {st['eval_episodes']} episodes per seed on common workloads (seed "
             "1000+k): TOPPO, AC and A2C act by sampling their policy (Algorithm 1 line 8; reproducible policy RNG), "
             f"the DQN family greedily (argmax Q); algorithm overrides {st['algo_overrides'] or 'none'} over the "
             "defaults (spec 4-5: TOPPO lr 1e-3/1e-3, batch 64, gamma 0.9, GAE 0.95, clip 0.2, LSTM 64 + FC "
             "128-128; baselines MLP 128-128, gamma 0.9, lr 1e-3). Every learner trains on eq. 30's per-device "
             "reward r_m,t with the preset's weights (0.25 each) unless an override says otherwise.\n")
    L += invocation_lines(results)

    t4 = results["experiments"].get("table4")
    if t4:
        r = t4["points"]["30"]["methods"]
        paper_m = [k for k, v in results["methods"].items() if v["in_paper"] and k in r]
        best = max(paper_m, key=lambda k: r[k]["reward"]["mean"])
        L.append("## Summary\n")
        share = {k: 100 * r[k]["local_share"]["mean"] for k in ("toppo", "aiecof_ac", "aiecof_a2c", "aiecof_dqn")}
        L.append(f"At M = 30 the best of the paper's nine methods by eq. 30's reward is {labels[best]} "
                 f"({r[best]['reward']['mean']:.1f}); TOPPO reaches {r['toppo']['reward']['mean']:.1f} and runs "
                 f"{share['toppo']:.1f}% of its tasks locally (AC {share['aiecof_ac']:.1f}%, "
                 f"A2C {share['aiecof_a2c']:.1f}%, DQN {share['aiecof_dqn']:.1f}%); "
                 f"the reference Greedy of ours reaches {r['greedy']['reward']['mean']:.1f} and All-local "
                 f"{r['local']['reward']['mean']:.1f}. See 'Does the paper's ordering hold?' and the reward landscape "
                 "below for why.\n")
    L.append("## Headline: ours vs the paper\n")
    L.append("| what | ours | paper | paper's reference |\n|---|---|---|---|")
    for r in rows:
        if r["pct"]:
            ours = f"{100 * r['ours']:.2f}%" + (f" ± {100 * r['ours_std']:.2f}" if "ours_std" in r else "")
            paper = f"{100 * r['paper']:.2f}%"
        else:
            ours = f"{r['ours']:.4g}" + (f" ± {r['ours_std']:.2g}" if "ours_std" in r else "")
            paper = f"{r['paper']:g}"
        L.append(f"| {r['what']} | {ours} | {paper} | {r['reference']} |")
    L.append("\nReductions are (method - TOPPO) / method on the evaluated means; reward gains (TOPPO - method) / "
             "|method|. The paper's reward percentages do not follow from its own Table IV (spec 2.4). Absolute "
             "energies and rewards are not comparable with the paper's: energy per offloaded task is about 3x below "
             "(spec 2.2), and the reward weights are unpublished (ours 0.25 each, spec 2.3).\n")
    bad = orderings(results)
    L.append("## Does the paper's ordering hold?\n")
    L.append("TOPPO is the best of the paper's nine methods in every checked column." if not bad else
             "Checked: Table IV reward (highest), delay, energy, dropout (lowest); Fig. 8 reward for M >= 30; Fig. 9 "
             "energy, latency, success rate. Where TOPPO is not the best of the paper's nine methods:\n\n"
             + "\n".join(f"- {b}" for b in bad))
    L.append("")

    t4 = results["experiments"].get("table4")
    if t4:
        r = t4["points"]["30"]
        L.append("## Table IV: all methods at M = 30, N = 8\n")
        if "fig6_table4.png" in figs:
            L.append("![Table IV](fig6_table4.png)\n")
        L.append("Ours (mean ± std over seeds) with the paper's value in brackets.\n")
        L.append("| method | " + " | ".join(n for _, n, _ in TABLE_METRICS) + " | local share | delay of completed (s) |")
        L.append("|---|" + "---|" * (len(TABLE_METRICS) + 2))
        for k in results["methods"]:
            if k not in r["methods"]:
                continue
            mm = r["methods"][k]
            cells = []
            for i, (metric, _, _) in enumerate(TABLE_METRICS):
                paper = f" [{TABLE4[k][i]:g}]" if k in TABLE4 else ""
                cells.append(_fmt(mm[metric], 4) + paper)
            cells += [_fmt(mm["local_share"]), _fmt(mm["latency_completed_s"])]
            L.append(f"| {labels[k]} | " + " | ".join(cells) + " |")
        L.append("\nEnergy is per episode (all tasks of 100 slots, ~1800 at M = 30), delay per task with a drop "
                 "counted as tau dt = 1 s, reward the team return of eq. 30 (spec 1.13).\n")
    conv = results["convergence"]["methods"]
    if conv:
        L.append(f"## Fig. 5: convergence (point {results['convergence']['point']})\n")
        if "fig5_convergence.png" in figs:
            L.append("![Fig. 5](fig5_convergence.png)\n")
        L.append("Training episodes (sampled actions, epsilon-greedy for the DQN family), team return of eq. 30.\n")
        L.append("| method | final training reward (last 10%, smoothed) | best smoothed | "
                 "first episode within 5% of final |")
        L.append("|---|---|---|---|")
        for k, c in conv.items():
            e = _converged_episode(c)
            L.append(f"| {labels[k]} | {_fmt(c['final_reward'], 4)} | {max(c['reward_mean']):.4g} | "
                     f"{'n/a' if e is None else e} |")
        L.append("")
    if "hyper" in ex:
        h = ex["hyper"]
        L.append("## Fig. 3: TOPPO under different hyperparameters (M = 30)\n")
        L.append(f"Training seed 0 only (one curve per value, as the paper's Fig. 3); {h['trained_now']} variant runs "
                 f"trained in this invocation ({h['training_wall_s']:.0f} s); the default value of each panel is the "
                 "main TOPPO run of seed 0. Spread: none (one seed).\n")
        for panel, p in h["panels"].items():
            if f"fig3_{panel}.png" in figs:
                L.append(f"![{p['title']}](fig3_{panel}.png)\n")
            L.append(f"{p['title']}:\n")
            L.append("| variant | final training reward (last 10%) | best smoothed reward |\n|---|---|---|")
            for lab, v in p["variants"].items():
                L.append(f"| {lab}{' (default)' if v['default'] else ''} | {_fmt(v['final_reward'], 4)} | "
                         f"{_fmt(v['best_reward'], 4)} |")
            L.append("")
        L.append("Paper: lr1 = lr2 = 1e-3 and 1e-3/1e-4 best, 1e-3/1e-3 faster early; batch 64 best and smooth; "
                 "gamma 0 fast but low, 0.9 best, 0.99 slow early.\n")
    if "task_types" in ex:
        tt = ex["task_types"]
        L.append("## Fig. 4: type A and type B tasks (trained TOPPO, M = 30)\n")
        if "fig4_task_types.png" in figs:
            L.append("![Fig. 4](fig4_task_types.png)\n")
        L.append("The arrival probability of one type is varied (the other stays 0.6); tasks of the type per episode, "
                 "their mean latency (s) and failure rate, TOPPO (Greedy in brackets).\n")
        L.append("| varied type | p | tasks of the type | latency (s) | failure rate |\n|---|---|---|---|---|")
        for vary in ("a", "b"):
            ser = tt["series"].get(f"vary_{vary}", {})
            for p in tt["p_values"]:
                s, g = ser["toppo"][str(p)], ser["greedy"][str(p)]
                L.append(f"| {vary.upper()} | {p:g} | {s[f'tasks_{vary}']['mean']:.0f} | "
                         f"{_fmt(s[f'latency_{vary}_s'])} [{g[f'latency_{vary}_s']['mean']:.3g}] | "
                         f"{_fmt(s[f'failure_{vary}'])} [{g[f'failure_{vary}']['mean']:.3g}] |")
        L.append("\nPaper: latency and failure rate of both types rise with the number of tasks (no numbers).\n")
    if "cpu_util" in ex:
        cu = ex["cpu_util"]
        L.append("## Fig. 7: device CPU utilization before and after TOPPO's training (M = 30)\n")
        if "fig7_cpu_util.png" in figs:
            L.append("![Fig. 7](fig7_cpu_util.png)\n")
        L.append(f"- after 1 training episode (greedy actions): mean {_fmt(cu['after_episode_1']['mean'])} (paper "
                 f"early stage 42.57%)")
        L.append(f"- after training: mean {_fmt(cu['after_training']['mean'])} (paper 79.25%)")
        tl = cu["training_log"]
        L.append(f"- training log (sampled actions): first episode {_fmt(tl['first_episode_load'])}, last 10% "
                 f"{_fmt(tl['last_10pct_load'])}\n")
    for ek, metrics in (("devices", (("reward", "Reward"), ("latency_s", "Delay (s)"), ("drop_rate", "Dropout"),
                                     ("energy_episode_j", "Energy (J/episode)"))),
                        ("edge_capacity", (("energy_episode_j", "Energy (J/episode)"), ("latency_s", "Latency (s)"),
                                           ("load", "Load"), ("completion_rate", "Success rate")))):
        e = results["experiments"].get(ek)
        if not e:
            continue
        L.append(f"## {e['figure']}: {e['title']}\n")
        fname = {"devices": "fig8_devices.png", "edge_capacity": "fig9_edge_capacity.png"}.get(ek)
        if fname in figs:
            L.append(f"![{e['figure']}]({fname})\n")
        moved = transferred_points(e)
        if moved:
            srcs = sorted({src for _, _, src in moved})
            L.append(f"Not retrained: at {e['x_label']} = {', '.join(x for x, _, _ in moved)} (points "
                     f"{', '.join(f'`{n}`' for _, n, _ in moved)}) the trained methods are the runs of "
                     f"{', '.join(f'`{s}`' for s in srcs)} (s = 1.0) evaluated at that scale. For s >= {S_SAME_MDP:g} "
                     "these points are the M = 30 MDP: f_n dt >= 1.2 Gcycles >= W, so every ES task takes one slot "
                     "as at s = 1 (spec 1.8), the observation is f_n / max f_n of the scaled preset (the same "
                     "numbers), "
                     "and ES compute energy is not counted; retraining there would repeat M = 30's training. The "
                     "paper retrains per scale; the deviation is procedural only (the heuristics' numbers, the same "
                     "at every s >= 0.5, confirm the MDP is unchanged).\n")
        L += _table(results, e, metrics)
    land = ex.get("landscape")
    if land:
        L.append("## Reward landscape of eq. 30 (ours, no training)\n")
        L.append("Blind mixes at M = 30: each task runs locally with probability q, else on a uniformly drawn ES "
                 "(no state is read). Same evaluation workloads as above.\n")
        L.append("| q local | reward | delay (s) | dropout | energy (J/episode) | loading |\n|---|---|---|---|---|---|")
        for q, mm in land["methods"].items():
            L.append(f"| {q} | {_fmt(mm['reward'], 4)} | {_fmt(mm['latency_s'])} | {_fmt(mm['drop_rate'])} | "
                     f"{_fmt(mm['energy_episode_j'], 4)} | {_fmt(mm['load'])} |")
        L.append("\nEq. 30's sigma_E = -log2(E / l_E) is scored against the device's own running mean energy, so its "
                 "average over a device's tasks grows with the spread of their energies (Jensen): mixing cheap local "
                 "tasks (~0.1 J) with dear offloads (~0.8 J) is paid for in itself, and a blind ~70% local coin "
                 "flip out-scores the state-aware Greedy. Per decision, though, an offload costs about 3 units of "
                 "sigma_E at once and repays them only through the device's later local tasks, and sigma_F and "
                 "sigma_L are shared by all devices: with gamma = 0.9 over a device's own decisions the learners' "
                 "objective drifts towards all-local (docs/papers/aiecof.md, 'Learners').\n")
    L.append("## What the simulator does not model\n")
    L.append("- Fig. 9's load is the devices' CPU loading of eq. 12 (the paper does not define an ES load); ES "
             "computing takes one slot per task for every scale >= 0.4 (W <= 1.2 Gcycles), so only s = 0.25 changes "
             "the ES service time; the ES observation is normalised by the scaled f_n, so a policy sees the same "
             "numbers at every scale (spec 1.8).")
    L.append("- ES dynamic energy is not counted (spec 1.9) and results are not downloaded; energy per offload is "
             "P_tx x airtime (~0.78 J), about 3x below what Table IV implies (spec 2.2).")
    L.append("- Table IV's reward (eq. 30) cannot be matched: its weights are unpublished and Round-Robin's -0.29 "
             "needs negative terms the printed sigmas cannot give (spec 2.3). Round-Robin's dropout is 0.44 here vs "
             "0.16 (one task per ES per slot, eq. 18; spec 2.1).")
    L.append("- Fig. 7's 'early stage' is not defined in the paper; we take the policy after one training episode.\n")
    L += training_and_runs_sections(results, labels, decimals=2)
    (out / "report.md").write_text("\n".join(L) + "\n")


SPEC = PaperSpec(name="aiecof", title="DRL-Enabled Computation Offloading for AIGC Services in IoIT-assisted Edge "
                 "Computing Networks (TOPPO)", source="/work/shared/seeds/002_9f4754fdbb9e5979.txt", scenario="aiecof",
                 methods=METHODS, experiments=EXPERIMENTS, full=full, quick=quick, convergence_point=MAIN.name,
                 write_report=write_report, extra=extra,
                 extra_points={"hyper": tuple(HYPER_PANELS), "task_types": P_VALUES, "cpu_util": (), "landscape": ()})
