"""Training tooling: smoke trains of every algorithm, resume, a trained run evaluated as a policy,
clean CLI errors, and the runtime staying torch-free."""

import csv
import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from policies.errors import UserError  # noqa: E402
from policies.evaluate import evaluate  # noqa: E402
from policies.scenarios import make_simulator  # noqa: E402
from policies.train.registry import ALGOS, train  # noqa: E402

# a tiny MATO scene and tiny batches: a few seconds per algorithm on 2 cores
TINY_PRESET = {"num_devices": 3, "slots_per_episode": 4}
TINY = {**TINY_PRESET, "batch_size": 16, "learning_starts": 4, "checkpoint_every": 1, "hidden": 16}


def rows(run):
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("algo", sorted(a for a, spec in ALGOS.items() if spec.scenario == "mato"))
def test_smoke_train_every_mato_algo(tmp_path, algo):
    out = tmp_path / algo
    last = train(algo, "mato", 0, out, TINY, episodes=3, progress=False)
    assert last["episode"] == 2
    assert {p.name for p in out.iterdir()} >= {"checkpoint.pt", "metrics.csv", "config.json"}
    r = rows(out)
    assert [int(x["episode"]) for x in r] == [0, 1, 2]
    assert float(r[-1]["critic_loss"]) == float(r[-1]["critic_loss"])  # updates ran (not nan)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["algo"] == algo and cfg["seed"] == 0 and cfg["preset_name"] == "mato" and len(cfg["preset_hash"]) == 64
    assert cfg["config"]["gamma"] == 0.95 and cfg["config"]["tau"] == 0.01 and cfg["config"]["batch_size"] == 16
    assert cfg["preset"]["num_devices"] == 3
    assert cfg["preset"]["model_aware"] is (algo != "maddpg_nomodel")
    assert cfg["preset"]["reward_mode"] == ("individual" if algo == "saddpg" else "team")
    assert cfg["config"]["centralized_critic"] is (algo != "saddpg")


def test_paper_hyperparameters_are_the_defaults():
    from policies.train.maddpg import Config

    c = Config()
    assert (c.lr_actor, c.lr_critic, c.gamma, c.tau, c.buffer_size, c.batch_size) == (1e-3, 1e-3, 0.95, 0.01, 10_000, 1024)


def test_resume_continues_exactly(tmp_path):
    # the exploration-noise schedule spans --episodes; keep it flat so 2 + 2 episodes equal 4
    cfg = {**TINY, "noise_end": 0.3}
    straight = tmp_path / "straight"
    train("maddpg", "mato", 1, straight, cfg, episodes=4, progress=False)
    run = tmp_path / "run"
    train("maddpg", "mato", 1, run, cfg, episodes=2, progress=False)
    first = rows(run)
    assert len(first) == 2
    train("maddpg", "mato", 1, run, cfg, episodes=4, progress=False)
    r = rows(run)
    assert [int(x["episode"]) for x in r] == [0, 1, 2, 3]  # appended, not overwritten
    assert r[:2] == first
    assert [int(x["global_step"]) for x in r] == [4, 8, 12, 16]
    # RNG states, buffer and optimizers were restored: the same numbers as the uninterrupted run
    keys = ("reward", "latency_s", "critic_loss", "actor_loss")
    assert [[x[k] for k in keys] for x in r] == [[x[k] for k in keys] for x in rows(straight)]
    assert len(json.loads((run / "config.json").read_text())["command_history"]) == 2


def test_resume_refuses_another_run(tmp_path):
    train("maddpg", "mato", 0, tmp_path, TINY, episodes=1, progress=False)
    with pytest.raises(UserError, match="another run"):
        train("maddpg", "mato", 5, tmp_path, TINY, episodes=2, progress=False)


def test_resume_refuses_other_learning_settings_but_not_a_longer_run(tmp_path):
    train("maddpg", "mato", 0, tmp_path, TINY, episodes=1, progress=False)
    with pytest.raises(UserError, match=r"other settings \(batch_size 16 -> 32\)"):
        train("maddpg", "mato", 0, tmp_path, {**TINY, "batch_size": 32}, episodes=2, progress=False)
    # longer, with another checkpoint period: the same run, resumed
    train("maddpg", "mato", 0, tmp_path, {**TINY, "checkpoint_every": 2}, episodes=2, progress=False)
    assert len(rows(tmp_path)) == 2


@pytest.mark.parametrize("algo", ["maddpg", "maddpg_nomodel", "saddpg"])
def test_planned_settings_are_what_train_records_and_reuse_checks_them(tmp_path, algo):
    from policies.reproduce.core import check_reused_run
    from policies.train.registry import planned_settings

    train(algo, "mato", 0, tmp_path, TINY, episodes=1, progress=False)
    rec = json.loads((tmp_path / "config.json").read_text())
    plan = planned_settings(algo, "mato", TINY, episodes=1)
    assert plan["algo"] == rec["algo"] and plan["preset_hash"] == rec["preset_hash"]
    assert json.loads(json.dumps(plan["config"])) == rec["config"]
    check_reused_run(tmp_path, algo, "mato", TINY, 1)  # as trained: reused
    check_reused_run(tmp_path, algo, "mato", {**TINY, "checkpoint_every": 3}, 5)  # how long / how it checkpoints
    with pytest.raises(UserError, match=r"other settings \(batch_size 16, now 32\)"):
        check_reused_run(tmp_path, algo, "mato", {**TINY, "batch_size": 32}, 1)
    with pytest.raises(UserError, match="preset_hash"):
        check_reused_run(tmp_path, algo, "mato", {**TINY, "num_devices": 4}, 1)


def test_trained_run_evaluates_as_a_policy(tmp_path):
    train("maddpg", "mato", 0, tmp_path / "a", TINY, episodes=2, progress=False)
    train("maddpg_nomodel", "mato", 0, tmp_path / "b", TINY, episodes=2, progress=False)
    sim = make_simulator("mato", TINY_PRESET)
    res = evaluate(sim, ["greedy", str(tmp_path / "a"), f"run:{tmp_path / 'a'}"], episodes=2, seed=0, progress=False)
    a, b = res.results[str(tmp_path / "a")], res.results[f"run:{tmp_path / 'a'}"]
    assert a == b and 0.0 <= a["completion_rate"] <= 1.0  # deterministic actors
    with pytest.raises(UserError, match="model_aware=false"):
        evaluate(sim, [str(tmp_path / "b")], episodes=1, seed=0, progress=False)
    blind = make_simulator("mato", {**TINY_PRESET, "model_aware": False})
    assert evaluate(blind, [str(tmp_path / "b")], episodes=1, seed=0, progress=False).results
    with pytest.raises(UserError, match="3 agents"):
        evaluate(make_simulator("mato", {"slots_per_episode": 2}), [str(tmp_path / "a")], episodes=1, seed=0)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "policies.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_train_then_evaluate(tmp_path):
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    p = cli("train", "--scenario", "mato", "--algo", "saddpg", "--seed", "2", "--episodes", "2", "--out",
            str(tmp_path), *sets)
    assert p.returncode == 0, p.stderr
    assert "train saddpg" in p.stderr and "reward=" in p.stderr  # the progress bar with running metrics
    assert json.loads((tmp_path / "config.json").read_text())["command"][:2] == ["aigc-offload", "train"]
    presets = [x for k, v in TINY_PRESET.items() for x in ("--set", f"{k}={v}")]
    p = cli("evaluate", "--scenario", "mato", "--policies", f"random,{tmp_path}", "--episodes", "1", "--json", *presets)
    assert p.returncode == 0, p.stderr
    assert str(tmp_path) in json.loads(p.stdout)["results"]


@pytest.mark.parametrize("args, needle", [
    (["--scenario", "mato", "--algo", "nope"], "unknown algo 'nope'"),
    (["--scenario", "gmel", "--algo", "maddpg"], "trains on 'mato' scenarios"),
    (["--scenario", "mato", "--algo", "maddpg", "--set", "batch_size=abc"], "batch_size"),
])
def test_cli_train_errors_are_one_sentence(tmp_path, args, needle):
    p = cli("train", "--out", str(tmp_path / "x"), "--episodes", "1", *args)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and needle in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_runtime_imports_do_not_load_torch():
    code = ("import sys, policies, policies.cli, policies.evaluate, policies.heuristics, policies.train, "
            "policies.train.registry\n"
            "from policies.scenarios import SCENARIOS, scenario_class\n"
            "[scenario_class(n) for n in SCENARIOS]\n"
            "from policies.evaluate import evaluate\n"
            "from policies.scenarios import make_simulator\n"
            "evaluate(make_simulator('mato', {'slots_per_episode': 2}), ['greedy', 'random'], 1, 0, progress=False)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
