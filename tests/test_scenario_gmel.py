"""GMEL scenario: spec worked examples (docs/papers/gmel.md 7.4), queue invariants, drops,
determinism, trace replay, the PettingZoo API and the oracle."""

import itertools
import json
import math
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
from policies.scenarios.gmel import STAGE_EDGE, STAGE_TX, GmelEnv, GmelSimulator
from policies.workload import Workload

CLI = Path(sys.executable).parent / "aigc-offload"


def _sim(**overrides) -> GmelSimulator:
    return make_simulator("gmel", overrides)


def _workload(sim, xy, tasks, fading=1.0) -> Workload:
    shape = (sim.T + sim.D_max, sim.I, sim.M)
    cols = {k: np.asarray(v, dtype=np.int64 if k in ("slot", "source") else np.float64) for k, v in tasks.items()}
    return Workload("gmel", 0, {"device_xy_m": np.asarray(xy, float), "fading": np.full(shape, fading)}, cols)


def _no_tasks():
    return {"slot": [], "source": [], "size_mb": [], "cycles_per_mb": [], "deadline_s": []}


def _target(n, t):
    return OffloadDecision(target=np.full(n, t, dtype=np.int64))


# -- worked examples ------------------------------------------------------------------------
def test_example1_local_queue_eq1_with_drops():
    sim = _sim(num_devices=1, slots_per_episode=5)
    wl = _workload(sim, [[50, 50]], {"slot": [0, 1, 2], "source": [0, 0, 0], "size_mb": [2, 4, 1],
                                     "cycles_per_mb": [0.3, 0.45, 0.2], "deadline_s": [1.0, 0.9, 0.7]})
    sim.reset(wl)
    np.testing.assert_array_equal(sim.D, [10, 9, 7])  # 0.7/0.1 = 6.999.. -> 7 with the epsilon
    np.testing.assert_array_equal(sim.local_slots, [3, 8, 1])
    for _ in range(3):
        sim.step(_target(sim.view().n, 0))
    assert sim.busy_until[0] == 10
    view = sim.agent_view()
    assert view.features["local_wait_s"][0] == pytest.approx(0.7)
    while not sim.done:
        sim.step(_target(sim.view().n, 0))
    np.testing.assert_array_equal(sim.resolve_at, [3, 10, 9])
    np.testing.assert_array_equal(sim.status, [1, 2, 2])
    m = sim.episode_metrics()
    assert m["completion_rate"] == pytest.approx(1 / 3)
    assert m["reward_per_task"] == pytest.approx((2.2 - 2.5 - 2.5) / 3)
    # the cost-model function alone gives the same three outcomes
    r, ok, b = cost.slotted_fifo_with_deadline([0, 3, 10], [0, 1, 2], [3, 8, 1], [10, 10, 9])
    np.testing.assert_array_equal(r, [3, 10, 9])
    np.testing.assert_array_equal(ok, [True, False, False])
    np.testing.assert_array_equal(b, [3, 10, 10])


def test_example2_edge_queues_eq2_sharing_and_drop():
    sim = _sim(num_devices=3, slots_per_episode=10)
    sim.reset(_workload(sim, [[50, 50]] * 3, _no_tasks(), fading=1.0))
    q, K = sim.q, sim.K
    # ES 0 has F = 10 GHz: 1.0 Gcycles per slot in total
    def put(dev, gen, D, e, cyc, stage, bits=0.0):
        k = gen % K
        q.stage[0, dev, k], q.gen[0, dev, k], q.dl[0, dev, k] = stage, gen, gen + D
        q.e[0, dev, k], q.rem_cyc[0, dev, k], q.rem_bits[0, dev, k] = e, cyc, bits
    put(0, 0, 7, 0.3, 0.9, STAGE_EDGE)  # X
    put(1, 2, 10, 0.25, 0.2, STAGE_EDGE)  # Y
    put(1, 3, 10, 0.2, 0.6, STAGE_EDGE)  # Z
    put(2, 4, 8, 0.4, 0.3, STAGE_TX, bits=1000.0)  # W, finishes sending in slot 5
    sim.t = 5
    done, drop, n_ec = sim._advance(q, 5, sim.gain[5].T, sim.bw_hz, sim.cpu_gcps)
    assert n_ec[0] == 2
    assert done[0, 1, 2 % K] and done.sum() == 1 and drop.sum() == 0  # Y completes at boundary 6
    assert q.rem_cyc[0, 0, 0] == pytest.approx(0.4)
    assert q.rem_cyc[0, 1, 3] == pytest.approx(0.3)
    assert q.stage[0, 2, 4] == STAGE_EDGE  # W handed over at boundary 6
    sim.t = 6
    np.testing.assert_allclose(sim.agent_view().features["edge_queue_mb"][:, 0], [4 / 3, 1.5, 0.75], rtol=1e-9)
    done, drop, n_ec = sim._advance(q, 6, sim.gain[6].T, sim.bw_hz, sim.cpu_gcps)
    assert n_ec[0] == 3
    assert done[0, 1, 3] and done[0, 2, 4] and done.sum() == 2  # Z and W complete at boundary 7
    assert drop[0, 0, 0] and drop.sum() == 1  # X: t_gen + D = 7 <= 7, unfinished
    assert q.rem_cyc[0, 0, 0] / 0.3 == pytest.approx(0.2222, abs=1e-4)  # xi^EC in MB
    assert not q.stage.any()


def test_example3_communication_queue_rates():
    g = cost.channel_gain(50.0, 1.0)
    assert g == pytest.approx(1.2075e-8, rel=1e-3)
    r1 = cost.shannon_rate_bps(1e6, 0.1, g, cost.noise_power_w(-174, 1e6))
    r10 = cost.shannon_rate_bps(10e6, 0.1, g, cost.noise_power_w(-174, 10e6))
    r5 = cost.shannon_rate_bps(5e6, 0.1, g, cost.noise_power_w(-174, 5e6))
    assert r1 == pytest.approx(18.21e6, rel=1e-3)
    assert r10 == pytest.approx(148.89e6, rel=1e-3)
    assert r5 == pytest.approx(79.44e6, rel=1e-3)


def test_example3b_alone_on_band_completes_in_four_slots():
    sim = _sim(num_devices=1, slots_per_episode=3)
    sim.reset(_workload(sim, [[50, 100]], {"slot": [0], "source": [0], "size_mb": [5.0],
                                           "cycles_per_mb": [0.18], "deadline_s": [0.5]}))
    sim.step(_target(1, 1))  # edge0: B = 10 MHz, F = 10 GHz, 50 m away
    assert sim.q.rem_bits[0, 0, 0] == pytest.approx(25.111e6, rel=1e-3)
    sim.step(_target(0, 0))
    assert sim.q.rem_bits[0, 0, 0] == pytest.approx(10.223e6, rel=1e-3)
    while not sim.done:
        sim.step(_target(sim.view().n, 0))
    assert sim.status[0] == 1 and sim.resolve_at[0] == 4
    assert sim.latency_s[0] == pytest.approx(0.4)
    assert sim.episode_metrics()["reward_per_task"] == pytest.approx(2.1)


def test_example3a_ten_queues_drop_at_deadline():
    sim = _sim(num_devices=10, slots_per_episode=2)
    ang = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    xy = np.c_[50 + 50 * np.cos(ang), 50 + 50 * np.sin(ang)]  # all 50 m from ES 0
    sim.reset(_workload(sim, xy, {"slot": [0] * 10, "source": range(10), "size_mb": [5.0] * 10,
                                  "cycles_per_mb": [0.3] * 10, "deadline_s": [0.5] * 10}))
    sim.step(_target(10, 1))
    for _ in range(3):
        sim._process_slot()
    np.testing.assert_allclose(sim.q.rem_bits[0, :, 0], 40e6 - 4 * 1.821e6, rtol=1e-3)
    sim._process_slot()  # slot 4; boundary 5 = deadline: every task is dropped from its uplink queue
    assert (sim.status == 2).all() and (sim.resolve_at == 5).all()
    assert not sim.q.stage.any()


# -- invariants -----------------------------------------------------------------------------
def test_queue_invariants_and_work_conservation():
    sim = _sim(slots_per_episode=40, task_probability=0.7)
    wl = generate_workloads(sim, 1, 3)[0]
    sim.reset(wl)
    pol = make_policy("random", sim)
    pol.reset(np.random.default_rng(0))
    while sim.t < sim.T - 1:  # the last step also drains; check the regular slots
        dec = pol.decide(sim.view())
        q = sim.q
        was_edge = q.stage == STAGE_EDGE  # V^EC is taken before this slot's handovers
        rem_before = q.rem_cyc.copy()
        sim.step(dec)
        assert (q.rem_bits >= -1e-6).all() and (q.rem_cyc >= -1e-9).all()
        assert set(np.unique(q.stage)) <= {0, 1, 2}
        offered = np.where(was_edge, rem_before, 0.0).sum(-1)  # (M, I) work in each edge queue
        served = np.where(was_edge, rem_before - q.rem_cyc, 0.0).sum(-1)
        active = (offered > 0).sum(-1)
        share = cost.equal_share(sim.cpu_gcps * sim.preset.slot_s, active)[:, None]
        # each non-empty queue gets min(its equal share, its work): work conserving, nothing lost
        np.testing.assert_allclose(served, np.minimum(offered, share), atol=1e-9)


def test_fifo_deadlines_and_drops_over_an_episode():
    sim = _sim(task_probability=0.6)
    wl = generate_workloads(sim, 1, 5)[0]
    run_episode(sim, make_policy("random", sim), wl, 0)
    assert (sim.status > 0).all()  # every task resolved
    ok = sim.status == 1
    assert np.all(sim.latency_s[ok] <= sim.deadline[ok] + 1e-9)
    assert np.all(sim.resolve_at[~ok] == sim.slot_of[~ok] + sim.D[~ok])  # drops at the deadline
    # FIFO: completed tasks of one (IED, target) queue finish in generation order
    for key in np.unique(sim.src_of * 10 + sim.target):
        sel = np.flatnonzero((sim.src_of * 10 + sim.target == key) & ok)
        assert np.all(np.diff(sim.resolve_at[sel]) >= 0)
    # offloaded tasks need >= 2 slots, local >= 1
    off = ok & (sim.target > 0)
    assert np.all(sim.resolve_at[off] - sim.slot_of[off] >= 2)


def test_fifo_serve_slot_is_fifo_and_work_conserving():
    rem = np.array([[0.2, 0.6, 0.0, 0.5], [1.0, 1.0, 1.0, 0.0]])
    served = cost.fifo_serve_slot(rem, np.array([0.5, 5.0]))
    np.testing.assert_allclose(served, [[0.2, 0.3, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])


# -- reproducibility -------------------------------------------------------------------------
def test_determinism_and_trace_replay(tmp_path):
    sim = _sim(slots_per_episode=30)
    a = evaluate(sim, ["random", "greedy"], episodes=2, seed=4, progress=False).results
    b = evaluate(sim, ["random", "greedy"], episodes=2, seed=4, progress=False).results
    assert a == b
    path = str(tmp_path / "gmel.jsonl")
    save_trace(sim, path, generate_workloads(sim, 2, 4))
    c = evaluate(sim, ["random", "greedy"], episodes=2, seed=4, trace=path, progress=False).results
    for pol in a:
        for k in a[pol]:
            assert c[pol][k] == pytest.approx(a[pol][k], rel=1e-12, abs=1e-12)


def test_trace_that_does_not_fit_raises(tmp_path):
    sim = _sim(slots_per_episode=10)
    path = str(tmp_path / "gmel.jsonl")
    save_trace(sim, path, generate_workloads(sim, 1, 0))
    wl = load_trace_workloads(sim, path, 1)[0]
    small = _sim(slots_per_episode=10, num_devices=20)
    with pytest.raises(TraceError):
        small.reset(wl)
    wl.tasks["deadline_s"] = np.full(wl.num_tasks, 9.0)
    with pytest.raises(TraceError):
        sim.reset(wl)


def test_bad_preset_raises():
    with pytest.raises(PresetError):
        _sim(server_cpu_ghz=[10, 20])
    with pytest.raises(PresetError):
        _sim(task_probability=1.5)


# -- policies and orderings -------------------------------------------------------------------
def test_every_policy_runs_with_valid_metrics():
    sim = _sim(num_devices=12, slots_per_episode=30)
    res = evaluate(sim, list(sim.POLICIES), episodes=1, seed=2, progress=False).results
    for pol, m in res.items():
        assert 0 <= m["completion_rate"] <= 1 and m["completion_rate"] + m["drop_rate"] == pytest.approx(1)
        assert all(math.isfinite(v) for v in m.values())
    assert res["opt"]["reward"] >= res["random"]["reward"]


def test_sanity_orderings():
    res = evaluate(_sim(), ["random", "greedy", "local"], episodes=2, seed=0, progress=False).results
    assert res["greedy"]["completion_rate"] > res["local"]["completion_rate"] > res["random"]["completion_rate"]
    lo = evaluate(_sim(task_probability=0.1), ["greedy"], 1, 0, progress=False).results["greedy"]
    hi = evaluate(_sim(task_probability=0.9), ["greedy"], 1, 0, progress=False).results["greedy"]
    assert lo["completion_rate"] > hi["completion_rate"]
    short = evaluate(_sim(deadline_fixed_s=0.5), ["local"], 1, 0, progress=False).results["local"]
    long = evaluate(_sim(deadline_fixed_s=2.5), ["local"], 1, 0, progress=False).results["local"]
    assert long["completion_rate"] > short["completion_rate"]
    few = evaluate(_sim(num_devices=20), ["greedy"], 1, 0, progress=False).results["greedy"]
    many = evaluate(_sim(num_devices=80), ["greedy"], 1, 0, progress=False).results["greedy"]
    assert few["completion_rate"] > many["completion_rate"]


def _joint_value(sim, ids, assign):
    """Myopic objective of a joint target vector, computed independently of the policy's DP."""
    resolve, ok, _ = sim.local_outcome(ids, sim.busy_until)
    local_r = sim.task_reward(ok, (resolve - sim.t) * sim.preset.slot_s)
    members = np.zeros((sim.M, len(ids)), dtype=bool)
    for j, a in enumerate(assign):
        if a > 0:
            members[a - 1, j] = True
    return float(local_r[np.asarray(assign) == 0].sum() + sim.rollout_scores(np.arange(sim.M), members, ids).sum())


def test_opt_exact_matches_brute_force_and_beats_greedy():
    sim = _sim(num_devices=3, task_probability=1.0, slots_per_episode=8)
    wl = generate_workloads(sim, 1, 1)[0]
    sim.reset(wl)
    opt = make_policy("opt", sim)
    opt.reset(np.random.default_rng(0), oracle=sim)
    greedy = make_policy("greedy", sim)
    rr = make_policy("round_robin", sim)
    rr.reset(np.random.default_rng(0))
    for _ in range(4):  # build some queue state first
        sim.step(rr.decide(sim.view()))
    view = sim.view()
    ids = sim._task_ids(sim.t)
    assert len(ids) == 3
    best = opt.decide(view).target
    brute = max(_joint_value(sim, ids, a) for a in itertools.product(range(sim.M + 1), repeat=3))
    assert _joint_value(sim, ids, best) == pytest.approx(brute, abs=1e-9)
    assert _joint_value(sim, ids, best) >= _joint_value(sim, ids, greedy.decide(view).target) - 1e-9
    # the coordinate-descent bound never beats the exact optimum and never loses to its greedy start
    init = greedy.decide(view).target
    resolve, ok, _ = sim.local_outcome(ids, sim.busy_until)
    cd = opt._coordinate_descent(ids, sim.task_reward(ok, (resolve - sim.t) * sim.preset.slot_s), init)
    assert _joint_value(sim, ids, init) - 1e-9 <= _joint_value(sim, ids, cd) <= brute + 1e-9


# -- RL wrapper -----------------------------------------------------------------------------
def test_pettingzoo_api():
    parallel_api_test(GmelEnv(seed=0, num_devices=4, slots_per_episode=12), num_cycles=40)


def test_env_rewards_sum_to_episode_reward():
    env = GmelEnv(seed=3, num_devices=6, slots_per_episode=20)
    obs, infos = env.reset()
    assert set(obs) == set(env.possible_agents) and obs["ied_0"].shape == (25,)
    total, steps, resolved = 0.0, 0, 0
    rng = np.random.default_rng(0)
    while env.agents:
        obs, rew, term, trunc, infos = env.step({a: int(rng.integers(0, 6)) for a in env.agents})
        total += sum(rew.values())
        resolved += sum(len(i.get("resolved", [])) for i in infos.values())
        steps += 1
    assert steps == 20 and resolved == len(env.sim.status)
    assert total == pytest.approx(env.sim.episode_metrics()["reward"] * 6)


def test_cli_evaluate_json():
    out = subprocess.run([str(CLI), "evaluate", "--scenario", "gmel", "--policies", "random,round_robin,greedy,local,opt",
                          "--episodes", "2", "--seed", "0", "--json", "--set", "num_devices=8",
                          "--set", "slots_per_episode=20"], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout)["results"]
    assert set(res) == {"random", "round_robin", "greedy", "local", "opt"}
    assert all(0 <= r["completion_rate"] <= 1 for r in res.values())


def test_fifo_serve_slot_ring_buffer_equals_rolled():
    rng = np.random.default_rng(7)
    rem = rng.random((3, 4, 9)) * (rng.random((3, 4, 9)) < 0.6)
    cap = rng.random((3, 4)) * 2
    for first in range(9):
        order = (first + np.arange(9)) % 9
        want = np.empty_like(rem)
        want[..., order] = cost.fifo_serve_slot(rem[..., order], cap)
        np.testing.assert_allclose(cost.fifo_serve_slot(rem, cap, first), want, atol=1e-12)
