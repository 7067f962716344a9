"""GMEL learners (policies/train/amarl.py, gmel_baselines.py) and `reproduce gmel`: smoke trains, the
attention and dueling critic, the targets on hand-made batches, learning beats random on a tiny scene,
seeded runs repeat exactly and resume exactly, a trained run is a policy, and a tiny quick reproduction."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from policies.evaluate import evaluate  # noqa: E402
from policies.scenarios import make_simulator  # noqa: E402
from policies.train import common  # noqa: E402
from policies.train.registry import ALGOS, train  # noqa: E402

GMEL_ALGOS = sorted(a for a, spec in ALGOS.items() if spec.scenario == "gmel")
TINY_PRESET = {"num_devices": 4, "slots_per_episode": 6}
TINY = {**TINY_PRESET, "batch_size": 8, "hidden": 16, "warmup_episodes": 1, "checkpoint_every": 1, "update_every": 2}


def rows(run):
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_the_four_gmel_algorithms_are_registered():
    assert GMEL_ALGOS == ["amarl", "gmel_ac", "gmel_dqn", "gmel_maddpg"]


@pytest.mark.parametrize("algo", GMEL_ALGOS)
def test_smoke_train_every_gmel_algo(tmp_path, algo):
    out = tmp_path / algo
    last = train(algo, "gmel", 0, out, TINY, episodes=3, progress=False)
    assert last["episode"] == 2
    assert {p.name for p in out.iterdir()} >= {"checkpoint.pt", "metrics.csv", "config.json"}
    r = rows(out)
    assert [int(x["episode"]) for x in r] == [0, 1, 2]
    assert not math.isnan(float(r[-1]["critic_loss"]))  # updates ran
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["algo"] == algo and cfg["scenario"] == "gmel" and cfg["num_agents"] == 4 and cfg["obs_dim"] == 25
    assert (cfg["config"]["lr_actor"], cfg["config"]["lr_critic"], cfg["config"]["gamma"]) == (1e-3, 5e-3, 0.99)
    if algo != "amarl":
        assert cfg["config"]["method"] == {"gmel_maddpg": "maddpg", "gmel_ac": "ac", "gmel_dqn": "dqn"}[algo]


def test_paper_hyperparameters_are_the_defaults():
    from policies.train.amarl import Config

    c = Config()
    assert (c.lr_actor, c.lr_critic, c.gamma, c.batch_size, c.dropout, c.episodes) == (1e-3, 5e-3, 0.99, 64, 0.1, 5000)


# -- the AMARL critic ---------------------------------------------------------------------------------
def test_attention_weights_sum_to_one_over_the_other_agents():
    from policies.train.amarl import AttentionCritic

    torch.manual_seed(0)
    critic = AttentionCritic(25, 6, hidden=32, heads=4)
    obs = torch.rand(3, 5, 25)
    act = torch.nn.functional.one_hot(torch.randint(0, 6, (3, 5)), 6).float()
    _, omega, w = critic.attention(obs, act)
    assert w.shape == (3, 4, 5, 5) and omega.shape == (3, 5, 32)
    assert torch.allclose(w.sum(-1), torch.ones(3, 4, 5))
    assert torch.all(torch.diagonal(w, dim1=-2, dim2=-1) == 0)  # no attention to itself
    # omega_i depends on the others only: changing agent 0's action leaves omega_0 unchanged, moves omega_1
    act2 = act.clone()
    act2[:, 0] = torch.nn.functional.one_hot((act[:, 0].argmax(-1) + 1) % 6, 6).float()
    _, omega2, _ = critic.attention(obs, act2)
    assert torch.allclose(omega2[:, 0], omega[:, 0]) and not torch.allclose(omega2[:, 1], omega[:, 1])


def test_dueling_head_q_is_value_plus_centred_advantage():
    from policies.train.amarl import AttentionCritic

    torch.manual_seed(1)
    critic = AttentionCritic(25, 6, hidden=16, heads=2).eval()
    obs, act = torch.rand(2, 3, 25), torch.zeros(2, 3, 6)
    q = critic(obs, act)
    e_self, omega, _ = critic.attention(obs, act)
    z = critic.phi(torch.cat([e_self, omega], -1))
    assert torch.allclose(q.mean(-1, keepdim=True), critic.v_head(z), atol=1e-6)  # mean_a Q = V
    adv = critic.a_head(z)
    assert torch.allclose(q - q.mean(-1, keepdim=True), adv - adv.mean(-1, keepdim=True), atol=1e-6)


# -- targets on hand-made batches ------------------------------------------------------------------------
class FixedQ(torch.nn.Module):
    """A stand-in critic returning fixed values (and recording its inputs)."""

    def __init__(self, q):
        super().__init__()
        self.q = q

    def forward(self, obs, act, own_act=None):
        self.seen = act
        return self.q


class FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, obs):
        return self.logits.expand(*obs.shape[:-1], -1)


def batch(B=2, I=2, D=25):
    return {"obs": torch.zeros(B, I, D), "next_obs": torch.zeros(B, I, D), "act": torch.zeros(B, I, dtype=torch.int8),
            "has": torch.ones(B, I), "next_has": torch.tensor([[1.0, 0.0], [1.0, 1.0]]),
            "rew": torch.tensor([[1.0, -2.5], [0.5, 0.0]]), "done": torch.tensor([0.0, 1.0])}


def test_amarl_target_is_the_soft_expected_value_of_eq8():
    from policies.train.amarl import AmarlLearner, Config

    cfg = Config(hidden=8, entropy=0.5, smooth_sigma=0.0, gamma=0.9)
    L = AmarlLearner(cfg, 25, 3, 2)
    logits = torch.tensor([0.0, math.log(2.0), math.log(3.0)])  # pi' = (1/6, 2/6, 3/6)
    q = torch.tensor([1.0, 2.0, 4.0]).expand(2, 2, 3)
    L.actor_t, L.critic_t = FixedLogits(logits), FixedQ(q)
    pi = torch.tensor([1 / 6, 2 / 6, 3 / 6])
    soft = float((pi * (torch.tensor([1.0, 2.0, 4.0]) - 0.5 * pi.log())).sum())  # E[Q - lambda log pi]
    y = L.target(batch(I=2))
    # sample 0 bootstraps; agent 1 has no task next slot: Q'(0) = 1 and no entropy bonus. Sample 1 is terminal.
    assert torch.allclose(y, torch.tensor([[1.0 + 0.9 * soft, -2.5 + 0.9 * 1.0], [0.5, 0.0]]), atol=1e-6)
    seen = L.critic_t.seen  # the target actions fed to Q': one-hot for agents with a task, zero without
    assert torch.equal(seen.sum(-1), torch.tensor([[1.0, 0.0], [1.0, 1.0]]))


def test_target_policy_smoothing_noise_is_clipped_and_keeps_empty_rows():
    from policies.train.amarl import smoothed

    torch.manual_seed(0)
    a = torch.zeros(500, 2, 4)
    a[:, 0, 1] = 1.0
    s = smoothed(a, sigma=5.0, clip=0.5)
    assert torch.all(s[:, 1] == 0)  # an agent without a task stays a zero row
    assert s.min() >= 0 and s.max() <= 1
    assert torch.all(s[:, 0, 1] >= 0.5) and torch.all(s[:, 0, [0, 2, 3]] <= 0.5)  # noise clipped to +-0.5
    assert (s[:, 0, 0] > 0).any() and (s[:, 0, 1] < 1).any()


def test_amarl_actor_gradient_is_the_expected_q_gradient():
    """Eq. 5 with the relaxed action: the actor loss is sum_a pi(a) (lambda log pi(a) - Q(a))."""
    from policies.train.amarl import AmarlLearner, Config

    torch.manual_seed(0)
    L = AmarlLearner(Config(hidden=8, dropout=0.0, entropy=0.0, lr_actor=0.05, actor_grad_clip=1e9), 25, 3, 2)
    L.critic = torch.nn.Module()  # replaced below by a fixed Q with action 2 best for every agent
    q = torch.tensor([0.0, 0.0, 5.0]).expand(4, 2, 3).clone().requires_grad_(True)

    class Q(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, obs, act):
            return q + 0 * self.w

    L.critic, L.critic_t = Q(), Q()
    L.critic_opt = torch.optim.Adam(L.critic.parameters(), lr=1e-3)
    L.actor_t = FixedLogits(torch.zeros(3))
    b = {**batch(B=4), "obs": torch.rand(4, 2, 25), "next_obs": torch.rand(4, 2, 25),
         "next_has": torch.ones(4, 2), "rew": torch.zeros(4, 2), "done": torch.zeros(4)}
    p0 = torch.softmax(L.actor(b["obs"]), -1)[..., 2].mean()
    for _ in range(20):
        L.update(b)
    L.actor.eval()
    assert torch.softmax(L.actor(b["obs"]), -1)[..., 2].mean() > p0 + 0.3


def test_maddpg_target_and_own_action_substitution():
    from policies.train.gmel_baselines import Config, JointCritic, MaddpgLearner

    L = MaddpgLearner(Config(hidden=8, gamma=0.5), 25, 3, 2)
    L.critic_t = FixedQ(torch.tensor([[2.0, 4.0], [6.0, 8.0]]))
    L.actor_t = FixedLogits(torch.tensor([0.0, 50.0, 0.0]))  # a' = action 1 (almost surely)
    y = L.target(batch())
    assert torch.allclose(y, torch.tensor([[1.0 + 0.5 * 2.0, -2.5 + 0.5 * 4.0], [0.5, 0.0]]))
    assert torch.equal(L.critic_t.seen, torch.tensor([[[0.0, 1, 0], [0, 0, 0]], [[0, 1, 0], [0, 1, 0]]]))
    # the split first layer equals the MLP on (o_i, a_i, o_1..o_I, a_1..a_I); own_act swaps agent i's action
    torch.manual_seed(0)
    I, D, A, B = 3, 5, 4, 2
    c = JointCritic(I, D, A, 8)
    obs, act = torch.rand(B, I, D), torch.rand(B, I, A)
    cur = torch.rand(B, I, A)
    q = c(obs, act, own_act=cur)
    for i in range(I):
        a = act.clone()
        a[:, i] = cur[:, i]
        assert torch.allclose(q[:, i], c(obs, a)[:, i], atol=1e-5)
        full = torch.cat([obs[:, i], a[:, i], obs.reshape(B, -1), a.reshape(B, -1)], -1)
        w = torch.cat([c.own.weight, c.joint.weight], 1)
        ref = c.rest(full @ w.T + c.joint.bias).squeeze(-1)
        assert torch.allclose(q[:, i], ref, atol=1e-5)


def test_dqn_target_max_for_agents_with_a_task_and_action_0_without():
    from policies.train.gmel_baselines import Config, DqnLearner

    L = DqnLearner(Config(hidden=8, gamma=0.5), 25, 3, 2)
    L.q_t = FixedQ(torch.tensor([1.0, 3.0, 2.0]).expand(2, 2, 3))
    L.q_t.forward = lambda obs: torch.tensor([1.0, 3.0, 2.0]).expand(2, 2, 3)
    y = L.target(batch())
    assert torch.allclose(y, torch.tensor([[1.0 + 0.5 * 3.0, -2.5 + 0.5 * 1.0], [0.5, 0.0]]))


def test_actor_critic_transitions_bootstrap_the_last_slot_from_itself():
    from policies.train.gmel_baselines import ActorCriticLearner

    T, I, D = 3, 2, 25
    obs = np.arange(T * I * D, dtype=np.float32).reshape(T, I, D)
    ep = {"obs": obs, "act": np.array([[1, 0], [2, 3], [0, 5]]), "has": np.ones((T, I), np.float32),
          "rew": np.arange(T * I, dtype=np.float32).reshape(T, I), "done": np.zeros(T, np.float32)}
    tr = ActorCriticLearner.agent_transitions(ep)
    assert torch.equal(tr["next_obs"][0], torch.from_numpy(obs[1, 0]))  # agent 0, slot 0 -> slot 1
    assert torch.equal(tr["next_obs"][5], torch.from_numpy(obs[2, 1]))  # agent 1, last slot -> itself
    assert tr["live"].tolist() == [1.0] * 6 and tr["act"].tolist() == [1, 0, 2, 3, 0, 5]
    ep["done"][-1] = 1.0
    assert ActorCriticLearner.agent_transitions(ep)["live"].tolist() == [1, 1, 1, 1, 0, 0]


def test_episode_replay_next_rows():
    rb = common.EpisodeReplay(7, {"obs": (1,)})
    rb.add_episode(obs=np.array([[0.0], [1.0], [2.0]]), done=np.array([0.0, 0.0, 0.0]))  # time-limited
    rb.add_episode(obs=np.array([[10.0], [11.0], [12.0]]), done=np.array([0.0, 0.0, 1.0]))  # terminal
    b = rb.sample(np.random.default_rng(0), 200)
    nxt = {float(o): float(n) for o, n in zip(b["obs"][:, 0], b["next_obs"][:, 0])}
    assert nxt[0.0] == 1.0 and nxt[1.0] == 2.0 and nxt[2.0] == 2.0  # the cut episode's last row: itself
    assert nxt[10.0] == 11.0 and nxt[11.0] == 12.0
    rb.add_episode(obs=np.array([[20.0], [21.0], [22.0]]), done=np.array([0.0, 0.0, 0.0]))  # wraps around
    b = rb.sample(np.random.default_rng(1), 300)
    nxt = {float(o): float(n) for o, n in zip(b["obs"][:, 0], b["next_obs"][:, 0])}
    assert nxt[20.0] == 21.0 and nxt[21.0] == 22.0 and nxt[22.0] == 22.0 and 0.0 not in nxt
    state = rb.state_dict()
    rb2 = common.EpisodeReplay(7, {"obs": (1,)})
    rb2.load_state_dict(state)
    assert all(np.array_equal(rb.data[k], rb2.data[k]) for k in rb.data) and np.array_equal(rb.last, rb2.last)


def test_slot_rewards_are_c_minus_latency_of_each_slot_task():
    from policies.scenarios.base import OffloadDecision
    from policies.train.amarl import slot_rewards
    from policies.workload import episode_rng

    sim = make_simulator("gmel", {"num_devices": 3, "slots_per_episode": 5, "task_probability": 0.7})
    sim.reset(sim.generate_workload(episode_rng(0, 0, 0), 0))
    while not sim.done:
        sim.step(OffloadDecision(target=np.arange(sim.I) % 2))  # IED 0 and 2 local, IED 1 to edge0
    r = slot_rewards(sim)
    assert r.shape == (5, 3)
    ok = sim.status == 1
    expect = np.where(ok, 2.5 - sim.latency_s, -2.5)
    assert np.allclose(r[sim.slot_of, sim.src_of], expect)
    assert r.sum() == pytest.approx(sim.episode_metrics()["reward"] * sim.I, abs=1e-4)
    mask = np.ones_like(r, dtype=bool)
    mask[sim.slot_of, sim.src_of] = False
    assert np.all(r[mask] == 0)  # no task, no reward


# -- learning, determinism, resume -------------------------------------------------------------------------
# a tiny scene where random is poor and the rule to learn is simple: ES 4 has the only wide band and
# fast CPU, ESs 0-3 are starved (0.2 MHz, 0.5 GHz); 3 IEDs, 20 slots
LEARN_PRESET = {"num_devices": 3, "slots_per_episode": 20, "task_probability": 0.6,
                "server_bandwidth_mhz": [0.2, 0.2, 0.2, 0.2, 20.0], "server_cpu_ghz": [0.5, 0.5, 0.5, 0.5, 20.0]}
LEARN = {**LEARN_PRESET, "hidden": 32, "batch_size": 32, "warmup_episodes": 3, "update_every": 1,
         "checkpoint_every": 100}
LEARN_EPISODES = {"amarl": 30, "gmel_maddpg": 30, "gmel_dqn": 40, "gmel_ac": 100}


@pytest.mark.parametrize("algo", GMEL_ALGOS)
def test_each_algorithm_beats_random_on_a_tiny_scene(tmp_path, algo):
    extra = {"eps_decay_fraction": 0.5} if algo == "gmel_dqn" else {}
    train(algo, "gmel", 0, tmp_path, {**LEARN, **extra}, episodes=LEARN_EPISODES[algo], progress=False)
    sim = make_simulator("gmel", LEARN_PRESET)
    res = evaluate(sim, ["random", str(tmp_path)], episodes=8, seed=7, progress=False).results
    learned, rnd = res[str(tmp_path)]["completion_rate"], res["random"]["completion_rate"]
    assert learned > rnd + 0.15, (learned, rnd)


def test_seeded_runs_repeat_exactly_and_resume_exactly(tmp_path):
    cfg = {**TINY, "warmup_episodes": 1}
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    train("amarl", "gmel", 3, a, cfg, episodes=4, progress=False)
    train("amarl", "gmel", 3, b, cfg, episodes=4, progress=False)
    train("amarl", "gmel", 3, c, cfg, episodes=2, progress=False)
    train("amarl", "gmel", 3, c, cfg, episodes=4, progress=False)  # resumed from the episode-2 checkpoint
    keys = ("reward", "completion_rate", "critic_loss", "actor_loss", "entropy")
    ra, rb, rc = ([[x[k] for k in keys] for x in rows(d)] for d in (a, b, c))
    assert ra == rb == rc
    assert [int(x["global_step"]) for x in rows(c)] == [6, 12, 18, 24]
    assert len(json.loads((c / "config.json").read_text())["command_history"]) == 2


@pytest.mark.parametrize("algo", ["gmel_dqn", "gmel_ac"])
def test_baselines_resume_exactly(tmp_path, algo):
    cfg = {**TINY, "eps_start": 0.3, "eps_end": 0.3}  # DQN's epsilon schedule spans --episodes: keep it flat
    a, c = tmp_path / "a", tmp_path / "c"
    train(algo, "gmel", 1, a, cfg, episodes=4, progress=False)
    train(algo, "gmel", 1, c, cfg, episodes=2, progress=False)
    train(algo, "gmel", 1, c, cfg, episodes=4, progress=False)
    keys = ("reward", "critic_loss", "actor_loss")
    assert [[x[k] for k in keys] for x in rows(a)] == [[x[k] for k in keys] for x in rows(c)]


def test_trained_run_is_a_policy_for_any_number_of_iedss(tmp_path):
    train("amarl", "gmel", 0, tmp_path, TINY, episodes=2, progress=False)
    sim = make_simulator("gmel", TINY_PRESET)
    res = evaluate(sim, ["greedy", str(tmp_path), f"run:{tmp_path}"], episodes=2, seed=0, progress=False).results
    assert res[str(tmp_path)] == res[f"run:{tmp_path}"]  # deterministic (argmax) actors
    assert 0.0 <= res[str(tmp_path)]["completion_rate"] <= 1.0
    more = make_simulator("gmel", {"num_devices": 7, "slots_per_episode": 4})  # decentralized: one row per IED
    assert evaluate(more, [str(tmp_path)], episodes=1, seed=0, progress=False).results


def test_wrong_scenario_is_a_one_sentence_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "policies.cli", "train", "--scenario", "mato", "--algo", "amarl",
                        "--episodes", "1", "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "trains on 'gmel' scenarios" in p.stderr and "Traceback" not in p.stderr


def test_cli_train_then_evaluate(tmp_path):
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    p = subprocess.run([sys.executable, "-m", "policies.cli", "train", "--scenario", "gmel", "--algo", "amarl",
                        "--seed", "0", "--episodes", "2", "--out", str(tmp_path), *sets],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    presets = [x for k, v in TINY_PRESET.items() for x in ("--set", f"{k}={v}")]
    p = subprocess.run([sys.executable, "-m", "policies.cli", "evaluate", "--scenario", "gmel", "--policies",
                        f"random,run:{tmp_path}", "--episodes", "1", "--json", *presets],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"run:{tmp_path}" in json.loads(p.stdout)["results"]


# -- `reproduce gmel --quick` with tiny settings ----------------------------------------------------------------
REPRO = dict(episodes=2, eval_episodes=1, jobs=1, preset_overrides={"slots_per_episode": 4},
             algo_overrides={"batch_size": 8, "hidden": 16, "warmup_episodes": 1, "update_every": 2,
                             "checkpoint_every": 1})


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from policies.reproduce import run

    root = tmp_path_factory.mktemp("repro_gmel")
    res = run("gmel", quick=True, seeds=2, out=root / "report", runs=root / "runs", **REPRO)
    return root, res


def test_quick_reproduction_writes_report_results_and_figures(quick):
    from policies.reproduce.png import read_png_size

    root, _ = quick
    rep = root / "report"
    for name in ("report.md", "results.json", "fig3_convergence.png", "fig4_task_probability.png",
                 "fig5_deadline.png", "fig6_devices.png"):
        assert (rep / name).is_file(), name
    for png in rep.glob("*.png"):
        w, h = read_png_size(png)
        assert w >= 400 and h >= 300
    text = (rep / "report.md").read_text()
    assert "6.93%" in text and "4.64%" in text and "Fig. 6" in text and "Reduced run" in text


def test_quick_results_json_structure_and_numbers(quick):
    from policies.reproduce import get_paper
    from policies.reproduce.core import EVAL_SEED_BASE
    from policies.scenarios.base import METRIC_KEYS

    root, res = quick
    data = json.loads((root / "report" / "results.json").read_text())
    spec = get_paper("gmel")
    assert data["paper"] == "gmel" and data["mode"] == "quick" and data["settings"]["seeds"] == 2
    assert data["experiments"]["task_probability"]["x_values"] == ["0.5", "0.7"]
    assert data["experiments"]["deadline"]["x_values"] == ["1.0"]
    assert data["experiments"]["devices"]["x_values"] == ["20", "50"]
    for ek, exp in data["experiments"].items():
        for x, pt in exp["points"].items():
            small = pt["preset_overrides"]["num_devices"] <= 20
            assert set(pt["methods"]) == {m.key for m in spec.methods if m.key != "opt" or small}
            for metrics in pt["methods"].values():
                for key in ("latency_s", "completion_rate", "drop_rate", "reward"):
                    assert key in METRIC_KEYS
                    assert set(metrics[key]) >= {"mean", "std", "per_seed"} and len(metrics[key]["per_seed"]) == 2
    # p = 0.5 of Fig. 4 and I = 50 of Fig. 6 are one scene: one set of runs
    assert data["experiments"]["task_probability"]["points"]["0.5"]["point"] == \
        data["experiments"]["devices"]["points"]["50"]["point"] == "p0.5_dU_I50"
    assert len(data["runs"]) == 4 * 4 * 2  # 4 scenes x 4 trained methods x 2 seeds
    assert set(data["convergence"]["methods"]) == {"amarl", "gmel_maddpg", "gmel_ac", "gmel_dqn"}
    assert {r["key"] for r in data["headline"]} == {"completion_gain_p07_vs_maddpg", "completion_gain_d1_vs_all"}
    for r in data["headline"]:  # what `aigc-offload reproduce` prints: a gap (fraction) next to the paper's
        assert isinstance(r["ours"], float) and isinstance(r["paper"], float) and "ours_rel" in r
    cs = data["convergence_summary"]
    assert set(cs["converged_episode"]) == set(cs["final_reward"]) == {"amarl", "gmel_maddpg", "gmel_ac", "gmel_dqn"}
    # the numbers come from the runs just trained: re-evaluating seed 1's AMARL run gives its per-seed number
    pt = res["experiments"]["deadline"]["points"]["1.0"]
    run_dir = pt["runs"]["amarl"][1]
    sim = make_simulator("gmel", {"slots_per_episode": 4, **pt["preset_overrides"]})
    again = evaluate(sim, [run_dir], 1, EVAL_SEED_BASE + 1, progress=False).results[run_dir]
    assert again["completion_rate"] == pytest.approx(pt["methods"]["amarl"]["completion_rate"]["per_seed"][1])


def test_converged_episode_definition():
    from policies.reproduce.gmel import converged_episode

    curve = {"episode": list(range(20)), "reward_mean": [0.0] * 5 + [float(i) for i in range(1, 11)] + [10.0] * 5}
    assert converged_episode(curve) == 13  # 90% of the rise from 0 to 10
    assert converged_episode({"episode": [0, 1, 2], "reward_mean": [3.0, 2.0, 1.0]}) is None


def test_quick_p_and_d_points_use_the_default_scene_policies_and_the_retrained_check(quick, tmp_path):
    """Option (b) of the full run: Figs. 4-5 evaluate the default scene's runs; p = 0.7 and d = 1.0 are also
    retrained ("retrained" experiment), the headline uses those, and the report names the transferred points."""
    import shutil

    from policies.reproduce import run
    from policies.reproduce.gmel import DEFAULT_NAME, FULL_EPISODES

    root, res = quick
    assert FULL_EPISODES == 400
    exps = res["experiments"]
    default_runs = exps["task_probability"]["points"]["0.5"]["runs"]
    p07 = exps["task_probability"]["points"]["0.7"]
    assert p07["point"] == "p0.7_dU_I50_from_default" and p07["policies_from"] == DEFAULT_NAME
    assert p07["runs"] == default_runs
    assert exps["deadline"]["points"]["1.0"]["policies_from"] == DEFAULT_NAME
    assert exps["devices"]["points"]["20"]["policies_from"] is None
    ret = exps["retrained"]["points"]
    assert ret["p=0.7"]["point"] == "p0.7_dU_I50" and ret["p=0.7"]["policies_from"] is None
    assert ret["p=0.7 default-trained"]["methods"] == p07["methods"]
    assert ret["d=1.0"]["runs"]["amarl"][0].endswith("p0.5_d1_I50/amarl_s0")
    assert not (root / "runs" / "p0.7_dU_I50_from_default").exists()
    rows = {r["key"]: r for r in res["headline"]}
    assert rows["completion_gain_p07_vs_maddpg"]["point"] == "p0.7_dU_I50"
    assert rows["completion_gain_d1_vs_all"]["point"] == "p0.5_d1_I50"
    gaps = {g["point"]: g for g in res["transfer_gap"]}
    assert set(gaps) == {"p0.7_dU_I50_from_default", "p0.5_d1_I50_from_default"}
    g = gaps["p0.7_dU_I50_from_default"]["methods"]["amarl"]
    assert g["gap"] == pytest.approx(p07["methods"]["amarl"]["completion_rate"]["mean"]
                                     - ret["p=0.7"]["methods"]["amarl"]["completion_rate"]["mean"])
    text = (root / "report" / "report.md").read_text()
    assert "Deviation: default-trained policies" in text and "Transfer check" in text
    assert "`p0.7_dU_I50_from_default`" in text and "Transfer gap: AMARL" in text
    # --report-only still works on a results.json written before policies_from (and the "retrained" experiment)
    old = tmp_path / "old"
    shutil.copytree(root / "report", old)
    data = json.loads((old / "results.json").read_text())
    del data["experiments"]["retrained"]
    for e in data["experiments"].values():
        for pt in e["points"].values():
            pt.pop("policies_from")
    (old / "results.json").write_text(json.dumps(data))
    again = run("gmel", quick=True, out=old, runs=root / "runs", report_only=True)
    assert again["transfer_gap"] == [] and "Deviation" not in (old / "report.md").read_text()
    assert {r["key"] for r in again["headline"]} == {"completion_gain_p07_vs_maddpg", "completion_gain_d1_vs_all"}
