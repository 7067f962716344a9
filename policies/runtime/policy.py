"""An exported ONNX policy behind the :class:`Policy` interface, and ``load_policy``.

``OnnxPolicy(path, sim)`` loads the file with onnxruntime (one thread by default), checks its
contract against ``sim`` (scenario, observation layout, preset hash, action decoder, graph inputs),
and then ``decide(view)`` builds the observation with ``sim.observation(view)`` (the simulator's
own code, DESIGN principle 2), runs the graph and decodes the raw outputs into an
:class:`OffloadDecision`. Recurrent or latent-state policies declare state tensors in the contract;
the policy keeps them per device (the view's ``source``) between calls.

torch-free: numpy and onnxruntime only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from policies.errors import UserError
from policies.runtime.contract import ContractError, check_contract, parse_contract
from policies.runtime.decoders import DECODERS
from policies.scenarios.base import OffloadDecision, OffloadView, Policy, Simulator

_DTYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Deterministic, low-latency CPU options: ``threads`` intra-op threads, sequential execution."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def open_session(path_or_bytes: str | Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session; a file onnxruntime cannot load ends in a ContractError."""
    source = "<bytes>" if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    if not isinstance(path_or_bytes, bytes) and not Path(path_or_bytes).is_file():
        raise ContractError(f"policy file '{source}' does not exist")
    try:
        return ort.InferenceSession(path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes),
                                    session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ContractError(f"'{source}' is not an ONNX model onnxruntime can load ({reason[:200]})") from None


def read_contract(path: str | Path) -> dict[str, Any]:
    """The contract of a policy file (validated for format and version only)."""
    sess = open_session(path)
    return parse_contract(sess.get_modelmeta().custom_metadata_map, str(path))


def take_rows(view: OffloadView, rows: np.ndarray | list[int]) -> OffloadView:
    """A view of some rows of ``view`` (repeats allowed): benchmarks use it for one-device views
    and for large batches; every per-row array and feature is indexed."""
    idx = np.asarray(rows, dtype=np.int64)
    pick = lambda a: None if a is None else np.asarray(a)[idx]  # noqa: E731
    feats = None if view.features is None else {k: np.asarray(v)[idx] for k, v in view.features.items()}
    return dataclasses.replace(view, source=view.source[idx], allowed=view.allowed[idx], proximity=pick(view.proximity),
                               compatible=pick(view.compatible), features=feats)


class ObservationError(ValueError):
    """An observation the policy cannot decide on (NaN or infinite entries)."""


class OnnxPolicy(Policy):
    """An exported policy file acting in ``sim``'s scenario (see the module doc).

    ``threads``: onnxruntime intra-op threads. ``strict_preset``: refuse a file exported for a
    preset whose hash differs from ``sim``'s (the layout is always checked). ``deterministic``:
    noise inputs (denoising actors) are fed zeros; otherwise standard normal draws from the policy's rng.
    """

    needs_oracle = False

    def __init__(self, path: str | Path, sim: Simulator, threads: int = 1, strict_preset: bool = True,
                 deterministic: bool = True, name: str | None = None):
        self.path = str(path)
        self.sim = sim
        self.session = open_session(path, threads)
        self.contract = parse_contract(self.session.get_modelmeta().custom_metadata_map, self.path)
        check_contract(self.contract, sim, self.path, strict_preset)
        c = self.contract
        action = c["action"]
        if action.get("decoder") not in DECODERS:
            raise ContractError(f"'{self.path}' needs the action decoder {action.get('decoder')!r}, which this runtime "
                                f"does not have (known: {', '.join(DECODERS)})")
        self._decode = DECODERS[action["decoder"]]
        self._params = action.get("params", {})
        graph_in = {i.name for i in self.session.get_inputs()}
        graph_out = {o.name for o in self.session.get_outputs()}
        for inp in c["inputs"]:
            if inp["name"] not in graph_in:
                raise ContractError(f"'{self.path}' declares graph input '{inp['name']}', which the graph does not have")
        missing = graph_in - {i["name"] for i in c["inputs"]}
        if missing:
            raise ContractError(f"'{self.path}' has graph input(s) {sorted(missing)} that its contract does not describe")
        self._action_out = action["output"]
        for out_name in [self._action_out] + [s["output"] for s in c["state"]]:
            if out_name not in graph_out:
                raise ContractError(f"'{self.path}' declares graph output '{out_name}', which the graph does not have")
        self._obs_in = next((i["name"] for i in c["inputs"] if i["role"] == "observation"), None)
        if self._obs_in is None:
            raise ContractError(f"'{self.path}' has no graph input with role 'observation'")
        agent = [i for i in c["inputs"] if i["role"] == "agent_index"]
        self._agent_in = agent[0]["name"] if agent else None
        self._agent_count = int(agent[0].get("count", 0)) if agent else 0
        self._noise = [i for i in c["inputs"] if i["role"] == "noise"]
        self._states = list(c["state"])
        self._outputs = [self._action_out] + [s["output"] for s in self._states]
        self._store: dict[str, dict[int, np.ndarray]] = {s["input"]: {} for s in self._states}
        self.name = name or c.get("policy", {}).get("name") or Path(self.path).stem
        self.deterministic = deterministic
        self.rng = np.random.default_rng(0)
        self._targets_checked = False
        self.warmup()

    def warmup(self) -> None:
        """One run on a zero observation (onnxruntime's first run is slow); kept state is untouched."""
        saved = {k: dict(v) for k, v in self._store.items()}
        self.forward(np.zeros((1, int(self.contract["observation"]["dim"])), np.float32), np.zeros(1, np.int64))
        self._store = saved

    # -- Policy interface ---------------------------------------------------------------------
    def reset(self, rng: np.random.Generator | None = None, oracle: Simulator | None = None) -> None:
        """New episode: forget every device's policy state."""
        if rng is not None:
            self.rng = rng
        for store in self._store.values():
            store.clear()

    def decide(self, view: OffloadView) -> OffloadDecision:
        if not self._targets_checked:
            want = self.contract["action"].get("targets")
            if want is not None and list(view.target_names) != list(want):
                raise ContractError(f"'{self.path}' decides among targets {want}, but the view offers "
                                    f"{list(view.target_names)}")
            self._targets_checked = True
        if view.n == 0:
            empty = np.zeros(0)
            return OffloadDecision(target=np.zeros(0, np.int64), share=empty if view.has_share else None,
                                   download=np.zeros(0, bool) if view.has_download else None)
        obs = self.sim.observation(view)
        if not np.isfinite(obs).all():
            raise ObservationError(self._non_finite(obs))
        out = self.forward(obs, view.source)
        return self._decode(out, view, self._params)

    def _non_finite(self, obs: np.ndarray) -> str:
        row, col = (int(v[0]) for v in np.nonzero(~np.isfinite(obs)))
        for f in self.contract["observation"]["fields"]:
            if f["offset"] <= col < f["offset"] + f["width"]:
                return (f"observation of task {row} has a non-finite value in field '{f['name']}' ({f['unit']}); "
                        "a policy cannot decide on NaN or infinity")
        return f"observation of task {row} has a non-finite value in column {col}"

    # -- the graph ----------------------------------------------------------------------------
    def forward(self, obs: np.ndarray, source: np.ndarray | None = None) -> np.ndarray:
        """Raw action output for observation rows ``obs`` of devices ``source`` (state kept per device)."""
        obs = np.ascontiguousarray(obs, dtype=np.float32)
        n = obs.shape[0]
        src = np.zeros(n, dtype=np.int64) if source is None else np.asarray(source, dtype=np.int64)
        if self._states and n > 1 and np.unique(src).size < n:
            # one device twice in a batch: its rows run in order, each seeing the state the previous left
            return np.concatenate([self.forward(obs[i:i + 1], src[i:i + 1]) for i in range(n)], axis=0)
        feeds: dict[str, np.ndarray] = {self._obs_in: obs}
        if self._agent_in is not None:
            if n and (src.min() < 0 or src.max() >= self._agent_count):
                bad = int(src[(src < 0) | (src >= self._agent_count)][0])
                raise ContractError(f"'{self.path}' holds actors for devices 0..{self._agent_count - 1}; device {bad} "
                                    "has none")
            feeds[self._agent_in] = src
        for inp in self._noise:
            shape = (n, *[int(d) for d in inp.get("shape", [])[1:]])
            dtype = _DTYPES[inp.get("dtype", "float32")]
            feeds[inp["name"]] = (np.zeros(shape, dtype) if self.deterministic
                                  else self.rng.standard_normal(shape).astype(dtype))
        for st in self._states:
            store = self._store[st["input"]]
            shape = tuple(int(d) for d in st["shape"])
            dtype = _DTYPES[st.get("dtype", "float32")]
            init = np.full(shape, float(st.get("init_value", 0.0)), dtype)
            feeds[st["input"]] = np.stack([store.get(int(s), init) for s in src]) if n else np.zeros((0, *shape), dtype)
        results = self.session.run(self._outputs, feeds)
        for st, value in zip(self._states, results[1:]):
            store = self._store[st["input"]]
            for i, s in enumerate(src.tolist()):
                store[s] = np.array(value[i])
        return results[0]

    def state_of(self, device: int) -> dict[str, np.ndarray]:
        """The policy state kept for ``device`` (empty for stateless policies or unseen devices)."""
        return {name: store[device] for name, store in self._store.items() if device in store}


PolicyEngine = OnnxPolicy  # the name the issue uses


def load_policy(spec: str | Path, sim: Simulator, threads: int = 1, strict_preset: bool = True,
                seed: int = 0) -> Policy:
    """An exported policy (a path ending ``.onnx``) or a heuristic by name (``greedy``, ``random``...),
    interchangeable behind the Policy interface and ready to decide (reset with ``seed``)."""
    spec = str(spec)
    rng = np.random.default_rng(seed)
    if spec.lower().endswith(".onnx"):
        policy: Policy = OnnxPolicy(spec, sim, threads=threads, strict_preset=strict_preset)
        policy.reset(rng)
        return policy
    from policies.heuristics import make_policy

    if spec in sim.POLICIES:
        policy = make_policy(spec, sim)
        if policy.needs_oracle:
            raise UserError(f"policy '{spec}' is an oracle computed with the simulator's true state, not a "
                            "deployable policy; use an exported .onnx file or a heuristic")
        policy.reset(rng)
        return policy
    deployable = [p for p in sim.POLICIES if p != "opt"]
    raise UserError(f"unknown policy '{spec}' for scenario '{sim.name}': give an exported .onnx file or one of "
                    f"{', '.join(deployable)}")
