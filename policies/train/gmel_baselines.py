"""The GMEL paper's learning baselines (paper 001, section V-B, Figs. 3-6; spec docs/papers/gmel.md section 4):
MADDPG, Actor-Critic and DQN, on the same observation, action, reward, replay and training loop as AMARL
(``amarl.run_training``: every IED acts every slot, rewards back-filled when the episode's tasks have
resolved, the 100-slot limit bootstrapped). The paper gives no detail of its baselines; these are the
textbook algorithms with the settings AMARL uses where they have the same knob [spec 4, ours, for
fairness]: lr 1e-3 (actor) and 5e-3 (critic / Q), gamma 0.99, batch 64, one network shared by all IEDs
(as AMARL's; the agents are exchangeable), the same width (``hidden``) and the same update schedule
(``update_every``). The paper's AMARL-only ingredients (attention, entropy term, target policy smoothing,
dueling head, dropout) are not used.

* ``method = "maddpg"`` (Lowe et al. 2017; registered as ``gmel_maddpg``): actor pi(o_i) -> logits, the
  action a straight-through Gumbel-softmax sample (hard one-hot forward, soft gradient; a categorical
  sample when acting in training, argmax when executing); a centralized MLP critic
  Q_i(o_i, a_i, o_1..o_I, a_1..a_I) (input 31 + 50 x 31 at I = 50), shared by the agents, agent i's own
  observation and action first (that is what tells the agents apart in a shared critic). Target
  y = r_i + gamma Q'_i(O', A'), A' Gumbel-softmax samples of the target actor; actor loss
  -Q_i(O, (a_i(theta), A_-i)) over the agents with a task, plus openai/maddpg's 1e-3 penalty on the
  squared logits; soft target updates tau = 0.01 [spec 4].
* ``method = "ac"`` (registered as ``gmel_ac``): independent one-step advantage actor-critic: pi(a | o_i)
  and V(o_i) on each agent's own transitions, delta = r + gamma V(o') - V(o), on-policy: after each
  episode its I x T agent transitions are shuffled and used once, in minibatches of ``ac_batch`` = 64
  [spec 4], actor loss -delta log pi(a | o) over the agents with a task, minus an entropy bonus 0.01 H(pi)
  [ours]. Measured: the shared policy swings between all-offload and all-local in the first episodes
  (78 on-policy updates per episode on one episode's data) and then collapses to all-local, where it
  stays (no offload is ever sampled again); an entropy bonus of 0.5 (AMARL's lambda') collapses too.
* ``method = "dqn"`` (Mnih et al. 2015; registered as ``gmel_dqn``): independent DQN Q(o_i, .) in R^(M+1)
  on each agent's own transitions (the replay's joint transitions, every agent's row), epsilon-greedy
  from 1.0 to 0.01 over the first half of the episodes (2500 of 5000), target network copied every 200
  updates [spec 4, from ref. 13], MSE TD loss with y = r + gamma max_a Q'(o', a).

An agent without a task has no decision (stored as action 0, zeroed in MADDPG's joint critic input);
its transitions still train the critics / V / Q, since other transitions bootstrap through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policies.errors import UserError
from policies.train import common
from policies.train.amarl import Actor, TrainedPolicy, check_run_fits, mlp, one_hot, run_training

METHODS = ("maddpg", "ac", "dqn")


@dataclass
class Config:
    method: str = "maddpg"  # maddpg | ac | dqn (set by the registry entry)
    # [paper] AMARL's settings, shared by every learner [spec 4]
    lr_actor: float = 1e-3
    lr_critic: float = 5e-3  # MADDPG's critic, AC's V, DQN's Q
    gamma: float = 0.99
    batch_size: int = 64  # joint transitions (MADDPG, DQN)
    episodes: int = 5000
    # [ours] as AMARL's where it has the knob (policies/train/amarl.py)
    hidden: int = 64
    dropout: float = 0.0
    buffer_size: int = 20_000  # joint transitions (MADDPG, DQN)
    warmup_episodes: int = 10  # MADDPG: uniform random actions, no updates
    updates_per_step: int = 1
    update_every: int = 4  # slots between rounds of updates (MADDPG, DQN)
    time_limit_bootstrap: bool = True
    critic_grad_clip: float = 10.0
    actor_grad_clip: float = 0.5
    # MADDPG [spec 4; openai/maddpg]
    tau: float = 0.01
    gumbel_tau: float = 1.0
    action_reg: float = 1e-3
    # Actor-Critic [spec 4]
    ac_batch: int = 64  # agent transitions per on-policy update
    ac_entropy: float = 0.01  # [ours] (0.5, AMARL's lambda', collapses as well: docs/papers/gmel.md)
    # DQN [spec 4]
    eps_start: float = 1.0
    eps_end: float = 0.01
    eps_decay_fraction: float = 0.5  # of ``episodes``: 2500 of 5000
    target_every: int = 200  # updates between hard target copies
    checkpoint_every: int = 25
    torch_threads: int = 1


class Counter:
    """An integer that checkpoints like a module (DQN's update count for its target copies)."""

    def __init__(self):
        self.n = 0

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = int(state["n"])


# -- MADDPG --------------------------------------------------------------------------------------------
class JointCritic(nn.Module):
    """Q_i(o_i, a_i, o_1..o_I, a_1..a_I) for every agent i: (B, I, D), (B, I, A) -> (B, I).

    One MLP shared by the agents. Its first layer is evaluated in two parts that add up to the layer on
    the concatenated input: the joint part (every agent's o and a, in agent order) once per sample, the
    own part (o_i, a_i) per agent. ``own_act`` (B, I, A): agent i's action replaced by ``own_act[:, i]``
    in its own Q_i only (the others' actions unchanged), MADDPG's actor objective for all i at once."""

    def __init__(self, agents: int, obs_dim: int, n_actions: int, hidden: int):
        super().__init__()
        self.I, self.D, self.A = agents, obs_dim, n_actions
        self.joint = nn.Linear(agents * (obs_dim + n_actions), hidden)
        self.own = nn.Linear(obs_dim + n_actions, hidden, bias=False)
        self.rest = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, obs: torch.Tensor, act: torch.Tensor, own_act: torch.Tensor | None = None) -> torch.Tensor:
        B, I, _ = obs.shape
        h = self.joint(torch.cat([obs.reshape(B, -1), act.reshape(B, -1)], dim=-1)).unsqueeze(1)  # (B, 1, H)
        mine = act
        if own_act is not None:  # the joint part changes only in agent i's action columns
            w = self.joint.weight[:, I * self.D:].T.reshape(I, self.A, -1)  # (I, A, H)
            h = h + torch.einsum("bia,iah->bih", own_act - act, w)
            mine = own_act
        h = h + self.own(torch.cat([obs, mine], dim=-1))
        return self.rest(h).squeeze(-1)


class MaddpgLearner:
    off_policy = True

    def __init__(self, cfg: Config, obs_dim: int, n_actions: int, agents: int):
        self.cfg, self.n = cfg, n_actions
        self.actor, self.actor_t = (Actor(obs_dim, n_actions, cfg.hidden, cfg.dropout) for _ in range(2))
        self.critic, self.critic_t = (JointCritic(agents, obs_dim, n_actions, cfg.hidden) for _ in range(2))
        self.actor_t.load_state_dict(self.actor.state_dict())
        self.critic_t.load_state_dict(self.critic.state_dict())
        self.actor_t.eval()
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr_actor)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr_critic)
        self.modules = {"actor": self.actor, "critic": self.critic, "actor_target": self.actor_t,
                        "critic_target": self.critic_t, "actor_opt": self.actor_opt, "critic_opt": self.critic_opt}
        self.policy_net = self.actor

    @torch.no_grad()
    def act(self, obs: torch.Tensor, has: torch.Tensor, episode: int) -> torch.Tensor:
        if episode < self.cfg.warmup_episodes:
            return torch.randint(0, self.n, has.shape)
        self.actor.eval()  # a hard Gumbel-softmax sample is a categorical sample of softmax(logits)
        return torch.distributions.Categorical(logits=self.actor(obs)).sample()

    def ready(self, episode: int, replay: common.EpisodeReplay) -> bool:
        return episode + 1 >= self.cfg.warmup_episodes and len(replay) >= self.cfg.batch_size

    @torch.no_grad()
    def target(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """y_i = r_i + gamma (1 - done) Q'_i(O', A'), a'_j a hard Gumbel-softmax sample of pi'_j(o'_j): (B, I)."""
        a_next = F.gumbel_softmax(self.actor_t(b["next_obs"]), tau=self.cfg.gumbel_tau, hard=True)
        a_next = a_next * b["next_has"].unsqueeze(-1)
        return b["rew"] + self.cfg.gamma * (1.0 - b["done"]).unsqueeze(-1) * self.critic_t(b["next_obs"], a_next)

    def update(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg, n = self.cfg, self.n
        obs, has = b["obs"], b["has"]
        act = one_hot(b["act"], has, n)
        y = self.target(b)
        critic_loss = (self.critic(obs, act) - y).pow(2).mean()
        self.critic_opt.zero_grad()
        critic_loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.critic_grad_clip)
        self.critic_opt.step()
        self.actor.train()
        logits = self.actor(obs)
        mine = F.gumbel_softmax(logits, tau=cfg.gumbel_tau, hard=True) * has.unsqueeze(-1)  # straight-through
        q = self.critic(obs, act, own_act=mine)
        actor_loss = -(q * has).sum() / has.sum().clamp(min=1.0) + cfg.action_reg * logits.pow(2).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.actor_grad_clip)
        self.actor_opt.step()
        common.soft_update(self.actor_t, self.actor, cfg.tau)
        common.soft_update(self.critic_t, self.critic, cfg.tau)
        with torch.no_grad():
            logp = torch.log_softmax(logits, -1)
            ent = -(logp.exp() * logp).sum(-1)
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(),
                "entropy": float((ent * has).sum() / has.sum().clamp(min=1.0))}

    def end_episode(self, episode: dict, np_rng: np.random.Generator) -> list[dict]:
        return []


# -- Actor-Critic ----------------------------------------------------------------------------------------
class ActorCriticLearner:
    """Independent one-step advantage actor-critic, on-policy (updates after each episode)."""

    off_policy = False

    def __init__(self, cfg: Config, obs_dim: int, n_actions: int, agents: int):
        self.cfg = cfg
        self.actor = Actor(obs_dim, n_actions, cfg.hidden, cfg.dropout)
        self.value = mlp(obs_dim, 1, cfg.hidden, 2)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr_actor)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.lr_critic)
        self.modules = {"actor": self.actor, "value": self.value, "actor_opt": self.actor_opt,
                        "value_opt": self.value_opt}
        self.policy_net = self.actor

    @torch.no_grad()
    def act(self, obs: torch.Tensor, has: torch.Tensor, episode: int) -> torch.Tensor:
        self.actor.eval()
        return torch.distributions.Categorical(logits=self.actor(obs)).sample()

    def ready(self, episode: int, replay) -> bool:
        return False

    @staticmethod
    def agent_transitions(ep: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """An episode's (T, I) joint rows as T x I agent transitions (o, a, has, r, o', live); o' is the agent's
        next-slot observation, the last slot's own (time-limit bootstrap) or masked by live = 1 - done."""
        T, I, D = ep["obs"].shape
        nxt = np.minimum(np.arange(T) + 1, T - 1)
        return {"obs": torch.from_numpy(ep["obs"].reshape(T * I, D)),
                "next_obs": torch.from_numpy(np.ascontiguousarray(ep["obs"][nxt]).reshape(T * I, D)),
                "act": torch.from_numpy(ep["act"].reshape(-1)).long(), "has": torch.from_numpy(ep["has"].reshape(-1)),
                "rew": torch.from_numpy(ep["rew"].reshape(-1)),
                "live": torch.from_numpy(np.repeat(1.0 - ep["done"], I).astype(np.float32))}

    def end_episode(self, ep: dict[str, np.ndarray], np_rng: np.random.Generator) -> list[dict]:
        cfg = self.cfg
        tr = self.agent_transitions(ep)
        obs, nobs, act, has, rew, live = (tr[k] for k in ("obs", "next_obs", "act", "has", "rew", "live"))
        order = np_rng.permutation(len(rew))
        out = []
        self.actor.train()
        for k in range(0, len(rew), cfg.ac_batch):
            i = torch.from_numpy(order[k:k + cfg.ac_batch])
            v = self.value(obs[i]).squeeze(-1)
            with torch.no_grad():  # delta = r + gamma V(o') - V(o)
                target = rew[i] + cfg.gamma * live[i] * self.value(nobs[i]).squeeze(-1)
            delta = target - v
            value_loss = delta.pow(2).mean()
            self.value_opt.zero_grad()
            value_loss.backward()
            nn.utils.clip_grad_norm_(self.value.parameters(), cfg.critic_grad_clip)
            self.value_opt.step()
            logp = torch.log_softmax(self.actor(obs[i]), dim=-1)
            ent = -(logp.exp() * logp).sum(-1)
            h = has[i]
            pg = -(logp.gather(-1, act[i].unsqueeze(-1)).squeeze(-1) * delta.detach() + cfg.ac_entropy * ent)
            actor_loss = (pg * h).sum() / h.sum().clamp(min=1.0)
            self.actor_opt.zero_grad()
            actor_loss.backward()
            nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.actor_grad_clip)
            self.actor_opt.step()
            out.append({"critic_loss": value_loss.item(), "actor_loss": actor_loss.item(),
                        "entropy": float((ent.detach() * h).sum() / h.sum().clamp(min=1.0))})
        return out


# -- DQN -------------------------------------------------------------------------------------------------
class DqnLearner:
    off_policy = True

    def __init__(self, cfg: Config, obs_dim: int, n_actions: int, agents: int):
        self.cfg, self.n = cfg, n_actions
        self.q, self.q_t = (mlp(obs_dim, n_actions, cfg.hidden, 2, cfg.dropout) for _ in range(2))
        self.q_t.load_state_dict(self.q.state_dict())
        self.q_t.eval()
        self.opt = torch.optim.Adam(self.q.parameters(), lr=cfg.lr_critic)
        self.steps = Counter()
        self.modules = {"q": self.q, "q_target": self.q_t, "opt": self.opt, "steps": self.steps}
        self.policy_net = self.q

    def epsilon(self, episode: int) -> float:
        c = self.cfg
        frac = min(1.0, episode / max(1.0, c.eps_decay_fraction * c.episodes))
        return c.eps_start + (c.eps_end - c.eps_start) * frac

    @torch.no_grad()
    def act(self, obs: torch.Tensor, has: torch.Tensor, episode: int) -> torch.Tensor:
        self.q.eval()
        greedy = self.q(obs).argmax(-1)
        explore = torch.rand(has.shape) < self.epsilon(episode)
        return torch.where(explore, torch.randint(0, self.n, has.shape), greedy)

    def ready(self, episode: int, replay: common.EpisodeReplay) -> bool:
        return len(replay) >= self.cfg.batch_size

    @torch.no_grad()
    def target(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """y = r + gamma (1 - done) max_a Q'(o', a); Q'(o', 0) for an agent without a task next slot (its
        action is ignored, stored as 0): (B, I)."""
        q_next = self.q_t(b["next_obs"])
        v_next = torch.where(b["next_has"] > 0, q_next.max(-1).values, q_next[..., 0])
        return b["rew"] + self.cfg.gamma * (1.0 - b["done"]).unsqueeze(-1) * v_next

    def update(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.cfg
        y = self.target(b)
        self.q.train()
        q = self.q(b["obs"]).gather(-1, b["act"].long().unsqueeze(-1)).squeeze(-1)
        loss = (q - y).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.q.parameters(), cfg.critic_grad_clip)
        self.opt.step()
        self.steps.n += 1
        if self.steps.n % cfg.target_every == 0:
            self.q_t.load_state_dict(self.q.state_dict())
        return {"critic_loss": loss.item()}

    def end_episode(self, episode: dict, np_rng: np.random.Generator) -> list[dict]:
        return []


LEARNERS = {"maddpg": MaddpgLearner, "ac": ActorCriticLearner, "dqn": DqnLearner}


def _learner_class(method: str):
    if method not in LEARNERS:
        raise UserError(f"--set method={method!r}: expected one of {', '.join(METHODS)}")
    return LEARNERS[method]


def train(algo: str, sim, preset_name: str, cfg: Config, seed: int, out: Path, command: list[str],
          progress: bool | None = None) -> dict:
    """Train (or resume) the baseline ``cfg.method`` into ``out``; returns the last episode's metrics row."""
    return run_training(algo, sim, preset_name, cfg, seed, out, command, progress, _learner_class(cfg.method))


def load_policy(name: str, run_dir: Path, sim, resolved: dict, ckpt: dict) -> TrainedPolicy:
    check_run_fits(run_dir, sim, resolved)
    c = resolved["config"]
    D, A = resolved["obs_dim"], resolved["n_actions"]
    if c["method"] == "dqn":
        net = mlp(D, A, c["hidden"], 2, c["dropout"])
        net.load_state_dict(ckpt["q"])
    else:
        net = Actor(D, A, c["hidden"], c["dropout"])
        net.load_state_dict(ckpt["actor"])
    return TrainedPolicy(name, sim, net)
