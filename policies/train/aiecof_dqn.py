"""Value-based baselines of AIECOF Table IV (paper 002, Sec. V-C; spec docs/papers/aiecof.md section 4):
DQN [35], Double DQN [36], Dueling DQN [37] and D3QN [38] (dueling + double), one file with two flags.

The paper only names these baselines; every detail is the spec's [ours], following Tang & Wong's DQN
for MEC task offloading (the lineage of the AIECOF queue model): one Q-network shared by all devices
(parameter sharing, like TOPPO's shared actor), each device acting epsilon-greedily on its own
observation ``sim.observation(view)`` in the slots where it has a task; the device's next decision is
its next state s' (gamma per decision of the device), and its last decision of the episode is terminal.

- Network: MLP 128-128 ReLU -> N + 1 Q values; dueling: the same trunk, then a value head and an
  advantage head (64 hidden each), Q = V + A - mean_a A (Wang et al. eq. 9).
- Target: y = r + gamma (1 - done) Q_target(s', argmax_a Q_target(s', a)) (DQN), or
  y = r + gamma (1 - done) Q_target(s', argmax_a Q_online(s', a)) (Double DQN, van Hasselt et al.).
- Replay 10,000 transitions, batch 64, Adam lr 1e-3, Huber loss, gamma 0.9, hard target update every
  200 gradient steps, one gradient step per slot in which at least one transition completed,
  epsilon 1.0 -> 0.05 linearly over the first 50 episodes, 200 episodes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from policies.scenarios.base import OffloadDecision
from policies.train import common
from policies.train.toppo import TRAIN_WORKLOAD_STREAM, check_compatible
from policies.workload import episode_rng


@dataclass
class Config:
    double: bool = False  # Double DQN target
    dueling: bool = False  # dueling architecture
    lr: float = 1e-3
    gamma: float = 0.9
    batch_size: int = 64
    buffer_size: int = 10_000
    learning_starts: int = 64  # transitions in the replay before the first update
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_decay_episodes: int = 50
    target_update_every: int = 200  # gradient steps between hard target updates
    hidden: int = 128
    head_hidden: int = 64  # dueling heads
    max_grad_norm: float = 10.0
    team_reward: bool = False  # [ours] train on the slot's mean reward over the deciding devices, not r_{m,t}
    episodes: int = 200
    checkpoint_every: int = 25
    torch_threads: int = 1


class QNet(nn.Module):
    """obs (B, d) -> Q (B, A). Dueling: Q = V + A - mean_a A over a shared trunk."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 128, dueling: bool = False, head_hidden: int = 64):
        super().__init__()
        self.dueling = dueling
        self.trunk = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        if dueling:
            self.value = nn.Sequential(nn.Linear(hidden, head_hidden), nn.ReLU(), nn.Linear(head_hidden, 1))
            self.advantage = nn.Sequential(nn.Linear(hidden, head_hidden), nn.ReLU(), nn.Linear(head_hidden, n_actions))
        else:
            self.head = nn.Linear(hidden, n_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        z = self.trunk(obs)
        if not self.dueling:
            return self.head(z)
        return dueling_combine(self.value(z), self.advantage(z))


def dueling_combine(value: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a') (Wang et al. 2016, eq. 9)."""
    return value + advantage - advantage.mean(dim=-1, keepdim=True)


def td_target(rew: torch.Tensor, done: torch.Tensor, q_next_target: torch.Tensor, gamma: float,
              q_next_online: torch.Tensor | None = None) -> torch.Tensor:
    """y = r + gamma (1 - done) Q_target(s', a*), a* = argmax Q_target(s', .) (DQN) or, given the online
    network's Q(s', .), a* = argmax Q_online(s', .) (Double DQN)."""
    chooser = q_next_target if q_next_online is None else q_next_online
    a_star = chooser.argmax(dim=-1, keepdim=True)
    return rew + gamma * (1.0 - done) * q_next_target.gather(-1, a_star).squeeze(-1)


def epsilon(cfg: Config, episode: int) -> float:
    frac = min(1.0, episode / max(1, cfg.eps_decay_episodes))
    return cfg.eps_start + (cfg.eps_end - cfg.eps_start) * frac


def train(algo: str, sim, preset_name: str, cfg: Config, seed: int, out: Path, command: list[str],
          progress: bool | None = None) -> dict:
    """Train (or resume) into ``out``; returns the last episode's metrics row."""
    obs_dim, n_act = sim.obs_dim(), sim.N + 1
    resolved, ckpt = common.start_run(algo, sim, preset_name, cfg, seed, out, command, obs_dim=obs_dim,
                                      act_dim=n_act, num_agents=sim.M)
    common.seed_everything(seed)
    torch.set_num_threads(cfg.torch_threads)
    np_rng = np.random.default_rng(seed)  # exploration and replay sampling
    q = QNet(obs_dim, n_act, cfg.hidden, cfg.dueling, cfg.head_hidden)
    q_target = QNet(obs_dim, n_act, cfg.hidden, cfg.dueling, cfg.head_hidden)
    q_target.load_state_dict(q.state_dict())
    opt = torch.optim.Adam(q.parameters(), lr=cfg.lr)
    buffer = common.ReplayBuffer(cfg.buffer_size, {"obs": (obs_dim,), "act": (), "rew": (), "next_obs": (obs_dim,),
                                                   "done": ()})
    start, global_step, updates = 0, 0, 0
    if ckpt is not None:
        for mod, key in ((q, "q"), (q_target, "q_target"), (opt, "opt")):
            mod.load_state_dict(ckpt[key])
        buffer.load_state_dict(ckpt["buffer"])
        common.set_rng_state(ckpt["rng"], np_rng)
        start, global_step, updates = int(ckpt["episode"]), int(ckpt["global_step"]), int(ckpt["updates"])

    def checkpoint(episode: int) -> None:
        common.save_checkpoint(out, {"resolved": resolved, "episode": episode, "global_step": global_step,
                                     "updates": updates, "q": q.state_dict(), "q_target": q_target.state_dict(),
                                     "opt": opt.state_dict(), "buffer": buffer.state_dict(),
                                     "rng": common.rng_state(np_rng)})

    def update() -> float:
        nonlocal updates
        b = buffer.sample(np_rng, cfg.batch_size)
        with torch.no_grad():
            y = td_target(b["rew"], b["done"], q_target(b["next_obs"]), cfg.gamma,
                          q(b["next_obs"]) if cfg.double else None)
        q_sa = q(b["obs"]).gather(-1, b["act"].long().unsqueeze(-1)).squeeze(-1)
        loss = F.smooth_l1_loss(q_sa, y)  # Huber
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(q.parameters(), cfg.max_grad_norm)
        opt.step()
        updates += 1
        if updates % cfg.target_update_every == 0:
            q_target.load_state_dict(q.state_dict())
        return loss.item()

    def store(tr: dict) -> int:
        for i in range(tr["act"].size):
            buffer.add(obs=tr["obs"][i], act=tr["act"][i], rew=tr["rew"][i], next_obs=tr["next_obs"][i],
                       done=tr["done"][i])
        return int(tr["act"].size)

    fields = ["episode", "global_step", "reward", "latency_s", "energy_episode_j", "drop_rate", "load",
              "local_share", "critic_loss", "epsilon", "episode_s"]
    log = common.MetricsLog(out / common.METRICS, fields, start)
    pending = common.PendingTransitions(sim.M, obs_dim)
    row: dict = {}
    bar = tqdm(total=cfg.episodes, initial=start, desc=f"train {algo}", unit="ep", disable=progress is False,
               dynamic_ncols=True, file=sys.stderr)
    try:
        for episode in range(start, cfg.episodes):
            t0 = time.perf_counter()
            eps = epsilon(cfg, episode)
            sim.reset(sim.generate_workload(episode_rng(seed, episode, TRAIN_WORKLOAD_STREAM), episode))
            pending.reset()
            losses = []
            while not sim.done:
                view, rows = sim.view(), sim.rows()
                if view.n == 0:
                    sim.step(OffloadDecision(target=np.zeros(0, dtype=np.int64)))
                    global_step += 1
                    if sim.done:  # the episode ends on a slot without tasks: the devices' last decisions end here
                        if store(pending.flush()) and len(buffer) >= max(cfg.learning_starts, cfg.batch_size):
                            losses.append(update())
                    continue
                obs = sim.observation(view)
                with torch.no_grad():
                    a = q(torch.from_numpy(obs)).argmax(-1).numpy().astype(np.int64)
                explore = np_rng.random(view.n) < eps
                a[explore] = np_rng.integers(0, n_act, size=int(explore.sum()))
                sim.step(OffloadDecision(target=a))
                rew = sim.reward[rows].astype(np.float32)
                if cfg.team_reward:
                    rew = np.full_like(rew, rew.mean())
                new = store(pending.step(view.source, obs, a, rew))
                if sim.done:
                    new += store(pending.flush())
                global_step += 1
                if new and len(buffer) >= max(cfg.learning_starts, cfg.batch_size):
                    losses.append(update())
            m = sim.episode_metrics()
            row = {"episode": episode, "global_step": global_step, "reward": m["reward"], "latency_s": m["latency_s"],
                   "energy_episode_j": m["energy_episode_j"], "drop_rate": m["drop_rate"], "load": m["load"],
                   "local_share": m["local_share"], "critic_loss": float(np.mean(losses)) if losses else float("nan"),
                   "epsilon": eps, "episode_s": time.perf_counter() - t0}
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
    """The run's Q-network acting greedily (argmax Q, spec 1.13)."""
    check_compatible(run_dir, sim, resolved)
    cfg = resolved["config"]
    q = QNet(resolved["obs_dim"], resolved["act_dim"], cfg["hidden"], cfg["dueling"], cfg["head_hidden"])
    q.load_state_dict(ckpt["q"])
    return common.ArgmaxTargetPolicy(name, sim, resolved, q)
