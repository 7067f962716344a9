"""An exported ONNX policy behind the :class:`Policy` interface, and ``load_policy``.

``OnnxPolicy(path, sim)`` loads the file with onnxruntime (one thread by default), checks its
contract against ``sim`` (scenario, observation layout, preset hash, action decoder, graph inputs),
and then ``decide(view)`` builds the observation with ``sim.observation(view)`` (the simulator's
own code, DESIGN principle 2), runs the graph and decodes the raw outputs into the scenario's
decision (:class:`OffloadDecision`, or EdgeAIGC's ``AllocationDecision``). Recurrent or latent-state
policies declare state tensors in the contract; the policy keeps them per key (the view's ``source``,
or e.g. (slot, station, task index)) between calls and forgets them on ``reset()``. Stochastic
policies act in one of the contract's modes (deterministic, argmax, sample) with draws from the
policy's seeded rng.

torch-free: numpy and onnxruntime only.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from policies.errors import UserError
from policies.runtime.contract import ContractError, check_contract, parse_contract, state_key
from policies.runtime.decoders import DECODER_CHECKS, DECODER_PARAMS, DECODER_VIEWS, DECODERS
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

    ``path``: the ``.onnx`` file (or its bytes). ``threads``: onnxruntime intra-op threads.
    ``strict_preset``: refuse a file exported for a preset whose hash differs from ``sim``'s (the
    layout is always checked). ``mode``: how a stochastic policy acts, one of the contract's
    ``action.modes``: ``deterministic`` (noise inputs zeros, argmax), ``argmax`` (noise drawn, argmax),
    ``sample`` (noise drawn, categorical heads sampled); draws come from the policy's rng (``reset(rng)``),
    in the order the trainer's evaluation draws them. Default: the mode the policy was evaluated with
    (contract ``policy.mode``). ``deterministic=True`` is ``mode="deterministic"``; ``False`` the
    evaluated mode if it is stochastic, else ``sample``.
    """

    needs_oracle = False

    def __init__(self, path: str | Path | bytes, sim: Simulator, threads: int = 1, strict_preset: bool = True,
                 deterministic: bool | None = None, name: str | None = None, mode: str | None = None):
        self.path = "<bytes>" if isinstance(path, bytes) else str(path)
        self.sim = sim
        self.session = open_session(path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.contract = parse_contract(meta, self.path)
        check_contract(self.contract, sim, self.path, strict_preset)
        c = self.contract
        action = c["action"]
        if action.get("decoder") not in DECODERS:
            raise ContractError(f"'{self.path}' needs the action decoder {action.get('decoder')!r}, which this runtime "
                                f"does not have (known: {', '.join(DECODERS)})")
        self._decode = DECODERS[action["decoder"]]
        self._params = action.get("params", {})
        missing = [k for k in DECODER_PARAMS.get(action["decoder"], ()) if k not in self._params]
        if missing:
            raise ContractError(f"'{self.path}' gives the action decoder '{action['decoder']}' no "
                                f"{', '.join(repr(k) for k in missing)} in action.params")
        check = DECODER_CHECKS.get(action["decoder"])
        problem = check(self._params, sim, self.path) if check else None
        if problem:
            raise ContractError(problem)
        self._view_kind = DECODER_VIEWS.get(action["decoder"], "offload")
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
        self._noise = [(i["name"], tuple(int(d) for d in i.get("shape", [])[1:]), _DTYPES[i.get("dtype", "float32")])
                       for i in c["inputs"] if i["role"] == "noise"]
        self._states = [self._state_spec(st, meta) for st in c["state"]]
        self._keys = {k for st in self._states for k in st["key"]}
        self._outputs = [self._action_out] + [s["output"] for s in self._states]
        self._store: dict[str, dict[Any, np.ndarray]] = {s["input"]: {} for s in self._states}
        self._sampling = action.get("sampling") or {}
        self.modes = tuple(action.get("modes") or ("deterministic",))
        evaluated = c.get("policy", {}).get("mode") or ("deterministic" if "deterministic" in self.modes else self.modes[0])
        if mode is None:
            if deterministic is True:
                mode = "deterministic"
            elif deterministic is False:
                mode = evaluated if evaluated != "deterministic" else ("sample" if "sample" in self.modes else evaluated)
            else:
                mode = evaluated
        if mode not in self.modes:
            raise ContractError(f"'{self.path}' acts in mode(s) {', '.join(self.modes)}; mode {mode!r} is not one of them")
        if mode == "sample" and "uniform" not in self._sampling:
            raise ContractError(f"'{self.path}' offers mode 'sample' without an action.sampling.uniform entry")
        self.mode = mode
        self.evaluated_mode = evaluated
        self.name = name or c.get("policy", {}).get("name") or Path(self.path).stem
        self.rng = np.random.default_rng(0)
        self._targets_checked = False
        self.warmup()

    @property
    def deterministic(self) -> bool:
        return self.mode == "deterministic"

    @property
    def state_keys(self) -> tuple[str, ...]:
        """The key components of the kept state (e.g. ("source",)); empty for a stateless policy."""
        return self._states[0]["key"] if self._states else ()

    @property
    def view_kind(self) -> str:
        """``offload`` (OffloadView rows) or ``allocation`` (one EdgeAIGC AllocationView per slot)."""
        return self._view_kind

    def _state_spec(self, st: dict[str, Any], meta: dict[str, str]) -> dict[str, Any]:
        """A contract state entry, compiled: its key components and its initial value (constant or table)."""
        shape = tuple(int(d) for d in st["shape"])
        dtype = _DTYPES[st.get("dtype", "float32")]
        spec = {"input": st["input"], "output": st["output"], "shape": shape, "dtype": dtype, "key": state_key(st),
                "table": None, "init": np.full(shape, float(st.get("init_value") or 0.0), dtype)}
        table = st.get("init_table")
        if table is not None:
            blob = meta.get(table.get("metadata", ""))
            if blob is None:
                raise ContractError(f"'{self.path}' names the initial table of state '{st['input']}' in metadata key "
                                    f"{table.get('metadata')!r}, which the file does not have")
            try:
                raw = base64.b64decode(blob.encode("ascii"), validate=True)
            except (ValueError, UnicodeEncodeError):
                raise ContractError(f"'{self.path}' has an initial table of state '{st['input']}' that is not "
                                    "base64") from None
            if table.get("sha256") and hashlib.sha256(raw).hexdigest() != table["sha256"]:
                raise ContractError(f"'{self.path}' has an initial table of state '{st['input']}' whose sha256 "
                                    "differs from its contract's (the file is damaged)")
            tshape = tuple(int(d) for d in table["shape"])
            want = int(np.prod(tshape)) * np.dtype(_DTYPES[table.get("dtype", "float32")]).itemsize
            if len(raw) != want or tshape[len(spec["key"]):] != shape:
                raise ContractError(f"'{self.path}' has an initial table of state '{st['input']}' of {len(raw)} bytes; "
                                    f"its contract says shape {list(tshape)} with rows of shape {list(shape)}")
            spec["table"] = np.frombuffer(raw, dtype=np.dtype(_DTYPES[table.get("dtype", "float32")]).newbyteorder("<")
                                          ).reshape(tshape).astype(dtype)
        return spec

    def warmup(self) -> None:
        """One run on zero inputs (onnxruntime's first run is slow); no state kept, no rng drawn."""
        feeds: dict[str, np.ndarray] = {self._obs_in: np.zeros((1, int(self.contract["observation"]["dim"])), np.float32)}
        if self._agent_in is not None:
            feeds[self._agent_in] = np.zeros(1, np.int64)
        for name, shape, dtype in self._noise:
            feeds[name] = np.zeros((1, *shape), dtype)
        for st in self._states:
            feeds[st["input"]] = st["init"][None]
        self.session.run(self._outputs, feeds)

    # -- Policy interface ---------------------------------------------------------------------
    def reset(self, rng: np.random.Generator | None = None, oracle: Simulator | None = None) -> None:
        """New episode: forget every key's policy state (recurrent h/c, latent actions); ``rng`` seeds the
        noise and sampling draws of the stochastic modes."""
        if rng is not None:
            self.rng = rng
        for store in self._store.values():
            store.clear()

    def decide(self, view: Any) -> Any:
        return self._act(view)[0]

    def decide_many(self, views: list) -> list:
        """Decisions for several views with ONE graph run on their stacked observations (a stateless
        policy: e.g. EdgeAIGC allocations of many slots, or many one-task views); each view's rows are
        decoded with that view. A stateful policy refuses (its state would depend on the order)."""
        if self._states:
            raise UserError(f"'{self.path}' keeps state per key; decide views one at a time, in order")
        obs = [self.sim.observation(v) for v in views]
        rows = np.concatenate(obs) if obs else np.zeros((0, int(self.contract["observation"]["dim"])), np.float32)
        if not np.isfinite(rows).all():
            raise ObservationError(self._non_finite(rows))
        src = (np.zeros(rows.shape[0], np.int64) if self._view_kind == "allocation"
               else np.concatenate([np.asarray(v.source, np.int64) for v in views]) if views else np.zeros(0, np.int64))
        out = self._run(rows, src, None)[1][0]
        decisions, start = [], 0
        for v, o in zip(views, obs):
            part = out[start:start + o.shape[0]]
            start += o.shape[0]
            uniform = None
            if self.mode == "sample":
                u = self._sampling["uniform"]
                uniform = self.rng.random((o.shape[0], *[int(d) for d in u.get("shape", ["batch"])[1:]]),
                                          dtype=_DTYPES[u.get("dtype", "float64")])
            decisions.append(self._decode(part, v, self._params, uniform))
        return decisions

    def step(self, view: Any) -> dict[str, Any]:
        """One decision with what produced it (parity checks and debugging): ``decision``, the graph's
        ``feeds`` and ``outputs`` (by name), and the sampling ``uniform`` draws (None unless mode sample)."""
        decision, feeds, results, uniform = self._act(view)
        outputs = dict(zip(self._outputs, results)) if results is not None else {}
        return {"decision": decision, "feeds": feeds, "outputs": outputs, "uniform": uniform}

    def _act(self, view: Any):
        if self._view_kind == "allocation":
            obs = self.sim.observation(view)
            if not np.isfinite(obs).all():
                raise ObservationError(self._non_finite(obs))
            feeds, results = self._run(obs, np.zeros(obs.shape[0], np.int64), None)
            return self._decode(results[0], view, self._params), feeds, results, None
        if not self._targets_checked:
            want = self.contract["action"].get("targets")
            if want is not None and list(view.target_names) != list(want):
                raise ContractError(f"'{self.path}' decides among targets {want}, but the view offers "
                                    f"{list(view.target_names)}")
            self._targets_checked = True
        if view.n == 0:
            empty = np.zeros(0)
            return (OffloadDecision(target=np.zeros(0, np.int64), share=empty if view.has_share else None,
                                    download=np.zeros(0, bool) if view.has_download else None), {}, None, None)
        obs = self.sim.observation(view)
        if not np.isfinite(obs).all():
            raise ObservationError(self._non_finite(obs))
        keys = self._view_keys(view) if self._states else None
        feeds, results = self._run(obs, view.source, keys)
        uniform = None
        if self.mode == "sample":
            u = self._sampling["uniform"]
            n = obs.shape[0]
            uniform = self.rng.random((n, *[int(d) for d in u.get("shape", ["batch"])[1:]]),
                                      dtype=_DTYPES[u.get("dtype", "float64")])
        return self._decode(results[0], view, self._params, uniform), feeds, results, uniform

    def _view_keys(self, view: OffloadView) -> list:
        """Per row, the key of its kept state: the source, or a tuple of the contract's key components."""
        parts = []
        for st in self._states:
            if st["key"] == ("source",):
                parts.append(None)
                continue
            cols = []
            for comp in st["key"]:
                if comp == "slot":
                    cols.append([int(view.slot)] * view.n)
                elif comp == "source":
                    cols.append(np.asarray(view.source, dtype=np.int64).tolist())
                elif view.features is not None and comp in view.features:
                    cols.append(np.asarray(view.features[comp], dtype=np.int64).tolist())
                else:
                    raise ContractError(f"'{self.path}' keys its state by {list(st['key'])}, but the view has no "
                                        f"per-row '{comp}'")
            parts.append(list(zip(*cols)))
        first = parts[0]
        if all(p == first for p in parts):
            return first if first is not None else None
        raise ContractError(f"'{self.path}' keys its state tensors differently; this runtime needs one key per row")

    def _non_finite(self, obs: np.ndarray) -> str:
        row, col = (int(v[0]) for v in np.nonzero(~np.isfinite(obs)))
        for f in self.contract["observation"]["fields"]:
            if f["offset"] <= col < f["offset"] + f["width"]:
                return (f"observation of task {row} has a non-finite value in field '{f['name']}' ({f['unit']}); "
                        "a policy cannot decide on NaN or infinity")
        return f"observation of task {row} has a non-finite value in column {col}"

    # -- the graph ----------------------------------------------------------------------------
    def forward(self, obs: np.ndarray, source: np.ndarray | None = None, keys: list | None = None) -> np.ndarray:
        """Raw action output for observation rows ``obs`` of devices ``source``; state is kept per key
        (``keys``: one per row, default the source, for policies keyed by it)."""
        obs = np.ascontiguousarray(obs, dtype=np.float32)
        src = np.zeros(obs.shape[0], dtype=np.int64) if source is None else np.asarray(source, dtype=np.int64)
        return self._run(obs, src, keys)[1][0]

    def _state_init(self, st: dict[str, Any], key: Any) -> np.ndarray:
        table = st["table"]
        if table is None:
            return st["init"]
        idx = key if isinstance(key, tuple) else (key,)
        for comp, i, size in zip(st["key"], idx, table.shape):
            if not 0 <= i < size:
                raise ContractError(f"'{self.path}' keeps initial '{st['input']}' values for {comp} 0..{size - 1}; "
                                    f"{comp} {i} has none")
        return table[idx]

    def _run(self, obs: np.ndarray, src: np.ndarray, keys: list | None) -> tuple[dict[str, np.ndarray], list]:
        obs = np.ascontiguousarray(obs, dtype=np.float32)
        n = obs.shape[0]
        src = np.asarray(src, dtype=np.int64)
        if self._states:
            if keys is None:
                if any(st["key"] != ("source",) for st in self._states):
                    raise UserError(f"'{self.path}' keeps state per {list(self._states[0]['key'])}: pass one key per row")
                keys = src.tolist()
            if n > 1 and len(set(keys)) < n:
                # one key twice in a batch: its rows run in order, each seeing the state the previous left
                parts = [self._run(obs[i:i + 1], src[i:i + 1], keys[i:i + 1]) for i in range(n)]
                feeds = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
                return feeds, [np.concatenate([p[1][j] for p in parts]) for j in range(len(self._outputs))]
        feeds: dict[str, np.ndarray] = {self._obs_in: obs}
        if self._agent_in is not None:
            if n and (src.min() < 0 or src.max() >= self._agent_count):
                bad = int(src[(src < 0) | (src >= self._agent_count)][0])
                raise ContractError(f"'{self.path}' holds actors for devices 0..{self._agent_count - 1}; device {bad} "
                                    "has none")
            feeds[self._agent_in] = src
        for name, shape, dtype in self._noise:
            feeds[name] = (np.zeros((n, *shape), dtype) if self.mode == "deterministic"
                           else self.rng.standard_normal((n, *shape), dtype=dtype) if dtype in (np.float32, np.float64)
                           else self.rng.standard_normal((n, *shape)).astype(dtype))
        for st in self._states:
            store = self._store[st["input"]]
            feeds[st["input"]] = (np.stack([store[k] if k in store else self._state_init(st, k) for k in keys]) if n
                                  else np.zeros((0, *st["shape"]), st["dtype"]))
        results = self.session.run(self._outputs, feeds)
        for st, value in zip(self._states, results[1:]):
            store = self._store[st["input"]]
            for i, k in enumerate(keys):
                store[k] = value[i].copy()
        return feeds, results

    def state_of(self, key: Any) -> dict[str, np.ndarray]:
        """The policy state kept for ``key`` (a device index, or the contract's key tuple, e.g.
        (slot, station, task index) for LAD-TS); empty for stateless policies or unseen keys."""
        return {name: store[key] for name, store in self._store.items() if key in store}


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
