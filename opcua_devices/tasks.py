"""Where a device's tasks come from: the factory scenario's arrival process, or a trace file.

Both reuse the simulator's own workload code, so a device in the lab asks for exactly what the
simulator would have drawn (no second copy of the distributions):

* :func:`scenario_tasks` draws episodes with ``FactorySimulator.generate_workload`` (Bernoulli
  arrivals per slot with ``arrival_prob_controller`` / ``arrival_prob_camera``, Zipf model choice
  under the Markov-modulated exponent, uniform sizes, tokens and steps) from the same per-episode
  seeds as ``aigc-offload evaluate`` (``episode_rng(seed, k, 0)``) and keeps the rows of one device;
* :func:`trace_tasks` replays a trace written by ``aigc-offload trace`` (read and validated by
  ``policies.evaluate.load_trace_workloads``), in file order.

A :class:`PlannedTask` carries its arrival time ``at_s`` in plant seconds from the start of the
first episode (``(episode * slots_per_episode + slot) * slot_s``); the device server sleeps until
then, scaled by its ``time_scale``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from policies.cost import BITS_PER_MBIT
from policies.workload import Workload, episode_rng

from mqtt_bridge.schemas import TaskKind


@dataclass(frozen=True)
class PlannedTask:
    """One task a device will request."""

    at_s: float  # arrival, plant seconds from the source's start
    task_kind: TaskKind
    model_name: str
    work_units: int  # output tokens (report) or denoising steps (defect_image)
    input_bits: int
    output_bits: int  # expected output size, bits (what the default executor reports)
    deadline_s: float
    source: int  # plant device index the task was drawn for
    episode: int
    slot: int
    device_cpu_ghz: float | None = None  # the episode's CPU of the source device, GHz


def make_factory_simulator(preset: str = "factory", overrides: dict | None = None):
    from policies.scenarios import make_simulator

    return make_simulator(preset, overrides, expect="factory")


def default_device_index(sim, kind: str, ordinal: int = 0) -> int:
    """Plant index of the ``ordinal``-th controller or camera (controllers come first)."""
    p = sim.preset
    if kind == "controller":
        if not 0 <= ordinal < p.num_controllers:
            raise ValueError(f"controller ordinal {ordinal} outside 0..{p.num_controllers - 1}")
        return ordinal
    if not 0 <= ordinal < p.num_cameras:
        raise ValueError(f"camera ordinal {ordinal} outside 0..{p.num_cameras - 1}")
    return p.num_controllers + ordinal


def _planned(sim, wl: Workload, rows: np.ndarray, t_offset_s: float) -> Iterator[PlannedTask]:
    p = sim.preset
    tk = wl.tasks
    cpu = np.asarray(wl.params.get("device_cpu_ghz", []), dtype=np.float64)
    for r in rows:
        kind = int(tk["kind"][r])
        src = int(tk["source"][r])
        slot = int(tk["slot"][r])
        yield PlannedTask(
            at_s=t_offset_s + slot * p.slot_s,
            task_kind=TaskKind.defect_image if kind == 1 else TaskKind.report,
            model_name=p.models[int(tk["model"][r])].name,
            work_units=int(tk["units"][r]),
            input_bits=int(round(float(tk["input_mbit"][r]) * BITS_PER_MBIT)),
            output_bits=int(round(float(tk["output_mbit"][r]) * BITS_PER_MBIT)),
            deadline_s=float(tk["deadline_s"][r]),
            source=src, episode=wl.episode, slot=slot,
            device_cpu_ghz=float(cpu[src]) if src < cpu.size else None,
        )


def scenario_tasks(device_index: int, *, seed: int = 0, preset: str = "factory", overrides: dict | None = None,
                   episodes: int | None = None, first_episode: int = 0) -> Iterator[PlannedTask]:
    """Tasks of plant device ``device_index`` under the scenario's arrival process, episode after
    episode (endless unless ``episodes`` is given)."""
    sim = make_factory_simulator(preset, overrides)
    if not 0 <= device_index < sim.M:
        raise ValueError(f"device index {device_index} outside the plant's 0..{sim.M - 1}")
    episode_s = sim.preset.slots_per_episode * sim.preset.slot_s
    ks = itertools.count(first_episode) if episodes is None else range(first_episode, first_episode + episodes)
    for i, k in enumerate(ks):
        wl = sim.generate_workload(episode_rng(seed, k, 0), k)
        rows = np.flatnonzero(np.asarray(wl.tasks["source"]) == device_index)
        yield from _planned(sim, wl, rows, i * episode_s)


def trace_tasks(path: str, device_index: int | None, *, preset: str = "factory",
                overrides: dict | None = None) -> Iterator[PlannedTask]:
    """Tasks of a trace file in file order: those of ``device_index``, or every task of the trace
    when ``device_index`` is None (one device replays the whole plant's requests)."""
    from policies.evaluate import load_trace_workloads

    sim = make_factory_simulator(preset, overrides)
    workloads = load_trace_workloads(sim, path, None)  # raises TraceError naming file and line
    episode_s = sim.preset.slots_per_episode * sim.preset.slot_s
    for i, wl in enumerate(workloads):
        src = np.asarray(wl.tasks["source"])
        rows = np.arange(src.size) if device_index is None else np.flatnonzero(src == device_index)
        yield from _planned(sim, wl, rows, i * episode_s)
