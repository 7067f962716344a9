"""The factory scenario: hand-worked tasks through every path, caches, queues, drops, replay, API."""

import io
import json
import math
from contextlib import redirect_stdout

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from policies.cli import main as cli_main
from policies.cost import fifo_finish_times_grouped_abort, lru_evict
from policies.evaluate import evaluate, generate_workloads, load_trace_workloads, run_episode, save_trace
from policies.heuristics import make_policy
from policies.scenarios import make_simulator
from policies.scenarios.base import OffloadDecision
from policies.scenarios.factory import FactoryEnv, FactorySimulator
from policies.workload import Workload

N0B = 10 ** ((-174 - 30) / 10) * 1e6  # W in 1 MHz


def rate_bps(distance_m):
    """Shannon rate of the hand examples, written out: PL = 128.1 + 37.6 log10(d/km), p = 0.2 W."""
    pl = 128.1 + 37.6 * math.log10(distance_m / 1000)
    return 1e6 * math.log2(1 + 0.2 * 10 ** (-pl / 10) / N0B)


def tiny(**overrides):
    """One controller (device 0, 10 m from edge0) and one camera; fading 1; one hand-made task."""
    sim = make_simulator("factory", {"num_controllers": 1, "num_cameras": 1, "slots_per_episode": 5,
                                     "edge_forwarding": False, **overrides})
    return sim


def one_task(sim, model=0, work=2.0, inp=3.0, out=0.05, deadline=2.5, device=0):
    T = sim.preset.slots_per_episode
    kind = 0 if model < 4 else 1
    params = {"device_cpu_ghz": np.array([2.0, 4.0]), "device_xy_m": np.array([[15.0, 20.0], [100.0, 40.0]]),
              "fading": np.ones((T, 2)), "zipf_exponent": np.full(T, 0.5),
              "edge_cpu_ghz": np.array(sim.preset.edge_cpu_ghz)}
    tasks = {"slot": np.array([0]), "source": np.array([device]), "kind": np.array([kind]), "model": np.array([model]),
             "units": np.array([100]), "input_mbit": np.array([inp]), "work_gcycles": np.array([work]),
             "output_mbit": np.array([out]), "deadline_s": np.array([deadline])}
    return Workload("factory", 0, params, tasks)


def run_one(sim, wl, target, share, download):
    sim.reset(wl)
    sim.step(OffloadDecision(target=np.array([target]), share=np.array([share]), download=np.array([download])))
    while not sim.done:
        sim.step(OffloadDecision(target=np.zeros(0, dtype=np.int64)))
    return sim


# -- hand-worked examples (spec §5) ------------------------------------------------------------
def test_local_path_by_hand():
    sim = run_one(tiny(), one_task(tiny()), 0, 0.0, False)
    # W = 2 Gcycles on 2 GHz: 1.0 s; E = 1e-28 * (2e9)^2 * 2e9 = 0.8 J; r = -(0.5*1 + 0.5*0.8)
    assert sim.latency[0] == pytest.approx(1.0)
    assert sim.energy[0] == pytest.approx(0.8)
    assert sim.reward[0] == pytest.approx(-0.9)
    assert sim.status[0] == 1 and sim.free_dev[0] == pytest.approx(1.0)


def test_edge_hit_by_hand():
    sim = tiny()
    wl = one_task(sim)  # model 0 (report-s) is in edge0's warm cache
    assert sim._initial_cache()[0][0, 0]
    run_one(sim, wl, 1, 1.0, False)
    r = rate_bps(10.0)  # ~27.9 Mbit/s
    up, back = 3e6 / r, 0.05e6 / r
    assert sim.latency[0] == pytest.approx(up + 2e9 / 10e9 + back, rel=1e-9)
    assert sim.energy[0] == pytest.approx(0.2 * up, rel=1e-9)
    assert sim.hit[0] and sim.status[0] == 1 and sim.cost[0] == 0.0


def test_edge_miss_with_download_by_hand():
    sim = tiny(initial_cache="empty")
    run_one(sim, one_task(sim), 1, 1.0, True)
    r = rate_bps(10.0)
    download = 90 * 8e6 / 500e6  # 1.44 s, longer than the upload: compute starts at 1.44 s
    assert sim.latency[0] == pytest.approx(download + 0.2 + 0.05e6 / r, rel=1e-9)
    assert not sim.hit[0] and sim.downloads == 1 and sim.cache[0, 0]
    assert sim.status[0] == 1


def test_edge_miss_without_download_goes_to_cloud():
    sim = tiny(initial_cache="empty")
    run_one(sim, one_task(sim), 1, 1.0, False)
    assert sim.to_cloud[0] and sim.downloads == 0 and not sim.cache.any()


def test_cloud_path_by_hand():
    sim = tiny()
    run_one(sim, one_task(sim), 5, 1.0, False)
    r = rate_bps(10.0)  # the gateway is edge0, 10 m away
    lat = 3e6 / r + 3e6 / 20e6 + 2e9 / 40e9 + 0.05e6 / 20e6 + 0.05e6 / r
    assert sim.latency[0] == pytest.approx(lat, rel=1e-9)
    assert sim.cost[0] == pytest.approx(0.6 * (3 + 0.05) / 8 + 4.0 * 2e9 / 40e9, rel=1e-9)
    assert sim.reward[0] == pytest.approx(-(0.5 * lat + 0.5 * 0.2 * 3e6 / r + sim.cost[0]), rel=1e-9)


def test_partial_offload_is_max_of_parts():
    sim = tiny()
    run_one(sim, one_task(sim), 1, 0.5, False)
    r = rate_bps(10.0)
    local = 1e9 / 2e9
    edge = 1.5e6 / r + 1e9 / 10e9 + 0.025e6 / r
    assert sim.latency[0] == pytest.approx(max(local, edge), rel=1e-9)  # MATO eq. 13
    assert sim.energy[0] == pytest.approx(1e-28 * 4e18 * 1e9 + 0.2 * 1.5e6 / r, rel=1e-9)


def test_deadline_drop_local_counts_executed_work():
    sim = tiny()
    run_one(sim, one_task(sim, deadline=0.5), 0, 0.0, False)
    assert sim.status[0] == 2 and sim.reason[0] == 1
    assert sim.latency[0] == pytest.approx(0.5)
    assert sim.energy[0] == pytest.approx(1e-28 * 4e18 * 1e9)  # ran 0.5 s at 2 GHz before the abort
    assert sim.free_dev[0] == pytest.approx(0.5)
    assert sim.reward[0] == pytest.approx(-(0.25 + 0.2 + 5.0))


def test_forwarding_moves_task_to_earliest_finish():
    sim = tiny(edge_forwarding=True)
    wl = one_task(sim, work=20.0, deadline=10.0)  # heavy: 2 s on edge0 (10 GHz), 0.45 s on edge3 (44 GHz)
    run_one(sim, wl, 1, 1.0, False)
    assert sim.exec_at[0] == 3  # edge0, edge1 and edge3 hold model 0; edge3 finishes earliest
    r = rate_bps(10.0)
    inter = min(400e6, 500e6)  # the pair's link runs at the slower end
    assert sim.latency[0] == pytest.approx(3e6 / r + 3e6 / inter + 20e9 / 44e9 + 0.05e6 / inter + 0.05e6 / r, rel=1e-9)


# -- caches and queues ----------------------------------------------------------------------
def test_lru_evict_keeps_recent_within_budget():
    keep = lru_evict(np.array([1, 1, 1, 0], bool), np.array([3.0, 1.0, 2.0, 9.0]), np.array([100, 100, 100, 50.0]), 200)
    assert keep.tolist() == [True, False, True, False]


def test_storage_budget_never_exceeded_and_queues_monotone():
    sim = make_simulator("factory")
    wl = sim.generate_workload(np.random.default_rng(3), 0)
    pol = make_policy("round_robin", sim)  # downloads a lot
    sim.reset(wl)
    pol.reset(np.random.default_rng(0))
    prev = (sim.free_dev.copy(), sim.free_edge.copy(), sim.free_bh.copy())
    while not sim.done:
        sim.step(pol.decide(sim.view()))
        assert np.all(sim.cache.astype(float) @ sim.model_bits <= sim.storage_bits + 1e-6)
        for a, b in zip(prev, (sim.free_dev, sim.free_edge, sim.free_bh)):
            assert np.all(b >= a - 1e-12)
        prev = (sim.free_dev.copy(), sim.free_edge.copy(), sim.free_bh.copy())
    assert sim.downloads > 0
    assert np.all(sim.status > 0)  # every task ends done or dropped
    assert np.all((sim.status == 1) == (sim.reason == 0))


def test_fifo_abort_matches_scalar_recursion():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = 12
        q = rng.integers(0, 3, n)
        a = np.sort(rng.uniform(0, 2, n))
        s = rng.uniform(0, 1, n)
        abort = a + rng.uniform(0, 2, n)
        free = rng.uniform(0, 1, 3)
        st, sv, fin, ok, queued = fifo_finish_times_grouped_abort(q, a, s, free, abort)
        busy = free.copy()
        for k in range(n):  # the recursion written out
            if a[k] >= abort[k] - 1e-9:
                assert not queued[k] and sv[k] == 0
                continue
            start = max(a[k], busy[q[k]])
            served = min(max(abort[k] - start, 0.0), s[k])
            assert st[k] == pytest.approx(start) and sv[k] == pytest.approx(served)
            assert ok[k] == (start + s[k] <= abort[k] + 1e-9)
            busy[q[k]] = max(busy[q[k]], start + served) if served > 0 else busy[q[k]]
        assert np.all(sv >= 0) and np.all(sv <= s + 1e-12)


def test_edge_queues_fifo_and_work_conserved():
    sim = make_simulator("factory", {"slots_per_episode": 300})
    wl = sim.generate_workload(np.random.default_rng(5), 0)
    run_episode(sim, make_policy("random", sim), wl, 0)
    need = np.where(sim.exec_at >= 0, sim.share * sim.work / sim.edge_hz[np.maximum(sim.exec_at, 0)], 0.0)
    assert np.all(sim.edge_served >= 0) and np.all(sim.edge_served <= need + 1e-12)
    done_edge = (sim.exec_at >= 0) & (sim.status == 1)
    assert np.allclose(sim.edge_served[done_edge], need[done_edge])  # completed: full service
    for s in range(sim.N):
        k = np.flatnonzero((sim.exec_at == s) & (sim.edge_served > 0))  # booking order
        st, en = sim.edge_start[k], sim.edge_start[k] + sim.edge_served[k]
        assert np.all(np.diff(st) >= -1e-12)  # FIFO: starts follow booking order
        assert np.all(st[1:] >= en[:-1] - 1e-9)  # one task at a time, never overlapping
    horizon = sim.preset.slots_per_episode * sim.preset.slot_s
    inside = np.clip(np.minimum(sim.edge_start + sim.edge_served, horizon) - sim.edge_start, 0, None)
    assert sim.edge_busy_s.sum() == pytest.approx(inside[sim.exec_at >= 0].sum())
    assert 0 < sim.episode_metrics()["load"] <= 1


# -- determinism, replay, API -----------------------------------------------------------------
def test_determinism_and_trace_replay(tmp_path):
    sim = make_simulator("factory", {"slots_per_episode": 60})
    a = evaluate(sim, ["random", "opt"], episodes=2, seed=7, progress=False)
    b = evaluate(sim, ["random", "opt"], episodes=2, seed=7, progress=False)
    assert a.results == b.results
    path = str(tmp_path / "factory.jsonl")
    save_trace(sim, path, generate_workloads(sim, 2, 7))
    assert len(load_trace_workloads(sim, path, None)) == 2
    c = evaluate(sim, ["random", "opt"], episodes=2, seed=7, trace=path, progress=False)
    for pol in a.results:
        for k, v in a.results[pol].items():
            assert c.results[pol][k] == pytest.approx(v, rel=1e-12, abs=1e-12)


def test_trace_that_does_not_fit_is_rejected():
    from policies.errors import TraceError

    sim = make_simulator("factory")
    wl = sim.generate_workload(np.random.default_rng(0), 0)
    wl.params["edge_cpu_ghz"] = np.ones(3)
    with pytest.raises(TraceError, match="edge_cpu_ghz"):
        sim.reset(wl)


def test_check_env_and_env_rewards_match_simulator():
    env = FactoryEnv(slots_per_episode=20)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=3)
    rng = np.random.default_rng(0)
    total, truncated = 0.0, False
    while not truncated:
        obs, r, term, truncated, info = env.step(env.action_space.sample() if rng.random() < 0.5 else np.array([1, 3, 1]))
        assert env.observation_space.contains(obs)
        total += r
    assert total == pytest.approx(env.sim.reward.sum(), rel=1e-9)


def test_observation_is_pure_function_of_view():
    sim = make_simulator("factory")
    sim.reset(sim.generate_workload(np.random.default_rng(0), 0))
    while sim.view().n == 0:
        sim.step(OffloadDecision(target=np.zeros(0, dtype=np.int64)))
    v = sim.view()
    o1 = sim.observation(v)
    other = FactorySimulator(sim.preset)  # a fresh simulator (no state) gives the same rows
    assert np.array_equal(o1, other.observation(v))
    assert o1.shape == (v.n, sim.obs_dim()) and o1.dtype == np.float32


def test_policies_valid_and_opt_beats_heuristics():
    sim = make_simulator("factory", {"slots_per_episode": 100})
    res = evaluate(sim, list(sim.POLICIES), episodes=2, seed=1, progress=False).results
    for pol, m in res.items():
        assert 0 <= m["completion_rate"] <= 1 and m["completion_rate"] + m["drop_rate"] == pytest.approx(1)
        assert all(math.isfinite(v) for v in m.values())
    for pol in ("random", "round_robin", "greedy", "local"):
        assert res["opt"]["reward"] >= res[pol]["reward"]
        assert res["opt"]["latency_s"] <= res[pol]["latency_s"] + 1e-9
    # the plant is calibrated so that local alone misses many deadlines and a good policy few
    assert res["local"]["drop_rate"] > 0.25
    assert res["opt"]["completion_rate"] > 0.95


def test_cli_evaluate_json():
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli_main(["evaluate", "--scenario", "factory", "--policies", "random,round_robin,greedy,local,opt",
                       "--episodes", "1", "--seed", "0", "--json", "--set", "slots_per_episode=30"])
    assert rc == 0
    out = json.loads(buf.getvalue())
    assert set(out["results"]) == {"random", "round_robin", "greedy", "local", "opt"}


def test_live_view_matches_the_simulator_view():
    """The gateway's live_view, fed the simulator's own state, gives the same view and observation
    (DESIGN principle 2: one observation path for training and deployment)."""
    from policies.scenarios.factory import LiveState, LiveTask, LiveStateError

    sim = make_simulator("factory")
    wl = generate_workloads(sim, 1, seed=3)[0]
    sim.reset(wl)
    policy = make_policy("greedy", sim)
    policy.reset(np.random.default_rng(0))
    for _ in range(40):  # let queues and caches move
        sim.step(policy.decide(sim.view()))
    while sim.view().n == 0:
        sim.step(OffloadDecision(target=np.zeros(0, dtype=np.int64)))
    view = sim.view()
    r = sim.rows()
    t0 = sim.t * sim.preset.slot_s
    names = [m.name for m in sim.preset.models]
    tasks, states = [], []
    for i, row in enumerate(r):
        dev = int(sim.src[row])
        tasks.append(LiveTask(device=dev, kind="report" if sim.kind[row] == 0 else "image", model=names[sim.model[row]],
                              units=int(wl.tasks["units"][row]), input_mbit=float(sim.in_bits[row] / 1e6),
                              output_mbit=float(sim.out_bits[row] / 1e6), deadline_s=float(sim.deadline[row])))
        states.append(LiveState(
            device_cpu_ghz=float(sim.dev_hz[dev] / 1e9), device_backlog_s=max(float(sim.free_dev[dev]) - t0, 0.0),
            uplink_mbps=list(sim.rate_nominal[dev] / 1e6), edge_backlog_s=list(np.maximum(sim.free_edge - t0, 0.0)),
            edge_cpu_ghz=list(sim.edge_hz / 1e9),
            edge_cached_models=[[names[m] for m in np.flatnonzero(sim.cache[n])] for n in range(sim.N)],
            backhaul_backlog_s=max(float(sim.free_bh[0]) - t0, 0.0), relay_edge=int(sim.gateway[dev])))
    live = sim.live_view(tasks, states, slot=view.slot)
    np.testing.assert_allclose(sim.observation(live), sim.observation(view), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(live.proximity, view.proximity, rtol=1e-9)
    np.testing.assert_array_equal(live.compatible, view.compatible)
    assert policy.decide(live).target.tolist() == policy.decide(view).target.tolist()
    with pytest.raises(LiveStateError, match="does not hold"):
        sim.live_view([tasks[0].model_copy(update={"model": "nope"})], states[:1])
    with pytest.raises(LiveStateError, match="4 edge servers"):
        sim.live_view(tasks[:1], [states[0].model_copy(update={"edge_cpu_ghz": [1.0]})])
