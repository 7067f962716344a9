"""LAD-TS scenario: worked examples of docs/papers/ladts.md §7.2, queue invariants, Opt-TS, traces, env."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from policies.config import load_preset
from policies.cost import work_ahead_grouped
from policies.errors import PresetError, TraceError
from policies.evaluate import evaluate, load_trace_workloads, run_episode, save_trace
from policies.heuristics import make_policy
from policies.scenarios.base import OffloadDecision, Policy
from policies.scenarios import make_simulator
from policies.scenarios.ladts import LadtsEnv, LadtsSimulator, OptTsPolicy, capacities_ghz, rates_mbps, task_profiles
from policies.workload import Workload, episode_rng


def _sim(**overrides) -> LadtsSimulator:
    return LadtsSimulator(load_preset("ladts", overrides or None))


def _hand_workload(slots, f, v, w, dtilde):
    """slots: list over t of list over stations of input sizes d (Mbit). Profiles w, dtilde per index."""
    rows = [(t, b, n, d) for t, st in enumerate(slots) for b, ds in enumerate(st) for n, d in enumerate(ds)]
    slot, src, idx, d = (np.array(c) for c in zip(*rows))
    tasks = {"slot": slot.astype(np.int64), "source": src.astype(np.int64), "index": idx.astype(np.int64),
             "input_mbit": d.astype(float), "step_gcycles": np.asarray(w, float)[idx],
             "steps": np.ones(len(rows), dtype=np.int64), "result_mbit": np.asarray(dtilde, float)[idx]}
    return Workload("ladts", 0, {"cpu_ghz": np.asarray(f, float), "rate_mbps": np.asarray(v, float)}, tasks)


class AlwaysZero(Policy):
    name = "zero"

    def decide(self, view):
        return OffloadDecision(target=np.zeros(view.n, dtype=np.int64))


def _run(sim, policy, wl):
    sim.reset(wl)
    policy.reset(np.random.default_rng(0), oracle=sim if policy.needs_oracle else None)
    targets, queues = [], []
    while not sim.done:
        dec = policy.decide(sim.view())
        targets.append(dec.target.copy())
        sim.step(dec)
        queues.append(sim.q.copy())
    return targets, queues, sim.episode_metrics()


# ---- constants of the authors' code (spec §1.2-1.3) -------------------------------------------
def test_seeded_constants_match_spec():
    p = load_preset("ladts")
    rho, z, dtilde = task_profiles(p)
    np.testing.assert_allclose(rho[:10], [0.187806, 0.249922, 0.102423, 0.164318, 0.132456, 0.121311, 0.140546,
                                          0.173171, 0.183658, 0.212750], atol=1e-6)
    np.testing.assert_array_equal(z[:10], [6, 12, 13, 9, 10, 12, 6, 1, 1, 2])
    np.testing.assert_allclose(dtilde[:3], [0.766809, 0.888130, 0.600046], atol=1e-6)
    w = rho * z
    assert w.sum() == pytest.approx(81.108211, abs=1e-5)  # S_50
    assert np.cumsum(w)[9] == pytest.approx(11.342162, abs=1e-5)  # S_10
    f = capacities_ghz(p)
    np.testing.assert_array_equal(f, [50, 25, 18, 32, 28, 21, 50, 17, 44, 41, 21, 31, 41, 36, 30, 47, 49, 13, 48, 14])
    assert f.sum() == 656
    np.testing.assert_array_equal(rates_mbps(p)[:5], [499, 478, 461, 416, 473])


def test_sweep_overrides_keep_prefixes():
    base = load_preset("ladts")
    big = load_preset("ladts", {"tasks_max": 70, "num_stations": 30, "capacity_ghz_max": 50})
    np.testing.assert_array_equal(task_profiles(big)[0][:50], task_profiles(base)[0])
    np.testing.assert_array_equal(capacities_ghz(big)[:20], capacities_ghz(base))
    z = task_profiles(load_preset("ladts", {"quality_max": 5}))[1]
    assert z.min() >= 1 and z.max() <= 4
    sim = _sim(num_stations=30)
    assert sim.obs_dim() == 32 and make_simulator("ladts").obs_dim() == 22
    with pytest.raises(PresetError, match="capacity_ghz_min must not exceed"):
        load_preset("ladts", {"capacity_ghz_max": 5})


# ---- worked examples (spec §7.2) ----------------------------------------------------------------
def test_example1_one_slot_opt():
    sim = _sim(num_stations=2, slots_per_episode=1, decide_last_slot=True)
    wl = _hand_workload([[[4.0, 2.0], [3.0]]], f=[10, 20], v=[400, 500], w=[2.0, 0.5], dtilde=[0.8, 0.6])
    targets, queues, m = _run(sim, OptTsPolicy(), wl)
    np.testing.assert_array_equal(targets[0], [1, 0, 1])
    np.testing.assert_allclose(sim.delays, [0.1096, 0.0515, 0.2016], atol=1e-12)
    assert m["latency_s"] == pytest.approx(0.1209, abs=1e-12)
    np.testing.assert_allclose(queues[0], [0, 0])


def test_example2_two_slots_carry_over():
    slots = [[[4, 2], [3, 5]], [[2.5], [4]]]
    wl = _hand_workload(slots, f=[1, 2], v=[400, 500], w=[2.0, 0.6], dtilde=[0.8, 0.6])
    sim = _sim(num_stations=2, slots_per_episode=2, decide_last_slot=True)
    opt = OptTsPolicy()
    targets, queues, m = _run(sim, opt, wl)
    np.testing.assert_array_equal(np.concatenate(targets), [1, 0, 1, 0, 1, 0])
    np.testing.assert_allclose(queues, [[0.2, 2.0], [1.2, 2.0]], atol=1e-12)
    np.testing.assert_allclose(sim.delays, [1.0096, 0.6015, 2.0016, 1.214, 2.0066, 2.212], atol=1e-12)
    assert m["latency_s"] == pytest.approx(9.0453 / 6, abs=1e-12)
    np.testing.assert_allclose(opt.last_delays, sim.delays[4:], atol=1e-12)  # policy's view == simulator's
    targets, queues, m = _run(sim, AlwaysZero(), wl)  # fixed action: upload only when remote, carry-over
    np.testing.assert_allclose(sim.delays, [2.002, 2.6015, 4.6095, 5.214, 6.202, 8.212], atol=1e-12)
    np.testing.assert_allclose(queues, [[4.2, 0], [7.2, 0]], atol=1e-12)
    assert m["latency_s"] == pytest.approx(28.841 / 6, abs=1e-12)


def test_env_replays_example2_step_by_step():
    slots = [[[4, 2], [3, 5]], [[2.5], [4]]]
    wl = _hand_workload(slots, f=[1, 2], v=[400, 500], w=[2.0, 0.6], dtilde=[0.8, 0.6])
    env = LadtsEnv(num_stations=2, slots_per_episode=2, decide_last_slot=True)
    obs, info = env.reset(seed=0, options={"workload": wl})
    np.testing.assert_allclose(obs, [4.0, 2.0, 0.0, 0.0])  # eq. 6: d, w, q_{-1}
    rewards, stations = [], [info["station"]]
    for k in range(6):
        obs, r, term, trunc, info = env.step(0)
        rewards.append(r)
        stations.append(info.get("station"))
        assert trunc == (k == 5)
        if k == 3:  # first task of slot 1 observes q_0 = [4.2, 0]
            np.testing.assert_allclose(obs, [2.5, 2.0, 4.2, 0.0], rtol=1e-6)
    np.testing.assert_allclose(rewards, [-2.002, -2.6015, -4.6095, -5.214, -6.202, -8.212], atol=1e-12)
    assert stations[:6] == [0, 0, 1, 1, 0, 1]


def test_env_rewards_equal_simulator_delays():
    """The gym env prices each decision incrementally; it must equal the simulator's batch pricing."""
    env = LadtsEnv(num_stations=3, tasks_max=6, slots_per_episode=5, seed=3)
    obs, info = env.reset(seed=3)
    rng = np.random.default_rng(0)
    rewards, truncated, steps = [], False, 0
    while not truncated:
        assert obs.shape == (5,) and info["station"] in (0, 1, 2)
        obs, r, terminated, truncated, info = env.step(int(rng.integers(0, 3)))
        assert not terminated
        rewards.append(r)
        steps += 1
    m = env.sim.episode_metrics()
    assert steps == m["tasks"]
    np.testing.assert_allclose(-np.array(rewards), env.sim.delays[:steps], rtol=1e-12, atol=1e-12)


# ---- Opt-TS invariants -------------------------------------------------------------------------
def test_opt_picks_the_least_delay_given_true_state():
    sim = _sim(num_stations=5, tasks_max=12, slots_per_episode=4)
    wl = sim.generate_workload(episode_rng(1, 0, 0), 0)
    sim.reset(wl)
    opt = make_policy("opt", sim)
    opt.reset(np.random.default_rng(0), oracle=sim)
    while not sim.done:
        view = sim.view()
        q0 = sim.q.copy()
        dec = opt.decide(view)
        static = sim.static_delay_s(view)
        r = sim.rows()
        onehot = np.zeros((view.n, sim.B))
        onehot[np.arange(view.n), dec.target] = sim.w[r]
        ahead = np.cumsum(onehot, axis=0) - onehot  # q^bef seen by each task, for every server
        all_delays = static + (q0 + ahead) / sim.f
        sim.step(dec)
        chosen = sim.delays[r]
        assert np.all(chosen <= all_delays.min(axis=1) + 1e-9)
        np.testing.assert_allclose(chosen, all_delays[np.arange(view.n), dec.target], atol=1e-9)


def test_opt_beats_heuristics_and_hits_the_paper_range():
    sim = _sim()
    res = evaluate(sim, list(sim.POLICIES), episodes=2, seed=5, progress=False)
    lat = {k: v["latency_s"] for k, v in res.results.items()}
    assert 6.0 < lat["opt"] < 9.5  # paper: Opt-TS 7.4 s
    assert lat["opt"] < min(lat["random"], lat["round_robin"], lat["greedy"])
    assert 14.0 < lat["random"] < 19.0 and 14.0 < lat["round_robin"] < 19.0  # spec §4.5: ~16.4, ~16.2
    # the state-blind capacity split is close to Opt-TS at the default point (measured 7.66 vs 7.56 s) and
    # far ahead of the uniform draw
    assert lat["opt"] < lat["proportional"] < 1.1 * lat["opt"] < lat["random"]
    # the same split without the dice: fewer of one slot's tasks meet on one server (measured 7.30 vs 7.37 s
    # over 10 episodes, Opt-TS 7.28)
    assert lat["opt"] < lat["weighted_rr"] < lat["proportional"]
    for pol, m in res.results.items():
        assert m["reward"] == pytest.approx(-m["latency_s"])
        assert 1.1 < m["load"] < 1.35  # spec §2.3: load factor 1.237
        assert 0.0 < m["utilization"] <= 1.0 + 1e-12
        assert m["latency_s"] == pytest.approx(m["wait_s"] + m["compute_s"] + m["transmit_s"])


def test_proportional_draws_servers_in_proportion_to_the_episodes_capacities():
    sim = _sim()
    wl = sim.generate_workload(episode_rng(0, 0, 0), 0)
    cpu = np.arange(1, sim.B + 1, dtype=float)  # a trace's own capacities, not the preset's
    wl.params["cpu_ghz"] = cpu.tolist()
    sim.reset(wl)
    pol = make_policy("proportional", sim)
    pol.reset(np.random.default_rng(3))
    view = sim.view()
    counts = np.zeros(sim.B)
    for _ in range(400):
        np.add.at(counts, pol.decide(view).target, 1)
    share = counts / counts.sum()
    assert 0.5 * np.abs(share - cpu / cpu.sum()).sum() < 0.01  # total variation over ~2e5 draws
    assert counts[0] > 0 and counts[-1] > 0  # both end bins are reachable


def _station_server_miss(name: str) -> float:
    """The largest |tasks station b sent to server b' - its capacity share of station b's tasks| over one episode."""
    sim = _sim()
    sim.reset(sim.generate_workload(episode_rng(0, 0, 0), 0))
    pol = make_policy(name, sim)
    pol.reset(np.random.default_rng(0))
    counts = np.zeros((sim.B, sim.B))  # station x server
    while not sim.done:
        view = sim.view()
        dec = pol.decide(view)
        np.add.at(counts, (view.source, dec.target), 1)
        sim.step(dec)
    assert np.all(counts > 0)
    return float(np.abs(counts - counts.sum(axis=1, keepdims=True) * sim.f / sim.f.sum()).max())


def test_weighted_rr_keeps_every_stations_split_close_to_the_capacity_split():
    # ~1,500 tasks per station: the golden-ratio walk stays within 3 tasks of every expected count, where
    # independent draws of the same split (`proportional`) miss by ~29 on some server (seed 0)
    assert _station_server_miss("weighted_rr") < 3.0
    assert _station_server_miss("proportional") > 10.0


def test_weighted_rr_ranks_rows_within_their_station_whatever_the_row_order():
    from types import SimpleNamespace

    sim = _sim()
    sim.reset(sim.generate_workload(episode_rng(0, 0, 0), 0))
    grouped, mixed = make_policy("weighted_rr", sim), make_policy("weighted_rr", sim)
    grouped.reset(np.random.default_rng(0))
    mixed.reset(np.random.default_rng(0))
    src_grouped = np.array([0, 0, 0, 3, 3, 7])
    perm = np.array([0, 3, 1, 5, 4, 2])  # rows interleaved across stations, each station's own order kept
    a = grouped.decide(SimpleNamespace(source=src_grouped, n=6)).target
    b = mixed.decide(SimpleNamespace(source=src_grouped[perm], n=6)).target
    np.testing.assert_array_equal(b, a[perm])
    np.testing.assert_array_equal(grouped.position, mixed.position)


def test_greedy_is_local_only_and_round_robin_starts_at_own_server():
    sim = _sim()
    sim.reset(sim.generate_workload(episode_rng(0, 0, 0), 0))
    view = sim.view()
    np.testing.assert_array_equal(make_policy("greedy", sim).decide(view).target, view.source)
    rr = make_policy("round_robin", sim)
    rr.reset(np.random.default_rng(0))
    t = rr.decide(view).target
    first = np.r_[0, np.flatnonzero(np.diff(view.source)) + 1]
    np.testing.assert_array_equal(t[first], view.source[first])  # pointer starts at server b
    np.testing.assert_array_equal(t[first + 1], (view.source[first] + 1) % sim.B)


# ---- queues --------------------------------------------------------------------------------------
def test_queue_invariants_under_random():
    sim = _sim(num_stations=6, tasks_max=20, capacity_ghz_max=30)
    sim.reset(sim.generate_workload(episode_rng(2, 0, 0), 0))
    pol = make_policy("random", sim)
    pol.reset(np.random.default_rng(4))
    q_prev, served_total, arrived_total = np.zeros(sim.B), 0.0, 0.0
    while not sim.done:
        view = sim.view()
        dec = pol.decide(view)
        r = sim.rows()
        sim.step(dec)
        arrivals = np.bincount(dec.target, weights=sim.w[r], minlength=sim.B)
        assert np.all(sim.q >= 0)
        np.testing.assert_allclose(sim.q, np.maximum(q_prev + arrivals - sim.f, 0.0), atol=1e-9)
        served = q_prev + arrivals - sim.q
        assert np.all(served <= sim.f + 1e-9)  # never more than capacity per slot
        served_total += served.sum()
        arrived_total += arrivals.sum()
        # FIFO: on each server the wait grows along the decision order, by exactly the work ahead
        for b in range(sim.B):
            rows = np.flatnonzero(dec.target == b)
            if rows.size == 0:
                continue
            waits = sim.wait[r][rows]
            assert np.all(np.diff(waits) >= -1e-12)
            np.testing.assert_allclose(waits, (q_prev[b] + np.r_[0, np.cumsum(sim.w[r][rows])[:-1]]) / sim.f[b],
                                       rtol=1e-12, atol=1e-12)
            assert waits[0] == q_prev[b] / sim.f[b]  # the first task waits for the carried backlog only
        q_prev = sim.q.copy()
    assert arrived_total - served_total == pytest.approx(sim.q.sum())  # work conserved, nothing dropped
    m = sim.episode_metrics()
    assert m["tasks"] == sim.offsets[sim.preset.slots_per_episode - 1]  # every decided task is counted


def test_work_ahead_grouped_matches_loop():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 4, 200)
    w = rng.random(200)
    expect, acc = np.zeros(200), np.zeros(4)
    for k in range(200):
        expect[k] = acc[q[k]]
        acc[q[k]] += w[k]
    np.testing.assert_allclose(work_ahead_grouped(q, w, 4), expect, atol=1e-12)


# ---- workloads, determinism, traces ------------------------------------------------------------------
def test_workload_shape_and_determinism():
    sim = _sim()
    a = sim.generate_workload(episode_rng(7, 0, 0), 0)
    b = sim.generate_workload(episode_rng(7, 0, 0), 0)
    for k in a.tasks:
        np.testing.assert_array_equal(a.tasks[k], b.tasks[k])
    counts = np.bincount(a.tasks["slot"] * 20 + a.tasks["source"], minlength=60 * 20)
    assert counts.min() >= 1 and counts.max() <= 50 and 25_000 < a.num_tasks < 36_000
    assert a.tasks["input_mbit"].min() >= 2 and a.tasks["input_mbit"].max() <= 5
    m1 = run_episode(sim, make_policy("random", sim), a, 3)
    m2 = run_episode(sim, make_policy("random", sim), b, 3)
    assert m1 == m2


def test_trace_round_trip(tmp_path):
    sim = _sim(num_stations=4, tasks_max=8, slots_per_episode=6)
    wls = [sim.generate_workload(episode_rng(0, k, 0), k) for k in range(2)]
    path = str(tmp_path / "ladts.jsonl")
    save_trace(sim, path, wls)
    back = load_trace_workloads(sim, path, None)
    for pol in sim.POLICIES:
        for wl, rb in zip(wls, back):
            assert run_episode(sim, make_policy(pol, sim), wl, 1) == run_episode(sim, make_policy(pol, sim), rb, 1)


def test_bad_workloads_raise_trace_errors():
    sim = _sim(num_stations=4, tasks_max=8, slots_per_episode=6)
    wl = sim.generate_workload(episode_rng(0, 0, 0), 0)
    bad = Workload("ladts", 0, {"cpu_ghz": np.ones(3), "rate_mbps": np.ones(4)}, wl.tasks)
    with pytest.raises(TraceError, match="preset has 4 stations"):
        sim.reset(bad)
    src = wl.tasks["source"].copy()
    src[src == 3] = 7
    with pytest.raises(TraceError, match="station outside"):
        sim.reset(Workload("ladts", 0, wl.params, {**wl.tasks, "source": src}))
    swapped = {k: v[::-1].copy() for k, v in wl.tasks.items()}
    with pytest.raises(TraceError, match="not sorted|decision order"):
        sim.reset(Workload("ladts", 0, wl.params, swapped))


# ---- RL wrapper, performance, CLI ------------------------------------------------------------------
def test_env_passes_gymnasium_checker():
    env = LadtsEnv(seed=0, tasks_max=5, slots_per_episode=4)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=1)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    assert env.metadata["name"] == "ladts"


def test_opt_episode_is_fast():
    sim = _sim()
    opt = make_policy("opt", sim)
    best = np.inf
    for k in range(3):
        t0 = time.perf_counter()
        run_episode(sim, opt, sim.generate_workload(episode_rng(0, k, 0), k), 0)
        best = min(best, time.perf_counter() - t0)
    assert best < 1.0  # target 0.5 s on one core (measured ~0.09 s); slack for loaded CI machines


def test_cli_evaluate_json():
    exe = Path(sys.executable).with_name("aigc-offload")
    out = subprocess.run([str(exe), "evaluate", "--scenario", "ladts", "--policies", "random,round_robin,greedy,opt",
                          "--episodes", "2", "--seed", "0", "--json"], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout)["results"]
    assert res["opt"]["latency_s"] < res["random"]["latency_s"]
