"""Embedding without ROS: a decision engine for PLC/MES pipelines, and the JSON-lines stream of
``aigc-offload decide``.

    from policies.runtime import DecisionEngine
    engine = DecisionEngine.load("policies/trained/factory_offload.onnx", preset="factory")
    d = engine.decide(task={...LiveTask fields...}, state={...LiveState fields...})
    d.target, d.offload_share, d.download_model, d.to_dict()

The engine turns a task and the gateway's live state into a view with the scenario's own
``live_view`` (the same builder the simulator uses), asks the policy (an exported ONNX file or a
heuristic by name) and returns a typed :class:`Decision`.

torch-free: numpy, pydantic and onnxruntime only.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Mapping

from pydantic import BaseModel, ValidationError

from policies.errors import UserError
from policies.runtime.policy import ObservationError, load_policy
from policies.scenarios.base import OffloadDecision, Policy, Simulator


@dataclass(frozen=True)
class Decision:
    """One task's decision: where it runs, the share sent there, whether the edge server fetches
    the model, which policy decided and how long the decision took (live view + policy), us."""

    target: str  # "local", "edge0".., "cloud"
    target_index: int  # index into the scenario's target names
    offload_share: float  # fraction of the work sent to the target, 0 for local
    download_model: bool  # the edge server downloads the model on a cache miss
    policy: str
    decision_us: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _non_finite_field(obj: BaseModel) -> str | None:
    """The first field of ``obj`` holding NaN or infinity (a float or a list of floats), else None."""
    for name in type(obj).model_fields:
        value = getattr(obj, name)
        for x in value if isinstance(value, list) else (value,):
            if isinstance(x, float) and not math.isfinite(x):
                return name
    return None


def _first_validation_error(exc: ValidationError, prefix: str) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in (prefix, *first["loc"]))
    more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
    return f"{loc}: {first['msg'].removeprefix('Value error, ')}{more}"


class DecisionEngine:
    """A policy and the scenario simulator whose ``live_view`` and ``observation`` feed it."""

    def __init__(self, policy: Policy, sim: Simulator):
        if not hasattr(sim, "live_view"):
            raise UserError(f"scenario '{sim.name}' has no live view of a gateway's state; the decision engine runs "
                            "scenarios that do (factory)")
        self.policy = policy
        self.sim = sim
        module = importlib.import_module(type(sim).__module__)
        self.Task: type[BaseModel] = module.LiveTask
        self.State: type[BaseModel] = module.LiveState
        self.state_error: type[Exception] = getattr(module, "LiveStateError", ValueError)

    @classmethod
    def load(cls, policy: str, preset: str = "factory", overrides: Mapping[str, Any] | None = None,
             threads: int = 1, strict_preset: bool = True, seed: int = 0) -> "DecisionEngine":
        """``policy``: an exported ``.onnx`` file or a heuristic name; ``preset``: preset name or
        YAML path (with dotted ``overrides``) the deployment runs."""
        from policies.scenarios import make_simulator

        sim = make_simulator(preset, dict(overrides or {}))
        return cls(load_policy(policy, sim, threads=threads, strict_preset=strict_preset, seed=seed), sim)

    @property
    def policy_name(self) -> str:
        return getattr(self.policy, "name", type(self.policy).__name__)

    def _decisions(self, decision: OffloadDecision, view, elapsed_us: float) -> list[Decision]:
        names = view.target_names
        out = []
        for i in range(view.n):
            t = int(decision.target[i])
            share = float(decision.share[i]) if decision.share is not None else (0.0 if t == view.local_target else 1.0)
            dl = bool(decision.download[i]) if decision.download is not None else False
            out.append(Decision(target=names[t], target_index=t, offload_share=share, download_model=dl,
                                policy=self.policy_name, decision_us=elapsed_us))
        return out

    def decide_many(self, tasks: list[Any], states: list[Any], slot: int = 0) -> list[Decision]:
        """Decisions for several tasks at once (one row each); ``decision_us`` is the batch's time."""
        t0 = time.perf_counter_ns()
        tasks = [t if isinstance(t, self.Task) else self.Task.model_validate(t) for t in tasks]
        states = [s if isinstance(s, self.State) else self.State.model_validate(s) for s in states]
        self.check_input(tasks, states)
        view = self.sim.live_view(tasks, states, slot=slot)
        decision = self.policy.decide(view)
        return self._decisions(decision, view, (time.perf_counter_ns() - t0) / 1e3)

    def check_input(self, tasks: list[BaseModel], states: list[BaseModel]) -> None:
        """Refuse, for every policy (exported or heuristic), input no decision can be right for:
        NaN or infinity in a task or state (:class:`ObservationError`, as an exported policy refuses
        such an observation) and a device or relaying edge server the plant does not have (the
        scenario's LiveStateError)."""
        preset = getattr(self.sim, "preset", None)
        devices, edges = getattr(preset, "num_devices", None), getattr(preset, "num_edges", None)
        for i, (task, state) in enumerate(zip(tasks, states)):
            for what, obj in ((f"task {i}", task), (f"state of task {i}", state)):
                name = _non_finite_field(obj)
                if name is not None:
                    raise ObservationError(f"{what} has a non-finite value in field '{name}'; a policy cannot decide "
                                           "on NaN or infinity")
            device = getattr(task, "device", None)
            if devices is not None and device is not None and device >= devices:
                raise self.state_error(f"task {i} comes from device {device}, but the plant has devices "
                                       f"0..{devices - 1}")
            relay = getattr(state, "relay_edge", None)
            if edges is not None and relay is not None and relay >= edges:
                raise self.state_error(f"state of task {i}: relay_edge {relay} is not an edge server of the plant "
                                       f"(edge servers 0..{edges - 1})")

    def decide(self, task: Any, state: Any) -> Decision:
        """The decision for one task (a LiveTask or a dict of its fields) given the live state
        (a LiveState or a dict). Raises pydantic's ValidationError, the scenario's LiveStateError
        (a task that does not fit the plant) or ObservationError (NaN or infinity)."""
        return self.decide_many([task], [state])[0]

    # -- JSON lines ---------------------------------------------------------------------------
    def decide_line(self, text: str, line: int) -> dict[str, Any]:
        """One ``decide`` input line -> its output object (a decision or an error, never raises)."""
        ident = None
        try:
            try:
                msg = json.loads(text)
            except ValueError as exc:
                return {"line": line, "error": f"line {line} is not valid JSON: {exc}"}
            if not isinstance(msg, dict):
                return {"line": line, "error": f"line {line} must be a JSON object with 'task' and 'state', "
                                               f"not a {type(msg).__name__}"}
            ident = msg.get("id")
            if ident is not None and not isinstance(ident, (str, int, float)):
                return {"line": line, "error": f"line {line}: 'id' must be a string or a number"}
            unknown = sorted(set(msg) - {"id", "task", "state"})
            if unknown:
                return {"line": line, "id": ident, "error": f"line {line} has unknown key(s) {unknown}; "
                                                            "expected 'task', 'state' and optionally 'id'"}
            for key in ("task", "state"):
                if not isinstance(msg.get(key), dict):
                    what = "is missing" if key not in msg else "must be a JSON object"
                    return {"line": line, "id": ident, "error": f"line {line}: '{key}' {what}"}
            try:
                task = self.Task.model_validate(msg["task"])
            except ValidationError as exc:
                return {"line": line, "id": ident, "error": f"line {line}: {_first_validation_error(exc, 'task')}"}
            try:
                state = self.State.model_validate(msg["state"])
            except ValidationError as exc:
                return {"line": line, "id": ident, "error": f"line {line}: {_first_validation_error(exc, 'state')}"}
            try:
                d = self.decide(task, state)
            except (self.state_error, UserError, ValueError) as exc:
                return {"line": line, "id": ident, "error": f"line {line}: {exc}"}
            return {"line": line, "id": ident, **d.to_dict()}
        except Exception as exc:  # never end the stream on one line
            return {"line": line, "id": ident, "error": f"line {line}: internal error ({type(exc).__name__}: {exc})"}

    def run_stream(self, readline: Callable[[], str], write: Callable[[str], Any],
                   flush: Callable[[], Any] | None = None) -> int:
        """Read lines until EOF, write one JSON object per non-blank line (flushed); returns lines answered."""
        n = answered = 0
        while True:
            text = readline()
            if not text:
                return answered
            n += 1
            if not text.strip():
                continue
            write(json.dumps(self.decide_line(text, n)) + "\n")
            if flush is not None:
                flush()
            answered += 1


def decide_lines(engine: DecisionEngine, lines: Iterable[str]) -> list[dict[str, Any]]:
    """The outputs for an iterable of input lines (tests and batch jobs)."""
    out = []
    for n, text in enumerate(lines, start=1):
        if text.strip():
            out.append(engine.decide_line(text, n))
    return out
