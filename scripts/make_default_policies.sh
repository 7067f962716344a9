#!/usr/bin/env bash
# Regenerate every trained policy the factory ships (policies/trained/): one command, long (it trains).
#
#   1. aigc-offload reproduce factory   trains (or reuses, or resumes) factory_distill, factory_amarl,
#      factory_maddpg and factory_toppo with 3 seeds under runs/reproduce/factory/, evaluates them with the
#      heuristics and opt on common workloads, writes reports/factory/{report.md,results.json,*.png} and
#      selects per learner its best seed and the default (the best learner's best seed);
#   2. aigc-offload policies regenerate  exports each selected run to policies/trained/<algo>_s<seed>.onnx with
#      a 10,000-observation torch-vs-onnxruntime parity check (refused if it fails), evaluates the files with
#      the heuristics and opt on held-out workloads (seed 2000) and writes a card beside each file plus
#      policies/trained/README.md and shipped.json.
#
# Arguments go to step 1, e.g. a reduced run: scripts/make_default_policies.sh --episodes 200 --seeds 2
# Finished runs are reused, so re-running after an interruption continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
AIGC=${AIGC_OFFLOAD:-.venv/bin/aigc-offload}
"$AIGC" reproduce factory "$@"
"$AIGC" policies regenerate --report reports/factory --out policies/trained
