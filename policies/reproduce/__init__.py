"""`aigc-offload reproduce PAPER`: train (or reuse) every method of a paper with several seeds, run the
paper's experiments, and write ``reports/<paper>/report.md``, PNG figures and ``results.json``.

Papers register a :class:`policies.reproduce.core.PaperSpec` in :data:`PAPERS` (module path, imported
lazily: the generic machinery is paper-independent, see ``core.py``).
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from policies.errors import UnknownNameError

PAPERS = {"mato": "policies.reproduce.mato", "aiecof": "policies.reproduce.aiecof", "gmel": "policies.reproduce.gmel",
          "ladts": "policies.reproduce.ladts", "edgeaigc": "policies.reproduce.edgeaigc",
          "factory": "policies.reproduce.factory"}


def get_paper(name: str):
    if name not in PAPERS:
        raise UnknownNameError(f"unknown paper '{name}'; available: {', '.join(PAPERS)}")
    return importlib.import_module(PAPERS[name]).SPEC


def run(paper: str, quick: bool = False, seeds: int | None = None, out: str | Path | None = None,
        runs: str | Path | None = None, jobs: int | None = None, command: list[str] | None = None,
        algo_set: dict | None = None, status_only: bool = False, **settings: Any) -> dict:
    """Reproduce ``paper``; ``settings`` override fields of its full (or quick) Settings. ``status_only``:
    return which of the invocation's training runs are finished, partial or missing (``core.status``) instead."""
    spec = get_paper(paper)
    out = Path(out) if out else Path("reports") / (paper + ("-quick" if quick else ""))
    runs = Path(runs) if runs else Path("runs") / "reproduce" / (paper + ("-quick" if quick else ""))
    if settings.pop("report_only", False):
        from policies.reproduce.core import rewrite_report

        res = rewrite_report(spec, out, runs)
        res["report_dir"] = str(out)
        return res
    s = spec.quick() if quick else spec.full()
    if seeds is not None:
        s.seeds = seeds
    if jobs is not None:
        s.jobs = jobs
    if algo_set:
        s.algo_overrides = {**s.algo_overrides, **algo_set}
    s = replace(s, **settings)
    if not quick:  # say exactly what differs from the full run
        f = spec.full()
        notes = list(s.reduced)
        if s.seeds < f.seeds:
            notes.append(f"{s.seeds} seeds instead of {f.seeds}")
        if s.episodes < f.episodes:
            notes.append(f"{s.episodes} training episodes per run instead of {f.episodes}")
        if s.eval_episodes < f.eval_episodes:
            notes.append(f"{s.eval_episodes} evaluation episodes per seed instead of {f.eval_episodes}")
        for k, v in s.algo_overrides.items():
            if f.algo_overrides.get(k, "default") != v:
                notes.append(f"training with {k}={v} (full run: {f.algo_overrides.get(k, 'the default')})")
        if s.experiments:
            notes.append(f"only the experiments {', '.join(s.experiments)}")
        if s.x_subset:
            notes.append("of " + "; of ".join(f"{k}, only {', '.join(str(x) for x in v)}" for k, v in s.x_subset.items())
                         + (" (every other experiment in full)" if not s.experiments else ""))
        s.reduced = notes
    if status_only:
        from policies.reproduce.core import status

        return status(spec, s, runs)
    from policies.reproduce.core import reproduce

    res = reproduce(spec, s, out, runs, command or ["aigc-offload", "reproduce", paper] + (["--quick"] if quick else []),
                    mode="quick" if quick else ("full" if not s.reduced else "reduced"))
    res["report_dir"] = str(out)
    return res
