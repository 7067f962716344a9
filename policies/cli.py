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
        out[key.strip()] = yaml.safe_load(raw)
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
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
        print(f"trained {args.algo} to episode {row['episode'] + 1} in {args.out}: reward {row['reward']:.4g}, "
              f"latency {row['latency_s']:.4g} s, completion {row['completion_rate']:.2%}")
    else:
        print(f"{args.out} already holds every requested episode; nothing to train")
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


def cmd_bench(args: argparse.Namespace) -> int:
    from policies.bench import bench_env, format_bench_env

    res = bench_env()
    print(json.dumps(res) if args.json else format_bench_env(res))
    return 0


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
    p.add_argument("--algo", required=True, help="maddpg, maddpg_nomodel, saddpg")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=_positive_int, help="total episodes (default: the algorithm's)")
    p.add_argument("--out", required=True, help="run directory: checkpoint.pt, metrics.csv, config.json")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override an algorithm config field (e.g. batch_size=64) or a preset field")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("trace", help="write the workload a scenario generates to a trace file")
    p.add_argument("--scenario", required=True)
    p.add_argument("--episodes", type=_positive_int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("bench", help="benchmarks that print numbers")
    p.add_argument("what", choices=["env"], help="env: simulator throughput and the LAD-TS Opt-TS episode time")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
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
