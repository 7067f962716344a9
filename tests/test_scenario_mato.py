"""MATO scenario: spec worked examples (docs/papers/mato.md 7.3), LRU caches, deadlines, determinism,
trace replay, the PettingZoo API and the exact per-step oracle."""

import copy
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from policies import cost
from policies.errors import PresetError, TraceError
from policies.evaluate import evaluate, generate_workloads, load_trace_workloads, run_episode, save_trace
from policies.heuristics import make_policy
from policies.scenarios import make_simulator
from policies.scenarios.base import OffloadDecision
from policies.scenarios.mato import MatoEnv, MatoSimulator
from policies.workload import Workload

CLI = Path(sys.executable).parent / "aigc-offload"
G_STAR = 255 * cost.noise_power_w(-174.0, 20e6) / 0.5  # full-band SNR 255: 160 Mbit/s (spec 7.3)


def _sim(**overrides) -> MatoSimulator:
    return make_simulator("mato", overrides)


def _workload(sim, xy, cache, types, size_mb=10.0, rho=100.0, f_ghz=2.0, gain=G_STAR) -> Workload:
    """Fading chosen so that every link's gain is ``gain``; tasks repeat each step."""
    M, T = sim.M, sim.T
    xy = np.asarray(xy, float)
    dist = np.maximum(np.linalg.norm(xy[:, None] - sim.server_xy[None], axis=-1), sim.preset.min_distance_m)
    fading = np.broadcast_to(gain / cost.channel_gain(dist), (T, M, sim.N)).copy()
    types = np.broadcast_to(np.asarray(types), (T, M)).ravel()
    size = np.full(T * M, size_mb)
    tasks = {"slot": np.repeat(np.arange(T), M), "source": np.tile(np.arange(M), T), "model_type": types,
             "size_mb": size, "cycles_per_bit": np.full(T * M, rho),
             "deadline_s": 0.07 * size * 8}
    params = {"device_xy_m": xy, "device_cpu_ghz": np.full(M, f_ghz), "fading": fading,
              "initial_cache": np.asarray(cache)}
    return Workload("mato", 0, params, {k: np.asarray(v) for k, v in tasks.items()})


def _decide(target, share=None, download=None):
    return OffloadDecision(target=np.asarray(target, np.int64),
                           share=None if share is None else np.asarray(share, float),
                           download=None if download is None else np.asarray(download, bool))


# -- worked examples (spec 7.3) ---------------------------------------------------------------
def test_example1_partial_offload_cached():
    sim = _sim(num_devices=1, num_model_types=3, slots_per_episode=2)
    sim.reset(_workload(sim, [[250, 400]], [[0, 1], [0, 2], [1, 2]], [1]))
    assert sim.deadline[0, 0] == pytest.approx(5.6)
    sim.step(_decide([1], [0.5], [False]))
    assert sim.latency_s[0, 0] == pytest.approx(2.0)
    assert sim.energy_j[0, 0] == pytest.approx(2.085)
    assert sim.completed[0, 0] and sim.hit[0, 0] and not sim.downloaded[0, 0]
    assert sim.step_reward(0) == pytest.approx(-2.0425)
    c = _sim(num_devices=1, num_model_types=3, slots_per_episode=2, energy_aggregate="sum")
    c.reset(_workload(c, [[250, 400]], [[0, 1], [0, 2], [1, 2]], [1]))
    c.step(_decide([1], [0.5], [False]))
    assert c.energy_j[0, 0] == pytest.approx(3.685)


def test_example2_missing_model_download_or_fail():
    sim = _sim(num_devices=1, num_model_types=3, slots_per_episode=2)
    wl = _workload(sim, [[250, 400]], [[0, 2], [0, 2], [0, 2]], [1])
    assert sim.model_bits[1] == pytest.approx(1.36e9)
    sim.reset(wl)
    sim.step(_decide([1], [0.5], [True]))  # (a) beta = 1
    assert sim.latency_s[0, 0] == pytest.approx(2.21)
    assert sim.energy_j[0, 0] == pytest.approx(3.445)
    assert sim.completed[0, 0] and sim.downloaded[0, 0]
    assert sim.step_reward(0) == pytest.approx(-2.8275)
    assert sim.cache_order(0) == [2, 1]  # appended at the MRU end, LRU model 0 evicted
    sim.reset(wl)
    sim.step(_decide([1], [0.5], [False]))  # (b) beta = 0: FAILED
    assert sim.failed[0, 0] and not sim.completed[0, 0]
    assert sim.latency_s[0, 0] == pytest.approx(2.0)
    assert sim.energy_j[0, 0] == pytest.approx(1.6)
    assert sim.step_reward(0) == pytest.approx(-6.8)
    assert sim.cache_order(0) == [0, 2]  # unchanged


def test_example3_two_offloaders_share_band_and_cpu():
    sim = _sim(num_devices=2, num_model_types=3, slots_per_episode=1)
    sim.reset(_workload(sim, [[250, 400], [400, 250]], [[0, 1], [0, 2], [1, 2]], [1, 1]))
    sim.step(_decide([1, 1], [1.0, 1.0], [False, False]))
    np.testing.assert_allclose(sim.latency_s[0], 8e7 / (1e7 * np.log2(511)) + 2.3, rtol=1e-9)
    np.testing.assert_allclose(sim.latency_s[0], 3.1892, atol=1e-4)
    np.testing.assert_allclose(sim.energy_j[0], 4.3646, atol=1e-4)
    assert sim.completed[0].all()
    assert sim.step_reward(0) == pytest.approx(-7.5538, abs=1e-3)
    alone = sim.task_costs(0, 0, 1.0, False, 1, t=0)
    assert float(alone.latency_s) == pytest.approx(1.7)


def test_example4_greedy_and_lru():
    sim = _sim(num_devices=2, num_model_types=3, slots_per_episode=2)
    sim.reset(_workload(sim, [[100, 100], [900, 900]], [[0, 1], [2, 0], [1, 2]], [[2, 0], [2, 0]]))
    np.testing.assert_allclose(sim.distance_m[0], [212.13, 667.08, 763.22], atol=0.01)
    np.testing.assert_allclose(sim.distance_m[1], [919.24, 667.08, 427.2], atol=0.01)
    greedy = make_policy("greedy", sim)
    greedy.reset(np.random.default_rng(0))
    d = greedy.decide(sim.view())
    np.testing.assert_array_equal(d.target, [2, 2])
    np.testing.assert_array_equal(d.share, [1.0, 1.0])
    sim.step(d)
    assert sim.hit[0].all()
    assert sim.cache_order(1) == [2, 0]
    sim.step(_decide([1, 0], [1.0, 0.0], [True, False]))
    assert sim.downloaded[1, 0]
    assert sim.cache_order(0) == [1, 2]


# -- invariants --------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["random", "round_robin", "greedy", "opt"])
def test_cache_capacity_deadlines_and_flags(policy):
    sim = _sim(num_devices=8)
    wl = sim.generate_workload(np.random.default_rng(3), 0)
    pol = make_policy(policy, sim)
    sim.reset(wl)
    pol.reset(np.random.default_rng(1), oracle=sim if pol.needs_oracle else None)
    while not sim.done:
        before = sim.cache.copy()
        t = sim.t
        sim.step(pol.decide(sim.view()))
        assert (sim.cache.sum(axis=1) == sim.preset.cache_capacity).all()
        # a model enters an ES only by a download to it in that step
        new = sim.cache & ~before
        for n, m in zip(*np.nonzero(new)):
            assert np.any(sim.downloaded[t] & (sim.mu[t] == m))
    assert sim.decisions == sim.M * sim.T
    ok = ~sim.failed & (sim.latency_s <= sim.deadline + 1e-9)
    np.testing.assert_array_equal(sim.completed, ok)
    assert not (sim.hit & sim.downloaded).any()
    assert not (sim.failed & sim.downloaded).any()
    assert (sim.latency_s > 0).all() and (sim.energy_j > 0).all()


def test_properties_of_the_cost_model():
    sim = _sim(num_devices=4)
    sim.reset(sim.generate_workload(np.random.default_rng(5), 0))
    a = np.arange(4)
    local = sim.task_costs(a, 0, 0.0, False, 1)
    full = sim.task_costs(a, 1, 1.0, True, 1)
    np.testing.assert_allclose(local.latency_s, cost.compute_delay_s(sim.cycles[0], sim.device_hz, 0.1))
    assert not local.downloaded.any() and not local.failed.any()
    # more offloaders on an ES never make a task faster there
    lat = sim.task_costs(a[:, None], 1, 1.0, True, np.arange(1, 5)[None]).latency_s
    assert (np.diff(lat, axis=1) >= -1e-12).all()
    # eta = 1: no local part, so latency is the edge path alone
    assert (full.latency_s > 0).all()
    slow = sim.task_costs(a, 0, 0.0, False, 1)
    sim.device_hz = sim.device_hz * 2
    assert (sim.task_costs(a, 0, 0.0, False, 1).latency_s <= slow.latency_s).all()


# -- determinism and traces -------------------------------------------------------------------
def test_determinism_and_trace_replay(tmp_path):
    sim = _sim()
    w1, w2 = generate_workloads(sim, 2, seed=7), generate_workloads(sim, 2, seed=7)
    for name in ("random", "greedy", "opt"):
        pol = make_policy(name, sim)
        assert run_episode(sim, pol, w1[0], 7) == run_episode(sim, pol, w2[0], 7)
    path = tmp_path / "mato.jsonl"
    save_trace(sim, str(path), w1)
    back = load_trace_workloads(sim, str(path), None)
    for name in ("random", "greedy", "opt"):
        pol = make_policy(name, sim)
        for a, b in zip(w1, back):
            assert run_episode(sim, pol, a, 7) == run_episode(sim, pol, b, 7)
    res = evaluate(sim, ["greedy"], 2, 7, trace=str(path), progress=False)
    assert res.results["greedy"] == evaluate(sim, ["greedy"], 2, 7, progress=False).results["greedy"]


def test_workload_that_does_not_fit_raises():
    sim = _sim()
    wl = sim.generate_workload(np.random.default_rng(0), 0)
    other = _sim(num_devices=5)
    with pytest.raises(TraceError, match="device_xy_m"):
        other.reset(wl)
    bad = copy.deepcopy(wl)
    bad.params["initial_cache"] = np.array([[0, 0], [1, 2], [3, 4]])
    with pytest.raises(TraceError, match="twice"):
        sim.reset(bad)
    bad = copy.deepcopy(wl)
    bad.tasks["model_type"] = bad.tasks["model_type"] + 6
    with pytest.raises(TraceError, match="model types"):
        sim.reset(bad)
    short = _sim(num_model_types=3)
    with pytest.raises(TraceError):
        short.reset(wl)


def test_bad_preset_raises():
    with pytest.raises(PresetError, match="cache_capacity"):
        _sim(num_model_types=3, cache_capacity=4)
    with pytest.raises(PresetError, match="num_model_types"):
        _sim(num_model_types=7)
    with pytest.raises(PresetError, match="energy_aggregate"):
        _sim(energy_aggregate="mean")


# -- policies -----------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [{}, {"num_model_types": 3, "num_devices": 5},
                                       {"num_devices": 20}, {"model_aware": False}])
def test_every_policy_runs_with_valid_metrics(overrides):
    sim = _sim(slots_per_episode=5, **overrides)
    res = evaluate(sim, list(sim.POLICIES), 1, 0, progress=False)
    for pol, m in res.results.items():
        for k in ("completion_rate", "drop_rate", "hit_rate", "failed_rate"):
            assert 0.0 <= m[k] <= 1.0, (pol, k)
        assert m["completion_rate"] + m["drop_rate"] == pytest.approx(1.0)
        assert m["latency_s"] > 0 and m["energy_j"] > 0 and m["reward"] < 0
        if not sim.preset.model_aware:
            assert m["failed_rate"] == 0.0  # NoModel: the servers download by themselves
    assert res.results["local"]["offload_rate"] == 0.0
    assert res.results["greedy"]["hit_rate"] == 1.0 or not sim.preset.model_aware
    assert res.results["greedy"]["download_rate"] == 0.0 or not sim.preset.model_aware
    assert res.results["random"]["failed_rate"] == 0.0


def test_sanity_orderings():
    sim = _sim()
    res = evaluate(sim, ["random", "greedy", "local", "opt"], 3, 1, progress=False).results
    for other in ("random", "greedy", "local"):
        assert res["opt"]["reward"] > res[other]["reward"]
        assert res["opt"]["completion_rate"] >= res[other]["completion_rate"]
    assert res["local"]["completion_rate"] > res["random"]["completion_rate"]


def test_opt_is_the_per_step_optimum_against_brute_force():
    sim = _sim(num_devices=3, opt_share_steps=3, slots_per_episode=3)
    sim.reset(sim.generate_workload(np.random.default_rng(11), 0))
    opt = make_policy("opt", sim)
    opt.reset(np.random.default_rng(0), oracle=sim)
    etas = np.array([0.0, 1 / 3, 2 / 3, 1.0])
    while not sim.done:
        # every joint action: 3 servers x 4 shares x 2 flags per ED (share 0 = local)
        per = np.array(list(itertools.product(range(3), range(4), range(2))))
        joint = np.array(list(itertools.product(range(len(per)), repeat=3)))  # (24^3, 3)
        srv, eta, beta = per[joint, 0], etas[per[joint, 1]], per[joint, 2].astype(bool)
        off = eta > 0
        k = np.stack([((srv == n) & off).sum(axis=1) for n in range(3)], axis=1)
        kk = np.take_along_axis(k, srv, axis=1)
        brute = sim.task_costs(np.arange(3)[None], srv, eta, beta, kk).cost.sum(axis=1).min()
        d = opt.decide(sim.view())
        assert opt.last_value == pytest.approx(brute, abs=1e-9)
        t = sim.t
        sim.step(d)
        assert sim.task_cost[t].sum() == pytest.approx(brute, abs=1e-9)


def test_opt_beats_heuristics_on_every_step_state():
    sim = _sim(num_devices=6, slots_per_episode=6)
    sim.reset(sim.generate_workload(np.random.default_rng(2), 0))
    opt = make_policy("opt", sim)
    opt.reset(np.random.default_rng(0), oracle=sim)
    others = {n: make_policy(n, sim) for n in ("random", "round_robin", "greedy", "local")}
    for p in others.values():
        p.reset(np.random.default_rng(0))
    while not sim.done:
        view = sim.view()
        for p in others.values():
            twin = copy.deepcopy(sim)
            t = twin.t
            twin.step(p.decide(view))
            assert np.isfinite(twin.task_cost[t]).all()
            best = copy.deepcopy(sim)
            best.step(opt.decide(view))
            assert best.task_cost[t].sum() <= twin.task_cost[t].sum() + 1e-9
        sim.step(opt.decide(view))


# -- RL wrapper and CLI --------------------------------------------------------------------------
def test_pettingzoo_api():
    parallel_api_test(MatoEnv(seed=0), num_cycles=40)


def test_env_team_and_individual_rewards():
    env = MatoEnv(seed=3)
    obs, _ = env.reset()
    assert set(obs) == set(env.possible_agents) and obs["ed_0"].shape == (25,)
    total, steps = 0.0, 0
    while env.agents:
        acts = {a: env.action_space(a).sample() for a in env.agents}
        _, rew, term, trunc, info = env.step(acts)
        assert len(set(rew.values())) == 1  # team reward
        total += rew["ed_0"]
        steps += 1
    assert steps == env.sim.T and all(trunc.values()) and not any(term.values())
    assert total / steps == pytest.approx(env.sim.episode_metrics()["reward"])
    ind = MatoEnv(seed=3, reward_mode="individual")
    ind.reset()
    _, rew, *_ = ind.step({a: np.array([1, 0, 0, 0.5, 1], np.float32) for a in ind.agents})
    assert sum(rew.values()) == pytest.approx(ind.sim.step_reward(0))


def test_env_action_mapping():
    env = MatoEnv(seed=1)
    env.reset()
    d = env.decision({"ed_0": np.array([0.1, 0.9, 0.2, 0.4, 0.7]), "ed_1": np.array([0.9, 0, 0, 0.0, 0.0])})
    assert d.target[0] == 2 and d.share[0] == pytest.approx(0.4) and d.download[0]
    assert d.target[1] == 0 and not d.download[1]
    assert (d.target[2:] == 0).all()  # missing agents run locally


def test_cli_evaluate_json():
    out = subprocess.run([str(CLI), "evaluate", "--scenario", "mato", "--policies",
                          "random,round_robin,greedy,local,opt", "--episodes", "2", "--seed", "0", "--json"],
                         capture_output=True, text=True, check=True)
    res = json.loads(out.stdout)["results"]
    assert set(res) == {"random", "round_robin", "greedy", "local", "opt"}
    assert res["opt"]["completion_rate"] >= res["local"]["completion_rate"]
