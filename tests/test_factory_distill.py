"""factory_distill: the actor's shape and decoding, DAgger labels equal to the factory opt, a tiny run
(config, checkpoint, metrics, resume), evaluation of run:DIR, and the shipped trained policy."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from policies.evaluate import evaluate, generate_workloads, run_episode  # noqa: E402
from policies.scenarios import make_simulator  # noqa: E402
from policies.scenarios.factory import FactoryOptPolicy  # noqa: E402
from policies.shipped import default_policy_run  # noqa: E402
from policies.train import factory_distill as fd  # noqa: E402
from policies.train.registry import ALGOS, train  # noqa: E402
from policies.workload import episode_rng  # noqa: E402

SHIPPED = default_policy_run() or Path(__file__).resolve().parents[1] / "policies" / "trained" / "factory_distill_s0"
TINY_PRESET = {"slots_per_episode": 6}
TINY = {**TINY_PRESET, "episodes_per_iter": 2, "updates_per_iter": 5, "batch_size": 32, "hidden": 16,
        "val_episodes": 1, "dagger_episodes": 2}


def rows(run):
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_registered():
    assert ALGOS["factory_distill"].scenario == "factory"
    assert ALGOS["factory_distill"].module == "policies.train.factory_distill"


def test_actor_output_shape():
    sim = make_simulator("factory")
    S = len(sim.preset.share_levels)
    actor = fd.FactoryActor(sim.obs_dim(), sim.K, S, hidden=(32, 16))
    out = actor(torch.zeros(5, sim.obs_dim()))
    assert out.shape == (5, sim.K + S + 2) and out.dtype == torch.float32
    assert [m.out_features for m in actor.net if isinstance(m, torch.nn.Linear)] == [32, 16, sim.K + S + 2]
    assert actor(torch.zeros(0, sim.obs_dim())).shape == (0, sim.K + S + 2)


def test_decoding_rules():
    K, levels = 6, np.array([0.25, 0.5, 0.75, 1.0])

    def logits(t, s, d):
        row = np.zeros(K + 4 + 2)
        row[t], row[K + s], row[K + 4 + d] = 1.0, 1.0, 1.0
        return row

    L = np.stack([logits(0, 2, 1), logits(2, 1, 1), logits(2, 3, 0), logits(K - 1, 0, 1)])
    target, level, share, download = fd.decode(L, K, levels)
    assert target.tolist() == [0, 2, 2, K - 1]
    assert level.tolist() == [2, 1, 3, 0]
    assert share.tolist() == [0.0, 0.5, 1.0, 0.25]  # local: share ignored
    assert download.tolist() == [False, True, False, False]  # local and cloud: download ignored


def test_candidates_map_to_heads():
    sim = make_simulator("factory")
    c = fd.Candidates(sim)
    assert c.size == 1 + sim.N * 4 * 2 + 4
    for i in range(c.size):
        assert c.index(c.target[i], max(c.level[i], 0), c.download[i]) == i
    assert c.index(0, 3, True) == 0 and c.index(sim.K - 1, 1, True) == c.index(sim.K - 1, 1, False)


def test_dagger_labels_equal_opt_when_following_the_expert():
    sim = make_simulator("factory", {"slots_per_episode": 8})
    wl = sim.generate_workload(episode_rng(3, 0, 0), 0)
    cands = fd.Candidates(sim)
    res = fd.collect_episode(sim, None, cands, wl, beta=1.0, rng=np.random.default_rng(0))
    lab = cands.labels(res["rew"])
    # the same episode run by FactoryOptPolicy, recording its decisions
    opt = FactoryOptPolicy()
    sim.reset(wl)
    opt.reset(np.random.default_rng(0), oracle=sim)
    t, s, d = [], [], []
    while not sim.done:
        dec = opt.decide(sim.view())
        t += dec.target.tolist()
        s += dec.share.tolist()
        d += dec.download.tolist()
        sim.step(dec)
    assert len(t) == res["rew"].shape[0] > 0
    best = lab["best"]
    assert cands.target[best].tolist() == t
    assert cands.share[best].tolist() == s
    assert cands.download[best].tolist() == d
    assert res["metrics"] == sim.episode_metrics()  # same episode outcome as opt's
    # and an actor-driven rollout (beta = 0) still labels with the expert's argmax over its own prefix
    actor = fd.FactoryActor(sim.obs_dim(), sim.K, 4, hidden=(8,))
    res0 = fd.collect_episode(sim, actor, cands, wl, beta=0.0, rng=np.random.default_rng(0))
    assert res0["rew"].shape == res["rew"].shape and 0.0 <= res0["agreement"] <= 1.0


def test_drop_weight_charges_exactly_the_alternatives_that_miss_their_deadline():
    # a loaded plant: some alternatives of some tasks miss their deadline
    sim = make_simulator("factory", {"slots_per_episode": 8})
    wl = sim.generate_workload(episode_rng(3, 0, 0), 0)
    cands = fd.Candidates(sim)
    res = fd.collect_episode(sim, None, cands, wl, beta=1.0, rng=np.random.default_rng(0))
    rew, done = res["rew"], res["done"]
    assert done.shape == rew.shape and done.dtype == bool and (~done).any() and done.any()
    # the simulator's own drop rule: a dropped alternative carries the reward's P_e
    assert (rew[~done] <= -sim.preset.drop_penalty + 1e-6).all()
    assert fd.training_rewards(rew, done, 0.0) is rew
    adj = fd.training_rewards(rew, done, 20.0)
    np.testing.assert_allclose(adj[done], rew[done])
    np.testing.assert_allclose(adj[~done], rew[~done] - 20.0, rtol=1e-6)
    val = {"reward": -0.5, "completion_rate": 0.99}
    assert fd.selection_score(val, 0.0) == -0.5 and fd.selection_score(val, 20.0) == pytest.approx(-0.7)


def test_tiny_run_writes_and_resumes_and_evaluates(tmp_path):
    straight = tmp_path / "straight"
    last = train("factory_distill", "factory", 0, straight, TINY, episodes=4, progress=False)
    assert last["episode"] == 3 and {"reward", "latency_s", "completion_rate"} <= set(last)
    assert {p.name for p in straight.iterdir()} >= {"checkpoint.pt", "metrics.csv", "config.json"}
    cfg = json.loads((straight / "config.json").read_text())
    assert cfg["algo"] == "factory_distill" and cfg["seed"] == 0 and cfg["preset_name"] == "factory"
    assert len(cfg["preset_hash"]) == 64 and cfg["preset"]["slots_per_episode"] == 6
    assert cfg["config"]["hidden"] == 16 and "reward" in cfg["evaluation"]
    ck = torch.load(straight / "checkpoint.pt", weights_only=False)
    assert {"actor", "obs_dim", "num_targets", "num_share_levels", "hidden"} <= set(ck)
    r = rows(straight)
    assert [int(x["episode"]) for x in r] == [0, 1, 2, 3] and [x["stage"] for x in r] == ["1", "1", "2", "2"]

    run = tmp_path / "run"
    train("factory_distill", "factory", 0, run, TINY, episodes=2, progress=False)
    first = rows(run)
    train("factory_distill", "factory", 0, run, TINY, episodes=4, progress=False)
    r2 = rows(run)
    assert r2[:2] == first and len(r2) == 4
    keys = ("reward", "agreement", "ce_loss", "regret", "val_reward")
    assert [[x[k] for k in keys] for x in r2] == [[x[k] for k in keys] for x in r]  # exact resume
    assert len(json.loads((run / "config.json").read_text())["command_history"]) == 2

    sim = make_simulator("factory", TINY_PRESET)
    res = evaluate(sim, ["greedy", str(run), f"run:{run}"], episodes=1, seed=1000, progress=False)
    assert res.results[str(run)] == res.results[f"run:{run}"]
    assert 0.0 <= res.results[f"run:{run}"]["completion_rate"] <= 1.0


def test_shipped_policy_loads_and_evaluates():
    if not (SHIPPED / "checkpoint.pt").exists():
        pytest.skip("no factory_distill run is shipped beside the default policy")
    cfg = json.loads((SHIPPED / "config.json").read_text())
    sim = make_simulator("factory", {"slots_per_episode": 20})
    assert cfg["algo"] == "factory_distill" and cfg["obs_dim"] == sim.obs_dim()
    pol = fd.FactoryDistillPolicy.from_run(SHIPPED, sim)
    m = run_episode(sim, pol, generate_workloads(sim, 1, 1000)[0], 1000)
    assert m["tasks"] > 0 and 0.0 <= m["completion_rate"] <= 1.0


def test_cli_train_progress_and_evaluate_run_dir(tmp_path):
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "policies.cli", *args], capture_output=True, text=True, timeout=120)

    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    p = cli("train", "--scenario", "factory", "--algo", "factory_distill", "--seed", "1", "--episodes", "2",
            "--out", str(tmp_path), *sets)
    assert p.returncode == 0, p.stderr
    assert "train factory_distill" in p.stderr and "reward=" in p.stderr  # the progress bar
    assert json.loads((tmp_path / "config.json").read_text())["command"][:2] == ["aigc-offload", "train"]
    presets = [x for k, v in TINY_PRESET.items() for x in ("--set", f"{k}={v}")]
    p = cli("evaluate", "--scenario", "factory", "--policies", f"greedy,run:{tmp_path}", "--episodes", "1",
            "--json", *presets)
    assert p.returncode == 0, p.stderr
    assert f"run:{tmp_path}" in json.loads(p.stdout)["results"]


def test_shipped_checkpoint_is_slim_and_refuses_resume(tmp_path):
    from policies.errors import UserError

    run = tmp_path / "run"
    train("factory_distill", "factory", 0, run, TINY, episodes=2, progress=False)
    dest = fd.ship_run(run, tmp_path / "ship")
    ck = torch.load(dest / "checkpoint.pt", weights_only=False)
    assert set(ck) == set(fd.SLIM_KEYS) and "opt" not in ck
    sim = make_simulator("factory", TINY_PRESET)
    a = evaluate(sim, [f"run:{run}", f"run:{dest}"], episodes=1, seed=0, progress=False).results
    assert a[f"run:{run}"] == a[f"run:{dest}"]
    with pytest.raises(UserError, match="shipped policy"):
        train("factory_distill", "factory", 0, dest, TINY, episodes=4, progress=False)
