"""The `aigc-offload` command."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import yaml

from policies.errors import UserError


def _parse_overrides(items: Sequence[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE, got '{item}'")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            why = getattr(exc, "problem", None) or type(exc).__name__
            raise UserError(f"--set {key.strip()}: the value '{raw}' is not valid YAML ({why})") from None
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def cmd_scenarios(args: argparse.Namespace) -> int:
    from policies.config import list_presets, load_preset
    from policies.scenarios import scenario_class

    rows = []
    for name in list_presets():
        preset = load_preset(name)
        cls = scenario_class(preset.scenario)
        rows.append({"preset": name, "scenario": preset.scenario, "description": preset.description,
                     "policies": list(cls.POLICIES), "multi_agent": cls.MULTI_AGENT,
                     "parameters": preset.key_parameters()})
    if args.json:
        print(json.dumps({"presets": rows}, indent=2))
        return 0
    for r in rows:
        kind = "multi-agent (PettingZoo)" if r["multi_agent"] else "single-agent (gymnasium)"
        print(f"{r['preset']}  [{r['scenario']}, {kind}]  {r['description']}")
        print("    " + ", ".join(f"{k}={v}" for k, v in r["parameters"].items()))
        print("    policies: " + ", ".join(r["policies"]))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from policies.evaluate import evaluate
    from policies.scenarios import make_simulator

    sim = make_simulator(args.scenario, _parse_overrides(args.set))
    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not names:
        raise UserError("--policies names no policy")
    res = evaluate(sim, names, args.episodes, args.seed, trace=args.trace,
                   progress=None if not args.json else False, preset_name=args.scenario)
    if args.json:
        print(json.dumps(res.to_json()))
    else:
        print(res.table(all_metrics=args.all_metrics))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from policies.train.registry import train  # imports torch only when the trainer loads

    row = train(args.algo, args.scenario, args.seed, args.out, _parse_overrides(args.set), args.episodes,
                command=["aigc-offload", *sys.argv[1:]], progress=False if args.no_progress else None)
    if row:
        shown = [f"reward {row['reward']:.4g}", f"latency {row['latency_s']:.4g} s"]
        shown += [f"{name} {row[k]:.2%}" for k, name in (("completion_rate", "completion"), ("hit_rate", "hit rate"))
                  if k in row]  # the scenario's own rates (EdgeAIGC has no deadlines, so no completion rate)
        print(f"trained {args.algo} to episode {row['episode'] + 1} in {args.out}: {', '.join(shown)}")
    else:
        print(f"{args.out} already holds every requested episode; nothing to train")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from policies.reproduce import run  # imports torch only when a run is trained or evaluated

    extra = {}
    if args.episodes:
        extra["episodes"] = args.episodes
    if args.eval_episodes:
        extra["eval_episodes"] = args.eval_episodes
    if args.report_only:
        extra["report_only"] = True
    if args.points:
        subset = {}
        for item in args.points:
            key, _, vals = item.partition("=")
            if not vals:
                raise UserError(f"--points expects EXPERIMENT=V1,V2, got '{item}'")
            subset[key.strip()] = tuple(int(v) if v.strip().lstrip("-").isdigit() else v.strip() for v in vals.split(","))
        extra["x_subset"] = subset
    if args.status:
        from policies.reproduce.core import print_status

        print_status(run(args.paper, quick=args.quick, seeds=args.seeds, out=args.out, runs=args.runs, jobs=args.jobs,
                         algo_set=_parse_overrides(args.set), status_only=True, **extra))
        return 0
    res = run(args.paper, quick=args.quick, seeds=args.seeds, out=args.out, runs=args.runs, jobs=args.jobs,
              command=["aigc-offload", *sys.argv[1:]], algo_set=_parse_overrides(args.set), **extra)
    for row in res.get("headline", []):
        pct = row.get("pct", row["key"] != "convergence_reward")  # rows may say whether they are fractions
        unit = f" {row['unit']}" if row.get("unit") and not pct else ""
        fmt = (lambda v: f"{100 * v:.2f}%") if pct else (lambda v: f"{v:.4g}{unit}")
        paper = "-" if row["paper"] is None else fmt(row["paper"])  # a row of ours the paper has no number for
        print(f"{row['what']}: ours {fmt(row['ours'])}, paper {paper} ({row['reference']})")
    if args.report_only:
        print(f"re-made {res['report_dir']}/report.md and the figures from its results.json")
    else:
        print(f"wrote {res['report_dir']}/report.md, results.json and figures in {res['wall_s']['total']:.0f} s")
    return 0


def cmd_policies(args: argparse.Namespace) -> int:
    from policies.reproduce.factory import regenerate_defaults  # imports torch (export, training if a run is missing)

    def progress(text: str) -> None:
        print(f"[policies] {text}", file=sys.stderr, flush=True)

    res = regenerate_defaults(report=args.report, out=args.out, runs=args.runs, parity=args.check_parity,
                              eval_episodes=args.eval_episodes, eval_seed=args.eval_seed,
                              command=["aigc-offload", *sys.argv[1:]], progress=progress)
    ev = res["evaluation"]["results"]
    for s in res["shipped"]:
        r, p = ev[s["file"]], s["parity"]
        print(f"{s['file']}{' (default)' if s['name'] == res['default'] else ''}: parity {p['decision_agreement']:.4%} "
              f"same decision on {p['samples']} observations; held-out reward {r['reward']:.4f}, latency "
              f"{r['latency_s']:.4f} s, completion {r['completion_rate']:.2%} (opt {ev['opt']['latency_s']:.4f} s, "
              f"{ev['opt']['completion_rate']:.2%}; greedy reward {ev['greedy']['reward']:.4f})")
    print(f"wrote {len(res['shipped'])} policies, their cards and {args.out}/README.md in {res['wall_s']:.0f} s")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from policies.evaluate import generate_workloads, save_trace
    from policies.scenarios import make_simulator

    sim = make_simulator(args.scenario, _parse_overrides(args.set))
    workloads = generate_workloads(sim, args.episodes, args.seed)
    try:
        n = save_trace(sim, args.out, workloads)
    except OSError as exc:
        raise UserError(f"cannot write trace '{args.out}': {exc.strerror}") from None
    print(f"wrote {n} tasks in {len(workloads)} episode(s) of scenario '{sim.name}' to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from policies.export import main_export  # imports torch: export is a training-side command

    return main_export(args.run_dir, args.out, args.check_parity or 0, args.seed, args.name, args.json)


def cmd_decide(args: argparse.Namespace) -> int:
    from policies.runtime import DecisionEngine  # torch-free

    engine = DecisionEngine.load(args.policy, preset=args.preset, overrides=_parse_overrides(args.set),
                                 threads=args.threads, strict_preset=not args.no_strict_preset)
    try:
        engine.run_stream(sys.stdin.readline, sys.stdout.write, sys.stdout.flush)
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "e2e":
        dep = _factory_deployment(args)
        from aigc_offload.bench_e2e import cli as bench_e2e

        return bench_e2e(args.rate, args.seconds, args.json, args.protocols, deployment=dep,
                         opcua_request=args.opcua_request)
    if args.what == "decision":
        from policies.runtime.bench import bench_decision, format_bench_decision

        res = bench_decision(calls=args.decisions, batch=args.decision_batch)
        print(json.dumps(res) if args.json else format_bench_decision(res))
        return 0
    if args.what == "train":
        from policies.bench import bench_train_ladts, format_bench_train

        try:
            ups = tuple(int(v) for v in args.updates_per_slot.split(","))
        except ValueError:
            raise UserError(f"--updates-per-slot expects positive integers like 1,2,3, got '{args.updates_per_slot}'") from None
        if not ups or min(ups) < 1:
            raise UserError(f"--updates-per-slot expects positive integers like 1,2,3, got '{args.updates_per_slot}'")
        res = bench_train_ladts(episodes=args.episodes, updates_per_slot=ups, overrides=_parse_overrides(args.set),
                                reference=args.reference)
        print(json.dumps(res) if args.json else format_bench_train(res))
        return 0
    from policies.bench import bench_env, format_bench_env

    res = bench_env()
    print(json.dumps(res) if args.json else format_bench_env(res))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.what == "build":
        from genmodels.build import DEFAULT_ZOO, build_zoo  # imports torch (training only)

        out = args.out or str(DEFAULT_ZOO)
        prov = build_zoo(out, seed=args.seed, quick=args.quick, command=["aigc-offload", *sys.argv[1:]])
        for m in prov["models"]:
            print(f"{m['name']:10s} {m['parameters']:>9,d} params {m['size_bytes'] / 1e6:6.2f} MB  "
                  f"{m['steps']:>5d} steps  final loss {m['final_loss']:.4f}  {m['wall_s']:6.1f} s")
        print(f"wrote {out}/catalog.yaml and provenance.json in {prov['total_wall_s']:.0f} s")
        return 0
    from genmodels.calibrate import run_calibrate

    return run_calibrate(args)


def _ros_package_error(exc: ImportError) -> UserError:
    return UserError(f"the ROS 2 package aigc_offload is not installed in this environment ({exc}); "
                     "run scripts/setup.sh")


def _factory_deployment(args: argparse.Namespace):
    """The deployment file of --config (default: the package's config/factory.yaml) with --set applied."""
    try:
        from aigc_offload.deployment import DeploymentError, load_deployment
    except ImportError as exc:
        raise _ros_package_error(exc) from None
    from pathlib import Path

    config = args.config
    if config is None:
        import aigc_offload

        config = str(Path(aigc_offload.__file__).resolve().parent.parent / "config" / "factory.yaml")
    try:
        return load_deployment(config, _parse_overrides(args.set))
    except DeploymentError as exc:
        raise UserError(str(exc)) from None


def cmd_factory(args: argparse.Namespace) -> int:
    """Start the factory node graph (the runner beside `ros2 launch aigc_offload factory.launch.py`)."""
    dep = _factory_deployment(args)
    from pathlib import Path

    from aigc_offload.runner import run

    if args.probe or args.graph_only:
        return run(dep, duration_s=args.duration, probe_count=args.probe, workdir=args.logs, stream_logs=args.verbose)
    import tempfile

    from aigc_offload.factory_job import run_factory

    workdir = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="aigc_factory_"))
    duration = args.duration if args.duration is not None or args.tasks is not None else 60.0
    return run_factory(dep, duration_s=duration, max_tasks=args.tasks, controllers=args.controllers,
                       cameras=args.cameras, workdir=workdir,
                       record=None if args.no_record else Path(args.record or workdir / "factory.mcap"),
                       report_path=Path(args.report or workdir / "report.json"), progress=not args.no_progress)


def cmd_hil(args: argparse.Namespace) -> int:
    """Replay a trace through the running stack and compare with the simulator, task by task."""
    dep = _factory_deployment(args)
    import tempfile
    from pathlib import Path

    from aigc_offload.hil import run_hil, run_hil_devices

    workdir = args.logs or tempfile.mkdtemp(prefix="aigc_hil_")
    try:
        if args.via == "devices":
            res = run_hil_devices(dep, slots=args.slots, seed=args.seed, controllers=args.controllers,
                                  cameras=args.cameras, workdir=workdir, out=sys.stderr)
        else:
            res = run_hil(dep, slots=args.slots, seed=args.seed, workdir=workdir, out=sys.stderr)
    except (RuntimeError, TimeoutError) as exc:  # the stack did not come up or a device failed; all of it is stopped
        print(f"aigc-offload: error: {exc} (node logs in {workdir})", file=sys.stderr)
        return 1
    out = {"comparison": res.comparison, "measured_done_rate": res.measured_done_rate,
           "predicted_done_rate": res.predicted_done_rate, "logs": workdir}
    if args.details:
        Path(args.details).write_text("\n".join(json.dumps(d) for d in res.details) + "\n")
    if args.json:
        print(json.dumps(out))
    else:
        c = res.comparison
        fmt = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        print(f"hil: {c['compared']} of {c['tasks']} tasks compared ({c['both_done']} done in both)")
        print(f"  latency relative error: median {fmt(c['latency_rel_error_median'])}, "
              f"p90 {fmt(c['latency_rel_error_p90'])}; by target "
              + ", ".join(f"{k} {fmt(v)}" for k, v in c["latency_rel_error_median_by_target"].items()))
        print(f"  outcome agreement: {fmt(c['outcome_agreement'])}; done measured {fmt(res.measured_done_rate)}, "
              f"predicted {fmt(res.predicted_done_rate)}")
    return 0


def _algo_help() -> str:
    """Every registered algorithm, grouped by the scenario it trains on (the registry imports no torch)."""
    from policies.train.registry import ALGOS

    by: dict[str, list[str]] = {}
    for name, algo in ALGOS.items():
        by.setdefault(algo.scenario, []).append(name)
    return "; ".join(f"{scenario}: {', '.join(names)}" for scenario, names in by.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigc-offload", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scenarios", help="list the presets and their key parameters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scenarios)

    p = sub.add_parser("evaluate", help="evaluate policies on a scenario")
    p.add_argument("--scenario", required=True, help="preset name (see `aigc-offload scenarios`) or preset YAML path")
    p.add_argument("--policies", required=True, help="comma-separated policy names, e.g. random,round_robin,opt")
    p.add_argument("--episodes", type=_positive_int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trace", help="replay this trace file instead of generating the workload")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset field (dotted keys)")
    p.add_argument("--json", action="store_true", help="print one JSON object (every metric)")
    p.add_argument("--all-metrics", action="store_true", help="table: also the scenario's own metrics")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train a learned policy (needs torch); resumes if --out holds a checkpoint")
    p.add_argument("--scenario", required=True, help="preset name or preset YAML path")
    p.add_argument("--algo", required=True, help=_algo_help())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=_positive_int, help="total episodes (default: the algorithm's)")
    p.add_argument("--out", required=True, help="run directory: checkpoint.pt, metrics.csv, config.json")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override an algorithm config field (e.g. batch_size=64) or a preset field")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reproduce", help="train (or reuse) every method of a paper over seeds, run its experiments, "
                                         "write reports/PAPER/{report.md,results.json,*.png} (needs torch)")
    p.add_argument("paper", help="mato, aiecof, gmel, ladts, edgeaigc or factory")
    p.add_argument("--quick", action="store_true", help="a reduced smoke run of a few minutes")
    p.add_argument("--seeds", type=_positive_int, help="seeds per trained method (default 3)")
    p.add_argument("--out", help="report directory (default reports/PAPER, reports/PAPER-quick with --quick)")
    p.add_argument("--runs", help="run directories root (default runs/reproduce/PAPER[-quick])")
    p.add_argument("--jobs", type=_positive_int, help="training runs, then evaluated points, in parallel (default: the paper's setting)")
    p.add_argument("--episodes", type=_positive_int, help="training episodes per run (default: the paper's setting)")
    p.add_argument("--eval-episodes", type=_positive_int, help="evaluation episodes per seed and point")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override an algorithm config field for every training run (e.g. batch_size=256)")
    p.add_argument("--points", action="append", metavar="EXPERIMENT=V1,V2",
                   help="keep only these x values of an experiment (e.g. devices=5,10,20): a reduced run")
    p.add_argument("--report-only", action="store_true",
                   help="re-make report.md and the figures from the existing results.json (no training or evaluation)")
    p.add_argument("--status", action="store_true",
                   help="list which training runs of this invocation are finished, partial or not started, and the "
                        "training time left (trains and evaluates nothing)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("policies", help="regenerate the shipped trained policies (policies/trained/) from the factory "
                                        "reproduction's selection: export with parity, held-out evaluation, cards")
    p.add_argument("what", choices=["regenerate"])
    p.add_argument("--report", default="reports/factory", help="factory reproduction (results.json) that selects them")
    p.add_argument("--out", default="policies/trained", help="where the .onnx files and cards go")
    p.add_argument("--runs", default="runs/defaults", help="where a selected run missing from the report's runs is "
                                                         "trained again")
    p.add_argument("--check-parity", type=_positive_int, default=10_000, metavar="N",
                   help="torch vs onnxruntime parity observations per file (default 10000)")
    p.add_argument("--eval-episodes", type=_positive_int, default=10, help="held-out evaluation episodes (default 10)")
    p.add_argument("--eval-seed", type=int, default=2000, help="held-out evaluation workload seed (default 2000)")
    p.set_defaults(func=cmd_policies)

    p = sub.add_parser("trace", help="write the workload a scenario generates to a trace file")
    p.add_argument("--scenario", required=True)
    p.add_argument("--episodes", type=_positive_int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("bench", help="benchmarks that print numbers")
    p.add_argument("what", choices=["env", "decision", "e2e", "train"],
                   help="env: simulator throughput and the LAD-TS Opt-TS episode time; train: LAD-TS training seconds "
                        "per episode at the paper's default point (1 and 3 updates per slot) against the authors' "
                        "code's 78 s (and, with --reference, against a reference trainer in the authors' loop "
                        "structure timed in the same process); decision: exported policies' "
                        "per-decision latency, onnxruntime vs torch, and batch throughput; e2e: request -> decision "
                        "at the device over MQTT and OPC UA through the whole graph, with the protocol floors")
    p.add_argument("--rate", type=float, default=500.0, help="e2e: requests per second per protocol")
    p.add_argument("--seconds", type=float, default=10.0, help="e2e: measured seconds per protocol")
    p.add_argument("--protocols", default="mqtt,opcua", help="e2e: phases to measure (mqtt, opcua, or both)")
    p.add_argument("--opcua-request", choices=["program", "method"], default="method",
                   help="e2e: how the OPC UA device raises requests: its own program (as the factory's controllers "
                        "do) or a PLC client calling its RequestTask method")
    p.add_argument("--config", help="e2e: deployment file (default: the package's config/factory.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="e2e: override a deployment field (dotted keys), e.g. execution_nice=0; train: a preset or "
                        "algorithm setting as in `train --set`")
    p.add_argument("--episodes", type=_positive_int, default=3, help="train: measured episodes per setting")
    p.add_argument("--reference", action="store_true",
                   help="train: also time the reference trainer (policies/train/ladts_reference.py: the authors' "
                        "loop structure, one single-sample actor call per task, one update per station per slot) in "
                        "this process, interleaved episode by episode with ours, and print the speed-up against it "
                        "beside the one against 78 s. Takes a few minutes: a reference episode at the default point "
                        "is tens of seconds to minutes of CPU, and it trains a fill episode plus --episodes")
    p.add_argument("--updates-per-slot", default="1,3", metavar="U1,U2",
                   help="train: the settings of ours to time (updates per station per slot; default 1,3)")
    p.add_argument("--decisions", type=_positive_int, default=10_000, help="decision: timed single decisions per engine")
    p.add_argument("--decision-batch", type=_positive_int, default=1024, help="decision: tasks per batch for throughput")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("models", help="generative models: build the ONNX zoo, calibrate Gcycles per unit")
    p.add_argument("what", choices=["build", "calibrate"])
    p.add_argument("--out", help="build: output directory (default genmodels/zoo)")
    p.add_argument("--quick", action="store_true", help="build: tiny training runs (tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zoo", help="calibrate: zoo directory with catalog.yaml (default genmodels/zoo)")
    p.add_argument("--preset", default="factory_onebox",
                   help="calibrate: preset name or YAML path to write (default: the calibrated one-box preset)")
    p.add_argument("--write", action="store_true", help="calibrate: write gcycles_per_unit into the preset")
    p.add_argument("--sizes", action="store_true", help="calibrate --write: also set size_mb to the model files' sizes")
    p.add_argument("--json", action="store_true")
    p.add_argument("--clock-ghz", type=float, help="calibrate: host clock, GHz (default: /proc/cpuinfo or lscpu)")
    p.add_argument("--repeats", type=_positive_int, default=15, help="calibrate: timed repeats per model")
    p.add_argument("--threads", type=_positive_int, default=1, help="calibrate: onnxruntime intra-op threads")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("export", help="export a trained run's actor to ONNX with its contract (needs torch)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="trained run directory (config.json, checkpoint.pt)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--check-parity", type=_positive_int, metavar="N",
                   help="check torch vs onnxruntime on N valid observations (e.g. 10000); exit 1 if it fails")
    p.add_argument("--seed", type=int, default=0, help="seed of the parity observations")
    p.add_argument("--name", help="policy name in the contract (default: the run directory's name)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("decide", help="decide tasks from JSON lines on stdin (torch-free), one JSON decision per line")
    p.add_argument("--policy", required=True, help="an exported .onnx file or a heuristic name (greedy, random, ...)")
    p.add_argument("--preset", default="factory", help="preset name or YAML path the deployment runs (default factory)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset field (dotted keys)")
    p.add_argument("--threads", type=_positive_int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--no-strict-preset", action="store_true",
                   help="accept a policy exported for another preset of the same observation layout")
    p.set_defaults(func=cmd_decide)
    p = sub.add_parser("factory", help="run the whole factory here: broker, cloud, edge servers, gateway, OPC UA "
                                       "controllers, MQTT cameras; a report and an MCAP recording at the end")
    p.add_argument("--config", help="deployment file (default: the package's config/factory.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a deployment field (dotted keys, e.g. gateway.policy=random)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of plant time to run (default 60; with --graph-only: until Ctrl-C)")
    p.add_argument("--tasks", type=_positive_int, default=None, help="stop after this many task requests")
    p.add_argument("--controllers", type=_non_negative_int, default=4, help="OPC UA controllers to run (first of the plant)")
    p.add_argument("--cameras", type=_non_negative_int, default=4, help="MQTT cameras to run (first of the plant)")
    p.add_argument("--record", help="MCAP recording of the run (default: <logs>/factory.mcap)")
    p.add_argument("--no-record", action="store_true", help="do not record")
    p.add_argument("--report", help="JSON report (default: <logs>/report.json)")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
    p.add_argument("--graph-only", action="store_true",
                   help="only the ROS graph (cloud, edge servers, gateway), no broker or devices")
    p.add_argument("--probe", type=_non_negative_int, default=0, metavar="N",
                   help="graph only: send N task requests once it is up and print per-hop latencies")
    p.add_argument("--logs", help="directory for the node logs (default: a temporary directory)")
    p.add_argument("--verbose", action="store_true", help="stream the node logs to the terminal")
    p.set_defaults(func=cmd_factory)

    p = sub.add_parser("hil", help="replay a scenario trace through the running stack; per-task error against the simulator")
    p.add_argument("--config", help="deployment file (default: the package's config/factory.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a deployment field (dotted keys)")
    p.add_argument("--slots", type=_positive_int, default=50, help="slots of the trace to play (slot_s each)")
    p.add_argument("--via", choices=["devices", "ros"], default="devices",
                   help="devices: requests through OPC UA controllers and MQTT cameras (their tasks of the trace); "
                        "ros: every task of the trace on the ROS request topic, devices played in-process")
    p.add_argument("--controllers", type=_non_negative_int, default=4, help="--via devices: OPC UA controllers")
    p.add_argument("--cameras", type=_non_negative_int, default=4, help="--via devices: MQTT cameras")
    p.add_argument("--seed", type=int, default=0, help="trace: episode 0 of this seed")
    p.add_argument("--details", help="write one JSON line per task (decision, measured, predicted) here")
    p.add_argument("--logs", help="directory for the node logs")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=cmd_hil)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"aigc-offload: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("aigc-offload: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
