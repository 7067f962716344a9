"""The LAD-TS timing reference (policies/train/ladts_reference.py): the authors' loop structure, really learning.

Tiny scenes only (3 stations, 6-8 slots, a few tasks per station per slot); each test takes seconds."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from policies.scenarios import make_simulator
from policies.scenarios.base import OffloadDecision
from policies.train.ladts import TRAIN_WORKLOAD_STREAM, DenoisingActor
from policies.train.ladts_reference import ReferenceChain, ReferenceTrainer, reference_episode_seconds
from policies.workload import episode_rng

SCENE = {"num_stations": 3, "slots_per_episode": 6, "tasks_max": 5}
LEARN = {"learning_starts": 10, "batch_size": 8}  # batch 8 > tasks_max: a batched acting call could not pass as one


def expected_counts(episodes: int, seed: int = 0, capacity: int = 1000, starts: int = 10):
    """From the workloads alone: tasks decided per station, and updates per station (one after each slot of a
    station whose pool then holds more than ``starts`` tuples)."""
    sim = make_simulator("ladts", SCENE)
    B, T = sim.B, sim.preset.slots_per_episode
    tasks, updates, size = np.zeros(B, int), np.zeros(B, int), np.zeros(B, int)
    for ep in range(episodes):
        wl = sim.generate_workload(episode_rng(seed, ep, TRAIN_WORKLOAD_STREAM), ep)
        counts = np.zeros((T, B), int)
        np.add.at(counts, (wl.tasks["slot"], wl.tasks["source"]), 1)
        for t in range(T - 1):
            for b in range(B):
                tasks[b] += counts[t, b]
                size[b] = min(size[b] + counts[t, b], capacity)
                updates[b] += size[b] > starts
    return tasks, updates


def test_one_single_sample_actor_call_per_task_and_one_update_per_station_per_slot():
    tr = ReferenceTrainer(0, {**SCENE, **LEARN})
    batches: list[list[int]] = [[] for _ in tr.agents]
    for b, ag in enumerate(tr.agents):
        ag.actor.register_forward_hook(lambda mod, args, out, b=b: batches[b].append(int(args[0].shape[0])))
    rows = [tr.run_episode() for _ in range(3)]
    tasks, updates = expected_counts(3)
    assert updates.sum() > 0 and (updates < 3 * 5).all()  # updates started, though not from the first slot
    for b, ag in enumerate(tr.agents):
        sizes = batches[b]
        assert set(sizes) <= {1, 8}, f"station {b}: actor calls on batches {sorted(set(sizes))}"
        assert sizes.count(1) == tasks[b] == ag.actor_calls  # one call per task, on one sample
        assert sizes.count(8) == 2 * updates[b]  # per update: the target's pass on s' and the actor loss's on s
        assert ag.updates == updates[b]
        for opt in (ag.actor_opt, ag.critic_1_opt, ag.critic_2_opt, ag.alpha_opt):  # one Adam step each per update
            assert all(int(st["step"]) == updates[b] for st in opt.state.values())
    assert sum(r["actor_calls"] for r in rows) == sum(r["tasks"] for r in rows) == tasks.sum()
    assert sum(r["updates"] for r in rows) == updates.sum()


def test_networks_learn_and_the_latent_store_holds_the_outputs():
    tr = ReferenceTrainer(0, {**SCENE, **LEARN})
    before = [{name: {k: v.clone() for k, v in getattr(ag, name).state_dict().items()}
               for name in ("actor", "critic_1", "critic_2", "target_1", "target_2")} for ag in tr.agents]
    alpha0 = [float(ag.log_alpha.detach()) for ag in tr.agents]
    rows = [tr.run_episode() for _ in range(2)]
    assert all(math.isfinite(r["critic_loss"]) for r in rows[1:]) and rows[1]["updates"] > 0
    for ag, st, a0 in zip(tr.agents, before, alpha0):
        assert ag.updates > 0
        for name, old in st.items():
            new = getattr(ag, name).state_dict()
            moved = [k for k in old if not torch.equal(old[k], new[k])]
            weights = [k for k in old if k.endswith("weight") or k.endswith("bias")]
            assert sorted(moved) == sorted(weights), f"{name}: {set(weights) - set(moved)} did not change"
        assert float(ag.log_alpha.detach()) < a0  # H >= 0 > target entropy: alpha decreases
    x = tr.env.latent[0, :, 0]  # task 0 of every station in slot 0 is decided every episode: X holds its pi
    assert np.allclose(x.sum(-1), 1.0) and (x >= 0).all()


def test_per_task_environment_prices_tasks_as_our_simulator():
    tr = ReferenceTrainer(1, {**SCENE, **LEARN}, record=True)
    tr.run_episode()
    sim = make_simulator("ladts", SCENE)
    sim.reset(sim.generate_workload(episode_rng(1, 0, TRAIN_WORKLOAD_STREAM), 0))
    acts = np.array(tr.last_actions)
    assert len(acts) == len(tr.last_delays) > 0
    while not sim.done:
        t = sim.t
        sim.step(OffloadDecision(target=acts[acts[:, 0] == t, 3]))
    n = len(tr.last_delays)
    np.testing.assert_allclose(sim.delays[:n], tr.last_delays, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("steps,eps_softmax", [(5, True), (3, False)])
def test_chain_matches_denoising_actor(steps, eps_softmax):
    torch.manual_seed(0)
    B, obs_dim, n, agent = 6, 8, 4, 1
    ours = DenoisingActor(2, obs_dim, B, 20, steps, eps_softmax=eps_softmax)
    ref = ReferenceChain(obs_dim, B, 20, steps, eps_softmax=eps_softmax)
    with torch.no_grad():
        for name in ("fc1", "fc2", "fc3"):
            getattr(ref.model, name).weight.copy_(getattr(ours, name).weight[agent].T)
            getattr(ref.model, name).bias.copy_(getattr(ours, name).bias[agent, 0])
    obs, x = torch.randn(2, n, obs_dim) * 3, torch.rand(2, n, B)
    noise = torch.randn(2, n, steps - 1, B)
    with torch.no_grad():
        pi, x0 = ours(obs, x, noise)
        last = torch.randn(n, 1, B)  # the noise of step i = 1 is masked out
        ref_noise = torch.cat([noise[agent], last], dim=1)
        np.testing.assert_allclose(ref.sample_x0(obs[agent], x[agent], ref_noise), x0[agent], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ref(obs[agent], x[agent], ref_noise), pi[agent], rtol=1e-5, atol=1e-5)
        for i in range(n):  # the per-task call: one sample
            one = ref(obs[agent, i:i + 1], x[agent, i:i + 1], ref_noise[i:i + 1])
            np.testing.assert_allclose(one[0], pi[agent, i], rtol=1e-5, atol=1e-5)


def test_reference_episode_seconds_skips_the_fill_episode():
    res = reference_episode_seconds(episodes=2, seed=0, stations=3, overrides={**SCENE, **LEARN})
    assert res["episodes_measured"] == 2 and [r["episode"] for r in res["rows"]] == [1, 2]
    assert res["fill"]["episode"] == 0
    assert res["cpu_s_per_episode"] > 0 and res["wall_s_per_episode"] > 0
    assert res["actor_calls_per_episode"] == res["tasks_per_episode"] > 0 and res["updates_per_episode"] > 0


def test_bench_train_with_reference_reports_both_ratios():
    from policies.bench import bench_train_ladts, format_bench_train

    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        res = bench_train_ladts(episodes=1, overrides={**SCENE, **LEARN}, reference=True)
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
    ref = res["reference"]
    assert ref["episodes_measured"] == 1 and ref["actor_calls_per_episode"] == ref["tasks_per_episode"]
    for r in res["settings"].values():
        for key in ("speedup_vs_authors_cpu", "speedup_vs_reference_cpu"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert r["speedup_vs_reference_cpu"] == pytest.approx(ref["cpu_s_per_episode"] / r["cpu_s_per_episode"])
    assert res["settings"]["3"]["updates_per_episode"] == 3 * res["settings"]["1"]["updates_per_episode"] > 0
    text = format_bench_train(res)
    assert "vs reference" in text and "reference" in text.splitlines()[-2]
