"""LAD-TS (paper 003): methods, experiments, the paper's stated numbers, and the report.

Paper figures (Sec. V; no tables of results): Fig. 5 average service delay per training episode
(convergence: LAD-TS 60 episodes, D2SAC-TS 150, SAC-TS 200, DQN-TS 300; plateaus 7.7 / 8.4 / 8.9 / 9.5 s,
Opt-TS 7.4 s), Fig. 6 delay vs the task upper bound N (10-70) and the capacity upper bound (30-70 GHz),
Fig. 7 delay vs the quality bound z (5-20) and the number of stations B, Fig. 8 LAD-TS delay vs the
denoising steps I and the temperature alpha. Spec: docs/papers/ladts.md section 6.

Every value is the mean service delay per task (spec 1.7 [fix]) of ``aigc-offload evaluate`` on common
workloads; the trained policies act as in training (a ~ pi, the paper's curves are training episodes).

The paper retrains every method at every point. Here the tasks (N: LAD-TS's latent store is sized by the trained
N), capacity (fmax: the agents do not observe f, and what they learn is the trained servers' capacity split;
default-trained LAD-TS measured 12.1 s at fmax = 60 against Opt-TS's 2.71 s), stations (B: the observation and
action shapes), steps and alpha sweeps are retrained, but the quality (Z) sweep changes only the workload: it
evaluates the runs of the default point (``..._from_default``, a stated deviation). The "retrained" experiment measures the cost at
Z = 20, the paper's Fig. 7a headline point: policies retrained there next to the default-trained ones.
"""

from __future__ import annotations

import csv
import math
import shlex
from pathlib import Path

import numpy as np

from policies.reproduce.core import (Experiment, Method, PaperSpec, Point, Settings, invocation_lines, training_parallelism,
                                     transfer_gaps, transfer_sentence, transferred_points)
from policies.reproduce.png import Panel, Series, figure

TRAINED = ("ladts", "d2sac_ts", "sac_ts", "dqn_ts")
METHODS = (
    Method("ladts", "LAD-TS", trained=True),
    Method("d2sac_ts", "D2SAC-TS", trained=True),
    Method("sac_ts", "SAC-TS", trained=True),
    Method("dqn_ts", "DQN-TS", trained=True),
    Method("opt", "Opt-TS", trained=False),
    Method("random", "Random (ours)", trained=False, in_paper=False),
    # state-blind: each task to server b' with probability f_b' / sum(f) ("What the agents learn" in the report)
    Method("proportional", "Capacity split (ours)", trained=False, in_paper=False),
    # the same split dealt by a per-station golden-ratio walk instead of independent draws
    Method("weighted_rr", "Weighted RR (ours)", trained=False, in_paper=False),
)
BASELINES = ("d2sac_ts", "sac_ts", "dqn_ts")
AUTHORS_S_PER_EPISODE = 78.0  # the authors' public code (main_lad.py), measured on this machine (task brief)

DEFAULT = Point("default", {})  # N = 50, fmax = 50, Z = 15, B = 20, I = 5, alpha = 0.05


def _sweep(name: str, field: str, values: tuple, default, transfer: bool = False) -> tuple:
    """The points of an environment sweep; with ``transfer`` the points other than the default train nothing and
    evaluate the default point's runs (``<name><v>_from_default``)."""
    return tuple(DEFAULT if v == default else
                 Point(f"{name}{v}_from_default", {field: v}, policies_from=DEFAULT.name) if transfer else
                 Point(f"{name}{v}", {field: v}) for v in values)


def _algo_sweep(name: str, field: str, values: tuple, default) -> tuple:
    return tuple(DEFAULT if v == default else Point(f"{name}{v}", {}, methods=("ladts", "opt"), algo_overrides={field: v})
                 for v in values)


N_VALUES = (10, 20, 30, 40, 50, 60, 70)
F_VALUES = (30, 40, 50, 60, 70)
Z_VALUES = (5, 10, 15, 20)
B_VALUES = (10, 20, 30, 40, 50)
I_VALUES = (1, 3, 5, 7, 10)  # the paper does not print its x values; I = 5 is its best
ALPHA_VALUES = (0.01, 0.05, 0.1, 0.2, 0.5)  # "as alpha increases from 0.01 to 0.5"

EXPERIMENTS = (
    Experiment("tasks", "Delay vs the task upper bound N (N_{b,t} ~ U{1..N})", "Fig. 6a", "tasks N",
               N_VALUES, _sweep("N", "tasks_max", N_VALUES, 50)),
    Experiment("capacity", "Delay vs the capacity upper bound (f ~ randint(10, fmax))", "Fig. 6b", "fmax GHz",
               F_VALUES, _sweep("F", "capacity_ghz_max", F_VALUES, 50)),
    Experiment("quality", "Delay vs the quality bound Z (z ~ randint(1, Z))", "Fig. 7a", "quality Z",
               Z_VALUES, _sweep("Z", "quality_max", Z_VALUES, 15, transfer=True)),
    Experiment("stations", "Delay vs the number of stations B", "Fig. 7b", "stations B",
               B_VALUES, _sweep("B", "num_stations", B_VALUES, 20)),
    Experiment("steps", "LAD-TS delay vs the denoising steps I", "Fig. 8a", "steps I",
               I_VALUES, _algo_sweep("I", "denoising_steps", I_VALUES, 5)),
    Experiment("alpha", "LAD-TS delay vs the initial temperature alpha", "Fig. 8b", "alpha",
               ALPHA_VALUES, _algo_sweep("alpha", "alpha", ALPHA_VALUES, 0.05)),
    # the cost of evaluating Fig. 7a with default-trained policies, at the paper's Z = 20 (the Z20 runs
    # directory is that of the earlier sweeps: its runs resume)
    Experiment("retrained", "Z = 20 retrained vs default-trained", "(ours)", "scene", ("Z=20", "Z=20 default-trained"),
               (Point("Z20", {"quality_max": 20}),
                Point("Z20_from_default", {"quality_max": 20}, policies_from=DEFAULT.name))),
)

FULL_EPISODES = 300  # DQN-TS converges by ~300 in the paper (Fig. 5); LAD-TS (code semantics) by ~200 here


def full() -> Settings:
    return Settings(seeds=3, episodes=FULL_EPISODES, eval_episodes=10, jobs=2, smooth=10)


def quick() -> Settings:
    """A few minutes: the default point and one more point per environment sweep, short runs."""
    return Settings(seeds=2, episodes=12, eval_episodes=2, jobs=2, smooth=3,
                    experiments=("tasks", "stations"), x_subset={"tasks": (30, 50), "stations": (10, 20)},
                    reduced=["--quick: 12 training episodes per run (the paper: 60 for LAD-TS, up to 300 for the "
                             "baselines), 2 seeds, 2 points of Figs. 6a and 7b only, 2 evaluation episodes per seed; "
                             "a smoke run, not a result"])


PAPER = {
    # Fig. 5 (Sec. V-C, "Learning Performance Evaluation")
    "plateau": {"ladts": 7.7, "d2sac_ts": 8.4, "sac_ts": 8.9, "dqn_ts": 9.5, "opt": 7.4},
    "converge_episodes": {"ladts": 60, "d2sac_ts": 150, "sac_ts": 200, "dqn_ts": 300},
    # Fig. 6a at N = 50, and the reductions relative to each baseline
    "N50": {"ladts": 7.67, "dqn_ts": 9.59, "sac_ts": 8.88, "d2sac_ts": 8.39, "opt": 7.37},
    "N50_reduction": {"dqn_ts": 0.2002, "sac_ts": 0.1363, "d2sac_ts": 0.0858},
    # Fig. 7a at Z = 20 (the paper's percentages are relative to LAD-TS)
    "Z20": {"ladts": 18.80, "dqn_ts": 23.11, "sac_ts": 21.25, "d2sac_ts": 20.76},
    "Z20_gap": {"dqn_ts": 0.2292, "sac_ts": 0.1303, "d2sac_ts": 0.1042},
    # Fig. 7b at B = 40 (relative to each baseline)
    "B40": {"ladts": 11.75, "dqn_ts": 16.95, "sac_ts": 13.39, "d2sac_ts": 12.96},
    "B40_reduction": {"dqn_ts": 0.3067, "sac_ts": 0.1225, "d2sac_ts": 0.0934},
    "best_steps": 5,  # Fig. 8a
    "best_alpha": 0.05,  # Fig. 8b
}
CONVERGE_TOL = 0.05  # converged from the episode on which the smoothed curve stays within 5% of its final level
LAD_ONLY = ("steps", "alpha")  # Fig. 8: LAD-TS's own parameters (Opt-TS as the reference line)


def _mean(r: dict, method: str, metric: str = "latency_s") -> float | None:
    m = r["methods"].get(method)
    return None if m is None else m[metric]["mean"]


def _point(results: dict, exp: str, x: str) -> dict | None:
    e = results["experiments"].get(exp)
    return None if e is None else e["points"].get(x)


def _default_point(results: dict) -> dict | None:
    """The evaluated default point (N = 50, fmax = 50, Z = 15, B = 20), from whichever experiment holds it."""
    for e in results["experiments"].values():
        for x in e["x_values"]:
            if e["points"][x]["point"] == DEFAULT.name:
                return e["points"][x]
    return None


def _labels(results: dict) -> dict:
    return {k: v["label"] for k, v in results["methods"].items()}


# -- convergence ------------------------------------------------------------------------------------------
def settled_from(values: list[float], tol: float = CONVERGE_TOL) -> int | None:
    """The first index from which every value stays within ``tol`` (relative) of the last 10%'s mean, or None."""
    if not values:
        return None
    tail = max(1, len(values) // 10)
    final = float(np.mean(values[-tail:]))
    i = len(values)
    while i > 0 and abs(values[i - 1] / final - 1) <= tol:
        i -= 1
    return i if i < len(values) else None


def _updates_per_slot(results: dict) -> int:
    """The runs' updates per station per slot: the trainer's default unless the invocation overrode it."""
    from policies.train.ladts import Config

    return int(results["settings"].get("algo_overrides", {}).get("updates_per_slot", Config.updates_per_slot))


def convergence_delays(results: dict) -> dict:
    """Per trained method: smoothed training delay per episode (mean and std over seeds), the final level
    (last 10%) and the episode (1-based) from which the method has converged: its smoothed training delay
    divided by Opt-TS's on the same training workloads (``results["convergence_opt"]``, which takes the
    episodes' workload draws out of the curve) stays within CONVERGE_TOL of that ratio's final level; without
    the Opt-TS curve, the smoothed delay itself. ``first_within``: the first episode within CONVERGE_TOL of
    the final delay (the curve may leave the band again afterwards)."""
    out = {}
    oc = results.get("convergence_opt")
    opt = dict(zip(oc["episode"], oc["delay"])) if oc else {}
    for k, c in results["convergence"]["methods"].items():
        d = [-v for v in c["reward_mean"]]
        final = -c["final_reward"]["mean"]
        first = next((e + 1 for e, v in zip(c["episode"], d) if v <= final * (1 + CONVERGE_TOL)), None)
        by_ratio = bool(opt) and all(e in opt for e in c["episode"])
        curve = [v / opt[e] for e, v in zip(c["episode"], d)] if by_ratio else d
        i = settled_from(curve)
        out[k] = {"episode": c["episode"], "delay": d, "std": c["reward_std"], "final": final,
                  "final_std": c["final_reward"]["std"], "converged_at": None if i is None else c["episode"][i] + 1,
                  "converged_by": "ratio to Opt-TS" if by_ratio else "delay", "first_within": first}
    return out


def opt_training_curve(results: dict) -> dict | None:
    """Opt-TS on the very workloads the convergence point's runs trained on (per seed and episode, the
    trainer's workload stream), smoothed like the training curves: Fig. 5's Opt-TS line. Cached in
    ``results["convergence_opt"]`` (a report re-made with --report-only reuses it)."""
    if "convergence_opt" in results:
        return results["convergence_opt"]
    import json

    from policies.evaluate import run_episode
    from policies.heuristics import make_policy
    from policies.scenarios import make_simulator
    from policies.train.ladts import TRAIN_WORKLOAD_STREAM
    from policies.workload import episode_rng

    conv = results["convergence"]["methods"]
    if "ladts" not in conv:
        return None
    dirs = [d for d, r in results["runs"].items() if r["point"] == results["convergence"]["point"] and r["algo"] == "ladts"]
    curves = []
    for d in dirs:
        cfg = json.loads((Path(d) / "config.json").read_text())
        sim = make_simulator("ladts", {k: v for k, v in cfg["preset"].items() if k != "scenario"})
        opt = make_policy("opt", sim)
        n = results["runs"][d]["episodes"]
        curves.append([run_episode(sim, opt, sim.generate_workload(episode_rng(cfg["seed"], e, TRAIN_WORKLOAD_STREAM), e),
                                   0)["latency_s"] for e in range(n)])
    if not curves:
        return None
    n = min(len(c) for c in curves)
    w = conv["ladts"]["window"]
    sm = np.stack([np.convolve(np.asarray(c[:n]), np.ones(w) / w, mode="valid") for c in curves])
    results["convergence_opt"] = {"episode": [int(i + w - 1) for i in range(sm.shape[1])], "delay": sm.mean(0).tolist(),
                                  "std": sm.std(0).tolist(), "per_seed_raw": curves}
    return results["convergence_opt"]


def action_split(results: dict) -> dict | None:
    """Which servers each trained method sends the default point's tasks to: per method and seed, the share of
    tasks per server and its total-variation distance to the capacity split (``run_action_split``, cached with
    each run's evaluation; a results.json of an earlier version kept it in ``results["action_split"]``)."""
    if "action_split" in results:
        return results["action_split"]
    for e in results["experiments"].values():
        for pt in e["points"].values():
            if pt["point"] != DEFAULT.name or not pt.get("run_extra"):
                continue
            out: dict = {"capacity_ghz": [], "methods": {}}
            for algo in sorted(pt["run_extra"]):  # the order of the run directories' names
                for x in pt["run_extra"][algo]:
                    out["capacity_ghz"] = x["capacity_ghz"]
                    m = out["methods"].setdefault(algo, {"share": [], "tv": []})
                    m["share"].append(x["share"])
                    m["tv"].append(x["tv"])
            results["action_split"] = out
            return out
    return None


def run_action_split(spec, settings, point, sim, run_dir: Path, seed: int) -> dict | None:
    """At the default point: one evaluation episode (seed ``seed``'s first common workload) with the run acting
    as evaluated, the share of tasks per server, and its total-variation distance to the capacity split
    f / sum(f) (0: the same split, 1: disjoint)."""
    if point.name != DEFAULT.name:
        return None
    from policies.evaluate import generate_workloads, run_episode
    from policies.reproduce.core import EVAL_SEED_BASE
    from policies.train.registry import load_trained_policy

    pol = load_trained_policy(str(run_dir), sim)
    counts = np.zeros(sim.B)
    decide = pol.decide

    def counting(view):
        dec = decide(view)
        np.add.at(counts, dec.target, 1)
        return dec

    pol.decide = counting
    wl = generate_workloads(sim, 1, EVAL_SEED_BASE + seed)[0]
    run_episode(sim, pol, wl, EVAL_SEED_BASE + seed)
    cap = np.asarray(sim.f, dtype=float)
    share = counts / counts.sum()
    return {"capacity_ghz": cap.tolist(), "share": share.tolist(),
            "tv": float(0.5 * np.abs(share - cap / cap.sum()).sum())}


def _split_lines(results: dict) -> list[str]:
    """The report's "What the agents learn": each trained method's server split against the capacity split,
    and the delay of that state-blind split beside LAD-TS and Opt-TS along Fig. 6a."""
    split = action_split(results)
    if not split or not split["methods"]:
        return []
    lab = _labels(results)
    L = ["## What the agents learn (ours)\n",
         "The per-station agents see q_{t-1} and the task (eq. 6), not the queue the slot's earlier tasks build, so a "
         "station decides all its tasks of a slot from the same queue vector. \"Capacity split (ours)\" is the policy "
         "that ignores the state altogether: each task goes to server b' with probability f_b' / sum(f). The distance "
         "below is the total variation between the share of tasks a method sent to each server (one evaluation "
         "episode per seed at the default point) and that split: 0 means the same split.\n",
         "| method | distance to the capacity split (mean over seeds) | per seed |\n|---|---|---|"]
    for k, m in sorted(split["methods"].items(), key=lambda km: list(lab).index(km[0]) if km[0] in lab else 99):
        L.append(f"| {lab.get(k, k)} | {np.mean(m['tv']):.3f} | {', '.join(f'{v:.3f}' for v in m['tv'])} |")
    e = results["experiments"].get("tasks")
    if e and all(k in e["points"][x]["methods"] for x in e["x_values"] for k in ("ladts", "proportional", "weighted_rr", "opt")):
        L.append("\n| tasks N | " + " | ".join(e["x_values"]) + " |\n|---|" + "---|" * len(e["x_values"]))
        for k in ("opt", "ladts", "proportional", "weighted_rr"):
            L.append(f"| {lab[k]} (s) | " + " | ".join(f"{_mean(e['points'][x], k):.3g}" for x in e["x_values"]) + " |")
        L.append("| LAD-TS above the capacity split | " + " | ".join(
            f"{100 * (_mean(e['points'][x], 'ladts') / _mean(e['points'][x], 'proportional') - 1):+.1f}%"
            for x in e["x_values"]) + " |")
        for k in ("proportional", "weighted_rr"):
            L.append(f"| {lab[k]} above Opt-TS | " + " | ".join(
                f"{100 * (_mean(e['points'][x], k) / _mean(e['points'][x], 'opt') - 1):+.1f}%" for x in e["x_values"]) + " |")
        L.append("| LAD-TS above Weighted RR | " + " | ".join(
            f"{100 * (_mean(e['points'][x], 'ladts') / _mean(e['points'][x], 'weighted_rr') - 1):+.1f}%"
            for x in e["x_values"]) + " |")
        L.append("\nWeighted RR (ours) deals the same split without the dice: station b sends its k-th task to the "
                 "server whose bin of the capacity CDF holds frac(b / B + k phi), phi the golden ratio's fraction, so "
                 "no window of a station's tasks piles on one server by chance. It reads no state either.")
    L.append("")
    return L


def timing(results: dict) -> dict:
    """Per trained method: mean wall and CPU seconds per training episode (episodes with updates) over all its
    runs and over those of the default point (``*_default``: the setting of the authors' 78 s), from the runs'
    metrics.csv when present (else the summary in results)."""
    per: dict[str, dict[str, list]] = {}
    for d, r in results["runs"].items():
        t = per.setdefault(r["algo"], {"wall": [], "cpu": [], "point_default": [], "wall_default": []})
        t["wall"].append(r["episode_s_mean"])
        if r["point"] == DEFAULT.name:
            t["wall_default"].append(r["episode_s_mean"])
        path = Path(d) / "metrics.csv"
        if path.is_file():
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            cpu = [float(x["episode_cpu_s"]) for x in rows if x.get("episode_cpu_s") and
                   math.isfinite(float(x["critic_loss"]))]
            if cpu:
                t["cpu"].append(float(np.mean(cpu)))
                if r["point"] == DEFAULT.name:
                    t["point_default"].append(float(np.mean(cpu)))
    return {k: {"wall_s": float(np.mean(v["wall"])), "cpu_s": float(np.mean(v["cpu"])) if v["cpu"] else None,
                "cpu_s_default": float(np.mean(v["point_default"])) if v["point_default"] else None,
                "wall_s_default": float(np.mean(v["wall_default"])) if v["wall_default"] else None,
                "runs": len(v["wall"])} for k, v in per.items()}


# -- headline ---------------------------------------------------------------------------------------------
def headline(results: dict) -> list[dict]:
    """Rows (what, ours, paper, reference): the paper's stated numbers next to ours."""
    rows = []
    lab = _labels(results)
    d = _point(results, "tasks", "50") or _point(results, "capacity", "50") or _point(results, "quality", "15") \
        or _point(results, "stations", "20")
    if d is not None:
        for k in ("ladts", "d2sac_ts", "sac_ts", "dqn_ts", "opt"):
            if k in d["methods"]:
                s = d["methods"][k]["latency_s"]
                rows.append({"key": f"N50_{k}", "what": f"{lab[k]} delay, default scenario (N = 50)", "ours": s["mean"],
                             "ours_std": s["std"], "paper": PAPER["N50"][k], "unit": "s",
                             "reference": "Fig. 6a (Fig. 5: %.1f s)" % PAPER["plateau"][k]})
        lad, opt = _mean(d, "ladts"), _mean(d, "opt")
        if lad is not None and opt is not None:
            rows.append({"key": "N50_lad_over_opt", "what": "LAD-TS above Opt-TS, default scenario", "ours": lad / opt - 1,
                         "paper": PAPER["N50"]["ladts"] / PAPER["N50"]["opt"] - 1, "unit": "%",
                         "reference": "Fig. 6a (target: within 5%)"})
            for b, pv in PAPER["N50_reduction"].items():
                v = _mean(d, b)
                if v is not None:
                    rows.append({"key": f"N50_reduction_{b}", "what": f"LAD-TS lower than {lab[b]} (rel. to {lab[b]}), N = 50",
                                 "ours": (v - lad) / v, "paper": pv, "unit": "%", "reference": "Sec. V-C, Fig. 6a"})
            wrr = _mean(d, "weighted_rr")
            if wrr is not None:  # ours, not in the paper: the stateless rule of "What the agents learn"
                rows.append({"key": "N50_weighted_rr", "what": "Weighted RR (ours: stateless, untrained) delay, default "
                             "scenario (N = 50)", "ours": wrr, "ours_std": d["methods"]["weighted_rr"]["latency_s"]["std"],
                             "paper": None, "unit": "s", "reference": "not in the paper; report section 'What the agents "
                             "learn'"})
                rows.append({"key": "N50_lad_over_weighted_rr", "what": "LAD-TS above Weighted RR (ours), default scenario",
                             "ours": lad / wrr - 1, "paper": None, "unit": "%", "reference": "not in the paper"})
    z = _point(results, "retrained", "Z=20") or _point(results, "quality", "20")  # retrained there when the run has it
    if z is not None and "ladts" in z["methods"]:
        lad = _mean(z, "ladts")
        note = " (policies trained at the default point)" if z.get("policies_from") else ""
        rows.append({"key": "Z20_ladts", "what": f"LAD-TS delay, Z = 20{note}", "ours": lad,
                     "paper": PAPER["Z20"]["ladts"], "unit": "s", "reference": "Fig. 7a"})
        for b, pv in PAPER["Z20_gap"].items():
            v = _mean(z, b)
            if v is not None:
                rows.append({"key": f"Z20_gap_{b}", "what": f"{lab[b]} above LAD-TS (rel. to LAD-TS), Z = 20{note}",
                             "ours": (v - lad) / lad, "paper": pv, "unit": "%", "reference": "Sec. V-C, Fig. 7a"})
    bb = _point(results, "stations", "40")
    if bb is not None and "ladts" in bb["methods"]:
        lad = _mean(bb, "ladts")
        rows.append({"key": "B40_ladts", "what": "LAD-TS delay, B = 40", "ours": lad, "paper": PAPER["B40"]["ladts"],
                     "unit": "s", "reference": "Fig. 7b"})
        for b, pv in PAPER["B40_reduction"].items():
            v = _mean(bb, b)
            if v is not None:
                rows.append({"key": f"B40_reduction_{b}", "what": f"LAD-TS lower than {lab[b]} (rel. to {lab[b]}), B = 40",
                             "ours": (v - lad) / v, "paper": pv, "unit": "%", "reference": "Sec. V-C, Fig. 7b"})
    oc = opt_training_curve(results) if results.get("convergence", {}).get("methods") else None
    conv = convergence_delays(results)
    for k, c in conv.items():
        if oc is not None:
            tail = max(1, len(oc["delay"]) // 10)
            rows.append({"key": f"plateau_ratio_{k}", "what": f"{lab[k]} converged training delay above Opt-TS on the same "
                         "training workloads (last 10%)", "ours": c["final"] / float(np.mean(oc["delay"][-tail:])) - 1,
                         "paper": PAPER["plateau"][k] / PAPER["plateau"]["opt"] - 1, "unit": "%", "reference": "Fig. 5"})
        if k == "ladts" and oc is not None and 59 in c["episode"] and 59 in oc["episode"]:
            r60 = c["delay"][c["episode"].index(59)] / oc["delay"][oc["episode"].index(59)] - 1
            rows.append({"key": "at60_ratio_ladts", "what": "LAD-TS training delay at episode 60 above Opt-TS on the "
                         f"same workloads ({results['convergence']['methods'][k]['window']}-episode mean)", "ours": r60,
                         "paper": PAPER["plateau"]["ladts"] / PAPER["plateau"]["opt"] - 1, "unit": "%",
                         "reference": "Fig. 5 (LAD-TS converged after 60 episodes)"})
        rows.append({"key": f"plateau_{k}", "what": f"{lab[k]} converged training delay (last 10%, smoothed)",
                     "ours": c["final"], "ours_std": c["final_std"], "paper": PAPER["plateau"][k], "unit": "s",
                     "reference": "Fig. 5"})
        rows.append({"key": f"converge_{k}", "what": f"{lab[k]} episodes to converge (from then on within "
                     f"{CONVERGE_TOL:.0%} of its final level)", "ours": c["converged_at"], "paper": PAPER["converge_episodes"][k],
                     "unit": "episodes", "reference": "Sec. V-C, Fig. 5"})
    for exp, best_key in (("steps", "best_steps"), ("alpha", "best_alpha")):
        e = results["experiments"].get(exp)
        if e and len(e["x_values"]) > 1:
            vals = {x: _mean(e["points"][x], "ladts") for x in e["x_values"]}
            best = min(vals, key=vals.get)
            rows.append({"key": best_key, "what": f"best {e['x_label']} for LAD-TS", "ours": float(best),
                         "paper": PAPER[best_key], "unit": "", "reference": e["figure"]})
    tm = timing(results)
    if "ladts" in tm:  # at the default point (N = 50, B = 20, I = 5): the setting of the authors' 78 s
        t = tm["ladts"]
        at_default = t["wall_s_default"] is not None
        where = "default point's runs" if at_default else "runs of every point"
        rows.append({"key": "episode_wall_s", "what": f"LAD-TS training wall time per episode (mean over the {where})",
                     "ours": t["wall_s_default"] if at_default else t["wall_s"], "paper": AUTHORS_S_PER_EPISODE,
                     "unit": "s", "reference": "authors' code on this machine (task brief)"})
        cpu = t["cpu_s_default"] if at_default else t["cpu_s"]
        if cpu is not None:
            rows.append({"key": "episode_cpu_s", "what": f"LAD-TS training CPU time per episode (mean over the {where})",
                         "ours": cpu, "paper": AUTHORS_S_PER_EPISODE, "unit": "s",
                         "reference": "authors' code on this machine (task brief)"})
    for r in rows:  # "pct": a fraction printed as a percentage (the CLI reads it); a missing value is nan
        r["pct"] = r["unit"] == "%"
        if r["ours"] is None:
            r["ours"] = float("nan")
    return rows


def orderings(results: dict) -> list[str]:
    """Sentences: where the paper's ordering Opt-TS < LAD-TS < D2SAC-TS < SAC-TS < DQN-TS, or LAD-TS within 5% of
    Opt-TS, does not hold."""
    out, lab, seen = [], _labels(results), set()
    for ek, e in results["experiments"].items():
        for x in e["x_values"]:
            r = e["points"][x]
            if r["point"] in seen:
                continue
            seen.add(r["point"])
            lad = _mean(r, "ladts")
            if lad is None:
                continue
            if ek == "retrained":  # x says default-trained, or the point retrained there
                where = f"transfer check, {x}" + ("" if r.get("policies_from") else " (retrained there)")
            else:
                where = f"{e['figure']} {e['x_label']} = {x}" + (" (default-trained)" if r.get("policies_from") else "")
            worse = [b for b in BASELINES if b in r["methods"] and _mean(r, b) <= lad]
            if worse:
                out.append(f"{where}: LAD-TS {lad:.3g} s is not below " +
                           ", ".join(f"{lab[b]} ({_mean(r, b):.3g} s)" for b in worse))
            opt = _mean(r, "opt")
            if opt is not None and lad > 1.05 * opt:
                out.append(f"{where}: LAD-TS {lad:.3g} s is {100 * (lad / opt - 1):.1f}% "
                           f"above Opt-TS ({opt:.3g} s), more than 5%")
            base = [b for b in ("d2sac_ts", "sac_ts", "dqn_ts") if b in r["methods"]]
            vals = [_mean(r, b) for b in base]
            if len(vals) == 3 and not (vals[0] < vals[1] < vals[2]):
                out.append(f"{where}: baselines not in the paper's order D2SAC-TS < SAC-TS < "
                           f"DQN-TS ({', '.join(f'{lab[b]} {v:.3g}' for b, v in zip(base, vals))})")
    return out


# -- figures and report -------------------------------------------------------------------------------------
def _figures(results: dict, out: Path) -> list[str]:
    files = []
    lab = _labels(results)
    conv = convergence_delays(results)
    if conv:
        series = [Series(lab[k], c["episode"], c["delay"], c["std"]) for k, c in conv.items()]
        oc = opt_training_curve(results)
        if oc is not None:  # Opt-TS on the same training workloads
            series.append(Series("Opt-TS", oc["episode"], oc["delay"], oc["std"]))
        w = results["convergence"]["methods"][next(iter(conv))]["window"]
        figure(out / "fig5_convergence.png", [Panel(f"Fig. 5: training delay, {w}-episode mean, +-std over seeds",
                                                    "episode", "average service delay (s)", series, markers=False)],
               panel_w=760, panel_h=440)
        files.append("fig5_convergence.png")
    for fname, pair in (("fig6_tasks_capacity.png", ("tasks", "capacity")), ("fig7_quality_stations.png", ("quality", "stations")),
                        ("fig8_steps_alpha.png", ("steps", "alpha"))):
        panels = []
        for ek in pair:
            e = results["experiments"].get(ek)
            if not e:
                continue
            xs = e["x_values"]
            ser = []
            for k, meta in results["methods"].items():
                if not meta["in_paper"] or not all(k in e["points"][x]["methods"] for x in xs) or \
                        (ek in LAD_ONLY and k not in ("ladts", "opt")):
                    continue
                ys = [_mean(e["points"][x], k) for x in xs]
                sd = [e["points"][x]["methods"][k]["latency_s"]["std"] for x in xs]
                ser.append(Series(meta["label"], [float(x) for x in xs], ys, sd))
            panels.append(Panel(f"{e['figure']}: delay vs {e['x_label']}", e["x_label"], "delay (s)", ser))
        if panels:
            figure(out / fname, panels, panel_w=640, panel_h=400)
            files.append(fname)
    return files


def _fmt_row(r: dict) -> tuple[str, str]:
    if r["paper"] is None:  # a row of ours with no counterpart in the paper
        r = {**r, "paper": float("nan")}
        o, _ = _fmt_row(r)
        return o, "-"
    if r["unit"] == "%":
        return f"{100 * r['ours']:.2f}%", f"{100 * r['paper']:.2f}%"
    if not math.isfinite(r["ours"]):
        return "not within the run", f"{r['paper']:g}" + (f" {r['unit']}" if r["unit"] else "")
    ours = f"{r['ours']:.3g}" + (f" ± {r['ours_std']:.2g}" if "ours_std" in r else "")
    return ours + (f" {r['unit']}" if r["unit"] else ""), f"{r['paper']:g}" + (f" {r['unit']}" if r["unit"] else "")


def transfer_gap(results: dict) -> list[dict]:
    """The cost of evaluating a point with the default point's policies: per point evaluated both ways (the
    "retrained" experiment), each trained method's delay default-trained minus retrained (s)."""
    return transfer_gaps(results, "latency_s")


def _transfer_lines(results: dict, gaps: list[dict]) -> list[str]:
    """The deviation paragraph (which points take the default point's policies, and why) and the transfer check."""
    moved = [(e, transferred_points(e)) for ek, e in results["experiments"].items() if ek != "retrained"]
    moved = [(e, m) for e, m in moved if m]
    lab, L = _labels(results), []
    where = "; ".join(f"{e['figure']} {e['x_label']} = {', '.join(x for x, _, _ in m)}" for e, m in moved)
    if moved:
        L.append("**Deviation: default-trained policies.** The paper retrains every method at every point. Here the "
                 f"runs of the default point (`{DEFAULT.name}`: N = 50, fmax = 50, Z = 15, B = 20) are evaluated at {where} "
                 "(points `..._from_default`): the quality bound Z changes only the workload, not the observation or "
                 "action shapes or the servers. The tasks sweep is retrained (LAD-TS's latent store is sized by the "
                 "trained N, so N = 60, 70 cannot take the default policies), and so are the capacity sweep (the agents "
                 "do not observe f: what they learn is the trained servers' capacity split), the stations (B changes "
                 "the shapes), steps and alpha sweeps (algorithm parameters)."
                 + (" The transfer check below measures the cost at Z = 20, the paper's Fig. 7a headline point, where "
                    "the policies are retrained too (and the headline's Z = 20 rows use those)." if gaps else "") + "\n")
    if gaps:
        L.append("### Transfer check: retrained vs default-trained policies\n")
        L.append("Mean service delay (s, mean ± std over seeds) of each trained method at the points evaluated both "
                 "ways; the gap is default-trained minus retrained (positive: the default policies are slower "
                 "there).\n")
        L.append("| point | method | retrained | default-trained | gap (s) | gap (rel.) |\n|---|---|---|---|---|---|")
        for g in gaps:
            where = ", ".join(f"{k} = {v}" for k, v in g["preset_overrides"].items())
            for k, m in g["methods"].items():
                a, b = m["transferred"], m["retrained"]
                L.append(f"| {where} | {lab[k]} | {b['mean']:.3g} ± {b['std']:.2g} | "
                         f"{a['mean']:.3g} ± {a['std']:.2g} | "
                         f"{m['gap']:+.3g} | {100 * m['gap'] / b['mean']:+.1f}% |")
        L.append("")
    return L


def write_report(results: dict, out: Path) -> None:
    rows = headline(results)
    results["headline"] = rows
    gaps = transfer_gap(results)
    results["transfer_gap"] = gaps
    results["timing"] = timing(results)
    figs = _figures(results, out)
    st, w, lab = results["settings"], results["wall_s"], _labels(results)
    L = [f"# LAD-TS (paper 003) reproduced: {results['title']}\n"]
    L.append(f"Generated by `{shlex.join(results['command'])}` ({results['mode']} run). Every number of ours was computed "
             "by that command from the trained runs listed at the end; the paper's numbers are quoted from its text "
             "(Sec. V-C; it prints no tables). Spec and deviations: `docs/papers/ladts.md`; algorithms: "
             "`policies/train/ladts.py`.\n")
    if st["reduced"]:
        L.append("**Reduced run** (the full run is `aigc-offload reproduce ladts`: "
                 f"{FULL_EPISODES} episodes per run, 3 seeds, every point; Z evaluated with the default "
                 "point's policies): " + "; ".join(st["reduced"]) + ".\n")
    L.append(f"Settings: {st['seeds']} seeds per trained method and point, {st['episodes']} training episodes per run "
             f"(59 decided slots, ~30,000 tasks per episode at the default point), evaluation {st['eval_episodes']} "
             f"episodes per seed on common workloads (seed 1000+k); algorithm overrides {st['algo_overrides'] or 'none'} "
             "over the paper's hyperparameters (2x20 networks, I = 5, lr 1e-4 / 1e-3 / 3e-4, alpha 0.05, target entropy "
             "-1, gamma 0.95, tau 0.005, pool 1000, batch 64, updates once |R_b| > 300). Trained policies act as in "
             "training (a ~ pi; DQN-TS greedily). Values are mean service delay per task (s), ± std over seeds (population std: divided by the number of seeds).\n")
    L += invocation_lines(results)
    L.append("## Headline: ours vs the paper\n")
    L.append("| what | ours | paper | paper's reference |\n|---|---|---|---|")
    for r in rows:
        o, p = _fmt_row(r)
        L.append(f"| {r['what']} | {o} | {p} | {r['reference']} |")
    L.append("\nReductions as the paper states them: (baseline - LAD-TS) / baseline for N = 50 and B = 40, "
             "(baseline - LAD-TS) / LAD-TS for Z = 20. Episodes to converge: the episode from which the smoothed "
             "training delay (mean over seeds) divided by Opt-TS's on the same training workloads (this removes the "
             f"episodes' random workloads from the curve) stays within {CONVERGE_TOL:.0%} of that ratio's final level "
             "(last 10%); the Fig. 5 table also gives the first episode the smoothed delay itself comes within "
             f"{CONVERGE_TOL:.0%} of its final level, which the curve can leave again.\n")
    L += _transfer_lines(results, gaps)
    bad = orderings(results)
    L.append("## Does the paper's ordering hold?\n")
    L.append("Opt-TS <= LAD-TS (within 5%) < D2SAC-TS < SAC-TS < DQN-TS at every point." if not bad else
             "Where it does not (LAD-TS against each baseline and Opt-TS; the baselines' order):\n\n" +
             "\n".join(f"- {b}" for b in bad))
    L.append("")
    L += _split_lines(results)
    conv = convergence_delays(results)
    if conv:
        L.append(f"## Fig. 5: convergence (point `{results['convergence']['point']}`)\n")
        if "fig5_convergence.png" in figs:
            L.append("![Fig. 5](fig5_convergence.png)\n")
        d = _default_point(results)
        L.append("| method | final training delay (s) | paper plateau (s) | episodes to converge | first within 5% | "
                 "paper | frozen policy, evaluation (s) |\n|---|---|---|---|---|---|---|")
        for k, c in conv.items():
            ca = c["converged_at"]
            ev = d["methods"][k]["latency_s"] if d is not None and k in d["methods"] else None
            L.append(f"| {lab[k]} | {c['final']:.3g} ± {c['final_std']:.2g} | {PAPER['plateau'][k]} | "
                     f"{ca if ca is not None else 'n/a'} | {c['first_within'] if c['first_within'] is not None else 'n/a'} | "
                     f"{PAPER['converge_episodes'][k]} | "
                     + (f"{ev['mean']:.3g} ± {ev['std']:.2g}" if ev else "n/a") + " |")
        oc = results.get("convergence_opt")
        if oc:
            tail = max(1, len(oc["delay"]) // 10)
            L.append(f"| Opt-TS (same training workloads) | {np.mean(oc['delay'][-tail:]):.3g} | {PAPER['plateau']['opt']} | "
                     "- | - | - | " + (f"{d['methods']['opt']['latency_s']['mean']:.3g}" if d is not None else "n/a") + " |")
        L.append("\nThe training delay is the paper's Fig. 5 quantity: the episodes in which the agents act and keep "
                 f"learning ({_updates_per_slot(results)} update(s) per station per slot), so a policy that is updated while the queues build up can "
                 "track them. The evaluation runs the final checkpoint frozen on other workloads (what `aigc-offload "
                 "evaluate` and the other figures measure); DQN-TS's greedy snapshot loses most from the freeze.\n")
    shown: set = set()
    for ek, e in results["experiments"].items():
        names = [e["points"][x]["point"] for x in e["x_values"]]
        if names and all(n in shown for n in names):
            L.append(f"## {e['figure']}: {e['title']}\n\nOnly {', '.join(f'`{n}`' for n in names)} ({e['x_label']} = "
                     f"{', '.join(e['x_values'])}) was run for this figure; its numbers are in the table above.\n")
            continue
        shown.update(names)
        L.append(f"## {e['figure']}: {e['title']}\n")
        fname = {"tasks": "fig6_tasks_capacity.png", "capacity": "fig6_tasks_capacity.png",
                 "quality": "fig7_quality_stations.png", "stations": "fig7_quality_stations.png",
                 "steps": "fig8_steps_alpha.png", "alpha": "fig8_steps_alpha.png"}.get(ek)
        if fname in figs and ek in ("tasks", "quality", "steps"):
            L.append(f"![{e['figure']}]({fname})\n")
        if ek == "retrained":
            L.append(f"\"Z=20 default-trained\" evaluates the runs of the default point (`{DEFAULT.name}`) at Z = 20, "
                     "as Fig. 7a does; \"Z=20\" evaluates policies retrained there, as the paper does. Their "
                     "difference is what the deviation costs there.\n")
        elif (sentence := transfer_sentence(e, f"the default point (`{DEFAULT.name}`)", bool(gaps))) is not None:
            L.append(sentence)
        L.append("| method | " + " | ".join(x if ek == "retrained" else f"{e['x_label']} = {x}"
                                           for x in e["x_values"]) + " |")
        L.append("|---|" + "---|" * len(e["x_values"]))
        for k in results["methods"]:
            if not any(k in e["points"][x]["methods"] for x in e["x_values"]) or (ek in LAD_ONLY and k not in ("ladts", "opt")):
                continue
            cells = []
            for x in e["x_values"]:
                m = e["points"][x]["methods"].get(k)
                cells.append(f"{m['latency_s']['mean']:.3g} ± {m['latency_s']['std']:.2g}" if m else "n/a")
            L.append(f"| {lab[k]} | " + " | ".join(cells) + " |")
        L.append("")
    tm = results["timing"]
    if tm:
        L.append("## Training time per episode\n")
        L.append("| method | runs | wall s / episode | CPU s / episode | CPU s / episode, default point | "
                 "speed-up vs the authors' 78 s (wall) | (CPU) |\n|---|---|---|---|---|---|---|")
        for k, t in tm.items():
            cpu = f"{t['cpu_s']:.2f}" if t["cpu_s"] is not None else "n/a"
            cpud = f"{t['cpu_s_default']:.2f}" if t["cpu_s_default"] is not None else "n/a"
            spd = f"{AUTHORS_S_PER_EPISODE / t['cpu_s']:.0f}x" if t["cpu_s"] else "n/a"
            L.append(f"| {lab[k]} | {t['runs']} | {t['wall_s']:.2f} | {cpu} | {cpud} | "
                     f"{AUTHORS_S_PER_EPISODE / t['wall_s']:.0f}x | {spd} |")
        L.append(f"\nEpisodes with updates only. Wall times are measured on a 2-core machine shared with other jobs "
                 f"({training_parallelism(results)}, one torch thread each); CPU time is the process time "
                 "of the run, independent of the sharing. The authors' code takes about 78 s per LAD-TS episode on this "
                 "machine (one actor call per task, one update per station per slot in Python). `aigc-offload bench "
                 "train` times one LAD-TS process alone on a core, with 1 update per slot (the authors' amount of "
                 "learning per episode) and 3 (ours).\n")
    L.append("## Runs\n")
    L.append("Run directories (each a policy for `aigc-offload evaluate`): " +
             ", ".join(f"`{d}`" for d in list(results["runs"])[:4]) + (" ..." if len(results["runs"]) > 4 else "") +
             "; the full list with per-seed numbers is in `results.json`.\n")
    (out / "report.md").write_text("\n".join(L) + "\n")


SPEC = PaperSpec(name="ladts", title="Accelerating AIGC Services with Latent Action Diffusion Scheduling in Edge "
                 "Networks (LAD-TS)", source="/work/shared/seeds/003_e60a78d8c493597d.txt", scenario="ladts",
                 methods=METHODS, experiments=EXPERIMENTS, full=full, quick=quick, convergence_point=DEFAULT.name,
                 write_report=write_report, run_extra=run_action_split)
