"""MADDPG-MATO (paper 000, section III-B; spec docs/papers/mato.md section 5), CleanRL style.

One actor per ED (edge device) reads only its own observation o_m (``sim.observation(view)``, the
shared observation contract) and outputs the MATO action (eq. 17): target-ES logits (xi, sampled with
a straight-through Gumbel-softmax while training, argmax when acting), the offload share eta
(sigmoid) and the download flag beta (sigmoid, download iff >= 0.5). Action vector per agent:
[one-hot xi (N), eta, beta] (eta stretched so that 0 = local and 1 are reachable), the same layout as ``MatoEnv``'s Box action.

One critic per ED. MADDPG: a centralized critic that also sees the other agents' actions; by default
(after the study in docs/papers/mato.md, "Training findings") critic m reads its own observation, its
own action and the others' actions as loads per ES (their sufficient statistic for ED m's cost, spec
7.2), and learns the return of ED m's own term of the team reward; ``critic_own_obs = False`` and
``critic_loads = False`` give the textbook Q_m(o_1..o_M, a_1..a_M). With ``centralized_critic = False``,
Q_m(o_m, a_m) on its own (SADDPG: independent DDPG per agent, on each ED's own reward term).

Training choices of ours that the study found necessary (each a Config field, documented there):
critic targets on a normalised reward, exploration noise on the executed eta and download score,
straight-through gradients through eta's clip and beta's threshold, the pre-activation penalty of
openai/maddpg, a download head that starts at "download", critics that skip constant columns.

The same file serves three registered algorithms (policies/train/registry.py):
``maddpg`` (model-aware, team reward), ``maddpg_nomodel`` (preset ``model_aware: false``) and
``saddpg`` (``reward_mode: individual``, independent critics).

Sparse agents (added for the factory, ``policies/train/factory_agents.py``): a simulator whose attribute
``sparse_agents`` is True has agents that act only in the steps where they have a task (its view's
``features["has_task"]``, one flag per agent). Their action is zeroed before it is executed and stored
(so it adds no load to the other agents' critics, as GMEL's AMARL does), the replay also keeps the flags
of s and s', the target actions of agents idle at s' are zeroed, and actor m's loss averages over the
samples where agent m acted. A MATO simulator has no such attribute: every ED acts every step, as before.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

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
    reward_scale: float = 1.0  # [ours] critic targets use r * scale, after the per-agent normalisation below
    team_reward_per_agent: bool = True  # [ours] critics learn the team r_t / M (same optimum, the scale of
    # one agent's term at every M; r_t is ~ -40 per step at M = 10 and doubles at M = 20)
    reward_normalize: bool = True  # [ours] critics learn (r - mu) / sd, mu and sd frozen from the buffer at the
    # first update: a positive affine map of r (every episode has the same length and is bootstrapped at the
    # limit), so the optimal policy is unchanged, but Q is O(1) instead of ~ -100 and the critics spend their
    # first thousands of Adam steps (lr 1e-3) on the action-dependence instead of on the offset
    centralized_critic: bool = True  # False: SADDPG
    team_critics_per_term: bool = True  # [ours] team reward r_t = sum_j r_j: critic j learns the return of ED
    # j's own term r_j (sum_j Q_j is the team Q, by linearity, with a tenth of the target variance); what
    # the actors ascend is ``actor_objective``. False: every critic learns r_t / M (spec 1.7 literally)
    critic_sees_caches: bool = False  # [ours, spec 3 has it] append the cache matrix (N x L_max) to s when model-aware
    # (off: measured to slow the critics down, see docs/papers/mato.md "Training findings")
    straight_through: bool = True  # [ours] eta's clip and beta's threshold pass gradients (see Actors)
    action_reg: float = 1e-3  # [ours] penalty on the actor's squared pre-activations (openai/maddpg's p_reg)
    action_noise: bool = True  # [ours] exploration noise on the executed eta / download score (else pre-activations)
    update_every: int = 1  # env steps between rounds of ``updates_per_step`` updates
    download_bias: float = 2.0  # [ours] initial bias of the download head: sigmoid(2) = 0.88, i.e. start by
    # fetching a missing model, as the paper's model switch does ("if not cached it must be downloaded");
    # beta = 0 on a missing model is our failure mode (spec 1.5) and is still explored and learned
    actor_objective: str = "own"  # [ours] with per-term critics, actor m ascends: "own" Q_m (its own term of r_t,
    # eq. 18 read per ED as R_m), "team" sum_j Q_j with the others' buffer actions (eq. 21, M x M critic
    # passes), or "team_joint" sum_j Q_j with every agent's current action (one pass). See docs/papers/mato.md
    critic_loads: bool = True  # [ours] with critic_own_obs: the others' actions as per-ES loads (spec 7.2)
    critic_own_obs: bool = True  # [ours] centralized critic j reads o_j (not o_{-j}) and the actions (all, or
    # as loads); False: concat(o_1..o_M) and every action (spec 3's s)
    critic_skip_constant_obs: bool = True  # [ours] critics skip the observation columns that never change
    # (ES CPU, ES and CC positions: 11 of 25 per agent); they carry no information and cost a third of the
    # centralized critics' first layer. The actors read the full observation (the export contract).
    checkpoint_every: int = 25  # episodes
    torch_threads: int = 1  # small nets: extra threads only add overhead on 2 cores


# -- networks ------------------------------------------------------------------------------------
class Actors(torch.nn.Module):
    """M actors v_m(o_m): obs (M, B, obs) -> action (M, B, N + 2) = [one-hot xi, eta, beta]."""

    def __init__(self, agents: int, obs_dim: int, servers: int, hidden: int, download_bias: float = 0.0):
        super().__init__()
        self.servers = servers
        self.net = common.AgentMLP(agents, obs_dim, servers + 2, (hidden, hidden))
        if download_bias:
            with torch.no_grad():  # [ours] the download head starts at sigmoid(bias)
                self.net.net[-1].bias[..., servers + 1] += download_bias

    def forward(self, obs: torch.Tensor, gumbel_tau: float | None = None, noise: float = 0.0,
                straight_through: bool = False, return_raw: bool = False, action_noise: bool = False):
        out = self.net(obs)
        logits, pre = out[..., : self.servers], out[..., self.servers:]
        if gumbel_tau is None:
            xi = F.one_hot(logits.argmax(-1), self.servers).to(out.dtype)
        else:
            xi = F.gumbel_softmax(logits, tau=gumbel_tau, hard=True)
        if noise > 0 and not action_noise:
            pre = pre + noise * torch.randn_like(pre)
        squashed = torch.sigmoid(pre)
        # [ours] eta = clip(1.1 sigmoid - 0.05, 0, 1): eta = 0 (run locally) and eta = 1 (full offload)
        # are reachable, as with MatoEnv's clipped Box action
        eta_raw = ETA_STRETCH * squashed[..., :1] - (ETA_STRETCH - 1) / 2
        beta = squashed[..., 1:]
        if noise > 0 and action_noise:
            # [ours] Gaussian noise on the executed eta and on the download score, not on the
            # pre-activations: a saturated actor (eta clipped to 0, i.e. local) keeps exploring small
            # offloads, and a saturated download head keeps flipping now and then
            eta_raw = eta_raw + noise * torch.randn_like(eta_raw)
            beta = beta + noise * torch.randn_like(beta)
        eta = eta_raw.clamp(0.0, 1.0)
        if straight_through:
            # [ours] the executed values forward, the smooth ones' gradients backward: a clipped eta
            # (an actor that went local) still learns that offloading pays, and the critics see the
            # executed download flag (0/1), like the straight-through Gumbel-softmax of xi
            eta = eta_raw + (eta - eta_raw).detach()
            beta = beta + ((beta >= 0.5).to(beta.dtype) - beta).detach()
        elif action_noise:
            beta = beta.clamp(0.0, 1.0)
        act = torch.cat([xi, eta, beta], dim=-1)
        return (act, out) if return_raw else act


def critic_input(obs: torch.Tensor, act: torch.Tensor, centralized: bool,
                 extra: torch.Tensor | None = None, cols: torch.Tensor | None = None,
                 own_obs: bool = False, loads: bool = False) -> torch.Tensor:
    """obs (B, M, o), act (B, M, a) or per-critic joint actions (M, B, M, a) -> (M, B, critic_in).
    ``extra`` (B, e): the rest of the global state (the caches), appended to s for centralized critics.
    ``cols``: the observation columns the critics read (None: all). ``own_obs``: centralized critic j reads
    its own ED's observation, the caches and every agent's action (not the other EDs' observations).
    ``loads`` (with ``own_obs``): instead of every agent's action, critic j reads its own action and the
    others' load on each ES (sum of their one-hot xi, and of xi times eta): agent j's cost depends on the
    others only through K_n of its ES (spec 7.2), so this is the joint action's sufficient statistic."""
    if cols is not None:
        obs = obs.index_select(-1, cols)
    B, M = obs.shape[:2]
    if act.dim() == 3:
        act = act.unsqueeze(0).expand(M, B, M, act.shape[-1])
    if centralized and own_obs and loads:  # Q_j(o_j, a_j, loads of the others, caches)
        N = act.shape[-1] - 2
        own = torch.arange(M)
        mine = act[own, :, own]  # (M, B, a)
        xi, eta = act[..., :N], act[..., N:N + 1]
        load = xi.sum(2) - mine[..., :N]  # (M, B, N)
        work = (xi * eta).sum(2) - mine[..., :N] * mine[..., N:N + 1]
        parts = [obs.transpose(0, 1), mine, load, work]
        if extra is not None and extra.shape[-1]:
            parts.append(extra.unsqueeze(0).expand(M, B, -1))
        return torch.cat(parts, dim=-1)
    if centralized and own_obs:  # Q_j(o_j, caches, a_1..a_M)
        parts = [obs.transpose(0, 1)]
        if extra is not None and extra.shape[-1]:
            parts.append(extra.unsqueeze(0).expand(M, B, -1))
        return torch.cat(parts + [act.reshape(M, B, -1)], dim=-1)
    if centralized:  # Q_m(s, a_1..a_M): every agent's observation (and the caches) and action
        s = obs.reshape(B, -1) if extra is None or extra.shape[-1] == 0 else torch.cat([obs.reshape(B, -1), extra], -1)
        return torch.cat([s.unsqueeze(0).expand(M, B, -1), act.reshape(M, B, -1)], dim=-1)
    own = torch.arange(M)
    return torch.cat([obs.transpose(0, 1), act[own, :, own]], dim=-1)  # Q_m(o_m, a_m)


def to_decision(action: np.ndarray, view: OffloadView) -> OffloadDecision:
    """Actions (M, N + 2) -> MATO decision, as ``MatoEnv.decision``: xi = argmax, eta = 0 means local."""
    N = action.shape[1] - 2
    eta = np.clip(action[:, N].astype(np.float64), 0.0, 1.0)
    target = np.where(eta > 0, 1 + np.argmax(action[:, :N], axis=1), 0)
    download = (action[:, N + 1] >= 0.5) if view.has_download else None
    return OffloadDecision(target=target.astype(np.int64), share=eta, download=download)


CONSTANT_OBS_FIELDS = ("edge_cpu_ghz", "server_xy_m", "cloud_xy_m")  # fixed by the preset, never vary


def critic_obs_columns(sim) -> torch.Tensor:
    """Indices of the observation columns that can vary (all but CONSTANT_OBS_FIELDS)."""
    cols, start = [], 0
    for f in sim.OBS_LAYOUT:
        if f.name not in CONSTANT_OBS_FIELDS:
            cols += range(start, start + f.width)
        start += f.width
    return torch.tensor(cols, dtype=torch.long)


def decomposed_team_q(critic: torch.nn.Module, x: torch.Tensor, cur: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """sum_j Q_j(s, a) with agent m's buffer action replaced by ``cur[m]``, for every m: (M, B).

    ``x`` (M, B, in) is the critics' input with every buffer action (the joint action is its last M a
    columns); ``cur`` (M, B, a) the actors' actions, ``act`` (B, M, a) the buffer's. The critics' first
    layer is linear, so swapping one agent's action adds ``(cur_m - act_m) W_j[rows of m]`` to the
    pre-activation: all M x M (critic, swapped agent) pairs cost one pass of the hidden layers."""
    layers = list(critic.net)
    first = layers[0]
    Mc, B, _ = x.shape
    M, _, a = cur.shape
    base = torch.baddbmm(first.bias, x, first.weight)  # (Mc, B, H)
    w_act = first.weight[:, -M * a:, :].reshape(Mc, M, a, -1)  # (Mc, M, a, H)
    delta = cur - act.transpose(0, 1)  # (M, B, a): nonzero only through the actors' outputs
    h = base.unsqueeze(1) + torch.einsum("mba,jmah->jmbh", delta, w_act)  # (Mc, M, B, H)
    h = h.reshape(Mc, M * B, -1)
    for layer in layers[1:]:
        h = layer(h)
    return h.view(Mc, M, B).sum(0)


def cache_state_dim(sim) -> int:
    """Width of the cache part of the global state: N x L_max when the agents are model-aware, else 0."""
    from policies.scenarios.mato import MAX_MODEL_TYPES

    return sim.N * MAX_MODEL_TYPES if getattr(sim.preset, "model_aware", False) else 0


def cache_state(sim, width: int) -> np.ndarray:
    """The caches (N x L_max, 1 = held) at the start of the next step, flattened; empty if ``width`` is 0."""
    if width == 0:
        return np.zeros(0, dtype=np.float32)
    c = np.zeros((sim.N, width // sim.N), dtype=np.float32)
    c[:, : sim.cache.shape[1]] = sim.cache
    return c.ravel()


# -- training ------------------------------------------------------------------------------------
def train(algo: str, sim, preset_name: str, cfg: Config, seed: int, out: Path, command: list[str],
          progress: bool | None = None) -> dict:
    """Train (or resume) into ``out``; returns the last episode's metrics row."""
    M, N, T = sim.M, sim.N, sim.T
    obs_dim, act_dim = sim.obs_dim(), N + 2
    resolved, ckpt = common.start_run(algo, sim, preset_name, cfg, seed, out, command, obs_dim=obs_dim, act_dim=act_dim,
                                    num_agents=M)

    common.seed_everything(seed)
    torch.set_num_threads(cfg.torch_threads)
    np_rng = np.random.default_rng(seed)  # replay sampling
    actor = Actors(M, obs_dim, N, cfg.hidden, cfg.download_bias)
    # spec 3: s = (o_1..o_M, cache matrix N x L_max); NoModel's s has no caches (spec 4)
    state_dim = cache_state_dim(sim) if (cfg.centralized_critic and cfg.critic_sees_caches) else 0
    cols = critic_obs_columns(sim) if cfg.critic_skip_constant_obs else None
    c_obs = obs_dim if cols is None else len(cols)
    if cfg.centralized_critic and cfg.critic_own_obs and cfg.critic_loads:
        critic_in = c_obs + act_dim + 2 * N + state_dim
    elif cfg.centralized_critic:
        critic_in = (c_obs if cfg.critic_own_obs else M * c_obs) + M * act_dim + state_dim
    else:
        critic_in = c_obs + act_dim
    critic = common.AgentMLP(M, critic_in, 1, (cfg.hidden, cfg.hidden))
    actor_t, critic_t = Actors(M, obs_dim, N, cfg.hidden), common.AgentMLP(M, critic_in, 1, (cfg.hidden, cfg.hidden))
    actor_t.load_state_dict(actor.state_dict())
    critic_t.load_state_dict(critic.state_dict())
    actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.lr_actor)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr_critic)
    sparse = bool(getattr(sim, "sparse_agents", False))  # agents act only when they have a task (factory)
    shapes = {"obs": (M, obs_dim), "act": (M, act_dim), "rew": (M,), "next_obs": (M, obs_dim), "state": (state_dim,),
              "next_state": (state_dim,)}
    if sparse:
        shapes.update(active=(M,), next_active=(M,))
    buffer = common.ReplayBuffer(cfg.buffer_size, shapes)
    start, global_step = 0, 0
    reward_stats: list[float] | None = None  # (mu, sd) of the critics' reward, frozen at the first update
    if ckpt is not None:
        for mod, key in ((actor, "actor"), (critic, "critic"), (actor_t, "actor_target"),
                         (critic_t, "critic_target"), (actor_opt, "actor_opt"), (critic_opt, "critic_opt")):
            mod.load_state_dict(ckpt[key])
        buffer.load_state_dict(ckpt["buffer"])
        common.set_rng_state(ckpt["rng"], np_rng)
        start, global_step = int(ckpt["episode"]), int(ckpt["global_step"])
        reward_stats = ckpt.get("reward_stats")

    def checkpoint(episode: int) -> None:
        common.save_checkpoint(out, {
            "resolved": resolved, "episode": episode, "global_step": global_step,
            "actor": actor.state_dict(), "critic": critic.state_dict(), "actor_target": actor_t.state_dict(),
            "critic_target": critic_t.state_dict(), "actor_opt": actor_opt.state_dict(),
            "critic_opt": critic_opt.state_dict(), "buffer": buffer.state_dict(), "rng": common.rng_state(np_rng),
            "reward_stats": reward_stats})

    reward_mode = getattr(sim.preset, "reward_mode", "team")  # a scenario without the switch has a team reward
    per_term = cfg.centralized_critic and cfg.team_critics_per_term and reward_mode != "individual"
    if cfg.actor_objective not in ("own", "team", "team_joint"):
        raise UserError(f"--set actor_objective={cfg.actor_objective!r}: expected own, team or team_joint")
    if per_term and cfg.actor_objective != "own" and cfg.critic_loads:
        raise UserError("actor_objective team/team_joint needs critic_loads=false (the critics' last columns must be "
                        "the joint action)")
    if sparse and per_term and cfg.actor_objective != "own":
        raise UserError(f"--set actor_objective={cfg.actor_objective!r}: agents that act only with a task support "
                        "actor_objective own")

    def update() -> tuple[float, float]:
        nonlocal reward_stats
        if reward_stats is None:
            r = buffer.data["rew"][: len(buffer)]
            reward_stats = [float(r.mean()), float(r.std()) + 1e-6] if cfg.reward_normalize else [0.0, 1.0]
        b = buffer.sample(np_rng, cfg.batch_size)
        obs, act, nobs = b["obs"], b["act"], b["next_obs"]
        rew = (b["rew"] - reward_stats[0]) / reward_stats[1]
        st, nst = b["state"], b["next_state"]
        with torch.no_grad():  # eq. 19: y = r + gamma Q'_m(s', a'_1..a'_M), a'_j = v'_j(o'_j)
            next_act = actor_t(nobs.transpose(0, 1), straight_through=cfg.straight_through).transpose(0, 1)
            if sparse:  # an agent idle at s' takes no action there
                next_act = next_act * b["next_active"].unsqueeze(-1)
            y = cfg.reward_scale * rew.T.unsqueeze(-1) + cfg.gamma * critic_t(
                critic_input(nobs, next_act, cfg.centralized_critic, nst, cols, cfg.critic_own_obs, cfg.critic_loads))
        q = critic(critic_input(obs, act, cfg.centralized_critic, st, cols, cfg.critic_own_obs, cfg.critic_loads))
        critic_loss = (q - y).pow(2).mean(dim=(1, 2)).sum()  # eq. 20, summed over the independent critics
        critic_opt.zero_grad()
        critic_loss.backward()
        common.clip_grad_norm_per_agent(critic, cfg.max_grad_norm)
        critic_opt.step()
        # eq. 21: agent m's own action from its actor, the others' from the buffer
        cur, raw = actor(obs.transpose(0, 1), gumbel_tau=cfg.gumbel_tau, straight_through=cfg.straight_through,
                         return_raw=True)  # (M, B, a)
        if per_term and cfg.actor_objective == "team_joint":  # team Q = sum_j Q_j(s, v_1(o_1)..v_M(o_M)): one pass
            x = critic_input(obs, cur.transpose(0, 1), True, st, cols, cfg.critic_own_obs)
            actor_loss = -critic(x).sum(dim=0).mean()
        elif per_term and cfg.actor_objective == "team":  # team Q = sum_j Q_j(s, a_1..a_m <- v_m(o_m)..a_M), for every m
            x = critic_input(obs, act, True, st, cols, cfg.critic_own_obs)
            actor_loss = -decomposed_team_q(critic, x, cur, act).mean(dim=1).sum()
        else:
            own = torch.eye(M, dtype=torch.bool).view(M, 1, M, 1)
            joint = torch.where(own, cur.unsqueeze(2), act.unsqueeze(0))  # (M, B, M, a)
            q_own = critic(critic_input(obs, joint, cfg.centralized_critic, st, cols, cfg.critic_own_obs, cfg.critic_loads))
            if sparse:  # actor m learns from the samples where agent m had a task
                w = b["active"].T.unsqueeze(-1)  # (M, B, 1)
                actor_loss = -((q_own * w).sum(dim=(1, 2)) / w.sum(dim=(1, 2)).clamp(min=1.0)).sum()
            else:
                actor_loss = -q_own.mean(dim=(1, 2)).sum()
        if cfg.action_reg > 0:  # keeps the logits and pre-activations out of saturation
            actor_loss = actor_loss + cfg.action_reg * raw.pow(2).mean(dim=(1, 2)).sum()
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
    individual = reward_mode == "individual"
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
            state = cache_state(sim, state_dim)
            losses = []
            for t in range(T):
                with torch.no_grad():
                    a = actor(torch.from_numpy(obs).unsqueeze(1), gumbel_tau=cfg.gumbel_tau, noise=noise,
                              straight_through=cfg.straight_through, action_noise=cfg.action_noise)[:, 0]
                a = a.numpy()
                if sparse:
                    active = (sim.view().features["has_task"] > 0).astype(np.float32)
                    a = a * active[:, None]  # an idle agent makes no decision (stored as a zero action)
                sim.step(to_decision(a, sim.view()))
                per_agent = -sim.task_cost[t]
                if individual or per_term:  # each ED's own term (SADDPG; or the per-term team critics)
                    rew = per_agent
                else:
                    rew = np.full(M, per_agent.sum() / (M if cfg.team_reward_per_agent else 1))
                # at the time limit there is no next task: bootstrap (truncation, spec 5) from the last
                # observation as a stand-in state of the same distribution [ours]
                next_obs = obs if sim.done else sim.observation(sim.view())
                extra = {}
                if sparse:
                    next_active = active if sim.done else (sim.view().features["has_task"] > 0).astype(np.float32)
                    extra = {"active": active, "next_active": next_active}
                next_state = cache_state(sim, state_dim)
                buffer.add(obs=obs, act=a, rew=rew, next_obs=next_obs, state=state, next_state=next_state, **extra)
                obs, state = next_obs, next_state
                global_step += 1
                if len(buffer) >= max(cfg.learning_starts, 1) and global_step % max(cfg.update_every, 1) == 0:
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
