"""LAD-TS learners (policies/train/ladts.py) and `aigc-offload reproduce ladts`: the denoising chain's
schedule against eq. 10, the chain against a step-by-step reference of Theorem 2, twin-critic soft
targets, entropy and temperature terms and the DQN target on hand-made batches, the per-agent Adam and
pools, the latent bookkeeping, seeded repeatability and resume, improvement over random on a tiny
scenario, and a tiny-settings reproduce run."""

import csv
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from policies.evaluate import evaluate  # noqa: E402
from policies.scenarios import make_simulator  # noqa: E402
from policies.train import common  # noqa: E402
from policies.train import ladts as L  # noqa: E402
from policies.train.registry import ALGOS, train  # noqa: E402

ALL = ("ladts", "d2sac_ts", "sac_ts", "dqn_ts")
# a tiny LAD-TS scene: 4 stations with 11-18 GHz servers, up to 20 tasks each per slot, 11 decided slots
# (load factor ~1.08; Random ~1.9 s, Opt-TS ~1.1 s)
TINY_PRESET = {"num_stations": 4, "tasks_max": 20, "slots_per_episode": 12, "capacity_ghz_min": 3,
               "capacity_ghz_max": 20}
TINY = {**TINY_PRESET, "learning_starts": 32, "batch_size": 32, "checkpoint_every": 1}


def rows(run):
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


# -- the denoising chain ---------------------------------------------------------------------------------
def test_vp_schedule_is_eq_10_and_the_spec_values():
    I, bmin, bmax = 5, 0.1, 10.0
    s = L.vp_schedule(I, bmin, bmax)
    for i in range(1, I + 1):  # eq. 10, written out independently
        beta = 1 - math.exp(-bmin / I - (2 * i - 1) / (2 * I**2) * (bmax - bmin))
        assert s["beta"][i - 1] == pytest.approx(beta, abs=1e-12)
        lbar = math.prod(1 - (1 - math.exp(-bmin / I - (2 * m - 1) / (2 * I**2) * (bmax - bmin))) for m in range(1, i + 1))
        assert s["lambda_bar"][i - 1] == pytest.approx(lbar, abs=1e-12)
    # spec 5.1 worked values (6 d.p.)
    np.testing.assert_allclose(s["beta"], [0.195875, 0.458818, 0.635781, 0.754878, 0.835031], atol=1e-6)
    np.testing.assert_allclose(s["lambda_bar"], [0.804125, 0.435178, 0.158500, 0.038852, 0.006409], atol=1e-6)
    np.testing.assert_allclose(s["beta_tilde"], [0, 0.159114, 0.426742, 0.660907, 0.807766], atol=1e-6)
    np.testing.assert_allclose(s["sqrt_recip_lbar"], [1.115162, 1.515886, 2.511801, 5.073343, 12.490895], atol=1e-6)
    np.testing.assert_allclose(s["sqrt_recipm1_lbar"], [0.493545, 1.139259, 2.304158, 4.973812, 12.450802], atol=1e-6)
    np.testing.assert_allclose(s["coef1"], [1, 0.728435, 0.498410, 0.312681, 0.165654], atol=1e-6)
    np.testing.assert_allclose(s["coef2"], [0, 0.255116, 0.405078, 0.433466, 0.392901], atol=1e-6)
    np.testing.assert_allclose(s["std"], np.sqrt([0, 0.159114, 0.426742, 0.660907, 0.807766]), atol=1e-6)
    # eq. 13: the posterior mean in the code's form equals (x - beta / sqrt(1 - lbar) eps) / sqrt(lambda)
    x, e = 0.7, 0.2
    for j in range(I):
        mu = s["coef1"][j] * (s["sqrt_recip_lbar"][j] * x - s["sqrt_recipm1_lbar"][j] * e) + s["coef2"][j] * x
        eq13 = (x - s["beta"][j] / math.sqrt(1 - s["lambda_bar"][j]) * e) / math.sqrt(s["lambda"][j])
        assert mu == pytest.approx(eq13, abs=1e-12)


def test_sinusoidal_embedding_is_the_codes():
    e = L.sinusoidal_embedding(np.array([0.0, 3.0]), 16)
    assert e.shape == (2, 16)
    np.testing.assert_allclose(e[0], [0] * 8 + [1] * 8)
    freq = np.exp(-np.arange(8) * math.log(10000) / 7)
    np.testing.assert_allclose(e[1], np.concatenate([np.sin(3 * freq), np.cos(3 * freq)]))


def _reference_chain(actor, agent, obs, x, noise, sch):
    """Theorem 2 step by step in numpy for one agent: eps = MLP([x_i, SinusEmb(i-1), s]) -> softmax,
    x0_hat (eq. 11 inverted), mu = c1 x0_hat + c2 x_i, x_{i-1} = mu + sqrt(beta~_i) z (none at i = 1)."""
    W = [getattr(actor, f"fc{j}").weight[agent].detach().numpy().astype(np.float64) for j in (1, 2, 3)]
    b = [getattr(actor, f"fc{j}").bias[agent, 0].detach().numpy().astype(np.float64) for j in (1, 2, 3)]
    I = len(sch["beta"])
    for k, i in enumerate(range(I, 0, -1)):
        inp = np.concatenate([x, np.broadcast_to(L.sinusoidal_embedding(np.array(i - 1.0)), (x.shape[0], 16)), obs], 1)
        h = np.maximum(inp @ W[0] + b[0], 0)
        h = np.maximum(h @ W[1] + b[1], 0)
        z = h @ W[2] + b[2]
        eps = np.exp(z - z.max(1, keepdims=True))
        eps /= eps.sum(1, keepdims=True)
        j = i - 1
        x0 = sch["sqrt_recip_lbar"][j] * x - sch["sqrt_recipm1_lbar"][j] * eps
        mu = sch["coef1"][j] * x0 + sch["coef2"][j] * x
        x = mu + (math.sqrt(sch["beta_tilde"][j]) * noise[:, k] if i > 1 else 0.0)
    p = np.exp(x - x.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), x


def test_denoising_actor_is_theorem_2_with_explicit_inputs():
    torch.manual_seed(0)
    A, B, n, I = 3, 4, 5, 5
    actor = L.DenoisingActor(A, 2 + B, B, hidden=20, steps=I)
    obs, x, noise = torch.rand(A, n, 2 + B) * 3, torch.rand(A, n, B), torch.randn(A, n, I, B)
    pi, x0 = actor(obs, x, noise)
    sch = L.vp_schedule(I)
    for a in range(A):
        p_ref, x_ref = _reference_chain(actor, a, obs[a].double().numpy(), x[a].double().numpy(),
                                        noise[a].double().numpy(), sch)
        np.testing.assert_allclose(x0[a].detach().numpy(), x_ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(pi[a].detach().numpy(), p_ref, rtol=1e-4, atol=1e-6)
    # no randomness inside forward; the i = 1 noise slice is unused; zero noise = the deterministic chain
    torch.manual_seed(123)
    assert torch.equal(actor(obs, x, noise)[1], x0)
    other = noise.clone()
    other[:, :, I - 1] = 99.0
    assert torch.equal(actor(obs, x, other)[1], x0)
    assert not torch.equal(actor(obs, x, torch.zeros_like(noise))[1], x0)
    # gradients flow through all I steps to every layer
    (pi * torch.arange(B)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())
    # exportable as one graph with the chain inside (the ONNX engineer's need): same numbers from the export
    exported = torch.export.export(actor, (obs, x, noise)).module()
    assert torch.allclose(exported(obs, x, noise)[1], x0, atol=1e-6)


# -- SAC and DQN terms on hand-made batches ---------------------------------------------------------------
def _constant_mlp(mlp: common.AgentMLP, out_bias: torch.Tensor) -> None:
    """Every weight and hidden bias 0, the output bias ``out_bias`` (agents, outputs): f(s) = out_bias."""
    with torch.no_grad():
        for p in mlp.parameters():
            p.zero_()
        mlp.net[-1].bias.copy_(out_bias.unsqueeze(1))


def test_sac_update_targets_entropy_and_temperature_on_a_hand_made_batch():
    A = B = 2
    cfg = L.Config(method="sac")
    ag = L.Agents(cfg, A, 2 + B, slots=4, tasks_max=3)
    logp = torch.log(torch.tensor([[0.8, 0.2], [0.5, 0.5]]))
    _constant_mlp(ag.actor.net, logp)  # pi(.|s) = [0.8, 0.2] for station 0, [0.5, 0.5] for station 1
    q_on = torch.tensor([[-3.0, -5.0], [-1.0, -2.0], [-4.0, -4.5], [-2.0, -1.5]])  # rows [Q1 b0, Q1 b1, Q2 b0, Q2 b1]
    q_tg = torch.tensor([[-10.0, -20.0], [-6.0, -2.0], [-12.0, -18.0], [-4.0, -3.0]])
    _constant_mlp(ag.critic, q_on)
    _constant_mlp(ag.critic_t, q_tg)
    s = torch.rand(A, 3, 2 + B)
    batch = {"obs": s, "next_obs": torch.rand(A, 3, 2 + B), "act": torch.tensor([[[0.0], [1.0], [0.0]], [[1.0], [1.0], [0.0]]]),
             "rew": torch.tensor([[[-1.0], [-2.0], [-3.0]], [[-0.5], [-1.5], [-2.5]]])}
    st = ag.sac_update(batch, torch.ones(A, dtype=torch.bool))
    pi = torch.tensor([[0.8, 0.2], [0.5, 0.5]], dtype=torch.float64)
    H = -(pi * torch.log(pi + 1e-8)).sum(-1)  # (A,)
    alpha, gamma = 0.05, 0.95
    qt_min = torch.min(q_tg[:A], q_tg[A:]).double()
    v_next = (pi * qt_min).sum(-1) + alpha * H  # sum_a pi'(a) min_j Qt_j(s', a) + alpha H'
    y = batch["rew"][..., 0].double() + gamma * v_next[:, None]  # eq. 14 target, no done flag
    a = batch["act"][..., 0].long()
    loss = []
    new_q = q_on.clone().double()
    for j in range(2):
        for b in range(A):
            q = q_on[j * A + b].double()
            err = q[a[b]] - y[b]
            loss.append((err ** 2).mean())
            g = torch.zeros(B, dtype=torch.float64).index_add_(0, a[b], 2 * err / 3)  # d loss / d bias
            new_q[j * A + b] -= cfg.lr_critic * g / (g.abs() + 1e-8)  # Adam's first step: lr * sign(g)
    assert st["critic_loss"] == pytest.approx(float(torch.stack(loss).mean()), rel=1e-5)
    q_min = torch.min(new_q[:A], new_q[A:])  # the actor reads the UPDATED critics (code order)
    actor_loss = (-alpha * H - (pi * q_min).sum(-1)).mean()
    assert st["actor_loss"] == pytest.approx(float(actor_loss), rel=1e-5)
    assert st["entropy"] == pytest.approx(float(H.mean()), rel=1e-5)
    np.testing.assert_allclose(ag.critic.net[-1].bias[:, 0].detach().numpy(), new_q.numpy(), rtol=1e-6)
    # eq. 16: H > H_target = -1, so log alpha falls by lr_alpha (Adam's first step)
    np.testing.assert_allclose(ag.log_alpha.detach().numpy(), math.log(0.05) - cfg.lr_alpha, rtol=1e-6)
    # eq. 17: Qt <- tau Q + (1 - tau) Qt with tau = 0.005
    np.testing.assert_allclose(ag.critic_t.net[-1].bias[:, 0].detach().numpy(),
                               (0.995 * q_tg.double() + 0.005 * new_q).numpy(), rtol=1e-6)


def test_inactive_agents_are_untouched_and_masked_out():
    A = B = 3
    ag = L.Agents(L.Config(method="lad"), A, 2 + B, slots=2, tasks_max=4)
    before = {k: v.clone() for k, v in ag.critic.state_dict().items()}
    actor_before = {k: v.clone() for k, v in ag.actor.state_dict().items()}
    K = 8
    batch = {"obs": torch.rand(A, K, 2 + B), "next_obs": torch.rand(A, K, 2 + B), "act": torch.randint(0, B, (A, K, 1)).float(),
             "rew": -torch.rand(A, K, 1), "latent": torch.rand(A, K, B), "next_latent": torch.rand(A, K, B)}
    active = torch.tensor([True, False, True])
    ag.sac_update(batch, active)
    for k, v in ag.critic.state_dict().items():  # critic rows [Q1 of 0..2, Q2 of 0..2]: rows 1 and 4 untouched
        assert torch.equal(v[1], before[k][1]) and torch.equal(v[4], before[k][4])
        assert not torch.equal(v[0], before[k][0]) or v.abs().sum() == 0
    for k, v in ag.actor.state_dict().items():
        if k != "temb":
            assert torch.equal(v[1], actor_before[k][1])
    assert ag.log_alpha[1].item() == pytest.approx(math.log(0.05)) and ag.log_alpha[0].item() < math.log(0.05)
    assert ag.critic_opt.t.tolist() == [1, 0, 1, 1, 0, 1]


def test_dqn_update_target_and_copy_schedule():
    A = B = 2
    cfg = L.Config(method="dqn", dqn_target_every=2)
    ag = L.Agents(cfg, A, 2 + B, slots=2, tasks_max=3)
    q0 = torch.tensor([[-1.0, -4.0], [-2.0, -0.5]])
    _constant_mlp(ag.qnet, q0)
    _constant_mlp(ag.qnet_t, torch.zeros(A, B))  # a stale target: the first update copies the online net first
    batch = {"obs": torch.rand(A, 2, 2 + B), "next_obs": torch.rand(A, 2, 2 + B), "act": torch.tensor([[[1.0], [0.0]], [[0.0], [0.0]]]),
             "rew": torch.tensor([[[-1.0], [-2.0]], [[-3.0], [-4.0]]])}
    st = ag.dqn_update(batch, torch.ones(A, dtype=torch.bool))
    y = batch["rew"][..., 0] + 0.95 * q0.max(-1).values[:, None]  # r + gamma max_a Qt(s', a), Qt = Q (copied)
    q_a = q0.gather(1, batch["act"][..., 0].long())
    assert st["critic_loss"] == pytest.approx(float(((q_a - y) ** 2).mean()), rel=1e-6)
    assert torch.equal(ag.qnet_t.net[-1].bias[:, 0], q0)
    moved = ag.qnet.net[-1].bias[:, 0].clone()
    ag.dqn_update(batch, torch.ones(A, dtype=torch.bool))  # update 1: no copy
    assert torch.equal(ag.qnet_t.net[-1].bias[:, 0], q0)
    ag.dqn_update(batch, torch.tensor([True, False]))  # update 2 of agent 0: copy before it; agent 1 idle
    assert not torch.equal(ag.qnet_t.net[-1].bias[0, 0], q0[0]) and torch.equal(ag.qnet_t.net[-1].bias[1, 0], q0[1])
    assert not torch.equal(moved, q0) and ag.updates.tolist() == [3, 2]


# -- shared machinery ---------------------------------------------------------------------------------------
def test_agent_adam_equals_separate_torch_adams_with_late_starters():
    torch.manual_seed(1)
    A = 3
    w = torch.randn(A, 4, 5, requires_grad=True)
    refs = [w[i].detach().clone().requires_grad_(True) for i in range(A)]
    opt = common.AgentAdam([w], A, lr=1e-2)
    ref_opts = [torch.optim.Adam([r], lr=1e-2) for r in refs]
    for step in range(6):
        g = torch.randn(A, 4, 5)
        active = torch.tensor([True, step >= 3, step % 2 == 0])  # agent 1 starts late, agent 2 every other step
        w.grad = g.clone()
        opt.step(active)
        for i in range(A):
            if active[i]:
                refs[i].grad = g[i].clone()
                ref_opts[i].step()
    for i in range(A):
        torch.testing.assert_close(w[i].detach(), refs[i].detach(), rtol=1e-5, atol=1e-6)


def _adam_per_parameter(params, m, v, t, active, lr, b1=0.9, b2=0.999, eps=1e-8):
    """AgentAdam.step's math one parameter at a time (the loop it replaced): the flat step must match bit for bit."""
    on = active.to(torch.float32)
    t += active.to(torch.float64)
    tc = t.clamp(min=1.0)
    step = on * (lr / (1.0 - b1 ** tc)).to(torch.float32)
    bc2_sqrt = torch.sqrt(1.0 - b2 ** tc).to(torch.float32)
    w1, w2, keep2 = on * (1.0 - b1), on * (1.0 - b2), 1.0 - on * (1.0 - b2)
    with torch.no_grad():
        for p, mi, vi in zip(params, m, v):
            shape = (p.shape[0],) + (1,) * (p.dim() - 1)
            g = p.grad
            mi.lerp_(g, w1.view(shape))
            vi.mul_(keep2.view(shape)).add_(g * g * w2.view(shape))
            denom = (vi.sqrt() / bc2_sqrt.view(shape)).add_(eps)
            p.sub_(mi * step.view(shape) / denom)


def test_agent_adam_flat_step_is_bit_identical_to_the_per_parameter_loop():
    torch.manual_seed(3)
    A = 5
    shapes = [(A, 27, 20), (A, 1, 20), (A, 20, 20), (A, 1, 20), (A, 20, 7), (A, 1, 7)]  # odd sizes: vector tails
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    ref = [p.detach().clone().requires_grad_(True) for p in params]
    ref_m, ref_v = [torch.zeros(s) for s in shapes], [torch.zeros(s) for s in shapes]
    ref_t = torch.zeros(A, dtype=torch.float64)
    opt = common.AgentAdam(params, A, lr=3e-3)
    for k in range(40):
        active = torch.rand(A) < 0.7
        for p, r in zip(params, ref):
            g = torch.randn(p.shape) * 10.0 ** float(torch.randint(-6, 2, ()))
            p.grad, r.grad = g.clone(), g.clone()
        opt.step(active)
        _adam_per_parameter(ref, ref_m, ref_v, ref_t, active, 3e-3)
    for p, r, m, rm, v, rv in zip(params, ref, opt.m, ref_m, opt.v, ref_v):
        assert torch.equal(p, r) and torch.equal(m, rm) and torch.equal(v, rv)
    assert torch.equal(opt.t, ref_t)
    # the state round-trips through state_dict (the moments are views of one buffer) ...
    other = common.AgentAdam([p.detach().clone() for p in params], A, lr=3e-3)
    other.load_state_dict(opt.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.m + other.v, opt.m + opt.v))
    # ... and a parameter without a gradient keeps its moments (the per-parameter path)
    params[1].grad = None
    for p in params[:1] + params[2:]:
        p.grad = torch.randn(p.shape)
    m1, m0 = opt.m[1].clone(), opt.m[0].clone()
    opt.step(torch.ones(A, dtype=torch.bool))
    assert torch.equal(opt.m[1], m1) and not torch.equal(opt.m[0], m0)


def test_temperature_gradient_written_out_is_autograds():
    """sac_update sets log alpha's gradient by hand (eq. 16); it must be the bits autograd gives."""
    torch.manual_seed(4)
    A = 6
    log_alpha = (torch.randn(A) - 3.0).requires_grad_(True)
    h = torch.rand(A, 64) * 2.5
    mask = (torch.rand(A) < 0.6).to(torch.float32)
    loss = (h - (-1.0)).mean(-1) * log_alpha.exp()
    (loss * mask).sum().backward()
    by_hand = mask * (h - (-1.0)).mean(-1) * log_alpha.detach().exp()
    assert torch.equal(log_alpha.grad, by_hand)


def test_station_replay_is_fifo_per_station_and_samples_valid_rows():
    pool = L.StationReplay(2, 4, {"v": 1})
    pool.add(np.array([0, 0, 0, 1]), v=np.array([1.0, 2.0, 3.0, 10.0]))
    pool.add(np.array([0, 0, 1]), v=np.array([4.0, 5.0, 11.0]))
    assert pool.size.tolist() == [4, 2] and pool.pos.tolist() == [1, 2]
    assert pool.data["v"][0, :, 0].tolist() == [5.0, 2.0, 3.0, 4.0]  # the oldest (1) was overwritten
    assert pool.data["v"][1, :2, 0].tolist() == [10.0, 11.0]
    rng = np.random.default_rng(0)
    for _ in range(20):
        b = pool.sample(rng, 2)["v"][..., 0]
        assert set(b[1].tolist()) == {10.0, 11.0}  # without replacement: both rows of station 1
        assert b[0, 0] != b[0, 1] and set(b[0].tolist()) <= {2.0, 3.0, 4.0, 5.0}


def test_next_state_is_eq_7_with_the_true_next_backlog():
    sim = make_simulator("ladts", {"num_stations": 3, "tasks_max": 4, "slots_per_episode": 3, "capacity_ghz_min": 1,
                                   "capacity_ghz_max": 2})
    sim.reset(sim.generate_workload(np.random.default_rng(0), 0))
    view = sim.view()
    obs, src = sim.observation(view), view.source.copy()
    sim.step(L.OffloadDecision(target=np.zeros(view.n, dtype=np.int64)))  # everything to server 0: q_0 > 0
    nxt, last = L.next_observations(obs, src, sim, code_bug=False)
    o1 = sim.observation(sim.view())
    for k in range(view.n):
        if not last[k]:
            np.testing.assert_array_equal(nxt[k], obs[k + 1])  # the same station's next task, same q_{t-1}
        else:
            first = int(np.flatnonzero(sim.view().source == src[k])[0])
            np.testing.assert_array_equal(nxt[k], o1[first])  # (b, t+1)'s first task with q_t
            assert nxt[k, 2] == pytest.approx(sim.q[0]) and sim.q[0] > 0
    bug, _ = L.next_observations(obs, src, sim, code_bug=True)
    assert np.all(bug[last, 2:] == 0) and last.sum() == 3


def test_latent_store_reads_before_writing_and_tuples_carry_x_and_its_successor(tmp_path):
    sim = make_simulator("ladts", {"num_stations": 2, "tasks_max": 3, "slots_per_episode": 3})
    ag = L.Agents(L.Config(method="lad"), 2, sim.obs_dim(), 3, 3)
    X0 = ag.latent.clone()
    sim.reset(sim.generate_workload(np.random.default_rng(1), 0))
    view = sim.view()
    src, idx = view.source.astype(np.int64), view.features["index"].astype(np.int64)
    a, x_read, out = ag.act(sim.observation(view), src, idx, 0, "sample", torch.randn, torch.rand)
    torch.testing.assert_close(x_read, X0[0, src, idx])  # x_I = X[t][b][n] as stored
    assert torch.allclose(out.sum(-1), torch.ones(len(src)))  # stores pi (code)
    x_det = ag.act(sim.observation(view), src, idx, 0, "deterministic", torch.randn, torch.rand)
    assert np.array_equal(x_det[0], ag.act(sim.observation(view), src, idx, 0, "deterministic", torch.randn, torch.rand)[0])
    # a short training run: X[t][b][n] of every decided task holds its pi; untouched entries keep their N(0, 1)
    # start; every tuple carries x_I and x_I^next as they were BEFORE this episode's writes (spec 3.4)
    preset = {"num_stations": 2, "tasks_max": 3, "slots_per_episode": 3}
    train("ladts", "ladts", 0, tmp_path, {**preset, "learning_starts": 1000}, episodes=1, progress=False)
    common.seed_everything(0)
    start = L.Agents(L.Config(method="lad"), 2, sim.obs_dim(), 3, 3).latent  # the run's initial store
    Xe = common.load_checkpoint(tmp_path)["agents"]["latent"]
    from policies.workload import episode_rng

    wl = sim.generate_workload(episode_rng(0, 0, L.TRAIN_WORKLOAD_STREAM), 0)
    t, b, n = (np.asarray(wl.tasks[k]) for k in ("slot", "source", "index"))
    decided = t < 2
    written = torch.zeros(3, 2, 3, dtype=torch.bool)
    written[t[decided], b[decided], n[decided]] = True
    assert torch.allclose(Xe[written].sum(-1), torch.ones(int(written.sum())))
    assert torch.equal(Xe[~written], start[~written]) and not written[2].any()
    pool = common.load_checkpoint(tmp_path)["pool"]
    for st in range(2):
        rows_b = np.flatnonzero(decided & (b == st))
        got = torch.from_numpy(pool["data"]["latent"][st][: rows_b.size])
        torch.testing.assert_close(got, start[t[rows_b], st, n[rows_b]])
        last = np.r_[n[rows_b][1:] == 0, True]  # the station's last task of its slot
        nt, nn = np.where(last, t[rows_b] + 1, t[rows_b]), np.where(last, 0, n[rows_b] + 1)
        torch.testing.assert_close(torch.from_numpy(pool["data"]["next_latent"][st][: rows_b.size]), start[nt, st, nn])


# -- training runs ------------------------------------------------------------------------------------------
def test_registry_names_the_four_methods():
    assert {a: ALGOS[a].config_overrides["method"] for a in ALL} == {"ladts": "lad", "d2sac_ts": "d2sac", "sac_ts": "sac",
                                                                     "dqn_ts": "dqn"}
    assert all(ALGOS[a].scenario == "ladts" and ALGOS[a].module == "policies.train.ladts" for a in ALL)


def test_paper_hyperparameters_are_the_defaults():
    c = L.Config()
    assert (c.hidden, c.denoising_steps, c.lr_actor, c.lr_critic, c.lr_alpha, c.alpha, c.target_entropy) == \
        (20, 5, 1e-4, 1e-3, 3e-4, 0.05, -1.0)
    assert (c.gamma, c.tau, c.batch_size, c.buffer_size, c.learning_starts, c.episodes) == (0.95, 0.005, 64, 1000, 300, 60)
    assert (c.dqn_lr, c.dqn_epsilon, c.dqn_target_every) == (1e-4, 0.01, 200)
    assert c.updates_per_slot == 3  # [ours]: the code updates once per station per slot (docs/papers/ladts.md)


@pytest.mark.parametrize("algo", ALL)
def test_seeded_runs_repeat_exactly_and_resume_continues(tmp_path, algo):
    cfg = {**TINY, "checkpoint_every": 2}
    a, b, r = tmp_path / "a", tmp_path / "b", tmp_path / "r"
    train(algo, "ladts", 3, a, cfg, episodes=4, progress=False)
    train(algo, "ladts", 3, b, cfg, episodes=4, progress=False)
    keys = ("reward", "latency_s", "critic_loss", "actor_loss", "updates")
    ra, rb = rows(a), rows(b)
    assert [[x[k] for k in keys] for x in ra] == [[x[k] for k in keys] for x in rb]
    assert math.isfinite(float(ra[-1]["critic_loss"]))
    train(algo, "ladts", 3, r, cfg, episodes=2, progress=False)
    train(algo, "ladts", 3, r, cfg, episodes=4, progress=False)
    assert [[x[k] for k in keys] for x in rows(r)] == [[x[k] for k in keys] for x in ra]
    cfgj = json.loads((a / "config.json").read_text())
    assert cfgj["config"]["method"] == ALGOS[algo].config_overrides["method"] and cfgj["num_agents"] == 4


# each method trained briefly on the tiny scene, then evaluated (sampling as trained; DQN greedy) on 4
# common evaluation episodes against uniform random placement
IMPROVE = {"ladts": 40, "sac_ts": 25, "dqn_ts": 40, "d2sac_ts": 25}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladts_tiny")
    cfg = {**TINY, "checkpoint_every": 100, "updates_per_slot": 4}
    for algo, eps in IMPROVE.items():
        train(algo, "ladts", 0, root / algo, cfg, episodes=eps, progress=False)
    return root


@pytest.mark.parametrize("algo", ALL)
def test_each_method_improves_over_random_on_a_tiny_scene(tiny_runs, algo):
    sim = make_simulator("ladts", TINY_PRESET)
    res = evaluate(sim, ["random", "opt", str(tiny_runs / algo)], episodes=4, seed=7, progress=False).results
    rnd, opt, ours = res["random"]["latency_s"], res["opt"]["latency_s"], res[str(tiny_runs / algo)]["latency_s"]
    assert opt < rnd
    assert ours < rnd - 0.25 * (rnd - opt), (algo, ours, rnd, opt)  # at least a quarter of the way to Opt-TS


def test_trained_run_is_a_policy_with_eval_modes(tiny_runs):
    sim = make_simulator("ladts", TINY_PRESET)
    run = str(tiny_runs / "ladts")
    a = evaluate(sim, [run, f"run:{run}"], episodes=2, seed=3, progress=False).results
    assert a[run] == a[f"run:{run}"]  # per-episode policy rng and the saved latent store: reproducible
    resolved = json.loads((tiny_runs / "ladts" / "config.json").read_text())
    ck = common.load_checkpoint(tiny_runs / "ladts")
    for mode in ("argmax", "deterministic"):
        pol = L.TrainedPolicy(mode, sim, resolved, ck["agents"], eval_action=mode)
        from policies.evaluate import generate_workloads, run_episode

        m = run_episode(sim, pol, generate_workloads(sim, 1, 3)[0], 3)
        assert m["latency_s"] > 0
    from policies.errors import UserError

    with pytest.raises(UserError, match="stations"):
        evaluate(make_simulator("ladts", {**TINY_PRESET, "num_stations": 5}), [run], episodes=1, seed=0)


# -- the reproduction -----------------------------------------------------------------------------------------
def test_tiny_reproduce_writes_report_results_and_figures(tmp_path):
    from policies.reproduce import get_paper, run
    from policies.reproduce.png import read_png_size

    res = run("ladts", quick=True, seeds=2, out=tmp_path / "rep", runs=tmp_path / "runs", episodes=3, eval_episodes=1,
              jobs=1, preset_overrides={"slots_per_episode": 4, "tasks_max": 6},
              algo_overrides={"learning_starts": 8, "batch_size": 8, "checkpoint_every": 1},
              experiments=("tasks", "steps"), x_subset={"tasks": (10, 50), "steps": (3, 5)})
    rep = tmp_path / "rep"
    for name in ("report.md", "results.json", "fig5_convergence.png", "fig6_tasks_capacity.png", "fig8_steps_alpha.png"):
        assert (rep / name).is_file(), name
    for png in rep.glob("*.png"):
        w, h = read_png_size(png)
        assert w >= 400 and h >= 300
    data = json.loads((rep / "results.json").read_text())
    spec = get_paper("ladts")
    assert data["paper"] == "ladts" and set(data["experiments"]) == {"tasks", "steps"}
    t = data["experiments"]["tasks"]
    assert t["x_values"] == ["10", "50"]
    for pt in t["points"].values():
        assert set(pt["methods"]) == {m.key for m in spec.methods}
        for metrics in pt["methods"].values():
            for key in ("latency_s", "reward", "load"):
                assert set(metrics[key]) >= {"mean", "std", "per_seed"} and len(metrics[key]["per_seed"]) == 2
    s = data["experiments"]["steps"]["points"]["3"]
    assert set(s["methods"]) == {"ladts", "opt"} and s["algo_overrides"] == {"denoising_steps": 3}
    steps_run = json.loads(open(s["runs"]["ladts"][0] + "/config.json").read())
    assert steps_run["config"]["denoising_steps"] == 3
    assert set(data["convergence"]["methods"]) == set(ALL)
    keys = {r["key"] for r in data["headline"]}
    assert {"plateau_ladts", "converge_ladts", "best_steps", "episode_wall_s", "episode_cpu_s", "N50_weighted_rr",
            "N50_lad_over_weighted_rr"} <= keys
    assert all(r["paper"] is None for r in data["headline"] if "weighted_rr" in r["key"])  # ours: no paper number
    text = (rep / "report.md").read_text()
    assert "Fig. 5" in text and "Reduced run" in text and "78 s" in text and "LAD-TS" in text
    split = data["action_split"]  # each trained method's server split against f / sum(f), one episode per seed
    assert set(split["methods"]) == set(ALL) and len(split["capacity_ghz"]) == 20
    for m in split["methods"].values():
        assert len(m["tv"]) == 2 and all(0.0 <= v <= 1.0 for v in m["tv"])
        assert all(sum(sh) == pytest.approx(1.0) for sh in m["share"])
    assert "What the agents learn" in text and "| LAD-TS above the capacity split |" in text
    assert res["wall_s"]["trained_now"] == 4 * 2 * 2 + 2  # 4 methods x 2 seeds at 2 points, LAD-TS at I = 3


def test_tiny_reproduce_transfer_check_at_z20(tmp_path):
    """Option (b) of the full run: the Z points evaluate the default point's runs (fmax is retrained: the agents
    do not observe f); Z = 20 is also retrained
    (the "retrained" experiment), the headline's Z = 20 rows use those, and the report names the transfer."""
    from policies.reproduce import get_paper, run

    spec = get_paper("ladts")
    moved = {p.name: p.policies_from for e in spec.experiments if e.key in ("capacity", "quality") for p in e.points}
    assert moved == {"F30": None, "F40": None, "default": None, "F60": None, "F70": None,
                     "Z5_from_default": "default", "Z10_from_default": "default", "Z20_from_default": "default"}
    assert all(p.policies_from is None for e in spec.experiments if e.key not in ("capacity", "quality", "retrained")
               for p in e.points)
    res = run("ladts", quick=True, seeds=1, out=tmp_path / "rep", runs=tmp_path / "runs", episodes=3, eval_episodes=1,
              jobs=1, preset_overrides={"slots_per_episode": 4, "tasks_max": 6},
              algo_overrides={"learning_starts": 8, "batch_size": 8, "checkpoint_every": 1},
              experiments=("quality", "retrained"), x_subset={"quality": (20,)})
    assert res["wall_s"]["trained_now"] == 4 * 2  # default (the source and the convergence point) and Z20
    assert {r["point"] for r in res["runs"].values()} == {"default", "Z20"}
    q = res["experiments"]["quality"]["points"]["20"]
    assert q["point"] == "Z20_from_default" and q["policies_from"] == "default"
    assert q["runs"]["ladts"] == [str(tmp_path / "runs" / "default" / "ladts_s0")]
    r = res["experiments"]["retrained"]["points"]
    assert r["Z=20"]["runs"]["ladts"] == [str(tmp_path / "runs" / "Z20" / "ladts_s0")]
    rows = {x["key"]: x for x in res["headline"]}
    assert rows["Z20_ladts"]["ours"] == pytest.approx(r["Z=20"]["methods"]["ladts"]["latency_s"]["mean"])
    (g,) = res["transfer_gap"]
    assert g["point"] == "Z20_from_default" and g["retrained_point"] == "Z20" and set(g["methods"]) == set(ALL)
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "Deviation: default-trained policies" in text and "Transfer check" in text and "`Z20_from_default`" in text
