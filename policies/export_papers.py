"""Exporters of the papers' deployable actors (used by ``aigc-offload export``, policies/export.py).

A run directory is turned into the trainer's own trained policy (``load_policy`` of the algorithm's
module, the same object ``evaluate --policies run:DIR`` uses) and from it into an
:class:`~policies.export.ActorExport`: the graph module, the contract entries and the parity
reference. Every kind keeps its post-processing in the runtime's decoders:

- **GMEL** (AMARL and the GMEL baselines: one actor or Q-network shared by every IED) and the greedy
  AIECOF baselines: ``obs -> scores``, decoder ``argmax_target``. The AIECOF actor-critics (which act
  by sampling) get decoder ``categorical_target`` with the modes ``deterministic`` and ``sample``.
- **TOPPO** (AIECOF): ``(obs, h, c) -> (logits, h', c')``, the LSTM state as explicit graph inputs and
  outputs kept per device by the runtime; decoder ``categorical_target`` (argmax, or the inverse-CDF
  draw ``common.sample_rows`` makes with one float64 uniform per row).
- **LAD-TS** (and D2SAC-TS, SAC-TS, DQN-TS: one agent per base station, stacked, input ``agent``
  selects the station's weights): the I denoising steps unrolled in the graph,
  ``(obs, agent, latent, noise) -> (pi, latent')``; the latent action probability is state kept per
  (slot, station, task index) as the trainer's store, starting from the trained store (a table in the
  file); the chain's Gaussian noise is an explicit input (zeros in the deterministic mode).
- **TD3 / DDPG** (EdgeAIGC): ``obs -> tanh scores``; the runtime decoder ``edgeaigc_projection``
  projects them onto the storage and share constraints with the scenario's own projection, so every
  decision that leaves the runtime is feasible.
- **The papers' learners on the factory** (``policies/train/factory_agents.py``): MADDPG-MATO's device
  actors stacked as MATO's (input ``agent``), decoder ``mato_maddpg`` over the factory's targets (the
  "servers" are edge0..edgeN-1 and the cloud; the download flag only for an edge server); AMARL's shared
  actor ``obs -> scores`` and TOPPO's LSTM actor ``(obs, h, c) -> (scores, h', c')`` over the factory's
  joint alternatives ``sim.candidates()`` (target x share level x download), decoder ``factory_alternatives``.

Parity references (``ActorExport.rollout``) drive the trainer's policy object itself, with the
runtime's noise inputs and uniform draws replayed into it (:class:`_Draws`) and its network calls
recorded (:class:`_Recorder`), so the comparison is against the code the trainer evaluates with.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policies.errors import UserError
from policies.export import ActorExport, StackedAgentActors
from policies.scenarios.base import OffloadDecision


# -- helpers ---------------------------------------------------------------------------------------------
class _Draws:
    """A ``numpy.random.Generator`` stand-in that hands the trainer's sampling code the draws the
    runtime made (its noise inputs in order, then its uniforms), so both sides use the same numbers."""

    def __init__(self, normals: list[np.ndarray] | None = None, uniform: np.ndarray | None = None):
        self.normals = list(normals or [])
        self.uniform = uniform

    def standard_normal(self, shape, dtype=np.float64):
        if not self.normals:
            raise RuntimeError("the reference drew more normals than the runtime fed")
        x = self.normals.pop(0)
        if tuple(np.shape(x)) != tuple(np.atleast_1d(shape)):
            raise RuntimeError(f"the reference drew normals of shape {shape}, the runtime fed {np.shape(x)}")
        return np.asarray(x, dtype=dtype)

    def random(self, shape=None, dtype=np.float64):
        if self.uniform is None:
            raise RuntimeError("the reference drew uniforms, the runtime did not")
        u, self.uniform = self.uniform, None
        if u.size != int(np.prod(shape)):
            raise RuntimeError(f"the reference drew {shape} uniforms, the runtime {u.shape}")
        return np.asarray(u, dtype=dtype).reshape(shape)


class _Recorder:
    """Wraps a network so a trainer's policy calls it as usual; ``last`` holds its last output."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.last: Any = None

    def __call__(self, *args, **kwargs):
        self.last = self.module(*args, **kwargs)
        return self.last

    def __getattr__(self, name: str):
        return getattr(self.module, name)


def target_names(sim) -> list[str]:
    names = getattr(sim, "target_names", None)
    if names is None:
        names = getattr(importlib.import_module(type(sim).__module__), "TARGET_NAMES", None)
    if names is None:
        raise UserError(f"scenario '{sim.name}' names no decision targets")
    return list(names)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy()


def _hidden(module: nn.Module) -> str:
    return "-".join(str(m.out_features) for m in module.modules() if isinstance(m, nn.Linear))


SAMPLE_RULE = ("target = min(#{k: cdf_k < u * cdf_last}, K - 1), cdf = cumsum(p), one U[0, 1) draw u per row "
               "from the policy's seeded rng")


# -- GMEL (AMARL, baselines) and the greedy / sampling AIECOF baselines: obs -> scores -------------------
def scorer_export(net: nn.Module, sim, algorithm: str, sampled: bool = False, policy=None) -> ActorExport:
    """A network mapping one observation row to one score per target (logits or Q-values).
    Greedy (``sampled`` False): decoder ``argmax_target``, as ``amarl.TrainedPolicy`` /
    ``common.ArgmaxTargetPolicy``. Sampling (``common.SampledTargetPolicy``): modes deterministic and sample."""
    net = net.eval()
    D, names = sim.obs_dim(), target_names(sim)
    K = len(names)

    def reference(obs: np.ndarray, source: np.ndarray, view) -> tuple[np.ndarray, OffloadDecision]:
        with torch.inference_mode():
            out = net(torch.from_numpy(np.ascontiguousarray(obs, dtype=np.float32)))
        return _np(out), OffloadDecision(target=_np(out.argmax(-1)).astype(np.int64))

    modes = {"deterministic": "target = argmax of the scores"}
    action = {"decoder": "categorical_target" if sampled else "argmax_target", "output": "actor_out", "targets": names,
              "params": {"output": "logits"},
              "layout": [{"name": "target_scores", "start": 0, "width": K, "doc": "over " + ", ".join(names)}],
              "postprocess": "target = argmax over the targets the view allows (no share, no download flag)",
              "share": None}
    rollout = None  # greedy: the batched parity check (reference)
    if sampled:
        modes["sample"] = "target ~ softmax(logits) in float64 (common.sample_rows): " + SAMPLE_RULE
        action["sampling"] = {"uniform": {"dtype": "float64", "shape": ["batch"]}, "rule": SAMPLE_RULE,
                              "probabilities": "softmax of the logits in float64"}
        action["postprocess"] += "; mode sample: the inverse-CDF draw of softmax(logits)"

        def sampled_reference(mode: str, psim) -> Any:
            return _SampledScorerReference(policy, net, psim, mode)

        rollout = sampled_reference

    return ActorExport(
        graph=net, inputs=[{"name": "obs", "role": "observation", "shape": ["batch", D], "dtype": "float32"}],
        out_dim=K, action=action, algorithm=algorithm,
        network=f"{type(net).__name__} {D}-...-{K} ({_hidden(net)}), one network shared by every device",
        reference=reference, modes=modes, evaluated_mode="sample" if sampled else "deterministic", rollout=rollout)


class _SampledScorerReference:
    def __init__(self, policy, net: nn.Module, sim, mode: str):
        from policies.train import common

        cls = common.SampledTargetPolicy if mode == "sample" else common.ArgmaxTargetPolicy
        self.rec = _Recorder(net)
        self.pol = cls(getattr(policy, "name", "reference"), sim, getattr(policy, "resolved", {}), net)
        self.pol.score = self.rec

    def reset(self) -> None:
        self.pol.reset(_Draws())

    def step(self, view, feeds: dict, uniform: np.ndarray | None):
        self.pol.rng = _Draws(uniform=uniform)
        dec = self.pol.decide(view)
        return {"actor_out": _np(self.rec.last)}, dec


# -- TOPPO: the LSTM actor with its state as graph inputs and outputs -------------------------------------
class LstmActorStep(nn.Module):
    """``toppo.ActorLSTM`` one decision per row: (obs [B, D], h [B, H], c [B, H]) -> (logits, h', c')."""

    def __init__(self, actor: nn.Module):
        super().__init__()
        self.actor = actor

    def forward(self, obs: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        return self.actor(obs, h, c)


def lstm_contract(obs_dim: int, hidden: int) -> tuple[list[dict], list[dict]]:
    """Contract ``inputs`` and ``state`` of a per-device LSTM actor (TOPPO): observation, h and c in;
    h and c kept per device (view.source) between decisions, zeros at an episode start."""
    D, H = obs_dim, hidden
    state_doc = "{} of the device's LSTM after its previous decision (zeros at an episode start)"
    inputs = [{"name": "obs", "role": "observation", "shape": ["batch", D], "dtype": "float32"},
              {"name": "h_in", "role": "state", "shape": ["batch", H], "dtype": "float32",
               "doc": state_doc.format("hidden state h")},
              {"name": "c_in", "role": "state", "shape": ["batch", H], "dtype": "float32",
               "doc": state_doc.format("cell state c")}]
    state = [{"input": f"{x}_in", "output": f"{x}_out", "shape": [H], "dtype": "float32", "init_value": 0.0,
              "key": "source", "doc": f"LSTM {x} per device (view.source), carried from its previous decision"}
             for x in ("h", "c")]
    return inputs, state


def toppo_export(policy, sim, algorithm: str) -> ActorExport:
    """TOPPO's ``ActorLSTM`` (toppo.TrainedPolicy): LSTM state (h, c) per device, zero at an episode start."""
    actor = policy.actor.eval()
    D, names = sim.obs_dim(), target_names(sim)
    K, H = len(names), int(actor.lstm_hidden)
    inputs, state = lstm_contract(D, H)
    modes = {"deterministic": "target = argmax of the logits (toppo eval_sample = false)",
             "sample": "target ~ softmax(logits) in float64 (toppo.TrainedPolicy, Algorithm 1 line 8): " + SAMPLE_RULE}
    action = {"decoder": "categorical_target", "output": "actor_out", "targets": names, "params": {"output": "logits"},
              "sampling": {"uniform": {"dtype": "float64", "shape": ["batch"]}, "rule": SAMPLE_RULE,
                           "probabilities": "softmax of the logits in float64"},
              "layout": [{"name": "target_logits", "start": 0, "width": K, "doc": "over " + ", ".join(names)}],
              "postprocess": "mode deterministic: target = argmax(logits); mode sample: the inverse-CDF draw of "
                             "softmax(logits); targets the view marks infeasible are skipped",
              "share": None}

    def rollout(mode: str, psim) -> Any:
        return _ToppoReference(policy, psim, mode)

    return ActorExport(
        graph=LstmActorStep(actor).eval(), inputs=inputs, out_dim=K, action=action, algorithm=algorithm,
        network=f"LSTM({D} -> {H}), then [lstm_out, obs] -> MLP {H + D}-{_hidden(actor.fc)} (ReLU); "
                "one actor shared by every device, state (h, c) per device",
        reference=None, state=state, modes=modes, evaluated_mode="sample" if policy.sample else "deterministic",
        rollout=rollout)


class _ToppoReference:
    """``toppo.TrainedPolicy`` itself (its own per-device h, c), sampling with the runtime's uniforms."""

    def __init__(self, policy, sim, mode: str):
        from policies.train.toppo import TrainedPolicy

        self.pol = TrainedPolicy(policy.name, sim, policy.resolved, policy.actor.state_dict())
        self.pol.sample = mode == "sample"
        self.rec = _Recorder(self.pol.actor)
        self.pol.actor = self.rec

    def reset(self) -> None:
        self.pol.reset(_Draws())

    def step(self, view, feeds: dict, uniform: np.ndarray | None):
        self.pol.rng = _Draws(uniform=uniform)
        dec = self.pol.decide(view)
        logits, h, c = self.rec.last
        return {"actor_out": _np(logits), "h_out": _np(h), "c_out": _np(c)}, dec


# -- LAD-TS: the denoising chain inside the graph ----------------------------------------------------------
class StackedDenoisingActor(nn.Module):
    """``ladts.DenoisingActor`` (one network per base station, stacked) as one graph: row b runs the
    I reverse steps of station ``agent[b]`` (its weights gathered, one actor's work per row):

        for k = 0..I-1 (i = I - k): eps = softmax(MLP([x, SinusEmb(i - 1), s]))
                                     x = a_k x - b_k eps + std_k noise[:, k]   (std_{I-1} = 0)
        pi = softmax(x)

    Inputs (``names``, graph order): ``obs`` [B, D], ``agent`` [B], for LAD-TS ``latent_in`` [B, A]
    (the chain's start x_I: the stored latent action probability), ``noise`` [B, I-1, A] when I > 1
    (the chain's Gaussian noise of steps i = I..2), for D2SAC-TS ``x_start`` [B, A] (x_I ~ N(0, I)).
    Outputs: ``actor_out`` = pi [B, A] and, for LAD-TS, ``latent_out`` (what the trainer stores: pi,
    or x_0 with latent_store = x0)."""

    def __init__(self, actor: nn.Module, names: list[str], store: str | None):
        super().__init__()
        self.names, self.store = list(names), store
        self.A, self.T, self.steps, self.eps_softmax = actor.actions, actor.time_dim, actor.steps, actor.eps_softmax
        self.a, self.b, self.std = list(actor.a), list(actor.b), list(actor.std)
        self.fc1, self.fc2, self.fc3 = actor.fc1, actor.fc2, actor.fc3
        self.register_buffer("temb", actor.temb.clone())

    def forward(self, *args: torch.Tensor):
        x_in = dict(zip(self.names, args))
        obs, agent = x_in["obs"], x_in["agent"]
        x = x_in["latent_in"] if "latent_in" in x_in else x_in["x_start"]
        noise = x_in.get("noise")
        A, T = self.A, self.T
        w1, b1 = self.fc1.weight[agent], self.fc1.bias[agent]  # (B, A+T+D, H), (B, 1, H)
        w2, b2 = self.fc2.weight[agent], self.fc2.bias[agent]
        w3, b3 = self.fc3.weight[agent], self.fc3.bias[agent]
        s_part = torch.baddbmm(b1, obs.unsqueeze(1), w1[:, A + T:, :])  # (B, 1, H), once per chain
        t_part = torch.matmul(self.temb, w1[:, A:A + T, :])  # (B, I, H)
        w_x = w1[:, :A, :]
        x = x.unsqueeze(1)  # (B, 1, A)
        for k in range(self.steps):
            h = F.relu(torch.baddbmm(s_part + t_part[:, k:k + 1, :], x, w_x))
            h = F.relu(torch.baddbmm(b2, h, w2))
            eps = torch.baddbmm(b3, h, w3)
            if self.eps_softmax:
                eps = F.softmax(eps, dim=-1)
            x = self.a[k] * x - self.b[k] * eps
            if self.std[k] > 0.0:
                x = x + self.std[k] * noise[:, k:k + 1, :]
        pi = F.softmax(x, dim=-1)[:, 0]
        if self.store is None:
            return pi
        return pi, (pi if self.store == "probs" else x[:, 0]) * 1.0  # a distinct output tensor


class StackedSoftmax(nn.Module):
    """Per-station MLPs (``common.AgentMLP``) stacked, input ``agent`` selects one; optional softmax."""

    def __init__(self, mlp: nn.Module, softmax: bool):
        super().__init__()
        holder = nn.Module()
        holder.net = mlp
        self.inner = StackedAgentActors(holder, 0)
        self.softmax = softmax

    def forward(self, obs: torch.Tensor, agent: torch.Tensor) -> torch.Tensor:
        out = self.inner(obs, agent)
        return F.softmax(out, dim=-1) if self.softmax else out


def ladts_export(policy, sim, algorithm: str) -> ActorExport:
    """The per-station agents of a LAD-TS-family run (ladts.TrainedPolicy), stacked; see the module doc."""
    ag, cfg = policy.agents, policy.cfg
    A, D, names = int(ag.A), sim.obs_dim(), target_names(sim)
    I = int(cfg.denoising_steps)
    method = cfg.method
    inputs = [{"name": "obs", "role": "observation", "shape": ["batch", D], "dtype": "float32"},
              {"name": "agent", "role": "agent_index", "shape": ["batch"], "dtype": "int64", "count": A,
               "simulator_attribute": "B", "from": "view.source",
               "doc": f"base station 0..{A - 1} deciding the task: selects its agent's weights"}]
    state: list[dict] = []
    tables: dict[str, np.ndarray] = {}
    key = ["slot", "source", "index"] if cfg.latent_key == "slot_station_index" else ["source", "index"]
    if method in ("lad", "d2sac"):
        if method == "lad":
            inputs.append({"name": "latent_in", "role": "state", "shape": ["batch", A], "dtype": "float32",
                           "doc": "x_I: the latent action probability stored for the task's key (Sec. IV-A)"})
        if I > 1:
            inputs.append({"name": "noise", "role": "noise", "shape": ["batch", I - 1, A], "dtype": "float32",
                           "doc": "N(0, I) noise of the reverse steps i = I..2 (step i = 1 adds none)"})
        if method == "d2sac":
            inputs.append({"name": "x_start", "role": "noise", "shape": ["batch", A], "dtype": "float32",
                           "doc": "x_I ~ N(0, I), the chain's start (D2SAC-TS)"})
        store = cfg.latent_store if method == "lad" else None
        graph = StackedDenoisingActor(ag.actor, [i["name"] for i in inputs], store).eval()
        network = (f"{A} per-station denoising actors (LADN, Fig. 4), stacked: eps-network MLP "
                   f"{A + cfg.time_dim + D}-{cfg.hidden}-{cfg.hidden}-{A}{' softmax' if cfg.eps_softmax else ''}, "
                   f"I = {I} reverse steps unrolled in the graph (VP schedule beta {cfg.beta_min}..{cfg.beta_max})")
        if method == "lad":
            latent0 = policy.latent0.numpy() if policy.latent0 is not None else ag.latent.numpy()
            tables["latent_in"] = latent0.astype(np.float32)
            bounds = {"slot": "slots_per_episode", "source": "num_stations", "index": "tasks_max"}
            state.append({"input": "latent_in", "output": "latent_out", "shape": [A], "dtype": "float32",
                          "init_value": None, "key": key,
                          "init_table": {"index": key, "bounds": {k: bounds[k] for k in key}},
                          "doc": f"the latent action store X[{']['.join(key)}] of LAD-TS: read as the chain's start, "
                                 f"overwritten with the decision's {'pi' if store == 'probs' else 'x_0'}; starts from "
                                 "the trained store at every episode (reset)"})
        modes = {"deterministic": "chain noise zeros, target = argmax pi (ladts eval_action = deterministic)",
                 "argmax": "chain noise N(0, I) from the policy's rng, target = argmax pi (eq. 8)",
                 "sample": "chain noise N(0, I), target ~ pi in float32 (ladts.Agents.act): " + SAMPLE_RULE}
        evaluated = cfg.eval_action
    elif method == "sac":
        graph = StackedSoftmax(ag.actor.net, softmax=True).eval()
        network = f"{A} per-station MLPs {D}-{cfg.hidden}-{cfg.hidden}-{A} (ReLU) + softmax, stacked"
        modes = {"deterministic": "target = argmax pi",
                 "sample": "target ~ pi in float32 (ladts.Agents.act): " + SAMPLE_RULE}
        evaluated = "sample" if cfg.eval_action == "sample" else "deterministic"
    elif method == "dqn":
        graph = StackedSoftmax(ag.qnet, softmax=False).eval()
        network = f"{A} per-station Q-networks {D}-{cfg.hidden}-{cfg.hidden}-{A} (ReLU), stacked"
        modes = {"deterministic": "target = argmax Q (greedy, DQN-TS)"}
        evaluated = "deterministic"
    else:
        raise UserError(f"LAD-TS method {method!r} has no exporter")
    stochastic = method != "dqn"
    action = {"decoder": "categorical_target" if stochastic else "argmax_target", "output": "actor_out",
              "targets": names, "params": {"output": "probabilities" if stochastic else "logits"},
              "layout": [{"name": "pi" if stochastic else "q_values", "start": 0, "width": A,
                          "doc": "over the edge servers " + ", ".join(names)}],
              "postprocess": ("modes deterministic/argmax: target = argmax pi; mode sample: target ~ pi (inverse CDF, "
                              "float32)" if stochastic else "target = argmax Q"),
              "share": None}
    if "sample" in modes:
        action["sampling"] = {"uniform": {"dtype": "float32", "shape": ["batch", 1]}, "rule": SAMPLE_RULE,
                              "probabilities": "the graph's pi, cumsum in float32"}
    outputs = state

    def rollout(mode: str, psim) -> Any:
        return _LadtsReference(policy, psim, mode, [i["name"] for i in inputs if i["role"] == "noise"])

    return ActorExport(graph=graph, inputs=inputs, out_dim=A, action=action, algorithm=algorithm, network=network,
                       reference=None, state=outputs, state_tables=tables, modes=modes, evaluated_mode=evaluated,
                       rollout=rollout)


class _LadtsReference:
    """``ladts.TrainedPolicy`` itself (its own latent store, reset to the trained one every episode), in
    the given mode, with the runtime's chain noise and uniforms replayed."""

    def __init__(self, policy, sim, mode: str, noise_inputs: list[str]):
        from policies.train.ladts import TrainedPolicy

        ag = policy.agents
        state = {k: m.state_dict() for k, m in ag.modules().items()}
        if policy.latent0 is not None:
            state["latent"] = policy.latent0.clone()
        self.pol = TrainedPolicy(policy.name, sim, policy.resolved, state, eval_action=mode)
        self.method = self.pol.cfg.method
        self.noise_inputs = noise_inputs if mode != "deterministic" else []
        attr = "qnet" if self.method == "dqn" else "actor"
        self.rec = _Recorder(getattr(self.pol.agents, attr))
        setattr(self.pol.agents, attr, self.rec)

    def reset(self) -> None:
        self.pol.reset(_Draws())

    def step(self, view, feeds: dict, uniform: np.ndarray | None):
        self.pol.rng = _Draws([feeds[name] for name in self.noise_inputs], uniform)
        dec = self.pol.decide(view)
        src = torch.from_numpy(np.asarray(view.source, dtype=np.int64))
        idx = torch.from_numpy(np.asarray(view.features["index"], dtype=np.int64))
        out = self.rec.last
        if self.method == "dqn":
            return {"actor_out": _np(out[src, idx])}, dec
        pi, x0 = out[0][src, idx], out[1][src, idx]
        res = {"actor_out": _np(pi)}
        if self.method == "lad":
            res["latent_out"] = _np(pi if self.pol.cfg.latent_store == "probs" else x0)
        return res, dec


# -- TD3 / DDPG (EdgeAIGC): the actor, projected by the runtime -------------------------------------------
def td3_export(policy, sim, algorithm: str) -> ActorExport:
    """The EdgeAIGC actor (td3.TrainedPolicy): obs -> tanh scores; the runtime projects them onto
    constraints 18b-18g with the scenario's projection (decoder ``edgeaigc_projection``)."""
    actor = policy.actor.eval()
    p = sim.preset
    E, U, M, D = p.num_edges, p.num_users, p.num_models, sim.obs_dim()
    act_dim = p.action_dim
    action = {
        "decoder": "edgeaigc_projection", "output": "actor_out", "targets": None,
        "params": {"edges": E, "users": U, "models": M, "association": p.association, "share_floor": p.share_floor},
        "layout": [{"name": "beta_scores", "start": 0, "width": E * M, "doc": "cache score per (ES, model), row-major"},
                   {"name": "alpha_scores", "start": E * M, "width": E * U,
                    "doc": "uplink bandwidth share score per (ES, user), row-major"},
                   {"name": "compute_scores", "start": E * M + E * U, "width": E * U,
                    "doc": "compute share score L per (ES, user), row-major"}],
        "postprocess": ("x = (clip(a, -1, 1) + 1) / 2 in float64; per ES models in descending score cached when the "
                        "score is above 0.5 and the model fits the remaining storage (18b, 18e); association: among "
                        "the ES caching the user's model (all if none) the highest alpha score, ties to the larger path "
                        "gain ('action'; 'nearest': largest path gain); alpha and L zeroed where unused, floored at "
                        "share_floor, rows scaled down to sum <= 1 (18c, 18d, 18f, 18g): "
                        "policies.scenarios.edgeaigc.project_batch with the view's storage, sizes and distances"),
        "decision": "AllocationDecision(cache (E, M), bandwidth_share (E, U), compute_share (E, U), association (U,))",
        "share": "continuous"}

    def rollout(mode: str, psim) -> Any:
        return _Td3Reference(policy, psim)

    return ActorExport(
        graph=actor, inputs=[{"name": "obs", "role": "observation", "shape": ["batch", D], "dtype": "float32"}],
        out_dim=act_dim, action=action, algorithm=algorithm,
        network=f"MLP {D}-{_hidden(actor)} (ReLU) + tanh; projection in the runtime", reference=None,
        modes={"deterministic": "the actor's tanh scores, projected (no exploration noise)"},
        evaluated_mode="deterministic", rollout=rollout)


class _Td3Reference:
    """``td3.TrainedPolicy`` itself: the actor and ``AllocationProjection`` in torch (``DeployedPolicy``)."""

    def __init__(self, policy, sim):
        from policies.train.td3 import TrainedPolicy

        self.pol = TrainedPolicy(policy.name, sim, policy.resolved, policy.actor.state_dict())

    def reset(self) -> None:
        self.pol.reset(_Draws())

    def step(self, view, feeds: dict, uniform: np.ndarray | None):
        with torch.inference_mode():
            raw = self.pol.actor(torch.from_numpy(feeds["obs"]))
        return {"actor_out": _np(raw)}, self.pol.decide(view)


# -- the papers' learners on the factory (factory_agents.py) -----------------------------------------------
def _alternatives_action(sim, sampled: bool) -> dict:
    """The contract ``action`` of an actor scoring the factory's joint alternatives (``sim.candidates()``)."""
    tg, sh, dl = sim.candidates()
    names = list(sim.target_names)
    C = int(tg.size)
    action = {"decoder": "factory_alternatives", "output": "actor_out", "targets": names,
              "params": {"output": "logits",
                         "alternatives": {"target": [int(v) for v in tg], "share": [float(v) for v in sh],
                                          "download": [bool(v) for v in dl]}},
              "layout": [{"name": "alternative_scores", "start": 0, "width": C,
                          "doc": "one score per alternative of params.alternatives (local; edge n x share level x "
                                 "download; cloud x share level)"}],
              "postprocess": ("alternative = argmax of the scores over the alternatives whose target the view allows"
                              + ("; mode sample: the inverse-CDF draw of softmax(scores) over them" if sampled else "")
                              + "; decision = the alternative's (target, share, download), as "
                                "FactoryAdapter.candidate_decision"),
              "share": "levels"}
    if sampled:
        action["sampling"] = {"uniform": {"dtype": "float64", "shape": ["batch"]}, "rule": SAMPLE_RULE,
                              "probabilities": "softmax of the scores in float64"}
    return action


def factory_amarl_export(policy, sim, algorithm: str) -> ActorExport:
    """AMARL on the factory (``factory_agents.CandidatePolicy`` over ``amarl.TrainedPolicy``): the shared actor,
    obs -> one logit per alternative; argmax, booked as the alternative's (target, share, download)."""
    net = policy.inner.net.eval()
    adapter = policy.adapter
    D, C = sim.obs_dim(), adapter.num_candidates

    def reference(obs: np.ndarray, source: np.ndarray, view) -> tuple[np.ndarray, OffloadDecision]:
        with torch.inference_mode():
            out = net(torch.from_numpy(np.ascontiguousarray(obs, dtype=np.float32)))
        return _np(out), adapter.candidate_decision(_np(out.argmax(-1)).astype(np.int64))

    return ActorExport(
        graph=net, inputs=[{"name": "obs", "role": "observation", "shape": ["batch", D], "dtype": "float32"}],
        out_dim=C, action=_alternatives_action(sim, sampled=False), algorithm=algorithm,
        network=f"{type(net).__name__} {D}-{_hidden(net)} (ReLU), one actor shared by every device, one logit per "
                f"alternative ({C})",
        reference=reference, modes={"deterministic": "alternative = argmax of the logits (amarl.TrainedPolicy)"},
        evaluated_mode="deterministic")


def factory_toppo_export(policy, sim, algorithm: str) -> ActorExport:
    """TOPPO on the factory (``factory_agents.CandidatePolicy`` over ``toppo.TrainedPolicy``): the shared
    ``ActorLSTM`` with (h, c) per device, one logit per alternative."""
    inner = policy.inner
    actor = inner.actor.eval()
    D, C, H = sim.obs_dim(), policy.adapter.num_candidates, int(actor.lstm_hidden)
    inputs, state = lstm_contract(D, H)
    modes = {"deterministic": "alternative = argmax of the logits (factory_toppo eval_sample = false)",
             "sample": "alternative ~ softmax(logits) in float64 (toppo.TrainedPolicy, Algorithm 1 line 8): "
                       + SAMPLE_RULE}

    def rollout(mode: str, psim) -> Any:
        return _FactoryToppoReference(policy, psim, mode)

    return ActorExport(
        graph=LstmActorStep(actor).eval(), inputs=inputs, out_dim=C, action=_alternatives_action(sim, sampled=True),
        algorithm=algorithm,
        network=f"LSTM({D} -> {H}), then [lstm_out, obs] -> MLP {H + D}-{_hidden(actor.fc)} (ReLU), one logit per "
                f"alternative ({C}); one actor shared by every device, state (h, c) per device",
        reference=None, state=state, modes=modes, evaluated_mode="sample" if inner.sample else "deterministic",
        rollout=rollout)


class _FactoryToppoReference:
    """The run's own policy (``factory_agents.load_toppo``: ``CandidatePolicy`` over ``toppo.TrainedPolicy`` on
    the ``AiecofProtocol`` adapter, its own per-device h, c), sampling with the runtime's uniforms."""

    def __init__(self, policy, sim, mode: str):
        from policies.train.factory_agents import AiecofProtocol, CandidatePolicy
        from policies.train.toppo import TrainedPolicy

        inner = TrainedPolicy(policy.name, AiecofProtocol(sim), policy.inner.resolved, policy.inner.actor.state_dict())
        inner.sample = mode == "sample"
        self.rec = _Recorder(inner.actor)
        inner.actor = self.rec
        self.inner = inner
        self.pol = CandidatePolicy(policy.name, sim, inner)

    def reset(self) -> None:
        self.pol.reset(_Draws())

    def step(self, view, feeds: dict, uniform: np.ndarray | None):
        self.inner.rng = _Draws(uniform=uniform)
        dec = self.pol.decide(view)
        logits, h, c = self.rec.last
        return {"actor_out": _np(logits), "h_out": _np(h), "c_out": _np(c)}, dec


def factory_maddpg_export(policy, sim, algorithm: str) -> ActorExport:
    """MADDPG-MATO on the factory (``factory_agents.MaddpgFactoryPolicy``): one actor per device, stacked as
    MATO's (input ``agent`` = ``view.source``); MATO's eq. 17 action over the factory's remote targets."""
    from policies.export import StackedAgentActors
    from policies.train import maddpg

    actors = policy.actor.eval()
    M, D, K = int(policy.M), sim.obs_dim(), sim.K
    N = K - 1  # the "servers": edge0..edge{N_edges-1}, cloud
    names = list(sim.target_names)
    edges = [i for i, n in enumerate(names) if n.startswith("edge")]
    graph = StackedAgentActors(actors, M).eval()
    hidden = [int(layer.weight.shape[2]) for layer in actors.net.net if hasattr(layer, "weight")][:-1]
    dl_targets = np.asarray(edges, dtype=np.int64)

    def reference(obs: np.ndarray, source: np.ndarray, view) -> tuple[np.ndarray, OffloadDecision]:
        x = torch.from_numpy(np.ascontiguousarray(obs, dtype=np.float32)).unsqueeze(0).expand(M, -1, -1)
        rows = torch.arange(obs.shape[0])
        src = torch.from_numpy(np.asarray(source, dtype=np.int64))
        with torch.inference_mode():
            raw = actors.net(x)[src, rows].numpy()
            act = actors(x)[src, rows].numpy()  # MaddpgFactoryPolicy's deterministic action
        dec = maddpg.to_decision(act, view)
        # the factory books the download flag only on an edge server (FactorySimulator: edge target & miss & flag)
        return raw, OffloadDecision(target=dec.target, share=dec.share,
                                    download=None if dec.download is None else dec.download & np.isin(dec.target,
                                                                                                      dl_targets))

    return ActorExport(
        graph=graph,
        inputs=[{"name": "obs", "role": "observation", "shape": ["batch", D], "dtype": "float32"},
                {"name": "agent", "role": "agent_index", "shape": ["batch"], "dtype": "int64", "count": M,
                 "simulator_attribute": "M", "from": "view.source",
                 "doc": f"device index 0..{M - 1}: selects that device's actor"}],
        out_dim=N + 2,
        action={
            "decoder": "mato_maddpg", "output": "actor_out", "targets": names,
            "params": {"servers": N, "eta_stretch": float(maddpg.ETA_STRETCH), "download_threshold": 0.5,
                       "download_targets": edges},
            "layout": [
                {"name": "server_logits", "start": 0, "width": N, "doc": "score of " + ", ".join(names[1:])},
                {"name": "eta_preactivation", "start": N, "width": 1, "doc": "offloaded share before squashing"},
                {"name": "download_preactivation", "start": N + 1, "width": 1, "doc": "model-download flag before sigmoid"},
            ],
            "postprocess": (f"remote = argmax(server_logits) over {', '.join(names[1:])}; eta = clip({maddpg.ETA_STRETCH} "
                            f"* sigmoid(eta_preactivation) - {(maddpg.ETA_STRETCH - 1) / 2:g}, 0, 1); target = 'local' if "
                            "eta == 0 else the remote target; offload_share = eta; download = sigmoid("
                            "download_preactivation) >= 0.5 and the target is an edge server"),
            "share": "continuous",
        },
        algorithm=algorithm,
        network=f"{M} per-device MLPs {D}-{'-'.join(map(str, hidden))}-{N + 2} (ReLU), stacked; input 'agent' selects one",
        reference=reference)


# -- dispatch ---------------------------------------------------------------------------------------------
def export_trained_policy(run_dir: str | Path, sim, resolved: dict, ckpt: dict) -> ActorExport:
    """The export spec of a run whose trainer's ``load_policy`` gives one of the kinds above."""
    from policies.train.registry import ALGOS

    algo = resolved.get("algo", "?")
    if algo not in ALGOS:
        raise UserError(f"run '{run_dir}' was trained with algo '{algo}', which this version does not know")
    try:
        mod = importlib.import_module(ALGOS[algo].module)
    except ModuleNotFoundError as exc:  # pragma: no cover - a trainer module missing from this install
        raise UserError(f"run '{run_dir}': trainer module {ALGOS[algo].module} is missing ({exc})") from None
    entry = getattr(ALGOS[algo], "entry", "")  # a namespace inside the module holding load_policy
    if entry:
        mod = getattr(mod, entry)
    policy = mod.load_policy(Path(run_dir).name, Path(run_dir), sim, resolved, ckpt)
    from policies.train import amarl, common, factory_agents, ladts, td3, toppo

    if isinstance(policy, factory_agents.MaddpgFactoryPolicy):
        return factory_maddpg_export(policy, sim, algo)
    if isinstance(policy, factory_agents.CandidatePolicy):
        if isinstance(policy.inner, toppo.TrainedPolicy):
            return factory_toppo_export(policy, sim, algo)
        if isinstance(policy.inner, amarl.TrainedPolicy):
            return factory_amarl_export(policy, sim, algo)
        raise UserError(f"run '{run_dir}' (algo '{algo}') chooses factory alternatives with a "
                        f"{type(policy.inner).__name__}, which has no exporter")
    if isinstance(policy, toppo.TrainedPolicy):
        return toppo_export(policy, sim, algo)
    if isinstance(policy, ladts.TrainedPolicy):
        return ladts_export(policy, sim, algo)
    if isinstance(policy, td3.TrainedPolicy):
        return td3_export(policy, sim, algo)
    if isinstance(policy, amarl.TrainedPolicy):
        return scorer_export(policy.net, sim, algo)
    if isinstance(policy, common.SampledTargetPolicy):
        return scorer_export(policy.score, sim, algo, sampled=True, policy=policy)
    if isinstance(policy, common.ArgmaxTargetPolicy):
        return scorer_export(policy.score, sim, algo)
    raise UserError(f"run '{run_dir}' (algo '{algo}', scenario '{resolved.get('scenario')}') has no exporter: its "
                    f"policy is a {type(policy).__name__}")
