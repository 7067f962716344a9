"""The factory's edge-tier agents (policies/train/factory_edge_agents.py, spec docs/papers/factory.md section 8):
the simulator's edge-tier hooks keep the default behaviour bit-identical, a plan is applied with its downloads
and validated, LAD-TS (scheduling) and TD3 (caching + download shares) train in seconds on a tiny plant, repeat
exactly under a seed, resume exactly, the TD3 plan is always feasible, and each agent beats its random
baseline on the tiny plant."""

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from policies.evaluate import evaluate, generate_workloads, run_episode  # noqa: E402
from policies.heuristics import make_policy  # noqa: E402
from policies.scenarios import make_simulator  # noqa: E402
from policies.scenarios.factory import (CachePlan, CachePolicy, EarliestFinishScheduler, KeepCachePolicy,  # noqa: E402
                                        StayScheduler)
from policies.train import factory_edge_agents as fe  # noqa: E402
from policies.train import ladts, td3  # noqa: E402
from policies.train.registry import ALGOS, train  # noqa: E402

# a tiny, loaded plant: 3 controllers + 3 cameras asking every other slot, 40 slots (4 s) per episode
TINY_PRESET = {"num_controllers": 3, "num_cameras": 3, "slots_per_episode": 40, "arrival_prob_controller": 0.5,
               "arrival_prob_camera": 0.5}
TINY_LADTS = {"gateways": "greedy", "batch_size": 32, "learning_starts": 64, "checkpoint_every": 2}
TINY_TD3 = {"gateways": "greedy", "batch_size": 32, "learning_starts": 8, "hidden": 64, "period_slots": 10,
            "checkpoint_every": 2}
TIMING = ("episode_s", "episode_cpu_s")


def rows(run):
    with (run / "metrics.csv").open() as fh:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(fh)]


def test_registered_with_the_trainers_configs_and_their_defaults_untouched():
    for algo, entry, home in (("factory_ladts", "LADTS", ladts), ("factory_td3", "TD3", td3)):
        spec = ALGOS[algo]
        assert spec.scenario == "factory" and spec.module == "policies.train.factory_edge_agents" and spec.entry == entry
        assert issubclass(getattr(fe, entry).Config, home.Config)
    assert ladts.Config().episodes == 60 and td3.Config().lr_actor == 1e-5 and td3.Config().learning_starts == 500


# -- the hooks: default behaviour bit-identical -------------------------------------------------------------
@pytest.mark.parametrize("policy", ["greedy", "random", "opt"])
def test_default_rules_as_hooks_are_bit_identical(policy):
    """Seeded episodes of the shipped plant: no hooks vs the default rules installed as hooks (earliest-finish
    forwarding, LRU kept by a plan every 7 slots); opt also prices alternatives through the scheduler."""
    out = []
    for hooks in (False, True):
        sim = make_simulator("factory", {"slots_per_episode": 60})
        if hooks:
            sim.edge_scheduler, sim.cache_policy = EarliestFinishScheduler(), KeepCachePolicy()
            sim.cache_policy.period_slots = 7
        pol = sim.scenario_policy(policy) or make_policy(policy, sim)
        m = [run_episode(sim, pol, w, 3) for w in generate_workloads(sim, 2, 3)]
        out.append((m, sim.latency.copy(), sim.exec_at.copy(), sim.cache.copy(), sim.reward.copy()))
    (m0, *a0), (m1, *a1) = out
    assert m0 == m1
    assert m0[0]["forwarded"] > 0 or policy == "random"
    for x, y in zip(a0, a1):
        assert np.array_equal(x, y)


def test_stay_scheduler_equals_no_forwarding():
    a = make_simulator("factory", {"slots_per_episode": 60, "edge_forwarding": False})
    b = make_simulator("factory", {"slots_per_episode": 60})
    b.edge_scheduler = StayScheduler()
    wl = generate_workloads(a, 1, 5)
    assert run_episode(a, make_policy("greedy", a), wl[0], 5) == run_episode(b, make_policy("greedy", b), wl[0], 5)
    assert b.episode_metrics()["forwarded"] == 0.0


def test_scheduler_decides_and_an_infeasible_choice_stays():
    class AllToServer0(fe.EdgeScheduler):
        name = "to0"

        def schedule(self, sim, req):
            self.seen = req
            return np.zeros(req.n, dtype=np.int64)

    sim = make_simulator("factory", TINY_PRESET)
    sched = AllToServer0()
    sim.edge_scheduler = sched
    run_episode(sim, make_policy("greedy", sim), generate_workloads(sim, 1, 2)[0], 2)
    on_edge = sim.exec_at >= 0
    entry = sim.target - 1
    holds0 = sim._initial_cache()[0][0, sim.model]  # greedy never downloads: the caches stay the warm start
    assert np.all(sim.exec_at[on_edge & holds0] == 0)
    assert np.all(sim.exec_at[on_edge & ~holds0] == entry[on_edge & ~holds0])  # server 0 cannot run it: stays
    assert sched.seen.commit and sched.seen.can_run.shape == (sched.seen.n, sim.N)


class FixedPlan(CachePolicy):
    def __init__(self, cache, share, period):
        self.c, self.s, self.period_slots = cache, share, period

    def plan(self, sim):
        return CachePlan(self.c.copy(), self.s.copy())


def test_cache_plan_downloads_new_models_at_their_share_and_is_validated():
    sim = make_simulator("factory", TINY_PRESET)
    wl = generate_workloads(sim, 1, 1)[0]
    init = sim._initial_cache()[0]
    plan = init.copy()
    plan[0] = False
    plan[0, [2, 5]] = True  # 170 + 160 MB on server 0, both new (its warm start is models 0, 1, 4)
    share = np.zeros_like(plan, dtype=float)
    share[0, 2], share[0, 5] = 0.25, 0.75
    sim.cache_policy = FixedPlan(plan, share, 1000)
    sim.reset(wl)
    sim.view()
    new = plan & ~init
    assert new[0].sum() == 2 and np.array_equal(sim.cache, plan) and sim.plan_downloads == int(new.sum())
    for m in np.flatnonzero(new[0]):
        assert sim.ready[0, m] == pytest.approx(sim.model_bits[m] / (share[0, m] * sim.download_bps))
    bad = plan.copy()
    bad[1] = True  # all 8 models on server 1: over its 400 MB
    sim.cache_policy = FixedPlan(bad, share, 1000)
    sim.reset(wl)
    with pytest.raises(ValueError, match="storage"):
        sim.view()
    sim.cache_policy = FixedPlan(plan, share * 2, 1000)
    sim.reset(wl)
    with pytest.raises(ValueError, match="shares"):
        sim.view()


# -- TD3's projection: always feasible -----------------------------------------------------------------------
@pytest.mark.parametrize("cache_action", fe.CACHE_ACTIONS)
@pytest.mark.parametrize("overrides", [{}, {"edge_storage_mb": [250.0, 300.0, 400.0, 900.0]}])
def test_td3_plan_is_always_feasible(overrides, cache_action):
    sim = make_simulator("factory", {**TINY_PRESET, **overrides})
    proj = fe.projection_for(sim, cache_action)
    rng = np.random.default_rng(0)
    B = 500
    a = np.concatenate([rng.uniform(-1, 1, (B, 2 * sim.N * sim.L)), rng.choice([-1.0, 1.0], (B, 2 * sim.N * sim.L)),
                        rng.normal(0, 3, (B, 2 * sim.N * sim.L))])
    current = rng.random((a.shape[0], sim.N, sim.L)) < 0.3
    with torch.no_grad():
        cache, share = proj(torch.from_numpy(a), torch.from_numpy(current))
    cache, share = cache.numpy(), share.numpy()
    used = (cache * sim.model_size_mb).sum(-1)
    assert np.all(used <= np.asarray(sim.preset.edge_storage_mb) + 1e-9)
    new = cache & ~current
    assert np.all(share[new] > 0) and np.all(share[~new] == 0) and np.all(share.sum(-1) <= 1 + 1e-12)
    assert cache.any()  # not vacuous: scores above 0.5 are cached
    # the simulator accepts every such plan
    wl = generate_workloads(sim, 1, 0)[0]
    for b in range(0, a.shape[0], 97):
        sim.cache_policy = FixedPlan(cache[b], share[b], 1000)
        sim.reset(wl)
        sim.cache[:] = current[b]  # the caches the projection saw (the plan's "new" is relative to them)
        sim.view()
        assert np.array_equal(sim.cache, cache[b])


def test_relative_cache_action_keeps_the_caches_at_zero_and_flips_past_one_half():
    sim = make_simulator("factory", TINY_PRESET)
    proj = fe.projection_for(sim, "relative")
    N, L = sim.N, sim.L
    # a feasible current layout with room left: the smallest model on every server
    current = torch.zeros(1, N, L, dtype=torch.bool)
    current[0, :, int(np.argmin(sim.model_size_mb))] = True
    a = torch.zeros(1, 2 * N * L, dtype=torch.float64)
    with torch.no_grad():
        cache, share = proj(a, current)
    assert torch.equal(cache, current) and not share.any()  # zero action = keep everything, nothing new
    held = torch.nonzero(current[0])[0]
    a_drop = a.clone()
    a_drop[0, held[0] * L + held[1]] = -0.6  # below -0.5: dropped
    with torch.no_grad():
        cache, _ = proj(a_drop, current)
    assert not cache[0, held[0], held[1]] and cache.sum() == current.sum() - 1
    n, m = next((n, m) for n in range(N) for m in range(L) if not current[0, n, m]
                and sim.model_size_mb[m] <= sim.preset.edge_storage_mb[n] - float((current[0, n].numpy() * sim.model_size_mb).sum()))
    for score, added in ((0.4, False), (0.6, True)):
        a_add = a.clone()
        a_add[0, n * L + m] = score
        with torch.no_grad():
            cache, share = proj(a_add, current)
        assert bool(cache[0, n, m]) == added and bool(share[0, n, m] > 0) == added
    with pytest.raises(Exception, match="cache_action"):
        fe.projection_for(sim, "sideways")


# -- training: tiny runs, repeatability, resume ----------------------------------------------------------------
@pytest.mark.parametrize("algo,cfg", [("factory_ladts", TINY_LADTS), ("factory_td3", TINY_TD3)])
def test_seeded_runs_repeat_exactly_and_resume_continues(tmp_path, algo, cfg):
    a, b, r = tmp_path / "a", tmp_path / "b", tmp_path / "r"
    over = {**TINY_PRESET, **cfg}
    train(algo, "factory", 3, a, over, episodes=4, progress=False)
    train(algo, "factory", 3, b, over, episodes=4, progress=False)
    ra = rows(a)
    assert ra == rows(b) and len(ra) == 4
    loss = "critic_loss"
    assert np.isfinite(float(ra[-1][loss]))
    train(algo, "factory", 3, r, over, episodes=2, progress=False)
    train(algo, "factory", 3, r, over, episodes=4, progress=False)
    assert rows(r) == ra
    cfgj = json.loads((a / "config.json").read_text())
    assert cfgj["scenario"] == "factory" and cfgj["config"]["gateways"] == "greedy"


def test_a_run_is_a_policy_that_installs_its_hook_only_for_its_own_episodes(tmp_path):
    over = {**TINY_PRESET, **TINY_LADTS}
    train("factory_ladts", "factory", 0, tmp_path / "l", over, episodes=2, progress=False)
    sim = make_simulator("factory", TINY_PRESET)
    ev = evaluate(sim, ["greedy", str(tmp_path / "l"), "greedy"], episodes=2, seed=4, progress=False)
    assert sim.edge_scheduler is None  # removed at the next reset: the later "greedy" ran with the default rule
    ref = evaluate(make_simulator("factory", TINY_PRESET), ["greedy"], episodes=2, seed=4, progress=False)
    assert ev.results["greedy"] == ref.results["greedy"]
    assert ev.results[str(tmp_path / "l")]["tasks"] == ref.results["greedy"]["tasks"]


# -- each agent beats its random baseline on the tiny plant ------------------------------------------------------
def _eval(sim, sched, cache, episodes=6, seed=11):
    gw = fe.make_gateway("greedy", sim)
    ms = [fe.run_edge_episode(sim, gw, w, seed, sched, cache) for w in generate_workloads(sim, episodes, seed)]
    return {k: float(np.mean([m[k] for m in ms])) for k in ("reward", "latency_s", "completion_rate")}


def test_ladts_scheduling_beats_random_scheduling_on_a_tiny_plant(tmp_path):
    over = {**TINY_PRESET, **TINY_LADTS, "checkpoint_every": 100, "updates_per_slot": 2}
    train("factory_ladts", "factory", 0, tmp_path / "l", over, episodes=25, progress=False)
    resolved, ckpt = fe._load_run(str(tmp_path / "l"))
    sim = make_simulator("factory", TINY_PRESET)
    ours = _eval(sim, fe.ladts_scheduler_from_run(resolved, ckpt, seed=11), None)
    rnd = _eval(sim, fe.RandomScheduler(11), None)
    assert ours["reward"] > rnd["reward"] + 0.05 and ours["latency_s"] < rnd["latency_s"], (ours, rnd)


def test_td3_caching_beats_random_caching_on_a_tiny_plant(tmp_path):
    over = {**TINY_PRESET, **TINY_TD3, "checkpoint_every": 100, "updates_per_step": 4}
    train("factory_td3", "factory", 0, tmp_path / "t", over, episodes=30, progress=False)
    resolved, ckpt = fe._load_run(str(tmp_path / "t"))
    sim = make_simulator("factory", TINY_PRESET)
    ours = _eval(sim, None, fe.td3_cache_policy_from_run(resolved, ckpt, sim))
    rnd = _eval(sim, None, fe.RandomCachePolicy(sim, TINY_TD3["period_slots"], 11))
    assert ours["reward"] > rnd["reward"] + 0.1 and ours["completion_rate"] > rnd["completion_rate"], (ours, rnd)


@pytest.mark.slow
def test_full_runs_train_on_the_shipped_plant(tmp_path):
    """The shipped plant, a short run of each agent under greedy: finite losses, every task terminal."""
    for algo in ("factory_ladts", "factory_td3"):
        train(algo, "factory", 0, tmp_path / algo, {"gateways": "greedy"}, episodes=30, progress=False)
        last = rows(tmp_path / algo)[-1]
        assert np.isfinite(float(last["critic_loss"])) and 0 < float(last["completion_rate"]) <= 1
