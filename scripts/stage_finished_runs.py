"""Stage in git what a reproduction's runs root kept in the repository needs to carry its progress into the
next sitting: the config.json, metrics.csv and cached evaluations of every finished run, and the
invocation records. Partial runs are left out (without their checkpoint, which git ignores, they train again
from the start). Torch-free; run from the repository's root:

    .venv/bin/python scripts/stage_finished_runs.py reports/ladts/runs --episodes 300 && git commit -m "..."

Exit code 0 with a one-line summary; 2 with a sentence when the root is not a directory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from policies.reproduce.core import run_finished  # noqa: E402  (numpy only, no torch)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, help="the runs root, e.g. reports/ladts/runs")
    ap.add_argument("--episodes", type=int, required=True, help="the episodes a finished run holds")
    args = ap.parse_args(argv)
    if not args.runs.is_dir():
        print(f"stage_finished_runs: '{args.runs}' is not a directory", file=sys.stderr)
        return 2
    paths: list[Path] = []
    runs = [d for d in sorted(args.runs.glob("*/*")) if d.is_dir()]
    done = [d for d in runs if run_finished(d, args.episodes)]
    # cached evaluations committed earlier and gone now (a run retrained from scratch drops the caches of the
    # policy it replaced): their removal is staged with the run, or a clone would evaluate the new run with them
    tracked = subprocess.run(["git", "ls-files", "-z", "--", str(args.runs)], check=True, capture_output=True,
                             text=True).stdout.split("\0")
    gone: dict[Path, list[Path]] = {}
    for f in map(Path, filter(None, tracked)):
        if f.name.startswith("evaluation.") and not f.exists():
            gone.setdefault(f.parent.resolve(), []).append(f)
    for d in done:
        paths += [d / "config.json", d / "metrics.csv", *sorted(d.glob("evaluation.*.json")), *gone.get(d.resolve(), [])]
    if paths:
        subprocess.run(["git", "add", "--", *map(str, paths)], check=True)
    # the invocation log and the progress records, a record's removal included (the next invocation logs it)
    records = sorted(args.runs.glob("invocation*")) + [
        f for f in map(Path, filter(None, tracked)) if f.name.startswith("invocation") and not f.exists()]
    if records:
        subprocess.run(["git", "add", "-A", "--", *map(str, records)], check=True)
    print(f"staged {len(done)} finished runs of {len(runs)} with "
          f"{sum(len(list(d.glob('evaluation.*.json'))) for d in done)} cached evaluations under {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
