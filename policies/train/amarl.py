"""AMARL: attention-enhanced multi-agent RL for GMEL (paper 001, section IV-B; spec docs/papers/gmel.md
section 5), CleanRL style, top to bottom: config, networks, the AMARL learner, the GMEL training loop
(shared with the paper's baselines in ``gmel_baselines.py``), and a trained run as a policy.

Every IED (industrial edge device) is an agent. Each slot it reads its own observation o_i(t)
(``sim.observation(sim.agent_view())``, the shared observation contract: task s, e, d, a has-task flag,
its GPU wait, its own uplink and edge queues, normalised channel gains, the ESs' load) and picks
a_i(t) in {0 = local, 1..M = ES m} (section IV-A). Centralized training, decentralized execution [paper]:

* **Actor** pi(a_i | o_i): MLP 25 -> 64 -> 64 -> M+1 logits (ReLU, dropout 0.1 [paper]). One network
  shared by every IED [spec 5, ours]: IED positions are redrawn every episode, so the agents are
  exchangeable and only the observation tells them apart. Training samples a ~ softmax(logits);
  execution takes the argmax (greedy actions, spec 6).
* **Attention critic** Q_i(O, A) = phi(eta(o_i), omega_i) (eq. 6, after MAAC [19]): an encoder per agent
  (the paper's "convolutional layers" eta: a kernel-1 convolution over the agent axis, i.e. a linear
  layer applied to every agent: e_i = eta(o_i) for the agent itself, e_j = eta'(o_j, a_j) for the
  others), H = 4 heads of scaled dot-product attention from agent i's query to the other agents' keys,
  w_ij = softmax_{j != i}(q_i . k_j / sqrt(d_k)) (weights sum to one over j != i), omega_i = concat_h
  sum_j w_ij v_j, the "impact of the other IED agents". All critic parameters are shared by the agents
  ("all critics are updated simultaneously ... since the parameters are being shared", eq. 7).
* **Dueling head** [paper, section IV-B last paragraph]: phi ends in a value stream V(z) and an advantage
  stream A(z, .) in R^(M+1), Q_i(O, A) = V(z) + A(z, a_i) - mean_a A(z, a). Agent i's own action enters
  through the head index (as in MAAC for discrete actions), the others' through their encodings, so one
  critic pass gives Q_i for every own action with the others' actions fixed.
* **Critic loss** (eqs. 7-8): L_Q = mean_{b,i} (Q_i(O, A) - y_i)^2, y_i = r_i + gamma (1 - done)
  E_{a'_i ~ pi'_i}[Q'_i(O', A') - lambda' log pi'_i(a'_i | o'_i)], with the target actor pi' and the target
  critic Q' (soft updates, tau). The expectation over agent i's own target action is exact (the dueling
  head gives Q'_i for every a'_i); the other agents' target actions a'_j ~ pi'_j are sampled.
* **Entropy term** lambda' (eq. 8): in the target above and in the actor loss (soft actor-critic style).
* **Target policy smoothing** [paper]: Gaussian noise zeta ~ N(0, sigma), clipped to +-c, is added to the
  target action vectors (one-hot) of the agents as they enter the critic; the vectors are clipped to
  [0, 1] [spec 5: sigma 0.2, c 0.5].
* **Actor loss** (eq. 5 plus the entropy term of eq. 8): with a_i(t) = pi_i(o_i) the action distribution
  (the relaxed discrete action), Q_i is linear in a_i through the dueling head, so eq. 5's
  grad_theta pi * grad_a Q is exactly the gradient of E_{a ~ pi_i}[Q_i(O, (a, A_-i))]: we minimise
  sum_a pi_i(a | o_i) (lambda' log pi_i(a | o_i) - Q_i(O, (a, A_-i))) with the others' replayed actions
  A_-i, averaged over the agents that have a task. No Gumbel noise is needed for this gradient.

Reward and transitions (spec 1.8): r_i(t) = C - T_i(t) for the task IED i generated at slot t (T = T_drop
for a dropped task), 0 without a task. T_i(t) is known only when the task resolves (up to D_max slots
later), so an episode's transitions enter the replay when the episode ends, every task resolved (the
back-filling of spec 1.8, done once per episode), and the episode's T / ``update_every`` updates run then.
Every agent has a transition every slot: agents without a task still carry a value (their queues and
next tasks), so the critics learn those states too; their action is ignored by the simulator and stored
as 0 ("no decision"), it is zeroed where it enters the other agents' critics, and the actor loss and
entropy skip them. The 100-slot episode is a time limit of a continuing system whose observation does
not show the time left, so the last slot bootstraps from its own observation (``time_limit_bootstrap``;
spec 5 makes it terminal, which leaves the critics a value that depends on an unobserved clock).

Choices of ours where the paper is silent (spec 5 unless said; docs/papers/gmel.md "Training" has the
measurements behind the changes): heads 4, tau 0.005, target smoothing sigma 0.2 clipped at 0.5, 10
warm-up episodes of uniform random actions, gradient-norm clips 10 (critic) and 0.5 (actor), and
* lambda' = 0.5 (spec: 0.01). Rewards are in seconds (C - T in [-2.5, 2.5]) and Q ~ 40 at gamma 0.99: at
  0.01 the entropy term is negligible, the policy turns deterministic within the first 100 updates (all
  local, after the random warm-up showed offloading into a congested edge), and recovers only slowly;
* width 64 (spec: 128) and one update round every 4 slots (spec: every slot): the update costs 36 ms of
  CPU at I = 50 (B x I = 3,200 agent rows through encoder, attention and phi; ~2.3x that at width 128),
  so the spec's settings would take ~8 s per episode and ~12 h for the paper's 5000 episodes; with 25
  updates of 64 joint transitions per episode each new agent transition is still replayed ~16 times;
* a replay of 20,000 joint transitions (200 episodes; the spec's 1e5 would hold 0.5 GB per run at 50 IEDs).
The paper's hidden states h_a, h_c (a recurrent actor and critic) are not used: the observation already
carries the queue state, and a stateless actor keeps the decentralized execution contract
(``Policy.decide`` on the IEDs that have a task) and the ONNX export simple.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from policies.errors import UserError
from policies.scenarios.base import OffloadDecision, OffloadView, Policy
from policies.train import common
from policies.workload import episode_rng

TRAIN_WORKLOAD_STREAM = 3  # episode_rng stream of training workloads (evaluation draws stream 0)


@dataclass
class Config:
    # [paper] section V-A and V-B
    lr_actor: float = 1e-3
    lr_critic: float = 5e-3
    gamma: float = 0.99
    batch_size: int = 64  # joint transitions (one slot, every agent)
    dropout: float = 0.1
    episodes: int = 5000  # of T = 100 slots
    # [ours] spec section 5
    hidden: int = 64  # actor and critic width (spec 5 proposes 128: 2.4x the update time, see docs)
    heads: int = 4  # attention heads; d_k = hidden / heads
    tau: float = 0.005
    entropy: float = 0.5  # lambda' in eq. 8 (spec 5 proposes 0.01: the policy collapses, see docs)
    smooth_sigma: float = 0.2  # target policy smoothing: zeta ~ N(0, sigma) ...
    smooth_clip: float = 0.5  # ... clipped to +-c
    buffer_size: int = 20_000  # joint transitions
    warmup_episodes: int = 10  # uniform random actions, no updates
    updates_per_step: int = 1  # critic + actor updates per round after the warm-up ...
    update_every: int = 4  # ... one round every this many slots (spec 5 proposes 1; see docs)
    time_limit_bootstrap: bool = True  # the 100-slot episode is a time limit of a continuing system:
    # bootstrap the last slot from its own observation (the time to go is not observed); False: terminal
    critic_grad_clip: float = 10.0
    actor_grad_clip: float = 0.5
    checkpoint_every: int = 25  # episodes
    torch_threads: int = 1  # small nets: extra threads only add overhead on 2 cores


# -- networks ------------------------------------------------------------------------------------
def mlp(n_in: int, n_out: int, hidden: int, layers: int = 2, dropout: float = 0.0) -> nn.Sequential:
    """``layers`` hidden layers of ``hidden`` units, ReLU, dropout after every hidden layer."""
    mods: list[nn.Module] = []
    for k in range(layers):
        mods += [nn.Linear(n_in if k == 0 else hidden, hidden), nn.ReLU()]
        if dropout > 0:
            mods.append(nn.Dropout(dropout))
    mods.append(nn.Linear(hidden if layers else n_in, n_out))
    return nn.Sequential(*mods)


class Actor(nn.Module):
    """pi(a | o_i): one network shared by every agent; obs (..., D) -> logits (..., M + 1)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.net = mlp(obs_dim, n_actions, hidden, 2, dropout)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class AttentionCritic(nn.Module):
    """Q_i(O, A) for every agent i and every own action (eq. 6 with the dueling head).

    obs (B, I, D), act (B, I, M + 1) one-hot (zero rows for agents without a task) -> (B, I, M + 1).
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 128, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if hidden % heads:
            raise UserError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
        self.heads, self.dk = heads, hidden // heads
        # eta: kernel-1 convolutions over the agent axis = one linear layer applied to every agent
        self.enc_state = nn.Sequential(nn.Linear(obs_dim, hidden), nn.LeakyReLU())  # e_i = eta(o_i)
        self.enc_sa = nn.Sequential(nn.Linear(obs_dim + n_actions, hidden), nn.LeakyReLU())  # e_j = eta'(o_j, a_j)
        self.query = nn.Linear(hidden, hidden, bias=False)  # the H heads' W_q, W_k, W_v side by side
        self.key = nn.Linear(hidden, hidden, bias=False)
        self.value = nn.Sequential(nn.Linear(hidden, hidden), nn.LeakyReLU())
        self.phi = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.LeakyReLU(), nn.Dropout(dropout))
        self.v_head = nn.Linear(hidden, 1)  # dueling: value stream ...
        self.a_head = nn.Linear(hidden, n_actions)  # ... and advantage stream

    def attention(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(e_i, omega_i, w): own encodings (B, I, h), the other agents' impact (B, I, h) and the
        attention weights (B, H, I, I), w[b, h, i, j] over j != i (the diagonal is 0)."""
        B, I, _ = obs.shape
        e_self = self.enc_state(obs)
        e_sa = self.enc_sa(torch.cat([obs, act], dim=-1))
        split = lambda x: x.view(B, I, self.heads, self.dk).transpose(1, 2)  # noqa: E731  (B, H, I, dk)
        q, k, v = split(self.query(e_self)), split(self.key(e_sa)), split(self.value(e_sa))
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.dk)  # (B, H, I, I)
        eye = torch.eye(I, dtype=torch.bool)
        w = torch.softmax(logits.masked_fill(eye, float("-inf")), dim=-1) if I > 1 else torch.zeros_like(logits)
        omega = (w @ v).transpose(1, 2).reshape(B, I, -1)
        return e_self, omega, w

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        e_self, omega, _ = self.attention(obs, act)
        z = self.phi(torch.cat([e_self, omega], dim=-1))
        adv = self.a_head(z)
        return self.v_head(z) + adv - adv.mean(dim=-1, keepdim=True)  # Q = V + A - mean A


def one_hot(act: torch.Tensor, has: torch.Tensor, n: int) -> torch.Tensor:
    """Action indices (B, I) -> one-hot (B, I, n), zero rows for agents without a task."""
    return F.one_hot(act.long(), n).to(torch.float32) * has.unsqueeze(-1)


def smoothed(act: torch.Tensor, sigma: float, clip: float) -> torch.Tensor:
    """Target policy smoothing: one-hot + clip(N(0, sigma), -c, c), clipped to [0, 1]; zero rows stay zero."""
    if sigma <= 0:
        return act
    noise = (sigma * torch.randn_like(act)).clamp(-clip, clip)
    live = (act.sum(-1, keepdim=True) > 0).to(act.dtype)
    return ((act + noise).clamp(0.0, 1.0)) * live


def soft_value(q: torch.Tensor, logits: torch.Tensor, has: torch.Tensor, entropy: float) -> torch.Tensor:
    """E_{a ~ pi}[Q(a) - lambda' log pi(a)] per agent (B, I); an agent without a task takes action 0
    (its action is ignored), so its value is Q(0) and it gets no entropy bonus."""
    logp = torch.log_softmax(logits, dim=-1)
    v = (logp.exp() * (q - entropy * logp)).sum(-1)
    return torch.where(has > 0, v, q[..., 0])


# -- AMARL ---------------------------------------------------------------------------------------
class AmarlLearner:
    """The AMARL networks, optimisers and one gradient step (eqs. 5, 7, 8)."""

    off_policy = True

    def __init__(self, cfg: Config, obs_dim: int, n_actions: int, agents: int):
        self.cfg, self.n = cfg, n_actions
        self.actor = Actor(obs_dim, n_actions, cfg.hidden, cfg.dropout)
        self.critic = AttentionCritic(obs_dim, n_actions, cfg.hidden, cfg.heads, cfg.dropout)
        self.actor_t = Actor(obs_dim, n_actions, cfg.hidden, cfg.dropout)
        self.critic_t = AttentionCritic(obs_dim, n_actions, cfg.hidden, cfg.heads, cfg.dropout)
        self.actor_t.load_state_dict(self.actor.state_dict())
        self.critic_t.load_state_dict(self.critic.state_dict())
        for net in (self.actor_t, self.critic_t):
            net.eval()  # targets: no dropout
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr_actor)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr_critic)
        self.modules = {"actor": self.actor, "critic": self.critic, "actor_target": self.actor_t,
                        "critic_target": self.critic_t, "actor_opt": self.actor_opt, "critic_opt": self.critic_opt}

    @property
    def policy_net(self) -> nn.Module:
        return self.actor

    @torch.no_grad()
    def act(self, obs: torch.Tensor, has: torch.Tensor, episode: int) -> torch.Tensor:
        """Decentralized execution while training: a_i ~ pi(. | o_i) (uniform during the warm-up)."""
        if episode < self.cfg.warmup_episodes:
            return torch.randint(0, self.n, has.shape)
        self.actor.eval()
        return torch.distributions.Categorical(logits=self.actor(obs)).sample()

    def ready(self, episode: int, replay: common.EpisodeReplay) -> bool:
        """Updates start once the warm-up episodes are in the replay."""
        return episode + 1 >= self.cfg.warmup_episodes and len(replay) >= self.cfg.batch_size

    @torch.no_grad()
    def target(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Eq. 8: y_i = r_i + gamma (1 - done) E_{a'_i ~ pi'_i}[Q'_i(O', A') - lambda' log pi'_i(a'_i | o'_i)],
        the other agents' a'_j ~ pi'_j(o'_j), every target action vector smoothed: (B, I)."""
        cfg, nobs, nhas = self.cfg, b["next_obs"], b["next_has"]
        logits_t = self.actor_t(nobs)
        a_next = torch.distributions.Categorical(logits=logits_t).sample()
        a_next = smoothed(one_hot(a_next, nhas, self.n), cfg.smooth_sigma, cfg.smooth_clip)
        v_next = soft_value(self.critic_t(nobs, a_next), logits_t, nhas, cfg.entropy)
        return b["rew"] + cfg.gamma * (1.0 - b["done"]).unsqueeze(-1) * v_next

    def update(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg, n = self.cfg, self.n
        obs, has = b["obs"], b["has"]
        act = one_hot(b["act"], has, n)
        y = self.target(b)
        self.critic.train()
        q_all = self.critic(obs, act)  # (B, I, M + 1): Q_i for every own action, the others' replayed
        q = q_all.gather(-1, b["act"].long().unsqueeze(-1)).squeeze(-1)
        critic_loss = (q - y).pow(2).mean()  # eq. 7 (a mean over samples and agents)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.critic_grad_clip)
        self.critic_opt.step()
        # eq. 5 with the relaxed action a_i = pi_i(o_i), plus eq. 8's entropy term
        self.actor.train()
        logp = torch.log_softmax(self.actor(obs), dim=-1)
        per_agent = (logp.exp() * (cfg.entropy * logp - q_all.detach())).sum(-1)
        actor_loss = (per_agent * has).sum() / has.sum().clamp(min=1.0)
        self.actor_opt.zero_grad()
        actor_loss.backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.actor_grad_clip)
        self.actor_opt.step()
        common.soft_update(self.actor_t, self.actor, cfg.tau)
        common.soft_update(self.critic_t, self.critic, cfg.tau)
        entropy = -(logp.exp() * logp).sum(-1)
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(),
                "entropy": float((entropy.detach() * has).sum() / has.sum().clamp(min=1.0))}

    def end_episode(self, episode: dict[str, np.ndarray], np_rng: np.random.Generator) -> list[dict]:
        return []  # off-policy: all learning happens in update()


# -- the GMEL training loop (AMARL and the baselines of gmel_baselines.py) --------------------------
def slot_rewards(sim) -> np.ndarray:
    """(T, I): r_i(t) = C - T_i(t) for the task IED i generated at slot t, 0 without a task (spec 1.8).
    Call when the episode is over (every task resolved)."""
    from policies.scenarios.gmel import STATUS_DONE

    r = np.zeros((sim.T, sim.I), dtype=np.float32)
    ok = sim.status == STATUS_DONE
    r[sim.slot_of, sim.src_of] = sim.task_reward(ok, sim.latency_s)
    return r


def run_episode(sim, learner, episode: int, seed: int, time_limit_bootstrap: bool = True,
                rewards: Callable[[Any], np.ndarray] = slot_rewards) -> dict[str, np.ndarray]:
    """One training episode: every agent acts every slot (the PettingZoo env's protocol); returns the
    episode's transitions, rewards back-filled once every task has resolved (``rewards(sim)``: (T, I),
    GMEL's spec 1.8 by default; the factory adapter of ``factory_agents.py`` passes its own)."""
    sim.reset(sim.generate_workload(episode_rng(seed, episode, TRAIN_WORKLOAD_STREAM), episode))
    T, I = sim.T, sim.I
    obs = np.zeros((T, I, sim.obs_dim()), dtype=np.float32)
    act = np.zeros((T, I), dtype=np.int64)
    has = np.zeros((T, I), dtype=np.float32)
    for t in range(T):
        view = sim.agent_view()
        obs[t] = sim.observation(view)
        has[t] = view.features["has_task"]
        a = learner.act(torch.from_numpy(obs[t]), torch.from_numpy(has[t]), episode).numpy()
        act[t] = np.where(has[t] > 0, a, 0)  # an IED without a task makes no decision (stored as 0)
        sim.step(OffloadDecision(target=act[t]))
    done = np.zeros(T, dtype=np.float32)
    done[-1] = 0.0 if time_limit_bootstrap else 1.0  # the last decision slot (it ran the drain)
    return {"obs": obs, "act": act, "has": has, "rew": rewards(sim), "done": done}


def run_training(algo: str, sim, preset_name: str, cfg, seed: int, out: Path, command: list[str],
                 progress: bool | None, make_learner: Callable[[Any, int, int, int], Any], scenario: str = "gmel",
                 rewards: Callable[[Any], np.ndarray] = slot_rewards) -> dict:
    """Train (or resume) ``make_learner(cfg, obs_dim, n_actions, agents)`` on the GMEL simulator into
    ``out`` (config.json, checkpoint.pt, metrics.csv); returns the last episode's metrics row.
    ``scenario`` and ``rewards`` let another simulator that speaks GMEL's protocol (``agent_view``, ``I``
    agents, ``M + 1`` actions; the factory adapter of ``factory_agents.py``) train with the same loop."""
    if sim.name != scenario:
        raise UserError(f"algo '{algo}' trains on '{scenario}' scenarios, not '{sim.name}'")
    I, obs_dim, n_actions = sim.I, sim.obs_dim(), sim.M + 1
    resolved, ckpt = common.start_run(algo, sim, preset_name, cfg, seed, out, command, obs_dim=obs_dim, n_actions=n_actions,
                                    num_agents=I)

    common.seed_everything(seed)
    torch.set_num_threads(cfg.torch_threads)
    np_rng = np.random.default_rng(seed)  # replay sampling
    learner = make_learner(cfg, obs_dim, n_actions, I)
    # observations in float16 (inputs normalised to ~[0, 1], 3 significant digits): half the memory and
    # checkpoint (50 MB at 50 IEDs and 20,000 transitions); an on-policy learner keeps only one episode
    capacity = max(cfg.buffer_size, sim.T) if learner.off_policy else sim.T
    replay = common.EpisodeReplay(capacity, {"obs": (I, obs_dim), "act": (I,), "has": (I,), "rew": (I,)},
                                  next_fields=("obs", "has"), dtypes={"obs": np.float16, "act": np.int8})
    start, global_step, updates = 0, 0, 0
    if ckpt is not None:
        for key, mod in learner.modules.items():
            mod.load_state_dict(ckpt[key])
        replay.load_state_dict(ckpt["replay"])
        common.set_rng_state(ckpt["rng"], np_rng)
        start, global_step, updates = int(ckpt["episode"]), int(ckpt["global_step"]), int(ckpt["updates"])

    def checkpoint(episode: int) -> None:
        common.save_checkpoint(out, {"resolved": resolved, "episode": episode, "global_step": global_step,
                                     "updates": updates, "replay": replay.state_dict(), "rng": common.rng_state(np_rng),
                                     **{k: m.state_dict() for k, m in learner.modules.items()}})

    fields = ["episode", "global_step", "updates", "reward", "completion_rate", "latency_s", "drop_rate",
              "offload_rate", "critic_loss", "actor_loss", "entropy", "episode_s", "episode_cpu_s"]
    log = common.MetricsLog(out / common.METRICS, fields, start)
    row: dict = {}
    bar = tqdm(total=cfg.episodes, initial=start, desc=f"train {algo}", unit="ep", disable=progress is False,
               dynamic_ncols=True, file=sys.stderr)
    try:
        for episode in range(start, cfg.episodes):
            t0, c0 = time.perf_counter(), time.process_time()
            data = run_episode(sim, learner, episode, seed, cfg.time_limit_bootstrap, rewards)
            global_step += sim.T
            replay.add_episode(**data)
            # the episode's T slots' worth of updates run once its rewards have resolved (they are known
            # only at the end, spec 1.8): the same number of updates per slot as an online learner
            losses: list[dict] = []
            if learner.off_policy and learner.ready(episode, replay):
                for _ in range(0, sim.T, max(cfg.update_every, 1)):
                    for _ in range(cfg.updates_per_step):
                        losses.append(learner.update(replay.sample(np_rng, cfg.batch_size)))
            losses += learner.end_episode(data, np_rng)
            updates += len(losses)
            m = sim.episode_metrics()
            mean = lambda k: float(np.mean([x[k] for x in losses if k in x])) if any(k in x for x in losses) else float("nan")  # noqa: E731
            row = {"episode": episode, "global_step": global_step, "updates": updates, "reward": m["reward"],
                   "completion_rate": m["completion_rate"], "latency_s": m["latency_s"], "drop_rate": m["drop_rate"],
                   "offload_rate": m["offload_rate"], "critic_loss": mean("critic_loss"),
                   "actor_loss": mean("actor_loss"), "entropy": mean("entropy"), "episode_s": time.perf_counter() - t0,
                   "episode_cpu_s": time.process_time() - c0}  # CPU time: the cost on an idle core
            log.write(row)
            bar.set_postfix_str(f"reward={m['reward']:.2f} done={m['completion_rate']:.2%} "
                                f"lat={m['latency_s']:.2f}s", refresh=False)
            bar.update(1)
            if (episode + 1) % cfg.checkpoint_every == 0 or episode + 1 == cfg.episodes:
                checkpoint(episode + 1)
    finally:
        bar.close()
        log.close()
    return row


def train(algo: str, sim, preset_name: str, cfg: Config, seed: int, out: Path, command: list[str],
          progress: bool | None = None) -> dict:
    """Train (or resume) AMARL into ``out``; returns the last episode's metrics row."""
    return run_training(algo, sim, preset_name, cfg, seed, out, command, progress, AmarlLearner)


# -- a trained run as a policy ---------------------------------------------------------------------
class TrainedPolicy(Policy):
    """Decentralized execution: each IED with a task takes argmax of its network's output on its own
    observation row (``sim.observation(view)``): the actor's logits (AMARL, MADDPG, AC) or Q-values (DQN)."""

    def __init__(self, name: str, sim, net: nn.Module):
        self.name, self.sim, self.net = name, sim, net.eval()

    def decide(self, view: OffloadView) -> OffloadDecision:
        if view.n == 0:
            return OffloadDecision(target=np.zeros(0, dtype=np.int64))
        with torch.no_grad():
            out = self.net(torch.from_numpy(self.sim.observation(view)))
        return OffloadDecision(target=out.argmax(-1).numpy().astype(np.int64))


def check_run_fits(run_dir: Path, sim, resolved: dict) -> None:
    """The actor reads one observation row, so any number of IEDs works; the layout must match."""
    if sim.name != resolved["scenario"] or sim.obs_dim() != resolved["obs_dim"] or sim.M + 1 != resolved["n_actions"]:
        raise UserError(f"run '{run_dir}' was trained on {resolved['scenario']} (observation width "
                        f"{resolved['obs_dim']}); it cannot act in scenario '{sim.name}'")


def load_policy(name: str, run_dir: Path, sim, resolved: dict, ckpt: dict) -> TrainedPolicy:
    check_run_fits(run_dir, sim, resolved)
    c = resolved["config"]
    actor = Actor(resolved["obs_dim"], resolved["n_actions"], c["hidden"], c["dropout"])
    actor.load_state_dict(ckpt["actor"])
    return TrainedPolicy(name, sim, actor)
