"""EdgeAIGC (paper 004): methods, experiments, the paper's stated numbers, and the report.

Paper figures (Sec. 5.2; no tables of results): Fig. 4 TD3's training reward for four (actor, critic)
learning rates, (1e-5, 1e-3) best; Fig. 5 TD3 vs DDPG convergence, TD3 "about 1.72%" higher reward;
Fig. 6 hit rate vs the number of users, TD3 best with a maximum improvement of 41.06% over DDPG, 50.93%
over PCRAS (PSO) and 57.85% over GCRAS (GA) ("at least 41.06%" in the abstract); Fig. 7 the objective
(1/T) sum_t G(t) vs the number of users, rising with U. Spec: docs/papers/edgeaigc.md section 6.

Our setting of the main comparison (Figs. 5-7): TD3 and DDPG both with actor lr 1e-3 (critic lr 1e-3, the
paper's): with the paper's actor lr 1e-5 our actor is still far from converged after the paper's 800
episodes (the learning-rate study, Fig. 4, measures this with the paper's four settings and two of ours).
Every number is the ``aigc-offload evaluate`` metric on common workloads (trained policies deterministic),
except the convergence curves (training episodes, with exploration noise, as the paper's figures).
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import numpy as np

from policies.reproduce.core import (Experiment, Method, PaperSpec, Point, Settings, read_metrics,
                                     invocation_lines, training_and_runs_sections)
from policies.reproduce.png import Panel, Series, figure

METHODS = (
    Method("td3", "TD3", trained=True),
    Method("ddpg", "DDPG", trained=True),
    Method("pso", "PCRAS (PSO)", trained=False),
    Method("ga", "GCRAS (GA)", trained=False),
    Method("greedy", "PopGreedy (ours)", trained=False, in_paper=False),
    Method("random", "Random (ours)", trained=False, in_paper=False),
    Method("opt", "Opt (ours, per slot)", trained=False, in_paper=False),
)
BASELINES = ("ddpg", "pso", "ga")  # the paper's comparison set (Fig. 6)
U_VALUES = (10, 20, 30, 40, 50)  # the paper does not print its grid (spec 6)
MAIN_ALGO = {"lr_actor": 1e-3}  # [ours] the main comparison's actor lr (see the module docstring)


def upoint(U: int) -> Point:
    return Point(f"U{U}", {"num_users": U})


CONVERGENCE = upoint(10)  # Table 3: U = 10 (Fig. 5)

# Fig. 4: the paper's four (actor, critic) pairs, and two of ours (the main comparison's is CONVERGENCE)
LR_PAIRS = (("1e-5/1e-3", 1e-5, 1e-3), ("1e-5/8e-4", 1e-5, 8e-4), ("1e-5/6e-4", 1e-5, 6e-4),
            ("2e-5/1e-3", 2e-5, 1e-3), ("1e-4/1e-3", 1e-4, 1e-3), ("1e-3/1e-3", 1e-3, 1e-3))
PAPER_LR = ("1e-5/1e-3", "1e-5/8e-4", "1e-5/6e-4", "2e-5/1e-3")


def lr_point(label: str, actor: float, critic: float) -> Point:
    if (actor, critic) == (MAIN_ALGO["lr_actor"], 1e-3):
        return CONVERGENCE
    return Point("U10_lr" + label.replace("/", "_"), {"num_users": 10}, methods=("td3",),
                 algo_overrides={"lr_actor": actor, "lr_critic": critic})


EXPERIMENTS = (
    Experiment("learning_rates", "TD3 with different (actor, critic) learning rates (U = 10)", "Fig. 4",
               "actor lr / critic lr", tuple(lb for lb, _, _ in LR_PAIRS), tuple(lr_point(*x) for x in LR_PAIRS)),
    Experiment("users", "Hit rate and objective vs the number of users", "Figs. 6-7", "users U",
               U_VALUES, tuple(upoint(U) for U in U_VALUES)),
)

FULL_EPISODES = 800  # N, Table 3


def full() -> Settings:
    return Settings(seeds=3, episodes=FULL_EPISODES, eval_episodes=30, jobs=2, smooth=20,
                    algo_overrides=dict(MAIN_ALGO))


def quick() -> Settings:
    """A few minutes: 100 episodes, U = 10 and 20, the paper's best learning rate and ours."""
    return Settings(seeds=2, episodes=100, eval_episodes=3, jobs=2, smooth=10, algo_overrides=dict(MAIN_ALGO),
                    x_subset={"users": (10, 20), "learning_rates": ("1e-5/1e-3", "1e-3/1e-3")},
                    reduced=["--quick: 100 training episodes per run (the paper: 800), 2 seeds, U = 10 and 20 only, "
                             "2 of 6 learning-rate settings, 3 evaluation episodes per seed; a smoke run, not a result"])


PAPER = {
    "hit_gain_ddpg": 0.4106,  # Sec. 5.2.2: maximum improvement of the hit rate over DDPG (Fig. 6)
    "hit_gain_pso": 0.5093,  # ... over PCRAS
    "hit_gain_ga": 0.5785,  # ... over GCRAS
    "hit_gain_min": 0.4106,  # abstract / conclusion: "at least 41.06%" (the smallest of the three maxima)
    "reward_gain_ddpg": 0.0172,  # Sec. 5.2.1: TD3's reward about 1.72% above DDPG's (Fig. 5)
    "best_lr": "1e-5/1e-3",  # Fig. 4
}
CONVERGE_TOL = 0.05  # converged: the smoothed training reward within 5% of its final level
TARGET_CONVERGE_S = 20 * 60  # the task's target: TD3's converged level within 20 minutes on this machine

METRICS = (("hit_rate", "hit rate", "Hit rate", True), ("objective", "(1/T) sum_t G(t)", "Objective", False))


def _m(res: dict, method: str, metric: str) -> float | None:
    m = res["methods"].get(method)
    return None if m is None else m[metric]["mean"]


def _gain(ours: float, base: float, higher: bool) -> float:
    if base == 0:
        return math.inf if ours > 0 else 0.0
    return (ours - base) / abs(base) if higher else (base - ours) / abs(base)


# -- training curves (results["extra"]) -------------------------------------------------------------
def _curves(runs: Path, point: str, algo: str, seeds: int, smooth: int) -> dict | None:
    """Training reward and hit rate per episode of ``point``'s runs: moving average (mean and std over seeds),
    a 4th-order polynomial fit of the mean (the paper's smoothing, Sec. 5.2.1), the final level (last 10%),
    the first episode within CONVERGE_TOL of it and the training wall time until then."""
    per = []
    for seed in range(seeds):
        d = runs / point / f"{algo}_s{seed}"
        if not (d / "metrics.csv").is_file():
            return None
        per.append(read_metrics(d))
    n = min(len(r) for r in per)
    if n == 0:
        return None
    out: dict = {"point": point, "algo": algo}
    w = max(1, min(smooth, n))
    for key in ("reward", "hit_rate"):
        arr = np.array([[x[key] for x in r[:n]] for r in per])
        sm = np.stack([np.convolve(a, np.ones(w) / w, mode="valid") for a in arr])
        ep = np.arange(n)
        fit = np.polyval(np.polyfit(ep, arr.mean(0), min(4, n - 1)), ep) if n > 1 else arr.mean(0)
        tail = max(1, sm.shape[1] // 10)
        out[key] = {"episode": list(range(w - 1, n)), "mean": sm.mean(0).tolist(), "std": sm.std(0).tolist(),
                    "poly4": fit.tolist(), "final": [float(v) for v in sm[:, -tail:].mean(axis=1)]}
    conv_ep, conv_s = [], []
    for k, r in enumerate(per):  # per seed: the first smoothed episode within CONVERGE_TOL of the final reward
        sm = np.convolve([x["reward"] for x in r[:n]], np.ones(w) / w, mode="valid")
        final = out["reward"]["final"][k]
        idx = int(np.argmax(sm >= final - CONVERGE_TOL * abs(final)))
        episode = idx + w - 1
        conv_ep.append(episode)
        conv_s.append(float(sum(x["episode_s"] for x in r[:episode + 1])))
    out["converged_episode"], out["converged_wall_s"] = conv_ep, conv_s
    out["train_wall_s"] = [float(sum(x["episode_s"] for x in r[:n])) for r in per]
    return out


def extra(spec: PaperSpec, settings: Settings, runs: Path, command: list[str]) -> dict:
    """The learning-rate study's curves (Fig. 4) and TD3 / DDPG curves with fits (Fig. 5)."""
    keep = settings.x_subset.get("learning_rates")
    lr = {}
    for label, a, c in LR_PAIRS:
        if keep is not None and label not in {str(k) for k in keep}:
            continue
        if settings.experiments is not None and "learning_rates" not in settings.experiments:
            continue
        cur = _curves(runs, lr_point(label, a, c).name, "td3", settings.seeds, settings.smooth)
        if cur is not None:
            lr[label] = cur
    conv = {m: _curves(runs, CONVERGENCE.name, m, settings.seeds, settings.smooth) for m in ("td3", "ddpg")}
    return {"learning_rates": lr, "convergence": {k: v for k, v in conv.items() if v is not None}}


# -- headline and orderings -------------------------------------------------------------------------
def headline(results: dict) -> list[dict]:
    """Rows (key, what, ours, paper, reference): the paper's stated numbers next to ours."""
    rows = []
    users = results["experiments"].get("users")
    if users:
        best: dict = {}
        for b in BASELINES:
            gains = []
            for x in users["x_values"]:
                r = users["points"][x]
                ours, base = _m(r, "td3", "hit_rate"), _m(r, b, "hit_rate")
                gains.append((_gain(ours, base, True), x))
            g, x = max(gains)
            best[b] = g
            rows.append({"key": f"hit_gain_{b}", "what": f"TD3 hit rate above {results['methods'][b]['label']}, "
                         f"maximum over U = {', '.join(users['x_values'])} (at U = {x})", "ours": g,
                         "paper": PAPER[f"hit_gain_{b}"], "reference": "Sec. 5.2.2, Fig. 6",
                         "per_u": {xx: gg for gg, xx in gains}})
        rows.append({"key": "hit_gain_min", "what": "TD3 hit rate above every baseline: the smallest of the three "
                     "maxima (\"at least\")", "ours": min(best.values()), "paper": PAPER["hit_gain_min"],
                     "reference": "abstract, Sec. 6"})
    conv = results["convergence"]["methods"]
    if "td3" in conv and "ddpg" in conv:
        t, d = conv["td3"]["final_reward"]["mean"], conv["ddpg"]["final_reward"]["mean"]
        rows.append({"key": "reward_gain_ddpg", "what": "TD3 training reward above DDPG's at convergence (last 10% "
                     "of the training episodes, smoothed), (R_TD3 - R_DDPG) / |R_DDPG|", "ours": _gain(t, d, True),
                     "paper": PAPER["reward_gain_ddpg"], "reference": "Sec. 5.2.1, Fig. 5"})
    if users and str(10) in users["points"]:
        r = users["points"]["10"]
        t, d = _m(r, "td3", "reward"), _m(r, "ddpg", "reward")
        rows.append({"key": "reward_gain_ddpg_eval", "what": "TD3 evaluation reward above DDPG's at U = 10 "
                     "(deterministic policies, common workloads)", "ours": _gain(t, d, True),
                     "paper": PAPER["reward_gain_ddpg"], "reference": "Sec. 5.2.1, Fig. 5"})
    return rows


def lr_ranking(results: dict) -> list[tuple[str, float]]:
    """The learning-rate settings by final training reward, best first."""
    lr = results.get("extra", {}).get("learning_rates", {})
    final = {k: float(np.mean(v["reward"]["final"])) for k, v in lr.items()}
    return sorted(final.items(), key=lambda kv: -kv[1])


def orderings(results: dict) -> list[str]:
    """Sentences: where the paper's orderings and trends do not hold."""
    out = []
    labels = {k: v["label"] for k, v in results["methods"].items()}
    users = results["experiments"].get("users")
    if users:
        for x in users["x_values"]:
            r = users["points"][x]
            paper_methods = [m for m in r["methods"] if results["methods"][m]["in_paper"]]
            for metric, _, name, higher in METRICS:
                vals = {m: _m(r, m, metric) for m in paper_methods}
                bestm = max(vals, key=vals.get) if higher else min(vals, key=vals.get)
                if bestm != "td3":
                    out.append(f"U = {x}, {name.lower()}: best is {labels[bestm]} ({vals[bestm]:.4g}), "
                               f"TD3 {vals['td3']:.4g}")
            h = {m: _m(r, m, "hit_rate") for m in ("td3", "ddpg", "pso", "ga")}
            order = sorted(h, key=h.get, reverse=True)
            if order != ["td3", "ddpg", "pso", "ga"]:
                out.append(f"U = {x}, hit-rate order is {' > '.join(labels[m] for m in order)} (paper: TD3 > DDPG > "
                           f"PCRAS > GCRAS)")
        xs = users["x_values"]
        if len(xs) > 1:
            hits = [_m(users["points"][x], "td3", "hit_rate") for x in xs]
            if not all(b >= a for a, b in zip(hits, hits[1:])):
                out.append("TD3's hit rate does not rise with U (paper, Fig. 6: it rises): "
                           + ", ".join(f"U = {x}: {100 * v:.1f}%" for x, v in zip(xs, hits)))
            objs = [_m(users["points"][x], "td3", "objective") for x in xs]
            if not all(b >= a for a, b in zip(objs, objs[1:])):
                out.append("TD3's objective does not rise with U (paper, Fig. 7: it rises): "
                           + ", ".join(f"U = {x}: {v:.4g}" for x, v in zip(xs, objs)))
    rank = [k for k, _ in lr_ranking(results) if k in PAPER_LR]
    if rank and rank[0] != PAPER["best_lr"]:
        out.append(f"Fig. 4: among the paper's learning rates the best final training reward is {rank[0]} "
                   f"(paper: {PAPER['best_lr']}); order {' > '.join(rank)}")
    return out


# -- figures ------------------------------------------------------------------------------------------
def _figures(results: dict, out: Path) -> list[str]:
    files = []
    labels = {k: v["label"] for k, v in results["methods"].items()}
    ex = results.get("extra", {})
    lr = ex.get("learning_rates", {})
    if lr:
        raw = [Series(k, c["reward"]["episode"], c["reward"]["mean"], c["reward"]["std"]) for k, c in lr.items()]
        fit = [Series(k, list(range(len(c["reward"]["poly4"]))), c["reward"]["poly4"]) for k, c in lr.items()]
        figure(out / "fig4_learning_rates.png",
               [Panel("Fig. 4: episode reward, moving average", "episode", "reward", raw, markers=False),
                Panel("4th-order polynomial fit (the paper's)", "episode", "reward", fit, markers=False)],
               title="TD3, actor lr / critic lr", panel_w=560, panel_h=400)
        files.append("fig4_learning_rates.png")
    conv = ex.get("convergence", {})
    if conv:
        rew = [Series(labels[k], c["reward"]["episode"], c["reward"]["mean"], c["reward"]["std"]) for k, c in conv.items()]
        fit = [Series(labels[k], list(range(len(c["reward"]["poly4"]))), c["reward"]["poly4"]) for k, c in conv.items()]
        hit = [Series(labels[k], c["hit_rate"]["episode"], c["hit_rate"]["mean"], c["hit_rate"]["std"])
               for k, c in conv.items()]
        figure(out / "fig5_convergence.png",
               [Panel("Fig. 5: episode reward, moving average", "episode", "reward", rew, markers=False),
                Panel("4th-order polynomial fit", "episode", "reward", fit, markers=False),
                Panel("training hit rate, moving average", "episode", "hit rate", hit, markers=False)],
               panel_w=480, panel_h=380)
        files.append("fig5_convergence.png")
    users = results["experiments"].get("users")
    if users:
        xs = users["x_values"]
        for metric, ylabel, name, _ in METRICS:
            fname = "fig6_hit_rate.png" if metric == "hit_rate" else "fig7_objective.png"
            ser = []
            for k, meta in results["methods"].items():
                if not meta["in_paper"] and k != "opt":
                    continue
                ys = [users["points"][x]["methods"][k][metric]["mean"] for x in xs]
                sd = [users["points"][x]["methods"][k][metric]["std"] for x in xs]
                ser.append(Series(meta["label"], [float(x) for x in xs], ys, sd))
            fig = "Fig. 6" if metric == "hit_rate" else "Fig. 7"
            figure(out / fname, [Panel(f"{fig}: {name} vs users (mean +- std over seeds)", "users U", ylabel, ser)],
                   panel_w=900, panel_h=460)
            files.append(fname)
    return files


# -- report -------------------------------------------------------------------------------------------
def _fmt(s: dict, pct: bool = False) -> str:
    if pct:
        return f"{100 * s['mean']:.2f}% ± {100 * s['std']:.2f}"
    return f"{s['mean']:.4g} ± {s['std']:.2g}"


def write_report(results: dict, out: Path) -> None:
    rows = headline(results)
    results["headline"] = rows
    figs = _figures(results, out)
    st = results["settings"]
    labels = {k: v["label"] for k, v in results["methods"].items()}
    L = [f"# EdgeAIGC (paper 004) reproduced: {results['title']}\n"]
    L.append(f"Generated by `{shlex.join(results['command'])}` ({results['mode']} run). Every number below was computed "
             "by that command from the trained runs listed at the end; the paper's numbers are quoted from its text "
             "(figures only, no tables of results). Spec and deviations: `docs/papers/edgeaigc.md`.\n")
    if st["reduced"]:
        L.append("**Reduced run** (the full run is `aigc-offload reproduce edgeaigc`: 800 episodes per run, 3 seeds, "
                 "U = 10..50, six learning-rate settings, 30 evaluation episodes): " + "; ".join(st["reduced"]) + ".\n")
    L.append(f"Settings: {st['seeds']} seeds per trained method and point, {st['episodes']} training episodes per run "
             f"(T = 10 slots each), evaluation {st['eval_episodes']} episodes per seed on common workloads (seed "
             f"1000+k), algorithm overrides {st['algo_overrides'] or 'none'} over the defaults of "
             "`policies/train/td3.py` (the paper's actor lr 1e-5 and critic lr 1e-3, our discount 0.9, tau 0.005, "
             "batch 256, MLP 256-256). PCRAS and GCRAS: 20 particles / individuals x 30 iterations per slot on the "
             "slot's state (spec 4.2-4.3).\n")
    L += invocation_lines(results)

    L.append("## Headline: ours vs the paper\n")
    L.append("| what | ours | paper | paper's reference |\n|---|---|---|---|")
    for r in rows:
        L.append(f"| {r['what']} | {100 * r['ours']:+.2f}% | {100 * r['paper']:+.2f}% | {r['reference']} |")
    for r in rows:
        if "per_u" in r:
            L.append(f"\n- {r['key']} per U: " + ", ".join(f"U = {x}: {100 * g:+.2f}%" for x, g in r["per_u"].items()))
    L.append("\nGains are relative: (TD3 - baseline) / baseline for the hit rate and the (negative) reward. Spread "
             "is the standard deviation over seeds.\n")
    ex = results.get("extra", {})
    conv = ex.get("convergence", {})
    if "td3" in conv:
        c = conv["td3"]
        secs = c["converged_wall_s"]
        ok = all(s <= TARGET_CONVERGE_S for s in secs)
        L.append(f"Time to TD3's converged level at U = 10 (smoothed training reward within {100 * CONVERGE_TOL:.0f}% of "
                 f"its final level), per seed: episodes {c['converged_episode']}, training wall time "
                 + ", ".join(f"{s:.0f} s" for s in secs) + f" (target: at most {TARGET_CONVERGE_S} s on this machine: "
                 f"{'met' if ok else 'NOT met'}); whole runs: " + ", ".join(f"{s:.0f} s" for s in c["train_wall_s"])
                 + ".\n")

    bad = orderings(results)
    L.append("## Does the paper's ordering hold?\n")
    L.append("TD3 best among the paper's four methods at every U, in the order TD3 > DDPG > PCRAS > GCRAS, with the "
             "paper's trends." if not bad else "Where it does not:\n\n" + "\n".join(f"- {b}" for b in bad))
    L.append("")

    lr = ex.get("learning_rates", {})
    lre = results["experiments"].get("learning_rates")
    if lr or lre:
        L.append("## Fig. 4: learning rates (TD3, U = 10)\n")
        if "fig4_learning_rates.png" in figs:
            L.append("![Fig. 4](fig4_learning_rates.png)\n")
        L.append("Paper: (1e-5, 1e-3) converges best; (1e-5, 8e-4) and (1e-5, 6e-4) learn more slowly; (2e-5, 1e-3) "
                 "oscillates late. 1e-4/1e-3 and 1e-3/1e-3 are ours (1e-3/1e-3: the main comparison's runs).\n")
        L.append("| actor lr / critic lr | final training reward (last 10%) | final training hit rate | "
                 "evaluation reward | evaluation hit rate |\n|---|---|---|---|---|")
        for label in (lre["x_values"] if lre else list(lr)):
            c = lr.get(label)
            fr = f"{np.mean(c['reward']['final']):.4g} ± {np.std(c['reward']['final']):.2g}" if c else "n/a"
            fh = f"{100 * np.mean(c['hit_rate']['final']):.2f}%" if c else "n/a"
            ev = lre["points"].get(label, {}).get("methods", {}).get("td3") if lre else None
            L.append(f"| {label}{' (paper)' if label in PAPER_LR else ' (ours)'} | {fr} | {fh} | "
                     f"{_fmt(ev['reward']) if ev else 'n/a'} | {_fmt(ev['hit_rate'], True) if ev else 'n/a'} |")
        L.append("")

    if conv:
        L.append(f"## Fig. 5: convergence, TD3 vs DDPG (U = 10, point {CONVERGENCE.name})\n")
        if "fig5_convergence.png" in figs:
            L.append("![Fig. 5](fig5_convergence.png)\n")
            L.append("Training episodes with exploration noise (N(0, 0.1) on the actions), so below the deterministic "
                     "evaluation.\n")
        L.append("| method | final training reward (last 10%, smoothed) | final training hit rate | converged at episode "
                 "|\n|---|---|---|---|")
        for k, c in conv.items():
            L.append(f"| {labels[k]} | {np.mean(c['reward']['final']):.4g} ± {np.std(c['reward']['final']):.2g} | "
                     f"{100 * np.mean(c['hit_rate']['final']):.2f}% | {c['converged_episode']} |")
        L.append("")

    users = results["experiments"].get("users")
    if users:
        L.append("## Figs. 6-7: hit rate and objective vs the number of users\n")
        for f in ("fig6_hit_rate.png", "fig7_objective.png"):
            if f in figs:
                L.append(f"![{f}]({f})\n")
        for metric, name, pct in (("hit_rate", "Hit rate (Fig. 6)", True), ("objective", "Objective (1/T) sum_t G(t) "
                                  "(Fig. 7)", False), ("reward", "Episode reward sum_t r(t)", False),
                                  ("latency_s", "Mean response time T_res (s)", False),
                                  ("cost", "Mean cost per request (incl. storage share)", False)):
            L.append(f"{name}, mean ± std over seeds:\n")
            L.append("| method | " + " | ".join(f"U = {x}" for x in users["x_values"]) + " |")
            L.append("|---|" + "---|" * len(users["x_values"]))
            for k in results["methods"]:
                cells = [_fmt(users["points"][x]["methods"][k][metric], pct) if k in users["points"][x]["methods"]
                         else "n/a" for x in users["x_values"]]
                L.append(f"| {labels[k]} | " + " | ".join(cells) + " |")
            L.append("")

    L += training_and_runs_sections(results, labels, decimals=3, evaluate_hint='--set num_users=U')
    (out / "report.md").write_text("\n".join(L) + "\n")


SPEC = PaperSpec(name="edgeaigc", title="EdgeAIGC: Model caching and resource allocation for Edge Artificial "
                 "Intelligence Generated Content (TD3)", source="/work/shared/seeds/004_4f755dd8fa30f41a.txt",
                 scenario="edgeaigc", methods=METHODS, experiments=EXPERIMENTS, full=full, quick=quick,
                 convergence_point=CONVERGENCE.name, write_report=write_report, extra=extra)
