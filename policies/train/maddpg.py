"""MADDPG-MATO (paper 000, section III-B; spec docs/papers/mato.md section 5), CleanRL style.

One actor per ED (edge device) reads only its own observation o_m (``sim.observation(view)``, the
shared observation contract) and outputs the MATO action (eq. 17): target-ES logits (xi, sampled with
a straight-through Gumbel-softmax while training, argmax when acting), the offload share eta
(sigmoid) and the download flag beta (sigmoid, download iff >= 0.5). Action vector per agent:
[one-hot xi (N), eta, beta] (eta stretched so that 0 = local and 1 are reachable), the same layout as ``MatoEnv``'s Box action.

One critic per ED: centralized Q_m(s, a_1..a_M) over every agent's observation and action (MADDPG),
or, with ``centralized_critic = False``, Q_m(o_m, a_m) on its own (SADDPG: independent DDPG per agent,
trained on each ED's own reward term).

The same file serves three registered algorithms (policies/train/registry.py):
``maddpg`` (model-aware, team reward), ``maddpg_nomodel`` (preset ``model_aware: false``) and
``saddpg`` (``reward_mode: individual``, independent critics).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from policies.config import preset_hash
from policies.errors import UserError
from policies.scenarios.base import OffloadDecision, OffloadView, Policy
from policies.train import common
from policies.workload import episode_rng

ETA_STRETCH = 1.1
TRAIN_WORKLOAD_STREAM = 3  # episode_rng stream of training workloads (evaluation draws stream 0)


@dataclass
class Config:
    # [P] MATO section IV-A
    lr_actor: float = 1e-3
    lr_critic: float = 1e-3
    gamma: float = 0.95
    tau: float = 0.01
    buffer_size: int = 10_000
    batch_size: int = 1024
    # [ours] spec section 5
    episodes: int = 2000
    hidden: int = 64  # 2 hidden layers of this width, actor and critic
    max_grad_norm: float = 0.5
    learning_starts: int = 1024  # joint transitions in the buffer before the first update
    updates_per_step: int = 1
    gumbel_tau: float = 1.0
    noise_start: float = 0.3  # Gaussian noise on the eta/beta pre-sigmoid outputs ...
    noise_end: float = 0.02
    noise_decay_fraction: float = 0.6  # ... decaying linearly over this fraction of the episodes
    reward_scale: float = 0.1  # [ours] critic targets use r * scale (team r_t is ~ -40 per step)
    centralized_critic: bool = True  # False: SADDPG
    checkpoint_every: int = 25  # episodes
    torch_threads: int = 1  # small nets: extra threads only add overhead on 2 cores


# -- networks ------------------------------------------------------------------------------------
class Actors(torch.nn.Module):
    """M actors v_m(o_m): obs (M, B, obs) -> action (M, B, N + 2) = [one-hot xi, eta, beta]."""

    def __init__(self, agents: int, obs_dim: int, servers: int, hidden: int):
        super().__init__()
        self.servers = servers
        self.net = common.AgentMLP(agents, obs_dim, servers + 2, (hidden, hidden))

    def forward(self, obs: torch.Tensor, gumbel_tau: float | None = None, noise: float = 0.0) -> torch.Tensor:
        out = self.net(obs)
        logits, pre = out[..., : self.servers], out[..., self.servers:]
        if gumbel_tau is None:
            xi = F.one_hot(logits.argmax(-1), self.servers).to(out.dtype)
        else:
            xi = F.gumbel_softmax(logits, tau=gumbel_tau, hard=True)
        if noise > 0:
            pre = pre + noise * torch.randn_like(pre)
        squashed = torch.sigmoid(pre)
        # [ours] eta = clip(1.1 sigmoid - 0.05, 0, 1): eta = 0 (run locally) and eta = 1 (full offload)
        # are reachable, as with MatoEnv's clipped Box action; beta stays a plain sigmoid
        eta = (ETA_STRETCH * squashed[..., :1] - (ETA_STRETCH - 1) / 2).clamp(0.0, 1.0)
        return torch.cat([xi, eta, squashed[..., 1:]], dim=-1)


def critic_input(obs: torch.Tensor, act: torch.Tensor, centralized: bool) -> torch.Tensor:
    """obs (B, M, o), act (B, M, a) or per-critic joint actions (M, B, M, a) -> (M, B, critic_in)."""
    B, M = obs.shape[:2]
    if act.dim() == 3:
        act = act.unsqueeze(0).expand(M, B, M, act.shape[-1])
    if centralized:  # Q_m(s, a_1..a_M): every agent's observation and action
        s = obs.reshape(1, B, -1).expand(M, B, -1)
        return torch.cat([s, act.reshape(M, B, -1)], dim=-1)
    own = torch.arange(M)
    return torch.cat([obs.transpose(0, 1), act[own, :, own]], dim=-1)  # Q_m(o_m, a_m)


def to_decision(action: np.ndarray, view: OffloadView) -> OffloadDecision:
    """Actions (M, N + 2) -> MATO decision, as ``MatoEnv.decision``: xi = argmax, eta = 0 means local."""
    N = action.shape[1] - 2
    eta = np.clip(action[:, N].astype(np.float64), 0.0, 1.0)
    target = np.where(eta > 0, 1 + np.argmax(action[:, :N], axis=1), 0)
    download = (action[:, N + 1] >= 0.5) if view.has_download else None
    return OffloadDecision(target=target.astype(np.int64), share=eta, download=download)


# -- training ------------------------------------------------------------------------------------
def train(algo: str, sim, preset_name: str, cfg: Config, seed: int, out: Path, command: list[str],
          progress: bool | None = None) -> dict:
    """Train (or resume) into ``out``; returns the last episode's metrics row."""
    M, N, T = sim.M, sim.N, sim.T
    obs_dim, act_dim = sim.obs_dim(), N + 2
    out.mkdir(parents=True, exist_ok=True)
    resolved = {"algo": algo, "seed": seed, "scenario": sim.name, "preset_name": preset_name,
                "preset": sim.preset.model_dump(mode="json"), "preset_hash": preset_hash(sim.preset),
                "config": dataclasses.asdict(cfg), "command": command, "obs_dim": obs_dim, "act_dim": act_dim,
                "num_agents": M}
    ckpt = common.load_checkpoint(out)
    if ckpt is not None:
        old = ckpt["resolved"]
        for key in ("algo", "seed", "preset_hash"):
            if old[key] != resolved[key]:
                raise UserError(f"'{out}' holds a checkpoint of another run ({key} {old[key]!r}, asked "
                                f"{resolved[key]!r}); choose a new --out directory")
        resolved["command_history"] = old.get("command_history", [old["command"]]) + [command]
    common.save_json(out / common.CONFIG, resolved)

    common.seed_everything(seed)
    torch.set_num_threads(cfg.torch_threads)
    np_rng = np.random.default_rng(seed)  # replay sampling
    actor = Actors(M, obs_dim, N, cfg.hidden)
    critic_in = M * (obs_dim + act_dim) if cfg.centralized_critic else obs_dim + act_dim
    critic = common.AgentMLP(M, critic_in, 1, (cfg.hidden, cfg.hidden))
    actor_t, critic_t = Actors(M, obs_dim, N, cfg.hidden), common.AgentMLP(M, critic_in, 1, (cfg.hidden, cfg.hidden))
    actor_t.load_state_dict(actor.state_dict())
    critic_t.load_state_dict(critic.state_dict())
    actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.lr_actor)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr_critic)
    buffer = common.ReplayBuffer(cfg.buffer_size, {"obs": (M, obs_dim), "act": (M, act_dim), "rew": (M,),
                                                   "next_obs": (M, obs_dim)})
    start, global_step = 0, 0
    if ckpt is not None:
        for mod, key in ((actor, "actor"), (critic, "critic"), (actor_t, "actor_target"),
                         (critic_t, "critic_target"), (actor_opt, "actor_opt"), (critic_opt, "critic_opt")):
            mod.load_state_dict(ckpt[key])
        buffer.load_state_dict(ckpt["buffer"])
        common.set_rng_state(ckpt["rng"], np_rng)
        start, global_step = int(ckpt["episode"]), int(ckpt["global_step"])

    def checkpoint(episode: int) -> None:
        common.save_checkpoint(out, {
            "resolved": resolved, "episode": episode, "global_step": global_step,
            "actor": actor.state_dict(), "critic": critic.state_dict(), "actor_target": actor_t.state_dict(),
            "critic_target": critic_t.state_dict(), "actor_opt": actor_opt.state_dict(),
            "critic_opt": critic_opt.state_dict(), "buffer": buffer.state_dict(), "rng": common.rng_state(np_rng)})

    def update() -> tuple[float, float]:
        b = buffer.sample(np_rng, cfg.batch_size)
        obs, act, rew, nobs = b["obs"], b["act"], b["rew"], b["next_obs"]
        with torch.no_grad():  # eq. 19: y = r + gamma Q'_m(s', a'_1..a'_M), a'_j = v'_j(o'_j)
            next_act = actor_t(nobs.transpose(0, 1)).transpose(0, 1)
            y = cfg.reward_scale * rew.T.unsqueeze(-1) + cfg.gamma * critic_t(
                critic_input(nobs, next_act, cfg.centralized_critic))
        q = critic(critic_input(obs, act, cfg.centralized_critic))
        critic_loss = (q - y).pow(2).mean(dim=(1, 2)).sum()  # eq. 20, summed over the independent critics
        critic_opt.zero_grad()
        critic_loss.backward()
        common.clip_grad_norm_per_agent(critic, cfg.max_grad_norm)
        critic_opt.step()
        # eq. 21: agent m's own action from its actor, the others' from the buffer
        cur = actor(obs.transpose(0, 1), gumbel_tau=cfg.gumbel_tau)  # (M, B, a)
        own = torch.eye(M, dtype=torch.bool).view(M, 1, M, 1)
        joint = torch.where(own, cur.unsqueeze(2), act.unsqueeze(0))  # (M, B, M, a)
        actor_loss = -critic(critic_input(obs, joint, cfg.centralized_critic)).mean(dim=(1, 2)).sum()
        actor_opt.zero_grad()
        actor_loss.backward()
        common.clip_grad_norm_per_agent(actor, cfg.max_grad_norm)
        actor_opt.step()
        common.soft_update(actor_t, actor, cfg.tau)  # eqs. 22-23
        common.soft_update(critic_t, critic, cfg.tau)
        return critic_loss.item() / M, actor_loss.item() / M

    fields = ["episode", "global_step", "reward", "latency_s", "energy_j", "completion_rate", "failed_rate",
              "offload_rate", "critic_loss", "actor_loss", "noise", "episode_s"]
    log = common.MetricsLog(out / common.METRICS, fields, start)
    individual = sim.preset.reward_mode == "individual"
    row: dict = {}
    bar = tqdm(total=cfg.episodes, initial=start, desc=f"train {algo}", unit="ep", disable=progress is False,
               dynamic_ncols=True, file=sys.stderr)
    try:
        for episode in range(start, cfg.episodes):
            t0 = time.perf_counter()
            frac = min(1.0, episode / max(1.0, cfg.noise_decay_fraction * cfg.episodes))
            noise = cfg.noise_start + (cfg.noise_end - cfg.noise_start) * frac
            sim.reset(sim.generate_workload(episode_rng(seed, episode, TRAIN_WORKLOAD_STREAM), episode))
            obs = sim.observation(sim.view())
            losses = []
            for t in range(T):
                with torch.no_grad():
                    a = actor(torch.from_numpy(obs).unsqueeze(1), gumbel_tau=cfg.gumbel_tau, noise=noise)[:, 0]
                a = a.numpy()
                sim.step(to_decision(a, sim.view()))
                per_agent = -sim.task_cost[t]
                rew = per_agent if individual else np.full(M, per_agent.sum())
                # at the time limit there is no next task: bootstrap (truncation, spec 5) from the last
                # observation as a stand-in state of the same distribution [ours]
                next_obs = obs if sim.done else sim.observation(sim.view())
                buffer.add(obs=obs, act=a, rew=rew, next_obs=next_obs)
                obs = next_obs
                global_step += 1
                if len(buffer) >= max(cfg.learning_starts, 1):
                    for _ in range(cfg.updates_per_step):
                        losses.append(update())
            m = sim.episode_metrics()
            row = {"episode": episode, "global_step": global_step, "reward": m["reward"],
                   "latency_s": m["latency_s"], "energy_j": m["energy_j"], "completion_rate": m["completion_rate"],
                   "failed_rate": m["failed_rate"], "offload_rate": m["offload_rate"],
                   "critic_loss": float(np.mean([c for c, _ in losses])) if losses else float("nan"),
                   "actor_loss": float(np.mean([x for _, x in losses])) if losses else float("nan"),
                   "noise": noise, "episode_s": time.perf_counter() - t0}
            log.write(row)
            bar.set_postfix_str(f"reward={m['reward']:.2f} lat={m['latency_s']:.2f}s "
                                f"done={m['completion_rate']:.2%}", refresh=False)
            bar.update(1)
            if (episode + 1) % cfg.checkpoint_every == 0 or episode + 1 == cfg.episodes:
                checkpoint(episode + 1)
    finally:
        bar.close()
        log.close()
    return row


# -- a trained run as a policy ---------------------------------------------------------------------
class TrainedPolicy(Policy):
    """The run's actors acting deterministically (argmax xi, no noise) on ``sim.observation(view)``."""

    def __init__(self, name: str, sim, resolved: dict, actor_state: dict):
        self.name = name
        self.sim = sim
        self.resolved = resolved
        cfg = resolved["config"]
        self.actor = Actors(resolved["num_agents"], resolved["obs_dim"], resolved["act_dim"] - 2, cfg["hidden"])
        self.actor.load_state_dict(actor_state)
        self.actor.eval()

    def decide(self, view: OffloadView) -> OffloadDecision:
        obs = torch.from_numpy(self.sim.observation(view)).unsqueeze(1)
        with torch.no_grad():
            a = self.actor(obs)[:, 0].numpy()
        return to_decision(a, view)


def load_policy(name: str, run_dir: Path, sim, resolved: dict, ckpt: dict) -> TrainedPolicy:
    p = resolved["preset"]
    if sim.name != resolved["scenario"] or sim.M != resolved["num_agents"] or sim.obs_dim() != resolved["obs_dim"]:
        raise UserError(f"run '{run_dir}' was trained on {resolved['scenario']} with {resolved['num_agents']} "
                        f"agents; it cannot act in scenario '{sim.name}' with {getattr(sim, 'M', '?')} agents")
    if bool(sim.preset.model_aware) != bool(p["model_aware"]):
        raise UserError(f"run '{run_dir}' was trained with model_aware={str(p['model_aware']).lower()}; "
                        f"evaluate it with --set model_aware={str(p['model_aware']).lower()}")
    return TrainedPolicy(name, sim, resolved, ckpt["actor"])
