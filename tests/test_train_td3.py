"""TD3 and DDPG for EdgeAIGC (policies/train/td3.py) and `aigc-offload reproduce edgeaigc`:

- the torch projection (spec 3.2) equals the simulator's and always gives a feasible decision, on random
  and adversarial actions and presets; actor + projection is one exportable module;
- the TD3 target (clipped double Q, target policy smoothing) and the delayed actor/target updates, on
  hand-made networks and batches; DDPG's target and undelayed updates;
- the decision features the critics read and their straight-through gradients;
- seeded runs repeat exactly, resume continues exactly, a trained run is a policy;
- both algorithms beat random on a tiny scenario; a tiny reproduce run writes its files.
"""

import csv
import dataclasses
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from policies.errors import UserError  # noqa: E402
from policies.evaluate import evaluate  # noqa: E402
from policies.scenarios import make_simulator  # noqa: E402
from policies.scenarios.edgeaigc import AllocationDecision, project_batch  # noqa: E402
from policies.train import common  # noqa: E402
from policies.train import td3  # noqa: E402
from policies.train.registry import ALGOS, train  # noqa: E402
from policies.workload import episode_rng  # noqa: E402

TINY_PRESET = {"num_users": 3, "slots_per_episode": 4}
TINY = {**TINY_PRESET, "batch_size": 16, "learning_starts": 8, "hidden": 16, "checkpoint_every": 1}


def rows(run):
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def views(overrides: dict, episodes: int = 2):
    """Every slot's view of a few workloads of the preset ``edgeaigc`` with ``overrides``."""
    sim = make_simulator("edgeaigc", overrides)
    out = []
    for ep in range(episodes):
        sim.reset(sim.generate_workload(episode_rng(11, ep, 0), ep))
        while not sim.done:
            out.append(sim.view())
            sim.step(sim.project(sim.view(), np.full(sim.preset.action_dim, 0.5)))
    return sim, out


def adversarial_actions(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Random, out-of-range, saturated, tied and threshold-straddling raw actions."""
    return np.concatenate([
        rng.uniform(-1, 1, (n, dim)),
        rng.uniform(-4, 4, (n, dim)),  # outside the Box: clipped
        np.ones((1, dim)), -np.ones((1, dim)), np.zeros((1, dim)),  # all cached, none, exactly the threshold x = 0.5
        rng.choice([-1.0, 1.0], (n, dim)),  # saturated: every cache score tied
        rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], (n, dim)),  # many ties
        rng.uniform(-1e-7, 1e-7, (n, dim)),  # around the threshold and the share floor
    ]).astype(np.float32)


PRESETS = [
    {},
    {"num_users": 1},
    {"num_users": 7, "num_edges": 3, "edge_xy_km": [[0.2, 0.2], [0.8, 0.2], [0.5, 0.8]]},
    {"num_users": 12, "storage_gb_min": 1.0, "storage_gb_max": 2.0},  # no model fits anywhere
    {"num_users": 5, "storage_gb_min": 200.0, "storage_gb_max": 200.0},  # the whole catalogue fits
    {"num_users": 4, "association": "nearest"},
    {"num_users": 6, "catalogue": "random", "topology_seed": 3, "share_floor": 0.2},
]


# -- the projection ------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", PRESETS, ids=lambda o: ",".join(f"{k}" for k in o) or "default")
def test_torch_projection_equals_the_simulators_and_is_always_feasible(overrides):
    sim, vs = views(overrides, episodes=1)
    p = sim.preset
    rng = np.random.default_rng(0)
    for k, view in enumerate(vs[:4]):
        if k == 1:  # every user asks for the same model
            view = dataclasses.replace(view, model=np.full(sim.U, int(view.model[0])))
        proj = td3.AllocationProjection.from_view(view, p.association, p.share_floor)
        acts = adversarial_actions(rng, 8, p.action_dim)
        with torch.no_grad():
            cache, alpha, comp, assoc = proj(torch.from_numpy(acts),
                                             torch.from_numpy(np.broadcast_to(view.model, (len(acts), sim.U)).copy()))
        ref = project_batch(view, (np.clip(acts.astype(np.float64), -1, 1) + 1) / 2, p.association, p.share_floor)
        assert np.array_equal(cache.numpy(), ref[0]) and np.array_equal(assoc.numpy(), ref[3])
        np.testing.assert_allclose(alpha.numpy(), ref[1], rtol=0, atol=1e-12)
        np.testing.assert_allclose(comp.numpy(), ref[2], rtol=0, atol=1e-12)
        for b in range(len(acts)):  # 18b-18g, every user has uplink, every hit has compute
            AllocationDecision(cache[b].numpy(), alpha[b].numpy(), comp[b].numpy(), assoc[b].numpy()).validate(view)
        assert (alpha.sum(-1) <= 1 + 1e-12).all() and (comp.sum(-1) <= 1 + 1e-12).all()
        if overrides.get("storage_gb_max") == 2.0:
            assert not cache.any()
        if overrides.get("storage_gb_min") == 200.0:  # everything fits: cached iff x > 0.5
            assert np.array_equal(cache.numpy().reshape(len(acts), -1), (acts[:, :sim.E * sim.M] > 0))


def test_knapsack_order_ties_and_threshold():
    # spec 7.3: capacity 10 GB, sizes (4, 5, 6), scores (0.9, 0.8, 0.7) -> models 1 and 2
    proj = td3.AllocationProjection(np.array([4.0, 5.0, 6.0]), np.array([10.0]), np.zeros((1, 1)))
    x = torch.tensor([[[0.9, 0.8, 0.7]], [[0.7, 0.8, 0.9]], [[0.6, 0.6, 0.6]], [[0.5, 0.5, 0.5]]],
                     dtype=torch.float64)
    assert proj.knapsack(x).tolist() == [[[True, True, False]], [[True, False, True]], [[True, True, False]],
                                         [[False, False, False]]]  # ties: lower index first; 0.5 is not cached


def test_deployed_policy_is_one_module_and_acts_as_the_environment():
    sim, vs = views({}, episodes=1)
    torch.manual_seed(0)
    actor = td3.Actor(sim.obs_dim(), sim.preset.action_dim, 32)
    for layer in actor.body:  # spread the outputs over [-1, 1]
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=0.5)
    dep = td3.DeployedPolicy(actor, td3.AllocationProjection.from_view(vs[0]), td3.model_onehot_slice(sim)[0]).eval()
    obs = torch.from_numpy(np.concatenate([sim.observation(v) for v in vs]))
    with torch.no_grad():
        out = dep(obs)
        raw = actor(obs).numpy()
    for b, view in enumerate(vs):  # the env's path: x = (a + 1) / 2, numpy projection
        ref = sim.project(view, (raw[b].astype(np.float64) + 1) / 2)
        got = td3.to_decision(out, b)
        assert np.array_equal(got.cache, ref.cache) and np.array_equal(got.association, ref.association)
        np.testing.assert_allclose(got.bandwidth_share, ref.bandwidth_share, atol=1e-12)
        np.testing.assert_allclose(got.compute_share, ref.compute_share, atol=1e-12)
        got.validate(view)
    assert 0 < out[0].sum() < out[0].numel()  # a mix of cached and not cached


def test_deployed_policy_exports_to_onnx_as_one_graph(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    sim, vs = views({"num_users": 4}, episodes=1)
    torch.manual_seed(1)
    dep = td3.DeployedPolicy(td3.Actor(sim.obs_dim(), sim.preset.action_dim, 16),
                             td3.AllocationProjection.from_view(vs[0]), td3.model_onehot_slice(sim)[0]).eval()
    obs = torch.from_numpy(sim.observation(vs[3]))
    path = tmp_path / "edgeaigc.onnx"
    torch.onnx.export(dep, (obs,), str(path), dynamo=False, input_names=["obs"],
                      output_names=["cache", "bandwidth_share", "compute_share", "association"])
    got = ort.InferenceSession(str(path)).run(None, {"obs": obs.numpy()})
    with torch.no_grad():
        ref = [x.numpy() for x in dep(obs)]
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[3], ref[3])
    np.testing.assert_allclose(got[1], ref[1], atol=1e-6)
    np.testing.assert_allclose(got[2], ref[2], atol=1e-6)


# -- the decision features -----------------------------------------------------------------------
def test_decision_features_and_their_straight_through_gradient():
    sim, vs = views({"num_users": 3}, episodes=1)
    view = dataclasses.replace(vs[0], model=np.array([0, 0, 5]))
    E, U, M = sim.E, sim.U, sim.M
    proj = td3.AllocationProjection.from_view(view)
    a = -torch.ones(1, sim.preset.action_dim)
    a[0, 0 * M + 0] = 0.8  # ES 0 caches model 0 (users 0, 1 hit), model 5 nowhere (user 2 misses)
    a[0, 1 * M + 7] = 0.8  # ES 1 caches model 7: storage only
    a.requires_grad_(True)
    obs = torch.from_numpy(sim.observation(view))
    f = td3.decision_features(proj, a, obs, td3.model_onehot_slice(sim)[0], straight_through=True)
    assert f.shape == (1, td3.decision_width(E, U, M))
    alpha, comp = f[0, :E * U].view(E, U), f[0, E * U:2 * E * U].view(E, U)
    hit, a_used, l_used = (f[0, 2 * E * U + k * U:2 * E * U + (k + 1) * U] for k in range(3))
    storage = f[0, -E:]
    assert hit.tolist() == [1.0, 1.0, 0.0]
    assert torch.allclose(storage, torch.tensor([view.model_size_gb[0], view.model_size_gb[7]], dtype=torch.float32)
                          / 50.0)
    assert torch.allclose(alpha.sum(0), a_used) and torch.allclose(comp.sum(0), l_used)
    assert comp[:, 2].sum() == 0 and (comp[0, :2] > 0).all()  # no compute for the miss
    hit.sum().backward()  # d hit / d score: 1/2 (x = (a + 1) / 2) at the users' ES for their model, 0 elsewhere
    g = a.grad[0, :E * M].view(E, M)
    assert g[0, 0].item() == pytest.approx(1.0)  # two users
    assert g[int(td3.to_decision(proj(a.detach(), torch.tensor([[0, 0, 5]])))
               .association[2]), 5].item() == pytest.approx(0.5)
    assert (g != 0).sum() == 2


# -- the TD3 target and updates on hand-made networks and batches -----------------------------------
def linear_critics(weights: list[list[float]], biases: list[float]) -> common.AgentMLP:
    """Critics Q_k(x) = w_k . x + b_k (an ensemble with no hidden layer)."""
    c = common.AgentMLP(len(weights), len(weights[0]), 1, hidden=())
    with torch.no_grad():
        c.net[0].weight.copy_(torch.tensor(weights).unsqueeze(-1))
        c.net[0].bias.copy_(torch.tensor(biases).view(-1, 1, 1))
    return c


class ConstActor(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = torch.tensor(value)

    def forward(self, obs, return_pre=False):
        return self.value.expand(obs.shape[0], -1)


def test_target_is_clipped_double_q_with_smoothing():
    next_obs = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    actor_t = ConstActor([0.9, -0.2])
    eps = torch.tensor([[0.3, -0.8], [-0.1, 0.1]])
    a2 = td3.target_action(actor_t, next_obs, True, 0.2, 0.5, eps=eps)
    assert torch.allclose(a2, torch.tensor([[1.0, -0.7], [0.8, -0.1]]))  # eps clipped to 0.5, action to [-1, 1]
    assert torch.equal(td3.target_action(actor_t, next_obs, False, 0.2, 0.5, eps=eps),
                       torch.tensor([[0.9, -0.2], [0.9, -0.2]]))
    critics_t = linear_critics([[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 3.0]], [0.5, -1.0])
    # row 0: x = (1, 0, 1, -0.7): Q1 = 1 + 2 + 0.5 = 3.5, Q2 = 0 - 2.1 - 1 = -3.1 -> min -3.1
    # row 1: x = (0, 2, 0.8, -0.1): Q1 = 1.6 + 0.5 = 2.1, Q2 = 2 - 0.3 - 1 = 0.7 -> min 0.7
    rew, done = torch.tensor([-1.0, -2.0]), torch.tensor([0.0, 1.0])
    y = td3.td_target(critics_t, next_obs, a2, rew, done, 0.9)
    assert torch.allclose(y, torch.tensor([-1.0 + 0.9 * -3.1, -2.0]))  # done: no bootstrap
    y1 = td3.td_target(critics_t, next_obs, a2, rew, torch.zeros(2), 0.5)
    assert torch.allclose(y1, torch.tensor([-1.0 + 0.5 * -3.1, -2.0 + 0.5 * 0.7]))
    ddpg_t = linear_critics([[1.0, 0.0, 2.0, 0.0]], [0.5])  # one critic: y = r + h Q'
    assert torch.allclose(td3.td_target(ddpg_t, next_obs, a2, rew, torch.zeros(2), 0.5),
                          torch.tensor([-1.0 + 0.5 * 3.5, -2.0 + 0.5 * 2.1]))


def params(m: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("algo", ["td3", "ddpg"])
def test_delayed_actor_and_target_updates(algo):
    cfg = common.make_config(td3.Config, {**ALGOS[algo].config_overrides, "hidden": 8, "lr_actor": 1e-2,
                                          "critic_input": "raw", "tau": 0.1})
    torch.manual_seed(0)
    learner = td3.Learner(cfg, 3, 2, 2, None, 0)
    assert len(list(learner.critics.parameters())[0]) == (2 if algo == "td3" else 1)
    g = torch.Generator().manual_seed(1)
    batch = {"obs": torch.rand(6, 3, generator=g), "crit_act": torch.rand(6, 2, generator=g) * 2 - 1,
             "rew": -torch.rand(6, generator=g), "next_obs": torch.rand(6, 3, generator=g),
             "done": torch.tensor([0.0, 0, 0, 0, 0, 1])}
    a0, c0, at0, ct0 = params(learner.actor), params(learner.critics), params(learner.actor_t), params(learner.critics_t)
    # the critic loss is computed on the stored action ([fix] eq. 25), not the actor's
    torch.manual_seed(5)
    with torch.no_grad():
        a2 = td3.target_action(learner.actor_t, batch["next_obs"], cfg.target_smoothing, cfg.target_noise,
                               cfg.target_noise_clip)
        y = td3.td_target(learner.critics_t, batch["next_obs"], a2, batch["rew"], batch["done"], cfg.gamma)
        q = td3.critic_values(learner.critics, batch["obs"], batch["crit_act"])
        expected = ((q - y) ** 2).mean(dim=1).mean().item()
    torch.manual_seed(5)
    closs, aloss, _ = learner.update(batch)
    assert closs == pytest.approx(expected, rel=1e-6)
    assert not same(c0, params(learner.critics))  # the critics learn at every update
    if algo == "td3":  # first update: no actor step, no target update (policy delay 2)
        assert aloss is None
        assert same(a0, params(learner.actor)) and same(at0, params(learner.actor_t))
        assert same(ct0, params(learner.critics_t))
        c1 = params(learner.critics)
        _, aloss, _ = learner.update(batch)
        assert aloss is not None and not same(a0, params(learner.actor))
    else:
        assert aloss is not None and not same(a0, params(learner.actor))
    # the targets moved by tau toward the online networks at the actor step (eqs. 23, 27)
    for t, t0, o in zip(learner.actor_t.parameters(), at0, learner.actor.parameters()):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * o)
    for t, t0, o in zip(learner.critics_t.parameters(), ct0, learner.critics.parameters()):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * o)
    if algo == "td3":
        assert not same(c1, params(learner.critics))


def test_paper_hyperparameters_and_registry():
    c = td3.Config()
    assert (c.lr_actor, c.lr_critic, c.episodes) == (1e-5, 1e-3, 800)  # EdgeAIGC Sec. 5.2.1, Table 3
    assert c.twin_critics and c.policy_delay == 2 and c.target_smoothing
    assert ALGOS["td3"].scenario == ALGOS["ddpg"].scenario == "edgeaigc"
    d = common.make_config(td3.Config, ALGOS["ddpg"].config_overrides)
    assert not d.twin_critics and d.policy_delay == 1 and not d.target_smoothing
    assert (d.lr_actor, d.hidden, d.batch_size, d.exploration_noise) == (c.lr_actor, c.hidden, c.batch_size,
                                                                         c.exploration_noise)


# -- runs ---------------------------------------------------------------------------------------------
def metric_rows(run):
    return [{k: v for k, v in r.items() if k != "episode_s"} for r in rows(run)]


def test_seeded_runs_repeat_exactly(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train("td3", "edgeaigc", seed, tmp_path / name, TINY, episodes=4, progress=False)
    a, b, c = (metric_rows(tmp_path / n) for n in "abc")
    assert a == b
    assert math.isfinite(float(a[-1]["critic_loss"])) and math.isfinite(float(a[-1]["actor_loss"]))
    assert [r["reward"] for r in a] != [r["reward"] for r in c]
    pa, pb = (common.load_checkpoint(tmp_path / n)["actor"] for n in "ab")
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_resume_continues_exactly(tmp_path):
    train("ddpg", "edgeaigc", 1, tmp_path / "straight", TINY, episodes=4, progress=False)
    run = tmp_path / "run"
    train("ddpg", "edgeaigc", 1, run, TINY, episodes=2, progress=False)
    train("ddpg", "edgeaigc", 1, run, TINY, episodes=4, progress=False)
    assert [int(x["episode"]) for x in rows(run)] == [0, 1, 2, 3]
    assert metric_rows(run) == metric_rows(tmp_path / "straight")
    assert len(json.loads((run / "config.json").read_text())["command_history"]) == 2
    with pytest.raises(UserError, match="another run"):
        train("td3", "edgeaigc", 1, run, TINY, episodes=5, progress=False)


def test_trained_run_is_a_policy_and_refuses_another_preset(tmp_path):
    train("td3", "edgeaigc", 0, tmp_path / "r", TINY, episodes=3, progress=False)
    sim = make_simulator("edgeaigc", TINY_PRESET)
    res = evaluate(sim, [str(tmp_path / "r"), f"run:{tmp_path / 'r'}"], episodes=2, seed=0, progress=False)
    a, b = res.results.values()
    assert a == b and 0.0 <= a["hit_rate"] <= 1.0  # deterministic actor
    with pytest.raises(UserError, match="3 users"):
        evaluate(make_simulator("edgeaigc", {"slots_per_episode": 2}), [str(tmp_path / "r")], episodes=1, seed=0)
    with pytest.raises(UserError, match="resample_topology"):
        train("td3", "edgeaigc", 0, tmp_path / "s", {**TINY, "resample_topology_each_episode": True}, episodes=1,
              progress=False)


# a tiny scene: 3 users, 6 slots, 8 models, each ES 12-13 GB (two or three of the 4-8 GB models): random caching
# hits about half of the requests; a policy that caches what is asked for hits almost all (PCRAS: 98.5%).
# lr_actor 1e-3 as in the reproduction (the paper's 1e-5 does not converge in CI time). Measured on 30 evaluation
# episodes (seed 77): random 46.9% / reward -15,267; TD3 86.5% / -4,661; DDPG 98.9% / -1,257.
LEARN = {"num_users": 3, "slots_per_episode": 6, "num_models": 8, "storage_gb_min": 12.0, "storage_gb_max": 13.0,
         "lr_actor": 1e-3, "hidden": 64, "batch_size": 64, "learning_starts": 120, "checkpoint_every": 100}


@pytest.mark.parametrize("algo", ["td3", "ddpg"])
def test_learns_to_beat_random_on_a_tiny_scene(tmp_path, algo):
    train(algo, "edgeaigc", 0, tmp_path, LEARN, episodes=160, progress=False)
    sim = make_simulator("edgeaigc", {k: v for k, v in LEARN.items() if k not in td3.Config.__dataclass_fields__})
    res = evaluate(sim, ["random", str(tmp_path)], episodes=30, seed=77, progress=False).results
    ours, rnd = res[str(tmp_path)], res["random"]
    assert ours["hit_rate"] > rnd["hit_rate"] + 0.2, (ours, rnd)
    assert ours["reward"] > 0.6 * rnd["reward"], (ours, rnd)  # rewards are negative: at least 40% better


# -- the reproduction ------------------------------------------------------------------------------------
REPRO_TINY = dict(episodes=3, eval_episodes=1, jobs=1, preset_overrides={"slots_per_episode": 3},
                  algo_overrides={"batch_size": 8, "learning_starts": 6, "hidden": 8, "checkpoint_every": 1})


def test_tiny_reproduce_run_writes_report_results_and_figures(tmp_path):
    from policies.reproduce import get_paper, run
    from policies.reproduce.png import read_png_size
    from policies.scenarios.base import METRIC_KEYS

    res = run("edgeaigc", quick=True, seeds=2, out=tmp_path / "report", runs=tmp_path / "runs", **REPRO_TINY)
    rep = tmp_path / "report"
    figs = ("fig4_learning_rates.png", "fig5_convergence.png", "fig6_hit_rate.png", "fig7_objective.png")
    for name in ("report.md", "results.json") + figs:
        assert (rep / name).is_file(), name
    for name in figs:
        w, h = read_png_size(rep / name)
        assert w >= 400 and h >= 300
    data = json.loads((rep / "results.json").read_text())
    spec = get_paper("edgeaigc")
    assert data["paper"] == "edgeaigc" and data["mode"] == "quick" and data["settings"]["seeds"] == 2
    users = data["experiments"]["users"]
    assert users["x_values"] == [str(u) for u in spec.quick().x_subset["users"]]
    for x, pt in users["points"].items():
        assert set(pt["methods"]) == {m.key for m in spec.methods}
        for metrics in pt["methods"].values():
            for key in ("hit_rate", "latency_s", "cost", "reward"):
                assert key in METRIC_KEYS
                s = metrics[key]
                assert set(s) >= {"mean", "std", "per_seed"} and len(s["per_seed"]) == 2
            assert len(metrics["objective"]["per_seed"]) == 2
    lr = data["experiments"]["learning_rates"]
    for x, pt in lr["points"].items():
        assert "td3" in pt["methods"]
    assert set(data["convergence"]["methods"]) == {"td3", "ddpg"}
    curves = data["extra"]["learning_rates"]
    assert set(curves) == set(lr["x_values"]) and all(len(c["reward"]["mean"]) > 0 for c in curves.values())
    keys = {r["key"] for r in data["headline"]}
    assert {"hit_gain_ddpg", "hit_gain_pso", "hit_gain_ga", "reward_gain_ddpg"} <= keys
    assert all(r["trained_this_invocation"] and r["episodes"] == 3 for r in data["runs"].values())
    text = (rep / "report.md").read_text()
    assert "41.06%" in text and "Fig. 6" in text and "Reduced run" in text
    assert res["wall_s"]["trained_now"] == len(data["runs"])
