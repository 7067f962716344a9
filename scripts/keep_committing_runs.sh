#!/usr/bin/env bash
# While a long reproduction trains into a runs root kept in git, commit its progress every INTERVAL seconds:
# the finished runs, cached evaluations and invocation records (scripts/stage_finished_runs.py), in a commit
# of exactly the files it staged (other staged changes, and tracked files under the root that changed in
# place, such as a finished run retrained, are left alone). Stop it with kill; a failed round (e.g. a commit
# of yours holding the index lock) is retried at the next.
#   scripts/keep_committing_runs.sh reports/ladts/runs 300 [900] >> /tmp/keep_committing.log 2>&1 &
set -uo pipefail
runs="${1:?usage: keep_committing_runs.sh RUNS_ROOT EPISODES [INTERVAL_S]}"
episodes="${2:?usage: keep_committing_runs.sh RUNS_ROOT EPISODES [INTERVAL_S]}"
interval="${3:-900}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
while true; do
  sleep "$interval"
  .venv/bin/python scripts/stage_finished_runs.py "$runs" --episodes "$episodes" || continue
  mapfile -t staged < <(git diff --cached --name-only -- "$runs")
  if [ "${#staged[@]}" -gt 0 ]; then
    git commit -q -m "$(basename "$(dirname "$runs")") run in progress: finished runs and cached evaluations ($runs)" -- "${staged[@]}" \
      && echo "$(date -u '+%F %T') committed ${#staged[@]} files under $runs"
  fi
done
