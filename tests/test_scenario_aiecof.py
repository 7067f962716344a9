"""AIECOF scenario: worked examples of docs/papers/aiecof.md §7.4, queue invariants, opt, traces, env."""

import copy
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from policies.config import load_preset
from policies.cost import normalized_score_reward
from policies.errors import PresetError, TraceError
from policies.evaluate import evaluate, load_trace_workloads, run_episode, save_trace
from policies.heuristics import make_policy
from policies.scenarios.aiecof import AiecofEnv, AiecofOpt, AiecofSimulator
from policies.scenarios.base import OffloadDecision
from policies.workload import Workload


def _sim(**overrides) -> AiecofSimulator:
    return AiecofSimulator(load_preset("aiecof", overrides or None))


def _wl(rows, f_m, f_n):
    """rows: (slot, device, size_mbit, rho) in booking order."""
    slot, src, x, rho = (np.array(c) for c in zip(*rows))
    tasks = {"slot": slot.astype(np.int64), "source": src.astype(np.int64), "task_type": (src % 2).astype(np.int64),
             "size_mbit": x.astype(float), "density_cycles_per_bit": rho.astype(float)}
    return Workload("aiecof", 0, {"device_cpu_ghz": np.asarray(f_m, float), "edge_cpu_ghz": np.asarray(f_n, float)},
                    tasks)


def _run_fixed(sim, wl, targets_per_slot):
    sim.reset(wl)
    views = []
    for tg in targets_per_slot:
        views.append(sim.view())
        sim.step(OffloadDecision(target=np.asarray(tg, dtype=np.int64)))
    while not sim.done:
        sim.step(OffloadDecision(target=np.zeros(sim.view().n, dtype=np.int64)))
    return views


# ---- worked examples (spec §7.4) -----------------------------------------------------------------
def test_example1_local_queue_energy_loading():
    sim = _sim(num_devices=1, slots_per_episode=6)
    wl = _wl([(0, 0, 3, 120), (1, 0, 8, 150), (2, 0, 6, 125)], f_m=[4.0], f_n=sim.preset.edge_cpu_ghz())
    _run_fixed(sim, wl, [[0], [0], [0]])
    np.testing.assert_array_equal(sim.delay_slots, [1, 3, 4])
    np.testing.assert_allclose(sim.energy_j, [0.0576, 0.192, 0.14], rtol=1e-9)
    np.testing.assert_allclose(sim.loads[0, :6], [0.9, 0.98, 0.98, 0.98, 0.98, 0.9375], rtol=1e-12)
    m = sim.episode_metrics()
    assert m["load"] == pytest.approx(0.959583, abs=1e-6)
    assert m["latency_s"] == pytest.approx((0.1 + 0.3 + 0.4) / 3)
    assert m["drop_rate"] == 0.0
    assert sim.free_loc[0] == 6  # busy until slot 5 (b = 5)
    # reward of the first task (M = 1: sigma_L = 0): 0.25 (-log2(1) + (1 - 0.1) + 1)
    assert sim.reward[0] == pytest.approx(0.25 * 1.9, abs=1e-9)


def test_example2_backlog_and_deadline_drop():
    sim = _sim(num_devices=1, slots_per_episode=5)
    rows = [(t, 0, 8, 150) for t in range(4)] + [(4, 0, 2, 100)]
    _run_fixed(sim, _wl(rows, f_m=[3.0], f_n=sim.preset.edge_cpu_ghz()), [[0]] * 5)
    np.testing.assert_array_equal(sim.delay_slots, [4, 7, 10, 10, 10])
    np.testing.assert_array_equal(sim.dropped, [False, False, False, True, False])
    np.testing.assert_allclose(sim.energy_j[[1, 3, 4]], [0.138, 0.117, 0.108], rtol=1e-9)
    assert sim.free_loc[0] == 14  # the cut task held the CPU to t_end = 12, the last ran slot 13
    assert sim.episode_metrics()["drop_rate"] == pytest.approx(0.2)


def test_example3_transmit_queues_and_edge_booking():
    sim = _sim(num_devices=2, num_edges=2, edge_cpu_ghz_min=30.0, edge_cpu_ghz_max=31.686, slots_per_episode=2)
    rows = [(0, 0, 5, 140), (0, 1, 2.5, 112), (1, 0, 3, 100)]
    wl = _wl(rows, f_m=[4.0, 4.0], f_n=[30.0, 31.686])
    views = _run_fixed(sim, wl, [[1, 1], [1]])
    np.testing.assert_array_equal(sim.delay_slots, [5, 6, 7])
    np.testing.assert_allclose(sim.energy_j, [0.821429, 0.440714, 0.522857], atol=1e-6)
    obs = sim.observation(views[1])
    names = [f.name for f in sim.OBS_LAYOUT for _ in range(f.width)]
    q = obs[0, [i for i, nm in enumerate(names) if nm == "edge_backlog_s"]]
    np.testing.assert_allclose(q, [0.5, 0.0], atol=1e-7)  # Q_1 = (5 - 1 + 1) dt
    assert sim.free_tx[0, 0] == 7 and sim.free_es[0] == 8
    _run_fixed(sim, wl, [[1, 1], [2]])  # same task to ES2: own empty queue, ES2 slot 4
    assert sim.delay_slots[2] == 4
    assert sim.energy_j[2] == pytest.approx(0.492857, abs=1e-6)


def test_example4_reward_formula():
    e = [0.0576, 0.192, 0.14]
    d = [0.1, 0.3, 0.4]
    r = normalized_score_reward(0.14, np.mean(e), np.mean(d), 1.0, 1, 20, np.var([0.98, 0.90, 0.0]), [0.25] * 4)
    assert r == pytest.approx(0.344379, abs=1e-6)


# ---- invariants ----------------------------------------------------------------------------------
def test_queue_invariants_under_random():
    sim = _sim()
    wl = sim.generate_workload(np.random.default_rng(3), 0)
    pol = make_policy("random", sim)
    sim.reset(wl)
    pol.reset(np.random.default_rng(0))
    prev_es = sim.free_es.copy()
    prev_loc = sim.free_loc.copy()
    while not sim.done:
        t = sim.t
        sim.step(pol.decide(sim.view()))
        assert np.all(sim.free_es >= prev_es) and np.all(sim.free_loc >= prev_loc)  # pointers never go back
        assert np.all(sim.free_es <= t + sim.tau) and np.all(sim.free_tx <= t + sim.tau)
        prev_es, prev_loc = sim.free_es.copy(), sim.free_loc.copy()
    assert np.all((sim.delay_slots >= 1) & (sim.delay_slots <= sim.tau))
    assert np.all(sim.delay_slots[sim.dropped] == sim.tau)
    assert np.all(sim.energy_j > 0)
    assert np.all((sim.loads >= 0) & (sim.loads <= 0.98))
    # local FIFO: tasks of a device finish in arrival order and never overlap (a busy slot has one task)
    busy = sim.loads > 0
    loc = sim.target == 0
    assert busy.sum() <= sum(int(np.ceil(w / (sim.f_m_hz[m] * 0.1) - 1e-9))
                             for w, m in zip(sim.work[loc], sim.src[loc]))


def test_edge_serves_one_task_per_slot():
    """Every ES task takes one slot here, so completed ES tasks of one server end in distinct slots."""
    sim = _sim()
    wl = sim.generate_workload(np.random.default_rng(5), 0)
    metrics = run_episode(sim, make_policy("round_robin", sim), wl, 0)
    done_es = (~sim.dropped) & (sim.target > 0)
    end_slot = sim.slot_of + sim.delay_slots - 1
    pairs = set()
    for e, s in zip(sim.target[done_es], end_slot[done_es]):
        assert (e, s) not in pairs
        pairs.add((e, s))
    assert metrics["drop_rate"] > 0.3  # RR sends ~16 tasks/slot to 8 one-task-per-slot servers


def test_determinism_and_trace_replay(tmp_path):
    sim = _sim()
    a = evaluate(sim, ["random", "greedy"], episodes=2, seed=7, progress=False).results
    b = evaluate(sim, ["random", "greedy"], episodes=2, seed=7, progress=False).results
    assert a == b
    wls = [sim.generate_workload(np.random.default_rng(k), k) for k in range(2)]
    path = str(tmp_path / "aiecof.jsonl")
    save_trace(sim, path, wls)
    back = load_trace_workloads(sim, path, None)
    for w0, w1 in zip(wls, back):
        m0 = run_episode(sim, make_policy("round_robin", sim), w0, 1)
        m1 = run_episode(sim, make_policy("round_robin", sim), w1, 1)
        assert m0 == m1


def test_bad_workload_raises_trace_error():
    sim = _sim(num_devices=2)
    wl = _wl([(0, 1, 3, 120), (0, 0, 3, 120)], f_m=[4, 4], f_n=sim.preset.edge_cpu_ghz())
    with pytest.raises(TraceError, match="booking order"):
        sim.reset(wl)
    wl = _wl([(0, 0, 3, 120)], f_m=[4, 4, 4], f_n=sim.preset.edge_cpu_ghz())
    with pytest.raises(TraceError, match="2 devices"):
        sim.reset(wl)
    with pytest.raises(PresetError, match="density_min must not exceed"):
        load_preset("aiecof", {"density_min": 200})


# ---- policies ------------------------------------------------------------------------------------
def test_heuristics_near_spec_calibration_and_orderings():
    sim = _sim()
    res = evaluate(sim, ["random", "round_robin", "greedy", "local"], episodes=2, seed=0, progress=False).results
    rr, rnd, gr, loc = (res[k] for k in ("round_robin", "random", "greedy", "local"))
    # spec §2.1 prototype: RR 0.882 s / 0.444 / 1352 J / 0.122; Random 0.894 / 0.433 / 1345 / 0.108
    assert 0.84 < rr["latency_s"] < 0.92 and 0.40 < rr["drop_rate"] < 0.48 and 0.115 < rr["load"] < 0.135
    assert 1250 < rr["energy_episode_j"] < 1450
    assert 0.85 < rnd["latency_s"] < 0.93 and 0.39 < rnd["drop_rate"] < 0.48 and 0.095 < rnd["load"] < 0.13
    assert 0.10 < rr["local_share"] < 0.13
    # greedy / all-local: 0.367 s, 0 drops, loading 0.753 / 0.588 s, 0.279, 0.777
    assert gr["drop_rate"] == 0.0 and gr["latency_s"] < 0.42 and 0.70 < gr["load"] < 0.80
    assert 0.55 < loc["latency_s"] < 0.66 and 0.24 < loc["drop_rate"] < 0.33 and loc["local_share"] == 1.0
    assert loc["energy_j"] < gr["energy_j"] < rr["energy_j"]
    assert gr["reward"] > loc["reward"] > rr["reward"]
    for r in res.values():
        assert r["completion_rate"] + r["drop_rate"] == pytest.approx(1.0)
    short = _sim(slots_per_episode=30)
    res = evaluate(short, list(short.POLICIES), episodes=1, seed=0, progress=False).results
    opt, rr = res["opt"], res["round_robin"]
    assert opt["drop_rate"] < rr["drop_rate"] and opt["latency_s"] < rr["latency_s"]
    assert opt["energy_j"] < rr["energy_j"]
    for r in res.values():
        assert r["energy_j"] * r["tasks"] == pytest.approx(r["energy_episode_j"])


def _slot_cost(sim, p, r):
    dt = p.slot_s
    return float(np.sum(p.opt_delay_weight_per_s * sim.delay_slots[r] * dt + p.opt_energy_weight_per_j
                        * sim.energy_j[r] + p.opt_drop_penalty * sim.dropped[r]))


@pytest.mark.parametrize("overrides", [{}, {"opt_energy_weight_per_j": 1.0, "rate_mbps": 8.0}])
def test_opt_is_exact_per_slot_against_enumeration(overrides):
    """Brute force over all (N+1)^K joint targets of each slot, from the same state, on a busy small
    system (ES queues and deadlines bind); opt's objective must equal the enumerated minimum."""
    sim = _sim(num_devices=4, num_edges=2, edge_cpu_ghz_min=10.0, edge_cpu_ghz_max=12.0, slots_per_episode=12,
               arrival_prob_a=0.9, arrival_prob_b=0.9, density_min=300.0, density_max=400.0, **overrides)
    p = sim.preset
    wl = sim.generate_workload(np.random.default_rng(11), 0)
    sim.reset(wl)
    opt = AiecofOpt()
    opt.reset(np.random.default_rng(0), oracle=sim)
    rng = np.random.default_rng(1)
    checked = 0
    while not sim.done:
        view = sim.view()
        r = sim.rows()
        if view.n:
            dec = opt.decide(view)
            best = np.inf
            for combo in itertools.product(range(view.num_targets), repeat=view.n):
                trial = copy.deepcopy(sim)
                trial.step(OffloadDecision(target=np.array(combo, dtype=np.int64)))
                best = min(best, _slot_cost(trial, p, r))
            trial = copy.deepcopy(sim)
            trial.step(dec)
            assert _slot_cost(trial, p, r) == pytest.approx(best, abs=1e-7)
            assert opt.last_objective == pytest.approx(best, abs=1e-6)
            checked += 1
        # move on with a random decision so that later slots start from varied queues
        sim.step(OffloadDecision(target=rng.integers(0, view.num_targets, view.n)))
    assert checked >= 8


def test_round_robin_cycles_through_local_and_servers():
    sim = _sim(num_devices=2, num_edges=2)
    pol = make_policy("round_robin", sim)
    pol.reset(np.random.default_rng(0))
    wl = sim.generate_workload(np.random.default_rng(0), 0)
    sim.reset(wl)
    seen = {0: [], 1: []}
    while not sim.done:
        v = sim.view()
        d = pol.decide(v)
        for s, a in zip(v.source, d.target):
            seen[int(s)].append(int(a))
        sim.step(d)
    for seq in seen.values():
        assert seq == [k % 3 for k in range(len(seq))]


# ---- env and CLI -----------------------------------------------------------------------------------
def test_parallel_env_api_and_rewards():
    env = AiecofEnv(num_devices=6, slots_per_episode=20, seed=1)
    parallel_api_test(env, num_cycles=30)
    obs, infos = env.reset(seed=4)
    assert all(o.shape == (21,) for o in obs.values())
    total, steps = 0.0, 0
    rng = np.random.default_rng(0)
    while env.agents:
        acts = {a: int(rng.integers(0, 9)) for a in env.agents}
        obs, rew, term, trunc, infos = env.step(acts)
        total += sum(rew.values())
        steps += 1
    assert steps == 20
    assert total == pytest.approx(env.sim.episode_metrics()["reward"])
    env2 = AiecofEnv(obs_extras=True)
    assert env2.observation_space("device_0").shape == (5 + 2 * 8 + 1 + 8,)


def test_device_count_and_capacity_sweeps():
    for m in (20, 60):
        sim = _sim(num_devices=m)
        res = run_episode(sim, make_policy("greedy", sim), sim.generate_workload(np.random.default_rng(0), 0), 0)
        assert res["tasks"] > 0.5 * m * 100 * 0.9
    fast, slow = _sim(), _sim(edge_cpu_scale=0.25)  # f_n is an episode parameter: each sim draws its own
    wl_fast, wl_slow = (s.generate_workload(np.random.default_rng(0), 0) for s in (fast, slow))
    np.testing.assert_allclose(wl_slow.params["edge_cpu_ghz"], 0.25 * wl_fast.params["edge_cpu_ghz"])
    np.testing.assert_array_equal(wl_slow.tasks["size_mbit"], wl_fast.tasks["size_mbit"])  # same tasks
    res_slow = run_episode(slow, make_policy("round_robin", slow), wl_slow, 0)
    res_fast = run_episode(fast, make_policy("round_robin", fast), wl_fast, 0)
    assert res_slow["latency_s"] > res_fast["latency_s"] and res_slow["drop_rate"] > res_fast["drop_rate"]


def test_cli_evaluate_json():
    exe = Path(sys.executable).parent / "aigc-offload"
    out = subprocess.run([str(exe), "evaluate", "--scenario", "aiecof", "--policies",
                          "random,round_robin,greedy,local", "--episodes", "1", "--seed", "0", "--json"],
                         capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    assert set(data["results"]) == {"random", "round_robin", "greedy", "local"}
