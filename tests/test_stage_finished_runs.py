"""scripts/stage_finished_runs.py in a scratch git repository: finished runs' config and metrics, the cached
evaluations and the invocation records are staged; partial runs and checkpoints are not."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "stage_finished_runs.py"


def _run(root: Path, name: str, episodes: int, checkpoint: bool) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}\n")
    rows = "".join(f"{e},1.0\n" for e in range(episodes))
    (d / "metrics.csv").write_text("episode,episode_s\n" + rows)
    if checkpoint:
        (d / "checkpoint.pt").write_bytes(b"x")
    return d


def test_stages_finished_runs_caches_and_records_only(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    runs = tmp_path / "runs"
    _run(runs, "P/a_s0", 5, checkpoint=True)  # finished, saved at its end
    _run(runs, "P/a_s1", 3, checkpoint=True)  # partial
    (_run(runs, "Q/a_s0", 5, checkpoint=False) / "evaluation.Q.json").write_text("{}\n")  # finished, evaluated
    _run(runs, "R/a_s0", 5, checkpoint=False)  # finished metrics, but neither checkpoint nor cache: trains again
    (runs / "invocations.jsonl").write_text("{}\n")
    out = subprocess.run([sys.executable, str(SCRIPT), "runs", "--episodes", "5"], cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout
    assert "staged 2 finished runs of 4 with 1 cached evaluations" in out
    staged = set(subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=tmp_path, check=True,
                                capture_output=True, text=True).stdout.split())
    assert staged == {"runs/P/a_s0/config.json", "runs/P/a_s0/metrics.csv", "runs/Q/a_s0/config.json",
                      "runs/Q/a_s0/metrics.csv", "runs/Q/a_s0/evaluation.Q.json", "runs/invocations.jsonl"}


def test_a_missing_root_is_a_sentence_and_exit_2(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nothing"), "--episodes", "5"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "is not a directory" in res.stderr


def test_the_removal_of_a_committed_cache_is_staged_with_its_finished_run(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    runs = tmp_path / "runs"
    d = _run(runs, "P/a_s0", 5, checkpoint=True)
    for name in ("evaluation.P.json", "evaluation.Z.json"):
        (d / name).write_text("{}\n")
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], cwd=tmp_path, check=True)
    (d / "evaluation.Z.json").unlink()  # retrained from scratch since: the old policy's cache is gone
    subprocess.run([sys.executable, str(SCRIPT), "runs", "--episodes", "5"], cwd=tmp_path, check=True,
                   capture_output=True, text=True)
    staged = subprocess.run(["git", "diff", "--cached", "--name-status"], cwd=tmp_path, check=True,
                            capture_output=True, text=True).stdout.split("\n")
    assert "D\truns/P/a_s0/evaluation.Z.json" in staged
