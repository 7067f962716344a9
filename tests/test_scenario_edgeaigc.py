"""EdgeAIGC scenario: worked examples of the spec (7.1-7.3), queue invariants, projection, policies,
determinism, trace replay, the gymnasium checker and the CLI."""

import itertools
import json
import math

import numpy as np
import pytest

from policies import cost
from policies.cli import main
from policies.config import load_preset
from policies.errors import TraceError
from policies.evaluate import evaluate, load_trace_workloads, run_episode, save_trace
from policies.heuristics import make_policy
from policies.scenarios.edgeaigc import (
    AllocationDecision,
    AllocationView,
    EdgeAigcEnv,
    EdgeAigcSimulator,
    OptAllocation,
    knapsack_repair,
    model_catalogue,
    project_batch,
    slot_outcome,
)
from policies.workload import episode_rng


@pytest.fixture(scope="module")
def sim():
    return EdgeAigcSimulator(load_preset("edgeaigc"))


def _example_b():
    """Spec 7.2: one ES (ES2 far away and empty), users at 0.2/0.5/0.3 km, models 1, 2, 3."""
    p = load_preset("edgeaigc", {"num_users": 3})
    _, size, flop = model_catalogue(p)
    view = AllocationView(
        slot=0, gamma_state=0, model=np.array([0, 1, 2]), input_mb=np.array([6.0, 4.0, 8.0]),
        output_mb=np.array([505.0, 525.0, 545.0]), fading=np.array([1.0, 0.5, 2.0]),
        distance_m=np.array([[200.0, 500.0, 300.0], [7000.0, 7000.0, 7000.0]]),
        storage_gb=np.array([40.0, 40.0]), uplink_hz=np.array([15e6, 15e6]), downlink_hz=np.array([35e6, 35e6]),
        gpus=np.array([27.0, 27.0]), model_size_gb=size, model_flop=flop, prev_counts=np.zeros(20, dtype=np.int64))
    cache = np.zeros((2, 20), dtype=bool)
    cache[0, [0, 1]] = True
    alpha = np.zeros((2, 3))
    alpha[0] = [0.4, 0.4, 0.2]
    comp = np.zeros((2, 3))
    comp[0] = [0.5, 0.5, 0.0]
    return p, view, AllocationDecision(cache, alpha, comp, np.zeros(3, dtype=np.int64))


# ---------------------------------------------------------------------------- worked examples
def test_example_a_rates():
    """Spec 7.1: D = 0.2 km, |delta|^2 = 1, alpha = 0.1 of 15 MHz up, 35 MHz down."""
    h = cost.channel_gain(200.0, 1.0)
    assert h == pytest.approx(6.5785e-11, rel=1e-3)
    r_up = cost.fdma_rate_bps(0.1, 15e6, cost.dbm_to_w(23.0), h, -174.0)
    assert r_up == pytest.approx(16.654e6, rel=1e-3)
    assert cost.transmission_delay_s(6 * cost.BITS_PER_MB, r_up) == pytest.approx(2.8822, rel=1e-3)
    r_down = cost.shannon_rate_bps(35e6, cost.dbm_to_w(43.0), h, cost.noise_power_w(-174.0, 35e6))
    assert r_down == pytest.approx(462.059e6, rel=1e-3)
    assert cost.transmission_delay_s(530 * cost.BITS_PER_MB, r_down) == pytest.approx(9.1763, rel=1e-3)


def test_example_b_full_objective():
    """Spec 7.2: two hits and a miss on one ES, FIFO downlink, costs, storage, G and r."""
    p, view, dec = _example_b()
    dec.validate(view)
    o = slot_outcome(p, view, dec.cache[None], dec.bandwidth_share[None], dec.compute_share[None],
                     dec.association[None])
    np.testing.assert_allclose(o.ready_s[0], [3.2528, 4.5900, 8860.0109], rtol=1e-4)
    np.testing.assert_allclose(o.response_s[0], [11.9963, 28.5694, 8870.3897], rtol=1e-5)
    np.testing.assert_allclose(o.wait_s[0], [0.0, 7.4063, 0.0], atol=1e-3)
    np.testing.assert_allclose(o.cost[0], [230.4051, 266.0564, 634.7077], rtol=1e-6)
    assert o.hit[0].tolist() == [True, True, False]
    assert o.storage_cost[0] == pytest.approx(3.6)
    assert o.objective[0] == pytest.approx(5022.8623, rel=1e-6)
    assert -o.objective[0] / 3 == pytest.approx(-1674.2874, rel=1e-6)


def test_example_c_popularity_and_share_rules():
    """Spec 7.3: Zipf, stationary regime mix, sqrt rule, projection floors and knapsack repair."""
    z = cost.zipf_probabilities(20, 0.8)
    assert z[0] == pytest.approx(0.2123, abs=1e-4) and z[1] == pytest.approx(0.1219, abs=1e-4)
    assert z[19] == pytest.approx(0.0193, abs=1e-4)
    assert cost.zipf_probabilities(20, 0.2)[0] == pytest.approx(0.0753, abs=1e-4)
    P = np.asarray(load_preset("edgeaigc").gamma_transition)
    pi = np.array([9, 16, 10]) / 35
    np.testing.assert_allclose(pi @ P, pi, atol=1e-12)
    x = cost.sqrt_optimal_shares(np.array([4.0, 1.0]))
    np.testing.assert_allclose(x, [2 / 3, 1 / 3])
    assert (np.array([4.0, 1.0]) / x).sum() == pytest.approx(9.0)
    L = cost.sqrt_optimal_shares(np.array([10.0, 12.5]))
    np.testing.assert_allclose(L, [0.4721, 0.5279], atol=1e-4)
    # alpha projection: E = 1, three associated users, raw (0.9, 0.6, 0.0005)
    p, view, _ = _example_b()
    E, M, U = 2, 20, 3
    raw = np.zeros(E * M + 2 * E * U)
    raw[:M] = 1.0  # ES0 wants every model: repair keeps what fits 40 GB in index order
    raw[E * M:E * M + U] = [0.9, 0.6, 0.0005]  # alpha scores at ES0 (ES1's stay 0 -> all associate to ES0)
    raw[E * M + E * U:E * M + E * U + U] = 0.7
    dec = AllocationDecision.project(view, raw)
    assert dec.association.tolist() == [0, 0, 0]
    np.testing.assert_allclose(dec.bandwidth_share[0], [0.5996, 0.3997, 0.000666], atol=1e-4)
    # beta repair: capacity 10 GB, sizes (4, 5, 6), scores (0.9, 0.8, 0.7) -> (1, 1, 0)
    got = knapsack_repair(np.array([[[0.9, 0.8, 0.7]]]), np.array([4.0, 5.0, 6.0]), np.array([10.0]))
    assert got[0, 0].tolist() == [True, True, False]


# ---------------------------------------------------------------------------- queue and projection
def _slot(sim, seed=3, t=0):
    sim.reset(sim.generate_workload(np.random.default_rng(seed), 0))
    return sim.view(t)


def test_downlink_fifo_invariants(sim):
    """Per ES: non-preemptive FIFO by ready time, work-conserving, waits never negative."""
    rng = np.random.default_rng(5)
    view = _slot(sim)
    p = sim.preset
    x = rng.random((40, p.action_dim))
    cache, alpha, comp, assoc = project_batch(view, x, p.association, p.share_floor)
    o = slot_outcome(p, view, cache, alpha, comp, assoc)
    service = o.response_s - o.wait_s - o.ready_s
    assert np.all(o.wait_s >= -1e-9) and np.all(service > 0) and np.all(np.isfinite(o.response_s))
    for b in range(40):
        for j in range(view.num_edges):
            users = np.flatnonzero(assoc[b] == j)
            order = users[np.lexsort((users, o.ready_s[b, users]))]
            free = 0.0
            for i in order:  # reference recursion start = max(ready, previous finish)
                free = max(o.ready_s[b, i], free) + service[b, i]
                assert o.response_s[b, i] == pytest.approx(free, rel=1e-9)


def test_projection_always_feasible(sim):
    view = _slot(sim, seed=9, t=4)
    rng = np.random.default_rng(1)
    for _ in range(50):
        dec = sim.project(view, rng.random(sim.preset.action_dim) ** rng.uniform(0.2, 5))
        dec.validate(view)


def test_infeasible_decisions_are_rejected(sim):
    view = _slot(sim)
    E, U, M = sim.E, sim.U, sim.M
    full = np.ones((E, M), dtype=bool)  # 120 GB catalogue never fits 30..50 GB
    eq = np.full((E, U), 1.0 / U)
    with pytest.raises(ValueError, match="storage"):
        AllocationDecision(full, eq, eq, np.zeros(U, dtype=np.int64)).validate(view)
    none = np.zeros((E, M), dtype=bool)
    with pytest.raises(ValueError, match="sum to more than 1"):
        AllocationDecision(none, np.ones((E, U)), eq, np.zeros(U, dtype=np.int64)).validate(view)
    with pytest.raises(ValueError, match="ES index"):
        AllocationDecision(none, eq, eq, np.full(U, E, dtype=np.int64)).validate(view)


# ---------------------------------------------------------------------------- opt
def test_opt_knapsack_is_exact_against_enumeration(sim):
    """The MILP caching equals brute force over every (none / ES0 / ES1) assignment of the requested models."""
    for seed in range(4):
        view = _slot(sim, seed=seed, t=seed % sim.T)
        pol = OptAllocation(sim.preset)
        pol.reset(np.random.default_rng(0), oracle=sim)
        v = pol.cache_values(view)
        got = pol.solve_cache(view)
        items = np.unique(view.model)
        best = 0.0
        for assign in itertools.product(range(3), repeat=items.size):
            a = np.array(assign)
            load = [view.model_size_gb[items[a == j + 1]].sum() for j in range(2)]
            if all(load[j] <= view.storage_gb[j] + 1e-9 for j in range(2)):
                best = max(best, float(v[items[a > 0]].sum()))
        assert (v * got.any(axis=0)).sum() == pytest.approx(best)
        assert got.sum(axis=0).max() <= 1


def test_opt_is_feasible_and_beats_equal_shares(sim):
    view = _slot(sim, seed=2, t=1)
    pol = make_policy("opt", sim)
    pol.reset(np.random.default_rng(0), oracle=sim)
    dec = pol.relaxed(view)
    dec.validate(view)
    refined = pol.decide(view)
    refined.validate(view)
    # the PSO refinement only ever lowers the slot's true G
    assert sim.evaluate(view, refined).objective[0] <= sim.evaluate(view, dec).objective[0] + 1e-9
    # sqrt-optimal shares: the sum of upload + compute times is not above equal shares on the same cache
    o = sim.evaluate(view, dec)
    hm = (dec.association[None, :] == np.arange(sim.E)[:, None]) & o.hit[0][None, :]
    eq_comp = np.where(hm, 1.0 / np.maximum(hm.sum(axis=1, keepdims=True), 1), 0.0)
    eq = AllocationDecision(dec.cache, dec.bandwidth_share, eq_comp, dec.association)
    assert sim.evaluate(view, dec).ready_s.sum() <= sim.evaluate(view, eq).ready_s.sum() + 1e-9


# ---------------------------------------------------------------------------- policies and metrics
@pytest.fixture(scope="module")
def results(sim):
    return evaluate(sim, list(sim.POLICIES), episodes=2, seed=0, progress=False).results


def test_every_policy_gives_valid_metrics(sim, results):
    assert list(results) == list(sim.POLICIES)
    for pol, m in results.items():
        for k in ("hit_rate", "latency_s", "cost", "reward", "objective"):
            assert math.isfinite(m[k]), (pol, k)
        assert 0.0 <= m["hit_rate"] <= 1.0
        assert m["latency_s"] > 0 and m["cost"] > 0 and m["reward"] < 0
        assert m["reward"] == pytest.approx(-m["objective"] * sim.T / sim.U)


def test_sanity_orderings(results):
    """The per-slot reference caches every requested model at U = 10 (spec 4.4: 0.999-1.0) and has the
    best objective; popularity-aware caching beats random caching."""
    assert results["opt"]["hit_rate"] >= 0.99
    for pol in ("random", "round_robin", "greedy"):
        assert results["opt"]["objective"] < results[pol]["objective"]
        assert results["opt"]["hit_rate"] > results[pol]["hit_rate"]
    assert results["greedy"]["hit_rate"] > results["random"]["hit_rate"]
    assert results["greedy"]["objective"] < results["random"]["objective"]


def test_slow_cloud_dominates(sim):
    """A miss at 500 kbps costs ~8,600 s: latency falls sharply with a 500 Mbps edge-cloud link."""
    fast = EdgeAigcSimulator(load_preset("edgeaigc", {"cs_rate_bps": 5e8}))
    wl = sim.generate_workload(episode_rng(0, 0, 0), 0)
    slow_m = run_episode(sim, make_policy("greedy", sim), wl, 0)
    fast_m = run_episode(fast, make_policy("greedy", fast), wl, 0)
    assert fast_m["hit_rate"] == slow_m["hit_rate"] < 1.0
    assert fast_m["latency_s"] < slow_m["latency_s"] / 10


def test_determinism_and_trace_replay(sim, tmp_path):
    wls = [sim.generate_workload(episode_rng(4, k, 0), k) for k in range(2)]
    again = [sim.generate_workload(episode_rng(4, k, 0), k) for k in range(2)]
    for a, b in zip(wls, again):
        for k in a.tasks:
            np.testing.assert_array_equal(a.tasks[k], b.tasks[k])
    path = tmp_path / "edgeaigc.jsonl"
    assert save_trace(sim, str(path), wls) == 2 * sim.T * sim.U
    replay = load_trace_workloads(sim, str(path), None)
    for name in ("random", "greedy", "pso"):
        for wl, rw in zip(wls, replay):
            m1 = run_episode(sim, make_policy(name, sim), wl, 4)
            m2 = run_episode(sim, make_policy(name, sim), rw, 4)
            m3 = run_episode(sim, make_policy(name, sim), wl, 4)
            assert m1 == m2 == m3


def test_workload_mismatch_raises(sim):
    small = EdgeAigcSimulator(load_preset("edgeaigc", {"num_users": 5}))
    wl = small.generate_workload(np.random.default_rng(0), 0)
    with pytest.raises(TraceError, match="user_xy_km"):
        sim.reset(wl)
    wl = sim.generate_workload(np.random.default_rng(0), 0)
    wl.params["storage_gb"] = np.array([40.0])
    with pytest.raises(TraceError, match="storage_gb"):
        sim.reset(wl)


def test_user_sweep_and_rich_observation():
    s = EdgeAigcSimulator(load_preset("edgeaigc", {"num_users": 30, "obs": "rich"}))
    s.reset(s.generate_workload(np.random.default_rng(0), 0))
    obs = s.observation(s.view())
    assert obs.shape == (1, 3 + 3 * 30 + 30 * 20 + 2 * 30 + 20 + 2) == (1, s.obs_dim())
    assert EdgeAigcSimulator(load_preset("edgeaigc")).obs_dim() == 233
    m = run_episode(s, make_policy("opt", s), s.workload, 0)
    assert 0.5 < m["hit_rate"] <= 1.0


def test_observation_encodes_state(sim):
    view = _slot(sim, seed=7, t=2)
    obs = sim.observation(view)[0]
    U, M = sim.U, sim.M
    assert obs[:3].tolist() == np.eye(3)[view.gamma_state].tolist()
    onehot = obs[3 + U:3 + U + U * M].reshape(U, M)
    assert onehot.argmax(axis=1).tolist() == view.model.tolist() and onehot.sum() == U
    np.testing.assert_allclose(obs[3 + U + U * M:3 + 2 * U + U * M], view.input_mb / 8, rtol=1e-6)


# ---------------------------------------------------------------------------- RL wrapper and CLI
def test_gymnasium_env_checker():
    from gymnasium.utils.env_checker import check_env

    env = EdgeAigcEnv(seed=1)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    total, steps, done = 0.0, 0, False
    while not done:
        obs, r, done, trunc, info = env.step(env.action_space.sample())
        total += info["reward_unscaled"]
        assert r == pytest.approx(info["reward_unscaled"] * 1e-3)
        env.last_decision.validate(env.sim.view(info["slot"]))
        assert env.last_decision.cache.tolist() == info["cache"].tolist()
        steps += 1
    assert steps == 10 and total == pytest.approx(env.sim.episode_metrics()["reward"])


def test_cli_evaluate_json(capsys):
    code = main(["evaluate", "--scenario", "edgeaigc", "--policies", "random,round_robin,greedy,opt",
                 "--episodes", "2", "--seed", "0", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["results"]) == {"random", "round_robin", "greedy", "opt"}
