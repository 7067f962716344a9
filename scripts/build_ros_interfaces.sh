#!/usr/bin/env bash
# Build and install the ROS 2 interface package ros2_ws/src/aigc_offload_interfaces into a venv,
# using the PyPI ROS 2 Kilted wheels (no system ROS, no sourcing needed afterwards).
#
#   scripts/build_ros_interfaces.sh [VENV]      (default: $VENV, else <repo>/.venv)
#   FORCE=1 scripts/build_ros_interfaces.sh     rebuild even when up to date
#
# Steps: pip-install the ROS wheels (pinned) -> point the wheels' exported *.cmake files at the
# local Python/numpy include dirs (they name the wheel builder's /opt/python/cp311-cp311/...) ->
# cmake configure/build/install with CMAKE_INSTALL_PREFIX = the venv -> import check.
# Idempotent: a stamp in the venv records what was built; when nothing changed it only runs the
# import check (about a second).
#
# Needs: python3.11 venv with Python headers (Python.h), cmake >= 3.16, a C/C++ compiler
# (Debian: apt-get install cmake g++ python3-dev); ninja is used when present.
# Note: the wheels add a .pth bootstrapper to the venv that re-executes every Python started from
# it once, to set LD_LIBRARY_PATH (<venv>/lib and the wheels' *.libs dirs).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${VENV:-$root/.venv}}"
pkg_name=aigc_offload_interfaces
pkg_src="$root/ros2_ws/src/$pkg_name"

# The working set, pinned to the versions this was tested with. The ament-cmake-* extras and
# catkin_pkg are needed by the interface build but missing from the wheels' dependency metadata.
ros_packages=(
  ros-kilted-rclpy==9.1.2
  ros-kilted-rmw-fastrtps-cpp==9.3.3
  ros-kilted-builtin-interfaces==2.3.0
  ros-kilted-std-msgs==5.5.1
  ros-kilted-diagnostic-msgs==5.5.1
  ros-kilted-lifecycle-msgs==2.3.0
  ros-kilted-ament-package==0.17.2
  ros-kilted-ament-cmake==2.7.3
  ros-kilted-ament-cmake-include-directories==2.7.3
  ros-kilted-ament-cmake-ros-core==0.14.5
  ros-kilted-rosidl-default-generators==1.7.1
  ros-kilted-rosidl-core-generators==0.3.1
  "catkin_pkg>=1.0"
  "setuptools>=65"
  "numpy>=1.26"
)

log() { echo "build_ros_interfaces: $*"; }
die() { echo "build_ros_interfaces: ERROR: $*" >&2; exit 1; }

py="$venv/bin/python"
[ -x "$py" ] || die "no venv at '$venv' (no $py). Create it first, e.g. 'python3.11 -m venv $venv' or scripts/setup.sh."
[ -f "$pkg_src/package.xml" ] || die "interface package not found at $pkg_src"

# A shell started from a Python process of another ROS venv inherits the bootstrapper's guard
# variable and LD_LIBRARY_PATH; drop the guard so this venv's Python sets up its own.
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE || true

pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$pyver" = "3.11" ] || die "the ROS 2 Kilted wheels on PyPI are built for CPython 3.11; $py is $pyver."

# One build at a time per venv.
mkdir -p "$venv/share/$pkg_name"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$venv/share/$pkg_name/.build.lock"
  flock 9
fi

stamp_file="$venv/share/$pkg_name/.build_stamp"
stamp="$(
  {
    printf '%s\n' "${ros_packages[@]}"
    sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
    (cd "$pkg_src" && find . -type f \( -name '*.msg' -o -name '*.srv' -o -name '*.action' \
        -o -name CMakeLists.txt -o -name package.xml \) | LC_ALL=C sort | xargs sha256sum)
    echo "$venv"
  } | sha256sum | cut -d' ' -f1
)"

import_check() {
  "$py" - <<'EOF'
import rclpy  # noqa: F401
from aigc_offload_interfaces.msg import (  # noqa: F401
    Decision, EdgeServerStatus, ModelManifest, TaskRequest, TaskResult)
from aigc_offload_interfaces.srv import FetchModelChunk, ListModels, SubmitTask  # noqa: F401
TaskResult(state=TaskResult.DEADLINE_MISSED)
EOF
}

if [ "${FORCE:-0}" != "1" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
  if import_check 2>/dev/null; then
    log "$pkg_name is up to date in $venv"
    exit 0
  fi
  log "stamp matches but the import check failed: rebuilding"
fi

command -v cmake >/dev/null 2>&1 || die "cmake not found (Debian: apt-get install cmake)."
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 \
  || die "no C++ compiler found (Debian: apt-get install g++)."

t0=$(date +%s)
log "installing ROS 2 Kilted wheels into $venv"
if ! "$py" -m pip install --quiet "${ros_packages[@]}"; then
  die "pip install of the ROS 2 wheels failed (see above). Packages: ${ros_packages[*]}"
fi

# Patch the wheels' exported cmake files: they name the wheel builder's Python/numpy include dirs.
py_inc="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
np_inc="$("$py" -c 'import numpy; print(numpy.get_include())')"
[ -f "$py_inc/Python.h" ] || die "Python headers not found ($py_inc/Python.h). Debian: apt-get install python3.11-dev (or use a Python built with headers, e.g. pyenv)."
[ -d "$np_inc" ] || die "numpy include dir not found: $np_inc"
builder='/opt/python/cp311-cp311'
mapfile -t to_patch < <(grep -rlF --include='*.cmake' "$builder" "$venv/share" 2>/dev/null || true)
if [ "${#to_patch[@]}" -gt 0 ]; then
  log "pointing ${#to_patch[@]} exported cmake file(s) at $py_inc and $np_inc"
  sed -i \
    -e "s#$builder/lib/python3\.11/site-packages/numpy/_core/include#$np_inc#g" \
    -e "s#$builder/lib/python3\.11/site-packages/numpy/core/include#$np_inc#g" \
    -e "s#$builder/include/python3\.11#$py_inc#g" \
    "${to_patch[@]}"
  left="$(grep -rlF --include='*.cmake' "$builder" "$venv/share" 2>/dev/null || true)"
  [ -z "$left" ] || log "warning: still naming $builder (not patched): $left"
fi

build_dir="${BUILD_DIR:-$venv/build/$pkg_name}"
mkdir -p "$build_dir"
generator=()
if command -v ninja >/dev/null 2>&1; then
  # Do not switch generators on an existing build dir.
  if [ ! -f "$build_dir/CMakeCache.txt" ] || grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$build_dir/CMakeCache.txt"; then
    generator=(-G Ninja)
  fi
fi
log "configuring ($build_dir)"
if ! cmake -S "$pkg_src" -B "$build_dir" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$venv" \
    -DCMAKE_INSTALL_PREFIX="$venv" \
    -DPython3_EXECUTABLE="$py" \
    -DBUILD_TESTING=OFF >"$build_dir/configure.log" 2>&1; then
  tail -n 40 "$build_dir/configure.log" >&2
  die "cmake configure failed; full log: $build_dir/configure.log"
fi
log "building"
if ! cmake --build "$build_dir" --parallel "$(nproc 2>/dev/null || echo 2)" >"$build_dir/build.log" 2>&1; then
  tail -n 40 "$build_dir/build.log" >&2
  die "build failed; full log: $build_dir/build.log"
fi
if ! cmake --install "$build_dir" >"$build_dir/install.log" 2>&1; then
  tail -n 20 "$build_dir/install.log" >&2
  die "install failed; full log: $build_dir/install.log"
fi

if ! import_check; then
  die "built and installed, but 'from $pkg_name.msg import TaskRequest' fails with $py (see above)."
fi
echo "$stamp" >"$stamp_file"
log "$pkg_name built and installed into $venv in $(( $(date +%s) - t0 )) s"
