"""`aigc-offload reproduce mato --quick` with tiny settings: the files, the results.json keys, and that
the numbers come from the runs this invocation trained (re-evaluating a run gives its per-seed number)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from policies.reproduce import get_paper, run  # noqa: E402
from policies.reproduce.core import EVAL_SEED_BASE, read_metrics  # noqa: E402
from policies.reproduce.png import Canvas, read_png_size, text_bitmap  # noqa: E402
from policies.scenarios.base import METRIC_KEYS  # noqa: E402

TINY = dict(episodes=3, eval_episodes=1, jobs=1, preset_overrides={"slots_per_episode": 4},
            algo_overrides={"batch_size": 16, "learning_starts": 8, "hidden": 16, "checkpoint_every": 1})


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    res = run("mato", quick=True, seeds=3, out=root / "report", runs=root / "runs", **TINY)
    return root, res


def test_quick_writes_report_results_and_figures(quick):
    root, res = quick
    rep = root / "report"
    for name in ("report.md", "results.json", "fig2_convergence.png", "fig3_model_types.png", "fig4_devices.png"):
        assert (rep / name).is_file(), name
    for png in rep.glob("*.png"):
        w, h = read_png_size(png)
        assert w >= 400 and h >= 300
    text = (rep / "report.md").read_text()
    assert "6.98%" in text and "Fig. 3" in text and "Wall time" in text and "Reduced run" in text


def test_results_json_has_every_method_metric_and_seed(quick):
    root, _ = quick
    data = json.loads((root / "report" / "results.json").read_text())
    spec = get_paper("mato")
    assert data["paper"] == "mato" and data["mode"] == "quick" and data["settings"]["seeds"] == 3
    assert set(data["experiments"]) == {"model_types", "devices"}
    assert data["experiments"]["model_types"]["x_values"] == ["3", "6"]
    assert data["experiments"]["devices"]["x_values"] == ["5", "10"]
    for exp in data["experiments"].values():
        for pt in exp["points"].values():
            assert set(pt["methods"]) == {m.key for m in spec.methods}
            for metrics in pt["methods"].values():
                for key in ("latency_s", "energy_j", "completion_rate", "reward"):
                    assert key in METRIC_KEYS
                    s = metrics[key]
                    assert set(s) >= {"mean", "std", "per_seed"} and len(s["per_seed"]) == 3
    conv = data["convergence"]["methods"]
    assert set(conv) == {"maddpg", "maddpg_nomodel", "saddpg"}
    keys = {r["key"] for r in data["headline"]}
    assert {"latency_reduction", "energy_reduction", "completion_gain", "convergence_reward"} <= keys
    assert len(data["runs"]) == 3 * 3 * 3  # 3 trained methods x 3 points x 3 seeds
    assert all(r["trained_this_invocation"] and r["episodes"] == 3 for r in data["runs"].values())


def test_numbers_come_from_the_runs_just_made(quick):
    from policies.evaluate import evaluate
    from policies.scenarios import make_simulator

    root, res = quick
    pt = res["experiments"]["model_types"]["points"]["6"]
    run_dir = pt["runs"]["maddpg"][1]  # seed 1
    assert run_dir.startswith(str(root / "runs"))
    sim = make_simulator("mato", {"slots_per_episode": 4, "num_model_types": 6, "num_devices": 10})
    again = evaluate(sim, [run_dir], 1, EVAL_SEED_BASE + 1, progress=False).results[run_dir]
    assert again["latency_s"] == pytest.approx(pt["methods"]["maddpg"]["latency_s"]["per_seed"][1])
    # a second invocation reuses the finished runs instead of training again
    res2 = run("mato", quick=True, seeds=3, out=root / "report2", runs=root / "runs", **TINY)
    assert res2["wall_s"]["trained_now"] == 0 and res2["wall_s"]["reused"] == 27
    assert res2["experiments"]["model_types"]["points"]["6"]["methods"]["maddpg"]["latency_s"] == \
        pt["methods"]["maddpg"]["latency_s"]


def test_points_evaluated_in_parallel_give_the_same_numbers(quick):
    root, res = quick
    for cache in (root / "runs").glob("*/*/evaluation.*.json"):  # evaluate again, two points at a time
        cache.unlink()
    par = run("mato", quick=True, seeds=3, out=root / "report3", runs=root / "runs", **{**TINY, "jobs": 2})
    assert par["wall_s"]["trained_now"] == 0
    # the reused runs were evaluated again (in the training pool, before the points) and cached again
    assert len(list((root / "runs").glob("*/*/evaluation.*.json"))) == 27
    assert list(par["experiments"]) == list(res["experiments"])
    for key, e in res["experiments"].items():
        assert list(par["experiments"][key]["points"]) == list(e["points"])  # the points keep their order
        for x, pt in e["points"].items():
            assert par["experiments"][key]["points"][x]["methods"] == pt["methods"], (key, x)


def test_a_run_is_evaluated_and_cached_once_trained_and_the_cache_outlives_its_checkpoint(quick, tmp_path):
    import shutil

    from policies.errors import UserError
    from policies.reproduce.core import eval_cache_path

    root, res = quick
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    pt = res["experiments"]["model_types"]["points"]["6"]
    run_dir = Path(pt["runs"]["maddpg"][1].replace(str(root / "runs"), str(runs)))
    cache = json.loads(eval_cache_path(run_dir, pt["point"]).read_text())  # written by the training job
    assert cache["key"]["seed"] == 1 and cache["key"]["eval_episodes"] == 1 and cache["key"]["run"]["episodes"] == 3
    assert cache["result"]["metrics"]["latency_s"] == pt["methods"]["maddpg"]["latency_s"]["per_seed"][1]
    # a runs root kept without its checkpoints (metrics, configs, caches): the runs are finished, the numbers kept
    for ckpt in runs.glob("*/*/checkpoint.pt"):
        ckpt.unlink()
    # an invocation that was stopped before its end (its progress record is left behind) is logged as such
    (runs / "invocation.current.json").write_text(json.dumps(
        {"command": ["aigc-offload", "reproduce", "mato"], "mode": "full", "started": "2026-01-01 00:00:00",
         "wall_s": 60.0, "trained_now": 2, "training_s": 59.0, "updated": "2026-01-01 00:01:00"}))
    # ... but the record of an invocation running now (pid 1 of this boot stands in for it) is left alone
    from policies.reproduce.core import _boot_id

    alive = runs / "invocation.running.1.json"
    alive.write_text(json.dumps({"command": ["other"], "mode": "full", "started": "2026-01-01 00:00:00", "wall_s": 1.0,
                                 "trained_now": 0, "training_s": 0.0, "updated": "2026-01-01 00:00:01", "pid": 1,
                                 "boot": _boot_id()}))
    again = run("mato", quick=True, seeds=3, out=tmp_path / "report", runs=runs, **TINY)
    assert again["wall_s"]["trained_now"] == 0 and again["wall_s"]["reused"] == 27
    assert alive.exists() and not [i for i in again["invocations"] if i["command"] == ["other"]]
    assert sorted(x.name for x in runs.glob("invocation.running.*.json")) == [alive.name]  # its own is removed
    for key, e in res["experiments"].items():
        for x, p in e["points"].items():
            assert again["experiments"][key]["points"][x]["methods"] == p["methods"], (key, x)
    stopped = again["invocations"][-2]
    assert stopped["trained_now"] == 2 and stopped["note"] == \
        "stopped before its end; its last record was at 2026-01-01 00:01:00 UTC"
    assert not (runs / "invocation.current.json").exists()
    assert "stopped before its end" in (tmp_path / "report" / "report.md").read_text()
    # other evaluation settings need the checkpoints: a sentence naming the run and the point, not a retrain
    with pytest.raises(UserError, match="has no checkpoint.pt"):
        run("mato", quick=True, seeds=3, out=tmp_path / "report2", runs=runs, **{**TINY, "eval_episodes": 2})
    # a run whose evaluation at its own point is gone with its checkpoint is not finished: it trains again
    eval_cache_path(run_dir, pt["point"]).unlink()
    st = run("mato", quick=True, seeds=3, runs=runs, status_only=True, **TINY)
    assert [r["dir"] for r in st["runs"] if r["state"] != "finished"] == [str(run_dir)]


def test_status_lists_finished_partial_and_missing_runs_and_the_time_left(quick, capsys):
    from policies.reproduce.core import print_status

    root, _ = quick
    st = run("mato", quick=True, seeds=3, runs=root / "runs", status_only=True, **TINY)
    assert (st["finished"], st["partial"], st["missing"]) == (27, 0, 0) and st["training_left_s"] == 0
    assert st["run_evaluations_cached"] == st["run_evaluations"] == 27  # 3 points x 3 methods x 3 seeds
    # asked for 5 episodes and a fourth seed: the 3-episode runs are partial, seed 3 is not started
    more = run("mato", quick=True, seeds=4, runs=root / "runs", status_only=True, **{**TINY, "episodes": 5})
    assert (more["finished"], more["partial"], more["missing"]) == (0, 27, 9)
    part = [r for r in more["runs"] if r["state"] == "partial"]
    assert all(r["episodes_done"] == 3 and r["episodes"] == 5 for r in part)
    per_run = [sum(x["episode_s"] for x in read_metrics(Path(r["dir"]))) / 3 for r in part]  # s per episode
    assert more["training_left_s"] > 2 * min(per_run) * 27 / TINY["jobs"]  # at least its partial runs' 2 episodes
    assert more["runs_without_estimate"] == 0  # seed 3 is priced at its method's runs of the same point
    print_status(more)
    out = capsys.readouterr().out
    assert "0 finished, 27 partial, 9 not started" in out and "maddpg_s0 3/5" in out
    assert "trained runs evaluated and cached at their points: 0 of 36" in out  # other runs: another key
    assert not list((root / "runs").glob("*/*_s3"))  # status trains nothing


def test_episode_seconds_model_scales_a_method_to_a_point_measured_with_another():
    from policies.reproduce.core import episode_seconds_model

    est = episode_seconds_model({("small", "x"): 1.0, ("big", "x"): 3.0, ("small", "y"): 2.0, ("mid", "y"): 4.0})
    assert est("small", "x") == 1.0  # measured cells are their own estimate
    assert est("big", "y") == pytest.approx(6.0)  # y costs 2x x; "big" is 3x "small"
    assert est("mid", "x") == pytest.approx(2.0)
    assert est("new", "x") == pytest.approx(math.exp(np.mean(np.log([1.0, 3.0, 2.0]))))  # mean point size
    assert est("small", "z") is None  # a method with no run


def test_report_only_remakes_the_report_from_results_json(quick):
    root, _ = quick
    rep = root / "report"
    (rep / "report.md").unlink()
    res = run("mato", quick=True, out=rep, runs=root / "runs", report_only=True)
    assert (rep / "report.md").is_file() and res["invocations"][0]["trained_now"] == 27
    assert "Invocations on this runs directory" in (rep / "report.md").read_text()


def test_png_helper_draws():
    c = Canvas(40, 20)
    c.line(0, 10, 39, 10, (255, 0, 0), 2)
    c.text(2, 2, "A1%", scale=1)
    assert (c.img[10, 5] == [255, 0, 0]).all()
    assert text_bitmap("0", 1).shape == (7, 6) and text_bitmap("0", 1).any()


def test_cli_reproduce_rejects_unknown_paper():
    p = subprocess.run([sys.executable, "-m", "policies.cli", "reproduce", "nope"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "unknown paper 'nope'" in p.stderr and "Traceback" not in p.stderr


# -- the MADDPG critic inputs the study settled on (policies/train/maddpg.py) ----------------------------
def test_load_critic_input_is_own_obs_own_action_and_the_others_loads():
    import torch

    from policies.train.maddpg import critic_input

    torch.manual_seed(0)
    B, M, o, N = 2, 3, 4, 3
    obs = torch.rand(B, M, o)
    xi = torch.nn.functional.one_hot(torch.tensor([[0, 2, 2], [1, 1, 0]]), N).float()
    eta = torch.tensor([[[0.5], [0.2], [0.4]], [[1.0], [0.0], [0.3]]])
    act = torch.cat([xi, eta, torch.ones(B, M, 1)], -1)
    x = critic_input(obs, act, True, own_obs=True, loads=True)  # (M, B, o + a + 2N)
    assert x.shape == (M, B, o + N + 2 + 2 * N)
    j, b = 1, 0  # ED 1 of sample 0 sends to ES 2; the others: ED 0 -> ES 0 (0.5), ED 2 -> ES 2 (0.4)
    assert torch.equal(x[j, b, :o], obs[b, j])
    assert torch.equal(x[j, b, o:o + N + 2], act[b, j])
    assert x[j, b, o + N + 2:o + 2 * N + 2].tolist() == [1.0, 0.0, 1.0]  # others' count per ES
    assert torch.allclose(x[j, b, o + 2 * N + 2:], torch.tensor([0.5, 0.0, 0.4]))  # others' eta per ES


def test_decomposed_team_q_equals_swapping_each_agent():
    import torch

    from policies.train import common
    from policies.train.maddpg import critic_input, decomposed_team_q

    torch.manual_seed(0)
    M, B, o, a = 4, 5, 7, 5
    critic = common.AgentMLP(M, M * (o + a) + 3, 1, (8, 8))
    obs, act, cur, st = torch.rand(B, M, o), torch.rand(B, M, a), torch.rand(M, B, a), torch.rand(B, 3)
    q = decomposed_team_q(critic, critic_input(obs, act, True, st), cur, act)
    for m in range(M):
        joint = act.clone()
        joint[:, m] = cur[m]
        ref = critic(critic_input(obs, joint, True, st))[:, :, 0].sum(0)
        assert torch.allclose(q[m], ref, atol=1e-5)


# -- the factory (issue #5 items 7 and 8): the learners on the plant, the target line, what ships ----------
FACTORY_TINY = dict(episodes=2, eval_episodes=1, jobs=1, preset_overrides={"slots_per_episode": 20})


@pytest.fixture(scope="module")
def factory_quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro_factory")
    res = run("factory", quick=True, seeds=2, out=root / "report", runs=root / "runs", **FACTORY_TINY)
    return root, res


def test_factory_quick_report_states_the_target_against_opt(factory_quick):
    root, res = factory_quick
    rep = root / "report"
    for name in ("report.md", "results.json", "fig_convergence.png", "fig_methods.png"):
        assert (rep / name).is_file(), name
    data = json.loads((rep / "results.json").read_text())
    spec = get_paper("factory")
    assert data["paper"] == "factory" and data["mode"] == "quick"
    pt = data["experiments"]["plant"]["points"]["factory"]
    assert set(pt["methods"]) == {m.key for m in spec.methods}
    assert {"greedy", "random", "local", "opt"} <= set(pt["methods"])
    assert set(data["convergence"]["methods"]) == {"factory_distill", "factory_amarl", "factory_maddpg", "factory_toppo"}
    assert len(data["runs"]) == 4 * 2 and all(r["trained_this_invocation"] for r in data["runs"].values())
    sel = data["selection"]
    assert sel["default"] == sel["ranking"][0] and set(sel["best_seed"]) == set(sel["ranking"])
    # the ranking follows the mean evaluation reward; the target row is the default's gap to opt, as computed here
    rewards = [pt["methods"][k]["reward"]["mean"] for k in sel["ranking"]]
    assert rewards == sorted(rewards, reverse=True)
    d, opt = pt["methods"][sel["default"]], pt["methods"]["opt"]
    gap = (d["latency_s"]["mean"] - opt["latency_s"]["mean"]) / opt["latency_s"]["mean"]
    rows = {r["key"]: r for r in data["headline"]}
    assert rows["latency_gap"]["ours"] == pytest.approx(gap)
    assert rows["completion_gap"]["ours"] == pytest.approx(d["completion_rate"]["mean"] - opt["completion_rate"]["mean"])
    assert rows["latency_gap"]["met"] == (gap <= 0.05)
    text = (rep / "report.md").read_text()
    assert "## The target: the default offloading agent against opt" in text and "Reduced run" in text
    # the edge tier: both agents trained per seed and compared with the default rules under the gateway
    edge = data["extra"]["edge_tier"]
    assert edge["gateways"] == ["greedy"]  # preset overrides: the shipped gateway file does not fit this plant
    methods = edge["methods"]["greedy"]
    assert {"default (earliest finish + LRU)", "random scheduling", "LAD-TS scheduling", "random caching",
            "TD3 caching", "LAD-TS + TD3"} <= set(methods)
    assert all(m["reward"]["n"] == 2 for m in methods.values())
    assert sorted(r["algo"] for r in edge["runs"].values()) == ["factory_ladts"] * 2 + ["factory_td3"] * 2
    assert "## The edge tier: LAD-TS scheduling and TD3 caching behind the gateway" in text
    assert f"{methods['LAD-TS scheduling']['reward']['mean']:.4g}" in text
    assert ("**met**" in text) == (data["targets"][sel["default"]]["met"])


def test_factory_numbers_come_from_the_runs_and_the_shipped_files_act_as_them(factory_quick, tmp_path):
    from policies.evaluate import evaluate
    from policies.reproduce.factory import regenerate_defaults
    from policies.runtime import OnnxPolicy, read_contract
    from policies.scenarios import make_simulator

    root, res = factory_quick
    pt = res["experiments"]["plant"]["points"]["factory"]
    sim = make_simulator("factory", {"slots_per_episode": 20})
    run_dir = pt["runs"]["factory_amarl"][1]
    again = evaluate(sim, [run_dir], 1, EVAL_SEED_BASE + 1, progress=False).results[run_dir]
    assert again["reward"] == pytest.approx(pt["methods"]["factory_amarl"]["reward"]["per_seed"][1])
    with pytest.raises(Exception, match="--quick smoke run"):
        regenerate_defaults(root / "report", tmp_path / "refused", parity=10)
    out = tmp_path / "trained"
    summ = regenerate_defaults(root / "report", out, tmp_path / "runs", parity=300, eval_episodes=1,
                               allow_quick=True, progress=lambda s: None)
    sel = res["selection"]
    assert summ["default"] == f"{sel['default']}_s{sel['best_seed'][sel['default']]['seed']}"
    assert len(summ["shipped"]) == 4 and (out / "README.md").is_file() and (out / "shipped.json").is_file()
    for s in summ["shipped"]:
        f = Path(s["file"])
        assert f.is_file() and (out / s["name"] / "README.md").is_file() and s["parity"]["passed"]
        c = read_contract(f)
        assert c["provenance"]["algorithm"] == s["algo"] and c["provenance"]["seed"] == s["seed"]
        OnnxPolicy(f, sim)  # the contract holds against the runs' preset
        # the held-out evaluation of the file is the run's own (same decisions)
        ev = evaluate(sim, [s["run"], str(f)], 1, 2000, progress=False).results
        assert ev[str(f)]["reward"] == pytest.approx(ev[s["run"]]["reward"], rel=1e-6)
        assert summ["evaluation"]["results"][str(f)]["reward"] == pytest.approx(ev[str(f)]["reward"])


# -- Point.policies_from: a point that trains nothing and evaluates another point's runs ----------------------
TRANSFER_TINY = dict(episodes=3, eval_episodes=1, jobs=1, preset_overrides={"slots_per_episode": 4},
                     algo_overrides={"batch_size": 16, "learning_starts": 8, "hidden": 16, "checkpoint_every": 1})


def _transfer_spec():
    """A two-experiment MATO spec: the convergence point L3_M5, and an edge-CPU sweep whose 3.5 GHz point
    evaluates the runs of L3_M4 (trained at 7 GHz); one trained method and one heuristic."""
    from dataclasses import replace

    from policies.reproduce.core import Experiment, Point

    base = get_paper("mato")
    src = Point("L3_M4", {"num_model_types": 3, "num_devices": 4})
    moved = Point("L3_M4_edge3.5_from_L3_M4", {"num_model_types": 3, "num_devices": 4, "edge_cpu_ghz": 3.5},
                  policies_from="L3_M4")
    conv = Point("L3_M5", {"num_model_types": 3, "num_devices": 5})
    exps = (Experiment("main", "main", "(test)", "M", (5,), (conv,)),
            Experiment("edge", "edge CPU", "(test)", "edge GHz", ("7.0", "3.5"), (src, moved)))
    return replace(base, name="mato_transfer", methods=tuple(m for m in base.methods if m.key in ("saddpg", "greedy")),
                   experiments=exps, convergence_point="L3_M5", write_report=lambda results, out: None,
                   extra=None), moved


@pytest.fixture(scope="module")
def transfer(tmp_path_factory):
    from policies.reproduce.core import Settings, reproduce

    root = tmp_path_factory.mktemp("repro_transfer")
    spec, moved = _transfer_spec()
    # only the transferred point is selected: its source must be trained all the same
    s = Settings(seeds=2, experiments=("edge",), x_subset={"edge": ("3.5",)}, **TRANSFER_TINY)
    res = reproduce(spec, s, root / "report", root / "runs", ["test"], mode="quick")
    return root, spec, moved, res


def test_policies_from_point_trains_nothing_and_its_source_is_trained(transfer):
    root, spec, moved, res = transfer
    runs = root / "runs"
    assert res["experiments"]["edge"]["x_values"] == ["3.5"]
    # the source (not selected) and the convergence point are trained, 2 seeds each; the transferred point nothing
    assert res["wall_s"]["trained_now"] == 4 and res["wall_s"]["reused"] == 0
    assert {r["point"] for r in res["runs"].values()} == {"L3_M4", "L3_M5"}
    assert not (runs / moved.name).exists()
    pt = res["experiments"]["edge"]["points"]["3.5"]
    assert pt["point"] == moved.name and pt["policies_from"] == "L3_M4"
    assert pt["runs"] == {"saddpg": [str(runs / "L3_M4" / f"saddpg_s{k}") for k in range(2)]}
    data = json.loads((root / "report" / "results.json").read_text())
    assert data["experiments"]["edge"]["points"]["3.5"]["policies_from"] == "L3_M4"


def test_policies_from_point_evaluates_exactly_the_source_runs_under_its_own_preset(transfer):
    from policies.evaluate import evaluate
    from policies.scenarios import make_simulator

    root, spec, moved, res = transfer
    pt = res["experiments"]["edge"]["points"]["3.5"]
    sim = make_simulator("mato", {"slots_per_episode": 4, **moved.preset_overrides})
    for seed in range(2):
        d = str(root / "runs" / "L3_M4" / f"saddpg_s{seed}")
        again = evaluate(sim, [d, "greedy"], 1, EVAL_SEED_BASE + seed, progress=False).results
        for key in ("latency_s", "energy_j", "reward"):
            assert pt["methods"]["saddpg"][key]["per_seed"][seed] == pytest.approx(again[d][key])
            assert pt["methods"]["greedy"][key]["per_seed"][seed] == pytest.approx(again["greedy"][key])


def test_policies_from_source_and_transfer_together_reuse_and_differ_only_by_preset(transfer):
    from policies.reproduce.core import Settings, reproduce, transfer_gaps

    root, spec, moved, res = transfer
    s = Settings(seeds=2, experiments=("edge",), **TRANSFER_TINY)
    res2 = reproduce(spec, s, root / "report2", root / "runs", ["test"], mode="quick")
    assert res2["wall_s"]["trained_now"] == 0 and res2["wall_s"]["reused"] == 4
    pts = res2["experiments"]["edge"]["points"]
    assert pts["7.0"]["policies_from"] is None and pts["7.0"]["runs"] == pts["3.5"]["runs"]
    assert pts["3.5"]["methods"] == res["experiments"]["edge"]["points"]["3.5"]["methods"]
    # the same runs under a slower edge: the heuristic's numbers change with the preset
    assert pts["3.5"]["methods"]["greedy"]["latency_s"] != pts["7.0"]["methods"]["greedy"]["latency_s"]
    assert transfer_gaps(res2, "latency_s") == []  # no retrained twin of the 3.5 GHz scene here


def test_policies_from_must_name_a_point_that_trains():
    from dataclasses import replace

    from policies.reproduce.core import Experiment, Point, policy_source

    spec, moved = _transfer_spec()
    assert policy_source(spec, moved).name == "L3_M4"
    bad = Point("chain", {}, policies_from=moved.name)
    lost = Point("lost", {}, policies_from="nowhere")
    spec2 = replace(spec, experiments=spec.experiments + (Experiment("x", "x", "x", "x", (1, 2), (bad, lost)),))
    with pytest.raises(ValueError, match="itself evaluates"):
        policy_source(spec2, bad)
    with pytest.raises(ValueError, match="names no point"):
        policy_source(spec2, lost)


def test_transfer_gaps_pair_a_transferred_point_with_its_retrained_twin():
    from policies.reproduce.core import transfer_gaps, transferred_points

    def st(v):
        return {"mean": v, "std": 0.0, "n": 1, "per_seed": [v]}

    own = {"point": "Z20", "preset_overrides": {"quality_max": 20}, "policies_from": None,
           "methods": {"ladts": {"latency_s": st(2.0)}, "opt": {"latency_s": st(1.0)}}, "runs": {"ladts": ["a"]}}
    moved = {"point": "Z20_from_default", "preset_overrides": {"quality_max": 20}, "policies_from": "default",
             "methods": {"ladts": {"latency_s": st(2.5)}, "opt": {"latency_s": st(1.0)}}, "runs": {"ladts": ["b"]}}
    old = {"point": "default", "preset_overrides": {}, "methods": {}, "runs": {}}  # results.json before policies_from
    res = {"experiments": {"q": {"x_values": ["15", "20"], "points": {"15": old, "20": moved}},
                           "r": {"x_values": ["Z=20", "Z=20 d"], "points": {"Z=20": own, "Z=20 d": moved}}}}
    assert transferred_points(res["experiments"]["q"]) == [("20", "Z20_from_default", "default")]
    (g,) = transfer_gaps(res, "latency_s")
    assert g["point"] == "Z20_from_default" and g["retrained_point"] == "Z20" and set(g["methods"]) == {"ladts"}
    assert g["methods"]["ladts"]["gap"] == pytest.approx(0.5)


def test_invocation_lines_quote_arguments_with_spaces():
    """A command printed in a report can be pasted back into a shell: an argument holding a space
    (``--points "retrained=Z=20 default-trained"``) is quoted, plain ones are left as they are."""
    from policies.reproduce.core import invocation_lines

    cmd = ["aigc-offload", "reproduce", "ladts", "--points", "tasks=10,20", "--points", "retrained=Z=20 default-trained"]
    results = {"wall_s": {"total": 60.0, "trained_now": 0, "reused": 3, "training": 0.0, "evaluation": 60.0},
               "machine": {"cpus": 2},
               "invocations": [{"started": "2026-11-25 00:00:00", "command": cmd, "wall_s": 60.0, "trained_now": 0}]}
    text = "\n".join(invocation_lines(results))
    assert ("`aigc-offload reproduce ladts --points tasks=10,20 --points 'retrained=Z=20 default-trained'`"
            in text), text


def test_invocation_lines_list_invocations_in_start_order():
    """invocations.jsonl holds a stopped invocation only from when the next one starts (it logs the
    other's account), so the log's order is not the start order; the report lists them by start."""
    from policies.reproduce.core import invocation_lines

    def inv(started, n):
        return {"started": started, "command": ["aigc-offload", "reproduce", "ladts", f"--seeds={n}"], "wall_s": 1.0,
                "trained_now": n}

    results = {"wall_s": {"total": 1.0, "trained_now": 0, "reused": 0, "training": 0.0, "evaluation": 1.0},
               "machine": {"cpus": 2},
               "invocations": [inv("2026-11-25 03:38:25", 1), inv("2026-11-25 01:31:08", 2), inv("2026-11-25 04:53:54", 3)]}
    starts = [line[2:21] for line in invocation_lines(results) if line.startswith("- ")]
    assert starts == ["2026-11-25 01:31:08", "2026-11-25 03:38:25", "2026-11-25 04:53:54"]


def test_training_parallelism_names_the_training_invocations_jobs():
    """A report re-made with ``--jobs 1`` from runs that trained two at a time says they trained two at a time:
    the parallelism comes from the logged invocations that trained runs (their ``jobs``, else their command's
    ``--jobs``), and only falls back to this invocation's ``--jobs`` when none trained."""
    from policies.reproduce.core import training_parallelism

    def inv(command, trained_now, **kw):
        return {"command": command, "trained_now": trained_now, **kw}

    remake = ["aigc-offload", "reproduce", "ladts", "--jobs", "1", "--points", "tasks=10"]
    results = {"machine": {"jobs": 1}, "invocations": [
        inv(["aigc-offload", "reproduce", "ladts", "--jobs", "2"], 33), inv(remake, 0)]}
    assert training_parallelism(results) == "2 runs in parallel"
    results["invocations"].append(inv(["aigc-offload", "reproduce", "ladts", "--jobs=1"], 4))
    assert training_parallelism(results) == "1-2 runs in parallel"
    results["invocations"] = [inv(remake, 5, jobs=3)]  # a logged "jobs" wins over the command
    assert training_parallelism(results) == "3 runs in parallel"
    results["invocations"] = [inv(remake, 0)]
    assert training_parallelism(results) == "one run at a time"
    assert training_parallelism({"machine": {"jobs": 2}}) == "2 runs in parallel"
