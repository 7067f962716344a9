"""Paper-independent reproduction machinery: a paper is a :class:`PaperSpec` (methods, experiments,
settings, the paper's stated numbers); :func:`reproduce` trains (or reuses, or resumes) every
trained method at every experiment point for every seed, evaluates all methods on common workloads,
aggregates mean and std over seeds, and hands the numbers to the paper's report writer.

Run directories: ``<runs>/<point>/<algo>_s<seed>`` (``<runs>`` defaults to ``runs/reproduce/<paper>``,
``runs/reproduce/<paper>-quick`` for ``--quick``). A finished run (its checkpoint holds every requested
episode) is reused, an unfinished one resumed (``aigc-offload train`` semantics).

Evaluation cache: a trained run is evaluated, in its training job, at every point that evaluates it (its own
point and the points that take its policies) as soon as it is trained, and each result is kept beside it in
``<run>/evaluation.<point>.json`` with the key it was made under (evaluation episodes, seed, preset, and the
run's settings and episode count). A later invocation with the same key reuses it, so a finished run whose
``checkpoint.pt`` is gone (a runs root kept in git holds only ``config.json``, ``metrics.csv`` and the
caches: a LAD-TS checkpoint is ~15 MB) still counts as finished and its numbers stay the ones measured.
Another key needs the checkpoint again. Heuristics need no checkpoint; they are evaluated with each point.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from policies.errors import UserError

EVAL_SEED_BASE = 1000


@dataclass(frozen=True)
class Method:
    key: str  # an algo of policies.train.registry (trained) or a policy name (heuristic)
    label: str  # the name the paper uses
    trained: bool
    in_paper: bool = True  # False: a reference of ours (e.g. local, opt), not in the paper's figures
    preset_overrides: Mapping[str, Any] = field(default_factory=dict)  # for evaluating (e.g. model_aware)
    max_agents: int | None = None  # evaluated only where the point has at most this many agents (costly oracles)


@dataclass(frozen=True)
class Point:
    name: str  # run sub-directory, e.g. "L6_M10"
    preset_overrides: Mapping[str, Any]
    methods: tuple | None = None  # method keys trained and evaluated at this point (None: all of the paper's)
    algo_overrides: Mapping[str, Any] = field(default_factory=dict)  # algorithm config of the runs at this point
    # (e.g. a sweep of an algorithm parameter); not a preset field, so evaluation ignores it
    policies_from: str | None = None  # the name of another point whose trained runs this point evaluates under its
    # own preset overrides (a policy transfer): nothing is trained here, and the source point is trained even if
    # only this point is selected. Its name must differ from the source's (points are deduplicated by name)


def point_methods(spec: "PaperSpec", point: Point) -> list:
    """The methods of ``spec`` at ``point`` (all, or the point's own subset)."""
    return [m for m in spec.methods if point.methods is None or m.key in point.methods]


def policy_source(spec: "PaperSpec", point: Point) -> Point:
    """The point whose trained runs ``point`` evaluates: itself, or the point named by ``point.policies_from``
    (looked up by name among the spec's experiments, as ``convergence_point`` is). A source must train its own
    runs (no chains), hold every trained method of ``point``, and ``point`` must not set algorithm overrides
    (it trains nothing)."""
    if not point.policies_from:
        return point
    src = next((p for e in spec.experiments for p in e.points if p.name == point.policies_from), None)
    if src is None:
        raise ValueError(f"point '{point.name}': policies_from '{point.policies_from}' names no point of {spec.name}")
    if src.policies_from:
        raise ValueError(f"point '{point.name}': its source '{src.name}' itself evaluates the runs of "
                         f"'{src.policies_from}'; name the point that trains them")
    if src.name == point.name or point.algo_overrides:
        raise ValueError(f"point '{point.name}': a point with policies_from needs its own name and no algo_overrides")
    missing = [m.key for m in point_methods(spec, point) if m.trained and m not in point_methods(spec, src)]
    if missing:
        raise ValueError(f"point '{point.name}': source '{src.name}' trains no {', '.join(missing)}")
    return src


@dataclass(frozen=True)
class Experiment:
    key: str  # results.json key
    title: str
    figure: str  # the paper's figure / table reference
    x_label: str
    x_values: tuple  # one per point
    points: tuple  # Point per x value


@dataclass
class Settings:
    seeds: int = 3
    episodes: int = 400  # training episodes per run
    eval_episodes: int = 30  # evaluation episodes per seed and point
    algo_overrides: dict = field(default_factory=dict)  # --set for every training run (algorithm config)
    preset_overrides: dict = field(default_factory=dict)  # --set for every point (training and evaluation)
    jobs: int = 1  # parallel training processes
    smooth: int = 20  # convergence curve moving-average window, episodes
    reduced: list = field(default_factory=list)  # sentences: what this run reduced from the full one
    experiments: tuple | None = None  # restrict to these experiment keys (None: all)
    x_subset: dict = field(default_factory=dict)  # experiment key -> x values kept


@dataclass
class PaperSpec:
    name: str
    title: str
    source: str
    scenario: str  # preset name
    methods: tuple
    experiments: tuple
    full: Callable[[], Settings]
    quick: Callable[[], Settings]
    convergence_point: str  # the point whose training curves make the convergence figure
    write_report: Callable[..., None]  # (results: dict, out: Path) -> None
    # optional studies beyond method x point evaluations (e.g. hyperparameter curves, per-type metrics):
    # (spec, settings, runs, command) -> dict stored as results["extra"] before the report is written
    extra: Callable[..., dict] | None = None
    # a paper's own numbers of one trained run at one point that need its policy (not only its metrics):
    # (spec, settings, point, sim, run_dir, seed) -> dict | None, cached with the run's evaluation there and
    # kept as the point's "run_extra" (method -> one per seed)
    run_extra: Callable[..., dict | None] | None = None
    # the keys (and x values; empty: selected by key only) that ``extra``'s studies read from --points
    extra_points: Mapping[str, tuple] = field(default_factory=dict)

    def method(self, key: str) -> Method:
        return next(m for m in self.methods if m.key == key)


# -- training ---------------------------------------------------------------------------------------
def _train_job(job: dict, spec: "PaperSpec | None" = None) -> dict:
    """One training run (in a worker process, where ``spec`` is looked up by name), then its evaluation at
    every point of ``job["evaluate"]`` (cached beside it). Returns the run summary."""
    import torch

    torch.set_num_threads(1)
    from policies.train.registry import train

    out = Path(job["out"])
    t0 = time.perf_counter()
    if not job.get("evaluate_only"):
        if not (out / "checkpoint.pt").exists():  # a run (re)trained from scratch: its cached evaluations, if
            for old in out.glob("evaluation.*.json"):  # any, measured another policy
                old.unlink()
        train(job["algo"], job["scenario"], job["seed"], out, job["overrides"], episodes=job["episodes"],
              command=job["command"], progress=False)
    session_s = time.perf_counter() - t0
    if job.get("evaluate"):
        if spec is None:
            from policies.reproduce import get_paper

            spec = get_paper(job["paper"])
        method = spec.method(job["algo"])
        for point in job["evaluate"]:
            evaluate_run(spec, job["settings"], point, method, job["seed"], out)
    return {"out": str(out), "session_s": session_s, "evaluation_s": time.perf_counter() - t0 - session_s}


# -- the per-run evaluation cache -------------------------------------------------------------------
EVAL_CACHE = "evaluation.{point}.json"


def eval_cache_path(run_dir: Path, point: str) -> Path:
    """The cached evaluation of trained run ``run_dir`` at ``point`` (its own point, or one taking its policies)."""
    return Path(run_dir) / EVAL_CACHE.format(point=point)


def run_finished(out: Path, episodes: int) -> bool:
    """Every requested episode is in ``metrics.csv``, and the policy is there to evaluate (``checkpoint.pt``) or
    its evaluation at its own point is cached (the checkpoint was dropped after it, see the module docstring)."""
    path = out / "metrics.csv"
    if not path.exists() or not (out / "config.json").exists():
        return False
    if not (out / "checkpoint.pt").exists() and not eval_cache_path(out, out.parent.name).exists():
        return False
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return len(rows) >= episodes and int(rows[-1]["episode"]) + 1 >= episodes


def run_evaluation_key(spec: "PaperSpec", settings: "Settings", point: Point, method: Method, seed: int,
                       run_dir: Path) -> dict:
    """What one run's evaluation at a point depends on: the paper, point, seed (its workloads), evaluation
    episodes, the preset it is evaluated under, and the run's algorithm, preset hash, config and episodes."""
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    key = {"paper": spec.name, "point": point.name, "method": method.key, "seed": int(seed),
           "eval_seed": EVAL_SEED_BASE + int(seed), "eval_episodes": settings.eval_episodes,
           "preset_overrides": {**settings.preset_overrides, **point.preset_overrides, **method.preset_overrides},
           "run": {"algo": cfg.get("algo"), "preset_hash": cfg.get("preset_hash"), "config": cfg.get("config"),
                   "episodes": len(read_metrics(Path(run_dir)))}}
    return json.loads(json.dumps(key, default=float))  # as read back from the file


def cached_run_evaluation(spec: "PaperSpec", settings: "Settings", point: Point, method: Method, seed: int,
                          run_dir: Path) -> dict | None:
    """The run's cached evaluation at ``point`` if it was made under this invocation's key, else None."""
    try:
        data = json.loads(eval_cache_path(run_dir, point.name).read_text())
        return data["result"] if data["key"] == run_evaluation_key(spec, settings, point, method, seed, run_dir) \
            else None
    except (OSError, ValueError, KeyError):
        return None


def _needs_checkpoint(run_dir: Path, point: Point) -> UserError:
    return UserError(f"run '{run_dir}' must be evaluated again at point '{point.name}' (no evaluation of it there "
                     f"is cached under this invocation's settings), but it has no checkpoint.pt (only its metrics "
                     "were kept): remove the run to train it again, or use the settings its cached evaluation was "
                     "made with")


def evaluate_run(spec: "PaperSpec", settings: "Settings", point: Point, method: Method, seed: int,
                 run_dir: Path) -> dict:
    """One trained run at ``point`` on seed ``seed``'s common workloads: ``{"metrics": ..., "extra": ...}``
    (``extra``: ``spec.run_extra``), from the cache or evaluated and cached."""
    run_dir = Path(run_dir)
    cached = cached_run_evaluation(spec, settings, point, method, seed, run_dir)
    if cached is not None:
        return cached
    if not (run_dir / "checkpoint.pt").exists():
        raise _needs_checkpoint(run_dir, point)
    from policies.evaluate import evaluate
    from policies.scenarios import make_simulator

    sim = make_simulator(spec.scenario, {**settings.preset_overrides, **point.preset_overrides,
                                         **method.preset_overrides})
    name = str(run_dir)
    res: dict = {"metrics": evaluate(sim, [name], settings.eval_episodes, EVAL_SEED_BASE + seed,
                                     progress=False).results[name]}
    extra = spec.run_extra(spec, settings, point, sim, run_dir, seed) if spec.run_extra is not None else None
    if extra:
        res["extra"] = extra
    path = eval_cache_path(run_dir, point.name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": run_evaluation_key(spec, settings, point, method, seed, run_dir),
                               "result": res}, indent=1, default=float) + "\n")
    os.replace(tmp, path)
    return res


def points_evaluating(spec: "PaperSpec", points: list[Point], source: Point, method: Method) -> list[Point]:
    """The points of ``points`` that evaluate ``source``'s runs of ``method`` (``source`` itself among them)."""
    return [p for p in points if policy_source(spec, p).name == source.name and method in point_methods(spec, p)]


def read_metrics(out: Path) -> list[dict]:
    with (out / "metrics.csv").open(newline="") as fh:
        return [{k: float(v) if k != "episode" else int(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def run_summary(out: Path) -> dict:
    rows = read_metrics(out)
    ep_s = np.array([r["episode_s"] for r in rows])
    # episodes with learning updates (a critic loss); a trainer without a critic (factory_distill) learns every episode
    learning = np.array([math.isfinite(r.get("critic_loss", 0.0)) for r in rows])
    return {"episodes": len(rows), "train_wall_s": float(ep_s.sum()),
            "episode_s_mean": float(ep_s[learning].mean()) if learning.any() else float(ep_s.mean()),
            "config": json.loads((out / "config.json").read_text())}


def _msg(text: str) -> None:
    print(f"[reproduce] {text}", file=sys.stderr, flush=True)


def check_reused_run(out: Path, algo: str, scenario: str, overrides: Mapping[str, Any], episodes: int) -> None:
    """A finished run is reused only if it was trained as this invocation would train it (algorithm, preset
    and every algorithm setting outside ``RESUMABLE_CONFIG``): a default changed since, or other ``--set``
    values, would otherwise mix runs of different settings in one report."""
    from policies.train.common import changed_settings
    from policies.train.registry import planned_settings

    try:
        old = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"'{out}' holds a finished run without a readable config.json; remove it or use a new "
                        "--runs root") from None
    new = planned_settings(algo, scenario, overrides, episodes)
    why = [f"{k} {old.get(k)!r}, now {new[k]!r}" for k in ("algo", "preset_hash") if old.get(k) != new[k]]
    why += [f"{k} {old['config'][k]!r}, now {new['config'][k]!r}" for k in changed_settings(old, new)]
    if why:
        raise UserError(f"'{out}' is a finished run trained with other settings ({'; '.join(why[:4])}"
                        f"{'; ...' if len(why) > 4 else ''}); reproduce reuses finished runs as they are: use a new "
                        "--runs root, or remove the run to train it again")


def training_runs(spec: PaperSpec, settings: Settings, runs: Path, points: list[Point]):
    """(point, method, seed, run directory) of every training run of ``points``, in plan order."""
    for point in points:
        for m in point_methods(spec, point):
            if m.trained:
                for seed in range(settings.seeds):
                    yield point, m, seed, runs / point.name / f"{m.key}_s{seed}"


def train_all(spec: PaperSpec, settings: Settings, runs: Path, points: list[Point], command: list[str],
              evaluate: list[Point] = (), on_trained: Callable[[int, float], None] | None = None) -> dict:
    """Train (or resume) every unfinished run of ``points``, ``settings.jobs`` at a time; each run is evaluated
    in its job at the points of ``evaluate`` that evaluate it (cached beside it, see the module docstring)."""
    jobs, evaluations = [], []
    for point, m, seed, out in training_runs(spec, settings, runs, points):
        overrides = {**settings.preset_overrides, **point.preset_overrides, **settings.algo_overrides,
                     **point.algo_overrides}
        job = {"algo": m.key, "scenario": spec.scenario, "seed": seed, "out": str(out),
               "episodes": settings.episodes, "command": command, "overrides": overrides,
               "paper": spec.name, "settings": settings, "evaluate": points_evaluating(spec, list(evaluate), point, m)}
        if run_finished(out, settings.episodes):
            check_reused_run(out, m.key, spec.scenario, overrides, settings.episodes)
            if (done := len(read_metrics(out))) > settings.episodes:  # its policy and curves are of a longer run
                raise UserError(f"'{out}' is a finished run of {done} episodes and this invocation asks for "
                                f"{settings.episodes}; use --episodes {done} or another --runs root")
            # a reused run not yet evaluated at every point is evaluated first, while its checkpoint is here
            job["evaluate"] = [p for p in job["evaluate"] if (out / "checkpoint.pt").exists()
                               and cached_run_evaluation(spec, settings, p, m, seed, out) is None]
            if job["evaluate"]:
                evaluations.append({**job, "evaluate_only": True})
            continue
        jobs.append(job)
    # the costliest first (critic cost grows ~ M^2): the shortest makespan with parallel jobs
    # (the convergence point first: its curves show early whether training works)
    jobs.sort(key=lambda j: (Path(j["out"]).parent.name != spec.convergence_point,
                             -int(j["overrides"].get("num_devices", 10))))
    total = sum(1 for _ in training_runs(spec, settings, runs, points))
    _msg(f"{total} training runs, {total - len(jobs)} finished and reused, {len(jobs)} to train or resume "
         f"({settings.jobs} in parallel)" + (f"; {len(evaluations)} reused runs to evaluate first" if evaluations else ""))
    trained_now = len(jobs)
    jobs = evaluations + jobs
    t0 = time.perf_counter()
    sessions: dict[str, float] = {}
    eval_s = 0.0

    done = 0

    def finished(res: dict, job: dict) -> None:
        nonlocal eval_s, done
        eval_s += res["evaluation_s"]
        if job.get("evaluate_only"):
            _msg(f"evaluated {res['out']} at {len(job['evaluate'])} points in {res['evaluation_s']:.0f} s")
            return
        done += 1
        sessions[res["out"]] = res["session_s"]
        _msg(f"trained {done}/{trained_now} {res['out']} in {res['session_s']:.0f} s"
             + (f", evaluated in {res['evaluation_s']:.0f} s" if res["evaluation_s"] >= 0.5 else ""))
        if on_trained is not None:
            on_trained(done, time.perf_counter() - t0)

    if settings.jobs <= 1:
        for job in jobs:
            finished(_train_job(job, spec), job)
    elif jobs:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=settings.jobs, mp_context=mp.get_context("spawn")) as pool:
            futs = {pool.submit(_train_job, j): j for j in jobs}
            for fut in as_completed(futs):
                finished(fut.result(), futs[fut])
    return {"trained_now": trained_now, "reused": total - trained_now, "wall_s": time.perf_counter() - t0,
            "sessions": sessions, "evaluation_s": eval_s}


# -- evaluation -------------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=0)), "n": int(v.size), "per_seed": [float(x) for x in v]}


def evaluate_point(spec: PaperSpec, settings: Settings, runs: Path, point: Point) -> dict:
    """method -> metric -> stats over seeds, plus the run directories that produced them (trained runs from
    their cached evaluations where there is one, see ``evaluate_run``)."""
    from policies.evaluate import evaluate
    from policies.scenarios import make_simulator

    base = {**settings.preset_overrides, **point.preset_overrides}
    src = policy_source(spec, point).name  # the runs of this point, or of the point it takes its policies from
    run_dirs: dict[str, list[str]] = {m.key: [] for m in spec.methods}
    groups: dict[tuple, list[Method]] = {}
    agents = int(base.get("num_devices", 0) or 0)
    methods = [m for m in point_methods(spec, point) if m.max_agents is None or not agents or agents <= m.max_agents]
    per: dict[str, list[dict]] = {m.key: [] for m in methods}
    extras: dict[str, list[dict]] = {}
    for m in methods:  # heuristics that need the same preset share one evaluation
        groups.setdefault(tuple(sorted(m.preset_overrides.items())), []).append(m)
    for seed in range(settings.seeds):
        for key, group in groups.items():
            heuristics = [m.key for m in group if not m.trained]
            res = evaluate(make_simulator(spec.scenario, {**base, **dict(key)}), heuristics, settings.eval_episodes,
                           EVAL_SEED_BASE + seed, progress=False).results if heuristics else {}
            for m in group:
                if not m.trained:
                    per[m.key].append(res[m.key])
                    continue
                d = runs / src / f"{m.key}_s{seed}"
                run_dirs[m.key].append(str(d))
                r = evaluate_run(spec, settings, point, m, seed, d)
                per[m.key].append(r["metrics"])
                if "extra" in r:
                    extras.setdefault(m.key, []).append(r["extra"])
    out = {}
    for m in methods:
        keys = per[m.key][0].keys()
        out[m.key] = {k: _stats([r[k] for r in per[m.key]]) for k in keys}
    return {"methods": out, "runs": {k: v for k, v in run_dirs.items() if v}, **({"run_extra": extras} if extras else {})}


def _evaluate_job(job: dict, spec: PaperSpec | None = None) -> tuple[str, dict, float]:
    """One point's evaluation with one torch thread (in a worker process, where ``spec`` is looked up by name,
    or in this one with the thread count restored after), so a report does not depend on ``--jobs``."""
    import torch

    if spec is None:
        from policies.reproduce import get_paper

        spec = get_paper(job["paper"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        res = evaluate_point(spec, job["settings"], Path(job["runs"]), job["point"])
        return job["point"].name, res, time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)


def _check_evaluable(spec: PaperSpec, settings: Settings, runs: Path, point: Point, finished_only: bool = False) -> None:
    """Fail before any work if a trained run of ``point`` has neither a matching cached evaluation nor its
    checkpoint (``finished_only``: among the runs already finished, checked before training so that the
    invocation does not fail after hours of training the others)."""
    src = policy_source(spec, point)
    for m in point_methods(spec, point):
        if m.trained:
            for seed in range(settings.seeds):
                d = runs / src.name / f"{m.key}_s{seed}"
                if finished_only and not run_finished(d, settings.episodes):
                    continue
                if not (d / "checkpoint.pt").exists() and \
                        cached_run_evaluation(spec, settings, point, m, seed, d) is None:
                    raise _needs_checkpoint(d, point)


def evaluate_all(spec: PaperSpec, settings: Settings, runs: Path, points: list[Point]) -> dict:
    """point name -> ``evaluate_point``, in the order of ``points``; ``settings.jobs`` points at a time (each
    point's evaluation is independent: its own simulator, policies and workload seeds)."""
    for p in points:
        _check_evaluable(spec, settings, runs, p)
    jobs = [{"paper": spec.name, "settings": settings, "runs": str(runs), "point": p} for p in points]
    done: dict[str, dict] = {}
    if settings.jobs <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            name, res, sec = _evaluate_job(job, spec)
            done[name] = res
            _msg(f"evaluated {i + 1}/{len(jobs)} {name} in {sec:.0f} s")
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=settings.jobs, mp_context=mp.get_context("spawn")) as pool:
            futs = [pool.submit(_evaluate_job, j) for j in jobs]
            for i, fut in enumerate(as_completed(futs)):
                name, res, sec = fut.result()
                done[name] = res
                _msg(f"evaluated {i + 1}/{len(jobs)} {name} in {sec:.0f} s")
    return {p.name: done[p.name] for p in points}


def convergence(spec: PaperSpec, settings: Settings, runs: Path) -> dict:
    """Per trained method: the episode reward of the convergence point's runs, smoothed, mean and
    std over seeds."""
    res = {}
    for m in spec.methods:
        if not m.trained:
            continue
        rewards = [np.array([x["reward"] for x in read_metrics(runs / spec.convergence_point / f"{m.key}_s{seed}")])
                   for seed in range(settings.seeds)]
        length = min(len(r) for r in rewards)  # the seeds' common episodes, so every window holds the same ones
        w = max(1, min(settings.smooth, length))
        arr = np.stack([np.convolve(r[:length], np.ones(w) / w, mode="valid") for r in rewards])
        n = arr.shape[1]
        tail = max(1, n // 10)
        res[m.key] = {"episode": [int(i + w - 1) for i in range(n)], "reward_mean": arr.mean(0).tolist(),
                      "reward_std": arr.std(0).tolist(), "window": int(w),
                      "final_reward": _stats(arr[:, -tail:].mean(axis=1).tolist())}
    return res


# -- the command ------------------------------------------------------------------------------------
RUNNING = "invocation.running.{pid}.json"  # the progress record of an invocation on a runs root


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), None where unreadable:
    with the pid it names one process, where a pid alone may have been reused since."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name, which may hold spaces


def _still_running(rec: dict) -> bool:
    """The record's invocation is alive: same boot of this machine, its process exists and, where the record
    has it, started when the recorded one did (not another process that got its pid)."""
    if "pid" not in rec or rec.get("boot") != _boot_id():
        return False
    if rec.get("process_start") is not None and _process_start(int(rec["pid"])) != rec["process_start"]:
        return False
    try:
        os.kill(int(rec["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def refuse_concurrent_training(spec: PaperSpec, settings: Settings, runs: Path, points: list[Point]) -> None:
    """Refuse an invocation that would train or resume a run while another invocation on the same runs root is
    alive: both would write that run's checkpoint and metrics. One that only reuses finished runs (a report
    re-made beside a training invocation) may go on."""
    if all(run_finished(out, settings.episodes) for *_, out in training_runs(spec, settings, runs, points)):
        return
    for path in sorted(runs.glob(RUNNING.format(pid="*"))):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if int(rec.get("pid", -1)) != os.getpid() and _still_running(rec):
            raise UserError(f"another invocation (pid {rec['pid']}, started {rec.get('started', '?')} UTC: "
                            f"{shlex.join(rec.get('command', []))}) is training on '{runs}'; this one would train "
                            "runs too. Wait for it, stop it, or use other --runs")


def log_stopped_invocations(runs: Path) -> None:
    """Move the progress records of invocations that stopped before their end (killed, or the machine's session
    ended) into ``invocations.jsonl`` with a note; the records of invocations still running on this root (another
    process, now) are left alone. ``invocation.current.json`` is the record's name before it carried a pid."""
    log = runs / "invocations.jsonl"
    for path in sorted(runs.glob(RUNNING.format(pid="*"))) + [runs / "invocation.current.json"]:
        if not path.is_file():
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if _still_running(rec):
            continue
        rec["note"] = f"stopped before its end; its last record was at {rec.pop('updated', '?')} UTC"
        rec.pop("pid", None)
        rec.pop("boot", None)
        with log.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        path.unlink(missing_ok=True)


def _same_x(x: Any, k: Any) -> bool:
    """An experiment's x value and one given on the command line (--points gives 0.05 or .05 as text)."""
    if x == k or str(x) == str(k):
        return True
    try:
        return float(x) == float(k)
    except (TypeError, ValueError):
        return False


def check_points(spec: PaperSpec, settings: Settings) -> None:
    """Refuse --points / experiments that name no experiment or no x value of this paper (a typo would
    otherwise run every point of that experiment, or none)."""
    values = {**{e.key: tuple(e.x_values) for e in spec.experiments}, **spec.extra_points}
    for key in list(settings.x_subset) + list(settings.experiments or ()):
        if key not in values:
            raise UserError(f"--points {key}=...: {spec.name} has no experiment '{key}' "
                            f"(its experiments: {', '.join(values)})")
    for key, keep in settings.x_subset.items():
        xs = values[key]
        bad = [k for k in keep if not any(_same_x(x, k) for x in xs)]
        if bad:
            raise UserError(f"--points {key}=...: no point {', '.join(repr(str(b)) for b in bad)} in experiment "
                            f"'{key}' (its values: {', '.join(str(x) for x in xs)})")


def plan_points(spec: PaperSpec, settings: Settings) -> tuple[list, list, list[Point], list[Point]]:
    """(experiments, plan of (experiment, x, point), points evaluated, points trained) of one invocation."""
    check_points(spec, settings)
    exps = [e for e in spec.experiments if settings.experiments is None or e.key in settings.experiments]
    plan = []  # (experiment, x, point)
    for e in exps:
        keep = settings.x_subset.get(e.key)
        for x, p in zip(e.x_values, e.points):
            if keep is None or any(_same_x(x, k) for k in keep):
                plan.append((e, x, p))
    planned = list({p.name: p for _, _, p in plan}.values())
    points = list(planned)
    if not any(p.name == spec.convergence_point for p in points):
        points.append(next(p for e in spec.experiments for p in e.points if p.name == spec.convergence_point))
    for p in list(points):  # the source of each transferred point is trained even if only the transfer was selected
        src = policy_source(spec, p)
        if not any(q.name == src.name for q in points):
            points.append(src)
    trained = [p for p in points if not p.policies_from]  # transferred points train nothing
    return exps, plan, planned, trained


def episode_seconds_model(cells: dict[tuple[str, str], float]):
    """Seconds per training episode of (point, method) from the means measured in some of those cells.

    A measured cell is its own estimate. The others come from a multiplicative fit, seconds = size of the
    point x cost of the method (least squares on the logarithms), so that a point whose first runs are
    slow (more stations, more tasks) prices its other methods as slow too. A point with no run yet is
    priced at the mean point size (an underestimate for a point larger than all measured ones); a method
    with no run yet: ``None``."""
    logs = {k: math.log(v) for k, v in cells.items() if v > 0}
    points = sorted({p for p, _ in logs})
    methods = sorted({m for _, m in logs})
    size = dict.fromkeys(points, 0.0)
    cost = dict.fromkeys(methods, 0.0)
    for _ in range(50):  # alternating means converge quickly on these few cells
        for m in methods:
            cost[m] = float(np.mean([v - size[p] for (p, mm), v in logs.items() if mm == m]))
        for p in points:
            size[p] = float(np.mean([v - cost[m] for (pp, m), v in logs.items() if pp == p]))
    mean_size = float(np.mean(list(size.values()))) if size else 0.0

    def estimate(point: str, method: str) -> float | None:
        if (point, method) in cells:
            return cells[(point, method)]
        if method not in cost:
            return None
        return math.exp(size.get(point, mean_size) + cost[method])

    return estimate


def status(spec: PaperSpec, settings: Settings, runs: Path) -> dict:
    """Which training runs of an invocation are finished, partial or missing under ``runs``, and the training
    time left: each unfinished run's missing episodes at the seconds per episode of that method at that point
    (measured, else :func:`episode_seconds_model`'s estimate), over ``settings.jobs`` runs in parallel. Trains
    nothing, evaluates nothing."""
    _, _, planned, trained = plan_points(spec, settings)
    per_episode: dict[tuple[str, str], list[float]] = {}  # (point, method) -> seconds per episode of its runs
    rows = []
    for p, m, seed, out in training_runs(spec, settings, runs, trained):
        done = 0
        if (out / "metrics.csv").is_file():
            metrics = read_metrics(out)
            done = len(metrics)
            if metrics:
                per_episode.setdefault((p.name, m.key), []).extend(r["episode_s"] for r in metrics)
        state = "finished" if run_finished(out, settings.episodes) else "partial" if done else "missing"
        rows.append({"point": p.name, "method": m.key, "seed": seed, "dir": str(out), "state": state,
                     "episodes_done": min(done, settings.episodes), "episodes": settings.episodes})
    estimate = episode_seconds_model({k: float(np.mean(v)) for k, v in per_episode.items()})
    left_s, unknown = 0.0, 0
    for r in rows:
        if r["state"] == "finished":
            continue
        sec = estimate(r["point"], r["method"])
        if sec is not None:
            left_s += (r["episodes"] - r["episodes_done"]) * sec
        else:
            unknown += 1
    count = {s: sum(r["state"] == s for r in rows) for s in ("finished", "partial", "missing")}
    pairs = [(p, m, seed, d) for p in planned for _, m, seed, d in training_runs(spec, settings, runs, [policy_source(spec, p)])
             if m in point_methods(spec, p)]
    cached = sum(run_finished(d, settings.episodes) and cached_run_evaluation(spec, settings, p, m, seed, d) is not None
                 for p, m, seed, d in pairs)
    return {"runs": rows, **count, "training_left_s": left_s / max(1, settings.jobs), "runs_without_estimate": unknown,
            "run_evaluations_cached": cached, "run_evaluations": len(pairs)}


def print_status(st: dict) -> None:
    points: dict[str, list[dict]] = {}
    for r in st["runs"]:
        points.setdefault(r["point"], []).append(r)
    for name, rs in points.items():
        fin = sum(r["state"] == "finished" for r in rs)
        part = [f"{r['method']}_s{r['seed']} {r['episodes_done']}/{r['episodes']}" for r in rs if r["state"] == "partial"]
        miss = sum(r["state"] == "missing" for r in rs)
        print(f"{name}: {fin}/{len(rs)} finished" + (f", partial: {', '.join(part)}" if part else "")
              + (f", {miss} not started" if miss else ""))
    h = st["training_left_s"] / 3600
    print(f"{st['finished']} finished, {st['partial']} partial, {st['missing']} not started; training left about "
          f"{h:.1f} h at the measured seconds per episode (scaled to points not measured for a method; points "
          "with no run yet at the mean point size)" +
          (f" ({st['runs_without_estimate']} runs of methods with no run yet not counted)" if st["runs_without_estimate"]
           else ""))
    if "run_evaluations" in st:
        print(f"trained runs evaluated and cached at their points: {st['run_evaluations_cached']} of "
              f"{st['run_evaluations']} (run, point) pairs")


def reproduce(spec: PaperSpec, settings: Settings, out: Path, runs: Path, command: list[str],
              mode: str = "full") -> dict:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    exps, plan, planned, trained = plan_points(spec, settings)
    runs.mkdir(parents=True, exist_ok=True)
    log = runs / "invocations.jsonl"
    log_stopped_invocations(runs)
    refuse_concurrent_training(spec, settings, runs, trained)
    for p in planned:
        _check_evaluable(spec, settings, runs, p, finished_only=True)
    current = runs / RUNNING.format(pid=os.getpid())
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())

    def record(trained_now: int, training_s: float) -> None:
        # rewritten after every finished run, so an interrupted invocation still leaves its account behind
        entry = {"command": command, "mode": mode, "started": started, "jobs": settings.jobs,
                 "wall_s": time.perf_counter() - t0,
                 "trained_now": trained_now, "training_s": training_s,
                 "updated": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "pid": os.getpid(), "boot": _boot_id(),
                 "process_start": _process_start(os.getpid())}
        tmp = current.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry) + "\n")
        os.replace(tmp, current)

    record(0, 0.0)
    training = train_all(spec, settings, runs, trained, command, evaluate=planned, on_trained=record)
    _msg("evaluating")
    t_eval = time.perf_counter()
    evaluated = evaluate_all(spec, settings, runs, planned)
    eval_s = time.perf_counter() - t_eval
    extra, extra_s = None, 0.0
    if spec.extra is not None:  # the paper's own studies (they may train and evaluate further runs)
        t_extra = time.perf_counter()
        extra = spec.extra(spec, settings, runs, command)
        extra_s = time.perf_counter() - t_extra
    experiments = {}
    for e in exps:
        pts = {}
        for x, p in [(x, p) for ee, x, p in plan if ee is e]:
            pts[str(x)] = {"point": p.name, "preset_overrides": dict(p.preset_overrides),
                           "policies_from": p.policies_from, **evaluated[p.name]}
            if p.algo_overrides:
                pts[str(x)]["algo_overrides"] = dict(p.algo_overrides)
        experiments[e.key] = {"title": e.title, "figure": e.figure, "x_label": e.x_label,
                              "x_values": [str(x) for x, p in zip(e.x_values, e.points) if str(x) in pts],
                              "points": pts}
    runs_info = {}
    for p, m, seed, d in training_runs(spec, settings, runs, trained):
        s = run_summary(d)
        runs_info[str(d)] = {"point": p.name, "algo": m.key, "seed": seed, "episodes": s["episodes"],
                             "train_wall_s": s["train_wall_s"], "episode_s_mean": s["episode_s_mean"],
                             "preset_hash": s["config"]["preset_hash"],
                             "trained_this_invocation": str(d) in training["sessions"]}
    results = {
        "paper": spec.name, "title": spec.title, "source": spec.source, "mode": mode, "command": command,
        "settings": {k: v for k, v in asdict(settings).items()},
        "methods": {m.key: {"label": m.label, "trained": m.trained, "in_paper": m.in_paper} for m in spec.methods},
        "experiments": experiments,
        "convergence": {"point": spec.convergence_point, "methods": convergence(spec, settings, runs)},
        "runs": runs_info,
        "wall_s": {"total": time.perf_counter() - t0, "training": training["wall_s"], "evaluation": eval_s,
                   "evaluation_in_training": training["evaluation_s"],
                   "trained_now": training["trained_now"], "reused": training["reused"],
                   **({"extra": extra_s} if extra is not None else {})},
        **({"extra": extra} if extra is not None else {}),
        "machine": {"cpus": os.cpu_count(), "torch_threads_per_run": 1, "jobs": settings.jobs},
    }
    # every invocation on this runs root, so a report re-made from reused runs still shows the run that trained them
    entry = {"command": command, "mode": mode, "started": started, "jobs": settings.jobs,
             "wall_s": time.perf_counter() - t0, "trained_now": training["trained_now"], "training_s": training["wall_s"]}
    earlier = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []
    results["invocations"] = earlier + [entry]
    results["training_compute_s"] = float(sum(r["train_wall_s"] for r in runs_info.values()))
    # the report's own computations (LAD-TS: Opt-TS on the training workloads) belong to this invocation's wall
    # time: write it once (they are cached in results), log the final time, and write it again with that time
    spec.write_report(results, out)  # adds "headline" and writes report.md and the figures
    entry["wall_s"] = results["wall_s"]["total"] = time.perf_counter() - t0
    with log.open("a") as fh:
        fh.write(json.dumps(entry) + "\n")
    current.unlink(missing_ok=True)
    results["invocations"] = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    spec.write_report(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    return results


def rewrite_report(spec: PaperSpec, out: Path, runs: Path) -> dict:
    """Re-make report.md and the figures from ``out/results.json`` (no training, no evaluation), with the
    invocations logged on the runs root."""
    path = out / "results.json"
    if not path.is_file():
        raise UserError(f"no {path} to re-make the report from; run the reproduction first")
    results = json.loads(path.read_text())
    log = runs / "invocations.jsonl"
    if log.is_file():
        results["invocations"] = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    results["training_compute_s"] = float(sum(r["train_wall_s"] for r in results["runs"].values()))
    spec.write_report(results, out)
    path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    return results



def training_and_runs_sections(results: dict, labels: dict, *, decimals: int = 2, evaluate_hint: str = "") -> list[str]:
    """The report's "Training wall time" table (per point and method: seeds, episodes, mean train wall
    time and seconds per episode) and its "Runs" paragraph, as markdown lines. ``evaluate_hint``: the
    options a run needs as a policy (e.g. ``--set num_users=U``)."""
    L = ["## Training wall time\n",
         "| point | method | seeds | episodes | train wall (s, mean over seeds) | s per episode (with updates) |",
         "|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in results["runs"].values():
        groups.setdefault((r["point"], r["algo"]), []).append(r)
    for (p, a), rs in sorted(groups.items()):
        L.append(f"| {p} | {labels[a]} | {len(rs)} | {rs[0]['episodes']} | "
                 f"{sum(x['train_wall_s'] for x in rs) / len(rs):.0f} | "
                 f"{sum(x['episode_s_mean'] for x in rs) / len(rs):.{decimals}f} |")
    L.append("\nWall times are measured on a 2-core machine shared with other jobs (one torch thread per run, "
             f"{training_parallelism(results)}); they are upper bounds for an idle core.\n")
    runs = list(results["runs"])
    hint = f" {evaluate_hint}" if evaluate_hint else ""
    L.append("## Runs\n")
    L.append(f"Run directories (each a policy for `aigc-offload evaluate{hint}`): " +
             ", ".join(f"`{d}`" for d in runs[:6]) + (" ..." if len(runs) > 6 else "") +
             "; the full list with per-seed numbers is in `results.json`.\n")
    return L


def transferred_points(e: dict) -> list[tuple[str, str, str]]:
    """(x, point, source) of the points of experiment ``e`` (a results.json experiment) evaluated with another
    point's runs; results written before ``policies_from`` existed have none."""
    return [(x, e["points"][x]["point"], e["points"][x]["policies_from"]) for x in e["x_values"]
            if e["points"][x].get("policies_from")]


def transfer_sentence(e: dict, where: str, see_check: bool) -> str | None:
    """The report's sentence naming the points of experiment ``e`` evaluated with the policies of ``where`` (e.g.
    "the default scene (`p0.5_dU_I50`)") instead of retrained ones; None when it has none."""
    moved = transferred_points(e)
    if not moved:
        return None
    return (f"Evaluated with the policies trained at {where}, not retrained: {e['x_label']} = "
            f"{', '.join(x for x, _, _ in moved)} (points {', '.join(f'`{n}`' for _, n, _ in moved)})"
            + ("" if len(moved) == len(e["x_values"]) else "; the other points use policies trained there")
            + ". A deviation from the paper, which retrains per point"
            + (" (see the transfer check above)" if see_check else "") + ".\n")


def transfer_gaps(results: dict, metric: str) -> list[dict]:
    """The measured cost of a policy transfer: every transferred point of ``results`` that has a retrained twin
    (a point with its own runs and the same preset overrides, in any experiment), with ``metric`` of each
    trained method evaluated both ways (transferred minus retrained, mean over seeds)."""
    own, moved = {}, {}
    for e in results["experiments"].values():
        for x in e["x_values"]:
            r = e["points"][x]
            (moved if r.get("policies_from") else own).setdefault(r["point"], r)
    out = []
    for name, t in moved.items():
        twin = next((r for r in own.values() if r["preset_overrides"] == t["preset_overrides"]), None)
        if twin is None:
            continue
        methods = {}
        for k, v in t["methods"].items():  # the trained methods (heuristics are the same both ways)
            if k in t.get("runs", {}) and k in twin["methods"]:
                a, b = v[metric], twin["methods"][k][metric]
                methods[k] = {"transferred": a, "retrained": b, "gap": a["mean"] - b["mean"]}
        out.append({"point": name, "policies_from": t["policies_from"], "retrained_point": twin["point"],
                    "preset_overrides": t["preset_overrides"], "metric": metric, "methods": methods})
    return out


def _jobs_in(command: list[str]) -> int | None:
    """The ``--jobs`` value of a logged command line, None if it has none (the paper's default then)."""
    for i, arg in enumerate(command):
        value = command[i + 1] if arg == "--jobs" and i + 1 < len(command) else (
            arg.split("=", 1)[1] if arg.startswith("--jobs=") else None)
        if value is not None and value.isdigit():
            return int(value)
    return None


def training_parallelism(results: dict) -> str:
    """How many runs trained side by side, e.g. "2 runs in parallel": from the invocations on the runs root that
    trained runs (a report re-made from reused runs with another ``--jobs`` still names the training's), else
    this invocation's ``--jobs``."""
    seen = set()
    for inv in results.get("invocations", []):
        if inv.get("trained_now"):
            jobs = inv.get("jobs") or _jobs_in(inv.get("command", []))
            if jobs:
                seen.add(int(jobs))
    if not seen:
        seen = {int(results["machine"]["jobs"])}
    lo, hi = min(seen), max(seen)
    if hi == 1:
        return "one run at a time"
    return f"{lo}-{hi} runs in parallel" if lo != hi else f"{hi} runs in parallel"


def invocation_lines(results: dict) -> list[str]:
    """The report's account of its own cost: this invocation's wall time (training, evaluation), every
    invocation on the runs directory, and the training compute of all runs, as markdown lines."""
    w, m = results["wall_s"], results["machine"]
    L = [f"Wall time of this invocation: {w['total']:.0f} s ({w['total'] / 60:.1f} min) on {m['cpus']} shared "
         f"cores, {w['trained_now']} runs trained or resumed now, {w['reused']} reused; training "
         f"{w['training']:.0f} s" + (f" (runs' evaluations in their jobs included: {w['evaluation_in_training']:.0f} s)"
                                   if w.get("evaluation_in_training", 0) >= 0.5 else "")
         + f", evaluation {w['evaluation']:.0f} s"
         + (f", the paper's extra studies {w['extra']:.0f} s" if w.get("extra", 0) >= 0.5 else "") + ".\n"]
    inv = results.get("invocations", [])
    if inv:
        L.append("Invocations on this runs directory (UTC start, elapsed, runs trained):\n")
        # a stopped invocation is logged only when the next one starts: print them in start order
        for i in sorted(inv, key=lambda i: i["started"]):
            L.append(f"- {i['started']}: `{shlex.join(i['command'])}`, {i['wall_s']:.0f} s ({i['wall_s'] / 60:.1f} min), "
                     f"{i['trained_now']} runs trained" + (f" ({i['note']})" if i.get("note") else ""))
        L.append("")
    if "training_compute_s" in results:
        L.append("Training compute, the sum of the method x point runs' training wall times: "
                 f"{results['training_compute_s']:.0f} s ({results['training_compute_s'] / 3600:.2f} h, "
                 f"{training_parallelism(results)}).\n")
    return L
