"""A timing reference for LAD-TS training: a trainer written in the loop structure of the authors' public
code (GitHub ChangfuXu/DEdgeAI), so that ``aigc-offload bench train --reference`` can time it in the same
process as ours (policies/train/ladts.py) and print the ratio of two measurements taken on the same machine
state, instead of only the ratio against a figure measured elsewhere (the 78 s per episode of
``policies.reproduce.ladts.AUTHORS_S_PER_EPISODE``). Issue #4; spec docs/papers/ladts.md sections 3-5.

This is our own code, not a copy of theirs: it does the same computational work per episode in the same
structure, and it really learns (real gradient steps); it is not meant for training runs.

Structural features reproduced (their file and function for each):

1. The loop, ``main_lad.py: LAD_TS_algorithm``: per episode, for each of the T - 1 decided slots, for each
   station b in index order, for each task n of (b, t) in order: build the observation with ``np.hstack``
   ([d_n, w_n, q_{t-1}]), read the latent X[t][b][n], call station b's actor on that ONE sample, write the
   returned probabilities back into X[t][b][n], step the environment for that one task, append the tuple
   to station b's pool. After station b's tasks: if its pool holds more than ``learning_starts`` (300)
   tuples, sample a batch of 64 and make ONE update of agent b. After all stations: the slot-end queue
   update. (``ReferenceTrainer.run_episode``.)
2. Separate per-station agents, ``model_lad.py: LADSAC.__init__``: B independent objects, each with its
   own actor (a denoising chain around an epsilon-network ``MLP_PolicyNet``: Linear(B + 16 + 2 + B -> 20),
   ReLU, Linear(20 -> 20), ReLU, Linear(20 -> B), softmax, sinusoidal step embedding of dim 16), twin
   critics ``QValueNet`` (2 x 20 ReLU) and twin targets loaded from them, and its own
   ``torch.optim.Adam`` for the actor, for each critic, and for log alpha. (``ReferenceAgent``.)
3. Acting, ``model_lad.py: LADSAC.take_action``: ``torch.tensor(np.array([state]))`` and the same for the
   latent (a batch of one), the actor called WITHOUT ``torch.no_grad`` (autograd records the chain, as
   theirs does), ``torch.distributions.Categorical(probs).sample()``, ``.item()``,
   ``probs.detach().numpy()``. (``ReferenceAgent.take_action``.)
4. The chain, their ``diffusion_lad.py`` (not in the index; its math is our spec 5.1-5.3 and the
   ``Diffusion`` class of the Diffusion-QL/AGOD code it derives from, whose sampling loop the same authors'
   sibling repositories use): ``p_sample_loop`` over i = I-1..0 with ``torch.full((n,), i)`` step
   tensors; per step ``p_sample`` -> ``p_mean_variance`` -> the epsilon-network (which recomputes the
   step embedding and concatenates [x, emb, s]) -> ``predict_start_from_noise`` and ``q_posterior`` with
   per-step ``extract`` gathers of the schedule buffers -> ``randn_like`` noise masked at step 0 and
   scaled by exp(0.5 log var) -> softmax of x_0. It starts from the stored latent (spec 2.4 item 16).
   Its math is that of our ``DenoisingActor`` (tests/test_ladts_reference.py compares them on the same
   weights and noise). (``ReferenceChain``, ``EpsilonNet``, ``StepEmbedding``.)
5. The update, ``model_lad.py: LADSAC.update, calc_target_q, soft_update``, in their order: tensors built
   from the sampled numpy arrays and tuples; the target computed with the actor on the next states and
   next latents (outside ``no_grad``, then detached, as theirs); critic 1 loss, backward, Adam step; critic
   2 likewise; actor loss with the critics' outputs (its backward also runs through the critics, as
   theirs), Adam step; temperature loss on log alpha, backward, Adam step; soft update of both targets,
   parameter by parameter. (``ReferenceAgent.update``.)
6. The replay pool, ``model_lad.py: ReplayBuffer``: a ``collections.deque(maxlen=1000)`` of tuples,
   ``random.sample`` of 64, ``zip(*)`` and ``np.array``. (``ReplayPool``.)
7. The environment, ``environment_lad.py: OffloadEnvironment.step, update_proc_queues, reset_env``: per
   task, Python scalar arithmetic on numpy arrays: the wait (q_{t-1}[a] + q^bef[a]) / f_a, the
   transmission and compute terms with the local-server branch, q^bef[a] += w_n, the next state with
   ``np.hstack`` and the next latent (X[t][b][n+1], or X[t+1][b][0] for a station's last task); at slot
   end a Python loop over the servers for eq. 4. The latent space X is a (T, B, N, B) array of N(0, 1)
   drawn once and kept across episodes (their ``__init__``). (``ReferenceEnv``.)

Simplified or changed (none of it changes the per-task or per-update work by more than a few
microseconds):

- The workload of an episode is drawn by our simulator (``make_simulator("ladts").generate_workload`` on
  the training stream ``TRAIN_WORKLOAD_STREAM``, the same task model: N_{b,t} ~ U{1..N}, d ~ U(2, 5),
  per-index profiles rho, z, dtilde, the seeded f and v), then split into per-(t, b) arrays like their
  ``tasks_bit[t][b]``; w_n and dtilde_n are read from per-(t, b) arrays instead of their per-index arrays
  (the same values). Both trainers draw their workload inside the timed episode.
- The pool stores the latent and the next latent as read (copies), as our trainer's default
  (``code_latent_alias=False``), not their numpy views that the next line overwrites.
- The next state of a station's last task has q = 0 as in their code (it reads q_t before the slot-end
  update writes it; our trainer's ``code_next_state_bug=True``); same cost either way.
- No printing, plotting or result files; CPU only (their ``.to(device)`` calls are omitted); our own RNGs
  (a torch RNG state saved and restored around every episode, ``random.Random`` for the pools, numpy
  ``default_rng`` for the latent space) instead of their global seeds, so that interleaving with our
  trainer in one process changes neither's random stream. ``updates_per_slot`` and ``critic_updates``
  of the config are not used (theirs: one update per station per slot); only the code's defaults of the
  latent switches are implemented (latent keyed by slot, station and index; probabilities stored).
- torch runs on one thread (``Config.torch_threads``).
"""

from __future__ import annotations

import collections
import math
import random
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policies.errors import UserError
from policies.train import common
from policies.train.ladts import TRAIN_WORKLOAD_STREAM, Config, vp_schedule
from policies.workload import episode_rng


# -- the actor: a denoising chain around an epsilon-network, one sample at a time -------------------------
class StepEmbedding(nn.Module):
    """Sinusoidal embedding of integer step tensors (n,) -> (n, dim), recomputed on every call."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.dim = dim

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=k.device) * -(math.log(10000.0) / (half - 1)))
        arg = k[:, None] * freqs[None, :]
        return torch.cat((arg.sin(), arg.cos()), dim=-1)


class EpsilonNet(nn.Module):
    """eps_theta(x_i, i, s): [x_i, SinusEmb(i - 1), s] -> 20 -> 20 -> B (ReLU), softmax (the code's)."""

    def __init__(self, obs_dim: int, actions: int, hidden: int = 20, time_dim: int = 16, eps_softmax: bool = True):
        super().__init__()
        self.emb = StepEmbedding(time_dim)
        self.eps_softmax = eps_softmax
        self.fc1 = nn.Linear(actions + time_dim + obs_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, actions)

    def forward(self, x: torch.Tensor, k: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, self.emb(k), s.reshape(s.size(0), -1)], dim=1)
        h = F.relu(self.fc1(h))
        h = F.relu(self.fc2(h))
        out = self.fc3(h)
        return F.softmax(out, dim=1) if self.eps_softmax else out


def _gather(a: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Schedule values of steps k (n,) as a column (n, 1)."""
    return a.gather(-1, k).reshape(k.shape[0], 1)


class ReferenceChain(nn.Module):
    """pi(.|s, x_I) = softmax(x_0) by I reverse steps, in the sampling-loop structure of the Diffusion class
    (step tensors, per-step gathers of the schedule, per-step ``randn_like``). ``noise`` (n, I, B), if
    given, replaces the per-step draws: slice j is the noise of the j-th step run (i = I - j), the last slice
    is masked out (step i = 1 adds none)."""

    def __init__(self, obs_dim: int, actions: int, hidden: int = 20, steps: int = 5, beta_min: float = 0.1,
                 beta_max: float = 10.0, time_dim: int = 16, eps_softmax: bool = True):
        super().__init__()
        self.steps = int(steps)
        self.model = EpsilonNet(obs_dim, actions, hidden, time_dim, eps_softmax)
        sch = vp_schedule(steps, beta_min, beta_max)  # float64, index i - 1
        for name, key in (("sqrt_recip_lbar", "sqrt_recip_lbar"), ("sqrt_recipm1_lbar", "sqrt_recipm1_lbar"),
                          ("coef1", "coef1"), ("coef2", "coef2"), ("post_var", "beta_tilde")):
            self.register_buffer(name, torch.tensor(sch[key], dtype=torch.float32))
        self.register_buffer("post_logvar", torch.log(torch.clamp(self.post_var, min=1e-20)))

    def predict_start_from_noise(self, x: torch.Tensor, k: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return _gather(self.sqrt_recip_lbar, k) * x - _gather(self.sqrt_recipm1_lbar, k) * eps

    def q_posterior(self, x0: torch.Tensor, x: torch.Tensor, k: torch.Tensor):
        mean = _gather(self.coef1, k) * x0 + _gather(self.coef2, k) * x
        return mean, _gather(self.post_var, k), _gather(self.post_logvar, k)

    def p_sample(self, x: torch.Tensor, k: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        x0 = self.predict_start_from_noise(x, k, self.model(x, k, s))
        mean, _, logvar = self.q_posterior(x0, x, k)
        if z is None:
            z = torch.randn_like(x)
        nonzero = (1 - (k == 0).float()).reshape(x.shape[0], 1)
        return mean + nonzero * (0.5 * logvar).exp() * z

    def sample_x0(self, state: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        x, n = latent, latent.shape[0]
        for j, i in enumerate(reversed(range(self.steps))):
            k = torch.full((n,), i, dtype=torch.long)
            x = self.p_sample(x, k, state, None if noise is None else noise[:, j, :])
        return x

    def forward(self, state: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return F.softmax(self.sample_x0(state, latent, noise), dim=-1)


class QNet(nn.Module):
    """Q(s) -> R^B, (2 + B) -> 20 -> 20 -> B, ReLU."""

    def __init__(self, obs_dim: int, actions: int, hidden: int = 20):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, actions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


# -- one station's agent and pool ----------------------------------------------------------------------------
class ReplayPool:
    """FIFO pool of tuples (s, a, x_I, r, s', x_I'), uniform sampling without replacement."""

    def __init__(self, capacity: int, rng: random.Random):
        self.buffer: collections.deque = collections.deque(maxlen=int(capacity))
        self.rng = rng

    def add(self, state, action, latent, reward, next_state, next_latent) -> None:
        self.buffer.append((state, action, latent, reward, next_state, next_latent))

    def sample(self, batch: int):
        s, a, x, r, s2, x2 = zip(*self.rng.sample(self.buffer, batch))
        return np.array(s), a, np.array(x), r, np.array(s2), np.array(x2)

    def __len__(self) -> int:
        return len(self.buffer)


class ReferenceAgent:
    """One station's LAD-TS agent: actor chain, twin critics and targets, temperature, four Adams."""

    def __init__(self, obs_dim: int, actions: int, cfg: Config):
        H = cfg.hidden
        self.cfg = cfg
        self.actor = ReferenceChain(obs_dim, actions, H, cfg.denoising_steps, cfg.beta_min, cfg.beta_max,
                                    cfg.time_dim, cfg.eps_softmax)
        self.critic_1, self.critic_2 = QNet(obs_dim, actions, H), QNet(obs_dim, actions, H)
        self.target_1, self.target_2 = QNet(obs_dim, actions, H), QNet(obs_dim, actions, H)
        self.target_1.load_state_dict(self.critic_1.state_dict())
        self.target_2.load_state_dict(self.critic_2.state_dict())
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr_actor)
        self.critic_1_opt = torch.optim.Adam(self.critic_1.parameters(), lr=cfg.lr_critic)
        self.critic_2_opt = torch.optim.Adam(self.critic_2.parameters(), lr=cfg.lr_critic)
        self.log_alpha = torch.tensor(math.log(cfg.alpha), dtype=torch.float, requires_grad=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr_alpha)
        self.actor_calls = 0
        self.updates = 0
        self.critic_losses: list[float] = []

    def take_action(self, state: np.ndarray, latent: np.ndarray) -> tuple[int, np.ndarray]:
        """One task: the chain on a batch of one (autograd on, as theirs), a ~ Categorical(pi)."""
        s = torch.tensor(np.array([state]), dtype=torch.float)
        x = torch.tensor(np.array([latent]), dtype=torch.float)
        probs = self.actor(s, x)
        action = torch.distributions.Categorical(probs).sample()
        self.actor_calls += 1
        return action.item(), probs.detach().numpy()

    def target_q(self, r: torch.Tensor, s2: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """y = r + gamma (sum_a pi'(a) min_j Qt_j(s', a) + alpha H') (eq. 14, code form; no done flag)."""
        pi2 = self.actor(s2, x2)
        h2 = -torch.sum(pi2 * torch.log(pi2 + 1e-8), dim=1, keepdim=True)
        q_min = torch.min(self.target_1(s2), self.target_2(s2))
        v2 = torch.sum(pi2 * q_min, dim=1, keepdim=True) + self.log_alpha.exp() * h2
        return r + self.cfg.gamma * v2

    def soft_update(self, net: nn.Module, target: nn.Module) -> None:
        tau = self.cfg.tau
        for pt, p in zip(target.parameters(), net.parameters()):
            pt.data.copy_(pt.data * (1.0 - tau) + p.data * tau)

    def update(self, batch) -> None:
        """One update (eqs. 14-17, code form), in the code's order: critic 1, critic 2, actor, alpha, targets."""
        b_s, b_a, b_x, b_r, b_s2, b_x2 = batch
        s = torch.tensor(b_s, dtype=torch.float)
        a = torch.tensor(b_a).view(-1, 1)
        x = torch.tensor(b_x, dtype=torch.float)
        r = torch.tensor(b_r, dtype=torch.float).view(-1, 1)
        s2 = torch.tensor(b_s2, dtype=torch.float)
        x2 = torch.tensor(b_x2, dtype=torch.float)
        y = self.target_q(r, s2, x2)
        loss_1 = torch.mean(F.mse_loss(self.critic_1(s).gather(1, a), y.detach()))
        self.critic_1_opt.zero_grad()
        loss_1.backward()
        self.critic_1_opt.step()
        loss_2 = torch.mean(F.mse_loss(self.critic_2(s).gather(1, a), y.detach()))
        self.critic_2_opt.zero_grad()
        loss_2.backward()
        self.critic_2_opt.step()
        pi = self.actor(s, x)
        h = -torch.sum(pi * torch.log(pi + 1e-8), dim=1, keepdim=True)
        q_min = torch.sum(pi * torch.min(self.critic_1(s), self.critic_2(s)), dim=1, keepdim=True)
        actor_loss = torch.mean(-self.log_alpha.exp() * h - q_min)
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        alpha_loss = torch.mean((h - self.cfg.target_entropy).detach() * self.log_alpha.exp())
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()
        self.soft_update(self.critic_1, self.target_1)
        self.soft_update(self.critic_2, self.target_2)
        self.critic_losses.append(loss_2.item())
        self.updates += 1


# -- the environment, one task at a time -------------------------------------------------------------------
class ReferenceEnv:
    """The LAD-TS system model stepped per task in plain Python/numpy (eqs. 2-4, code form)."""

    def __init__(self, sim, latent_rng: np.random.Generator):
        p = sim.preset
        self.sim = sim
        self.B, self.T, self.N = sim.B, p.slots_per_episode, p.tasks_max
        self.duration = p.slot_s
        self.latent = latent_rng.standard_normal((self.T, self.B, self.N, self.B))  # X[t][b][n], kept across episodes

    def reset(self, workload) -> None:
        tk, B, T = workload.tasks, self.B, self.T
        self.f = np.asarray(workload.params["cpu_ghz"], dtype=np.float64)
        self.v = np.asarray(workload.params["rate_mbps"], dtype=np.float64)
        group = np.asarray(tk["slot"]) * B + np.asarray(tk["source"])  # rows in (slot, station, index) order
        cuts = np.searchsorted(group, np.arange(1, T * B))
        w = np.asarray(tk["step_gcycles"], dtype=np.float64) * np.asarray(tk["steps"], dtype=np.float64)
        d, res = (np.split(np.asarray(tk[k], dtype=np.float64), cuts) for k in ("input_mbit", "result_mbit"))
        w = np.split(w, cuts)
        self.tasks_bit = [[d[t * B + b] for b in range(B)] for t in range(T)]
        self.work = [[w[t * B + b] for b in range(B)] for t in range(T)]
        self.result_bit = [[res[t * B + b] for b in range(B)] for t in range(T)]
        self.q_len = np.zeros([T + 1, B])  # q_{t-1} at row t
        self.q_bef = np.zeros([T + 1, B])  # work assigned earlier in slot t

    def observe(self, t: int, b: int, n: int) -> np.ndarray:
        return np.hstack([self.tasks_bit[t][b][n], self.work[t][b][n], self.q_len[t]])

    def step(self, t: int, b: int, n: int, a: int):
        """Place task n of (b, t) on server a: its delay, q^bef, and the next state and latent (eq. 7)."""
        wait = (self.q_len[t][a] + self.q_bef[t][a]) / self.f[a]
        w = self.work[t][b][n]
        if a == b:
            link_comp = w / self.f[a] + self.result_bit[t][b][n] / self.v[a]
        else:
            link_comp = self.tasks_bit[t][b][n] / self.v[a] + w / self.f[a] + self.result_bit[t][b][n] / self.v[a]
        delay = link_comp + wait
        self.q_bef[t][a] = self.q_bef[t][a] + w
        if n == len(self.tasks_bit[t][b]) - 1:
            next_state = np.hstack([self.tasks_bit[t + 1][b][0], self.work[t + 1][b][0], self.q_len[t + 1]])
            next_latent = self.latent[t + 1][b][0]
        else:
            next_state = np.hstack([self.tasks_bit[t][b][n + 1], self.work[t][b][n + 1], self.q_len[t]])
            next_latent = self.latent[t][b][n + 1]
        return next_state, next_latent, -delay, delay

    def end_slot(self, t: int) -> None:
        """Eq. 4 for every server."""
        for b in range(self.B):
            self.q_len[t + 1][b] = max(self.q_len[t][b] + self.q_bef[t][b] - self.f[b] * self.duration, 0.0)


# -- the trainer ---------------------------------------------------------------------------------------------
class ReferenceTrainer:
    """B per-station agents trained in the authors' loop structure. ``overrides``: preset and ``ladts.Config``
    fields as ``train --set`` takes them (for instance num_stations, slots_per_episode, tasks_max,
    learning_starts, batch_size). ``record``: keep the last episode's actions and delays (tests)."""

    def __init__(self, seed: int = 0, overrides: dict | None = None, record: bool = False):
        from policies.scenarios import make_simulator

        algo_set, preset_set = common.split_overrides(Config, dict(overrides or {}))
        cfg = common.make_config(Config, algo_set)
        if cfg.method != "lad":
            raise UserError(f"the reference trainer is LAD-TS's (method lad), not method={cfg.method!r}")
        if cfg.learning_starts + 1 < cfg.batch_size:
            raise UserError(f"learning_starts={cfg.learning_starts} is below batch_size={cfg.batch_size} - 1: "
                            "the code samples a batch without replacement once a pool holds learning_starts + 1")
        self.sim = make_simulator("ladts", preset_set)
        if self.sim.preset.decide_last_slot:
            raise UserError("the reference trainer decides T - 1 slots (the last one supplies s^next), "
                            "as the authors' code; do not --set decide_last_slot=true")
        self.cfg, self.seed, self.record = cfg, int(seed), record
        torch.set_num_threads(cfg.torch_threads)
        B, obs_dim = self.sim.B, self.sim.obs_dim()
        saved = torch.get_rng_state()
        torch.manual_seed(self.seed)
        self.agents = [ReferenceAgent(obs_dim, B, cfg) for _ in range(B)]
        self.torch_rng = torch.get_rng_state()
        torch.set_rng_state(saved)
        pool_rng = random.Random(self.seed)
        self.pools = [ReplayPool(cfg.buffer_size, pool_rng) for _ in range(B)]
        self.env = ReferenceEnv(self.sim, np.random.default_rng(self.seed))
        self.episode = 0
        self.last_actions: list[tuple[int, int, int, int]] = []
        self.last_delays: list[float] = []

    @property
    def actor_calls(self) -> int:
        return sum(ag.actor_calls for ag in self.agents)

    @property
    def updates(self) -> int:
        return sum(ag.updates for ag in self.agents)

    def run_episode(self) -> dict:
        """Train one episode; returns its CPU and wall seconds, actor calls, updates, tasks and mean delay."""
        cfg, env = self.cfg, self.env
        saved = torch.get_rng_state()
        torch.set_rng_state(self.torch_rng)
        calls0, updates0 = self.actor_calls, self.updates
        losses0 = [len(ag.critic_losses) for ag in self.agents]
        t0, c0 = time.perf_counter(), time.process_time()
        env.reset(self.sim.generate_workload(episode_rng(self.seed, self.episode, TRAIN_WORKLOAD_STREAM),
                                             self.episode))
        delays: list[float] = []
        actions: list[tuple[int, int, int, int]] = []
        for t in range(env.T - 1):
            for b in range(env.B):
                agent, pool = self.agents[b], self.pools[b]
                for n in range(len(env.tasks_bit[t][b])):
                    state = env.observe(t, b, n)
                    latent = env.latent[t][b][n]
                    latent_read = latent.copy()
                    a, probs = agent.take_action(state, latent)
                    env.latent[t][b][n] = probs
                    next_state, next_latent, reward, delay = env.step(t, b, n, a)
                    pool.add(state, a, latent_read, reward, next_state, next_latent.copy())
                    delays.append(delay)
                    if self.record:
                        actions.append((t, b, n, a))
                if len(pool) > cfg.learning_starts:
                    agent.update(pool.sample(cfg.batch_size))
            env.end_slot(t)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.torch_rng = torch.get_rng_state()
        torch.set_rng_state(saved)
        if self.record:
            self.last_actions, self.last_delays = actions, delays
        losses = [x for ag, k in zip(self.agents, losses0) for x in ag.critic_losses[k:]]
        row = {"episode": self.episode, "cpu_s": cpu, "wall_s": wall, "tasks": len(delays),
               "actor_calls": self.actor_calls - calls0, "updates": self.updates - updates0,
               "latency_s": float(np.mean(delays)) if delays else 0.0,
               "critic_loss": float(np.mean(losses)) if losses else float("nan")}
        self.episode += 1
        return row


def summarize(rows: list[dict]) -> dict:
    """Medians of measured reference episodes."""
    return {"episodes_measured": len(rows),
            "cpu_s_per_episode": statistics.median(r["cpu_s"] for r in rows),
            "wall_s_per_episode": statistics.median(r["wall_s"] for r in rows),
            "actor_calls_per_episode": statistics.median(r["actor_calls"] for r in rows),
            "updates_per_episode": statistics.median(r["updates"] for r in rows),
            "tasks_per_episode": statistics.median(r["tasks"] for r in rows),
            "latency_s": statistics.median(r["latency_s"] for r in rows),
            "rows": rows}


def check_measured(rows: list[dict], trained: int) -> None:
    if not rows or any(r["updates"] == 0 for r in rows):
        raise UserError(f"an episode of the {trained} the reference trained made no update (learning_starts is "
                        "above the tuples a station collects); measure more episodes or lower it")


def reference_episode_seconds(episodes: int = 1, seed: int = 0, stations: int = 20,
                              overrides: dict | None = None) -> dict:
    """Per-episode CPU (``time.process_time``) and wall seconds of the reference trainer at the ``ladts``
    preset with ``stations`` stations (plus ``overrides``): one first episode that fills the pools (its
    updates start only once a pool holds more than ``learning_starts`` tuples) is trained and not counted,
    then ``episodes`` measured ones. Returns their medians, the actor calls and updates per episode, and the
    rows (the first episode's under ``fill``)."""
    trainer = ReferenceTrainer(seed, {**(overrides or {}), "num_stations": stations})
    fill = trainer.run_episode()
    rows = [trainer.run_episode() for _ in range(episodes)]
    check_measured(rows, episodes + 1)
    return {**summarize(rows), "fill": fill, "stations": stations, "seed": seed}
