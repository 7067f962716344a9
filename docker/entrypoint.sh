#!/bin/bash
# Entrypoint of the aigc-offload image: the ROS 2 environment, the colcon install space and the
# project's venv, then the command.
#   ros2 ...      runs /opt/ros/<distro>/bin/ros2 with the venv's interpreter: ros2's shebang is
#                 /usr/bin/python3, which cannot import what factory.launch.py imports
#                 (aigc_offload.deployment -> pydantic, policies); the nodes' own executables
#                 already carry the venv's shebang (colcon ran with the venv's python).
#   anything else runs as given (python = the venv's python).
set -e
# The setup scripts read unset variables; do not run them under `set -u`.
# shellcheck disable=SC1090,SC1091
source "/opt/ros/${ROS_DISTRO}/setup.bash"
# shellcheck disable=SC1091
source "${AIGC_WS:-/opt/aigc_ws/install}/setup.bash"
export PATH="${AIGC_VENV:-/opt/aigc/venv}/bin:${PATH}"
if [ "${1:-}" = "ros2" ]; then
  shift
  exec "${AIGC_VENV:-/opt/aigc/venv}/bin/python" "/opt/ros/${ROS_DISTRO}/bin/ros2" "$@"
fi
exec "$@"
