"""Guards and report measures of `aigc-offload reproduce` that need no training: --points validation, the
refusal to train beside another live invocation on the same runs root, and LAD-TS's convergence episode."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies.errors import UserError  # noqa: E402
from policies.reproduce import get_paper, run  # noqa: E402
from policies.reproduce.core import RUNNING, _boot_id, plan_points  # noqa: E402
from policies.reproduce.ladts import convergence_delays, settled_from  # noqa: E402


# -- --points -------------------------------------------------------------------------------------------------
def _planned(paper: str, subset: dict) -> list[str]:
    spec = get_paper(paper)
    _, plan, _, _ = plan_points(spec, replace(spec.full(), x_subset=subset))
    return [p.name for _, _, p in plan]


def test_points_select_by_value_written_any_way():
    names = _planned("ladts", {"alpha": (".1", "0.50")})
    assert "alpha0.1" in names and "alpha0.5" in names and "alpha0.01" not in names and "alpha0.2" not in names
    assert "B50" not in _planned("ladts", {"stations": (10, 20, 30, 40)})
    assert "Z20_from_default" in _planned("ladts", {"retrained": ("Z=20 default-trained",)})
    # the keys a paper's own studies read (AIECOF's Fig. 3 panels, Fig. 4 arrival probabilities) are points too
    assert _planned("aiecof", {"hyper": ("gamma",), "task_types": ("0.2", 1.0)})
    with pytest.raises(UserError, match="no point 'gama' in experiment 'hyper'"):
        _planned("aiecof", {"hyper": ("gama",)})


@pytest.mark.parametrize("subset, words", [
    ({"station": (10,)}, "no experiment 'station'"),  # a typo used to run every stations point, B50 among them
    ({"alpha": (0.3,)}, "no point '0.3' in experiment 'alpha'"),  # ... and to drop the whole sweep
    ({"stations": (10, 55)}, "no point '55'"),
])
def test_points_that_name_nothing_are_refused_with_the_valid_ones(subset, words):
    with pytest.raises(UserError, match=words) as err:
        _planned("ladts", subset)
    assert "its " in str(err.value)  # the sentence lists what exists


def test_cli_points_typo_exits_2_with_a_sentence(tmp_path):
    res = subprocess.run([sys.executable, "-m", "policies.cli", "reproduce", "ladts", "--runs", str(tmp_path / "r"),
                          "--status", "--points", "stattions=10"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no experiment 'stattions'" in res.stderr and "Traceback" not in res.stderr


# -- one trainer per runs root ----------------------------------------------------------------------------
TINY = dict(episodes=2, eval_episodes=1, jobs=1, preset_overrides={"slots_per_episode": 3},
            algo_overrides={"batch_size": 8, "learning_starts": 4, "hidden": 8, "checkpoint_every": 1})


def test_an_invocation_that_would_train_beside_a_live_one_on_the_same_root_is_refused(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (runs / RUNNING.format(pid=other.pid)).write_text(json.dumps(
            {"command": ["aigc-offload", "reproduce", "mato"], "mode": "full", "started": "2026-01-01 00:00:00",
             "wall_s": 1.0, "trained_now": 0, "training_s": 0.0, "updated": "2026-01-01 00:00:01",
             "pid": other.pid, "boot": _boot_id()}))
        with pytest.raises(UserError, match=f"another invocation \\(pid {other.pid}.*is training on"):
            run("mato", quick=True, seeds=1, out=tmp_path / "report", runs=runs, **TINY)
        assert not any(runs.glob("*/*/metrics.csv"))  # refused before anything was trained
    finally:
        other.kill()
        other.wait()
    # the same record once its process is gone: logged as stopped, and this invocation trains
    res = run("mato", quick=True, seeds=1, out=tmp_path / "report", runs=runs, **TINY)
    assert res["wall_s"]["trained_now"] > 0
    assert any("stopped before its end" in i.get("note", "") for i in res["invocations"])
    # the logged wall time of an invocation is the one its report prints (report writing included)
    assert res["invocations"][-1]["wall_s"] == res["wall_s"]["total"]
    assert f"Wall time of this invocation: {res['wall_s']['total']:.0f} s" in (tmp_path / "report" / "report.md").read_text()
    assert not list(runs.glob(RUNNING.format(pid="*")))
    # beside a live invocation, one that only reuses finished runs (a report re-made) goes on
    mine = runs / RUNNING.format(pid=os.getppid())
    mine.write_text(json.dumps({"command": ["x"], "mode": "full", "started": "2026-01-01 00:00:00", "wall_s": 1.0,
                                "trained_now": 0, "training_s": 0.0, "updated": "2026-01-01 00:00:01",
                                "pid": os.getppid(), "boot": _boot_id()}))
    again = run("mato", quick=True, seeds=1, out=tmp_path / "report2", runs=runs, **TINY)
    assert again["wall_s"]["trained_now"] == 0 and mine.exists()


# -- LAD-TS: episodes to converge -------------------------------------------------------------------------
def test_settled_from_is_the_start_of_the_last_stretch_within_the_band():
    assert settled_from([2.0, 1.2, 1.0, 1.03, 0.98, 1.0, 1.0, 1.0, 1.0, 1.0]) == 2
    # touching the band early and leaving it again does not count
    assert settled_from([2.0, 1.0, 1.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]) == 3
    assert settled_from([1.0] * 10) == 0
    assert settled_from([1.0] * 19 + [2.0]) is None and settled_from([]) is None  # no value near the tail mean 1.5


def test_ladts_convergence_uses_the_ratio_to_opt_on_the_same_workloads():
    episodes = list(range(9, 29))  # window ends (0-based) of a 10-episode mean
    opt = [5.0 + (3.0 if e % 2 else 0.0) for e in episodes]  # the workloads alternate light and heavy
    lad = [o * (1.3 if e < 14 else 1.02) for e, o in zip(episodes, opt)]  # within 2% of Opt-TS from episode 14 on
    results = {"convergence": {"methods": {"ladts": {
        "episode": episodes, "reward_mean": [-v for v in lad], "reward_std": [0.0] * len(lad),
        "final_reward": {"mean": -sum(lad[-2:]) / 2, "std": 0.0}}}},
        "convergence_opt": {"episode": episodes, "delay": opt, "std": [0.0] * len(opt)}}
    c = convergence_delays(results)["ladts"]
    assert c["converged_by"] == "ratio to Opt-TS" and c["converged_at"] == 15  # 1-based: window end 14
    # the raw delay swings with the workload: it first touches its band early and leaves it again
    assert c["first_within"] == 11
    del results["convergence_opt"]
    assert convergence_delays(results)["ladts"]["converged_by"] == "delay"


# -- AIECOF's Fig. 3 study reuses a finished variant run only if it was trained as asked ------------------------
def test_aiecof_hyper_study_refuses_a_finished_variant_run_of_other_settings(tmp_path):
    from policies.reproduce.aiecof import HYPER_PANELS, MAIN, _dirname, _hyper
    from policies.train.registry import train

    variant = HYPER_PANELS["gamma"][1][0]  # gamma 0.0: not the default, so it has its own run directory
    tiny = {"slots_per_episode": 3, "batch_size": 8}
    d = tmp_path / "runs" / "hyper" / f"{_dirname(variant)}_s0"
    train("toppo", "aiecof", 0, d, {**MAIN.preset_overrides, **tiny, "hidden": 16, **variant}, episodes=1,
          progress=False)  # trained with hidden 16; the invocation below asks for the default width
    settings = replace(get_paper("aiecof").full(), seeds=1, episodes=1, jobs=1, x_subset={"hyper": ("gamma",)},
                       algo_overrides={"batch_size": 8}, preset_overrides={"slots_per_episode": 3})
    with pytest.raises(UserError, match="trained with other settings"):
        _hyper(settings, tmp_path / "runs", ["test"])


def test_a_finished_run_that_cannot_be_evaluated_fails_the_invocation_before_any_training(tmp_path):
    import shutil

    runs = tmp_path / "runs"
    run("mato", quick=True, seeds=1, out=tmp_path / "report", runs=runs, **TINY)
    kept, gone = sorted(runs.glob("*/*/checkpoint.pt"))[:2]
    kept.unlink()  # finished, evaluated under these settings only: its cache does not fit eval_episodes=2
    shutil.rmtree(gone.parent)  # a run to train again
    with pytest.raises(UserError, match="has no checkpoint.pt"):
        run("mato", quick=True, seeds=1, out=tmp_path / "report2", runs=runs, **{**TINY, "eval_episodes": 2})
    assert not gone.parent.exists()  # refused before training it


def test_convergence_curves_of_seeds_of_different_lengths_share_their_episodes(tmp_path):
    import csv

    from policies.reproduce.core import convergence

    spec = get_paper("mato")
    settings = replace(spec.full(), seeds=2, smooth=3)
    for m in spec.methods:
        if not m.trained:
            continue
        for seed, n in ((0, 6), (1, 8)):  # the last seed ran longer than the first
            d = tmp_path / spec.convergence_point / f"{m.key}_s{seed}"
            d.mkdir(parents=True)
            with (d / "metrics.csv").open("w", newline="") as fh:
                w = csv.DictWriter(fh, ["episode", "reward"])
                w.writeheader()
                w.writerows({"episode": e, "reward": float(e)} for e in range(n))
    c = next(iter(convergence(spec, settings, tmp_path).values()))
    # episodes 0..5 of both seeds, 3-episode means ending at episodes 2..5
    assert c["episode"] == [2, 3, 4, 5] and c["reward_mean"] == pytest.approx([1.0, 2.0, 3.0, 4.0]) and c["window"] == 3


def test_a_run_retrained_from_scratch_drops_the_cached_evaluations_of_the_policy_it_replaces(tmp_path):
    from policies.reproduce.core import eval_cache_path

    runs = tmp_path / "runs"
    run("mato", quick=True, seeds=1, out=tmp_path / "report", runs=runs, **TINY)
    ckpt = sorted(runs.glob("*/*/checkpoint.pt"))[0]
    d = ckpt.parent
    ckpt.unlink()
    eval_cache_path(d, d.parent.name).unlink()  # neither policy nor its own evaluation: it trains again
    stale = d / "evaluation.elsewhere.json"
    stale.write_text("{}\n")  # what the replaced policy measured at another point
    again = run("mato", quick=True, seeds=1, out=tmp_path / "report2", runs=runs, **TINY)
    assert again["wall_s"]["trained_now"] == 1 and not stale.exists() and eval_cache_path(d, d.parent.name).exists()


def test_a_finished_run_longer_than_asked_is_refused_not_reused(tmp_path):
    runs = tmp_path / "runs"
    run("mato", quick=True, seeds=1, out=tmp_path / "report", runs=runs, **TINY)
    with pytest.raises(UserError, match="is a finished run of 2 episodes and this invocation asks for 1"):
        run("mato", quick=True, seeds=1, out=tmp_path / "report2", runs=runs, **{**TINY, "episodes": 1})


def test_a_record_whose_pid_now_names_another_process_is_not_alive():
    from policies.reproduce.core import _process_start, _still_running

    me = os.getpid()
    rec = {"pid": me, "boot": _boot_id(), "process_start": _process_start(me)}
    assert rec["process_start"] and _still_running(rec)
    assert not _still_running({**rec, "process_start": str(int(rec["process_start"]) - 1)})  # pid reused since
    assert _still_running({"pid": me, "boot": _boot_id()})  # records written before the start time was kept
