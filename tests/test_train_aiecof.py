"""AIECOF learners (TOPPO, the DQN family, AC/A2C) and `reproduce aiecof`: the algorithms' targets on
hand-made batches, the LSTM actor's step/sequence consistency, seeded repeatability and resume, learning
beyond random on a tiny scenario, and a tiny-settings reproduction."""

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from policies.evaluate import evaluate  # noqa: E402
from policies.reproduce import get_paper, run  # noqa: E402
from policies.reproduce.core import EVAL_SEED_BASE  # noqa: E402
from policies.reproduce.png import read_png_size  # noqa: E402
from policies.scenarios import make_simulator  # noqa: E402
from policies.scenarios.base import METRIC_KEYS  # noqa: E402
from policies.train import common  # noqa: E402
from policies.train.aiecof_ac import Segments, segment_targets  # noqa: E402
from policies.train.aiecof_dqn import QNet, dueling_combine, td_target  # noqa: E402
from policies.train.registry import ALGOS, train  # noqa: E402
from policies.train.toppo import (ActorLSTM, CriticLSTM, chunk_sequences, clipped_surrogate, gae,  # noqa: E402
                                  gae_per_device)

AIECOF_ALGOS = sorted(a for a, spec in ALGOS.items() if spec.scenario == "aiecof")
TINY_PRESET = {"num_devices": 4, "num_edges": 2, "slots_per_episode": 8}
TINY = {**TINY_PRESET, "batch_size": 8, "hidden": 16, "checkpoint_every": 1}


def is_dqn(algo: str) -> bool:
    return ALGOS[algo].module == "policies.train.aiecof_dqn"


def tiny(algo: str) -> dict:
    return {**TINY, "learning_starts": 8} if is_dqn(algo) else TINY


def rows(run_dir):
    with (run_dir / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


# -- TOPPO: GAE (eq. 35) and the clipped surrogate (eq. 36) on hand-made batches ---------------------------
def test_gae_by_hand_over_two_sequences():
    # two device sequences laid end to end: [r0 r1 r2 | r3 r4]; the value after a sequence's end is 0
    r = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    v = np.array([0.5, 1.0, 1.5, 2.0, 0.25])
    last = np.array([False, False, True, False, True])
    g, lam = 0.9, 0.8
    d = [1 + g * 1.0 - 0.5, 2 + g * 1.5 - 1.0, 3 - 1.5, 4 + g * 0.25 - 2.0, 5 - 0.25]  # eq. 32
    gl = g * lam
    want = [d[0] + gl * d[1] + gl ** 2 * d[2], d[1] + gl * d[2], d[2], d[3] + gl * d[4], d[4]]
    adv, ret = gae(r, v, last, g, lam)
    np.testing.assert_allclose(adv, want)
    np.testing.assert_allclose(ret, np.array(want) + v)
    # lambda = 0: A_t = delta_t, and the critic target A + V is the paper's r + gamma V(s') (eq. 33)
    adv0, ret0 = gae(r, v, last, g, 0.0)
    np.testing.assert_allclose(adv0, d)
    np.testing.assert_allclose(ret0, [1 + g * 1.0, 2 + g * 1.5, 3, 4 + g * 0.25, 5])
    # lambda = 1: the discounted Monte-Carlo return of the sequence minus V
    adv1, _ = gae(r, v, last, g, 1.0)
    np.testing.assert_allclose(adv1[:3], [1 + g * 2 + g * g * 3 - 0.5, 2 + g * 3 - 1.0, 3 - 1.5])


def test_gae_runs_over_each_devices_own_decisions_when_the_batch_interleaves_them():
    # an episode's batch is slot by slot: devices 0 and 1 alternate. Device 0's advantage discounts its own next
    # decision only, never device 1's (which sits next to it in the batch), and each device ends with value 0
    dev = np.array([0, 1, 0, 1, 0])
    r = np.array([1.0, 100.0, 2.0, 200.0, 3.0])
    v = np.array([0.5, 10.0, 1.0, 20.0, 1.5])
    g, lam = 0.9, 0.8
    adv, ret = gae_per_device(r, v, dev, g, lam)
    a0, _ = gae(r[[0, 2, 4]], v[[0, 2, 4]], np.array([False, False, True]), g, lam)
    a1, _ = gae(r[[1, 3]], v[[1, 3]], np.array([False, True]), g, lam)
    np.testing.assert_allclose(adv[[0, 2, 4]], a0)
    np.testing.assert_allclose(adv[[1, 3]], a1)
    np.testing.assert_allclose(ret, adv + v)
    assert adv[0] == pytest.approx((1 + g * 1.0 - 0.5) + g * lam * (2 + g * 1.5 - 1.0) + (g * lam) ** 2 * (3 - 1.5))
    # the batch's order is kept: a contiguous layout gives gae's own result
    dev_c = np.array([0, 0, 0, 1, 1])
    np.testing.assert_allclose(gae_per_device(r, v, dev_c, g, lam)[0],
                               gae(r, v, np.array([False, False, True, False, True]), g, lam)[0])


def test_clipped_surrogate_values_and_gradients():
    eps = 0.2
    old = torch.log(torch.tensor([0.5, 0.5, 0.5, 0.5]))
    # ratios 1.5, 1.5, 0.5, 1.1 with advantages +1, -1, -1, +2
    logp = torch.log(torch.tensor([0.75, 0.75, 0.25, 0.55])).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, -1.0, 2.0])
    loss, clipfrac = clipped_surrogate(logp, old, adv, eps)
    # min(r A, clip(r) A): 1.2 (clipped), -1.5 (unclipped: the pessimistic side), -0.8 (clipped), 2.2
    assert loss.item() == pytest.approx(-(1.2 - 1.5 - 0.8 + 2.2) / 4)
    assert clipfrac.item() == pytest.approx(3 / 4)
    loss.backward()
    g = logp.grad
    assert g[0] == 0 and g[2] == 0  # clipped in the direction of the advantage: no gradient
    assert g[1] == pytest.approx(-(-1.0) * 1.5 / 4)  # d(-r A / 4)/dlogp = -r A / 4
    assert g[3] == pytest.approx(-2.0 * 1.1 / 4)
    # a mask drops padded steps
    m = torch.tensor([True, False, False, True])
    lm, _ = clipped_surrogate(logp.detach(), old, adv, eps, m)
    assert lm.item() == pytest.approx(-(1.2 + 2.2) / 2)


def test_chunks_and_sequence_ends():
    dev = np.array([2, 0, 2, 1, 2, 0, 2])  # decisions in time order
    chunks = chunk_sequences(dev, 2)
    assert [c.tolist() for c in chunks] == [[1, 5], [3], [0, 2], [4, 6]]


def test_actor_steps_match_the_chunk_pass_and_export_signature():
    torch.manual_seed(0)
    actor, critic = ActorLSTM(21, 9, 8, 16), CriticLSTM(21, 8, 16)
    obs = torch.rand(3, 5, 21)
    h, c = torch.rand(3, 8), torch.rand(3, 8)
    seq = actor.sequence(obs, h, c)
    hh, cc = h, c
    for k in range(5):
        logits, hh, cc = actor(obs[:, k], hh, cc)  # (observation, h, c) -> (logits, h', c')
        assert logits.shape == (3, 9) and hh.shape == (3, 8) and cc.shape == (3, 8)
        torch.testing.assert_close(logits, seq[:, k])
    v, _, _ = critic(obs[:, 0], h, c)
    torch.testing.assert_close(v, critic.sequence(obs[:, :1], h, c)[:, 0, 0])


def test_actor_exports_to_onnx_with_the_lstm_state_as_inputs_and_outputs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    actor = ActorLSTM(21, 9, 8, 16).eval()
    obs, h, c = torch.rand(3, 21), torch.rand(3, 8), torch.rand(3, 8)
    path = tmp_path / "actor.onnx"
    torch.onnx.export(actor, (obs, h, c), str(path), dynamo=False, opset_version=17,
                      input_names=["observation", "h", "c"], output_names=["logits", "h_out", "c_out"],
                      dynamic_axes={k: {0: "batch"} for k in ("observation", "h", "c", "logits", "h_out", "c_out")})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    o2, h2, c2 = torch.rand(5, 21), torch.rand(5, 8), torch.rand(5, 8)
    got = sess.run(None, {"observation": o2.numpy(), "h": h2.numpy(), "c": c2.numpy()})
    with torch.no_grad():
        want = actor(o2, h2, c2)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)


# -- the DQN family and AC/A2C targets ------------------------------------------------------------------
def test_dqn_and_double_dqn_targets():
    rew = torch.tensor([1.0, 0.5, -1.0])
    done = torch.tensor([0.0, 0.0, 1.0])
    q_t = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 4.0], [9.0, 9.0, 9.0]])  # target network at s'
    q_o = torch.tensor([[5.0, 0.0, 1.0], [0.0, 7.0, 1.0], [0.0, 0.0, 1.0]])  # online network at s'
    g = 0.9
    dqn = td_target(rew, done, q_t, g)  # max_a Q_target
    assert dqn.tolist() == pytest.approx([1 + g * 3.0, 0.5 + g * 4.0, -1.0])
    ddqn = td_target(rew, done, q_t, g, q_next_online=q_o)  # Q_target at argmax_a Q_online
    assert ddqn.tolist() == pytest.approx([1 + g * 1.0, 0.5 + g * -1.0, -1.0])


def test_dueling_head_is_value_plus_centred_advantage():
    v = torch.tensor([[2.0], [-1.0]])
    a = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    q = dueling_combine(v, a)
    torch.testing.assert_close(q, torch.tensor([[1.0, 2.0, 3.0], [-3.0, -3.0, 3.0]]))
    torch.testing.assert_close(q.mean(-1, keepdim=True), v)  # mean_a Q = V
    net = QNet(5, 4, 8, dueling=True, head_hidden=4)
    assert net(torch.rand(2, 5)).shape == (2, 4)


def test_n_step_segments_of_a2c():
    g = 0.5
    gs, ds = segment_targets(np.array([1.0, 2.0, 4.0]), g, bootstrap=True)
    np.testing.assert_allclose(gs, [1 + g * 2 + g * g * 4, 2 + g * 4, 4])
    np.testing.assert_allclose(ds, [g ** 3, g ** 2, g])
    _, d_end = segment_targets(np.array([1.0, 2.0]), g, bootstrap=False)
    assert d_end.tolist() == [0.0, 0.0]
    seg = Segments(agents=2, n=2, gamma=g)
    o = lambda x: np.full(3, x, np.float32)  # noqa: E731
    assert seg.step(np.array([0, 1]), np.stack([o(0), o(10)]), np.array([1, 2]), np.array([1.0, 5.0])) == []
    assert seg.step(np.array([0]), np.stack([o(1)]), np.array([3]), np.array([2.0])) == []
    out = seg.step(np.array([0]), np.stack([o(2)]), np.array([4]), np.array([3.0]))  # closes device 0's 2-segment
    assert [(x[1], x[2], x[3]) for x in out] == [(1, 1 + g * 2.0, g ** 2), (3, 2.0, g)]
    assert all((x[4] == o(2)).all() for x in out)  # bootstrapped from the device's next observation
    rest = seg.flush()  # end of the episode: no bootstrap
    assert sorted((x[1], x[3]) for x in rest) == [(2, 0.0), (4, 0.0)]


def test_pending_transitions_complete_on_the_agents_next_decision():
    p = common.PendingTransitions(agents=3, obs_dim=2)
    o = lambda *v: np.array(v, np.float32)  # noqa: E731
    out = p.step(np.array([0, 2]), np.stack([o(0, 0), o(2, 2)]), np.array([1, 2]), np.array([0.1, 0.2]))
    assert out["act"].size == 0
    out = p.step(np.array([2]), np.stack([o(2, 3)]), np.array([0]), np.array([0.3]))
    assert out["agent"].tolist() == [2] and out["act"].tolist() == [2] and out["done"].tolist() == [0.0]
    assert out["rew"].tolist() == pytest.approx([0.2]) and out["next_obs"].tolist() == [[2, 3]]
    end = p.flush()
    assert sorted(end["agent"].tolist()) == [0, 2] and end["done"].tolist() == [1.0, 1.0]
    assert (end["next_obs"] == 0).all()


# -- training runs -------------------------------------------------------------------------------------
def test_every_aiecof_algo_is_registered():
    assert set(AIECOF_ALGOS) == {"toppo", "aiecof_dqn", "aiecof_ddqn", "aiecof_dueling", "aiecof_d3qn", "aiecof_ac",
                                 "aiecof_a2c"}


@pytest.mark.parametrize("algo", AIECOF_ALGOS)
def test_seeded_runs_repeat_exactly(tmp_path, algo):
    a = train(algo, "aiecof", 3, tmp_path / "a", tiny(algo), episodes=3, progress=False)
    b = train(algo, "aiecof", 3, tmp_path / "b", tiny(algo), episodes=3, progress=False)
    keys = [k for k in rows(tmp_path / "a")[0] if k != "episode_s"]
    assert [[r[k] for k in keys] for r in rows(tmp_path / "a")] == [[r[k] for k in keys] for r in rows(tmp_path / "b")]
    assert a["critic_loss"] == b["critic_loss"] and np.isfinite(a["critic_loss"])  # updates ran
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["algo"] == algo and cfg["preset"]["num_devices"] == 4 and cfg["config"]["gamma"] == 0.9
    c = train(algo, "aiecof", 4, tmp_path / "c", tiny(algo), episodes=3, progress=False)
    assert c["reward"] != a["reward"]  # another seed, another run


def test_flags_of_the_registered_variants(tmp_path):
    want = {"aiecof_dqn": (False, False), "aiecof_ddqn": (True, False), "aiecof_dueling": (False, True),
            "aiecof_d3qn": (True, True)}
    for algo, (double, dueling) in want.items():
        train(algo, "aiecof", 0, tmp_path / algo, TINY, episodes=1, progress=False)
        cfg = json.loads((tmp_path / algo / "config.json").read_text())["config"]
        assert (cfg["double"], cfg["dueling"]) == (double, dueling)
    train("aiecof_a2c", "aiecof", 0, tmp_path / "a2c", TINY, episodes=1, progress=False)
    cfg = json.loads((tmp_path / "a2c" / "config.json").read_text())["config"]
    assert cfg["n_step"] == 5 and cfg["shared_trunk"] and cfg["entropy_coef"] == 0.01


def test_toppo_resume_continues_exactly(tmp_path):
    train("toppo", "aiecof", 1, tmp_path / "straight", TINY, episodes=4, progress=False)
    train("toppo", "aiecof", 1, tmp_path / "run", TINY, episodes=2, progress=False)
    train("toppo", "aiecof", 1, tmp_path / "run", TINY, episodes=4, progress=False)
    keys = ("reward", "latency_s", "critic_loss", "actor_loss")
    assert [[r[k] for k in keys] for r in rows(tmp_path / "run")] == \
        [[r[k] for k in keys] for r in rows(tmp_path / "straight")]


def test_trained_runs_evaluate_as_policies_with_lstm_state_reset(tmp_path):
    sim = make_simulator("aiecof", TINY_PRESET)
    names = []
    for algo in ("toppo", "aiecof_d3qn", "aiecof_a2c"):
        train(algo, "aiecof", 0, tmp_path / algo, tiny(algo), episodes=2, progress=False)
        names.append(str(tmp_path / algo))
    res = evaluate(sim, names + [f"run:{names[0]}"], episodes=3, seed=0, progress=False)
    assert res.results[names[0]] == res.results[f"run:{names[0]}"]  # LSTM state zeroed at every episode
    # parameter sharing: a run acts with another number of devices, but not with another number of ESs
    more = make_simulator("aiecof", {**TINY_PRESET, "num_devices": 7})
    assert evaluate(more, names, episodes=1, seed=0, progress=False).results
    from policies.errors import UserError

    with pytest.raises(UserError, match="edge servers"):
        evaluate(make_simulator("aiecof", {**TINY_PRESET, "num_edges": 3}), names[:1], episodes=1, seed=0)


def test_trainers_read_the_observations_of_the_pettingzoo_env():
    """The trainers call sim.observation(sim.view()) (rows with a task); AiecofEnv shows the same rows."""
    from policies.scenarios.aiecof import AiecofEnv

    env = AiecofEnv(seed=5, **TINY_PRESET)
    obs, infos = env.reset(seed=5)
    sim = env.sim
    for _ in range(4):
        view = sim.view()
        mine = sim.observation(view)
        theirs = np.stack([obs[f"device_{m}"] for m in view.source]) if view.n else np.zeros((0, sim.obs_dim()))
        np.testing.assert_array_equal(mine, theirs)
        assert [infos[f"device_{m}"]["has_task"] for m in range(sim.M)] == [m in set(view.source) for m in range(sim.M)]
        obs, _, _, _, infos = env.step({a: 0 for a in env.agents})


# -- learning: every algorithm beats random on a tiny scenario ----------------------------------------
# 16 devices, 4 ESs, 30 slots, eq. 30's team return over 10 evaluation episodes: random (uniform over the 9
# targets) ~85, all-local ~98, greedy ~120. An untrained network acts nearly the same everywhere (argmax) or
# uniformly (sampled), i.e. like one ES for every task (~60) or like random (~85): a learner passes only by
# learning what eq. 30 pays for (in 12 episodes the learners find at least all-local; the DQN family more).
LEARN_PRESET = {"num_devices": 16, "num_edges": 4, "slots_per_episode": 30}
LEARN_EPISODES = 12


@pytest.mark.parametrize("algo", AIECOF_ALGOS)
def test_learns_beyond_random_on_a_tiny_scenario(tmp_path, algo):
    cfg = {**LEARN_PRESET, **({"eps_decay_episodes": 8} if is_dqn(algo) else {})}
    train(algo, "aiecof", 0, tmp_path, cfg, episodes=LEARN_EPISODES, progress=False)
    sim = make_simulator("aiecof", LEARN_PRESET)
    res = evaluate(sim, ["random", str(tmp_path)], episodes=10, seed=EVAL_SEED_BASE, progress=False).results
    assert res[str(tmp_path)]["reward"] > res["random"]["reward"] + 5.0, res


# -- `reproduce aiecof` with tiny settings ---------------------------------------------------------------
REPRO_TINY = dict(episodes=2, eval_episodes=1, jobs=1, preset_overrides={"slots_per_episode": 4},
                  algo_overrides={"batch_size": 64, "hidden": 16, "checkpoint_every": 1},
                  x_subset={"devices": (20, 30), "edge_capacity": ("1.0",), "hyper": ("gamma",),
                            "task_types": ("0.2", "1.0")})


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro_aiecof")
    res = run("aiecof", quick=True, seeds=2, out=root / "report", runs=root / "runs", **REPRO_TINY)
    return root, res


def test_quick_reproduction_writes_report_results_and_figures(quick):
    root, res = quick
    rep = root / "report"
    figs = ("fig5_convergence.png", "fig6_table4.png", "fig8_devices.png", "fig9_edge_capacity.png", "fig3_gamma.png",
            "fig4_task_types.png", "fig7_cpu_util.png")
    for name in ("report.md", "results.json") + figs:
        assert (rep / name).is_file(), name
    for png in rep.glob("*.png"):
        w, h = read_png_size(png)
        assert w >= 400 and h >= 300
    text = (rep / "report.md").read_text()
    for needle in ("Table IV", "74.57%", "0.265", "Fig. 3", "Fig. 4", "Fig. 7", "Fig. 8", "Fig. 9", "Reduced run",
                   "does not model"):
        assert needle in text, needle


def test_results_json_has_every_method_metric_and_seed(quick):
    root, _ = quick
    data = json.loads((root / "report" / "results.json").read_text())
    spec = get_paper("aiecof")
    assert data["paper"] == "aiecof" and data["mode"] == "quick" and data["settings"]["seeds"] == 2
    assert set(data["experiments"]) == {"table4", "devices", "edge_capacity"}
    assert data["experiments"]["devices"]["x_values"] == ["20", "30"]
    assert data["experiments"]["edge_capacity"]["x_values"] == ["1.0"]  # s = 1 is the M = 30 point
    assert spec.quick().x_subset["edge_capacity"] == ("0.25", "1.0")
    for exp in data["experiments"].values():
        for pt in exp["points"].values():
            assert set(pt["methods"]) == {m.key for m in spec.methods}
            for metrics in pt["methods"].values():
                for key in ("latency_s", "energy_j", "drop_rate", "load", "reward", "completion_rate"):
                    assert key in METRIC_KEYS
                    assert set(metrics[key]) >= {"mean", "std", "per_seed"} and len(metrics[key]["per_seed"]) == 2
                assert "energy_episode_j" in metrics
    assert set(data["convergence"]["methods"]) == set(AIECOF_ALGOS)
    # 7 trained methods x 2 points (M20, M30) x 2 seeds
    assert len(data["runs"]) == 7 * 2 * 2 and all(r["trained_this_invocation"] for r in data["runs"].values())
    ex = data["extra"]
    assert set(ex["hyper"]["panels"]) == {"gamma"} and ex["hyper"]["trained_now"] == 3  # gamma 0, 0.5, 0.99; seed 0
    assert ex["hyper"]["panels"]["gamma"]["variants"]["gamma=0.9"]["default"]
    assert ex["task_types"]["p_values"] == [0.2, 1.0]
    assert set(ex["cpu_util"]) == {"after_episode_1", "after_training", "training_log"}
    keys = {r["key"] for r in data["headline"]}
    assert {"energy_reduction_round_robin", "delay_reduction_aiecof_d3qn", "reward_gain_aiecof_dqn", "cpu_after",
            "toppo_reward"} <= keys


def test_numbers_come_from_the_runs_just_made(quick):
    root, res = quick
    pt = res["experiments"]["table4"]["points"]["30"]
    run_dir = pt["runs"]["toppo"][1]  # seed 1
    assert run_dir.startswith(str(root / "runs"))
    sim = make_simulator("aiecof", {"slots_per_episode": 4, "num_devices": 30})
    again = evaluate(sim, [run_dir], 1, EVAL_SEED_BASE + 1, progress=False).results[run_dir]
    assert again["reward"] == pytest.approx(pt["methods"]["toppo"]["reward"]["per_seed"][1])
    res2 = run("aiecof", quick=True, seeds=2, out=root / "report2", runs=root / "runs", **REPRO_TINY)
    assert res2["wall_s"]["trained_now"] == 0 and res2["extra"]["hyper"]["trained_now"] == 0


def test_fig9_scales_from_04_evaluate_the_m30_runs(quick):
    """Fig. 9's s >= 0.4 (other than 1.0) is the M = 30 MDP: those points train nothing and evaluate the M30
    runs at their scale (here on the fixture's runs: nothing is trained); the report says so."""
    from policies.reproduce.aiecof import s_point

    assert s_point("0.25").policies_from is None and s_point("1.0").name == "M30"
    assert all(s_point(s).policies_from == "M30" for s in ("0.5", "0.75", "1.25"))
    root, res = quick
    res3 = run("aiecof", quick=True, seeds=2, out=root / "report3", runs=root / "runs",
               **{**REPRO_TINY, "experiments": ("edge_capacity",), "x_subset": {"edge_capacity": ("0.5", "1.0")}})
    assert res3["wall_s"]["trained_now"] == 0 and not (root / "runs" / "M30_s0.5").exists()
    pts = res3["experiments"]["edge_capacity"]["points"]
    assert pts["0.5"]["policies_from"] == "M30" and pts["0.5"]["runs"] == pts["1.0"]["runs"]
    assert pts["0.5"]["runs"]["toppo"] == res["experiments"]["table4"]["points"]["30"]["runs"]["toppo"]
    assert pts["0.5"]["methods"]["greedy"]["reward"] == pts["1.0"]["methods"]["greedy"]["reward"]  # the same MDP
    text = (root / "report3" / "report.md").read_text()
    assert "Not retrained: at ES CPU scale s = 0.5 (points `M30_s0.5`)" in text


def test_dqn_keeps_every_decision_when_an_episode_ends_on_a_slot_without_tasks(tmp_path):
    # sparse arrivals on a short episode: several episodes end on an empty slot, whose devices' last decisions
    # (the terminal transitions) used to be dropped with the next episode's reset
    from policies.scenarios import make_simulator
    from policies.scenarios.base import OffloadDecision
    from policies.train.common import load_checkpoint
    from policies.train.toppo import TRAIN_WORKLOAD_STREAM
    from policies.workload import episode_rng

    preset = {"num_devices": 2, "arrival_prob_a": 0.3, "arrival_prob_b": 0.3, "slots_per_episode": 6}
    episodes = 8
    train("aiecof_dqn", "aiecof", 0, tmp_path / "run", {**preset, "learning_starts": 10_000, "checkpoint_every": 1},
          episodes=episodes, progress=False)
    sim = make_simulator("aiecof", preset)
    decisions, ends, empty_last = 0, 0, 0
    for ep in range(episodes):
        sim.reset(sim.generate_workload(episode_rng(0, ep, TRAIN_WORKLOAD_STREAM), ep))
        acted: set[int] = set()
        last_n = 0
        while not sim.done:
            view = sim.view()
            decisions += view.n
            acted.update(int(m) for m in view.source)
            last_n = view.n
            sim.step(OffloadDecision(target=np.zeros(view.n, dtype=np.int64)))
        ends += len(acted)
        empty_last += last_n == 0
    assert empty_last >= 2  # the case under test happens
    buf = load_checkpoint(tmp_path / "run")["buffer"]
    assert buf["size"] == decisions  # one transition per decision
    assert int(buf["data"]["done"].sum()) == ends  # each device's last decision of each episode is terminal
