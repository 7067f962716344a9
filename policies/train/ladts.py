"""LAD-TS and its DRL baselines (paper 003: C. Xu et al., "Accelerating AIGC Services with Latent Action
Diffusion Scheduling in Edge Networks"; spec docs/papers/ladts.md sections 3-5), CleanRL style.

One file serves four registered algorithms (policies/train/registry.py), chosen by ``Config.method``:

- ``ladts``    LAD-TS (Sec. IV, Algorithm 1): discrete SAC with twin critics whose actor is a denoising
               (diffusion) chain of I steps (Theorem 2, eqs. 10-13) started from the LATENT action
               probability X[t][b][n] stored by the same slot, station and task index (the latent action
               diffusion strategy); the tuple carries the latent and its successor (Sec. IV-A).
- ``d2sac_ts`` D2SAC-TS (ref. [25]; spec 4.4): the same chain and losses, started from fresh N(0, I) noise.
- ``sac_ts``   SAC-TS (spec 4.3): the same discrete SAC with a plain softmax MLP actor pi(.|s).
- ``dqn_ts``   DQN-TS (spec 4.2): per-station DQN, epsilon-greedy (0.01), target copy every 200 updates.
(Opt-TS is the scenario's ``opt`` heuristic, policies/scenarios/ladts.py.)

Agents (spec 3.1): one independent agent per base station b (its own actor, twin critics, targets,
temperature alpha_b, replay pool R_b); no sharing, no communication. The B agents are stored as an
ensemble (``common.AgentMLP``: stacked weights, one batched matmul) and optimised by ``common.AgentAdam``
(one Adam step counter per agent), which is exactly B separate networks and optimizers, only vectorised.

The vectorisation and why it keeps the paper's semantics (spec 7.1): an agent observes eq. 6,
s = [d_n, w_n, q_{t-1}], which does NOT contain q^bef, so every decision of slot t depends only on
q_{t-1}, the task's own features and its latent entry. All tasks of all stations of a slot are therefore
decided in ONE batched forward pass; the simulator prices them exactly in the code's sequential order
(grouped exclusive cumsum of the work ahead, ``LadtsSimulator.step``). Agent b's update runs once per slot
(code: once per station per slot once |R_b| > 300, spec 2.4 item 11); doing all B updates after the slot
instead of right after station b's tasks changes nothing for agent b (its next decision is in slot t+1;
the agents share nothing), and lets the last tuple of each station carry the true q_t in s^next (spec 2.4
item 15 [fix]) before the update. Per episode: 59 batched forward passes and 59 batched updates instead of
~30,000 actor calls and 1,180 updates (the authors' code).

Where the paper and the authors' code differ we follow the spec's decision (code unless stated):
per-station agents acting sequentially; s^next of eq. 7 without done flag; the code's softmax
epsilon-network; Categorical sampling while training (eq. 8's argmax is ``eval_action = "argmax"``);
the standard discrete-SAC actor loss (eq. 15 is printed squared); std sqrt(beta~_i) (eq. 10 prints
beta~_i / 2). Switches for the other readings: ``latent_key``, ``latent_store``, ``code_latent_alias``,
``code_next_state_bug``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
METHODS = ("lad", "d2sac", "sac", "dqn")
LOG_EPS = 1e-8  # log(pi + 1e-8), as the code


@dataclass
class Config:
    method: str = "lad"  # lad (LAD-TS) | d2sac (D2SAC-TS) | sac (SAC-TS) | dqn (DQN-TS)
    # [P] Table IV / Sec. V-A and [C] main_lad.py
    episodes: int = 60  # E (paper Table IV; the code runs 500)
    hidden: int = 20  # two hidden layers of 20 (actor, critics, targets)
    denoising_steps: int = 5  # I
    beta_min: float = 0.1  # VP schedule (eq. 10), code 'vp'
    beta_max: float = 10.0
    time_dim: int = 16  # sinusoidal embedding of the step index (code)
    eps_softmax: bool = True  # [C] the epsilon-network ends with a softmax (spec 5.2); False: linear output
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    lr_alpha: float = 3e-4
    alpha: float = 0.05  # initial temperature alpha_b (Fig. 8b sweeps it)
    target_entropy: float = -1.0
    gamma: float = 0.95
    tau: float = 0.005
    batch_size: int = 64  # K
    buffer_size: int = 1000  # |R_b|, FIFO
    learning_starts: int = 300  # update agent b once |R_b| > this
    # [C] DQN-TS (Baselines/DQN-TS)
    dqn_lr: float = 1e-4
    dqn_epsilon: float = 0.01
    dqn_target_every: int = 200  # updates between hard target copies (copy before updates 0, 200, ...)
    # paper-vs-code switches (spec 2.4)
    latent_key: str = "slot_station_index"  # [C] X[t][b][n]; "station_index": the paper's X_b[n]
    latent_store: str = "probs"  # [C] store pi = softmax(x_0); "x0": the paper's x_0
    code_latent_alias: bool = False  # [C bug] the code's pool holds numpy VIEWS of the latent store, so a
    # sampled tuple carries the latents as they are when sampled (the act-time outputs); False: as read
    code_next_state_bug: bool = False  # [C bug] s^next of a station's last task has q = 0 (spec 2.4 item 15)
    sample_without_replacement: bool = True  # [C] random.sample
    # acting
    eval_action: str = "sample"  # sample (Categorical, as trained) | argmax (eq. 8) | deterministic (no noise, argmax)
    # [ours]
    # updates of every trained agent per slot (code: 1 per station per slot; the paper's Algorithm 1 updates per
    # task, ~25 per station per slot). 3: measured, seed 0, training delay / Opt-TS on the same workloads at
    # episodes 60-69: 1.108 (1), 1.067 (2), 1.051 (3); at 110-119 3 is at 1's level after 300 episodes (1.029 vs
    # 1.027), for 1.28 s of CPU per episode instead of 0.72 (61x faster than the authors' code's ~78 s);
    # docs/papers/ladts.md "updates per slot"
    updates_per_slot: int = 3
    critic_updates: int = 1  # critic (and target) steps per actor step, each on a fresh batch (code: 1)
    checkpoint_every: int = 10  # episodes
    torch_threads: int = 1


# -- the denoising chain (Theorem 2, eqs. 10-13) ---------------------------------------------------------
def vp_schedule(steps: int, beta_min: float = 0.1, beta_max: float = 10.0) -> dict[str, np.ndarray]:
    """The VP noise schedule of eq. 10, i = 1..I (float64 arrays indexed i - 1):

    beta_i = 1 - exp(-beta_min / I - (2i - 1) / (2 I^2) (beta_max - beta_min)), lambda_i = 1 - beta_i,
    lambdabar_i = prod_{m <= i} lambda_m (lambdabar_0 = 1), beta~_i = beta_i (1 - lambdabar_{i-1}) / (1 - lambdabar_i),
    and the posterior-mean coefficients of eq. 13 in the code's form (spec 5.1)."""
    I = int(steps)
    i = np.arange(1, I + 1, dtype=np.float64)
    beta = 1.0 - np.exp(-beta_min / I - (2 * i - 1) / (2 * I**2) * (beta_max - beta_min))
    lam = 1.0 - beta
    lbar = np.cumprod(lam)
    lbar_prev = np.concatenate([[1.0], lbar[:-1]])
    post_var = beta * (1.0 - lbar_prev) / (1.0 - lbar)
    std = np.exp(0.5 * np.log(np.clip(post_var, 1e-20, None)))
    std[0] = 0.0  # i = 1: x_0 = mu, no noise (the code's nonzero_mask)
    return {"beta": beta, "lambda": lam, "lambda_bar": lbar, "lambda_bar_prev": lbar_prev, "beta_tilde": post_var,
            "sqrt_recip_lbar": np.sqrt(1.0 / lbar), "sqrt_recipm1_lbar": np.sqrt(1.0 / lbar - 1.0),
            "coef1": beta * np.sqrt(lbar_prev) / (1.0 - lbar), "coef2": (1.0 - lbar_prev) * np.sqrt(lam) / (1.0 - lbar),
            "std": std}


def sinusoidal_embedding(k: np.ndarray | float, dim: int = 16) -> np.ndarray:
    """SinusEmb(k) of the code (spec 5.2): h = dim/2, e_j = exp(-j ln(10000) / (h - 1)), [sin(k e), cos(k e)]."""
    h = dim // 2
    e = np.exp(np.arange(h) * -(math.log(10000.0) / (h - 1)))
    arg = np.asarray(k, dtype=np.float64)[..., None] * e
    return np.concatenate([np.sin(arg), np.cos(arg)], axis=-1)


class DenoisingActor(nn.Module):
    """LADN of Fig. 4, one per agent (ensemble): pi(.|s, x_I) = softmax(x_0) by I reverse steps.

    forward(obs (A, n, 2+B), x_I (A, n, B), noise (A, n, I - 1, B)) -> (pi (A, n, B), x_0 (A, n, B)).
    For i = I..1 (noise slice k = I - i):
        eps = eps_theta(x_i, i, s)                         MLP([x_i, SinusEmb(i-1), s]) -> softmax (code)
        x0_hat = sqrt(1/lambdabar_i) x_i - sqrt(1/lambdabar_i - 1) eps        (eq. 11 inverted)
        x_{i-1} = coef1_i x0_hat + coef2_i x_i + sqrt(beta~_i) noise[k]       (eqs. 12-13, 10)
    Step i = 1 adds no noise (std 0), so noise has I - 1 slices (an I-th, if given, is not read). No Python-side
    randomness: the caller passes the noise (zeros for a deterministic chain) and, for LAD-TS, the stored latent
    as x_I (D2SAC-TS: N(0, I)).
    Gradients flow through all I steps (the noise is a reparameterised constant). The first layer's
    input is the concatenation [x_i, SinusEmb(i-1), s]; its s part is computed once per chain.

    What the start x_I means (derived from the schedule, not stated in the paper): the chain is linear in
    x_I with gain prod_k a_k = sqrt(1 / lambdabar_I) = 12.49 for every I (the VP schedule fixes lambdabar_I
    = 0.0064), while the softmax epsilon-network can move a logit by at most sum_k b_k prod_{m<k} a_m
    (12.5 / 15.3 / 17.5 / 20.3 for I = 1 / 3 / 5 / 10) and the injected noise has std 0 / 3.0 / 5.1 / 7.9.
    LAD-TS's stored probability vector (in the simplex) therefore adds at most 12.5 to the logit of the
    action it favoured: a memory the network can still override. D2SAC-TS's N(0, I) start adds logits of
    std 12.5, which the network can only partly override: it learns to bias a largely random draw
    (docs/papers/ladts.md, "As implemented: learners", has the measurements).
    """

    def __init__(self, agents: int, obs_dim: int, actions: int, hidden: int = 20, steps: int = 5,
                 beta_min: float = 0.1, beta_max: float = 10.0, time_dim: int = 16, eps_softmax: bool = True):
        super().__init__()
        self.actions, self.steps, self.time_dim, self.eps_softmax = actions, int(steps), time_dim, eps_softmax
        self.fc1 = common.AgentLinear(agents, actions + time_dim + obs_dim, hidden)
        self.fc2 = common.AgentLinear(agents, hidden, hidden)
        self.fc3 = common.AgentLinear(agents, hidden, actions)
        sch = vp_schedule(steps, beta_min, beta_max)
        # per step k = 0..I-1 (i = I - k), python floats (constants of an exported graph):
        # x_{i-1} = coef1 (sqrt(1/lbar) x - sqrt(1/lbar - 1) eps) + coef2 x + std z = a_k x - b_k eps + std_k z
        order = list(range(self.steps - 1, -1, -1))
        self.a = [float(sch["coef1"][j] * sch["sqrt_recip_lbar"][j] + sch["coef2"][j]) for j in order]
        self.b = [float(sch["coef1"][j] * sch["sqrt_recipm1_lbar"][j]) for j in order]
        self.std = [float(sch["std"][j]) for j in order]
        self.register_buffer("temb", torch.tensor(sinusoidal_embedding(np.array(order, dtype=np.float64), time_dim),
                                                  dtype=torch.float32))  # (I, time_dim): SinusEmb(i - 1)

    def forward(self, obs: torch.Tensor, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        A, T = self.actions, self.time_dim
        w = self.fc1.weight  # rows: [x_i (B) | SinusEmb (16) | s (2+B)]
        s_part = torch.baddbmm(self.fc1.bias, obs, w[:, A + T:, :])  # (agents, n, H), once per chain
        t_part = torch.matmul(self.temb, w[:, A:A + T, :])  # (agents, I, H)
        w_x = w[:, :A, :]
        for k in range(self.steps):
            h = F.relu(torch.baddbmm(s_part + t_part[:, k:k + 1, :], x, w_x))
            h = F.relu(self.fc2(h))
            eps = self.fc3(h)
            if self.eps_softmax:
                eps = F.softmax(eps, dim=-1)
            x = torch.add(self.a[k] * x, eps, alpha=-self.b[k])
            if self.std[k] > 0.0:
                x = x + self.std[k] * noise[:, :, k, :]
        return F.softmax(x, dim=-1), x


class SoftmaxActor(nn.Module):
    """SAC-TS actor (spec 4.3): pi(.|s) = softmax(MLP(s)), (2+B) -> 20 -> 20 -> B; same forward signature
    as :class:`DenoisingActor` (the latent and the noise are ignored)."""

    def __init__(self, agents: int, obs_dim: int, actions: int, hidden: int = 20):
        super().__init__()
        self.net = common.AgentMLP(agents, obs_dim, actions, (hidden, hidden))

    def forward(self, obs: torch.Tensor, x: torch.Tensor | None = None, noise: torch.Tensor | None = None):
        logits = self.net(obs)
        return F.softmax(logits, dim=-1), logits


def entropy(pi: torch.Tensor) -> torch.Tensor:
    """H = -sum_a pi log(pi + 1e-8) (the code's form)."""
    return -(pi * torch.log(pi + LOG_EPS)).sum(-1)


def final_lambda_bar(cfg: Config) -> float:
    """lambdabar_I of the configured chain."""
    return float(vp_schedule(cfg.denoising_steps, cfg.beta_min, cfg.beta_max)["lambda_bar"][-1])


# -- per-station replay pools ----------------------------------------------------------------------------
class StationReplay:
    """B FIFO pools R_b of ``capacity`` tuples, stored as (B, capacity, width) arrays. ``add`` writes a
    slot's tuples of every station at once (rows grouped by station, in decision order)."""

    def __init__(self, agents: int, capacity: int, widths: dict[str, int]):
        self.agents, self.capacity = agents, int(capacity)
        self.buf = np.zeros((agents, self.capacity, sum(widths.values())), dtype=np.float32)  # one gather per sample
        ends = np.cumsum(list(widths.values()))
        self.cols = {k: (int(e - w), int(e)) for (k, w), e in zip(widths.items(), ends)}
        self.data = {k: self.buf[:, :, a:b] for k, (a, b) in self.cols.items()}  # views of buf
        self.pos = np.zeros(agents, dtype=np.int64)
        self.size = np.zeros(agents, dtype=np.int64)

    def add(self, agent: np.ndarray, **fields: np.ndarray) -> None:
        counts = np.bincount(agent, minlength=self.agents)
        if counts.max(initial=0) > self.capacity:
            raise ValueError("more tuples of one station in a slot than the pool holds")
        rank = np.arange(agent.size) - (np.cumsum(counts) - counts)[agent]
        where = (self.pos[agent] + rank) % self.capacity
        for k, arr in self.data.items():
            arr[agent, where] = fields[k].reshape(agent.size, -1)
        self.pos = (self.pos + counts) % self.capacity
        self.size = np.minimum(self.size + counts, self.capacity)

    def sample(self, rng: np.random.Generator, batch: int, without_replacement: bool = True) -> dict[str, torch.Tensor]:
        """(B, batch) uniform indices per pool (a pool smaller than ``batch`` yields padding rows that the
        caller masks out)."""
        if without_replacement:  # random.sample: a uniform subset, via the smallest of uniform keys
            keys = rng.random((self.agents, self.capacity), dtype=np.float32)
            if self.size.min() < self.capacity:
                keys[np.arange(self.capacity)[None, :] >= self.size[:, None]] = 2.0
            idx = np.argpartition(keys, batch - 1, axis=1)[:, :batch]
        else:
            idx = (rng.random((self.agents, batch)) * np.maximum(self.size, 1)[:, None]).astype(np.int64)
        g = torch.from_numpy(self.buf[np.arange(self.agents)[:, None], idx])
        return {k: g[..., a:b] for k, (a, b) in self.cols.items()}

    def state_dict(self) -> dict:
        return {"pos": self.pos.copy(), "size": self.size.copy(), "data": {k: v.copy() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = np.asarray(state["pos"]).copy(), np.asarray(state["size"]).copy()
        for k, v in state["data"].items():
            self.data[k][...] = v


# -- the agents ------------------------------------------------------------------------------------------
class Agents:
    """The B per-station agents of one method: networks, optimizers, temperatures, latent store."""

    def __init__(self, cfg: Config, stations: int, obs_dim: int, slots: int, tasks_max: int):
        if cfg.method not in METHODS:
            raise UserError(f"--set method={cfg.method!r}: expected one of {', '.join(METHODS)}")
        if cfg.latent_key not in ("slot_station_index", "station_index"):
            raise UserError(f"--set latent_key={cfg.latent_key!r}: expected slot_station_index or station_index")
        if cfg.latent_store not in ("probs", "x0"):
            raise UserError(f"--set latent_store={cfg.latent_store!r}: expected probs or x0")
        if cfg.eval_action not in ("sample", "argmax", "deterministic"):
            raise UserError(f"--set eval_action={cfg.eval_action!r}: expected sample, argmax or deterministic")
        self.cfg, self.A, self.obs_dim, self.N = cfg, stations, obs_dim, tasks_max
        A, B, H = stations, stations, cfg.hidden
        self.diffusion = cfg.method in ("lad", "d2sac")
        if cfg.method == "dqn":
            self.qnet = common.AgentMLP(A, obs_dim, B, (H, H))
            self.qnet_t = common.AgentMLP(A, obs_dim, B, (H, H))
            self.qnet_t.load_state_dict(self.qnet.state_dict())
            self.q_opt = common.AgentAdam(self.qnet.parameters(), A, cfg.dqn_lr)
            self.updates = torch.zeros(A, dtype=torch.long)
        else:
            self.actor = (DenoisingActor(A, obs_dim, B, H, cfg.denoising_steps, cfg.beta_min, cfg.beta_max,
                                         cfg.time_dim, cfg.eps_softmax)
                          if self.diffusion else SoftmaxActor(A, obs_dim, B, H))
            # twin critics Q_1, Q_2 (and their targets) as one ensemble of 2B networks: rows [Q_1 of every
            # station, Q_2 of every station]; each critic has its own Adam state (element-wise), as the code
            self.critic = common.AgentMLP(2 * A, obs_dim, B, (H, H))
            self.critic_t = common.AgentMLP(2 * A, obs_dim, B, (H, H))
            self.critic_t.load_state_dict(self.critic.state_dict())
            self.log_alpha = torch.full((A,), math.log(cfg.alpha), requires_grad=True)
            self.actor_opt = common.AgentAdam(self.actor.parameters(), A, cfg.lr_actor)
            self.critic_opt = common.AgentAdam(self.critic.parameters(), 2 * A, cfg.lr_critic)
            self.alpha_opt = common.AgentAdam([self.log_alpha], A, cfg.lr_alpha)
        # the latent store (Sec. IV-A; spec 2.4 item 9), initialised N(0, 1) once (Algorithm 1, line 1)
        self.latent = None
        if cfg.method == "lad":
            shape = (slots, A, tasks_max, B) if cfg.latent_key == "slot_station_index" else (A, tasks_max, B)
            self.latent = torch.randn(shape)

    # -- state ------------------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        if self.cfg.method == "dqn":
            return {"qnet": self.qnet, "qnet_target": self.qnet_t}
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_t}

    def state_dict(self) -> dict:
        st = {k: m.state_dict() for k, m in self.modules().items()}
        if self.cfg.method == "dqn":
            st.update(q_opt=self.q_opt.state_dict(), updates=self.updates.clone())
        else:
            st.update(log_alpha=self.log_alpha.detach().clone(), actor_opt=self.actor_opt.state_dict(),
                      critic_opt=self.critic_opt.state_dict(), alpha_opt=self.alpha_opt.state_dict())
        if self.latent is not None:
            st["latent"] = self.latent.clone()
        return st

    def load_state_dict(self, st: dict, acting_only: bool = False) -> None:
        for k, m in self.modules().items():
            if k in st:
                m.load_state_dict(st[k])
        if self.latent is not None:
            self.latent.copy_(st["latent"])
        if acting_only:
            return
        if self.cfg.method == "dqn":
            self.q_opt.load_state_dict(st["q_opt"])
            self.updates.copy_(st["updates"])
        else:
            with torch.no_grad():
                self.log_alpha.copy_(st["log_alpha"])
            self.actor_opt.load_state_dict(st["actor_opt"])
            self.critic_opt.load_state_dict(st["critic_opt"])
            self.alpha_opt.load_state_dict(st["alpha_opt"])

    # -- acting -----------------------------------------------------------------------------------------
    def latent_rows(self, slot: int, src: np.ndarray, idx: np.ndarray):
        """Index of the latent entries of tasks (slot, src, idx) in the store."""
        if self.cfg.latent_key == "slot_station_index":
            return (slot, src, idx)
        return (src, idx)

    def latent_flat(self, slot: np.ndarray | int, src: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Flat position of latent entries (the code-alias pool stores these, spec of ``code_latent_alias``)."""
        if self.cfg.latent_key == "slot_station_index":
            return (np.asarray(slot) * self.A + src) * self.N + idx
        return src * self.N + idx

    @torch.no_grad()
    def act(self, obs: np.ndarray, src: np.ndarray, idx: np.ndarray, slot: int, mode: str,
            randn, rand) -> tuple[np.ndarray, torch.Tensor | None, torch.Tensor | None]:
        """Decide every task of a slot in one batched pass.

        obs (K, 2+B), rows grouped by station ``src`` with task index ``idx``. ``mode``: "sample"
        (Categorical(pi), the code), "argmax" (eq. 8), "deterministic" (zero chain noise, argmax),
        "epsilon" (DQN while training: argmax Q, a uniform action with probability epsilon), "greedy" (DQN).
        D2SAC-TS starts the chain from fresh N(0, I) (from 0 in the deterministic mode).
        ``randn(shape)`` / ``rand(shape)``: float32 tensors of standard normals / uniforms (the caller's
        RNG). Returns actions (K,), and for LAD-TS the latents read (x_I, K x B) and the outputs to store."""
        K, A = obs.shape[0], self.A
        n_pad = max(self.N, int(idx.max()) + 1)
        src_t, idx_t = torch.from_numpy(src), torch.from_numpy(idx)
        pad = torch.zeros(A, n_pad, self.obs_dim)
        pad[src_t, idx_t] = torch.from_numpy(obs)
        if self.cfg.method == "dqn":
            a = self.qnet(pad)[src_t, idx_t].argmax(-1)
            if mode == "epsilon":
                u = rand((K, 2))
                a = torch.where(u[:, 0] < self.cfg.dqn_epsilon, (u[:, 1] * A).long().clamp(max=A - 1), a)
            return a.numpy(), None, None
        I = self.cfg.denoising_steps
        noisy = self.diffusion and mode != "deterministic"
        z = torch.zeros(A, n_pad, I - 1, A)  # chain noise of steps i = I..2 (step i = 1 adds none)
        if noisy and I > 1:
            z[src_t, idx_t] = randn((K, I - 1, A))
        x_read, x = None, None
        if self.cfg.method == "lad":
            x_read = self.latent[self.latent_rows(slot, src, idx)]
            x = torch.zeros(A, n_pad, A)
            x[src_t, idx_t] = x_read
        elif self.cfg.method == "d2sac":
            x = torch.zeros(A, n_pad, A)
            if noisy:
                x[src_t, idx_t] = randn((K, A))  # x_I ~ N(0, I), fresh for every forward pass
        pi_pad, x0_pad = self.actor(pad, x, z)
        pi, x0 = pi_pad[src_t, idx_t], x0_pad[src_t, idx_t]
        if mode == "sample":  # Categorical(pi) by the inverse CDF
            c = pi.cumsum(-1)
            a = (c < rand((K, 1)) * c[:, -1:]).sum(-1).clamp(max=A - 1)
        else:
            a = pi.argmax(-1)
        out = None
        if self.cfg.method == "lad":
            out = pi if self.cfg.latent_store == "probs" else x0
        return a.numpy(), x_read, out

    # -- updates ------------------------------------------------------------------------------------------
    def sac_update(self, b: dict[str, torch.Tensor], active: torch.Tensor, actor_step: bool = True) -> dict[str, float]:
        """One update of every active agent (spec 5.4; eqs. 14-17 in the code's form), batch (A, K, .).
        ``actor_step = False``: the critics and their targets only (``critic_updates`` > 1, [ours])."""
        cfg, A = self.cfg, self.A
        I = cfg.denoising_steps
        s, a, r, s2 = b["obs"], b["act"][..., 0].long(), b["rew"][..., 0], b["next_obs"]
        K = s.shape[1]
        mask = active.to(s.dtype)
        alpha = self.log_alpha.detach().exp()  # (A,)

        def chain_inputs(x_key: str):
            if not self.diffusion:
                return None, None
            z = torch.randn(A, K, I - 1, A)  # fresh noise of steps i = I..2 (spec 5.3)
            x = b[x_key] if cfg.method == "lad" else torch.randn(A, K, A)
            return x, z

        # eq. 14 target: y = r + gamma (sum_a pi'(a) min_j Qt_j(s', a) + alpha H'), no done flag (spec 3.2)
        with torch.no_grad():
            x2, z2 = chain_inputs("next_latent")
            pi2 = self.actor(s2, x2, z2)[0]
            qt = self.critic_t(torch.cat([s2, s2])).view(2, A, K, A)
            v2 = (pi2 * torch.min(qt[0], qt[1])).sum(-1) + alpha[:, None] * entropy(pi2)
            y = r + cfg.gamma * v2
        ss, both = torch.cat([s, s]), torch.cat([active, active])  # inputs and mask of the 2A critics
        q = self.critic(ss).view(2, A, K, A)
        q_a = q.gather(-1, a.unsqueeze(0).expand(2, A, K).unsqueeze(-1))[..., 0]
        critic_loss = ((q_a - y.unsqueeze(0)) ** 2).mean(-1)  # (2, A): MSE of Q_1 and Q_2 per station
        self.critic_opt.zero_grad()
        (critic_loss * mask).sum().backward()
        self.critic_opt.step(both)
        n = float(mask.sum())
        if not actor_step:
            common.soft_update_agents(self.critic_t, self.critic, cfg.tau, both)
            return {"critic_loss": float((critic_loss.detach() * mask).sum()) / (2 * n)}
        # eq. 15 (code form): L_pi = mean(-alpha H - sum_a pi(a) min_j Q_j(s, a)), with the updated critics
        x, z = chain_inputs("latent")
        pi = self.actor(s, x, z)[0]
        with torch.no_grad():
            q = self.critic(ss).view(2, A, K, A)
            q_min = torch.min(q[0], q[1])
        h = entropy(pi)
        actor_loss = (-alpha[:, None] * h - (pi * q_min).sum(-1)).mean(-1)  # (A,)
        self.actor_opt.zero_grad()
        (actor_loss * mask).sum().backward()
        self.actor_opt.step(active)
        # eq. 16 (code form): L_alpha = mean((H - H_target).detach() * alpha), Adam on log alpha. Its gradient
        # d(sum_b mask_b L_alpha,b)/d log alpha_b = mask_b mean(H - H_target)_b alpha_b is written out (the
        # products autograd would form, in its order), which saves a backward pass per update
        self.log_alpha.grad = mask * (h.detach() - cfg.target_entropy).mean(-1) * self.log_alpha.detach().exp()
        self.alpha_opt.step(active)
        # eq. 17: soft update of the target critics
        common.soft_update_agents(self.critic_t, self.critic, cfg.tau, both)
        return {"critic_loss": float((critic_loss.detach() * mask).sum()) / (2 * n),
                "actor_loss": float((actor_loss.detach() * mask).sum()) / n,
                "entropy": float((h.detach().mean(-1) * mask).sum()) / n}

    def dqn_update(self, b: dict[str, torch.Tensor], active: torch.Tensor, actor_step: bool = True) -> dict[str, float]:
        """One DQN-TS update of every active agent: target copy when the agent's update count is a
        multiple of 200 (before the update), y = r + gamma max_a Qt(s', a), MSE (spec 4.2)."""
        cfg = self.cfg
        copy = active & (self.updates % cfg.dqn_target_every == 0)
        if bool(copy.any()):
            common.soft_update_agents(self.qnet_t, self.qnet, 1.0, copy)
        self.updates += active.long()
        s, a, r, s2 = b["obs"], b["act"][..., 0].long(), b["rew"][..., 0], b["next_obs"]
        with torch.no_grad():
            y = r + cfg.gamma * self.qnet_t(s2).max(-1).values
        q = self.qnet(s).gather(-1, a.unsqueeze(-1))[..., 0]
        loss = ((q - y) ** 2).mean(-1)
        mask = active.to(s.dtype)
        self.q_opt.zero_grad()
        (loss * mask).sum().backward()
        self.q_opt.step(active)
        return {"critic_loss": float((loss.detach() * mask).sum() / mask.sum()), "actor_loss": float("nan"),
                "entropy": float("nan")}


# -- next states (eq. 7) -----------------------------------------------------------------------------------
def next_observations(obs: np.ndarray, src: np.ndarray, sim, code_bug: bool) -> tuple[np.ndarray, np.ndarray]:
    """s^next of every task of the slot just stepped (eq. 7, spec 3.2): the same station's next task of
    this slot (same q_{t-1}), or for its last task the first task of (b, t+1) with the true q_t (the
    [fix] of spec 2.4 item 15; ``code_bug``: with q = 0 as the code). Returns (next_obs, is_last)."""
    K = obs.shape[0]
    nxt = np.empty_like(obs)
    last = np.ones(K, dtype=bool)
    last[:-1] = src[1:] != src[:-1]
    nxt[:-1] = obs[1:]
    rows = np.flatnonzero(last)
    stations = src[rows]
    fallback = obs[rows].copy()  # no task of b in slot t+1 (never in generated workloads): own task, q_t
    fallback[:, 2:] = sim.q
    if sim.t < sim.preset.slots_per_episode:
        view = sim.view()
        if view.n:
            o2 = sim.observation(view)
            first = np.searchsorted(view.source, stations)
            ok = (first < view.n) & (view.source[np.minimum(first, view.n - 1)] == stations)
            fallback[ok] = o2[first[ok]]
    nxt[rows] = fallback
    if code_bug:
        nxt[rows, 2:] = 0.0
    return nxt, last


# -- training -----------------------------------------------------------------------------------------------
ALGO_METHOD = {"ladts": "lad", "d2sac_ts": "d2sac", "sac_ts": "sac", "dqn_ts": "dqn"}


def train(algo: str, sim, preset_name: str, cfg: Config, seed: int, out: Path, command: list[str],
          progress: bool | None = None) -> dict:
    """Train (or resume) into ``out`` (Algorithm 1, batched per slot); returns the last episode's row."""
    if sim.name != "ladts":
        raise UserError(f"algo '{algo}' trains on the ladts scenario, not '{sim.name}'")
    if algo in ALGO_METHOD and cfg.method != ALGO_METHOD[algo]:
        raise UserError(f"algo '{algo}' is method '{ALGO_METHOD[algo]}'; do not --set method={cfg.method}")
    p = sim.preset
    A, obs_dim = sim.B, sim.obs_dim()
    resolved, ckpt = common.start_run(algo, sim, preset_name, cfg, seed, out, command, obs_dim=obs_dim, num_agents=A, tasks_max=p.tasks_max,
                                               slots=p.slots_per_episode)
    common.seed_everything(seed)
    torch.set_num_threads(cfg.torch_threads)
    np_rng = np.random.default_rng(seed)  # replay sampling
    agents = Agents(cfg, A, obs_dim, p.slots_per_episode, p.tasks_max)
    widths = {"obs": obs_dim, "act": 1, "rew": 1, "next_obs": obs_dim}
    lad = cfg.method == "lad"
    if lad and cfg.code_latent_alias:  # positions in the store, read when sampled
        widths.update(latent_key=1, next_latent_key=1)
    elif lad:
        widths.update(latent=A, next_latent=A)
    pool = StationReplay(A, cfg.buffer_size, widths)
    start, decisions, updates = 0, 0, 0
    if ckpt is not None:
        agents.load_state_dict(ckpt["agents"])
        pool.load_state_dict(ckpt["pool"])
        common.set_rng_state(ckpt["rng"], np_rng)
        start, decisions, updates = int(ckpt["episode"]), int(ckpt["decisions"]), int(ckpt["updates"])

    def checkpoint(episode: int) -> None:
        common.save_checkpoint(out, {"resolved": resolved, "episode": episode, "decisions": decisions,
                                     "updates": updates, "agents": agents.state_dict(), "pool": pool.state_dict(),
                                     "rng": common.rng_state(np_rng)})

    update = agents.dqn_update if cfg.method == "dqn" else agents.sac_update
    fields = ["episode", "global_step", "updates", "reward", "completion_rate", "latency_s", "wait_s", "critic_loss",
              "actor_loss", "entropy", "alpha", "episode_s", "episode_cpu_s"]
    log = common.MetricsLog(out / common.METRICS, fields, start)
    row: dict = {}
    bar = tqdm(total=cfg.episodes, initial=start, desc=f"train {algo}", unit="ep", disable=progress is False,
               dynamic_ncols=True, file=sys.stderr)
    try:
        for episode in range(start, cfg.episodes):
            t0, c0 = time.perf_counter(), time.process_time()
            sim.reset(sim.generate_workload(episode_rng(seed, episode, TRAIN_WORKLOAD_STREAM), episode))
            stats: list[dict] = []
            while not sim.done:
                t = sim.t
                view = sim.view()
                if view.n == 0:
                    sim.step(OffloadDecision(target=np.zeros(0, dtype=np.int64)))
                    continue
                obs = sim.observation(view)
                src = view.source.astype(np.int64)
                idx = np.asarray(view.features["index"], dtype=np.int64)
                K = obs.shape[0]
                mode = "epsilon" if cfg.method == "dqn" else "sample"
                a, x_read, x_out = agents.act(obs, src, idx, t, mode, torch.randn, torch.rand)
                if lad:
                    agents.latent[agents.latent_rows(t, src, idx)] = x_out  # X[..] <- pi (code) or x_0 (paper)
                sim.step(OffloadDecision(target=a))
                r = sim.rows(t)
                rew = -sim.delays[r]  # eq. 9
                next_obs, last = next_observations(obs, src, sim, cfg.code_next_state_bug)
                extra = {}
                if lad:
                    nsrc, nidx = src.copy(), idx + 1  # x^next: the next task's entry (read before its overwrite)
                    nslot = np.full(K, t)
                    if cfg.latent_key == "slot_station_index":
                        nslot[last] = min(t + 1, p.slots_per_episode - 1)  # X[t+1][b][0]
                    nidx[last] = 0  # station_index: X_b[0], already rewritten by this slot's task 0
                    if cfg.code_latent_alias:  # the pool keeps positions; the values are read when sampled
                        extra = {"latent_key": agents.latent_flat(t, src, idx).astype(np.float32),
                                 "next_latent_key": agents.latent_flat(nslot, nsrc, nidx).astype(np.float32)}
                    else:
                        xn = torch.empty_like(x_read)
                        xn[:-1] = x_read[1:]
                        key = agents.latent_rows(nslot[last], nsrc[last], nidx[last])
                        xn[torch.from_numpy(last)] = agents.latent[key]
                        extra = {"latent": x_read.numpy(), "next_latent": xn.numpy()}
                pool.add(src, obs=obs, act=a.astype(np.float32), rew=rew.astype(np.float32), next_obs=next_obs, **extra)
                decisions += K
                active = torch.from_numpy(pool.size > cfg.learning_starts)
                if bool(active.any()):
                    for u in range(cfg.updates_per_slot * cfg.critic_updates):
                        batch = pool.sample(np_rng, cfg.batch_size, cfg.sample_without_replacement)
                        if lad and cfg.code_latent_alias:
                            flat = agents.latent.view(-1, A)
                            batch["latent"] = flat[batch.pop("latent_key")[..., 0].long()]
                            batch["next_latent"] = flat[batch.pop("next_latent_key")[..., 0].long()]
                        stats.append(update(batch, active, actor_step=(u + 1) % cfg.critic_updates == 0))
                        updates += 1
            m = sim.episode_metrics()
            if lad and not bool(torch.isfinite(agents.latent).all()):
                gain = math.sqrt(1 / final_lambda_bar(cfg))
                raise UserError(f"the latent store diverged (non-finite): the chain scales x_I by "
                                f"sqrt(1/lambdabar_I) = {gain:.3g}, so storing x_0 (latent_store=x0) grows "
                                "geometrically; use latent_store=probs (the code)")

            def mean(key: str) -> float:
                vals = [x[key] for x in stats if key in x]
                return float(np.mean(vals)) if vals else float("nan")

            row = {"episode": episode, "global_step": decisions, "updates": updates, "reward": m["reward"],
                   "completion_rate": 1.0,  # no deadlines, no drops: every task is served (spec 1.5)
                   "latency_s": m["latency_s"], "wait_s": m["wait_s"], "critic_loss": mean("critic_loss"),
                   "actor_loss": mean("actor_loss"), "entropy": mean("entropy"),
                   "alpha": float(agents.log_alpha.detach().exp().mean()) if cfg.method != "dqn" else float("nan"),
                   "episode_s": time.perf_counter() - t0, "episode_cpu_s": time.process_time() - c0}
            log.write(row)
            bar.set_postfix_str(f"delay={m['latency_s']:.3f}s", refresh=False)
            bar.update(1)
            if (episode + 1) % cfg.checkpoint_every == 0 or episode + 1 == cfg.episodes:
                checkpoint(episode + 1)
    finally:
        bar.close()
        log.close()
    return row


# -- a trained run as a policy ---------------------------------------------------------------------------
class TrainedPolicy(Policy):
    """The run's per-station agents acting on ``sim.observation(view)`` (one batched pass per slot).

    ``eval_action`` (config): "sample" draws a ~ pi as in training (the paper's curves), "argmax" takes
    eq. 8's argmax, "deterministic" also zeroes the chain's noise; DQN-TS acts greedily. LAD-TS keeps the
    latent store: every episode starts from the store saved at the end of training and updates it with
    its own outputs, as Algorithm 1 does. Randomness comes from the evaluation's per-episode policy rng."""

    def __init__(self, name: str, sim, resolved: dict, state: dict, eval_action: str | None = None):
        self.name, self.sim, self.resolved = name, sim, resolved
        cfg = common.make_config(Config, {k: v for k, v in resolved["config"].items()})
        if eval_action is not None:
            cfg.eval_action = eval_action
        self.cfg = cfg
        self.agents = Agents(cfg, resolved["num_agents"], resolved["obs_dim"], resolved["slots"], resolved["tasks_max"])
        self.agents.load_state_dict(state, acting_only=True)
        self.latent0 = None if self.agents.latent is None else self.agents.latent.clone()
        for mod in self.agents.modules().values():
            mod.eval()

    def reset(self, rng: np.random.Generator, oracle=None) -> None:
        self.rng = rng
        if self.latent0 is not None:
            self.agents.latent.copy_(self.latent0)

    def decide(self, view: OffloadView) -> OffloadDecision:
        if view.n == 0:
            return OffloadDecision(target=np.zeros(0, dtype=np.int64))
        ag, cfg = self.agents, self.cfg
        obs = self.sim.observation(view)
        src = view.source.astype(np.int64)
        idx = np.asarray(view.features["index"], dtype=np.int64)
        mode = "greedy" if cfg.method == "dqn" else cfg.eval_action
        rng = self.rng
        a, _, x_out = ag.act(obs, src, idx, view.slot, mode,
                             lambda shape: torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)),
                             lambda shape: torch.from_numpy(rng.random(shape, dtype=np.float32)))
        if ag.latent is not None:
            ag.latent[ag.latent_rows(view.slot, src, idx)] = x_out
        return OffloadDecision(target=a.astype(np.int64))


def load_policy(name: str, run_dir: Path, sim, resolved: dict, ckpt: dict) -> TrainedPolicy:
    p = resolved["preset"]
    if sim.name != "ladts":
        raise UserError(f"run '{run_dir}' was trained on ladts; it cannot act in scenario '{sim.name}'")
    if sim.B != resolved["num_agents"] or sim.obs_dim() != resolved["obs_dim"]:
        raise UserError(f"run '{run_dir}' was trained with {resolved['num_agents']} stations; it cannot act with "
                        f"num_stations={sim.B}")
    if resolved["config"]["method"] == "lad" and (sim.preset.tasks_max > p["tasks_max"]
                                                  or sim.preset.slots_per_episode > p["slots_per_episode"]):
        raise UserError(f"run '{run_dir}' keeps latents for tasks_max={p['tasks_max']} and "
                        f"slots_per_episode={p['slots_per_episode']}; evaluate it with at most those")
    return TrainedPolicy(name, sim, resolved, ckpt["agents"])
