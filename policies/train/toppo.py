"""TOPPO (paper 002, AIECOF, Sec. IV-B, eqs. 32-37, Algorithm 1; spec docs/papers/aiecof.md section 5).

PPO with an LSTM layer in the policy network (ActorLSTM) and in the value network (CriticLSTM), the
clipped surrogate objective (eq. 36) and generalized advantage estimation (eq. 35), CleanRL style:
read top to bottom, every choice a :class:`Config` field.

Agents (spec 3): one shared actor and one shared critic act for every intelligent device (InDe) on its own
observation ``sim.observation(view)`` (the shared observation contract, 5 + 2N columns); a device acts
only in the slots where it has a task, so its trajectory is the sequence of its own decisions and gamma
applies per decision of the device. All devices' transitions go to one batch.

Networks (Sec. IV-B: "an LSTM layer in the first layer of both the policy and value network ... the
features of the last time step are concatenated with the current state s_t ... two fully connected
layers"; complexity: "one LSTM layer and three fully connected layers"): LSTM(obs -> 64), then
[lstm_out, s_t] -> FC 128 -> ReLU -> FC 128 -> ReLU -> FC out (9 logits or 1 value) [sizes ours].
The paper feeds "a sequence of historical states"; we run the LSTM recurrently over the device's
decision sequence since the episode start, carrying its state (h, c) from one decision to the next, so
``ActorLSTM.forward(obs, h, c) -> (logits, h', c')`` is one step with the LSTM state as explicit inputs
and outputs (exportable to ONNX as is; the gateway keeps (h, c) per device). Training back-propagates
through time over chunks of ``seq_len`` = H = 8 consecutive decisions of a device (spec 3: H = 8),
starting from the LSTM state stored when the chunk was collected (truncated BPTT with stored state).

Update schedule [ours, spec 5]: Algorithm 1 updates after every device step; we collect one episode
(~1800 device decisions at M = 30), then ``epochs`` = 4 passes of minibatches of ``batch_size`` = 64
transitions (paper Fig. 3b), i.e. batch_size / seq_len chunks. Critic (eqs. 32-34): squared error to the
GAE return V_hat = A_t + V_old(s_t) (= the paper's r_t + gamma V(s_{t+1}) at lambda = 0); actor (eqs.
36-37): clipped surrogate, plus an entropy bonus [ours]; separate Adam optimizers with lr1 (actor) and lr2
(critic), both 1e-3 [paper Fig. 3a]; gamma 0.9 [paper Fig. 3c]; GAE lambda 0.95, eps 0.2 [ours].
The value after a device's last decision of the episode is 0 (the episode, T slots, is the horizon of
the paper's objective, eq. 26).
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
from policies.scenarios.base import OffloadDecision, OffloadView, Policy
from policies.train import common
from policies.workload import episode_rng

TRAIN_WORKLOAD_STREAM = 3  # episode_rng stream of training workloads (evaluation draws stream 0)


@dataclass
class Config:
    # [paper] Sec. V-B, Fig. 3
    lr_actor: float = 1e-3  # lr1, alpha of eq. 37
    lr_critic: float = 1e-3  # lr2, beta of eq. 34
    batch_size: int = 64  # transitions per minibatch
    gamma: float = 0.9
    # [ours] spec section 5
    gae_lambda: float = 0.95
    clip_eps: float = 0.2  # epsilon of eq. 36
    epochs: int = 4  # passes over each episode's batch
    entropy_coef: float = 0.01
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True  # per minibatch
    lstm_hidden: int = 64
    hidden: int = 128  # two fully connected layers of this width
    seq_len: int = 8  # H: decisions per BPTT chunk
    team_reward: bool = False  # [ours] train on the slot's mean reward over the deciding devices, not r_{m,t}
    eval_sample: bool = True  # a trained run acts by sampling pi (Algorithm 1 line 8); False: argmax pi
    episodes: int = 200  # e_max
    checkpoint_every: int = 25  # episodes
    torch_threads: int = 1


# -- networks ------------------------------------------------------------------------------------
class _LSTMHead(nn.Module):
    """LSTM(obs) -> [lstm_out, obs] -> FC hidden -> ReLU -> FC hidden -> ReLU -> FC out."""

    def __init__(self, obs_dim: int, out_dim: int, lstm_hidden: int, hidden: int, out_gain: float):
        super().__init__()
        self.lstm_hidden = lstm_hidden
        self.lstm = nn.LSTM(obs_dim, lstm_hidden, batch_first=True)
        self.fc = nn.Sequential(nn.Linear(lstm_hidden + obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                nn.ReLU(), nn.Linear(hidden, out_dim))
        with torch.no_grad():  # [ours] CleanRL's PPO init of the output layer (small actor logits: ~uniform start)
            nn.init.orthogonal_(self.fc[-1].weight, out_gain)
            self.fc[-1].bias.zero_()

    def step(self, obs: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """One decision per row: obs (B, d), h and c (B, H) -> (out (B, k), h', c')."""
        y, (h2, c2) = self.lstm(obs.unsqueeze(1), (h.unsqueeze(0), c.unsqueeze(0)))
        return self.fc(torch.cat([y[:, 0], obs], dim=-1)), h2[0], c2[0]

    def sequence(self, obs: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        """Chunks of consecutive decisions: obs (B, L, d) from states (B, H) -> out (B, L, k)."""
        y, _ = self.lstm(obs, (h0.unsqueeze(0), c0.unsqueeze(0)))
        return self.fc(torch.cat([y, obs], dim=-1))

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.zeros(batch, self.lstm_hidden)
        return z, z.clone()


class ActorLSTM(_LSTMHead):
    """pi_theta(a | history, s_t): ``forward(obs, h, c) -> (logits, h', c')`` over the N + 1 targets."""

    def __init__(self, obs_dim: int, n_actions: int, lstm_hidden: int = 64, hidden: int = 128):
        super().__init__(obs_dim, n_actions, lstm_hidden, hidden, out_gain=0.01)

    def forward(self, obs: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        return self.step(obs, h, c)


class CriticLSTM(_LSTMHead):
    """V_phi(history, s_t): ``forward(obs, h, c) -> (value (B,), h', c')``."""

    def __init__(self, obs_dim: int, lstm_hidden: int = 64, hidden: int = 128):
        super().__init__(obs_dim, 1, lstm_hidden, hidden, out_gain=1.0)

    def forward(self, obs: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        v, h2, c2 = self.step(obs, h, c)
        return v[:, 0], h2, c2


# -- the algorithm's pieces (unit-tested on hand-made batches) -------------------------------------
def gae(rewards: np.ndarray, values: np.ndarray, last: np.ndarray, gamma: float, lam: float
        ) -> tuple[np.ndarray, np.ndarray]:
    """Eqs. 32 and 35 over sequences laid end to end: ``last[i]`` marks the final decision of a sequence
    (its next value is 0, the end of the episode). delta_t = r_t + gamma V(s_{t+1}) - V(s_t),
    A_t = sum_l (gamma lambda)^l delta_{t+l} within the sequence. Returns (advantages, returns = A + V)."""
    n = len(rewards)
    adv = np.zeros(n, dtype=np.float64)
    running = 0.0
    for i in range(n - 1, -1, -1):
        cont = 0.0 if last[i] else 1.0
        next_v = values[i + 1] * cont if i + 1 < n else 0.0
        delta = rewards[i] + gamma * next_v - values[i]
        running = delta + gamma * lam * cont * running
        adv[i] = running
    return adv, adv + np.asarray(values, dtype=np.float64)


def gae_per_device(rewards: np.ndarray, values: np.ndarray, device: np.ndarray, gamma: float, lam: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`gae` over each device's own decisions, for decisions in time order with the devices interleaved
    (an episode's batch is slot by slot, ~18 devices per slot at M = 30): a stable sort by device lays every
    device's sequence end to end in time order, :func:`gae` runs there, and the results go back to the batch's
    order. Without it a device's advantage would bootstrap from, and sum, the other devices' next decisions."""
    order = np.argsort(np.asarray(device), kind="stable")
    dev = np.asarray(device)[order]
    last = np.ones(dev.size, dtype=bool)
    last[:-1] = dev[1:] != dev[:-1]  # a device's final decision ends its run in the sorted order
    adv_sorted, _ = gae(np.asarray(rewards)[order], np.asarray(values)[order], last, gamma, lam)
    adv = np.empty_like(adv_sorted)
    adv[order] = adv_sorted
    return adv, adv + np.asarray(values, dtype=np.float64)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, eps: float,
                      mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 36 as a loss to minimise: -E[min(r A, clip(r, 1 - eps, 1 + eps) A)], r = pi / pi_old.
    Returns (loss, fraction of samples where the clip is active)."""
    ratio = torch.exp(logp - old_logp)
    surr = torch.minimum(ratio * adv, ratio.clamp(1.0 - eps, 1.0 + eps) * adv)
    clipped = ((ratio - 1.0).abs() > eps).to(surr.dtype)
    if mask is None:
        return -surr.mean(), clipped.mean()
    w = mask.to(surr.dtype)
    return -(surr * w).sum() / w.sum(), (clipped * w).sum() / w.sum()


def chunk_sequences(device: np.ndarray, seq_len: int) -> list[np.ndarray]:
    """Indices (into the episode's decisions, in time order) of every device's decisions, cut into chunks
    of at most ``seq_len`` consecutive decisions of that device."""
    order = np.argsort(device, kind="stable")  # by device, time order kept
    bounds = np.flatnonzero(np.diff(device[order])) + 1
    chunks = []
    for seq in np.split(order, bounds):
        chunks += [seq[i:i + seq_len] for i in range(0, seq.size, seq_len)]
    return chunks


# -- training ------------------------------------------------------------------------------------
def train(algo: str, sim, preset_name: str, cfg: Config, seed: int, out: Path, command: list[str],
          progress: bool | None = None) -> dict:
    """Train (or resume) into ``out``; returns the last episode's metrics row."""
    M, N, T = sim.M, sim.N, sim.T
    obs_dim, n_act = sim.obs_dim(), N + 1
    if cfg.seq_len < 1 or cfg.batch_size < 1 or cfg.epochs < 1:
        raise UserError("seq_len, batch_size and epochs must be at least 1")
    resolved, ckpt = common.start_run(algo, sim, preset_name, cfg, seed, out, command, obs_dim=obs_dim,
                                      act_dim=n_act, num_agents=M)

    common.seed_everything(seed)
    torch.set_num_threads(cfg.torch_threads)
    np_rng = np.random.default_rng(seed)  # minibatch shuffling
    actor = ActorLSTM(obs_dim, n_act, cfg.lstm_hidden, cfg.hidden)
    critic = CriticLSTM(obs_dim, cfg.lstm_hidden, cfg.hidden)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.lr_actor, eps=1e-5)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr_critic, eps=1e-5)
    start, global_step = 0, 0
    if ckpt is not None:
        for mod, key in ((actor, "actor"), (critic, "critic"), (actor_opt, "actor_opt"), (critic_opt, "critic_opt")):
            mod.load_state_dict(ckpt[key])
        common.set_rng_state(ckpt["rng"], np_rng)
        start, global_step = int(ckpt["episode"]), int(ckpt["global_step"])

    def checkpoint(episode: int) -> None:
        common.save_checkpoint(out, {
            "resolved": resolved, "episode": episode, "global_step": global_step, "actor": actor.state_dict(),
            "critic": critic.state_dict(), "actor_opt": actor_opt.state_dict(),
            "critic_opt": critic_opt.state_dict(), "rng": common.rng_state(np_rng)})

    def rollout(episode: int) -> dict:
        """Algorithm 1 lines 3-10: one episode with sampled actions; every device decision with the LSTM
        states it was taken from."""
        sim.reset(sim.generate_workload(episode_rng(seed, episode, TRAIN_WORKLOAD_STREAM), episode))
        ha, ca = actor.initial_state(M)
        hv, cv = critic.initial_state(M)
        rec: dict[str, list] = {k: [] for k in ("dev", "obs", "act", "logp", "val", "rew", "ha", "ca", "hv", "cv")}
        with torch.no_grad():
            while not sim.done:
                view = sim.view()
                rows = sim.rows()
                dev = torch.from_numpy(view.source)
                if view.n == 0:
                    sim.step(OffloadDecision(target=np.zeros(0, dtype=np.int64)))
                    continue
                obs = torch.from_numpy(sim.observation(view))
                logits, ha2, ca2 = actor(obs, ha[dev], ca[dev])
                dist = torch.distributions.Categorical(logits=logits)
                a = dist.sample()
                v, hv2, cv2 = critic(obs, hv[dev], cv[dev])
                for k, x in (("dev", dev), ("obs", obs), ("act", a), ("logp", dist.log_prob(a)), ("val", v),
                             ("ha", ha[dev]), ("ca", ca[dev]), ("hv", hv[dev]), ("cv", cv[dev])):
                    rec[k].append(x)
                ha[dev], ca[dev], hv[dev], cv[dev] = ha2, ca2, hv2, cv2
                sim.step(OffloadDecision(target=a.numpy().astype(np.int64)))
                rew = sim.reward[rows].astype(np.float32)  # eq. 30, immediate
                if cfg.team_reward:
                    rew = np.full_like(rew, rew.mean())
                rec["rew"].append(torch.from_numpy(rew))
        return {k: torch.cat(v) for k, v in rec.items()}

    def update(b: dict) -> dict:
        """Algorithm 1 lines 11-18 on the episode's decisions: GAE per device sequence, then ``epochs``
        passes of clipped-surrogate (actor) and squared-error (critic) minibatch steps on BPTT chunks."""
        dev = b["dev"].numpy()
        adv, ret = gae_per_device(b["rew"].numpy(), b["val"].numpy(), dev, cfg.gamma, cfg.gae_lambda)
        adv_t, ret_t = torch.from_numpy(adv).float(), torch.from_numpy(ret).float()
        chunks = chunk_sequences(dev, cfg.seq_len)
        L = cfg.seq_len
        idx = np.zeros((len(chunks), L), dtype=np.int64)
        mask = np.zeros((len(chunks), L), dtype=bool)
        for i, ch in enumerate(chunks):
            idx[i, :ch.size], mask[i, :ch.size] = ch, True
        idx_t, mask_t = torch.from_numpy(idx), torch.from_numpy(mask)
        first = idx_t[:, 0]  # the chunk's first decision: its stored LSTM states start the chunk
        per_mb = max(1, cfg.batch_size // L)
        stats = {"actor_loss": [], "critic_loss": [], "entropy": [], "clipfrac": [], "approx_kl": []}
        for _ in range(cfg.epochs):
            perm = np_rng.permutation(len(chunks))
            for s in range(0, len(chunks), per_mb):
                mb = torch.from_numpy(perm[s:s + per_mb])
                ix, m = idx_t[mb], mask_t[mb]
                obs = b["obs"][ix]  # (C, L, d); padded steps repeat decision 0 and are masked out
                logits = actor.sequence(obs, b["ha"][first[mb]], b["ca"][first[mb]])
                dist = torch.distributions.Categorical(logits=logits)
                logp = dist.log_prob(b["act"][ix])
                a_mb = adv_t[ix]
                if cfg.normalize_advantage:
                    sel = a_mb[m]
                    a_mb = (a_mb - sel.mean()) / (sel.std(unbiased=False) + 1e-8)
                pg_loss, clipfrac = clipped_surrogate(logp, b["logp"][ix], a_mb, cfg.clip_eps, m)
                ent = (dist.entropy() * m).sum() / m.sum()
                actor_loss = pg_loss - cfg.entropy_coef * ent
                actor_opt.zero_grad()
                actor_loss.backward()
                nn.utils.clip_grad_norm_(actor.parameters(), cfg.max_grad_norm)
                actor_opt.step()
                v = critic.sequence(obs, b["hv"][first[mb]], b["cv"][first[mb]])[..., 0]
                critic_loss = ((v - ret_t[ix]).pow(2) * m).sum() / m.sum()  # eq. 33
                critic_opt.zero_grad()
                critic_loss.backward()
                nn.utils.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
                critic_opt.step()
                with torch.no_grad():
                    log_ratio = (logp - b["logp"][ix])[m]
                    stats["approx_kl"].append(float(((log_ratio.exp() - 1) - log_ratio).mean()))
                stats["actor_loss"].append(pg_loss.item())
                stats["critic_loss"].append(critic_loss.item())
                stats["entropy"].append(ent.item())
                stats["clipfrac"].append(clipfrac.item())
        return {k: float(np.mean(v)) for k, v in stats.items()}

    fields = ["episode", "global_step", "reward", "latency_s", "energy_episode_j", "drop_rate", "load",
              "local_share", "critic_loss", "actor_loss", "entropy", "clipfrac", "approx_kl", "episode_s"]
    log = common.MetricsLog(out / common.METRICS, fields, start)
    row: dict = {}
    bar = tqdm(total=cfg.episodes, initial=start, desc=f"train {algo}", unit="ep", disable=progress is False,
               dynamic_ncols=True, file=sys.stderr)
    try:
        for episode in range(start, cfg.episodes):
            t0 = time.perf_counter()
            batch = rollout(episode)
            m = sim.episode_metrics()
            global_step += T
            st = update(batch)
            row = {"episode": episode, "global_step": global_step, "reward": m["reward"],
                   "latency_s": m["latency_s"], "energy_episode_j": m["energy_episode_j"],
                   "drop_rate": m["drop_rate"], "load": m["load"], "local_share": m["local_share"], **st,
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


# -- a trained run as a policy ---------------------------------------------------------------------
class TrainedPolicy(Policy):
    """The run's ActorLSTM acting on ``sim.observation(view)``: sampling a ~ pi(.|s) with the episode's policy
    RNG (Algorithm 1 line 8; reproducible), or argmax pi with ``eval_sample = False`` (spec 1.13's greedy
    actions). The LSTM state of every device is carried from its previous decision and zeroed at each
    episode's reset. [ours] Sampling is the default: eq. 30 rewards a randomised mix of local and offloaded
    tasks (sigma_E grows with the spread of a device's task energies), so the argmax of a policy trained on
    it can be far worse than the policy itself (docs/papers/aiecof.md, "Learners")."""

    def __init__(self, name: str, sim, resolved: dict, actor_state: dict):
        self.name = name
        self.sim = sim
        self.resolved = resolved
        cfg = resolved["config"]
        self.actor = ActorLSTM(resolved["obs_dim"], resolved["act_dim"], cfg["lstm_hidden"], cfg["hidden"])
        self.actor.load_state_dict(actor_state)
        self.actor.eval()
        self.h, self.c = self.actor.initial_state(sim.M)
        self.sample = bool(cfg.get("eval_sample", True))

    def reset(self, rng: np.random.Generator, oracle=None) -> None:
        super().reset(rng, oracle)
        self.h, self.c = self.actor.initial_state(self.sim.M)

    def decide(self, view: OffloadView) -> OffloadDecision:
        if view.n == 0:
            return OffloadDecision(target=np.zeros(0, dtype=np.int64))
        dev = torch.from_numpy(np.asarray(view.source, dtype=np.int64))
        obs = torch.from_numpy(self.sim.observation(view))
        with torch.no_grad():
            logits, h, c = self.actor(obs, self.h[dev], self.c[dev])
        self.h[dev], self.c[dev] = h, c
        if self.sample:
            return OffloadDecision(target=common.sample_rows(torch.softmax(logits.double(), -1).numpy(), self.rng))
        return OffloadDecision(target=logits.argmax(-1).numpy().astype(np.int64))


def check_compatible(run_dir: Path, sim, resolved: dict) -> None:
    """A run acts in any aiecof preset with the same observation and action layout (parameter sharing:
    the number of devices may differ from training)."""
    if sim.name != resolved["scenario"] or sim.obs_dim() != resolved["obs_dim"] or sim.N + 1 != resolved["act_dim"]:
        raise UserError(f"run '{run_dir}' was trained on {resolved['scenario']} with {resolved['act_dim'] - 1} edge "
                        f"servers and {resolved['obs_dim']} observation columns; it cannot act in scenario "
                        f"'{sim.name}' with {getattr(sim, 'N', '?')} edge servers")


def load_policy(name: str, run_dir: Path, sim, resolved: dict, ckpt: dict) -> TrainedPolicy:
    check_compatible(run_dir, sim, resolved)
    return TrainedPolicy(name, sim, resolved, ckpt["actor"])
