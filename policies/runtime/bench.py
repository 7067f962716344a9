"""`aigc-offload bench decision`: per-decision latency of exported policies, onnxruntime beside torch
eager in the same run, and batch throughput.

One decision = ``policy.decide(view)`` on a one-task view: the observation built by the simulator's
own ``observation()``, the graph, and the decoding into an :class:`OffloadDecision`. The onnxruntime
column is :class:`OnnxPolicy` (one intra-op thread); the torch column runs the same graph module in
torch eager (one thread) with the same decoder. Batch throughput: one view of many tasks at once.

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

MATO_RUN = Path("runs/mato_maddpg_s0")
FACTORY_RUN = Path("policies/trained/factory_distill_s0")
TARGET_P50_US, TARGET_P99_US = 50.0, 150.0


def _has_run(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "checkpoint.pt").is_file()


def _one_task_views(sim, count: int, seed: int = 0) -> tuple[list, object]:
    """Up to ``count`` one-task views from episodes under ``random`` and one multi-task view."""
    from policies.heuristics import make_policy
    from policies.workload import episode_rng

    pol = make_policy("random", sim)
    views, big = [], None
    k = 0
    while len(views) < count and k < 50:
        sim.reset(sim.generate_workload(episode_rng(seed, k, 4), k))
        pol.reset(episode_rng(seed, k, 1))
        while not sim.done and len(views) < count:
            v = sim.view()
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
    return out


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
                 "targets": {"p50_us": TARGET_P50_US, "p99_us": TARGET_P99_US},
                 "measures": "policy.decide(one-task view): sim.observation + graph + decoding to OffloadDecision; "
                             "gc off while timing; p50/p99 wall clock, cpu_p50/cpu_p99 thread CPU time",
                 "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                 "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, source, spec, sim, preset_name in _candidates(seed):
            path = Path(tmp) / f"{name}.onnx"
            export_actor(spec, sim, path, preset_name, name, {"command": ["aigc-offload", "bench", "decision"]})
            onnx_policy = OnnxPolicy(path, sim, threads=1)
            torch_policy = TorchPolicy(spec, sim)
            views, big = _one_task_views(sim, 512, seed)
            obs_us = _time_calls(sim.observation, views, min(calls, 5000))
            ort_us = _time_calls(onnx_policy.decide, views, calls)
            torch_us = _time_calls(torch_policy.decide, views, calls)
            ort_cpu = _time_calls(onnx_policy.decide, views, calls, clock=time.thread_time_ns)
            torch_cpu = _time_calls(torch_policy.decide, views, calls, clock=time.thread_time_ns)
            rows = np.arange(batch) % big.n
            batch_view = take_rows(big, rows)
            res["policies"][name] = {
                "onnxruntime": _stats(ort_us, ort_cpu), "torch": _stats(torch_us, torch_cpu),
                "batch_decisions_per_s": _throughput(onnx_policy.decide, batch_view),
                "torch_batch_decisions_per_s": _throughput(torch_policy.decide, batch_view),
                "observation_p50_us": float(np.percentile(obs_us, 50)),
                "source": source, "trained": source.startswith("trained"), "network": spec.network,
                "onnx_bytes": path.stat().st_size, "scenario": sim.name,
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
        o, t = r["onnxruntime"], res["targets"]
        wall_ok = o["p50_us"] <= t["p50_us"] and o["p99_us"] <= t["p99_us"]
        cpu_ok = o["cpu_p50_us"] <= t["p50_us"] and o["cpu_p99_us"] <= t["p99_us"]
        lines.append(f"{'':16s} {r['network']}; observation alone p50 {r['observation_p50_us']:.1f} us")
        lines.append(f"{'':16s} target p50 <= {t['p50_us']:g} us, p99 <= {t['p99_us']:g} us (onnxruntime): "
                     f"wall {'met' if wall_ok else 'NOT met'}, cpu {'met' if cpu_ok else 'NOT met'}")
        lines.append(f"{'':16s} policy: {r['source']}")
    return "\n".join(lines)
