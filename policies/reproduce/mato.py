"""MATO (paper 000): methods, experiments, the paper's stated numbers, and the report.

Paper figures (no tables): Fig. 2 convergence (episode reward; MADDPG-MATO, MADDPG-NoModel, SADDPG),
Fig. 3 latency / energy / completion vs the number of model types L = 3..6 (M = 10), Fig. 4 the same
vs the number of EDs M = 5..20 (L = 6). Spec: docs/papers/mato.md section 6.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from policies.reproduce.core import (Experiment, Method, PaperSpec, Point, Settings, invocation_lines,
                                     training_and_runs_sections)
from policies.reproduce.png import Panel, Series, figure

METHODS = (
    Method("maddpg", "MADDPG-MATO", trained=True),
    Method("maddpg_nomodel", "MADDPG-NoModel", trained=True, preset_overrides={"model_aware": False}),
    Method("saddpg", "SADDPG", trained=True),
    Method("random", "Random", trained=False),
    Method("greedy", "Greedy", trained=False),
    Method("local", "Local (ours)", trained=False, in_paper=False),
    Method("opt", "Opt (ours, oracle)", trained=False, in_paper=False, max_agents=10),  # ~s per episode at M = 20
)
BASELINES = ("maddpg_nomodel", "saddpg", "random", "greedy")  # the paper's comparison set
L_VALUES = (3, 4, 5, 6)
M_VALUES = (5, 10, 15, 20)


def point(L: int, M: int) -> Point:
    return Point(f"L{L}_M{M}", {"num_model_types": L, "num_devices": M})


EXPERIMENTS = (
    Experiment("model_types", "Performance vs the number of model types (M = 10)", "Fig. 3", "model types L",
               L_VALUES, tuple(point(L, 10) for L in L_VALUES)),
    Experiment("devices", "Performance vs the number of EDs (L = 6)", "Fig. 4", "EDs M",
               M_VALUES, tuple(point(6, M) for M in M_VALUES)),
)

# the training settings of a full reproduction (the spec's hyperparameters are the algorithm defaults)
FULL_EPISODES = 600
FULL_ALGO = {"update_every": 2}


def full() -> Settings:
    return Settings(seeds=3, episodes=FULL_EPISODES, eval_episodes=30, algo_overrides=dict(FULL_ALGO), jobs=2)


def quick() -> Settings:
    """A few minutes: two points per sweep, short runs with small batches, few evaluation episodes."""
    return Settings(seeds=3, episodes=40, eval_episodes=4, jobs=2, smooth=5,
                    algo_overrides={"batch_size": 128, "learning_starts": 200, "update_every": 2,
                                    "checkpoint_every": 20},
                    x_subset={"model_types": (3, 6), "devices": (5, 10)},
                    reduced=["--quick: 40 training episodes per run (batch 128, not the paper's 1024), "
                             "2 of 4 points per sweep, 4 evaluation episodes per seed; a smoke run, not a result"])


PAPER = {
    "convergence_reward": -40.0,  # Fig. 2: "eventually converging to approximately -40"
    "latency_reduction": 0.0698,  # abstract, IV-C1: averaged over L = 3..6
    "energy_reduction": 0.0712,
    "completion_gain": 0.0372,
    "completion_M20": 0.98,  # IV-C2
    "completion_gap_M20": 0.113,  # "surpassing other algorithms by at least 11.3%"
    "nomodel_completion_M20": 0.88,
}

METRICS = (("latency_s", "latency (s)", "Latency", False), ("energy_j", "energy (J)", "Energy", False),
           ("completion_rate", "completion rate", "Completion rate", True))


def _m(res: dict, method: str, metric: str) -> float:
    return res["methods"][method][metric]["mean"]


def headline(results: dict) -> list[dict]:
    """Rows (what, ours, paper, reference, note): the paper's stated numbers next to ours."""
    rows = []
    exps = results["experiments"]
    if "model_types" in exps:
        pts = exps["model_types"]["points"]
        for metric, _, name, higher in METRICS:
            best, mean_b, per_base = [], [], {b: [] for b in BASELINES}
            for x in exps["model_types"]["x_values"]:
                r = pts[x]
                ours = _m(r, "maddpg", metric)
                vals = {b: _m(r, b, metric) for b in BASELINES}
                ref = max(vals.values()) if higher else min(vals.values())
                gain = (lambda base: (ours - base) / base if higher else (base - ours) / base)
                best.append(gain(ref))
                mean_b.append(sum(gain(v) for v in vals.values()) / len(vals))
                for b, v in vals.items():
                    per_base[b].append(gain(v))
            key = {"latency_s": "latency_reduction", "energy_j": "energy_reduction",
                   "completion_rate": "completion_gain"}[metric]
            what = {"latency_s": "lower latency", "energy_j": "lower energy", "completion_rate": "higher completion"}[metric]
            avg = lambda v: sum(v) / len(v)  # noqa: E731
            rows.append({"key": key, "what": f"MADDPG-MATO {what} vs the best baseline, mean over L = "
                                             f"{', '.join(exps['model_types']['x_values'])}",
                         "ours": avg(best), "paper": PAPER[key], "reference": "abstract, Sec. IV-C1, Fig. 3",
                         "vs_each": {b: avg(v) for b, v in per_base.items()}, "vs_mean_of_baselines": avg(mean_b)})
    if "devices" in exps and "20" in exps["devices"]["points"]:
        r = exps["devices"]["points"]["20"]
        ours = r["methods"]["maddpg"]["completion_rate"]
        rows.append({"key": "completion_M20", "what": "MADDPG-MATO completion rate, 20 EDs", "ours": ours["mean"],
                     "ours_std": ours["std"], "paper": PAPER["completion_M20"], "reference": "Sec. IV-C2, Fig. 4"})
        others = {b: _m(r, b, "completion_rate") for b in BASELINES}
        gap = min((ours["mean"] - v) / v if v > 0 else math.inf for v in others.values())
        rows.append({"key": "completion_gap_M20", "what": "MADDPG-MATO completion above every other method "
                     "(relative, the smallest gap), 20 EDs", "ours": gap, "paper": PAPER["completion_gap_M20"],
                     "reference": "Sec. IV-C2, Fig. 4"})
        nm = r["methods"]["maddpg_nomodel"]["completion_rate"]
        rows.append({"key": "nomodel_completion_M20", "what": "MADDPG-NoModel completion rate, 20 EDs",
                     "ours": nm["mean"], "ours_std": nm["std"], "paper": PAPER["nomodel_completion_M20"],
                     "reference": "Sec. IV-C2, Fig. 4"})
    conv = results["convergence"]["methods"]
    if "maddpg" in conv:
        fr = conv["maddpg"]["final_reward"]
        rows.append({"key": "convergence_reward", "what": "MADDPG-MATO converged episode reward (last 10% of "
                     "training, smoothed)", "ours": fr["mean"], "ours_std": fr["std"],
                     "paper": PAPER["convergence_reward"], "reference": "Sec. IV-B, Fig. 2"})
    return rows


def orderings(results: dict) -> list[str]:
    """Sentences: does the paper's ordering hold at each point?"""
    out = []
    for ek, e in results["experiments"].items():
        for x in e["x_values"]:
            r = e["points"][x]
            for metric, _, name, higher in METRICS:
                paper_methods = [m for m in r["methods"] if results["methods"][m]["in_paper"]]
                vals = {m: _m(r, m, metric) for m in paper_methods}
                best = max(vals, key=vals.get) if higher else min(vals, key=vals.get)
                if best != "maddpg":
                    out.append(f"{e['figure']} {e['x_label']} = {x}, {name.lower()}: best is "
                               f"{results['methods'][best]['label']} ({vals[best]:.4g}), MADDPG-MATO {vals['maddpg']:.4g}")
    return out


def _fmt(s: dict, pct: bool = False) -> str:
    if pct:
        return f"{100 * s['mean']:.1f}% ± {100 * s['std']:.1f}"
    return f"{s['mean']:.3g} ± {s['std']:.2g}"


def _figures(results: dict, out: Path) -> list[str]:
    files = []
    labels = {k: v["label"] for k, v in results["methods"].items()}
    conv = results["convergence"]["methods"]
    if conv:
        series = [Series(labels[k], c["episode"], c["reward_mean"], c["reward_std"]) for k, c in conv.items()]
        w = next(iter(conv.values()))["window"]
        import numpy as np

        means = np.concatenate([np.asarray(c["reward_mean"]) for c in conv.values()])
        hi = float(np.max(means + np.concatenate([np.asarray(c["reward_std"]) for c in conv.values()])))
        # an episode with a deep Rayleigh fade on an offloaded link (latency ~1e3 s) would flatten the
        # plot: the axis starts below the 15th percentile and lower values are drawn on its bottom edge
        p15 = float(np.percentile(means, 15))
        lo = p15 - 0.6 * max(hi - p15, 1.0)
        figure(out / "fig2_convergence.png", [Panel(f"Fig. 2: reward, {w}-episode mean, ±std over seeds",
                                                    "episode", "episode reward", series, markers=False,
                                                    ylim=(lo, hi))],
               panel_w=720, panel_h=420)
        files.append("fig2_convergence.png")
    for ek, fname in (("model_types", "fig3_model_types.png"), ("devices", "fig4_devices.png")):
        e = results["experiments"].get(ek)
        if not e:
            continue
        xs = e["x_values"]
        panels = []
        for metric, ylabel, name, _ in METRICS:
            ser = []
            for k, meta in results["methods"].items():
                if not meta["in_paper"]:
                    continue
                ys = [e["points"][x]["methods"][k][metric]["mean"] for x in xs]
                sd = [e["points"][x]["methods"][k][metric]["std"] for x in xs]
                ser.append(Series(meta["label"], [float(x) for x in xs], ys, sd))
            panels.append(Panel(f"{e['figure']}: {name}", e["x_label"], ylabel, ser, kind="bar", categories=xs))
        figure(out / fname, panels, panel_w=470, panel_h=360)
        files.append(fname)
    return files


def write_report(results: dict, out: Path) -> None:
    rows = headline(results)
    results["headline"] = rows
    figs = _figures(results, out)
    st = results["settings"]
    labels = {k: v["label"] for k, v in results["methods"].items()}
    L = []
    L.append(f"# MATO (paper 000) reproduced: {results['title']}\n")
    L.append(f"Generated by `{shlex.join(results['command'])}` ({results['mode']} run). Every number below was "
             "computed by that command from the trained runs listed at the end; the paper's numbers are quoted "
             "from its text (it has figures only, no tables). Spec and deviations: `docs/papers/mato.md`.\n")
    if st["reduced"]:
        L.append("**Reduced run** (the full run is `aigc-offload reproduce mato`: 600 episodes, batch 1024, all 7 points, "
                 "30 evaluation episodes): " + "; ".join(st["reduced"]) + ".\n")
    L.append(f"Settings: {st['seeds']} seeds per trained method and point, {st['episodes']} training episodes per "
             f"run (20 steps each), evaluation {st['eval_episodes']} episodes per seed on common workloads "
             f"(seed {1000}+k), algorithm overrides {st['algo_overrides'] or 'none'} over the paper's "
             "hyperparameters (lr 1e-3, gamma 0.95, tau 0.01, buffer 10,000, batch 1024).\n")
    L += invocation_lines(results)
    L.append("## Headline: ours vs the paper\n")
    L.append("| what | ours | paper | paper's reference |\n|---|---|---|---|")
    for r in rows:
        pct = r["key"] not in ("convergence_reward",)
        ours = f"{100 * r['ours']:.2f}%" if pct else f"{r['ours']:.2f}"
        if "ours_std" in r:
            ours += f" ± {100 * r['ours_std']:.2f}" if pct else f" ± {r['ours_std']:.2f}"
        paper = f"{100 * r['paper']:.2f}%" if pct else f"about {r['paper']:.0f}"
        L.append(f"| {r['what']} | {ours} | {paper} | {r['reference']} |")
    for r in rows:
        if "vs_each" in r:
            each = ", ".join(f"{labels[b]} {100 * v:+.2f}%" for b, v in r["vs_each"].items())
            L.append(f"\n- {r['key']}: against each baseline (mean over L): {each}; against the mean of the four: "
                     f"{100 * r['vs_mean_of_baselines']:+.2f}%.")
    L.append("\nPercentages are relative gaps ((baseline - ours) / baseline for latency and energy, "
             "(ours - baseline) / baseline for completion), as spec 2.2 reads the paper. Spread is the standard "
             "deviation over seeds.\n")
    bad = orderings(results)
    L.append("## Does the paper's ordering hold?\n")
    L.append("MADDPG-MATO best among the paper's five methods at every point and metric." if not bad else
             "Points where MADDPG-MATO is not the best of the paper's five methods:\n\n" + "\n".join(f"- {b}" for b in bad))
    L.append("")
    for ek, e in results["experiments"].items():
        L.append(f"## {e['figure']}: {e['title']}\n")
        fname = {"model_types": "fig3_model_types.png", "devices": "fig4_devices.png"}[ek]
        if fname in figs:
            L.append(f"![{e['figure']}]({fname})\n")
        for metric, ylabel, name, _ in METRICS + (("reward", "reward", "Mean team reward per step", True),):
            L.append(f"{name} (mean ± std over seeds):\n")
            L.append("| method | " + " | ".join(f"{e['x_label']} = {x}" for x in e["x_values"]) + " |")
            L.append("|---|" + "---|" * len(e["x_values"]))
            for k in results["methods"]:
                cells = [_fmt(e["points"][x]["methods"][k][metric], pct=(metric == "completion_rate"))
                         if k in e["points"][x]["methods"] else "n/a" for x in e["x_values"]]
                L.append(f"| {labels[k]} | " + " | ".join(cells) + " |")
            L.append("")
    conv = results["convergence"]["methods"]
    if conv:
        L.append(f"## Fig. 2: convergence (L = 6, M = 10, point {results['convergence']['point']})\n")
        if "fig2_convergence.png" in figs:
            L.append("![Fig. 2](fig2_convergence.png)\n")
            L.append("Training episodes with exploration noise, so below the deterministic evaluation. The y axis "
                     "starts below the 15th percentile of the curves: the rare episodes with an offloaded task in a "
                     "deep Rayleigh fade (upload of ~10^3 s) are drawn on the bottom edge.\n")
        L.append("| method | final episode reward (last 10%, smoothed) | paper |\n|---|---|---|")
        for k, c in conv.items():
            L.append(f"| {labels[k]} | {_fmt(c['final_reward'])} | "
                     f"{'about -40' if k == 'maddpg' else 'below MADDPG-MATO'} |")
        L.append("")
    L += training_and_runs_sections(results, labels, decimals=2)
    (out / "report.md").write_text("\n".join(L) + "\n")


SPEC = PaperSpec(name="mato", title="A Model Aware AIGC Task Offloading Algorithm in IIoT Edge Computing (MADDPG-MATO)",
                 source="/work/shared/seeds/000_138261f269e9457e.txt", scenario="mato", methods=METHODS,
                 experiments=EXPERIMENTS, full=full, quick=quick, convergence_point="L6_M10",
                 write_report=write_report)
