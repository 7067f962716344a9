"""The factory's edge-tier study inside ``aigc-offload reproduce factory`` (issue #5 item 7: scheduling among edge
servers with LAD-TS, model caching with download-link shares with TD3; spec ``docs/papers/factory.md`` section 8).

The gateway keeps deciding per task; these agents act behind it (``FactorySimulator.edge_scheduler`` and
``cache_policy``). Per seed k this trains ``factory_ladts`` and ``factory_td3`` (``runs/<...>/edge/<algo>_s<k>``,
reused when finished, resumed otherwise) and evaluates every edge-tier method of section 8 (the default rules,
random and popularity baselines, the agents, both agents together) under each gateway the agents trained with,
on the workloads of seed ``EVAL_SEED_BASE + k`` (the same workloads as the learners' comparison). The numbers go to
``results["extra"]["edge_tier"]``; :func:`report_lines` writes the report's section.
"""

from __future__ import annotations

import csv
from pathlib import Path

from policies.reproduce.core import (EVAL_SEED_BASE, PaperSpec, Settings, _msg, _stats, _train_job, check_reused_run,
                                    run_finished)

EDGE_DIR = "edge"  # under the reproduce runs directory
# the agents' factory defaults (LadtsConfig.episodes, Td3Config.episodes); a reduced run trains at most its
# --episodes
EPISODES = {"factory_ladts": 100, "factory_td3": 300}
LABELS = {"factory_ladts": "LAD-TS scheduling", "factory_td3": "TD3 caching"}
DEFAULT = "default (earliest finish + LRU)"
# agent -> (its edge-tier method, the random baseline of the same decision)
AGENT_ROWS = {"factory_ladts": ("LAD-TS scheduling", "random scheduling"),
              "factory_td3": ("TD3 caching", "random caching")}
KEYS = ("latency_s", "completion_rate", "reward", "energy_j", "hit_rate", "cloud_share", "model_at_edge",
        "forwarded", "downloads")


def episodes_for(algo: str, settings: Settings) -> int:
    return min(EPISODES[algo], settings.episodes)


def extra(spec: PaperSpec, settings: Settings, runs: Path, command: list[str]) -> dict:
    """Train (or reuse) the two edge-tier agents per seed, evaluate the section-8 methods under every gateway."""
    from policies.train.factory_edge_agents import DEFAULT_GATEWAYS, evaluate_edge, gateway_name

    if settings.experiments is not None and "plant" not in settings.experiments:
        return {}
    # the shipped gateway policy holds the shipped preset's hash: under preset overrides (a smoke run on a
    # smaller plant) the agents train and are evaluated under greedy alone
    gateways = [g for g in DEFAULT_GATEWAYS.split(",") if g.strip() and (g == "greedy" or not settings.preset_overrides)]
    jobs = []
    train_overrides = dict(settings.preset_overrides)
    if len(gateways) != len(DEFAULT_GATEWAYS.split(",")):
        train_overrides["gateways"] = ",".join(gateways)
    for algo in EPISODES:
        for seed in range(settings.seeds):
            out = runs / EDGE_DIR / f"{algo}_s{seed}"
            if run_finished(out, episodes_for(algo, settings)):
                # e.g. trained under a gateway policy that has been regenerated since: refused, not mixed in
                check_reused_run(out, algo, spec.scenario, train_overrides, episodes_for(algo, settings))
            else:
                jobs.append({"algo": algo, "scenario": spec.scenario, "seed": seed, "out": str(out),
                             "episodes": episodes_for(algo, settings), "command": command,
                             "overrides": train_overrides})
    _msg(f"edge tier: {2 * settings.seeds} agent runs, {len(jobs)} to train or resume")
    sessions = {}
    for i, job in enumerate(jobs):
        res = _train_job(job)
        sessions[res["out"]] = res["session_s"]
        _msg(f"edge tier: trained {i + 1}/{len(jobs)} {job['out']} in {res['session_s']:.0f} s")
    per: dict[tuple[str, str], list[dict]] = {}
    run_dirs = {algo: [str(runs / EDGE_DIR / f"{algo}_s{s}") for s in range(settings.seeds)] for algo in EPISODES}
    for seed in range(settings.seeds):
        res = evaluate_edge(spec.scenario, gateways, run_dirs["factory_ladts"][seed], run_dirs["factory_td3"][seed],
                            settings.eval_episodes, EVAL_SEED_BASE + seed, overrides=settings.preset_overrides)
        for key, r in res.items():
            per.setdefault(key, []).append(r)
    table = {}
    for (gw, method), rows in per.items():
        table.setdefault(gw, {})[method] = {k: _stats([r[k] for r in rows]) for k in KEYS}
    runs_info = {}
    for algo, dirs in run_dirs.items():
        for seed, d in enumerate(dirs):
            with (Path(d) / "metrics.csv").open(newline="") as fh:
                rows = list(csv.DictReader(fh))  # the edge agents log the gateway's name: not all columns are numbers
            runs_info[d] = {"algo": algo, "seed": seed, "episodes": len(rows),
                            "train_wall_s": float(sum(float(r["episode_s"]) for r in rows)),
                            "trained_this_invocation": d in sessions}
    return {"edge_tier": {"gateways": [gateway_name(g) for g in gateways], "gateway_specs": gateways,
                          "episodes": {a: episodes_for(a, settings) for a in EPISODES}, "methods": table,
                          "runs": runs_info}}


def verdicts(edge: dict) -> list[dict]:
    """Per gateway and agent: the agent against its random baseline and against the default rule (mean
    evaluation reward over seeds, the objective it trains on)."""
    out = []
    for gw, methods in edge["methods"].items():
        base = methods[DEFAULT]["reward"]["mean"]
        for algo, (row, rnd) in AGENT_ROWS.items():
            if row not in methods:
                continue
            r = methods[row]["reward"]["mean"]
            out.append({"gateway": gw, "agent": algo, "reward": r, "random": methods[rnd]["reward"]["mean"],
                        "default": base, "beats_random": bool(r > methods[rnd]["reward"]["mean"]),
                        "beats_default": bool(r > base)})
    return out


def _pct(s: dict) -> str:
    return f"{100 * s['mean']:.2f}% ± {100 * s['std']:.2f}"


def _num(s: dict) -> str:
    return f"{s['mean']:.4g} ± {s['std']:.2g}"


def report_lines(results: dict) -> list[str]:
    """The report's edge-tier section (empty when the study did not run)."""
    edge = (results.get("extra") or {}).get("edge_tier")
    if not edge:
        return []
    seeds = results["settings"]["seeds"]
    L = ["## The edge tier: LAD-TS scheduling and TD3 caching behind the gateway\n",
         "Spec `docs/papers/factory.md` section 8; agents `policies/train/factory_edge_agents.py`. Each agent trains "
         f"with {seeds} seeds (LAD-TS {edge['episodes']['factory_ladts']} episodes, TD3 "
         f"{edge['episodes']['factory_td3']}), its gateways alternating per episode between "
         + " and ".join(f"`{g}`" for g in edge["gateway_specs"]) + "; each seed is evaluated on the same workloads as "
         "the learners above (seed 1000 + k), deterministic actions. Every row under one gateway sees the same "
         "gateway policy; only the edge tier differs. ± = standard deviation over seeds.\n"]
    for gw, methods in edge["methods"].items():
        L.append(f"Gateway `{gw}`:\n")
        L.append("| edge tier | latency (s) | completion | reward per task | energy (J) | hit rate | cloud share | "
                 "model at the edge | forwarded | downloads per episode |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for name, m in methods.items():
            L.append(f"| {name} | {_num(m['latency_s'])} | {_pct(m['completion_rate'])} | {_num(m['reward'])} | "
                     f"{_num(m['energy_j'])} | {_pct(m['hit_rate'])} | {_pct(m['cloud_share'])} | "
                     f"{_pct(m['model_at_edge'])} | {_pct(m['forwarded'])} | {m['downloads']['mean']:.1f} |")
        L.append("")
    v = verdicts(edge)
    if v:
        L.append("Against the baselines (mean evaluation reward per task over seeds):\n")
        for x in v:
            L.append(f"- `{x['gateway']}`, {LABELS[x['agent']]}: {x['reward']:.4f}; random "
                     f"{x['random']:.4f} ({'beaten' if x['beats_random'] else 'not beaten'}); the default rule "
                     f"{x['default']:.4f} ({'beaten' if x['beats_default'] else 'not beaten'}).")
        kept = [LABELS[a] for a in AGENT_ROWS if any(x["agent"] == a and not x["beats_default"] for x in v)]
        if kept:
            L.append(f"\nWhere an agent does not beat the default rule under every gateway ({', '.join(kept)}), the "
                     "deployed edge servers keep the default rule (`ros2_ws/src/aigc_offload/config/factory.yaml`).")
        L.append("")
    L.append("| agent | seed | run | episodes | train wall (s) | trained now |\n|---|---|---|---|---|---|")
    for d, r in edge["runs"].items():
        L.append(f"| {LABELS[r['algo']]} | {r['seed']} | `{d}` | {r['episodes']} | "
                 f"{r['train_wall_s']:.0f} | {'yes' if r['trained_this_invocation'] else 'reused'} |")
    L.append("")
    return L

