#!/usr/bin/env bash
# Set up aigc_offload in .venv at the repository root.
#   scripts/setup.sh          runtime (simulators, evaluation, gateway runtime)
#   scripts/setup.sh --test   runtime + test tools
#   scripts/setup.sh --train  runtime + training (torch==2.13.0, CPU)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
extras=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="${extras:+$extras,}test" ;;
    --train) extras="${extras:+$extras,}train" ;;
    *) echo "setup.sh: unknown option '$arg' (use --test and/or --train)" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/python -m pip install --quiet -e "$spec"
echo "aigc_offload is set up in $root/.venv"
