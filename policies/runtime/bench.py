"""`aigc-offload bench decision`: per-decision latency of exported policies, onnxruntime beside torch
eager in the same run, and batch throughput.

One decision = ``policy.decide(view)`` on a one-task view: the observation built by the simulator's
own ``observation()``, the graph, and the decoding into an :class:`OffloadDecision` (EdgeAIGC: one
slot's allocation view, decoded by the projection into an ``AllocationDecision``). The onnxruntime
column is :class:`OnnxPolicy` (one intra-op thread); the torch column runs the same graph module in
torch eager (one thread) inside the same runtime policy (same feeds, per-key state, draws, decoder).
Batch throughput: one view of many tasks at once (EdgeAIGC: many slots' observations in one graph
run, each projected with its view). Stochastic policies act in the mode they were evaluated with.

Policies: MADDPG-MATO, the factory actor, AMARL (GMEL), TOPPO (AIECOF, LSTM), LAD-TS (denoising
chain) and TD3 (EdgeAIGC, with the projection): each from its trained run when the repository holds
one, otherwise freshly initialised with the trained shapes of the default preset. Targets: p50 <= 50
us and p99 <= 150 us for MLP policies, twice that for the LSTM and denoising ones.

This module is a developer tool beside the runtime: it imports torch (through policies.export)
only inside :func:`bench_decision`, and the runtime package never imports it.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from policies.runtime.policy import OnnxPolicy, take_rows
from policies.shipped import default_policy_run

MATO_RUN = Path("runs/mato_maddpg_s0")
# the slim run shipped beside the factory's default policy (policies/shipped.py)
FACTORY_RUN = default_policy_run() or Path("policies/trained/factory_distill_s0")
# trained runs of the papers' actors (the reproductions' main settings), first found is used
PAPER_RUNS = {
    "gmel_amarl": (Path("runs/gmel_amarl_s0"), Path("runs/reproduce/gmel/p0.5_dU_I50/amarl_s0")),
    "aiecof_toppo": (Path("runs/aiecof_toppo_s0"), Path("runs/reproduce/aiecof/M30/toppo_s0")),
    "ladts_ladts": (Path("runs/ladts_ladts_s0"), Path("runs/reproduce/ladts/default/ladts_s0")),
    "edgeaigc_td3": (Path("runs/edgeaigc_td3_s0"), Path("runs/reproduce/edgeaigc/U10/td3_s0")),
}
TARGET_P50_US, TARGET_P99_US = 50.0, 150.0
# per network kind: the latency budget relative to an MLP policy's
TARGET_FACTOR = {"mlp": 1.0, "lstm": 2.0, "denoising": 2.0}


def _has_run(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "checkpoint.pt").is_file()


def _one_task_views(sim, count: int, seed: int = 0) -> tuple[list, object]:
    """Up to ``count`` one-task views from episodes under ``random`` and one multi-task view."""
    from policies.heuristics import make_policy
    from policies.workload import episode_rng

    pol = make_policy("random", sim)
    views, big = [], None
    k = 0
    while len(views) < count and k < 5000:
        sim.reset(sim.generate_workload(episode_rng(seed, k, 4), k))
        pol.reset(episode_rng(seed, k, 1))
        while not sim.done and len(views) < count:
            v = sim.view()
            if not hasattr(v, "n"):  # one allocation per slot (EdgeAIGC): the view is the decision
                views.append(v)
                sim.step(pol.decide(v))
                continue
            for i in range(v.n):
                views.append(take_rows(v, [i]))
            if big is None or v.n > big.n:
                big = v
            sim.step(pol.decide(v))
        k += 1
    return views[:count], big


def _time_calls(fn, views: list, calls: int, warmup: int = 200, clock=time.perf_counter_ns) -> np.ndarray:
    """Per-call time in us; ``clock`` perf_counter_ns (wall) or thread_time_ns (CPU time of this
    thread: what the call costs on an otherwise idle core, preemption by other processes excluded)."""
    for i in range(min(warmup, calls)):
        fn(views[i % len(views)])
    out = np.empty(calls, dtype=np.int64)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in range(calls):
            v = views[i % len(views)]
            t0 = clock()
            fn(v)
            out[i] = clock() - t0
    finally:
        if gc_was:
            gc.enable()
    return out / 1e3


def _stats(us: np.ndarray, cpu_us: np.ndarray) -> dict:
    return {"p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)),
            "mean_us": float(us.mean()), "cpu_p50_us": float(np.percentile(cpu_us, 50)),
            "cpu_p99_us": float(np.percentile(cpu_us, 99))}


def _throughput(fn, view, min_seconds: float = 0.5) -> float:
    fn(view)
    n, t0 = 0, time.perf_counter()
    while True:
        fn(view)
        n += 1
        el = time.perf_counter() - t0
        if el >= min_seconds and n >= 3:
            return n * view.n / el


def _candidates(seed: int) -> list[tuple[str, str, object, object, str]]:
    """(name, source description, export spec, simulator, preset name) per policy to bench."""
    import torch

    from policies.export import factory_export, load_run, mato_export
    from policies.scenarios import make_simulator

    out = []
    if _has_run(MATO_RUN):
        spec, sim, resolved, ckpt = load_run(MATO_RUN)
        out.append(("mato_maddpg", f"trained run {MATO_RUN} (episode {ckpt.get('episode')})", spec, sim,
                    resolved.get("preset_name", "mato")))
    else:
        from policies.train.maddpg import Actors

        torch.manual_seed(seed)
        sim = make_simulator("mato")
        actors = Actors(sim.M, sim.obs_dim(), sim.N, 64).eval()
        out.append(("mato_maddpg", "freshly initialised actors (no trained run at "
                    f"{MATO_RUN}): untrained weights, the trained shapes", mato_export(actors, sim, "maddpg"), sim, "mato"))
    if _has_run(FACTORY_RUN):
        spec, sim, resolved, ckpt = load_run(FACTORY_RUN)
        out.append(("factory_distill", f"trained run {FACTORY_RUN} (episode {ckpt.get('episode')})", spec, sim,
                    resolved.get("preset_name", "factory")))
    else:
        from policies.train.factory_distill import FactoryActor

        torch.manual_seed(seed)
        sim = make_simulator("factory")
        actor = FactoryActor(sim.obs_dim(), sim.K, len(sim.preset.share_levels), (256, 256)).eval()
        out.append(("factory_distill", f"freshly initialised actor (no trained run at {FACTORY_RUN}): "
                    "untrained weights, the trained shapes", factory_export(actor, sim, "factory_distill"), sim, "factory"))
    for name, runs in PAPER_RUNS.items():
        run = next((r for r in runs if _has_run(r)), None)
        if run is not None:
            spec, sim, resolved, ckpt = load_run(run)
            out.append((name, f"trained run {run} (episode {ckpt.get('episode')})", spec, sim,
                        resolved.get("preset_name", sim.name)))
        else:
            spec, sim = fresh_paper_spec(name, seed)
            out.append((name, f"freshly initialised actor (no trained run at {', '.join(map(str, runs))}): untrained "
                              "weights, the trained shapes of the default preset", spec, sim, sim.name))
    return out


def fresh_paper_spec(name: str, seed: int = 0):
    """(export spec, simulator) of a paper's actor with fresh weights and the default preset's shapes,
    built through the trainer's own policy class (as ``load_policy`` builds it from a checkpoint)."""
    import dataclasses

    import torch

    from policies.export_papers import ladts_export, scorer_export, td3_export, toppo_export
    from policies.scenarios import make_simulator

    torch.manual_seed(seed)
    if name == "gmel_amarl":
        from policies.train import amarl

        sim = make_simulator("gmel")
        cfg = amarl.Config()
        return scorer_export(amarl.Actor(sim.obs_dim(), sim.M + 1, cfg.hidden, cfg.dropout), sim, "amarl"), sim
    if name == "aiecof_toppo":
        from policies.train import toppo

        sim = make_simulator("aiecof")
        cfg = dataclasses.asdict(toppo.Config())
        resolved = {"obs_dim": sim.obs_dim(), "act_dim": sim.N + 1, "config": cfg, "scenario": sim.name}
        actor = toppo.ActorLSTM(sim.obs_dim(), sim.N + 1, cfg["lstm_hidden"], cfg["hidden"])
        return toppo_export(toppo.TrainedPolicy(name, sim, resolved, actor.state_dict()), sim, "toppo"), sim
    if name == "ladts_ladts":
        from policies.train import ladts

        sim = make_simulator("ladts")
        p, cfg = sim.preset, ladts.Config()
        agents = ladts.Agents(cfg, sim.B, sim.obs_dim(), p.slots_per_episode, p.tasks_max)
        resolved = {"config": dataclasses.asdict(cfg), "num_agents": sim.B, "obs_dim": sim.obs_dim(),
                    "slots": p.slots_per_episode, "tasks_max": p.tasks_max, "preset": p.model_dump(mode="json")}
        return ladts_export(ladts.TrainedPolicy(name, sim, resolved, agents.state_dict()), sim, "ladts"), sim
    if name == "edgeaigc_td3":
        from policies.train import td3

        sim = make_simulator("edgeaigc")
        cfg = dataclasses.asdict(td3.Config())
        resolved = {"obs_dim": sim.obs_dim(), "act_dim": sim.preset.action_dim, "config": cfg}
        actor = td3.Actor(sim.obs_dim(), sim.preset.action_dim, cfg["hidden"])
        return td3_export(td3.TrainedPolicy(name, sim, resolved, actor.state_dict()), sim, "td3"), sim
    raise ValueError(f"unknown paper policy {name!r}")


def network_kind(spec) -> str:
    """mlp, lstm or denoising: what the latency target is relative to."""
    net = spec.network.lower()
    if "lstm" in net:
        return "lstm"
    if "denois" in net:
        return "denoising"
    return "mlp"


def _throughput_many(policy, views: list, min_seconds: float = 0.5) -> float:
    """Decisions per second of ``policy.decide_many(views)``: many allocation views (EdgeAIGC slots),
    one graph run on their stacked observations, each row projected with its own view."""
    policy.decide_many(views)
    n, t0 = 0, time.perf_counter()
    while True:
        policy.decide_many(views)
        n += 1
        el = time.perf_counter() - t0
        if el >= min_seconds and n >= 3:
            return n * len(views) / el


def bench_decision(calls: int = 10_000, batch: int = 1024, seed: int = 0, pin: bool = True) -> dict:
    """Latency (p50/p99 per single decision) and batch throughput per policy; see the module doc."""
    from policies.bench import pin_to_one_core

    cpu = pin_to_one_core() if pin else None
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - the bench needs the train extra for the torch column
        raise
    from policies.export import TorchPolicy, export_actor

    res: dict = {"policies": {}, "calls": calls, "batch_size": batch, "threads": 1, "cpu": cpu,
                 "targets": {"p50_us": TARGET_P50_US, "p99_us": TARGET_P99_US,
                             "factor": dict(TARGET_FACTOR)},
                 "measures": "policy.decide(one-task view): sim.observation + graph + decoding to OffloadDecision; "
                             "gc off while timing; p50/p99 wall clock, cpu_p50/cpu_p99 thread CPU time",
                 "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                 "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, source, spec, sim, preset_name in _candidates(seed):
            path = Path(tmp) / f"{name}.onnx"
            export_actor(spec, sim, path, preset_name, name, {"command": ["aigc-offload", "bench", "decision"]})
            onnx_policy = OnnxPolicy(path, sim, threads=1)
            torch_policy = TorchPolicy(spec, sim, model=path)
            allocation = onnx_policy.view_kind == "allocation"
            views, big = _one_task_views(sim, 512 if not allocation else max(batch, 512), seed)
            obs_us = _time_calls(sim.observation, views, min(calls, 5000))
            for pol in (onnx_policy, torch_policy):
                pol.reset(np.random.default_rng(seed))
            ort_us = _time_calls(onnx_policy.decide, views, calls)
            torch_us = _time_calls(torch_policy.decide, views, calls)
            ort_cpu = _time_calls(onnx_policy.decide, views, calls, clock=time.thread_time_ns)
            torch_cpu = _time_calls(torch_policy.decide, views, calls, clock=time.thread_time_ns)
            if allocation:
                batch_views = [views[i % len(views)] for i in range(batch)]
                batch_n = len(batch_views)
                ort_batch = _throughput_many(onnx_policy, batch_views)
                torch_batch = _throughput_many(torch_policy, batch_views)
            else:
                # a stateful policy keeps state per key: repeated rows would run one after the other, so
                # its batch is the largest real view (distinct keys: every device / task once)
                batch_view = big if onnx_policy.state_keys else take_rows(big, np.arange(batch) % big.n)
                batch_n = batch_view.n
                ort_batch = _throughput(onnx_policy.decide, batch_view)
                torch_batch = _throughput(torch_policy.decide, batch_view)
            kind = network_kind(spec)
            res["policies"][name] = {
                "onnxruntime": _stats(ort_us, ort_cpu), "torch": _stats(torch_us, torch_cpu),
                "batch_decisions_per_s": ort_batch, "torch_batch_decisions_per_s": torch_batch, "batch_rows": batch_n,
                "observation_p50_us": float(np.percentile(obs_us, 50)),
                "source": source, "trained": source.startswith("trained"), "network": spec.network,
                "onnx_bytes": path.stat().st_size, "scenario": sim.name, "kind": kind, "mode": onnx_policy.mode,
                "target_p50_us": TARGET_P50_US * TARGET_FACTOR[kind], "target_p99_us": TARGET_P99_US * TARGET_FACTOR[kind],
            }
    return res


def format_bench_decision(res: dict) -> str:
    pinned = "" if res.get("cpu") is None else f", pinned to cpu {res['cpu']}"
    lines = [f"single decision (one task: observation + graph + decoding), {res['calls']} calls, 1 thread"
             f"{pinned}; batch of {res['batch_size']} tasks",
             "(wall: wall-clock time; cpu: this thread's CPU time, i.e. without preemption by other processes"
             + (f"; load average {res['load_average'][0]:.1f} on {res['cores']} cores" if res.get("load_average") else "") + ")",
             f"{'policy':16s} {'engine':12s} {'p50_us':>8s} {'p99_us':>8s} {'cpu_p50':>8s} {'cpu_p99':>8s} "
             f"{'mean_us':>8s} {'batch decisions/s':>18s}"]
    for name, r in res["policies"].items():
        for engine, key in (("onnxruntime", "batch_decisions_per_s"), ("torch", "torch_batch_decisions_per_s")):
            s = r[engine]
            lines.append(f"{name if engine == 'onnxruntime' else '':16s} {engine:12s} {s['p50_us']:8.1f} "
                         f"{s['p99_us']:8.1f} {s['cpu_p50_us']:8.1f} {s['cpu_p99_us']:8.1f} {s['mean_us']:8.1f} {r[key]:18.0f}")
        o = r["onnxruntime"]
        t = {"p50_us": r.get("target_p50_us", res["targets"]["p50_us"]),
             "p99_us": r.get("target_p99_us", res["targets"]["p99_us"])}
        wall_ok = o["p50_us"] <= t["p50_us"] and o["p99_us"] <= t["p99_us"]
        cpu_ok = o["cpu_p50_us"] <= t["p50_us"] and o["cpu_p99_us"] <= t["p99_us"]
        lines.append(f"{'':16s} {r['scenario']}: {r['network']}; mode {r.get('mode', 'deterministic')}; "
                     f"observation alone p50 {r['observation_p50_us']:.1f} us; batch of {r.get('batch_rows', '?')}")
        lines.append(f"{'':16s} target p50 <= {t['p50_us']:g} us, p99 <= {t['p99_us']:g} us ({r.get('kind', 'mlp')}, "
                     f"onnxruntime): wall {'met' if wall_ok else 'NOT met'}, cpu {'met' if cpu_ok else 'NOT met'}")
        lines.append(f"{'':16s} policy: {r['source']}")
    return "\n".join(lines)
