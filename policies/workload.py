"""Workloads: all exogenous randomness of one episode, and trace files that record and replay it.

A scenario draws a whole episode's workload up front: tasks (one row per task, columns named by the
scenario's ``TASK_FIELDS``) and episode parameters (server speeds, positions, channel gains per slot,
... named by ``PARAM_FIELDS``). The simulator consumes the workload deterministically given the
decisions, so the same seed or the same trace gives the same results for every policy.

Trace format (JSON Lines, UTF-8; documented in the README):

* line 1, the header::

    {"format": "aigc-offload-trace", "version": 1, "scenario": "ladts",
     "preset_sha256": "...", "task_fields": {"slot": "...", ...}, "param_fields": {...}}

* per episode, one ``{"type": "episode", "episode": k, "params": {name: number or nested list}}``
  line, followed by that episode's tasks, one object per line:
  ``{"type": "task", "episode": k, "slot": 3, "source": 7, <every task field>: value}``.
  Tasks of an episode are sorted by slot; ties keep file order.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Mapping

import numpy as np

from policies.errors import TraceError

TRACE_FORMAT = "aigc-offload-trace"
TRACE_VERSION = 1


def episode_rng(seed: int, episode: int, stream: int = 0) -> np.random.Generator:
    """Independent generator for (seed, episode, stream). Stream 0: workload; 1: policy; 2: env noise."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(episode), int(stream)]))


@dataclass
class Workload:
    """Exogenous inputs of one episode."""

    scenario: str
    episode: int
    params: dict[str, np.ndarray] = field(default_factory=dict)
    tasks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return int(len(self.tasks["slot"])) if "slot" in self.tasks else 0

    def slot_offsets(self, num_slots: int) -> np.ndarray:
        """offsets[t]:offsets[t+1] are the rows of the tasks arriving in slot t."""
        return np.searchsorted(self.tasks["slot"], np.arange(num_slots + 1), side="left")

    def check(self, task_fields: Mapping[str, str], param_fields: Mapping[str, str]) -> None:
        missing = [f for f in task_fields if f not in self.tasks]
        if missing:
            raise TraceError(f"workload of episode {self.episode} lacks task field(s) {', '.join(missing)}")
        missing = [f for f in param_fields if f not in self.params]
        if missing:
            raise TraceError(f"workload of episode {self.episode} lacks parameter(s) {', '.join(missing)}")
        n = self.num_tasks
        for name, col in self.tasks.items():
            if len(col) != n:
                raise TraceError(f"task field '{name}' has {len(col)} values but there are {n} tasks")
        if n and np.any(np.diff(self.tasks["slot"]) < 0):
            raise TraceError(f"tasks of episode {self.episode} are not sorted by slot")


def _jsonable(value: np.ndarray) -> object:
    arr = np.asarray(value)
    return arr.item() if arr.ndim == 0 else arr.tolist()


def write_trace(
    path: str | Path,
    scenario: str,
    preset_sha256: str,
    task_fields: Mapping[str, str],
    param_fields: Mapping[str, str],
    workloads: Iterable[Workload],
) -> int:
    """Write workloads to a trace file; returns the number of tasks written."""
    written = 0
    with open(path, "w", encoding="utf-8") as fh:
        header = {
            "format": TRACE_FORMAT,
            "version": TRACE_VERSION,
            "scenario": scenario,
            "preset_sha256": preset_sha256,
            "task_fields": dict(task_fields),
            "param_fields": dict(param_fields),
        }
        fh.write(json.dumps(header) + "\n")
        for wl in workloads:
            fh.write(json.dumps({"type": "episode", "episode": wl.episode,
                                 "params": {k: _jsonable(v) for k, v in wl.params.items()}}) + "\n")
            names = list(wl.tasks)
            cols = [np.asarray(wl.tasks[k]).tolist() for k in names]
            for row in zip(*cols):
                rec = {"type": "task", "episode": wl.episode}
                rec.update(zip(names, row))
                fh.write(json.dumps(rec) + "\n")
                written += 1
    return written


@dataclass
class Trace:
    """A trace file read into memory: header and one workload per episode (file order)."""

    path: str
    scenario: str
    preset_sha256: str
    workloads: list[Workload]

    def workload(self, episode_index: int) -> Workload:
        return self.workloads[episode_index]


def read_trace(
    path: str | Path,
    scenario: str,
    task_fields: Mapping[str, str],
    param_fields: Mapping[str, str],
    task_dtypes: Mapping[str, type] | None = None,
    preset_sha256: str | None = None,
    warn: IO[str] = sys.stderr,
) -> Trace:
    """Read and validate a trace. Any problem raises :class:`TraceError` naming file and line."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"trace file '{path}' does not exist")
    task_dtypes = dict(task_dtypes or {})
    workloads: list[Workload] = []
    rows: list[dict] = []
    header = None

    def close_episode() -> None:
        if not workloads:
            return
        wl = workloads[-1]
        cols: dict[str, np.ndarray] = {}
        for name in task_fields:
            values = [r[name] for r in rows]
            cols[name] = np.asarray(values, dtype=task_dtypes.get(name, np.float64))
        wl.tasks = cols
        wl.check(task_fields, param_fields)
        rows.clear()

    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(f"trace '{path}' line {lineno} is not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise TraceError(f"trace '{path}' line {lineno} must be a JSON object")
            if header is None:
                if rec.get("format") != TRACE_FORMAT:
                    raise TraceError(f"'{path}' is not an aigc-offload trace (line 1 lacks format '{TRACE_FORMAT}')")
                if rec.get("version") != TRACE_VERSION:
                    raise TraceError(f"trace '{path}' has version {rec.get('version')}, this tool reads {TRACE_VERSION}")
                if rec.get("scenario") != scenario:
                    raise TraceError(f"trace '{path}' was made for scenario '{rec.get('scenario')}', not '{scenario}'")
                if preset_sha256 and rec.get("preset_sha256") not in (None, preset_sha256):
                    print(f"warning: trace '{path}' was written with a different preset of '{scenario}'; "
                          "its tasks and parameters are replayed as recorded", file=warn)
                header = rec
                continue
            kind = rec.get("type")
            if kind == "episode":
                close_episode()
                params = rec.get("params")
                if not isinstance(params, dict):
                    raise TraceError(f"trace '{path}' line {lineno}: an episode line needs a 'params' object")
                try:
                    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
                except (TypeError, ValueError):
                    raise TraceError(f"trace '{path}' line {lineno}: episode parameters must be numbers or lists of numbers") from None
                workloads.append(Workload(scenario, int(rec.get("episode", len(workloads))), arrays, {}))
            elif kind == "task":
                if not workloads:
                    raise TraceError(f"trace '{path}' line {lineno}: a task comes before any episode line")
                missing = [f for f in task_fields if f not in rec]
                if missing:
                    raise TraceError(f"trace '{path}' line {lineno}: task lacks field(s) {', '.join(missing)}")
                bad = [f for f in task_fields if not isinstance(rec[f], (int, float)) or isinstance(rec[f], bool)]
                if bad:
                    raise TraceError(f"trace '{path}' line {lineno}: task field(s) {', '.join(bad)} must be numbers")
                rows.append(rec)
            else:
                raise TraceError(f"trace '{path}' line {lineno}: unknown line type {kind!r} (expected 'episode' or 'task')")
    if header is None:
        raise TraceError(f"trace '{path}' is empty")
    close_episode()
    if not workloads:
        raise TraceError(f"trace '{path}' holds no episode")
    return Trace(str(path), scenario, header.get("preset_sha256", ""), workloads)
