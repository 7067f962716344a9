#!/usr/bin/env bash
# Set up aigc_offload in .venv at the repository root.
#   scripts/setup.sh          runtime (simulators, evaluation, middleware runtime, ROS 2 interfaces)
#   scripts/setup.sh --test   runtime + test tools
#   scripts/setup.sh --train  runtime + training (torch==2.13.0, CPU)
# System packages: mosquitto (broker), cmake, g++ and the Python headers (ROS 2 interface build).
# Run as root they are installed with apt; otherwise a missing one is named and setup stops.
# AIGC_SKIP_ROS=1 skips the ROS 2 wheels and interface build.
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

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto mosquitto-clients)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup.sh: please install these system packages first: ${need_apt[*]}" >&2
    exit 1
  fi
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/python -m pip install --quiet -e "$spec"

# ROS 2 Kilted (PyPI wheels) + the interface package (~40-75 s the first time, <1 s when up to date).
if [ "${AIGC_SKIP_ROS:-0}" != "1" ]; then
  scripts/build_ros_interfaces.sh "$root/.venv"
  # the ament_python package (nodes); installed editable so no colcon/sourcing is needed here
  .venv/bin/python -m pip install --quiet -e ros2_ws/src/aigc_offload
fi
echo "aigc_offload is set up in $root/.venv"
