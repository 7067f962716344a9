"""The papers' per-task learners on the factory (policies/train/factory_agents.py): MADDPG-MATO, AMARL and
TOPPO through their adapters. Registered, the adapters book the factory's own decisions and rewards, a tiny
run writes config/checkpoint/metrics and evaluates as run:DIR, seeded runs repeat exactly, a resumed run
continues exactly, and each learner beats `random` on a tiny plant and improves over its own training."""

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from policies.evaluate import evaluate  # noqa: E402
from policies.scenarios import make_simulator  # noqa: E402
from policies.scenarios.base import OffloadDecision  # noqa: E402
from policies.train import factory_agents as fa  # noqa: E402
from policies.train import maddpg  # noqa: E402
from policies.train.registry import ALGOS, train  # noqa: E402
from policies.workload import episode_rng  # noqa: E402

FACTORY_ALGOS = ("factory_maddpg", "factory_amarl", "factory_toppo")
# a tiny plant: 3 controllers + 3 cameras, 12 slots (1.2 s) per episode
TINY_PRESET = {"num_controllers": 3, "num_cameras": 3, "slots_per_episode": 12}
TINY_ALGO = {
    # MADDPG's exploration-noise schedule spans --episodes: flat, so that 2 + 2 resumed episodes equal 4
    "factory_maddpg": {"batch_size": 16, "learning_starts": 12, "hidden": 16, "checkpoint_every": 1, "noise_end": 0.3},
    "factory_amarl": {"batch_size": 8, "hidden": 16, "warmup_episodes": 1, "checkpoint_every": 1},
    "factory_toppo": {"hidden": 16, "lstm_hidden": 8, "checkpoint_every": 1},
}


def tiny(algo):
    return {**TINY_PRESET, **TINY_ALGO[algo]}


def rows(run):
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_registered_on_the_factory_with_the_home_trainers_configs():
    for algo, entry, home in (("factory_maddpg", "MADDPG", "maddpg"), ("factory_amarl", "AMARL", "amarl"),
                              ("factory_toppo", "TOPPO", "toppo")):
        spec = ALGOS[algo]
        assert spec.scenario == "factory" and spec.module == "policies.train.factory_agents" and spec.entry == entry
        cls = getattr(fa, entry).Config
        assert issubclass(cls, __import__(f"policies.train.{home}", fromlist=["Config"]).Config)
    # the home trainers' own defaults are untouched (the factory's live in the subclasses)
    assert maddpg.Config().batch_size == 1024 and maddpg.Config().episodes == 2000
    assert fa.MaddpgConfig().batch_size == 128


# -- the adapters book the factory's own decisions ---------------------------------------------------------
def test_mato_protocol_books_each_devices_action_and_reads_the_factory_reward():
    sim = make_simulator("factory", TINY_PRESET)
    ad = fa.MatoProtocol(sim)
    assert ad.M == sim.M and ad.N == sim.K - 1 and ad.sparse_agents
    wl = sim.generate_workload(episode_rng(1, 0, 0), 0)
    ad.reset(wl)
    ref = make_simulator("factory", TINY_PRESET)
    ref.reset(wl)
    rng = np.random.default_rng(0)
    while not ad.done:
        view = ad.view()
        obs, has = ad.observation(view), view.features["has_task"]
        fview = ref.view()
        assert obs.shape == (sim.M, sim.obs_dim()) and has.sum() == fview.n
        np.testing.assert_array_equal(obs[fview.source], ref.observation(fview))  # the factory's own rows
        assert np.all(obs[has == 0] == 0)  # idle devices: zero rows
        a = rng.random((sim.M, ad.N + 2)).astype(np.float32)
        dec = maddpg.to_decision(a, view)
        t = ad.t
        rows_t = ref.rows()
        ad.step(dec)
        src = fview.source
        ref.step(OffloadDecision(target=dec.target[src], share=dec.share[src], download=dec.download[src]))
        np.testing.assert_array_equal(ad.task_cost[t, src], -ref.reward[rows_t])
        assert np.all(ad.task_cost[t, has == 0] == 0)
    assert ad.episode_metrics()["reward"] == ref.episode_metrics()["reward"]


def test_candidate_actions_are_the_factory_alternatives():
    sim = make_simulator("factory", TINY_PRESET)
    ad = fa.GmelProtocol(sim)
    t, s, d = sim.candidates()
    assert ad.M + 1 == t.size == 1 + sim.N * 4 * 2 + 4
    dec = ad.candidate_decision(np.arange(t.size))
    assert dec.target.tolist() == t.tolist() and dec.share.tolist() == s.tolist() and dec.download.tolist() == d.tolist()
    with pytest.raises(ValueError):
        ad.candidate_decision(np.array([t.size]))
    # an episode of AMARL's protocol: slot rewards are the factory's per-task rewards at (slot, device)
    wl = sim.generate_workload(episode_rng(2, 0, 0), 0)
    ad.reset(wl)
    rng = np.random.default_rng(1)
    while not ad.done:
        v = ad.agent_view()
        ad.step(OffloadDecision(target=np.where(v.features["has_task"] > 0, rng.integers(0, t.size, sim.M), 0)))
    r = ad.slot_rewards()
    assert r.shape == (sim.preset.slots_per_episode, sim.M)
    assert r.sum() == pytest.approx(float(sim.reward.sum()), rel=1e-5) and np.count_nonzero(r) == sim.reward.size


# -- tiny runs: files, evaluation, exact repetition, exact resume ------------------------------------------
@pytest.mark.parametrize("algo", FACTORY_ALGOS)
def test_tiny_run_repeats_resumes_and_evaluates(tmp_path, algo):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    last = train(algo, "factory", 3, a, tiny(algo), episodes=4, progress=False)
    assert last["episode"] == 3 and np.isfinite(last["critic_loss"])  # updates ran
    assert {p.name for p in a.iterdir()} >= {"checkpoint.pt", "metrics.csv", "config.json"}
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["algo"] == algo and cfg["scenario"] == "factory" and cfg["preset"]["slots_per_episode"] == 12
    assert cfg["obs_dim"] == make_simulator("factory", TINY_PRESET).obs_dim()
    train(algo, "factory", 3, b, tiny(algo), episodes=4, progress=False)
    train(algo, "factory", 3, c, tiny(algo), episodes=2, progress=False)
    train(algo, "factory", 3, c, tiny(algo), episodes=4, progress=False)  # resumed from the episode-2 checkpoint
    keys = [k for k in rows(a)[0] if k not in ("episode_s", "episode_cpu_s")]
    ra, rb, rc = ([[x[k] for k in keys] for x in rows(d)] for d in (a, b, c))
    assert ra == rb == rc and len(ra) == 4
    assert len(json.loads((c / "config.json").read_text())["command_history"]) == 2
    sim = make_simulator("factory", TINY_PRESET)
    res = evaluate(sim, [str(a), f"run:{a}"], episodes=2, seed=0, progress=False).results
    assert res[str(a)] == res[f"run:{a}"]  # deterministic actors, LSTM state reset per episode
    assert 0.0 <= res[str(a)]["completion_rate"] <= 1.0 and res[str(a)]["tasks"] > 0


def test_a_run_refuses_another_plant_layout(tmp_path):
    from policies.errors import UserError

    train("factory_toppo", "factory", 0, tmp_path, tiny("factory_toppo"), episodes=1, progress=False)
    other = make_simulator("factory", {**TINY_PRESET, "share_levels": [0.5, 1.0]})  # 21 alternatives, not 37
    with pytest.raises(UserError, match="cannot act"):
        evaluate(other, [str(tmp_path)], episodes=1, seed=0, progress=False)


# -- learning: each beats random on a tiny plant, and its own training episodes improve ---------------------
# 3 controllers + 3 cameras asking 4 tasks/s each (p = 0.4 per slot), 30 slots: random drops about half the
# tasks (mean reward ~ -3.7 on the evaluation workloads), any sensible offloading completes nearly all. The
# second check reads the run's own training log (seeded, so exact): the mean episode reward of the last
# third of the episodes beats that of the first third, i.e. the updates, not the initial network, did it.
LEARN_PRESET = {"num_controllers": 3, "num_cameras": 3, "slots_per_episode": 30, "arrival_prob_controller": 0.4,
                "arrival_prob_camera": 0.4}
LEARN = {
    "factory_maddpg": {"batch_size": 64, "learning_starts": 60, "hidden": 32, "update_every": 1, "checkpoint_every": 100},
    "factory_amarl": {"batch_size": 32, "hidden": 32, "warmup_episodes": 2, "update_every": 1, "checkpoint_every": 100},
    "factory_toppo": {"hidden": 32, "lstm_hidden": 16, "checkpoint_every": 100},
}
LEARN_EPISODES = 30


@pytest.mark.parametrize("algo", FACTORY_ALGOS)
def test_learns_beyond_random_on_a_tiny_plant(tmp_path, algo):
    train(algo, "factory", 0, tmp_path, {**LEARN_PRESET, **LEARN[algo]}, episodes=LEARN_EPISODES, progress=False)
    sim = make_simulator("factory", LEARN_PRESET)
    res = evaluate(sim, ["random", str(tmp_path)], episodes=6, seed=11, progress=False).results
    rnd, learned = res["random"]["reward"], res[str(tmp_path)]["reward"]
    assert learned > rnd + 1.0, (learned, rnd)
    r = [float(x["reward"]) for x in rows(tmp_path)]
    k = len(r) // 3
    assert np.mean(r[-k:]) > np.mean(r[:k]) + 0.3, (np.mean(r[:k]), np.mean(r[-k:]))
