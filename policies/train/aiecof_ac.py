"""Actor-critic baselines of AIECOF Table IV (paper 002, Sec. V-C; spec docs/papers/aiecof.md section 4):
AC [39] (one-step actor-critic) and A2C [32] (synchronous advantage actor-critic), one file.

The paper only names these baselines; the details are the spec's [ours]. As for TOPPO and the DQN family,
one network is shared by all devices, each acting on its own observation ``sim.observation(view)`` in the
slots where it has a task; a device's decisions form its trajectory (gamma per decision of the device) and
its last decision of the episode is terminal. No LSTM (that is TOPPO's addition).

- AC (``n_step = 1``): separate actor and critic MLPs (128-128 ReLU); delta = r + gamma V(s') - V(s);
  critic loss delta^2, actor loss -log pi(a|s) delta (delta held fixed); one update of each on every 64
  completed transitions, Adam lr 1e-3.
- A2C (``n_step = 5``, ``shared_trunk``, ``entropy_coef = 0.01``): each device is one of the synchronous
  workers; its decisions are cut into segments of 5 whose targets are the 5-step returns
  R_k = r_k + gamma r_{k+1} + ... + gamma^(5-k) V(s_{k+5}) (bootstrapped from the device's next decision, 0
  after its last); loss = -log pi(a|s) (R - V(s)) + value_coef (R - V(s))^2 - entropy_coef H(pi(.|s)),
  value_coef 0.5, on a 128-128 trunk shared by the policy and value heads (Mnih et al. 2016), one update
  on every 64 transitions of closed segments.
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

from policies.scenarios.base import OffloadDecision
from policies.train import common
from policies.train.toppo import TRAIN_WORKLOAD_STREAM, check_compatible
from policies.workload import episode_rng


@dataclass
class Config:
    n_step: int = 1  # 1: one-step AC; 5: A2C
    shared_trunk: bool = False  # A2C: policy and value heads on one trunk, one optimizer
    lr_actor: float = 1e-3
    lr_critic: float = 1e-3  # separate networks; with a shared trunk the one optimizer uses lr_actor
    gamma: float = 0.9
    entropy_coef: float = 0.0
    value_coef: float = 0.5  # shared trunk: weight of the value loss in the joint loss
    batch_size: int = 64  # transitions per update (each used once)
    hidden: int = 128
    max_grad_norm: float = 0.5
    team_reward: bool = False  # [ours] train on the slot's mean reward over the deciding devices, not r_{m,t}
    eval_sample: bool = True  # a trained run acts by sampling pi (as it was trained); False: argmax pi
    episodes: int = 200
    checkpoint_every: int = 25
    torch_threads: int = 1


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))


class ActorCritic(nn.Module):
    """pi(.|s) logits and V(s): two MLPs, or one trunk with two heads (``shared``)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 128, shared: bool = False):
        super().__init__()
        self.shared = shared
        if shared:
            self.trunk = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
            self.pi_head, self.v_head = nn.Linear(hidden, n_actions), nn.Linear(hidden, 1)
        else:
            self.actor, self.critic = mlp(obs_dim, n_actions, hidden), mlp(obs_dim, 1, hidden)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shared:
            z = self.trunk(obs)
            return self.pi_head(z), self.v_head(z)[..., 0]
        return self.actor(obs), self.critic(obs)[..., 0]

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        return self.pi_head(self.trunk(obs)) if self.shared else self.actor(obs)


class _Logits(nn.Module):
    def __init__(self, net: ActorCritic):
        super().__init__()
        self.net = net

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net.logits(obs)


def segment_targets(rewards: np.ndarray, gamma: float, bootstrap: bool) -> tuple[np.ndarray, np.ndarray]:
    """One device's segment r_0..r_{k-1}: (g_i, d_i) with g_i = sum_{j >= i} gamma^(j - i) r_j and d_i the
    discount of the bootstrap value V(s_k): gamma^(k - i), or 0 if the segment ends the episode. The
    n-step target of decision i is R_i = g_i + d_i V(s_k)."""
    k = len(rewards)
    g = np.zeros(k, dtype=np.float64)
    acc = 0.0
    for i in range(k - 1, -1, -1):
        acc = rewards[i] + gamma * acc
        g[i] = acc
    d = gamma ** (k - np.arange(k)) if bootstrap else np.zeros(k)
    return g, d


class Segments:
    """Per device, its open segment of at most ``n`` decisions; a segment is closed by the device's next
    decision after n (bootstrapping from its observation) or by the end of the episode (no bootstrap)."""

    def __init__(self, agents: int, n: int, gamma: float):
        self.n, self.gamma = n, gamma
        self.open: list[list] = [[] for _ in range(agents)]

    def reset(self) -> None:
        for s in self.open:
            s.clear()

    def _close(self, seg: list, boot_obs: np.ndarray | None, out: list) -> None:
        g, d = segment_targets(np.array([x[2] for x in seg]), self.gamma, boot_obs is not None)
        boot = boot_obs if boot_obs is not None else np.zeros_like(seg[0][0])
        for (o, a, _), gi, di in zip(seg, g, d):
            out.append((o, a, gi, di, boot))
        seg.clear()

    def step(self, agents: np.ndarray, obs: np.ndarray, act: np.ndarray, rew: np.ndarray) -> list:
        out: list = []
        for i, m in enumerate(agents):
            seg = self.open[int(m)]
            if len(seg) == self.n:
                self._close(seg, obs[i], out)
            seg.append((obs[i], int(act[i]), float(rew[i])))
        return out

    def flush(self) -> list:
        out: list = []
        for seg in self.open:
            if seg:
                self._close(seg, None, out)
        return out


def train(algo: str, sim, preset_name: str, cfg: Config, seed: int, out: Path, command: list[str],
          progress: bool | None = None) -> dict:
    """Train (or resume) into ``out``; returns the last episode's metrics row."""
    obs_dim, n_act = sim.obs_dim(), sim.N + 1
    resolved, ckpt = common.start_run(algo, sim, preset_name, cfg, seed, out, command, obs_dim=obs_dim,
                                      act_dim=n_act, num_agents=sim.M)
    common.seed_everything(seed)
    torch.set_num_threads(cfg.torch_threads)
    np_rng = np.random.default_rng(seed)
    net = ActorCritic(obs_dim, n_act, cfg.hidden, cfg.shared_trunk)
    if cfg.shared_trunk:
        opts = [torch.optim.Adam(net.parameters(), lr=cfg.lr_actor)]
    else:
        opts = [torch.optim.Adam(net.actor.parameters(), lr=cfg.lr_actor),
                torch.optim.Adam(net.critic.parameters(), lr=cfg.lr_critic)]
    start, global_step = 0, 0
    if ckpt is not None:
        net.load_state_dict(ckpt["net"])
        for o, s in zip(opts, ckpt["opts"]):
            o.load_state_dict(s)
        common.set_rng_state(ckpt["rng"], np_rng)
        start, global_step = int(ckpt["episode"]), int(ckpt["global_step"])

    def checkpoint(episode: int) -> None:
        common.save_checkpoint(out, {"resolved": resolved, "episode": episode, "global_step": global_step,
                                     "net": net.state_dict(), "opts": [o.state_dict() for o in opts],
                                     "rng": common.rng_state(np_rng)})

    def update(batch: list) -> tuple[float, float]:
        obs = torch.from_numpy(np.stack([x[0] for x in batch]))
        act = torch.tensor([x[1] for x in batch])
        g = torch.tensor([x[2] for x in batch], dtype=torch.float32)
        d = torch.tensor([x[3] for x in batch], dtype=torch.float32)
        boot = torch.from_numpy(np.stack([x[4] for x in batch]))
        logits, v = net(obs)
        with torch.no_grad():
            target = g + d * net(boot)[1]  # n-step target; n = 1: r + gamma V(s') (0 after the last decision)
        adv = (target - v).detach()  # the TD error delta (AC) / the n-step advantage (A2C)
        dist = torch.distributions.Categorical(logits=logits)
        actor_loss = -(dist.log_prob(act) * adv).mean() - cfg.entropy_coef * dist.entropy().mean()
        critic_loss = (target - v).pow(2).mean()
        for o in opts:
            o.zero_grad()
        if cfg.shared_trunk:
            (actor_loss + cfg.value_coef * critic_loss).backward()
        else:
            (actor_loss + critic_loss).backward()  # disjoint parameters: each optimizer sees its own loss
        nn.utils.clip_grad_norm_(net.parameters() if cfg.shared_trunk else net.actor.parameters(), cfg.max_grad_norm)
        if not cfg.shared_trunk:
            nn.utils.clip_grad_norm_(net.critic.parameters(), cfg.max_grad_norm)
        for o in opts:
            o.step()
        return critic_loss.item(), actor_loss.item()

    fields = ["episode", "global_step", "reward", "latency_s", "energy_episode_j", "drop_rate", "load",
              "local_share", "critic_loss", "actor_loss", "episode_s"]
    log = common.MetricsLog(out / common.METRICS, fields, start)
    segments = Segments(sim.M, cfg.n_step, cfg.gamma)
    row: dict = {}
    bar = tqdm(total=cfg.episodes, initial=start, desc=f"train {algo}", unit="ep", disable=progress is False,
               dynamic_ncols=True, file=sys.stderr)
    try:
        for episode in range(start, cfg.episodes):
            t0 = time.perf_counter()
            sim.reset(sim.generate_workload(episode_rng(seed, episode, TRAIN_WORKLOAD_STREAM), episode))
            segments.reset()
            ready: list = []  # transitions of closed segments, not yet used
            losses = []
            while not sim.done:
                view, rows = sim.view(), sim.rows()
                if view.n == 0:
                    sim.step(OffloadDecision(target=np.zeros(0, dtype=np.int64)))
                    global_step += 1
                    if sim.done:  # the episode ends on a slot without tasks: the devices' open segments end here
                        ready += segments.flush()
                        while len(ready) >= cfg.batch_size:
                            losses.append(update(ready[:cfg.batch_size]))
                            ready = ready[cfg.batch_size:]
                    continue
                obs = sim.observation(view)
                with torch.no_grad():
                    a = torch.distributions.Categorical(logits=net.logits(torch.from_numpy(obs))).sample()
                a = a.numpy().astype(np.int64)
                sim.step(OffloadDecision(target=a))
                rew = sim.reward[rows].astype(np.float32)
                if cfg.team_reward:
                    rew = np.full_like(rew, rew.mean())
                ready += segments.step(view.source, obs, a, rew)
                if sim.done:
                    ready += segments.flush()
                global_step += 1
                while len(ready) >= cfg.batch_size:  # on-policy: every transition is used once
                    losses.append(update(ready[:cfg.batch_size]))
                    ready = ready[cfg.batch_size:]
            if ready:  # the episode's remainder: a smaller last batch
                losses.append(update(ready))
            m = sim.episode_metrics()
            row = {"episode": episode, "global_step": global_step, "reward": m["reward"], "latency_s": m["latency_s"],
                   "energy_episode_j": m["energy_episode_j"], "drop_rate": m["drop_rate"], "load": m["load"],
                   "local_share": m["local_share"],
                   "critic_loss": float(np.mean([c for c, _ in losses])) if losses else float("nan"),
                   "actor_loss": float(np.mean([x for _, x in losses])) if losses else float("nan"),
                   "episode_s": time.perf_counter() - t0}
            log.write(row)
            bar.set_postfix_str(f"reward={m['reward']:.1f} lat={m['latency_s']:.3f}s drop={m['drop_rate']:.3f}",
                                refresh=False)
            bar.update(1)
            if (episode + 1) % cfg.checkpoint_every == 0 or episode + 1 == cfg.episodes:
                checkpoint(episode + 1)
    finally:
        bar.close()
        log.close()
    return row


def load_policy(name: str, run_dir: Path, sim, resolved: dict, ckpt: dict):
    """The run's actor, sampling a ~ pi(.|s) with the episode's policy RNG (default, see toppo.TrainedPolicy)
    or acting greedily (argmax pi, spec 1.13) with ``eval_sample = False``."""
    check_compatible(run_dir, sim, resolved)
    cfg = resolved["config"]
    net = ActorCritic(resolved["obs_dim"], resolved["act_dim"], cfg["hidden"], cfg["shared_trunk"])
    net.load_state_dict(ckpt["net"])
    cls = common.SampledTargetPolicy if cfg.get("eval_sample", True) else common.ArgmaxTargetPolicy
    return cls(name, sim, resolved, _Logits(net))
