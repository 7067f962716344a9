"""`aigc-offload export RUN_DIR --out FILE.onnx`: a trained actor as an ONNX file with its contract.

The only module of the deployment path that imports torch. The exported graph maps the observation
(float32 [batch, obs_dim], dynamic batch) and, where the contract says so, more inputs (the device
index selecting a per-device actor; later: recurrent state, noise) to the actor's *raw* outputs
(logits, pre-activations). Post-processing (argmax per head, share squashing and clipping, the
download threshold) is named in the contract's ``action`` entry and done by the runtime
(policies/runtime/decoders.py), so the same numbers leave torch and onnxruntime.

Exporter: torch's legacy TorchScript-based exporter (``dynamo=False``), opset 17, weights inside the
file (no ``.onnx.data``). One function per actor kind returns an :class:`ActorExport`: MATO and the
factory actor here, the papers' actors (AMARL and the GMEL/AIECOF baselines, TOPPO with its LSTM
state, the LAD-TS denoising actor with its latent state and noise, TD3 with the EdgeAIGC projection)
in ``policies/export_papers.py``.

MADDPG-MATO (and -NoModel, SADDPG): one file holds all M device actors, stacked. Input ``agent``
(int64 [batch]) is the device index (the view's ``source``); the graph evaluates every actor on the
observation and gathers the row of the asking device, so every device 0..M-1 is decidable.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import io
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from policies.config import preset_hash
from policies.errors import UserError
from policies.runtime.contract import CONTRACT_FORMAT, CONTRACT_KEY, CONTRACT_VERSION, layout_json
from policies.runtime.decoders import DECODER_VIEWS, DECODERS, DISCRETE_SHARE, discrete_key
from policies.runtime.policy import OnnxPolicy
from policies.scenarios.base import OffloadDecision, OffloadView

OPSET = 17
ROOT = Path(__file__).resolve().parent.parent
PARITY_MAX_ABS_DIFF = 1e-5
PARITY_MIN_AGREEMENT = 0.9999


# -- what one actor kind contributes ------------------------------------------------------------------
@dataclass
class ActorExport:
    """An actor ready to export: the graph module, its inputs, the action decoder, and the torch
    policy's own computation (for parity: raw outputs and decisions the way training code makes them)."""

    graph: nn.Module  # forward(*inputs in ``inputs`` order) -> raw output [batch, out_dim]
    inputs: list[dict[str, Any]]  # contract entries, in graph argument order
    out_dim: int
    action: dict[str, Any]  # contract "action" entry (decoder, params, targets, layout, postprocess)
    algorithm: str
    network: str  # one line: the architecture
    reference: Callable[[np.ndarray, np.ndarray, OffloadView], tuple[np.ndarray, OffloadDecision]] | None
    state: list[dict[str, Any]] = field(default_factory=list)
    output: str = "actor_out"
    # input name -> initial state table (indexed by the state's key components), written to the file
    state_tables: dict[str, np.ndarray] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=lambda: {"deterministic": "no noise; argmax heads"})
    evaluated_mode: str = "deterministic"  # the mode the trained policy's own evaluation acts in
    # Sequential parity (stateful, stochastic or allocation actors): (mode, sim) -> a torch reference
    # with reset() and step(view, feeds, uniform) -> ({graph output name: value}, decision), the
    # trained policy's own code carrying its own state and using the runtime's noise and uniform draws.
    rollout: Callable[[str, Any], Any] | None = None

    def example(self, n: int = 2) -> tuple[torch.Tensor, ...]:
        args = []
        for inp in self.inputs:
            if inp["role"] == "observation":
                args.append(torch.zeros(n, int(inp["shape"][1]), dtype=torch.float32))
            elif inp["role"] == "agent_index":
                args.append(torch.zeros(n, dtype=torch.int64))
            else:  # state and noise inputs: zeros of the per-row shape
                args.append(torch.zeros(n, *[int(d) for d in inp["shape"][1:]], dtype=torch.float32))
        return tuple(args)

    @property
    def output_names(self) -> list[str]:
        return [self.output] + [s["output"] for s in self.state]

    def torch_forward(self, obs: np.ndarray, source: np.ndarray) -> np.ndarray:
        """The graph module eagerly on numpy rows of a stateless, noise-free actor (what onnxruntime runs)."""
        feeds = {}
        for inp in self.inputs:
            if inp["role"] == "observation":
                feeds[inp["name"]] = np.ascontiguousarray(obs, dtype=np.float32)
            elif inp["role"] == "agent_index":
                feeds[inp["name"]] = np.asarray(source, dtype=np.int64)
            else:
                raise UserError(f"torch_forward cannot feed input role {inp['role']!r}; use torch_run with feeds")
        return self.torch_run([self.output], feeds)[0]

    def torch_run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph module eagerly on the runtime's feeds (by input name) -> the named outputs."""
        args = [torch.from_numpy(np.ascontiguousarray(feeds[i["name"]])) for i in self.inputs]
        with torch.inference_mode():
            out = self.graph(*args)
        named = dict(zip(self.output_names, out if isinstance(out, (tuple, list)) else (out,)))
        return [named[name].numpy() for name in output_names]


# -- MADDPG-MATO ----------------------------------------------------------------------------------------
class StackedAgentActors(nn.Module):
    """All M actors of ``maddpg.Actors`` as one graph: (obs [B, D], agent [B]) -> raw [B, N + 2]
    = the net output (server logits, eta and beta pre-activations) of actor ``agent[b]`` on ``obs[b]``.
    Each layer gathers the asking device's weights (ONNX Gather + MatMul): one actor's work per row,
    which keeps a single decision cheap (8 us instead of 19 us for evaluating all 10 actors)."""

    def __init__(self, actors: nn.Module, agents: int):
        super().__init__()
        self.net = actors.net  # common.AgentMLP, weights (M, in, out), biases (M, 1, out)
        self.agents = agents

    def forward(self, obs: torch.Tensor, agent: torch.Tensor) -> torch.Tensor:
        x = obs.unsqueeze(1)  # (B, 1, D)
        for layer in self.net.net:
            if hasattr(layer, "weight"):
                x = torch.baddbmm(layer.bias[agent], x, layer.weight[agent])
            else:
                x = layer(x)
        return x.squeeze(1)


def mato_export(actors: nn.Module, sim, algorithm: str) -> ActorExport:
    from policies.train import maddpg

    M, N, D = sim.M, sim.N, sim.obs_dim()
    from policies.scenarios.mato import TARGET_NAMES

    graph = StackedAgentActors(actors, M).eval()
    hidden = [int(layer.weight.shape[2]) for layer in actors.net.net if hasattr(layer, "weight")][:-1]

    def reference(obs: np.ndarray, source: np.ndarray, view: OffloadView) -> tuple[np.ndarray, OffloadDecision]:
        x = torch.from_numpy(np.ascontiguousarray(obs, dtype=np.float32)).unsqueeze(0).expand(M, -1, -1)
        rows = torch.arange(obs.shape[0])
        src = torch.from_numpy(np.asarray(source, dtype=np.int64))
        with torch.inference_mode():
            raw = actors.net(x)[src, rows].numpy()
            act = actors(x)[src, rows].numpy()  # the trained policy's deterministic action
        return raw, maddpg.to_decision(act, view)

    return ActorExport(
        graph=graph,
        inputs=[{"name": "obs", "role": "observation", "shape": ["batch", D], "dtype": "float32"},
                {"name": "agent", "role": "agent_index", "shape": ["batch"], "dtype": "int64", "count": M,
                 "from": "view.source", "doc": f"device index 0..{M - 1}: selects that device's actor"}],
        out_dim=N + 2,
        action={
            "decoder": "mato_maddpg", "output": "actor_out", "targets": list(TARGET_NAMES),
            "params": {"servers": N, "eta_stretch": float(maddpg.ETA_STRETCH), "download_threshold": 0.5},
            "layout": [
                {"name": "server_logits", "start": 0, "width": N, "doc": "score of edge0..edge%d" % (N - 1)},
                {"name": "eta_preactivation", "start": N, "width": 1, "doc": "offload share before squashing"},
                {"name": "download_preactivation", "start": N + 1, "width": 1, "doc": "model-download flag before sigmoid"},
            ],
            "postprocess": (f"server = argmax(server_logits); eta = clip({maddpg.ETA_STRETCH} * sigmoid(eta_preactivation)"
                            f" - {(maddpg.ETA_STRETCH - 1) / 2:g}, 0, 1); target = 'local' if eta == 0 else "
                            "edge<server>; offload_share = eta; download = sigmoid(download_preactivation) >= 0.5 "
                            "(only when the preset is model-aware); all in float32"),
            "share": "continuous",
        },
        algorithm=algorithm,
        network=f"{M} per-device MLPs {D}-{'-'.join(map(str, hidden))}-{N + 2} (ReLU), stacked; input 'agent' selects one",
        reference=reference,
    )


# -- factory (distilled / any FactoryActor-shaped actor) ------------------------------------------------
def factory_export(actor: nn.Module, sim, algorithm: str) -> ActorExport:
    """A FactoryActor: obs [B, D] -> logits [B, K + S + 2] (target, share level, download heads)."""
    K, D = sim.K, sim.obs_dim()
    levels = [float(v) for v in sim.preset.share_levels]
    S = len(levels)
    actor = actor.eval()
    lv = np.asarray(levels, dtype=np.float64)

    def reference(obs: np.ndarray, source: np.ndarray, view: OffloadView) -> tuple[np.ndarray, OffloadDecision]:
        with torch.inference_mode():
            raw = actor(torch.from_numpy(np.ascontiguousarray(obs, dtype=np.float32))).numpy()
        try:
            from policies.train.factory_distill import decode
        except ImportError:  # pragma: no cover - the trainer's decode is the reference when present
            decode = None
        if decode is not None:
            target, _, share, download = decode(raw, K, lv)
        else:
            target = raw[:, :K].argmax(1)
            share = np.where(target == 0, 0.0, lv[raw[:, K:K + S].argmax(1)])
            download = (raw[:, K + S:].argmax(1) == 1) & (target > 0) & (target < K - 1)
        return raw, OffloadDecision(target=target.astype(np.int64), share=share, download=download)

    hidden = [int(m.out_features) for m in actor.modules() if isinstance(m, nn.Linear)][:-1]
    names = list(sim.target_names)
    return ActorExport(
        graph=actor,
        inputs=[{"name": "obs", "role": "observation", "shape": ["batch", D], "dtype": "float32"}],
        out_dim=K + S + 2,
        action={
            "decoder": "factory_heads", "output": "actor_out", "targets": names,
            "params": {"heads": [{"name": "target", "width": K, "values": names},
                                 {"name": "share_level", "width": S, "values": levels},
                                 {"name": "download", "width": 2, "values": [False, True]}],
                       "local_target": 0, "cloud_target": K - 1},
            "layout": [{"name": "target_logits", "start": 0, "width": K, "doc": "over " + ", ".join(names)},
                       {"name": "share_level_logits", "start": K, "width": S, "doc": f"over share_levels {levels}"},
                       {"name": "download_logits", "start": K + S, "width": 2, "doc": "no / yes"}],
            "postprocess": ("argmax per head; offload_share = share_levels[share_level] (0 when the target is "
                            "local); download = (download head == 1) and the target is an edge server"),
            "share": "levels",
        },
        algorithm=algorithm,
        network=f"MLP {D}-{'-'.join(map(str, hidden))}-{K + S + 2} (ReLU)",
        reference=reference,
    )


# -- run directories ----------------------------------------------------------------------------------
MATO_ALGOS = ("maddpg", "maddpg_nomodel", "saddpg")


def sim_from_resolved(resolved: dict):
    """The simulator of a run's exact preset (config.json's ``preset``)."""
    from policies.scenarios import scenario_class

    cls = scenario_class(resolved["scenario"])
    return cls(cls.Preset.model_validate(resolved["preset"]))


def load_run(run_dir: str | Path) -> tuple[ActorExport, Any, dict, dict]:
    """(export spec, simulator, config.json, checkpoint) of a trained run directory."""
    from policies.train.common import load_checkpoint

    run_dir = Path(run_dir)
    try:
        resolved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"'{run_dir}' is not a trained run directory (no readable config.json)") from None
    ckpt = load_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(f"run '{run_dir}' has no checkpoint yet")
    sim = sim_from_resolved(resolved)
    algo = resolved.get("algo", "?")
    if algo in MATO_ALGOS:
        from policies.train.maddpg import Actors

        actors = Actors(resolved["num_agents"], resolved["obs_dim"], resolved["act_dim"] - 2, resolved["config"]["hidden"])
        actors.load_state_dict(ckpt["actor"])
        actors.eval()
        spec = mato_export(actors, sim, algo)
    elif resolved.get("scenario") == "factory" and "num_targets" in ckpt:
        from policies.train.factory_distill import load_actor

        spec = factory_export(load_actor(ckpt), sim, algo)
    else:
        from policies.export_papers import export_trained_policy

        spec = export_trained_policy(run_dir, sim, resolved, ckpt)
    return spec, sim, resolved, ckpt


# -- provenance ---------------------------------------------------------------------------------------
def git_commit(root: Path = ROOT) -> str | None:
    """HEAD's commit, read from .git without running git (None outside a checkout)."""
    git = root / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        common = git / "commondir"
        base = (git / common.read_text().strip()).resolve() if common.is_file() else git
        if (base / ref).is_file():
            return (base / ref).read_text().strip()
        packed = base / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    except OSError:
        return None
    return None


def _last_metrics_row(run_dir: Path) -> dict | None:
    import csv

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    out = {}
    for k, v in rows[-1].items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def run_provenance(run_dir: Path, resolved: dict, ckpt: dict, command: list[str]) -> dict:
    return {"command": command, "training_command": resolved.get("command"), "run_dir": str(run_dir),
            "seed": resolved.get("seed"), "algorithm": resolved.get("algo"), "git_commit": git_commit(),
            "trained_episodes": ckpt.get("episode"), "evaluation": resolved.get("evaluation"),
            "training_last_episode": _last_metrics_row(run_dir),
            "training_config": resolved.get("config")}


# -- export -------------------------------------------------------------------------------------------
def build_contract(spec: ActorExport, sim, preset_name: str, policy_name: str, provenance: dict) -> dict:
    layout = layout_json(sim.OBS_LAYOUT)
    return {
        "format": CONTRACT_FORMAT,
        "contract_version": CONTRACT_VERSION,
        "scenario": sim.name,
        "preset_name": preset_name,
        "preset_hash": preset_hash(sim.preset),
        "preset": sim.preset.model_dump(mode="json"),
        "policy": {"name": policy_name, "algorithm": spec.algorithm, "network": spec.network,
                   "deterministic": spec.evaluated_mode == "deterministic", "mode": spec.evaluated_mode},
        "observation": {"dim": sim.obs_dim(), "dtype": "float32", "normalization": "column = value / scale",
                        "builder": f"{type(sim).__module__}.{type(sim).__name__}.observation", "fields": layout},
        "inputs": spec.inputs,
        "outputs": [{"name": spec.output, "role": "action", "shape": ["batch", spec.out_dim], "dtype": "float32"}]
        + [{"name": s["output"], "role": "state", "shape": ["batch", *s["shape"]], "dtype": s.get("dtype", "float32")}
           for s in spec.state],
        "state": spec.state,
        "action": {**spec.action, "modes": dict(spec.modes)},
        "provenance": {**provenance, "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       "exporter": f"torch {torch.__version__} torch.onnx.export(dynamo=False, opset {OPSET})"},
    }


def onnx_bytes(spec: ActorExport) -> bytes:
    """The graph as ONNX bytes (legacy exporter, weights inline, dynamic batch)."""
    names = [i["name"] for i in spec.inputs]
    missing = [st["input"] for st in spec.state if st["input"] not in names]
    if missing:
        raise UserError(f"state input(s) {missing} must be listed among the graph inputs (role 'state')")
    outputs = spec.output_names
    dynamic = {n: {0: "batch"} for n in names + outputs}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(spec.graph.eval(), spec.example(), buf, dynamo=False, external_data=False,
                          input_names=names, output_names=outputs, dynamic_axes=dynamic, opset_version=OPSET,
                          do_constant_folding=True)
    return buf.getvalue()


def state_table_entries(spec: ActorExport) -> tuple[dict[str, dict], dict[str, str]]:
    """Per state input with an initial table: its contract ``init_table`` entry and the metadata
    entry holding the table (base64 of little-endian float32, C order)."""
    entries, props = {}, {}
    for name, table in spec.state_tables.items():
        raw = np.ascontiguousarray(table, dtype="<f4").tobytes()
        key = f"{CONTRACT_KEY}.state.{name}"
        props[key] = base64.b64encode(raw).decode("ascii")
        entries[name] = {"metadata": key, "shape": list(table.shape), "dtype": "float32",
                         "sha256": hashlib.sha256(raw).hexdigest()}
    return entries, props


def with_contract(model_bytes: bytes, contract: dict, extra: dict[str, str] | None = None) -> bytes:
    """The model with ``contract`` (and ``extra`` metadata entries, e.g. state tables) in its metadata."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {CONTRACT_KEY: json.dumps(contract, sort_keys=True, default=str),
                                        **(extra or {})})
    model.doc_string = (f"aigc_offload policy '{contract['policy']['name']}' for scenario '{contract['scenario']}'; "
                        f"contract in metadata '{CONTRACT_KEY}'")
    model.producer_name = "aigc-offload export"
    onnx.checker.check_model(model)
    return model.SerializeToString()


def check_output_path(out: str | Path) -> Path:
    """``out`` as a Path, after checking a file can be written there (before any long export work)."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out '{out}' is a directory; name a .onnx file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write --out '{out}': {exc.strerror or exc}") from None
    return out


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file that never outlives a failure."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise UserError(f"cannot write '{path}': {exc.strerror or exc}") from None
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def export_actor(spec: ActorExport, sim, out: str | Path, preset_name: str, policy_name: str,
                 provenance: dict, parity_samples: int = 0, seed: int = 0) -> dict:
    """Export ``spec`` to ``out`` with its contract; with ``parity_samples`` > 0 the torch-vs-onnxruntime
    parity is checked first (on the model in memory) and recorded in the contract's provenance; ``out`` is
    written or replaced only if parity passes (``written`` in the summary). Returns a summary."""
    out = check_output_path(out)
    raw = onnx_bytes(spec)
    tables, extra = state_table_entries(spec)
    for st in spec.state:
        if st["input"] in tables:
            st["init_table"] = {**st.get("init_table", {}), **tables[st["input"]]}
    parity = None
    if parity_samples > 0:
        # the sequential check runs the real runtime (OnnxPolicy) on the file as it will be written
        draft = with_contract(raw, build_contract(spec, sim, preset_name, policy_name, provenance), extra)
        parity = check_parity(draft if spec.rollout is not None else raw, spec, sim, parity_samples, seed)
        provenance = {**provenance, "parity": parity}
    contract = build_contract(spec, sim, preset_name, policy_name, provenance)
    data = with_contract(raw, contract, extra)
    written = parity is None or bool(parity["passed"])
    if written:  # a file that failed parity never replaces (or becomes) a loadable policy
        write_atomic(out, data)
    return {"out": str(out), "bytes": len(data), "scenario": sim.name, "policy": policy_name,
            "algorithm": spec.algorithm, "preset_hash": contract["preset_hash"], "parity": parity,
            "written": written}


def export_run(run_dir: str | Path, out: str | Path, command: list[str] | None = None, parity_samples: int = 0,
               seed: int = 0, name: str | None = None) -> dict:
    """``aigc-offload export``: the run's actor to ``out`` (parity checked when ``parity_samples`` > 0)."""
    run_dir = Path(run_dir)
    if not str(out).endswith(".onnx"):
        raise UserError(f"--out '{out}' must name a .onnx file")
    check_output_path(out)
    spec, sim, resolved, ckpt = load_run(run_dir)
    prov = run_provenance(run_dir, resolved, ckpt, command or [])
    return export_actor(spec, sim, out, resolved.get("preset_name", resolved["scenario"]), name or run_dir.name,
                        prov, parity_samples, seed)


# -- parity -------------------------------------------------------------------------------------------
def sample_observations(sim, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """``n`` valid observation rows: episodes of ``sim`` under the ``random`` heuristic (workloads from
    ``episode_rng(seed, k, 2)``), every decision row kept. Returns (obs, source, allowed, has_download)."""
    from policies.heuristics import make_policy
    from policies.workload import episode_rng

    pol = make_policy("random", sim)
    obs, src, allowed = [], [], []
    have, k, has_dl = 0, 0, False
    while have < n:
        sim.reset(sim.generate_workload(episode_rng(seed, k, 2), k))
        pol.reset(episode_rng(seed, k, 1))
        while not sim.done and have < n:
            view = sim.view()
            if view.n:
                obs.append(sim.observation(view))
                src.append(view.source.copy())
                allowed.append(view.allowed.copy())
                has_dl = view.has_download
                have += view.n
            sim.step(pol.decide(view))
        k += 1
    return (np.concatenate(obs)[:n], np.concatenate(src)[:n], np.concatenate(allowed)[:n], has_dl)


def stub_view(sim, source: np.ndarray, allowed: np.ndarray, has_download: bool) -> OffloadView:
    names = getattr(sim, "target_names", None)
    if names is None:
        from policies.scenarios.mato import TARGET_NAMES as names
    return OffloadView(slot=0, target_names=tuple(names), source=source, allowed=allowed, local_target=0,
                       has_share=True, has_download=has_download)


def check_parity(model: bytes | str | Path, spec: ActorExport, sim, n: int = 10_000, seed: int = 0) -> dict:
    """torch (the trained policy's own computation) vs onnxruntime (the runtime's graph + decoder) on
    ``n`` valid observations.

    Gates (``passed``): the continuous action outputs (MATO's offload share eta; none for an
    all-discrete actor such as the factory one) within 1e-5 absolute; the raw graph outputs (logits,
    pre-activations) within 1e-5 relative to max(1, |value|); the same discrete decision (target,
    download flag, share level) in at least 99.99% of rows. The raw outputs' absolute difference is
    reported beside torch's own float32 noise floor (its batched vs one-row results), because raw
    logits of magnitude ~20 differ by a few float32 ulps (~1e-5) between any two GEMM kernels."""
    from policies.runtime.policy import open_session

    if spec.rollout is not None:
        return check_parity_rollout(model, spec, sim, n, seed)
    obs, src, allowed, has_dl = sample_observations(sim, n, seed)
    view = stub_view(sim, src, allowed, has_dl)
    raw_t, dec_t = spec.reference(obs, src, view)
    sess = open_session(model if isinstance(model, bytes) else str(model))
    feeds = {}
    for inp in spec.inputs:
        feeds[inp["name"]] = obs if inp["role"] == "observation" else src.astype(np.int64)
    raw_o = sess.run([spec.output], feeds)[0]
    dec_o = DECODERS[spec.action["decoder"]](raw_o, view, spec.action["params"])
    discrete = DISCRETE_SHARE[spec.action["decoder"]]
    agree = float(np.mean(np.all(discrete_key(dec_t, discrete) == discrete_key(dec_o, discrete), axis=1))) if n else 1.0
    diff = np.abs(raw_t.astype(np.float64) - raw_o.astype(np.float64))
    max_diff = float(diff.max()) if n else 0.0
    rel_diff = float((diff / np.maximum(1.0, np.abs(raw_t.astype(np.float64)))).max()) if n else 0.0
    cont = 0.0
    if not discrete and dec_t.share is not None and n:
        cont = float(np.max(np.abs(dec_t.share - dec_o.share)))
    m = min(n, 500)  # torch's own noise floor: one row at a time vs the batch
    single = np.concatenate([spec.reference(obs[i:i + 1], src[i:i + 1], stub_view(sim, src[i:i + 1], allowed[i:i + 1],
                                                                                  has_dl))[0] for i in range(m)]) if m else raw_t[:0]
    floor = float(np.abs(single.astype(np.float64) - raw_t[:m].astype(np.float64)).max()) if m else 0.0
    ok = cont <= PARITY_MAX_ABS_DIFF and rel_diff <= PARITY_MAX_ABS_DIFF and agree >= PARITY_MIN_AGREEMENT
    return {"samples": int(n), "max_abs_diff_continuous": cont,
            "continuous_outputs": "offload share" if not discrete else "none (all-discrete action)",
            "max_abs_diff_raw": max_diff, "max_rel_diff_raw": rel_diff, "torch_self_max_abs_diff_raw": floor,
            "decision_agreement": agree, "passed": bool(ok), "tolerance": PARITY_MAX_ABS_DIFF,
            "min_agreement": PARITY_MIN_AGREEMENT,
            "observations": f"{type(sim).__name__} episodes under 'random', workloads episode_rng({seed}, k, 2)"}


def decision_rows(view) -> int:
    """Decisions in a view: its rows (OffloadView) or one allocation per slot (EdgeAIGC)."""
    return int(view.n) if hasattr(view, "n") else 1


def compare_decisions(a, b, discrete_share: bool) -> tuple[np.ndarray, float]:
    """(per decision: the discrete parts equal, max |diff| of the continuous parts) of two decisions of
    one view: OffloadDecision (target, download flag, share level; the share when continuous) or
    AllocationDecision (cache and association; bandwidth and compute shares)."""
    if isinstance(a, OffloadDecision):
        same = np.all(discrete_key(a, discrete_share) == discrete_key(b, discrete_share), axis=1)
        cont = 0.0
        if not discrete_share and a.share is not None and b.share is not None and a.share.size:
            cont = float(np.max(np.abs(np.asarray(a.share, np.float64) - np.asarray(b.share, np.float64))))
        return same, cont
    same = bool(np.array_equal(a.cache, b.cache) and np.array_equal(a.association, b.association))
    cont = max(float(np.max(np.abs(a.bandwidth_share - b.bandwidth_share), initial=0.0)),
               float(np.max(np.abs(a.compute_share - b.compute_share), initial=0.0)))
    return np.array([same]), cont


def check_parity_rollout(model: bytes | str | Path, spec: ActorExport, sim, n: int = 10_000, seed: int = 0) -> dict:
    """Parity of a stateful, stochastic or allocation actor, in every mode it offers: episodes of ``sim``
    under the ``random`` heuristic (workloads ``episode_rng(seed, k, 2)``) give ``n`` valid decisions
    per mode; at each decision point the runtime (``OnnxPolicy`` on the file, with its per-key state
    and its seeded draws) and the trained policy's own torch code (``spec.rollout(mode)``: its own
    state, the runtime's noise inputs and uniform draws) decide the same view. Both forget their
    state at every episode start, as an evaluation does.

    Gates: state outputs and continuous decisions (hidden/cell states, latent probabilities, the
    EdgeAIGC shares) within 1e-5 absolute; action outputs (logits, probabilities, tanh scores) within
    1e-5 relative to max(1, |value|); the same discrete decision (target; cache and association) in at
    least 99.99% of decisions, compared decision by decision (the same draws on both sides)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one-row calls: extra threads only add synchronisation (and the runtime uses one)
    try:
        return _parity_rollout(model, spec, sim, n, seed)
    finally:
        torch.set_num_threads(threads)


def _parity_rollout(model: bytes | str | Path, spec: ActorExport, sim, n: int, seed: int) -> dict:
    from policies.heuristics import make_policy
    from policies.workload import episode_rng

    discrete = DISCRETE_SHARE[spec.action["decoder"]]
    state_outs = {st["output"] for st in spec.state}
    modes: dict[str, dict] = {}
    for mode in spec.modes:
        pol = OnnxPolicy(model if isinstance(model, bytes) else str(model), sim, mode=mode)
        ref = spec.rollout(mode, sim)
        heur = make_policy("random", sim)
        rows = agree = 0
        raw_abs = raw_rel = state_abs = cont = 0.0
        k = 0
        while rows < n:
            sim.reset(sim.generate_workload(episode_rng(seed, k, 2), k))
            heur.reset(episode_rng(seed, k, 1))
            pol.reset(np.random.default_rng([seed, k, 7]))
            ref.reset()
            while not sim.done and rows < n:
                view = sim.view()
                m_view = decision_rows(view)
                if m_view:
                    step = pol.step(view)
                    outs_t, dec_t = ref.step(view, step["feeds"], step["uniform"])
                    m = min(m_view, n - rows)  # the last view may be cut to exactly n decisions
                    for name, value in step["outputs"].items():
                        t = np.asarray(outs_t[name], dtype=np.float64)[:m]
                        d = np.abs(t - np.asarray(value, dtype=np.float64)[:m])
                        if name in state_outs:
                            state_abs = max(state_abs, float(d.max(initial=0.0)))
                        else:
                            raw_abs = max(raw_abs, float(d.max(initial=0.0)))
                            raw_rel = max(raw_rel, float((d / np.maximum(1.0, np.abs(t))).max(initial=0.0)))
                    same, c = compare_decisions(dec_t, step["decision"], discrete)
                    agree += int(np.sum(same[:m]))
                    cont = max(cont, c)
                    rows += m
                sim.step(heur.decide(view))
            k += 1
        agreement = agree / rows if rows else 1.0
        ok = (max(cont, state_abs) <= PARITY_MAX_ABS_DIFF and raw_rel <= PARITY_MAX_ABS_DIFF
              and agreement >= PARITY_MIN_AGREEMENT)
        modes[mode] = {"samples": rows, "episodes": k, "max_abs_diff_continuous": max(cont, state_abs),
                       "max_abs_diff_state": state_abs, "max_abs_diff_decision": cont, "max_abs_diff_raw": raw_abs,
                       "max_rel_diff_raw": raw_rel, "decision_agreement": agreement, "passed": bool(ok)}
    worst = lambda key, f=max: f(r[key] for r in modes.values())  # noqa: E731
    cont_names = []
    if spec.state:
        cont_names.append("state " + ", ".join(st["output"] for st in spec.state))
    if not discrete:
        cont_names.append("allocation shares" if DECODER_VIEWS.get(spec.action["decoder"]) == "allocation"
                          else "offload share")
    return {"samples": int(n), "modes": modes, "max_abs_diff_continuous": worst("max_abs_diff_continuous"),
            "continuous_outputs": "; ".join(cont_names) or "none (all-discrete action)",
            "max_abs_diff_raw": worst("max_abs_diff_raw"), "max_rel_diff_raw": worst("max_rel_diff_raw"),
            "torch_self_max_abs_diff_raw": None, "decision_agreement": worst("decision_agreement", min),
            "passed": all(r["passed"] for r in modes.values()), "tolerance": PARITY_MAX_ABS_DIFF,
            "min_agreement": PARITY_MIN_AGREEMENT, "evaluated_mode": spec.evaluated_mode,
            "observations": f"{type(sim).__name__} episodes under 'random', workloads episode_rng({seed}, k, 2); "
                            "per mode, runtime and torch policy each carrying its own state"}


# -- torch eager as a Policy (the benchmark's other column) -----------------------------------------------
class _TorchSession:
    """onnxruntime's ``InferenceSession.run`` interface over the graph module in torch eager."""

    def __init__(self, spec: ActorExport):
        self.spec = spec

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.spec.torch_run(output_names, feeds)


class TorchPolicy(OnnxPolicy):
    """The exported graph module run by torch eager inside the runtime's own policy (the same feeds,
    state keeping, draws and decoder as :class:`policies.runtime.OnnxPolicy`): the same function as
    the ONNX file, so the benchmark compares the engines and nothing else. ``model``: the exported
    file or bytes (default: exported in memory with a minimal contract)."""

    def __init__(self, spec: ActorExport, sim, name: str = "torch", model: bytes | str | Path | None = None,
                 mode: str | None = None):
        if model is None:
            tables, extra = state_table_entries(spec)
            for st in spec.state:
                if st["input"] in tables:
                    st["init_table"] = {**st.get("init_table", {}), **tables[st["input"]]}
            model = with_contract(onnx_bytes(spec), build_contract(spec, sim, "torch", name, {}), extra)
        super().__init__(model if isinstance(model, bytes) else str(model), sim, name=name, mode=mode)
        self.spec = spec
        self.session = _TorchSession(spec)


def format_summary(res: dict) -> str:
    verb = "exported" if res.get("written", True) else "did not export"
    line = (f"{verb} {res['algorithm']} policy '{res['policy']}' ({res['scenario']}, preset hash "
            f"{res['preset_hash'][:12]}) to {res['out']} ({res['bytes']} bytes)")
    p = res.get("parity")
    if p:
        floor = p.get("torch_self_max_abs_diff_raw")
        line += (f"\nparity on {p['samples']} observations: continuous outputs ({p['continuous_outputs']}) max |diff| "
                 f"{p['max_abs_diff_continuous']:.3g}; raw outputs max |diff| {p['max_abs_diff_raw']:.3g} (relative "
                 f"{p['max_rel_diff_raw']:.3g}" + (f"; torch batch vs one-row itself {floor:.3g}" if floor is not None
                                                   else "") +
                 f"); same decision in {p['decision_agreement']:.4%}: {'PASSED' if p['passed'] else 'FAILED'}")
        for mode, r in (p.get("modes") or {}).items():
            line += (f"\n  mode {mode}{' (evaluated)' if mode == p.get('evaluated_mode') else ''}: {r['samples']} "
                     f"decisions in {r['episodes']} episodes, continuous max |diff| {r['max_abs_diff_continuous']:.3g}, "
                     f"raw max |diff| {r['max_abs_diff_raw']:.3g} (relative {r['max_rel_diff_raw']:.3g}), same decision "
                     f"in {r['decision_agreement']:.4%}: {'PASSED' if r['passed'] else 'FAILED'}")
    if not res.get("written", True):
        line += f"\nparity FAILED: {res['out']} was not written (any previous file there is unchanged)"
    return line


def main_export(run_dir: str, out: str, parity: int, seed: int, name: str | None, as_json: bool) -> int:
    t0 = time.perf_counter()
    res = export_run(run_dir, out, ["aigc-offload", *sys.argv[1:]], parity, seed, name)
    res["seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(res) if as_json else format_summary(res))
    return 0 if not res.get("parity") or res["parity"]["passed"] else 1
