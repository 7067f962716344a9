"""TD3 for EdgeAIGC (paper 004, Sec. 4.3-4.4, Alg. 1; spec docs/papers/edgeaigc.md section 5), and DDPG,
the paper's learning baseline (spec 4.1), CleanRL style: read top to bottom.

One agent (the cloud server's scheduler, Sec. 4.2) observes the eq. 19 state s(t) = {gamma, delta, Z,
d_in, d_out} through the shared observation contract ``sim.observation(view)`` and outputs the eq. 20
action a(t) = {beta (E x M), alpha (E x U), L (E x U)} as E*M + 2EU tanh values. The environment maps
them to x = (a + 1) / 2 in [0, 1] and projects x onto the constraints (18b-18g) (spec 3.2: knapsack
repair of the cache scores, association, masking and row scaling of the shares); the replay buffer
stores the raw tanh action (spec 5). :class:`AllocationProjection` is that projection in torch ops
(float64, identical to ``policies.scenarios.edgeaigc.project_batch``, always feasible), and
:class:`DeployedPolicy` = actor + projection is one ``nn.Module`` from the observation row to the feasible
decision (no sort, no Python-side state: it exports to ONNX as one graph); a trained run is evaluated
through it, so the evaluated decisions are the exported graph's.

TD3 (Fujimoto et al. 2018; paper Fig. 3: six networks), :class:`Learner`:
- two online critics Q_theta1, Q_theta2 and their targets, one online actor pi_Phi and its target;
- critic target (eq. 24) y = r + h (1 - done) min_i Q'_i(s', pi'(s') + eps), eps ~ clip(N(0, 0.2), +-0.5)
  (target policy smoothing: standard TD3, not printed in eq. 24, flag ``target_smoothing``);
- critic loss (eq. 26) on Q_i(s, a) with the *stored* action a ([fix] eq. 25 prints pi_Phi(s));
- delayed actor update every ``policy_delay`` critic updates, ascending Q_theta1 (eq. 22), and the soft
  target updates (eqs. 23, 27) at the same time.
DDPG (registry ``ddpg``): the same networks, learning rates, buffer, noise and projection; one critic, no
target smoothing, the actor and the targets updated at every step.

Hyperparameters: actor lr 1e-5, critic lr 1e-3 [paper, Sec. 5.2.1, Fig. 4], N = 800 episodes of T = 10
slots [paper, Table 3], training once the buffer holds more than Min transitions (Alg. 1, line 7). The
rest is [ours] (spec 5): MLP 256-256 ReLU, Adam, discount h = 0.9, tau = 0.005, buffer 1e5, batch 256,
Min = 500 (uniform random actions until then), exploration N(0, 0.1) on the tanh output, one gradient
step per environment step. The reward is r = -G/U (eq. 21) times the preset's ``reward_scale`` (1e-3);
metrics.csv logs the unscaled episode reward sum_t r(t) (Figs. 4-5).

Training choices of ours that our study found necessary (each a Config field; docs/papers/edgeaigc.md,
"Training findings"): the critics read the *decision* the action projects to, per user (hit, shares) and
per ES (storage), instead of the raw scores (a critic on the raw 80 scores does not learn the knapsack's
rank dependence: held-out R^2 ~ 0 from 8,000 samples, vs 0.95); straight-through gradients through the
knapsack's threshold and through the tanh, a penalty on the pre-activations; the episode end treated as a
time limit (bootstrapped). With the paper's actor lr 1e-5 the actor is far from converged after 800
episodes; ``aigc-offload reproduce edgeaigc`` trains its main comparison with ``lr_actor = 1e-3``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from policies.errors import UserError
from policies.scenarios.base import Policy
from policies.train import common
from policies.workload import episode_rng

TRAIN_WORKLOAD_STREAM = 3  # episode_rng stream of training workloads (evaluation draws stream 0)


@dataclass
class Config:
    # [P] EdgeAIGC Sec. 5.2.1 (Fig. 4) and Table 3
    lr_actor: float = 1e-5
    lr_critic: float = 1e-3
    episodes: int = 800  # N
    # [ours] spec 5 (standard TD3 where the paper is silent)
    gamma: float = 0.9  # the discount "h" of eq. 24 (the MDP is a contextual bandit, spec 1.1: 0 would do)
    bootstrap_at_limit: bool = True  # [ours] the end of an episode (t = T) is a time limit, not a terminal state:
    # the slot process goes on (eq. 1 keeps running) and the observation holds no slot index, so a terminal
    # target (y = r at t = T, Q ~ the remaining-slot count) would be a hidden-state function of t. The critic
    # bootstraps at t = T from a stand-in next state: s(T) itself (same regime, same distribution of requests)
    tau: float = 0.005  # eqs. 23, 27
    buffer_size: int = 100_000  # C: never overwritten at N = 800 (8,000 transitions)
    batch_size: int = 256  # E of eqs. 22, 26 (the symbol is not the number of ES)
    learning_starts: int = 500  # Min of Alg. 1: uniform random actions and no training until then
    hidden: int = 256  # 2 hidden layers of this width, actor and critics
    exploration_noise: float = 0.1  # N(0, sigma) on the tanh output while collecting
    twin_critics: bool = True  # TD3: clipped double Q (eq. 24); DDPG: False
    policy_delay: int = 2  # critic updates per actor and target update; DDPG: 1
    target_smoothing: bool = True  # TD3 target policy smoothing; DDPG: False
    target_noise: float = 0.2
    target_noise_clip: float = 0.5
    updates_per_step: int = 1  # gradient steps per environment step
    tanh_straight_through: bool = True  # [ours] the actor's gradient passes the tanh as identity (dQ/da applied to
    # the pre-activation): a cache score saturated at -1 in the states where the model is rarely asked for still
    # learns to rise in the states where it is asked for (through tanh' ~ 0 it would stay at -1 for ever)
    action_reg: float = 1e-2  # [ours] penalty on the actor's squared pre-tanh outputs, summed over the action and
    # averaged over the batch (openai/maddpg's p_reg): keeps the pre-activations bounded (at |dQ/da| / 2 reg)
    critic_input: str = "decision"  # [ours] what the critics read besides s: "decision" = the projected eq. 20
    # action as per-user and per-ES terms of G, straight-through for beta (see decision_features); "raw" = the
    # actor's pre-projection tanh scores (spec 5 literally). Study: docs/papers/edgeaigc.md, "Training findings"
    checkpoint_every: int = 50  # episodes
    torch_threads: int = 1  # small nets: extra threads only add overhead on 2 cores


# -- networks ------------------------------------------------------------------------------------
class Actor(nn.Module):
    """pi_Phi(s): obs (B, obs_dim) -> tanh action (B, E*M + 2EU), laid out [beta | alpha | L] row-major."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, act_dim))

    def forward(self, obs: torch.Tensor, return_pre: bool = False):
        pre = self.body(obs)
        return (torch.tanh(pre), pre) if return_pre else torch.tanh(pre)


def make_critics(obs_dim: int, act_dim: int, hidden: int, twin: bool) -> common.AgentMLP:
    """Q_theta1, Q_theta2 (TD3) or Q_theta (DDPG) as an ensemble of independent MLPs on concat(s, a)."""
    return common.AgentMLP(2 if twin else 1, obs_dim + act_dim, 1, (hidden, hidden))


def critic_values(critics: nn.Module, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """(C, B): every critic's Q(s, a) for obs (B, o) and act (B, a)."""
    x = torch.cat([obs, act], dim=-1)
    n = critics.net[0].weight.shape[0]  # ensemble size
    return critics(x.unsqueeze(0).expand(n, *x.shape))[..., 0]


def target_action(actor_t: nn.Module, next_obs: torch.Tensor, smoothing: bool, noise_std: float, noise_clip: float,
                  eps: torch.Tensor | None = None) -> torch.Tensor:
    """a' = clip(pi'(s') + clip(eps, -c, c), -1, 1), eps ~ N(0, noise_std) (TD3 target policy smoothing);
    pi'(s') without smoothing. ``eps`` may be given (tests); otherwise drawn from torch's generator."""
    a = actor_t(next_obs)
    if not smoothing:
        return a
    if eps is None:
        eps = torch.randn_like(a) * noise_std
    return (a + eps.clamp(-noise_clip, noise_clip)).clamp(-1.0, 1.0)


def td_target(critics_t: nn.Module, next_obs: torch.Tensor, next_act: torch.Tensor, rew: torch.Tensor,
              done: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. 24: y = r + h (1 - done) min_i Q'_i(s', a') (the min over one critic is DDPG's target)."""
    q = critic_values(critics_t, next_obs, next_act).min(dim=0).values
    return rew + gamma * (1.0 - done) * q


# -- the projection (spec 3.2) in torch ops -------------------------------------------------------------
class AllocationProjection(nn.Module):
    """Raw tanh action (B, E*M + 2EU) and requested models (B, U) -> a feasible decision, spec 3.2:

    x = (clip(a, -1, 1) + 1) / 2; (1) per ES, models in descending score, cached when the score is above
    0.5 and the model fits the remaining storage (18b, 18e); (2) association (spec 1.7): ``action`` = among
    the ES caching Z_i (all ES if none does) the highest alpha score, ties to the larger path gain;
    ``nearest`` = the largest path gain; (3) alpha: zero at ES the user does not use, floored at eps,
    rows scaled down to sum <= 1 (18c, 18f); (4) L likewise over the hit users (18d, 18g).

    The per-instance constants (model sizes, storage, path gains, spec 1.4) are float64 buffers; every step
    is a deterministic torch op in float64: the cache and the association equal ``edgeaigc.project_batch``'s,
    the shares up to the summation order (1e-16).
    Returns (cache (B,E,M) bool, alpha (B,E,U), L (B,E,U) float64, association (B,U) int64).
    """

    def __init__(self, model_size_gb: np.ndarray, storage_gb: np.ndarray, path_gain_db: np.ndarray,
                 association: str = "action", share_floor: float = 1e-3):
        super().__init__()
        if association not in ("action", "nearest"):
            raise ValueError(f"unknown association rule {association!r}")
        self.register_buffer("size_gb", torch.as_tensor(np.asarray(model_size_gb, dtype=np.float64)))
        self.register_buffer("storage_gb", torch.as_tensor(np.asarray(storage_gb, dtype=np.float64)))
        self.register_buffer("gain_db", torch.as_tensor(np.asarray(path_gain_db, dtype=np.float64)))
        self.association = association
        self.share_floor = float(share_floor)
        self.E, self.U = self.gain_db.shape
        self.M = self.size_gb.shape[0]

    @classmethod
    def from_view(cls, view, association: str = "action", share_floor: float = 1e-3) -> "AllocationProjection":
        return cls(view.model_size_gb, view.storage_gb, view.path_gain_db, association, share_floor)

    def knapsack(self, score: torch.Tensor) -> torch.Tensor:
        """Step 1: greedy first fit in descending score, ties to the lower model index (a stable sort), no
        backtracking. (B,E,M) -> bool. The order comes from pairwise comparisons, not a sort: rank_m = #{k:
        s_k > s_m} + #{k < m: s_k = s_m}, and step k visits the model of rank k (only elementwise ops, so
        the graph exports to ONNX, which has no stable sort)."""
        M = self.M
        gt = score.unsqueeze(-2) > score.unsqueeze(-1)  # [.., m, k]: s_k > s_m
        eq = score.unsqueeze(-2) == score.unsqueeze(-1)
        lower = torch.arange(M).view(1, M) < torch.arange(M).view(M, 1)  # [m, k]: k < m
        rank = (gt | (eq & lower)).sum(dim=-1)  # (B,E,M), a permutation of 0..M-1 per (B,E)
        remaining = self.storage_gb.expand(score.shape[:-1])
        cache = torch.zeros(score.shape, dtype=torch.bool)
        size = self.size_gb.expand(score.shape)
        zero = torch.zeros_like(score)
        for k in range(M):  # sequential by definition; unrolled, M steps
            sel = rank == k  # one model per (B,E)
            s = torch.where(sel, score, zero).sum(dim=-1)
            sz = torch.where(sel, size, zero).sum(dim=-1)
            take = (s > 0.5) & (sz <= remaining + 1e-9)
            remaining = remaining - torch.where(take, sz, torch.zeros_like(sz))
            cache = cache | (sel & take.unsqueeze(-1))
        return cache

    def forward(self, action: torch.Tensor, model: torch.Tensor):
        E, U, M = self.E, self.U, self.M
        B = action.shape[0]
        x = (action.to(torch.float64).clamp(-1.0, 1.0) + 1.0) / 2.0
        beta_s = x[:, :E * M].reshape(B, E, M)
        alpha_s = x[:, E * M:E * M + E * U].reshape(B, E, U)
        l_s = x[:, E * M + E * U:].reshape(B, E, U)
        cache = self.knapsack(beta_s)
        has = cache.gather(2, model.unsqueeze(1).expand(B, E, U))  # (B,E,U): ES j holds Z_i
        gain = self.gain_db.unsqueeze(0).expand(B, E, U)
        neg_inf = torch.full_like(gain, -torch.inf)
        if self.association == "nearest":
            assoc = torch.argmax(gain, dim=1)
        else:
            cand = has | ~has.any(dim=1, keepdim=True)
            key = torch.where(cand, alpha_s, neg_inf)
            top = key >= key.amax(dim=1, keepdim=True)
            assoc = torch.argmax(torch.where(top, gain, neg_inf), dim=1)
        mask = assoc.unsqueeze(1) == torch.arange(E).view(1, E, 1)
        hit = has.gather(1, assoc.unsqueeze(1)).squeeze(1)
        alpha = self.shares(alpha_s, mask)
        comp = self.shares(l_s, mask & hit.unsqueeze(1))
        return cache, alpha, comp, assoc

    def shares(self, raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Steps 3-4: zero the unusable shares, floor the usable ones at eps, scale a row down if it exceeds 1."""
        x = torch.where(mask, raw.clamp(min=self.share_floor), torch.zeros_like(raw))
        return x / x.sum(dim=-1, keepdim=True).clamp(min=1.0)


def model_onehot_slice(sim) -> tuple[int, int]:
    """(start, width) of the ``model_onehot`` field in the observation layout (spec 3.1)."""
    start = 0
    for f in sim.OBS_LAYOUT:
        if f.name == "model_onehot":
            return start, f.width
        start += f.width
    raise ValueError("the observation layout has no model_onehot field")


def requested_models(obs: torch.Tensor, onehot_start: int, U: int, M: int) -> torch.Tensor:
    """(B, U) Z_i read back from the observation's one-hot block (spec 3.1)."""
    return obs[:, onehot_start:onehot_start + U * M].reshape(-1, U, M).argmax(dim=-1)


class DeployedPolicy(nn.Module):
    """Actor + projection, one graph: obs (B, obs_dim) float32 -> (cache, alpha, L, association).

    The requested models Z are read back from the observation's one-hot block, so the graph needs
    nothing but the observation row the gateway already builds (DESIGN principle 2)."""

    def __init__(self, actor: Actor, projection: AllocationProjection, onehot_start: int):
        super().__init__()
        self.actor = actor
        self.projection = projection
        self.onehot_start = int(onehot_start)

    def forward(self, obs: torch.Tensor):
        z = requested_models(obs, self.onehot_start, self.projection.U, self.projection.M)
        return self.projection(self.actor(obs), z)


def decision_width(E: int, U: int, M: int) -> int:
    """Width of :func:`decision_features`: alpha and L (E*U each), per user hit, alpha, L (3U), storage per ES (E)."""
    return 2 * E * U + 3 * U + E


def decision_features(proj: AllocationProjection, act: torch.Tensor, obs: torch.Tensor, onehot_start: int,
                      straight_through: bool = False) -> torch.Tensor:
    """The decision a(t) = {beta, alpha, L} of eq. 20 that the raw action projects to, as the critics'
    action input (B, decision_width) float32 [ours], in the terms G (eq. 15) is made of:
    - alpha and L (E x U): the shares actually used (0 at ES a user does not use), hence the association;
    - per user: hit_i (beta of the user's ES for Z_i), and the user's alpha and L there (U each);
    - per ES: the storage the cached models take, sum_m beta_jm S_m / 50 GB (the storage cost, eq. 14).
    G is a sum over users of terms in exactly these plus the storage cost, so this is a sufficient
    statistic of the decision (like MATO's per-ES loads): the critic does not have to learn the product
    "model m requested x model m cached" from the one-hot Z and the cache matrix. Caching a model no user
    asks for changes only the storage term, so its score gets the storage cost's (negative) gradient.
    alpha and L are differentiable in the raw action through the masking and row scaling. The knapsack
    repair of beta is piecewise constant: ``straight_through`` passes dQ/dbeta to the raw cache score
    unchanged (beta + x - stop_grad(x), x = (a + 1) / 2), as for a hard threshold."""
    E, U, M = proj.E, proj.U, proj.M
    B = act.shape[0]
    model = requested_models(obs, onehot_start, U, M)
    cache, alpha, comp, assoc = proj(act, model)
    beta = cache.reshape(B, E, M).to(act.dtype)
    if straight_through:
        score = ((act[:, :E * M] + 1.0) / 2.0).reshape(B, E, M)
        beta = beta + score - score.detach()
    alpha, comp = alpha.to(act.dtype), comp.to(act.dtype)
    mine = (assoc.unsqueeze(1) == torch.arange(E).view(1, E, 1)).to(act.dtype)  # (B,E,U) the user's ES
    hit = (beta.gather(2, model.unsqueeze(1).expand(B, E, U)) * mine).sum(dim=1)
    storage = (beta * proj.size_gb.to(act.dtype)).sum(dim=-1) / 50.0
    return torch.cat([alpha.reshape(B, E * U), comp.reshape(B, E * U), hit, (alpha * mine).sum(dim=1),
                      (comp * mine).sum(dim=1), storage], dim=-1)


def to_decision(out, b: int = 0):
    """Row ``b`` of the projection's tensors -> ``AllocationDecision``."""
    from policies.scenarios.edgeaigc import AllocationDecision

    cache, alpha, comp, assoc = out
    return AllocationDecision(cache[b].numpy().astype(bool), alpha[b].numpy(), comp[b].numpy(), assoc[b].numpy())


# -- the learner (eqs. 22-27) -------------------------------------------------------------------------
class Learner:
    """The six networks of Fig. 3, their optimisers and one update (critic step; delayed actor and target steps).

    ``proj`` (the instance's :class:`AllocationProjection`) turns actions into the critics' decision features
    (``critic_input = "decision"``); with ``proj = None`` the critics read the raw action (``"raw"``)."""

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, crit_dim: int, proj: AllocationProjection | None,
                 onehot_start: int):
        self.cfg, self.proj, self.onehot_start = cfg, proj, onehot_start
        self.actor, self.actor_t = Actor(obs_dim, act_dim, cfg.hidden), Actor(obs_dim, act_dim, cfg.hidden)
        self.critics = make_critics(obs_dim, crit_dim, cfg.hidden, cfg.twin_critics)
        self.critics_t = make_critics(obs_dim, crit_dim, cfg.hidden, cfg.twin_critics)
        self.actor_t.load_state_dict(self.actor.state_dict())
        self.critics_t.load_state_dict(self.critics.state_dict())
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr_actor)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=cfg.lr_critic)
        self.n_updates = 0

    MODULES = ("actor", "critics", "actor_t", "critics_t", "actor_opt", "critic_opt")

    def state_dict(self) -> dict:
        return {**{k: getattr(self, k).state_dict() for k in self.MODULES}, "n_updates": self.n_updates}

    def load_state_dict(self, state: dict) -> None:
        for k in self.MODULES:
            getattr(self, k).load_state_dict(state[k])
        self.n_updates = int(state["n_updates"])

    def critic_action(self, act: torch.Tensor, obs: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
        """What the critics read besides s: the decision features of ``act`` (or ``act`` itself, ``raw``)."""
        if self.proj is None:
            return act
        return decision_features(self.proj, act, obs, self.onehot_start, straight_through)

    def update(self, b: dict[str, torch.Tensor]) -> tuple[float, float | None, float]:
        """One critic step (eqs. 24-26) and, every ``policy_delay`` critic steps, one actor step (eq. 22) and
        the soft target updates (eqs. 23, 27). ``b``: obs, crit_act (the stored action's critic input), rew,
        next_obs, done. Returns (critic loss per critic, actor loss or None, mean Q)."""
        cfg = self.cfg
        with torch.no_grad():  # eq. 24 with TD3's target policy smoothing
            a2 = target_action(self.actor_t, b["next_obs"], cfg.target_smoothing, cfg.target_noise,
                               cfg.target_noise_clip)
            y = td_target(self.critics_t, b["next_obs"], self.critic_action(a2, b["next_obs"]), b["rew"], b["done"],
                          cfg.gamma)
        q = critic_values(self.critics, b["obs"], b["crit_act"])  # (C, B): the stored action ([fix] eq. 25)
        critic_loss = (q - y.unsqueeze(0)).pow(2).mean(dim=1).sum()  # eq. 26 per critic, summed
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        self.n_updates += 1
        actor_loss = None
        if self.n_updates % cfg.policy_delay == 0:  # delayed policy update
            act, pre = self.actor(b["obs"], return_pre=True)
            if cfg.tanh_straight_through:
                act = act + (pre - pre.detach())
            feats = self.critic_action(act, b["obs"], straight_through=True)
            loss = -critic_values(self.critics, b["obs"], feats)[0].mean()  # eq. 22: ascend Q_theta1
            if cfg.action_reg > 0:
                loss = loss + cfg.action_reg * pre.pow(2).sum(dim=-1).mean()
            self.actor_opt.zero_grad()
            loss.backward()
            self.actor_opt.step()
            common.soft_update(self.actor_t, self.actor, cfg.tau)  # eq. 23
            common.soft_update(self.critics_t, self.critics, cfg.tau)  # eq. 27
            actor_loss = loss.item()
        return critic_loss.item() / q.shape[0], actor_loss, q.mean().item()


# -- training ------------------------------------------------------------------------------------
def train(algo: str, sim, preset_name: str, cfg: Config, seed: int, out: Path, command: list[str],
          progress: bool | None = None) -> dict:
    """Train (or resume) into ``out`` (Alg. 1); returns the last episode's metrics row."""
    if sim.name != "edgeaigc":
        raise UserError(f"algo '{algo}' trains on the edgeaigc scenario, not '{sim.name}'")
    if cfg.policy_delay < 1 or cfg.updates_per_step < 1:
        raise UserError("policy_delay and updates_per_step must be at least 1")
    if cfg.critic_input not in ("decision", "raw"):
        raise UserError(f"--set critic_input={cfg.critic_input!r}: expected decision or raw")
    if cfg.critic_input == "decision" and sim.preset.resample_topology_each_episode:
        raise UserError("critic_input=decision projects stored actions with the instance's storage and positions; "
                        "it needs resample_topology_each_episode=false (or use critic_input=raw)")
    p, T = sim.preset, sim.T
    obs_dim, act_dim = sim.obs_dim(), p.action_dim
    crit_dim = act_dim if cfg.critic_input == "raw" else decision_width(p.num_edges, p.num_users, p.num_models)
    resolved, ckpt = common.start_run(algo, sim, preset_name, cfg, seed, out, command, obs_dim=obs_dim, act_dim=act_dim)

    common.seed_everything(seed)
    torch.set_num_threads(cfg.torch_threads)
    np_rng = np.random.default_rng(seed)  # replay sampling, the warm-up's random actions, exploration noise
    proj = None
    if cfg.critic_input == "decision":  # the instance's constants (fixed topology, spec 1.4)
        sim.reset(sim.generate_workload(episode_rng(seed, 0, TRAIN_WORKLOAD_STREAM), 0))
        proj = AllocationProjection.from_view(sim.view(), p.association, p.share_floor)
    learner = Learner(cfg, obs_dim, act_dim, crit_dim, proj, model_onehot_slice(sim)[0])
    buffer = common.ReplayBuffer(cfg.buffer_size, {"obs": (obs_dim,), "act": (act_dim,), "rew": (),
                                                   "next_obs": (obs_dim,), "done": (), "crit_act": (crit_dim,)})
    start, global_step = 0, 0
    if ckpt is not None:
        learner.load_state_dict(ckpt["learner"])
        buffer.load_state_dict(ckpt["buffer"])
        common.set_rng_state(ckpt["rng"], np_rng)
        start, global_step = int(ckpt["episode"]), int(ckpt["global_step"])

    def checkpoint(episode: int) -> None:
        common.save_checkpoint(out, {"resolved": resolved, "episode": episode, "global_step": global_step,
                                     "learner": learner.state_dict(), "actor": learner.actor.state_dict(),
                                     "buffer": buffer.state_dict(), "rng": common.rng_state(np_rng)})

    fields = ["episode", "global_step", "reward", "objective", "hit_rate", "latency_s", "cost", "storage_cost",
              "critic_loss", "actor_loss", "q_mean", "noise", "episode_s"]
    log = common.MetricsLog(out / common.METRICS, fields, start)
    row: dict = {}
    bar = tqdm(total=cfg.episodes, initial=start, desc=f"train {algo}", unit="ep", disable=progress is False,
               dynamic_ncols=True, file=sys.stderr)
    try:
        for episode in range(start, cfg.episodes):  # Alg. 1, line 1
            t0 = time.perf_counter()
            # line 2: gamma(1), the requests and s(1)
            sim.reset(sim.generate_workload(episode_rng(seed, episode, TRAIN_WORKLOAD_STREAM), episode))
            obs = sim.observation(sim.view())[0]
            stats: list[tuple] = []
            for t in range(T):
                if global_step < cfg.learning_starts:  # warm-up: uniform random raw actions
                    a = np_rng.uniform(-1.0, 1.0, act_dim).astype(np.float32)
                else:  # line 4, plus Gaussian exploration on the tanh output
                    with torch.no_grad():
                        a = learner.actor(torch.from_numpy(obs).unsqueeze(0))[0].numpy()
                    a = np.clip(a + cfg.exploration_noise * np_rng.standard_normal(act_dim), -1.0, 1.0)
                    a = a.astype(np.float32)
                # line 5: the environment projects x = (a + 1) / 2 (spec 3.2), as EdgeAigcEnv.step
                sim.step(sim.project(sim.view(), (a.astype(np.float64) + 1.0) / 2.0))
                with torch.no_grad():  # the same decision as the env's (the projections agree exactly)
                    crit_act = learner.critic_action(torch.from_numpy(a)[None], torch.from_numpy(obs)[None])[0].numpy()
                rew = sim.slot_reward(t) * p.reward_scale
                if sim.done:  # the episode ends after T slots (spec 1.10): a time limit (bootstrap_at_limit)
                    done, next_obs = not cfg.bootstrap_at_limit, obs
                else:
                    done, next_obs = False, sim.observation(sim.view())[0]
                buffer.add(obs=obs, act=a, rew=rew, next_obs=next_obs, done=float(done), crit_act=crit_act)  # line 6
                obs = next_obs
                global_step += 1
                if len(buffer) > cfg.learning_starts:  # lines 7-8
                    for _ in range(cfg.updates_per_step):
                        stats.append(learner.update(buffer.sample(np_rng, cfg.batch_size)))
            m = sim.episode_metrics()
            a_losses = [x[1] for x in stats if x[1] is not None]
            row = {"episode": episode, "global_step": global_step, "reward": m["reward"], "objective": m["objective"],
                   "hit_rate": m["hit_rate"], "latency_s": m["latency_s"], "cost": m["cost"],
                   "storage_cost": m["storage_cost"],
                   "critic_loss": float(np.mean([x[0] for x in stats])) if stats else float("nan"),
                   "actor_loss": float(np.mean(a_losses)) if a_losses else float("nan"),
                   "q_mean": float(np.mean([x[2] for x in stats])) if stats else float("nan"),
                   "noise": cfg.exploration_noise if global_step > cfg.learning_starts else 1.0,
                   "episode_s": time.perf_counter() - t0}
            log.write(row)
            bar.set_postfix_str(f"reward={m['reward']:.0f} hit={m['hit_rate']:.2%} G={m['objective']:.0f}",
                                refresh=False)
            bar.update(1)
            if (episode + 1) % cfg.checkpoint_every == 0 or episode + 1 == cfg.episodes:
                checkpoint(episode + 1)
    finally:
        bar.close()
        log.close()
    return row


# -- a trained run as a policy ---------------------------------------------------------------------
class TrainedPolicy(Policy):
    """The run's actor acting deterministically (no noise), through :class:`DeployedPolicy`: the
    evaluated decision is exactly what the exported graph computes."""

    def __init__(self, name: str, sim, resolved: dict, actor_state: dict):
        self.name = name
        self.sim = sim
        self.resolved = resolved
        self.actor = Actor(resolved["obs_dim"], resolved["act_dim"], resolved["config"]["hidden"])
        self.actor.load_state_dict(actor_state)
        self.actor.eval()
        self.onehot_start = model_onehot_slice(sim)[0]
        self._deployed: tuple[bytes, DeployedPolicy] | None = None

    def deployed(self, view) -> DeployedPolicy:
        """The actor + projection for this view's instance (storage, model sizes, positions), cached."""
        key = b"".join(np.ascontiguousarray(a, dtype=np.float64).tobytes()
                       for a in (view.model_size_gb, view.storage_gb, view.distance_m))
        if self._deployed is None or self._deployed[0] != key:
            p = self.sim.preset
            proj = AllocationProjection.from_view(view, p.association, p.share_floor)
            self._deployed = (key, DeployedPolicy(self.actor, proj, self.onehot_start).eval())
        return self._deployed[1]

    def decide(self, view):
        obs = torch.from_numpy(self.sim.observation(view))
        with torch.no_grad():
            return to_decision(self.deployed(view)(obs))


def load_policy(name: str, run_dir: Path, sim, resolved: dict, ckpt: dict) -> TrainedPolicy:
    if sim.name != resolved["scenario"]:
        raise UserError(f"run '{run_dir}' was trained on scenario '{resolved['scenario']}'; it cannot act in "
                        f"scenario '{sim.name}'")
    if sim.obs_dim() != resolved["obs_dim"] or sim.preset.action_dim != resolved["act_dim"]:
        p, q = resolved["preset"], sim.preset
        raise UserError(f"run '{run_dir}' was trained with {p['num_users']} users, {p['num_edges']} ES, "
                        f"{p['num_models']} models and obs '{p['obs']}' (observation {resolved['obs_dim']}, action "
                        f"{resolved['act_dim']}); this preset has {q.num_users} users, {q.num_edges} ES, "
                        f"{q.num_models} models and obs '{q.obs}' (observation {sim.obs_dim()}, action {q.action_dim})")
    return TrainedPolicy(name, sim, resolved, ckpt["actor"])
